//! From the spec's `networks` to the planner's [`DesiredNetworks`], pure: VLAN interfaces and
//! bridges as written, plus the links every lab expands to (see [`super::lab`]).

use ipnet::IpNet;
use steward_proto::{NetworksSpec, PortVlan};

use super::lab::{self, Lab};
use super::types::{DesiredLink, DesiredNetworks, DesiredPort, LinkKind, VlanMembership};

fn addresses(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|a| {
            a.parse::<IpNet>()
                .map_err(|_| format!("address {a:?} is not in CIDR form"))
        })
        .collect()
}

fn membership(v: &PortVlan) -> VlanMembership {
    VlanMembership {
        id: v.id,
        pvid: v.pvid,
        untagged: v.untagged,
    }
}

/// The links `n` asks for (labs expanded with `template`), and the expanded labs.
pub fn desired(n: &NetworksSpec, template: &str) -> (DesiredNetworks, Vec<Lab>) {
    let mut out = DesiredNetworks::default();
    let mut labs = Vec::new();
    for (i, v) in n.vlans.iter().enumerate() {
        match addresses(&v.addresses) {
            Ok(addresses) => out.links.push(DesiredLink {
                name: v.name.clone(),
                kind: LinkKind::Vlan {
                    parent: v.parent.clone(),
                    id: v.id,
                },
                mtu: v.mtu,
                addresses,
                up: v.up,
                ports: Vec::new(),
                ports_isolated: false,
                source: format!("networks.vlans[{i}]"),
            }),
            Err(e) => out.invalid.push((v.name.clone(), e)),
        }
    }
    for (i, b) in n.bridges.iter().enumerate() {
        match addresses(&b.addresses) {
            Ok(addresses) => out.links.push(DesiredLink {
                name: b.name.clone(),
                kind: LinkKind::Bridge {
                    stp: b.stp,
                    vlan_filtering: b.vlan_filtering,
                    default_pvid: b.default_pvid,
                },
                mtu: b.mtu,
                addresses,
                up: b.up,
                ports: b
                    .ports
                    .iter()
                    .map(|p| DesiredPort {
                        iface: p.iface.clone(),
                        vlans: p.vlans.iter().map(membership).collect(),
                    })
                    .collect(),
                ports_isolated: b.ports_isolated,
                source: format!("networks.bridges[{i}]"),
            }),
            Err(e) => out.invalid.push((b.name.clone(), e)),
        }
    }
    for (i, l) in n.labs.iter().enumerate() {
        let source = format!("networks.labs[{i}]");
        match lab::expand(l, template) {
            Ok(lab) => {
                out.links.extend(lab.links(&source));
                labs.push(lab);
            }
            Err(e) => out.invalid.push((format!("lab-{}", l.vlan), e)),
        }
    }
    (out, labs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spec_to_links() {
        let n: NetworksSpec = serde_norway::from_str(
            "vlans: [{name: v5, parent: eth1, id: 5, mtu: 1400, addresses: [10.0.0.1/24], up: false}]\n\
             bridges: [{name: br0, stp: true, vlan_filtering: true, default_pvid: 7, ports: [{iface: eth2, vlans: [{id: 20, pvid: true, untagged: true}, {id: 30}]}]}]\n\
             labs: [{vlan: 142, parent: eth1}, {vlan: 300, parent: eth1}]\n",
        )
        .unwrap();
        let (d, labs) = desired(&n, lab::DEFAULT_LAB_TEMPLATE);
        let names: Vec<&str> = d.links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["v5", "br0", "eth1.142", "br142"]);
        assert_eq!(d.links[0].mtu, Some(1400));
        assert!(!d.links[0].up);
        assert_eq!(d.links[0].addresses[0].to_string(), "10.0.0.1/24");
        assert_eq!(
            d.links[1].kind,
            LinkKind::Bridge {
                stp: true,
                vlan_filtering: true,
                default_pvid: Some(7)
            }
        );
        assert_eq!(
            d.links[1].ports[0].vlans,
            [
                VlanMembership {
                    id: 20,
                    pvid: true,
                    untagged: true
                },
                VlanMembership {
                    id: 30,
                    pvid: false,
                    untagged: false
                }
            ]
        );
        assert_eq!(labs.len(), 1);
        assert_eq!(d.invalid.len(), 1);
        assert_eq!(d.invalid[0].0, "lab-300");
        assert!(
            d.invalid[0].1.contains("192.168.300.0/24"),
            "{:?}",
            d.invalid
        );
    }
}
