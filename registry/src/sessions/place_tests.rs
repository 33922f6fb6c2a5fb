#![allow(clippy::unwrap_used)]

use super::*;
use steward_proto::{Allocations, SessionState};

fn session(id: &str, owner: &str, template: &str, node: &str) -> Session {
    let now = chrono::Utc::now();
    Session {
        id: id.into(),
        template: template.into(),
        template_revision: 1,
        owner: owner.into(),
        spare: false,
        node: node.into(),
        params: Default::default(),
        allocations: Allocations::default(),
        reserve: Default::default(),
        state: SessionState::Running,
        reason: None,
        created_at: now,
        created_by: "t".into(),
        expires_at: now,
        running_at: None,
        ended_at: None,
        endpoints: vec![],
    }
}

fn node(id: &str, health: Health, gib: u64) -> Candidate {
    Candidate {
        id: id.into(),
        health,
        labels: Default::default(),
        cpu_milli: 4000,
        memory: gib << 30,
    }
}

#[test]
fn quotas_name_the_limit_reached() {
    let live = [
        session("1", "alice", "conf", "n1"),
        session("2", "alice", "conf", "n1"),
        session("3", "bob", "lab", "n1"),
    ];
    let live: Vec<&Session> = live.iter().collect();
    let fleet = |max_live, per_owner| Limits {
        max_live,
        per_owner,
    };
    let own = |per_owner, max_sessions| TemplateLimits {
        per_owner,
        max_sessions,
    };
    // (fleet limits, template limits, owner, template, expected limit or None)
    let cases = [
        (fleet(None, None), own(None, None), "alice", "conf", None),
        (
            fleet(Some(3), None),
            own(None, None),
            "carol",
            "conf",
            Some("max_live"),
        ),
        (
            fleet(Some(4), Some(2)),
            own(None, None),
            "alice",
            "lab",
            Some("per_owner"),
        ),
        (
            fleet(None, Some(3)),
            own(Some(2), None),
            "alice",
            "conf",
            Some("template_per_owner"),
        ),
        (
            fleet(None, Some(3)),
            own(Some(2), None),
            "bob",
            "conf",
            None,
        ),
        (
            fleet(None, None),
            own(None, Some(2)),
            "bob",
            "conf",
            Some("template_max_sessions"),
        ),
        (fleet(None, None), own(None, Some(2)), "bob", "lab", None),
    ];
    for (f, o, owner, template, want) in cases {
        let got = check_quotas(&live, template, owner, &f, o).err();
        assert_eq!(
            got.as_ref().map(QuotaError::limit),
            want,
            "{owner} {template}"
        );
        if let Some(e) = got {
            assert!(e.to_string().contains("the most"), "{e}");
        }
    }
}

#[test]
fn placement_picks_the_least_loaded_ready_node_with_room() {
    let nodes = [
        node("a", Health::Ready, 4),
        node("b", Health::Ready, 8),
        node("c", Health::Stale, 64),
    ];
    let r = Reserve {
        cpu_milli: 1000,
        memory: 2 << 30,
    };
    let mut placed = vec![];
    let reserved = |_: &Session| r;
    // The node least loaded once placed (memory, then CPU), never the stale c: b (2/8 GiB),
    // a (2/4), b (4/8), b (6/8: below a's 4/4), then a (4/4 and 2/4 CPU, below b's 8/8 and
    // 4/4 CPU), and b again (a has no room left); then both are full.
    for i in 0..6 {
        let live: Vec<&Session> = placed.iter().collect();
        let n = place(&nodes, "", r, &live, reserved).unwrap();
        placed.push(session(&i.to_string(), "o", "t", &n));
    }
    let on: Vec<&str> = placed.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(on, ["b", "a", "b", "b", "a", "b"]);
    let live: Vec<&Session> = placed.iter().collect();
    let e = place(&nodes, "", r, &live, reserved).unwrap_err();
    assert!(matches!(e, PlaceError::Full { count: 2, .. }), "{e}");
}

#[test]
fn placement_says_why_no_node_fits() {
    let r = Reserve::default();
    let e = place(&[], "role=lab", r, &[], |_| r).unwrap_err();
    assert!(e.to_string().contains("no node matches"), "{e}");
    let e = place(&[node("a", Health::Down, 4)], "", r, &[], |_| r).unwrap_err();
    assert_eq!(e, PlaceError::NotReady { count: 1 });
}

#[test]
fn ports_and_vlans_are_the_lowest_free_and_run_out_cleanly() {
    let names = vec!["http".to_string(), "ssh".to_string()];
    let taken = [10000, 10002].into();
    let got = alloc_ports("n1", &names, &(10000..=10010), &taken).unwrap();
    assert_eq!(got["http"], 10001);
    assert_eq!(got["ssh"], 10003);
    let e = alloc_ports("n1", &names, &(10000..=10002), &taken).unwrap_err();
    assert!(e.to_string().contains("no free host port"), "{e}");
    assert_eq!(alloc_vlan(&(100..=102), &[100, 101].into()).unwrap(), 102);
    assert!(alloc_vlan(&(100..=101), &[100, 101].into()).is_err());
    assert_eq!(parse_range("10000-20000").unwrap(), 10000..=20000);
    for bad in ["x", "5-1", "0-3", "1-70000"] {
        assert!(parse_range(bad).is_err(), "{bad}");
    }
}

/// Ports the node reports in use are never allocated, like those of its live sessions and
/// spec; another node's sessions take nothing here; a full range names itself and counts only
/// its own ports taken.
#[test]
fn ports_the_node_reports_in_use_are_never_allocated() {
    let mut here = session("1", "alice", "conf", "n1");
    here.allocations.ports = [("http".to_string(), 30002)].into();
    let mut there = session("2", "bob", "conf", "n2");
    there.allocations.ports = [("http".to_string(), 30003)].into();
    let live = [&here, &there];
    // The host listens on 22 and 30000; the spec publishes 30001.
    let taken = taken_ports("n1", &live, [30001], &[22, 30000]);
    assert_eq!(taken, [22, 30000, 30001, 30002].into());
    let names = vec!["http".to_string()];
    let got = alloc_ports("n1", &names, &(30000..=30003), &taken).unwrap();
    assert_eq!(got["http"], 30003, "the lowest port nobody uses");
    let e = alloc_ports("n1", &names, &(30000..=30002), &taken).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node n1 has no free host port left in 30000-30002 (3 taken)"
    );
}
