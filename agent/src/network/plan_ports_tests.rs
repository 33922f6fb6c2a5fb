//! Table-style cases for the network planner: bridge ports, their VLANs, and the link that
//! carries the route to the registry.

use super::*;

#[test]
fn ports_and_vlans() {
    let v142 = vlan("eth1.142", "eth1", 142);
    let br142 = port(addr(bridge("br142"), "192.168.142.1/24"), "eth1.142", &[]);
    let trunk = port(
        filtering(bridge("trunk")),
        "eth2",
        &[(20, true, true), (30, false, false)],
    );
    let eth1 = foreign("eth1", 2);
    let eth2 = foreign("eth2", 3);
    let br_eth3 = port(bridge("br0"), "eth3", &[]);
    run(vec![
        Case {
            name: "lab: VLAN before its bridge, even when listed after it",
            desired: vec![br142.clone(), v142.clone()],
            observed: vec![eth1.clone()],
            actions: &[
                "create eth1.142",
                "create br142",
                "add-address br142 192.168.142.1/24",
                "enslave eth1.142 br142",
            ],
            verdicts: &["eth1.142=pending", "br142=pending"],
            ..Default::default()
        },
        Case {
            name: "VLANs refused by the default policy; the bridge still comes, without its port",
            desired: vec![v142.clone(), br142.clone()],
            observed: vec![eth1.clone()],
            policy: Policy::default(),
            actions: &["create br142", "add-address br142 192.168.142.1/24"],
            verdicts: &["eth1.142=refused", "br142=pending+problems"],
            ..Default::default()
        },
        Case {
            name: "lab converged",
            desired: vec![v142.clone(), br142.clone()],
            observed: vec![
                eth1.clone(),
                enslaved(seen(&v142, 10), "br142", None),
                seen(&br142, 11),
            ],
            records: vec![rec(&v142, 10), rec(&br142, 11)],
            verdicts: &["eth1.142=converged", "br142=converged"],
            ..Default::default()
        },
        Case {
            name: "VLAN id changed in the spec: delete and create",
            desired: vec![vlan("eth1.142", "eth1", 143)],
            observed: vec![eth1.clone(), seen(&v142, 10)],
            records: vec![rec(&v142, 10)],
            actions: &["delete eth1.142", "create eth1.142"],
            verdicts: &["eth1.142=pending"],
            ..Default::default()
        },
        Case {
            name: "missing port: bridge made, problem reported",
            desired: vec![br_eth3.clone()],
            actions: &["create br0"],
            verdicts: &["br0=pending+problems"],
            ..Default::default()
        },
        Case {
            name: "port of someone else's bridge is left alone",
            desired: vec![br_eth3.clone()],
            observed: vec![enslaved(foreign("eth3", 4), "docker0", None)],
            actions: &["create br0"],
            verdicts: &["br0=pending+problems"],
            ..Default::default()
        },
        Case {
            name: "new port on a VLAN-filtering bridge: enslave, VLANs, drop the default PVID",
            desired: vec![trunk.clone()],
            observed: vec![eth2.clone()],
            actions: &[
                "create trunk",
                "enslave eth2 trunk",
                "add-port-vlan eth2 20",
                "add-port-vlan eth2 30",
                "del-port-vlan eth2 1",
            ],
            verdicts: &["trunk=pending"],
            ..Default::default()
        },
        Case {
            name: "port VLANs changed by hand are drift",
            desired: vec![trunk.clone()],
            observed: vec![
                seen(&trunk, 7),
                enslaved(
                    eth2.clone(),
                    "trunk",
                    Some(&[(20, true, true), (40, false, false)]),
                ),
            ],
            records: vec![rec(&trunk, 7)],
            ports: vec![("eth2", "trunk")],
            actions: &["add-port-vlan eth2 30", "del-port-vlan eth2 40"],
            verdicts: &["trunk=drifted"],
            ..Default::default()
        },
        Case {
            name: "port VLANs converged",
            desired: vec![trunk.clone()],
            observed: vec![
                seen(&trunk, 7),
                enslaved(
                    eth2.clone(),
                    "trunk",
                    Some(&[(30, false, false), (20, true, true)]),
                ),
            ],
            records: vec![rec(&trunk, 7)],
            ports: vec![("eth2", "trunk")],
            verdicts: &["trunk=converged"],
            ..Default::default()
        },
        Case {
            name: "port taken out by hand is put back",
            desired: vec![br_eth3.clone()],
            observed: vec![seen(&br_eth3, 7), foreign("eth3", 4)],
            records: vec![rec(&br_eth3, 7)],
            ports: vec![("eth3", "br0")],
            actions: &["enslave eth3 br0"],
            verdicts: &["br0=drifted"],
            ..Default::default()
        },
        Case {
            name: "a port we enslaved and the spec dropped is released",
            desired: vec![bridge("br0")],
            observed: vec![
                seen(&bridge("br0"), 7),
                enslaved(foreign("eth3", 4), "br0", None),
            ],
            records: vec![rec(&br_eth3, 7)],
            ports: vec![("eth3", "br0")],
            actions: &["release eth3 br0"],
            verdicts: &["br0=pending"],
            ..Default::default()
        },
        Case {
            name: "ports someone else put on our bridge (Docker's veths) stay",
            desired: vec![bridge("br0")],
            observed: vec![
                seen(&bridge("br0"), 7),
                enslaved(foreign("veth1", 4), "br0", None),
            ],
            records: vec![rec(&bridge("br0"), 7)],
            verdicts: &["br0=converged"],
            ..Default::default()
        },
        Case {
            name: "removal order: bridge before its VLAN port, VLAN before its parent bridge",
            observed: vec![
                eth1.clone(),
                enslaved(seen(&v142, 10), "br142", None),
                seen(&br142, 11),
                seen(&vlan("br142.5", "br142", 5), 12),
            ],
            records: vec![
                rec(&v142, 10),
                rec(&br142, 11),
                rec(&vlan("br142.5", "br142", 5), 12),
            ],
            actions: &[
                "later: delete br142.5",
                "later: delete br142",
                "later: delete eth1.142",
            ],
            ..Default::default()
        },
        Case {
            name: "dependency cycle is refused",
            desired: vec![vlan("a", "b", 5), vlan("b", "a", 6)],
            verdicts: &["a=refused", "b=refused"],
            ..Default::default()
        },
    ]);
}

#[test]
fn registry_route_is_protected() {
    let br0 = port(addr(bridge("br0"), "10.0.0.2/24"), "eth0", &[]);
    let mut readdressed = br0.clone();
    readdressed.addresses = vec!["10.0.0.3/24".parse().unwrap()];
    let open = Policy {
        allowed_vlan_parents: vec!["*".into()],
        allow_registry_interface_changes: true,
        ..Default::default()
    };
    run(vec![
        Case {
            name: "enslaving the registry interface is refused",
            desired: vec![br0.clone()],
            observed: vec![foreign("eth0", 2)],
            route: Some("eth0"),
            actions: &["create br0", "add-address br0 10.0.0.2/24"],
            verdicts: &["br0=pending+problems"],
            ..Default::default()
        },
        Case {
            name: "allowed by policy",
            desired: vec![br0.clone()],
            observed: vec![foreign("eth0", 2)],
            route: Some("eth0"),
            policy: open.clone(),
            actions: &[
                "create br0",
                "add-address br0 10.0.0.2/24",
                "enslave eth0 br0",
            ],
            verdicts: &["br0=pending"],
            ..Default::default()
        },
        Case {
            name: "re-addressing the bridge carrying the route is refused",
            desired: vec![readdressed.clone()],
            observed: vec![seen(&br0, 7), enslaved(foreign("eth0", 2), "br0", None)],
            records: vec![rec(&br0, 7)],
            ports: vec![("eth0", "br0")],
            route: Some("br0"),
            verdicts: &["br0=refused"],
            ..Default::default()
        },
        Case {
            name: "MTU changes on it are fine",
            desired: vec![{
                let mut b = br0.clone();
                b.mtu = Some(1400);
                b
            }],
            observed: vec![seen(&br0, 7), enslaved(foreign("eth0", 2), "br0", None)],
            records: vec![rec(&br0, 7)],
            ports: vec![("eth0", "br0")],
            route: Some("br0"),
            actions: &["set br0"],
            verdicts: &["br0=pending"],
            ..Default::default()
        },
        Case {
            name: "deleting it is refused",
            observed: vec![seen(&br0, 7), enslaved(foreign("eth0", 2), "br0", None)],
            records: vec![rec(&br0, 7)],
            route: Some("br0"),
            verdicts: &["br0=refused"],
            ..Default::default()
        },
    ]);
}

#[test]
fn ports_isolated_flags_every_port_but_the_uplinks() {
    let plain = port(bridge("br142"), "eth1.142", &[]);
    let mut shared = plain.clone();
    shared.ports_isolated = true;
    let v142 = vlan("eth1.142", "eth1", 142);
    let uplink = enslaved(seen(&v142, 10), "br142", None);
    let veth = |name: &str, i, on| ObservedLink {
        isolated: on,
        ..enslaved(foreign(name, i), "br142", None)
    };
    let flagged = |o: ObservedLink| ObservedLink {
        isolated: true,
        ..o
    };
    let elsewhere = enslaved(foreign("vethz", 30), "docker0", None);
    let base = |d: &DesiredLink| {
        vec![
            foreign("eth1", 2),
            uplink.clone(),
            seen(d, 11),
            elsewhere.clone(),
        ]
    };
    let with = |d: &DesiredLink, more: Vec<ObservedLink>| {
        let mut o = base(d);
        o.extend(more);
        o
    };
    run(vec![
        Case {
            name:
                "two workloads' ports get the flag; the VLAN uplink and other bridges' ports do not",
            desired: vec![v142.clone(), shared.clone()],
            observed: with(
                &shared,
                vec![veth("veth1", 20, false), veth("tap0", 21, false)],
            ),
            records: vec![rec(&v142, 10), rec(&shared, 11)],
            actions: &["isolate-port tap0 on", "isolate-port veth1 on"],
            verdicts: &["eth1.142=converged", "br142=pending"],
            ..Default::default()
        },
        Case {
            name: "flags in place: nothing to do",
            desired: vec![v142.clone(), shared.clone()],
            observed: with(
                &shared,
                vec![veth("veth1", 20, true), veth("tap0", 21, true)],
            ),
            records: vec![rec(&v142, 10), rec(&shared, 11)],
            verdicts: &["eth1.142=converged", "br142=converged"],
            ..Default::default()
        },
        Case {
            name: "an uplink flagged by hand loses the flag",
            desired: vec![v142.clone(), shared.clone()],
            observed: vec![
                foreign("eth1", 2),
                flagged(uplink.clone()),
                seen(&shared, 11),
                veth("veth1", 20, true),
            ],
            records: vec![rec(&v142, 10), rec(&shared, 11)],
            actions: &["isolate-port eth1.142 off"],
            verdicts: &["eth1.142=converged", "br142=pending"],
            ..Default::default()
        },
        Case {
            name: "policy removed: the flags are cleared",
            desired: vec![v142.clone(), plain.clone()],
            observed: with(
                &plain,
                vec![veth("veth1", 20, true), veth("tap0", 21, false)],
            ),
            records: vec![rec(&v142, 10), rec(&plain, 11)],
            actions: &["isolate-port veth1 off"],
            verdicts: &["eth1.142=converged", "br142=pending"],
            ..Default::default()
        },
        Case {
            name: "a bridge created in this pass has no workload ports yet",
            desired: vec![v142.clone(), shared.clone()],
            observed: vec![foreign("eth1", 2), elsewhere.clone()],
            actions: &["create eth1.142", "create br142", "enslave eth1.142 br142"],
            verdicts: &["eth1.142=pending", "br142=pending"],
            ..Default::default()
        },
    ]);
}
