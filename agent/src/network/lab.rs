//! Lab networks, pure: a `networks.labs` entry expands to a VLAN interface `<parent>.<vlan>`, a
//! bridge (`br<vlan>` unless named) carrying the VLAN interface as its port, and a subnet (the
//! lab's `cidr`, else the agent's `lab_cidr_template`) whose first host address is the gateway
//! on the bridge (with `gateway: none`, the host takes no address there: a router VM owns it).
//! A lab without `parent` is bridge-only: the bridge and its subnet, no VLAN interface. Attached VMs and containers get host addresses from offset 10 on (`.10`,
//! `.11`, ...), in order (VM NICs in spec order, then containers in spec order); an address
//! once handed out stays with its consumer (the assignments are kept in the agent's store)
//! until the consumer leaves the spec.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use steward_proto::{LabSpec, NodeSpec, WorkloadKind, WorkloadRef};

use super::types::{DesiredLink, DesiredPort, LinkKind};

/// The default of the agent's `lab_cidr_template`.
pub const DEFAULT_LAB_TEMPLATE: &str = "192.168.{vlan}.0/24";

/// Offset of the first address handed out to a consumer (`.10`).
pub const FIRST_LEASE: u128 = 10;

/// Longest interface name the kernel accepts.
const IFNAMSIZ_MAX: usize = 15;

/// A lab after expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    pub vlan: u16,
    /// `<parent>.<vlan>`, the bridge's port; none for a bridge-only lab.
    pub vlan_iface: Option<(String, String)>,
    pub bridge: String,
    pub cidr: IpNet,
    /// The lab's gateway: the subnet's first host, with the subnet's prefix length.
    pub gateway: IpNet,
    /// The host holds the gateway's address on the bridge (`gateway: host`); else it holds
    /// none and something on the lab (a router VM) owns it.
    pub host_gateway: bool,
    /// `ports_isolated`: no two ports of the bridge talk to each other through it.
    pub ports_isolated: bool,
}

/// The address `offset` hosts into `net` (`None` past its end, or on an IPv4 broadcast).
pub fn host(net: &IpNet, offset: u128) -> Option<IpAddr> {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let size: u128 = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    let last_usable = match net {
        IpNet::V4(_) => size.checked_sub(2)?, // no broadcast
        IpNet::V6(_) => size - 1,
    };
    if offset == 0 || offset > last_usable {
        return None;
    }
    Some(match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + u32::try_from(offset).ok()?).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + offset).into()),
    })
}

/// The subnet the template gives for `vlan`. Placeholders: `{vlan}` (the id), `{vlan_hi}` and
/// `{vlan_lo}` (id / 256 and id % 256, for templates that must cover ids above 255).
pub fn template_cidr(template: &str, vlan: u16) -> Result<IpNet, String> {
    let text = template
        .replace("{vlan}", &vlan.to_string())
        .replace("{vlan_hi}", &(vlan / 256).to_string())
        .replace("{vlan_lo}", &(vlan % 256).to_string());
    match text.parse::<IpNet>() {
        Ok(net) if net == net.trunc() => Ok(net),
        Ok(net) => Err(format!(
            "lab_cidr_template {template:?} gives {text} for VLAN {vlan}, which has host bits \
             set (did you mean {}?)",
            net.trunc()
        )),
        Err(_) => Err(format!(
            "lab_cidr_template {template:?} gives {text:?} for VLAN {vlan}, which is not a \
             network in CIDR form; set cidr: on this lab, or use {{vlan_hi}}.{{vlan_lo}} in the \
             template for VLAN ids above 255"
        )),
    }
}

/// Checks a configured template: it must hold a placeholder and give a network for VLAN 1.
pub fn check_template(template: &str) -> Result<(), String> {
    if !["{vlan}", "{vlan_hi}", "{vlan_lo}"]
        .iter()
        .any(|p| template.contains(p))
    {
        return Err(format!(
            "lab_cidr_template {template:?} has no {{vlan}} (or {{vlan_hi}}/{{vlan_lo}}) \
             placeholder, so every lab would get the same subnet"
        ));
    }
    template_cidr(template, 1).map(|_| ())
}

/// Expands one lab entry.
pub fn expand(lab: &LabSpec, template: &str) -> Result<Lab, String> {
    let vlan_iface = match &lab.parent {
        Some(parent) => Some((parent.clone(), vlan_iface_name(parent, lab.vlan)?)),
        None => None,
    };
    let bridge = lab
        .bridge
        .clone()
        .unwrap_or_else(|| format!("br{}", lab.vlan));
    let cidr = match &lab.cidr {
        Some(c) => c
            .parse::<IpNet>()
            .map_err(|_| format!("lab cidr {c:?} is not a network in CIDR form"))?
            .trunc(),
        None => template_cidr(template, lab.vlan)?,
    };
    let gateway_ip =
        host(&cidr, 1).ok_or_else(|| format!("lab subnet {cidr} has no host addresses"))?;
    if host(&cidr, FIRST_LEASE).is_none() {
        return Err(format!(
            "lab subnet {cidr} is too small: addresses are handed out from .{FIRST_LEASE} on; \
             use at least a /28 (IPv4) or /124 (IPv6)"
        ));
    }
    let gateway =
        IpNet::new(gateway_ip, cidr.prefix_len()).map_err(|e| format!("lab subnet {cidr}: {e}"))?;
    Ok(Lab {
        vlan: lab.vlan,
        host_gateway: lab.gateway.is_host(),
        ports_isolated: lab.ports_isolated,
        vlan_iface,
        bridge,
        cidr,
        gateway,
    })
}

/// `<parent>.<vlan>`, if the kernel accepts a name that long.
fn vlan_iface_name(parent: &str, vlan: u16) -> Result<String, String> {
    let name = format!("{parent}.{vlan}");
    if name.len() > IFNAMSIZ_MAX {
        return Err(format!(
            "the lab's VLAN interface name {name:?} is {} bytes, the kernel allows at most \
             {IFNAMSIZ_MAX}; declare the VLAN under networks.vlans and the bridge under \
             networks.bridges instead",
            name.len()
        ));
    }
    Ok(name)
}

impl Lab {
    /// The VLAN interface (if the lab has a parent) and the bridge the lab stands for, in
    /// creation order.
    pub fn links(&self, source: &str) -> Vec<DesiredLink> {
        let mut out = Vec::with_capacity(2);
        if let Some((parent, iface)) = &self.vlan_iface {
            out.push(DesiredLink {
                name: iface.clone(),
                kind: LinkKind::Vlan {
                    parent: parent.clone(),
                    id: self.vlan,
                },
                mtu: None,
                addresses: Vec::new(),
                up: true,
                ports: Vec::new(),
                ports_isolated: false,
                source: source.to_string(),
            });
        }
        out.push(DesiredLink {
            name: self.bridge.clone(),
            kind: LinkKind::Bridge {
                stp: false,
                vlan_filtering: false,
                default_pvid: None,
            },
            mtu: None,
            addresses: if self.host_gateway {
                vec![self.gateway]
            } else {
                Vec::new()
            },
            up: true,
            ports: (self.vlan_iface.iter())
                .map(|(_, iface)| DesiredPort {
                    iface: iface.clone(),
                    vlans: Vec::new(),
                })
                .collect(),
            ports_isolated: self.ports_isolated,
            source: source.to_string(),
        });
        out
    }
}

/// The lease key of workload `w`'s attachment to a bridge, as leases are stored:
/// `<kind>:<name>`, with `/<nic>` for one NIC of a workload that has several (a VM's).
pub fn lease_key(w: &WorkloadRef, nic: Option<usize>) -> String {
    match nic {
        Some(i) => format!("{}:{}/{i}", w.kind.as_str(), w.name),
        None => format!("{}:{}", w.kind.as_str(), w.name),
    }
}

/// The workload holding the lease of `key` (see [`lease_key`]).
pub fn lease_holder(key: &str) -> Option<WorkloadRef> {
    let (kind, rest) = key.split_once(':')?;
    let name = match rest.rsplit_once('/') {
        Some((name, nic)) if nic.parse::<usize>().is_ok() => name,
        _ => rest,
    };
    Some(WorkloadRef::new(WorkloadKind::parse(kind)?, name))
}

/// The NIC index of a VM's lease key (`vm:<name>/<nic>`).
pub fn lease_nic(key: &str) -> Option<usize> {
    key.rsplit_once('/')?.1.parse().ok()
}

/// Who is attached to `bridge`, as lease keys in hand-out order: VM NICs (`vm:<name>/<nic>`)
/// in spec order, then containers (`container:<name>`) in spec order.
pub fn consumers(spec: &NodeSpec, bridge: &str) -> Vec<String> {
    let mut out = Vec::new();
    for vm in &spec.vms {
        let w = WorkloadRef::new(WorkloadKind::Vm, &vm.name);
        for (i, nic) in vm.nics.iter().enumerate() {
            if nic.bridge == bridge {
                out.push(lease_key(&w, Some(i)));
            }
        }
    }
    for c in &spec.containers {
        if c.network.as_deref() == Some(bridge) {
            out.push(lease_key(
                &WorkloadRef::new(WorkloadKind::Container, &c.name),
                None,
            ));
        }
    }
    out
}

/// Leases for `consumers` on `lab`: an existing lease inside the subnet is kept, newcomers get
/// the lowest free address from `.10` on. Consumers that left lose theirs. Returns the leases
/// and, for consumers that could not get one, why.
pub fn assign(
    lab: &Lab,
    consumers: &[String],
    existing: &BTreeMap<String, IpAddr>,
) -> (BTreeMap<String, IpAddr>, Vec<(String, String)>) {
    let mut leases = BTreeMap::new();
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    for c in consumers {
        if let Some(ip) = existing.get(c) {
            if lab.cidr.contains(ip) && *ip != lab.gateway.addr() && taken.insert(*ip) {
                leases.insert(c.clone(), *ip);
            }
        }
    }
    let mut errors = Vec::new();
    let mut offset = FIRST_LEASE;
    for c in consumers {
        if leases.contains_key(c) {
            continue;
        }
        loop {
            match host(&lab.cidr, offset) {
                Some(ip) if taken.contains(&ip) => offset += 1,
                Some(ip) => {
                    taken.insert(ip);
                    leases.insert(c.clone(), ip);
                    break;
                }
                None => {
                    errors.push((
                        c.clone(),
                        format!(
                            "lab {} ({}) has no free address left for {c}",
                            lab.bridge, lab.cidr
                        ),
                    ));
                    break;
                }
            }
        }
    }
    (leases, errors)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lab(yaml: &str) -> LabSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn expansion_table() {
        let t = DEFAULT_LAB_TEMPLATE;
        // (lab, template, vlan iface, bridge, cidr, gateway) or error fragment
        let ok: &[(&str, &str, &str, &str, &str, &str)] = &[
            (
                "{vlan: 142, parent: eth1}",
                t,
                "eth1.142",
                "br142",
                "192.168.142.0/24",
                "192.168.142.1/24",
            ),
            (
                "{vlan: 150, parent: eth1, bridge: lab150}",
                t,
                "eth1.150",
                "lab150",
                "192.168.150.0/24",
                "192.168.150.1/24",
            ),
            (
                "{vlan: 7, parent: eth0, cidr: 10.7.0.0/16}",
                t,
                "eth0.7",
                "br7",
                "10.7.0.0/16",
                "10.7.0.1/16",
            ),
            (
                "{vlan: 151, parent: eth1, cidr: 'fd00:151::/64'}",
                t,
                "eth1.151",
                "br151",
                "fd00:151::/64",
                "fd00:151::1/64",
            ),
            (
                "{vlan: 300, parent: eth1}",
                "10.{vlan_hi}.{vlan_lo}.0/24",
                "eth1.300",
                "br300",
                "10.1.44.0/24",
                "10.1.44.1/24",
            ),
            (
                "{vlan: 42, parent: eth1}",
                "172.20.{vlan}.0/24",
                "eth1.42",
                "br42",
                "172.20.42.0/24",
                "172.20.42.1/24",
            ),
            // Bridge-only: no VLAN interface.
            (
                "{vlan: 120, bridge: vmbr120}",
                t,
                "",
                "vmbr120",
                "192.168.120.0/24",
                "192.168.120.1/24",
            ),
        ];
        for (spec, template, vif, br, cidr, gw) in ok {
            let l = expand(&lab(spec), template).unwrap();
            let iface = l.vlan_iface.as_ref().map(|(_, i)| i.as_str());
            assert_eq!(iface.unwrap_or(""), *vif, "{spec}");
            assert_eq!(l.bridge, *br, "{spec}");
            assert_eq!(l.cidr.to_string(), *cidr, "{spec}");
            assert_eq!(l.gateway.to_string(), *gw, "{spec}");
        }
        let bad: &[(&str, &str, &str)] = &[
            ("{vlan: 300, parent: eth1}", t, "192.168.300.0/24"),
            ("{vlan: 555, parent: enp0s31f6abcd}", t, "at most 15"),
            ("{vlan: 5, parent: eth1, cidr: 10.0.0.0/30}", t, "too small"),
            ("{vlan: 5, parent: eth1}", "10.{vlan}.0.1/24", "host bits"),
        ];
        for (spec, template, want) in bad {
            let e = expand(&lab(spec), template).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }

    #[test]
    fn templates_are_checked() {
        assert!(check_template(DEFAULT_LAB_TEMPLATE).is_ok());
        assert!(check_template("10.{vlan_hi}.{vlan_lo}.0/24").is_ok());
        assert!(check_template("10.0.0.0/24")
            .unwrap_err()
            .contains("placeholder"));
        assert!(check_template("x{vlan}")
            .unwrap_err()
            .contains("not a network"));
    }

    #[test]
    fn links_are_vlan_then_bridge_with_gateway() {
        let l = expand(&lab("{vlan: 142, parent: eth1}"), DEFAULT_LAB_TEMPLATE).unwrap();
        let [v, b] = <[DesiredLink; 2]>::try_from(l.links("networks.labs[0]")).unwrap();
        assert_eq!(
            v.kind,
            LinkKind::Vlan {
                parent: "eth1".into(),
                id: 142
            }
        );
        assert_eq!(b.name, "br142");
        assert_eq!(b.addresses[0].to_string(), "192.168.142.1/24");
        assert_eq!(b.ports[0].iface, "eth1.142");
        // Bridge-only: the bridge alone, with its gateway and no port.
        let l = expand(&lab("{vlan: 142}"), DEFAULT_LAB_TEMPLATE).unwrap();
        let links = l.links("networks.labs[0]");
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].name, "br142");
        assert_eq!(links[0].addresses[0].to_string(), "192.168.142.1/24");
        assert!(links[0].ports.is_empty());
        // gateway: none: the bridge takes no address; the gateway stays .1 for the leases.
        let l = expand(&lab("{vlan: 142, gateway: none}"), DEFAULT_LAB_TEMPLATE).unwrap();
        let links = l.links("networks.labs[0]");
        assert!(links[0].addresses.is_empty());
        assert_eq!(l.gateway.to_string(), "192.168.142.1/24");
        assert_eq!(lease_nic("vm:kali/2"), Some(2));
        assert_eq!(lease_nic("container:web"), None);
    }

    #[test]
    fn leases_in_order_and_stable() {
        let l = expand(&lab("{vlan: 142, parent: eth1}"), DEFAULT_LAB_TEMPLATE).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (first, errs) = assign(
            &l,
            &cs(&["vm:kali/0", "container:a", "container:b"]),
            &BTreeMap::new(),
        );
        assert!(errs.is_empty());
        assert_eq!(first["vm:kali/0"], ip("192.168.142.10"));
        assert_eq!(first["container:a"], ip("192.168.142.11"));
        assert_eq!(first["container:b"], ip("192.168.142.12"));
        // a leaves, c arrives before b in spec order: b keeps .12, c takes the lowest free (.11).
        let (second, _) = assign(
            &l,
            &cs(&["vm:kali/0", "container:c", "container:b"]),
            &first,
        );
        assert_eq!(second["container:b"], ip("192.168.142.12"));
        assert_eq!(second["container:c"], ip("192.168.142.11"));
        assert!(!second.contains_key("container:a"));
        // Same input, same output (restart).
        assert_eq!(
            assign(
                &l,
                &cs(&["vm:kali/0", "container:c", "container:b"]),
                &second
            )
            .0,
            second
        );
        // A stored lease outside the subnet (the lab's cidr changed) is replaced.
        let mut stale = BTreeMap::new();
        stale.insert("container:a".to_string(), ip("10.0.0.5"));
        assert_eq!(
            assign(&l, &cs(&["container:a"]), &stale).0["container:a"],
            ip("192.168.142.10")
        );
    }

    #[test]
    fn small_pool_runs_out_with_a_reason() {
        let l = expand(
            &lab("{vlan: 9, parent: eth1, cidr: 10.9.0.0/28}"),
            DEFAULT_LAB_TEMPLATE,
        )
        .unwrap();
        let many: Vec<String> = (0..6).map(|i| format!("container:c{i}")).collect();
        let (leases, errs) = assign(&l, &many, &BTreeMap::new());
        assert_eq!(leases.len(), 5, "{leases:?}"); // .10 - .14 (.15 is the broadcast)
        assert_eq!(errs.len(), 1);
        assert!(errs[0].1.contains("no free address"), "{errs:?}");
    }

    #[test]
    fn consumers_vms_first_then_containers() {
        let spec: NodeSpec = serde_norway::from_str(
            "containers:\n  - {name: web, image: x, network: br142}\n  - {name: other, image: x}\nvms:\n  - {name: k, image: /i.qcow2, memory: 1Gi, nics: [{bridge: br1}, {bridge: br142}]}\n",
        )
        .unwrap();
        assert_eq!(consumers(&spec, "br142"), ["vm:k/1", "container:web"]);
        let vm = WorkloadRef::new(WorkloadKind::Vm, "k");
        assert_eq!(lease_holder("vm:k/1"), Some(vm));
        let web = WorkloadRef::new(WorkloadKind::Container, "web");
        assert_eq!(lease_holder("container:web"), Some(web));
        assert_eq!(lease_holder("lxc:x"), None);
    }
}
