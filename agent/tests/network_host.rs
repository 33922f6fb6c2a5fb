//! Host networks with the real agent binary and real netlink, each test in a fresh network
//! namespace (`common::netns`): create / change / remove, a no-op re-apply that writes nothing,
//! an unmanaged link holding a wanted name, lab leases kept across runs. The host's own
//! namespace is never touched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::netns::{data_dir, require_netns};

#[test]
fn create_change_remove() {
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.veth("p0", "p0peer");

    let a = ns.apply(
        &data,
        "networks:\n  bridges:\n    - {name: bra, mtu: 1400, addresses: [10.10.0.1/24], ports: [{iface: p0}]}\n    - {name: brb, up: false}\n",
        None,
    );
    assert_eq!(a.code, 0, "{}", a.log);
    assert_eq!(a.state("bra"), ("converged".into(), String::new()));
    assert_eq!(a.state("brb").0, "converged");
    let bra = ns.link("bra").expect("bra exists");
    assert_eq!(bra["linkinfo"]["info_kind"], "bridge");
    assert_eq!(bra["mtu"], 1400);
    assert_eq!(bra["ifalias"], "steward:local");
    assert_eq!(bra["linkinfo"]["info_data"]["stp_state"], 0);
    assert!(
        bra["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{bra}"
    );
    assert_eq!(ns.addrs("bra"), ["10.10.0.1/24"]);
    assert_eq!(ns.link("p0").unwrap()["master"], "bra");
    let brb = ns.link("brb").expect("brb exists");
    assert!(
        !brb["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{brb}"
    );

    // Change MTU, STP, the addresses, and bring brb up.
    let a = ns.apply(
        &data,
        "networks:\n  bridges:\n    - {name: bra, mtu: 1450, stp: true, addresses: [10.10.1.1/24, \"fd00:10::1/64\"], ports: [{iface: p0}]}\n    - {name: brb}\n",
        None,
    );
    assert_eq!(a.code, 0, "{}", a.log);
    assert_eq!(a.state("bra"), ("converged".into(), String::new()));
    let bra2 = ns.link("bra").unwrap();
    assert_eq!(
        bra2["ifindex"], bra["ifindex"],
        "changed in place, not recreated"
    );
    assert_eq!(bra2["mtu"], 1450);
    assert_eq!(bra2["linkinfo"]["info_data"]["stp_state"], 1);
    let mut addrs = ns.addrs("bra");
    addrs.sort();
    assert_eq!(addrs, ["10.10.1.1/24", "fd00:10::1/64"]);
    assert!(ns.link("brb").unwrap()["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "UP"));

    // Remove brb and take p0 out of bra.
    let a = ns.apply(
        &data,
        "networks:\n  bridges:\n    - {name: bra, mtu: 1450, stp: true, addresses: [10.10.1.1/24, \"fd00:10::1/64\"]}\n",
        None,
    );
    assert_eq!(a.code, 0, "{}", a.log);
    assert!(ns.link("brb").is_none(), "brb must be deleted");
    assert!(
        ns.link("p0").unwrap().get("master").is_none(),
        "p0 released"
    );

    // Remove everything: the managed bridge goes, the veth (not ours) stays.
    let a = ns.apply(&data, "{}\n", None);
    assert_eq!(a.code, 0, "{}", a.log);
    assert!(ns.link("bra").is_none(), "bra must be deleted");
    assert!(
        ns.link("p0").is_some(),
        "an unmanaged port is never deleted"
    );
}

#[test]
fn noop_reapply_makes_no_netlink_writes() {
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.veth("q0", "q0peer");
    ns.veth("q1", "q1peer");
    let spec = "networks:\n  bridges:\n    - {name: brq0, mtu: 1400, stp: true, addresses: [10.20.0.1/24, \"fd00:20::1/64\"], ports: [{iface: q0}]}\n    - {name: brq1, addresses: [10.21.0.1/24], ports: [{iface: q1}]}\n";
    let first = ns.apply(&data, spec, None);
    assert_eq!(first.code, 0, "{}", first.log);
    assert!(first.writes() > 0, "{}", first.log);
    for _ in 0..2 {
        let again = ns.apply(&data, spec, None);
        assert_eq!(again.code, 0, "{}", again.log);
        assert_eq!(
            again.writes(),
            0,
            "a converged spec must not write:\n{}",
            again.log
        );
        assert_eq!(again.state("brq0").0, "converged");
        assert_eq!(again.state("brq1").0, "converged");
    }
}

#[test]
fn unmanaged_link_with_a_wanted_name_is_a_conflict_and_left_alone() {
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.ip(&["link", "add", "brx", "mtu", "1300", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.30.0.9/24", "dev", "brx"]);
    let a = ns.apply(
        &data,
        "networks:\n  bridges:\n    - {name: brx, mtu: 1400, addresses: [10.30.0.1/24]}\n    - {name: bry}\n",
        None,
    );
    assert_eq!(a.code, 1, "not everything converged: exit 1\n{}", a.log);
    let (state, error) = a.state("brx");
    assert_eq!(state, "conflict");
    assert!(error.contains("does not manage"), "{error}");
    assert_eq!(a.state("bry").0, "converged", "the rest still converges");
    let brx = ns.link("brx").unwrap();
    assert_eq!(brx["mtu"], 1300, "unchanged");
    assert!(brx.get("ifalias").is_none(), "{brx}");
    assert_eq!(ns.addrs("brx"), ["10.30.0.9/24"]);
    // Dropping it from the spec never deletes it either.
    let a = ns.apply(&data, "{}\n", None);
    assert_eq!(a.code, 0, "{}", a.log);
    assert!(ns.link("brx").is_some());
    assert!(ns.link("bry").is_none());
}

#[test]
fn vlan_refused_by_default_policy_with_the_reason() {
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.veth("e1", "e1peer");
    let a = ns.apply(
        &data,
        "networks:\n  vlans:\n    - {name: e1.5, parent: e1, id: 5}\n  bridges:\n    - {name: br5}\n",
        None,
    );
    assert_eq!(a.code, 1);
    let (state, error) = a.state("e1.5");
    assert_eq!(state, "failed");
    assert!(error.contains("policy.allowed_vlan_parents"), "{error}");
    assert!(ns.link("e1.5").is_none());
    assert_eq!(a.state("br5").0, "converged");
}

#[test]
fn lab_expands_to_a_vlan_a_bridge_and_its_gateway() {
    // The lab's VLAN needs 802.1Q, which this host kernel may lack (then it must fail with an
    // actionable error); the bridge and its gateway address come either way. Leases are
    // unit-tested (network::lab) and checked with containers in network_docker.rs.
    let Some(ns) = require_netns() else { return };
    let (tmp, data) = data_dir();
    ns.veth("e1", "e1peer");
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "lab_cidr_template = \"10.{vlan}.0.0/24\"\n[policy]\nallowed_vlan_parents = [\"e1\"]\n",
    )
    .unwrap();
    let a = ns.apply(
        &data,
        "networks:\n  labs:\n    - {vlan: 42, parent: e1}\n",
        Some(&cfg),
    );
    let br = ns.link("br42").expect("the lab's bridge exists");
    assert_eq!(br["ifalias"], "steward:local");
    assert_eq!(ns.addrs("br42"), ["10.42.0.1/24"]);
    let (state, error) = a.state("e1.42");
    if ns.link("e1.42").is_some() {
        assert_eq!(state, "converged", "{error}");
        assert_eq!(ns.link("e1.42").unwrap()["master"], "br42");
    } else {
        assert_eq!(state, "failed");
        assert!(
            error.contains("8021q"),
            "actionable error expected: {error}"
        );
    }
}
