//! Table-style cases for the network planner.

use super::*;
use crate::network::types::VlanMembership;
use crate::network::types::{
    DesiredPort, LinkRecord, NetObserved, NetState, ObservedKind, ObservedLink, RegistryRoute,
};

const NODE: &str = "n1";

fn bridge(name: &str) -> DesiredLink {
    DesiredLink {
        name: name.into(),
        kind: LinkKind::Bridge {
            stp: false,
            vlan_filtering: false,
            default_pvid: None,
        },
        mtu: None,
        addresses: Vec::new(),
        up: true,
        ports: Vec::new(),
        ports_isolated: false,
        source: "test".into(),
    }
}

fn vlan(name: &str, parent: &str, id: u16) -> DesiredLink {
    DesiredLink {
        kind: LinkKind::Vlan {
            parent: parent.into(),
            id,
        },
        ..bridge(name)
    }
}

fn addr(d: DesiredLink, a: &str) -> DesiredLink {
    let mut d = d;
    d.addresses.push(a.parse().unwrap());
    d
}

fn port(d: DesiredLink, iface: &str, vlans: &[(u16, bool, bool)]) -> DesiredLink {
    let mut d = d;
    d.ports.push(DesiredPort {
        iface: iface.into(),
        vlans: vlans
            .iter()
            .map(|&(id, pvid, untagged)| VlanMembership { id, pvid, untagged })
            .collect(),
    });
    d
}

fn filtering(d: DesiredLink) -> DesiredLink {
    let mut d = d;
    d.kind = LinkKind::Bridge {
        stp: false,
        vlan_filtering: true,
        default_pvid: None,
    };
    d
}

/// The link as the kernel would show it once converged (owned by NODE).
fn seen(d: &DesiredLink, index: u32) -> ObservedLink {
    ObservedLink {
        index,
        name: d.name.clone(),
        kind: match &d.kind {
            LinkKind::Bridge {
                stp,
                vlan_filtering,
                default_pvid,
            } => ObservedKind::Bridge {
                stp: *stp,
                vlan_filtering: *vlan_filtering,
                default_pvid: Some(default_pvid.unwrap_or(1)),
            },
            LinkKind::Vlan { parent, id } => ObservedKind::Vlan {
                parent: Some(parent.clone()),
                id: *id,
            },
        },
        alias: Some(alias_for(NODE)),
        mtu: d.mtu.unwrap_or(1500),
        up: d.up,
        master: None,
        addresses: d.addresses.clone(),
        vlans: None,
        isolated: false,
    }
}

/// A link that Steward did not create (a NIC, a veth...).
fn foreign(name: &str, index: u32) -> ObservedLink {
    ObservedLink {
        index,
        name: name.into(),
        kind: ObservedKind::Other(String::new()),
        alias: None,
        mtu: 1500,
        up: true,
        master: None,
        addresses: Vec::new(),
        vlans: None,
        isolated: false,
    }
}

fn enslaved(o: ObservedLink, master: &str, vlans: Option<&[(u16, bool, bool)]>) -> ObservedLink {
    ObservedLink {
        master: Some(master.into()),
        vlans: vlans.map(|v| {
            v.iter()
                .map(|&(id, pvid, untagged)| VlanMembership { id, pvid, untagged })
                .collect()
        }),
        ..o
    }
}

fn rec(d: &DesiredLink, index: u32) -> (String, LinkRecord) {
    (
        d.name.clone(),
        LinkRecord {
            index,
            hash: link_hash(d),
        },
    )
}

fn render(p: &NetPlan) -> (Vec<String>, Vec<String>) {
    let one = |a: &NetAction| match a {
        NetAction::AddAddress { name, addr } | NetAction::DelAddress { name, addr } => {
            format!("{} {name} {addr}", a.kind())
        }
        NetAction::Enslave { port, bridge, .. } | NetAction::Release { port, bridge } => {
            format!("{} {port} {bridge}", a.kind())
        }
        NetAction::AddPortVlan { port, vlan, .. } => format!("{} {port} {}", a.kind(), vlan.id),
        NetAction::DelPortVlan { port, id, .. } => format!("{} {port} {id}", a.kind()),
        NetAction::IsolatePort { port, on, .. } => {
            format!("{} {port} {}", a.kind(), if *on { "on" } else { "off" })
        }
        other => format!("{} {}", other.kind(), other.resource()),
    };
    let mut actions: Vec<String> = p.actions.iter().map(one).collect();
    actions.extend(p.removals.iter().map(|a| format!("later: {}", one(a))));
    let verdicts = p
        .verdicts
        .iter()
        .map(|(n, v)| {
            let v = match v {
                Verdict::Converged => "converged",
                Verdict::Pending => "pending",
                Verdict::Drifted(_) => "drifted",
                Verdict::Conflict(_) => "conflict",
                Verdict::Refused(_) => "refused",
            };
            let problems = if p.problems.contains_key(n) {
                "+problems"
            } else {
                ""
            };
            format!("{n}={v}{problems}")
        })
        .collect();
    (actions, verdicts)
}

struct Case {
    name: &'static str,
    desired: Vec<DesiredLink>,
    observed: Vec<ObservedLink>,
    records: Vec<(String, LinkRecord)>,
    ports: Vec<(&'static str, &'static str)>,
    policy: Policy,
    route: Option<&'static str>,
    actions: &'static [&'static str],
    verdicts: &'static [&'static str],
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            desired: vec![],
            observed: vec![],
            records: vec![],
            ports: vec![],
            policy: Policy {
                allowed_vlan_parents: vec!["*".into()],
                ..Default::default()
            },
            route: None,
            actions: &[],
            verdicts: &[],
        }
    }
}

fn run(cases: Vec<Case>) {
    for c in cases {
        let desired = DesiredNetworks {
            links: c.desired,
            invalid: vec![],
        };
        let observed = NetObserved::new(
            c.observed,
            c.route.map(|iface| RegistryRoute {
                registry: "10.0.0.1".parse().unwrap(),
                iface: iface.into(),
            }),
        );
        let state = NetState {
            links: c.records.into_iter().collect(),
            ports: c
                .ports
                .iter()
                .map(|(p, b)| (p.to_string(), b.to_string()))
                .collect(),
            isolated: Default::default(),
            table: None,
        };
        let p = plan(&desired, &observed, &state, &c.policy, NODE);
        let (a, v) = render(&p);
        assert_eq!(a, c.actions, "{}: actions", c.name);
        assert_eq!(v, c.verdicts, "{}: verdicts ({:?})", c.name, p.verdicts);
    }
}

#[test]
fn bridges() {
    let br0 = addr(bridge("br0"), "10.0.0.1/24");
    let mut br0_9000 = br0.clone();
    br0_9000.mtu = Some(9000);
    let mut br0_stp = br0.clone();
    br0_stp.kind = LinkKind::Bridge {
        stp: true,
        vlan_filtering: false,
        default_pvid: None,
    };
    let mut hand_mtu = seen(&br0_9000, 5);
    hand_mtu.mtu = 1400;
    let mut hand_alias = seen(&br0, 5);
    hand_alias.alias = Some("mine".into());
    let mut hand_down = seen(&br0, 5);
    hand_down.up = false;
    let mut extra_addr = seen(&br0, 5);
    extra_addr.addresses.push("10.9.9.9/8".parse().unwrap());
    extra_addr.addresses.push("fe80::1/64".parse().unwrap());
    let unmanaged = foreign("br0", 5);
    let other_node = ObservedLink {
        alias: Some(alias_for("n2")),
        ..seen(&br0, 5)
    };
    run(vec![
        Case {
            name: "empty",
            ..Default::default()
        },
        Case {
            name: "create with address",
            desired: vec![br0.clone()],
            actions: &["create br0", "add-address br0 10.0.0.1/24"],
            verdicts: &["br0=pending"],
            ..Default::default()
        },
        Case {
            name: "converged is a no-op",
            desired: vec![br0.clone()],
            observed: vec![seen(&br0, 5)],
            records: vec![rec(&br0, 5)],
            verdicts: &["br0=converged"],
            ..Default::default()
        },
        Case {
            name: "adopts a link carrying our alias",
            desired: vec![br0.clone()],
            observed: vec![seen(&br0, 5)],
            verdicts: &["br0=converged"],
            ..Default::default()
        },
        Case {
            name: "MTU changed in the spec is pending",
            desired: vec![br0_9000.clone()],
            observed: vec![seen(&br0, 5)],
            records: vec![rec(&br0, 5)],
            actions: &["set br0"],
            verdicts: &["br0=pending"],
            ..Default::default()
        },
        Case {
            name: "MTU changed by hand is drift",
            desired: vec![br0_9000.clone()],
            observed: vec![hand_mtu],
            records: vec![rec(&br0_9000, 5)],
            actions: &["set br0"],
            verdicts: &["br0=drifted"],
            ..Default::default()
        },
        Case {
            name: "taken down by hand is drift",
            desired: vec![br0.clone()],
            observed: vec![hand_down],
            records: vec![rec(&br0, 5)],
            actions: &["set br0"],
            verdicts: &["br0=drifted"],
            ..Default::default()
        },
        Case {
            name: "alias changed by hand on our link (same ifindex) is restored",
            desired: vec![br0.clone()],
            observed: vec![hand_alias.clone()],
            records: vec![rec(&br0, 5)],
            actions: &["set br0"],
            verdicts: &["br0=drifted"],
            ..Default::default()
        },
        Case {
            name: "STP switched on in the spec",
            desired: vec![br0_stp],
            observed: vec![seen(&br0, 5)],
            records: vec![rec(&br0, 5)],
            actions: &["set-bridge br0"],
            verdicts: &["br0=pending"],
            ..Default::default()
        },
        Case {
            name: "extra address removed, IPv6 link-local kept",
            desired: vec![br0.clone()],
            observed: vec![extra_addr],
            records: vec![rec(&br0, 5)],
            actions: &["del-address br0 10.9.9.9/8"],
            verdicts: &["br0=drifted"],
            ..Default::default()
        },
        Case {
            name: "deleted by hand is recreated as drift",
            desired: vec![br0.clone()],
            records: vec![rec(&br0, 5)],
            actions: &["create br0", "add-address br0 10.0.0.1/24"],
            verdicts: &["br0=drifted"],
            ..Default::default()
        },
        Case {
            name: "unmanaged link with the name is a conflict",
            desired: vec![br0.clone()],
            observed: vec![unmanaged.clone()],
            verdicts: &["br0=conflict"],
            ..Default::default()
        },
        Case {
            name: "recreated by hand (new ifindex, no alias) is a conflict",
            desired: vec![br0.clone()],
            observed: vec![ObservedLink {
                index: 9,
                ..hand_alias
            }],
            records: vec![rec(&br0, 5)],
            verdicts: &["br0=conflict"],
            ..Default::default()
        },
        Case {
            name: "another node's link is a conflict",
            desired: vec![br0.clone()],
            observed: vec![other_node.clone()],
            verdicts: &["br0=conflict"],
            ..Default::default()
        },
        Case {
            name: "unmanaged link not in the spec is ignored",
            observed: vec![unmanaged],
            ..Default::default()
        },
        Case {
            name: "dropped from the spec is deleted later",
            observed: vec![seen(&br0, 5)],
            records: vec![rec(&br0, 5)],
            actions: &["later: delete br0"],
            ..Default::default()
        },
        Case {
            name: "our alias without our record is never deleted",
            observed: vec![seen(&br0, 5)],
            ..Default::default()
        },
    ]);
}

#[test]
fn hashes_ignore_the_source_and_follow_the_settings() {
    let a = addr(bridge("br0"), "10.0.0.1/24");
    let mut b = a.clone();
    b.source = "elsewhere".into();
    let mut c = a.clone();
    c.mtu = Some(1400);
    assert_eq!(link_hash(&a), link_hash(&b));
    assert_ne!(link_hash(&a), link_hash(&c));
}

#[path = "plan_ports_tests.rs"]
mod ports;
