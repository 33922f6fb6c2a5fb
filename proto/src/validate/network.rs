//! Host network checks: VLAN interfaces, bridges with their ports and VLAN membership, labs.

use super::{iface_problem, vlan_id_problem, Problems};
use crate::spec::{AllowProto, AllowRule, BridgeSpec, Isolation, LabGateway, NetworksSpec};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

const MTU_MIN: u32 = 68;
const MTU_MAX: u32 = 65535;

/// Link names are unique across VLAN interfaces, bridges and labs' bridges, and so are
/// (parent, VLAN id) pairs across VLAN interfaces and labs.
pub(super) fn check(n: &NetworksSpec, out: &mut Problems) {
    // Link name -> where it was first declared.
    let mut links: HashMap<&str, String> = HashMap::new();
    // (parent, VLAN id) -> where that VLAN interface was first declared.
    let mut vlan_ifaces: HashMap<(&str, u16), String> = HashMap::new();
    check_vlans(n, &mut links, &mut vlan_ifaces, out);
    check_bridges(n, &mut links, out);
    check_labs(n, &links, &mut vlan_ifaces, out);
    check_policies(n, out);
}

fn check_vlans<'a>(
    n: &'a NetworksSpec,
    links: &mut HashMap<&'a str, String>,
    vlan_ifaces: &mut HashMap<(&'a str, u16), String>,
    out: &mut Problems,
) {
    for (i, v) in n.vlans.iter().enumerate() {
        let f = format!("networks.vlans[{i}]");
        let name_ok = out.check(format!("{f}.name"), iface_problem(&v.name));
        let parent_ok = out.check(format!("{f}.parent"), iface_problem(&v.parent));
        let id_ok = out.check(format!("{f}.id"), vlan_id_problem(v.id));
        if name_ok && parent_ok && v.name == v.parent {
            out.push(
                format!("{f}.parent"),
                format!("VLAN interface {:?} cannot be its own parent", v.name),
            );
        }
        if name_ok {
            claim_link(links, &v.name, &f, format!("{f}.name"), out);
        }
        if parent_ok && id_ok {
            claim_vlan(vlan_ifaces, &v.parent, v.id, &f, format!("{f}.id"), out);
        }
        check_mtu(v.mtu, &f, out);
        check_addresses(&v.addresses, &f, out);
    }
}

fn check_bridges<'a>(
    n: &'a NetworksSpec,
    links: &mut HashMap<&'a str, String>,
    out: &mut Problems,
) {
    let bridge_names: HashSet<&str> = n.bridges.iter().map(|b| b.name.as_str()).collect();
    // Port interface -> the port that first claimed it.
    let mut port_owner: HashMap<&str, String> = HashMap::new();
    for (i, b) in n.bridges.iter().enumerate() {
        let f = format!("networks.bridges[{i}]");
        if out.check(format!("{f}.name"), iface_problem(&b.name)) {
            claim_link(links, &b.name, &f, format!("{f}.name"), out);
        }
        check_mtu(b.mtu, &f, out);
        if let Some(pvid) = b.default_pvid {
            let field = format!("{f}.default_pvid");
            if out.check(&field, vlan_id_problem(pvid)) && !b.vlan_filtering {
                out.push(
                    field,
                    format!(
                        "default_pvid only applies to a VLAN-aware bridge; set vlan_filtering: \
                         true on {:?} or remove default_pvid",
                        b.name
                    ),
                );
            }
        }
        check_addresses(&b.addresses, &f, out);
        check_ports(b, &f, &bridge_names, &mut port_owner, out);
    }
}

fn check_labs<'a>(
    n: &'a NetworksSpec,
    links: &HashMap<&'a str, String>,
    vlan_ifaces: &mut HashMap<(&'a str, u16), String>,
    out: &mut Problems,
) {
    let mut lab_vlans: HashMap<u16, usize> = HashMap::new();
    for (i, lab) in n.labs.iter().enumerate() {
        let f = format!("networks.labs[{i}]");
        let vlan_ok = out.check(format!("{f}.vlan"), vlan_id_problem(lab.vlan));
        let parent = lab.parent.as_deref();
        let parent_ok = parent.is_some_and(|p| out.check(format!("{f}.parent"), iface_problem(p)));
        let bridge_ok = match &lab.bridge {
            Some(br) => out.check(format!("{f}.bridge"), iface_problem(br)),
            None => true,
        };
        if let Some(cidr) = &lab.cidr {
            out.check(format!("{f}.cidr"), lab_cidr_problem(cidr));
        }
        if !vlan_ok {
            continue;
        }
        if let Some(first) = lab_vlans.get(&lab.vlan) {
            out.push(
                format!("{f}.vlan"),
                format!(
                    "VLAN {} is already used by networks.labs[{first}]; each lab needs its own VLAN",
                    lab.vlan
                ),
            );
            continue;
        }
        lab_vlans.insert(lab.vlan, i);
        if let Some(parent) = parent.filter(|_| parent_ok) {
            claim_vlan(vlan_ifaces, parent, lab.vlan, &f, format!("{f}.vlan"), out);
        }
        if bridge_ok {
            let bridge = lab
                .bridge
                .clone()
                .unwrap_or_else(|| format!("br{}", lab.vlan));
            if let Some(first) = links.get(bridge.as_str()) {
                out.push(
                    format!("{f}.bridge"),
                    format!(
                        "the lab's bridge {bridge:?} is already declared by {first}; set bridge: \
                         to another name"
                    ),
                );
            }
        }
    }
}

/// Records a link name, or reports it on `field` when already taken.
fn claim_link<'a>(
    links: &mut HashMap<&'a str, String>,
    name: &'a str,
    owner: &str,
    field: String,
    out: &mut Problems,
) {
    match links.get(name) {
        Some(first) => out.push(
            field,
            format!("link name {name:?} is already used by {first}; link names must be unique"),
        ),
        None => {
            links.insert(name, owner.to_string());
        }
    }
}

/// Records a VLAN interface (parent, id), or reports it on `field` when already declared.
fn claim_vlan<'a>(
    vlans: &mut HashMap<(&'a str, u16), String>,
    parent: &'a str,
    id: u16,
    owner: &str,
    field: String,
    out: &mut Problems,
) {
    match vlans.get(&(parent, id)) {
        Some(first) => out.push(
            field,
            format!("VLAN {id} on {parent:?} is already declared by {first}"),
        ),
        None => {
            vlans.insert((parent, id), owner.to_string());
        }
    }
}

fn check_ports<'a>(
    b: &'a BridgeSpec,
    f: &str,
    bridge_names: &HashSet<&str>,
    port_owner: &mut HashMap<&'a str, String>,
    out: &mut Problems,
) {
    for (j, port) in b.ports.iter().enumerate() {
        let pf = format!("{f}.ports[{j}]");
        let iface_field = format!("{pf}.iface");
        if out.check(&iface_field, iface_problem(&port.iface)) {
            let iface = port.iface.as_str();
            if iface == b.name {
                out.push(
                    iface_field,
                    format!("bridge {:?} cannot be a port of itself", b.name),
                );
            } else if bridge_names.contains(iface) {
                out.push(
                    iface_field,
                    format!("{iface:?} is a bridge; a bridge cannot be a port of another bridge"),
                );
            } else if let Some(first) = port_owner.get(iface) {
                out.push(
                    iface_field,
                    format!(
                        "{iface:?} is already a port at {first}; an interface can belong to only \
                         one bridge"
                    ),
                );
            } else {
                port_owner.insert(iface, pf.clone());
            }
        }
        if port.vlans.is_empty() {
            continue;
        }
        if !b.vlan_filtering {
            out.push(
                format!("{pf}.vlans"),
                format!(
                    "VLAN membership needs a VLAN-aware bridge; set vlan_filtering: true on {:?} \
                     or remove the vlans",
                    b.name
                ),
            );
        }
        let mut ids: HashMap<u16, usize> = HashMap::new();
        let mut pvid: Option<usize> = None;
        for (k, v) in port.vlans.iter().enumerate() {
            let vf = format!("{pf}.vlans[{k}]");
            if out.check(format!("{vf}.id"), vlan_id_problem(v.id)) {
                if let Some(first) = ids.get(&v.id) {
                    out.push(
                        format!("{vf}.id"),
                        format!(
                            "VLAN {} is already listed for this port at vlans[{first}]",
                            v.id
                        ),
                    );
                } else {
                    ids.insert(v.id, k);
                }
            }
            if v.pvid {
                match pvid {
                    Some(first) => out.push(
                        format!("{vf}.pvid"),
                        format!(
                            "vlans[{first}] is already this port's PVID; a port has at most one \
                             pvid: true"
                        ),
                    ),
                    None => pvid = Some(k),
                }
            }
        }
    }
}

/// Each bridge's and lab's `allow` list: an exception to an isolation (none on an open
/// bridge), `port` with `tcp`/`udp` only, `from` a CIDR or another bridge of the spec.
fn check_policies(n: &NetworksSpec, out: &mut Problems) {
    let labs = (n.labs.iter().enumerate()).map(|(i, l)| {
        let name = l.bridge.clone().unwrap_or_else(|| format!("br{}", l.vlan));
        (format!("networks.labs[{i}]"), name, l.isolation, &l.allow)
    });
    let bridges = (n.bridges.iter().enumerate()).map(|(i, b)| {
        (
            format!("networks.bridges[{i}]"),
            b.name.clone(),
            b.isolation,
            &b.allow,
        )
    });
    let all: Vec<_> = bridges.chain(labs).collect();
    for (i, l) in n.labs.iter().enumerate() {
        if l.ports_isolated && l.gateway == LabGateway::None {
            out.push(
                format!("networks.labs[{i}].ports_isolated"),
                "ports_isolated cuts every port of the bridge off from the others, a router on \
                 the lab (gateway: none) too; use gateway: host, or leave ports_isolated off and \
                 filter on the router",
            );
        }
    }
    let names: HashSet<&str> = all.iter().map(|(_, name, _, _)| name.as_str()).collect();
    for (f, name, isolation, allow) in &all {
        if *isolation == Isolation::Open && !allow.is_empty() {
            out.push(
                format!("{f}.allow"),
                "allow lists exceptions to an isolation; this bridge is open (set isolation: \
                 isolated or egress-only)",
            );
        }
        for (j, a) in allow.iter().enumerate() {
            check_allow(a, &format!("{f}.allow[{j}]"), name, &names, out);
        }
    }
}

fn check_allow(a: &AllowRule, f: &str, own: &str, names: &HashSet<&str>, out: &mut Problems) {
    match (a.proto, a.port) {
        (AllowProto::Icmp, Some(_)) => out.push(
            format!("{f}.port"),
            "icmp has no ports; remove port or use tcp/udp",
        ),
        (_, Some(0)) => out.push(format!("{f}.port"), "port must be 1-65535"),
        _ => {}
    }
    let Some(from) = &a.from else { return };
    if from.parse::<IpNet>().is_ok() {
        return;
    }
    if from == own {
        out.push(
            format!("{f}.from"),
            format!("{from:?} is this bridge itself; traffic within a bridge is not routed (see ports_isolated)"),
        );
    } else if !names.contains(from.as_str()) {
        out.push(
            format!("{f}.from"),
            format!(
                "{from:?} is neither a network in CIDR form nor a bridge of this spec \
                 (networks.bridges or networks.labs)"
            ),
        );
    }
}

fn check_mtu(mtu: Option<u32>, f: &str, out: &mut Problems) {
    if let Some(m) = mtu {
        if !(MTU_MIN..=MTU_MAX).contains(&m) {
            out.push(
                format!("{f}.mtu"),
                format!("MTU {m} is out of range {MTU_MIN}-{MTU_MAX}"),
            );
        }
    }
}

fn check_addresses(addresses: &[String], f: &str, out: &mut Problems) {
    for (j, a) in addresses.iter().enumerate() {
        out.check(format!("{f}.addresses[{j}]"), address_problem(a));
    }
}

/// The address right after `net`'s network address, for examples in messages.
fn first_host(net: &IpNet) -> IpAddr {
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).saturating_add(1).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).saturating_add(1).into()),
    }
}

/// Why `s` is not an interface address in CIDR form (`192.168.142.1/24`, `fd00::1/64`).
pub(crate) fn address_problem(s: &str) -> Option<String> {
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        Err(_) => {
            return Some(match s.parse::<IpAddr>() {
                Ok(ip) => format!(
                    "address {s:?} has no prefix length; write it in CIDR form, e.g. {s}/{}",
                    if ip.is_ipv4() { 24 } else { 64 }
                ),
                Err(_) => format!(
                    "address {s:?} is not in CIDR form, e.g. 192.168.142.1/24 or fd00::1/64"
                ),
            })
        }
    };
    let addr = net.addr();
    if addr.is_unspecified() || addr.is_multicast() {
        return Some(format!(
            "address {s} is not a host address (it is unspecified or multicast)"
        ));
    }
    let host_bits = net.max_prefix_len() - net.prefix_len();
    let example = format!("{}/{}", first_host(&net), net.prefix_len());
    if host_bits >= 2 && addr == net.network() {
        return Some(format!(
            "address {s} is the network address of {}; give the interface's own address, e.g. \
             {example}",
            net.trunc()
        ));
    }
    if addr.is_ipv4() && host_bits >= 2 && addr == net.broadcast() {
        return Some(format!(
            "address {s} is the broadcast address of {}; give the interface's own address, e.g. \
             {example}",
            net.trunc()
        ));
    }
    None
}

/// Why `s` is not a network in CIDR form (`192.168.150.0/24`).
fn lab_cidr_problem(s: &str) -> Option<String> {
    match s.parse::<IpNet>() {
        Err(_) => Some(format!(
            "lab cidr {s:?} is not a network in CIDR form, e.g. 192.168.150.0/24"
        )),
        Ok(net) if net != net.trunc() => Some(format!(
            "lab cidr {s} has host bits set; did you mean {}?",
            net.trunc()
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::{run_table, run_valid};

    #[test]
    fn network_rules() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "networks:\n  vlans:\n    - {name: averyveryverylongname, parent: eth1, id: 5}\n",
                "networks.vlans[0].name",
                "interface name \"averyveryverylongname\" is 21 bytes; the kernel allows at most 15",
            ),
            ("networks:\n  vlans:\n    - {name: \"eth1:5\", parent: eth1, id: 5}\n", "networks.vlans[0].name", "contains ':'"),
            ("networks:\n  vlans:\n    - {name: v5, parent: \"eth 1\", id: 5}\n", "networks.vlans[0].parent", "contains ' '"),
            ("networks:\n  vlans:\n    - {name: v5, parent: \"..\", id: 5}\n", "networks.vlans[0].parent", "not allowed"),
            ("networks:\n  bridges:\n    - {name: \"@policy_bridges\", isolation: isolated}\n", "networks.bridges[0].name", "nftables reads as a set reference or a wildcard"),
            ("networks:\n  labs:\n    - {vlan: 7, bridge: \"br*\", isolation: isolated}\n", "networks.labs[0].bridge", "starts with '@' or contains '*'"),
            ("networks:\n  vlans:\n    - {name: v5, parent: \"\", id: 5}\n", "networks.vlans[0].parent", "interface name is empty"),
            ("networks:\n  vlans:\n    - {name: v5, parent: v5, id: 5}\n", "networks.vlans[0].parent", "its own parent"),
            ("networks:\n  vlans:\n    - {name: v0, parent: eth1, id: 0}\n", "networks.vlans[0].id", "VLAN id 0 is out of range 1-4094"),
            ("networks:\n  vlans:\n    - {name: v5000, parent: eth1, id: 5000}\n", "networks.vlans[0].id", "VLAN id 5000 is out of range 1-4094"),
            ("networks:\n  vlans:\n    - {name: a, parent: eth1, id: 5}\n    - {name: b, parent: eth1, id: 5}\n", "networks.vlans[1].id", "VLAN 5 on \"eth1\" is already declared by networks.vlans[0]"),
            ("networks:\n  vlans:\n    - {name: a, parent: eth1, id: 5, mtu: 67}\n", "networks.vlans[0].mtu", "MTU 67 is out of range 68-65535"),
            ("networks:\n  bridges:\n    - {name: br0, mtu: 70000}\n", "networks.bridges[0].mtu", "MTU 70000 is out of range 68-65535"),
            ("networks:\n  vlans:\n    - {name: a, parent: eth1, id: 5, addresses: [10.0.0.1]}\n", "networks.vlans[0].addresses[0]", "no prefix length; write it in CIDR form, e.g. 10.0.0.1/24"),
            ("networks:\n  bridges:\n    - {name: br0, addresses: [10.0.0.0/24]}\n", "networks.bridges[0].addresses[0]", "network address of 10.0.0.0/24; give the interface's own address, e.g. 10.0.0.1/24"),
            ("networks:\n  bridges:\n    - {name: br0, addresses: [10.0.0.255/24]}\n", "networks.bridges[0].addresses[0]", "broadcast address"),
            ("networks:\n  bridges:\n    - {name: br0, addresses: [\"fd00::/64\"]}\n", "networks.bridges[0].addresses[0]", "network address"),
            ("networks:\n  bridges:\n    - {name: br0, addresses: [\"10.0.0.1/33\"]}\n", "networks.bridges[0].addresses[0]", "not in CIDR form"),
            ("networks:\n  bridges:\n    - {name: br0, addresses: [\"224.0.0.1/4\"]}\n", "networks.bridges[0].addresses[0]", "multicast"),
            ("networks:\n  bridges:\n    - {name: br0}\n  vlans:\n    - {name: br0, parent: eth1, id: 5}\n", "networks.bridges[0].name", "link name \"br0\" is already used by networks.vlans[0]"),
            ("networks:\n  bridges:\n    - {name: br0}\n    - {name: br0}\n", "networks.bridges[1].name", "already used by networks.bridges[0]"),
            ("networks:\n  bridges:\n    - {name: br0, ports: [{iface: br0}]}\n", "networks.bridges[0].ports[0].iface", "cannot be a port of itself"),
            ("networks:\n  bridges:\n    - {name: br0}\n    - {name: br1, ports: [{iface: br0}]}\n", "networks.bridges[1].ports[0].iface", "a bridge cannot be a port of another bridge"),
            ("networks:\n  bridges:\n    - {name: br0, ports: [{iface: eth2}]}\n    - {name: br1, ports: [{iface: eth2}]}\n", "networks.bridges[1].ports[0].iface", "already a port at networks.bridges[0].ports[0]"),
            ("networks:\n  bridges:\n    - {name: br0, ports: [{iface: eth2}, {iface: eth2}]}\n", "networks.bridges[0].ports[1].iface", "only one bridge"),
            ("networks:\n  bridges:\n    - {name: br0, ports: [{iface: \"eth/2\"}]}\n", "networks.bridges[0].ports[0].iface", "contains '/'"),
            ("networks:\n  bridges:\n    - {name: br0, ports: [{iface: eth2, vlans: [{id: 20}]}]}\n", "networks.bridges[0].ports[0].vlans", "set vlan_filtering: true"),
            ("networks:\n  bridges:\n    - {name: br0, vlan_filtering: true, ports: [{iface: eth2, vlans: [{id: 20}, {id: 5000}]}]}\n", "networks.bridges[0].ports[0].vlans[1].id", "VLAN id 5000 is out of range 1-4094"),
            ("networks:\n  bridges:\n    - {name: br0, vlan_filtering: true, ports: [{iface: eth2, vlans: [{id: 20}, {id: 20}]}]}\n", "networks.bridges[0].ports[0].vlans[1].id", "already listed for this port at vlans[0]"),
            ("networks:\n  bridges:\n    - {name: br0, vlan_filtering: true, ports: [{iface: eth2, vlans: [{id: 20, pvid: true}, {id: 30, pvid: true}]}]}\n", "networks.bridges[0].ports[0].vlans[1].pvid", "at most one pvid"),
            ("networks:\n  bridges:\n    - {name: br0, vlan_filtering: true, default_pvid: 0}\n", "networks.bridges[0].default_pvid", "VLAN id 0 is out of range"),
            ("networks:\n  bridges:\n    - {name: br0, default_pvid: 10}\n", "networks.bridges[0].default_pvid", "set vlan_filtering: true"),
            ("networks:\n  labs:\n    - {vlan: 4095, parent: eth1}\n", "networks.labs[0].vlan", "VLAN id 4095 is out of range 1-4094"),
            ("networks:\n  labs:\n    - {vlan: 150, parent: eth1}\n    - {vlan: 150, parent: eth2}\n", "networks.labs[1].vlan", "already used by networks.labs[0]"),
            ("networks:\n  labs:\n    - {vlan: 150, parent: averyveryverylongname}\n", "networks.labs[0].parent", "at most 15"),
            ("networks:\n  labs:\n    - {vlan: 150, parent: eth1, bridge: \"br 150\"}\n", "networks.labs[0].bridge", "contains ' '"),
            ("networks:\n  labs:\n    - {vlan: 150, parent: eth1, cidr: 192.168.150.1/24}\n", "networks.labs[0].cidr", "host bits set; did you mean 192.168.150.0/24?"),
            ("networks:\n  labs:\n    - {vlan: 150, parent: eth1, cidr: lab}\n", "networks.labs[0].cidr", "not a network in CIDR form"),
            ("networks:\n  vlans:\n    - {name: eth1.150, parent: eth1, id: 150}\n  labs:\n    - {vlan: 150, parent: eth1}\n", "networks.labs[0].vlan", "VLAN 150 on \"eth1\" is already declared by networks.vlans[0]"),
            ("networks:\n  bridges:\n    - {name: br150}\n  labs:\n    - {vlan: 150, parent: eth1}\n", "networks.labs[0].bridge", "the lab's bridge \"br150\" is already declared by networks.bridges[0]"),
            ("networks:\n  bridges:\n    - {name: br0, allow: [{proto: tcp}]}\n", "networks.bridges[0].allow", "this bridge is open"),
            ("networks:\n  labs:\n    - {vlan: 150, isolation: isolated, allow: [{proto: tcp}, {proto: icmp, port: 22}]}\n", "networks.labs[0].allow[1].port", "icmp has no ports"),
            ("networks:\n  labs:\n    - {vlan: 150, isolation: isolated, allow: [{proto: udp, port: 0}]}\n", "networks.labs[0].allow[0].port", "1-65535"),
            ("networks:\n  labs:\n    - {vlan: 150, isolation: isolated, allow: [{proto: tcp, from: brx}]}\n", "networks.labs[0].allow[0].from", "neither a network in CIDR form nor a bridge"),
            ("networks:\n  labs:\n    - {vlan: 150, isolation: egress-only, allow: [{proto: tcp, from: br150}]}\n", "networks.labs[0].allow[0].from", "this bridge itself"),
            ("networks:\n  labs:\n    - {vlan: 150, gateway: none, ports_isolated: true}\n", "networks.labs[0].ports_isolated", "gateway: host"),
        ];
        run_table(cases);
    }

    #[test]
    fn valid_networks() {
        run_valid(&[
            "networks:\n  vlans:\n    - {name: a, parent: eth1, id: 1, mtu: 68}\n    - {name: b, parent: eth1, id: 4094, mtu: 65535}\n    - {name: c, parent: eth2, id: 1}\n",
            "networks:\n  vlans:\n    - {name: fifteen-bytes-x, parent: eth1, id: 7, addresses: [\"10.0.0.1/31\", \"10.0.0.2/32\", \"fd00::1/64\", \"10.1.2.0/16\"]}\n",
            "networks:\n  bridges:\n    - {name: br0, vlan_filtering: true, default_pvid: 4094, ports: [{iface: eth2, vlans: [{id: 1, pvid: true, untagged: true}, {id: 4094}]}, {iface: eth3}]}\n",
            "networks:\n  labs:\n    - {vlan: 150, parent: eth1, cidr: 192.168.150.0/24}\n    - {vlan: 151, parent: eth1, bridge: lab151, cidr: \"fd00:151::/64\"}\n",
            // Bridge-only labs: no parent, so no VLAN interface to clash with networks.vlans.
            "networks:\n  vlans:\n    - {name: eth1.150, parent: eth1, id: 150}\n  labs:\n    - {vlan: 150}\n    - {vlan: 151, bridge: vmbr151}\n",
            "networks:\n  bridges:\n    - {name: br0, isolation: isolated}\n    - {name: br1, isolation: open}\n  labs:\n    - {vlan: 150, isolation: isolated}\n",
            "networks:\n  bridges:\n    - {name: br0, ports_isolated: true, ports: [{iface: eth1}]}\n  labs:\n    - {vlan: 150, ports_isolated: true, isolation: egress-only}\n",
            "networks:\n  bridges:\n    - {name: br0, isolation: egress-only, allow: [{proto: tcp, port: 80}, {proto: icmp, from: br150}]}\n  labs:\n    - {vlan: 150, isolation: isolated, allow: [{proto: udp, port: 53, from: 10.0.0.0/8}, {proto: tcp, from: br0}, {proto: tcp, from: \"fd00::/64\"}]}\n",
        ]);
    }
}
