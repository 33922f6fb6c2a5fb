use super::*;
use crate::heal::tracker::effective;

fn vm(name: &str, cmdline: &str) -> VmSpec {
    serde_json::from_value(serde_json::json!({
        "name": name, "image": "/base.qcow2", "memory": "128Mi", "kernel": "/k",
        "cmdline": cmdline, "restart": "always",
    }))
    .unwrap()
}

fn crash(name: &str) -> VmAction {
    VmAction::Start {
        name: name.into(),
        reason: "QEMU exited without being stopped".into(),
        crash: true,
    }
}

fn policy() -> LadderPolicy {
    LadderPolicy {
        attempts_per_rung: 1,
        backoff_initial: 0,
        rollback_grace: 1000,
        ..Default::default()
    }
}

fn kinds(a: &[VmAction]) -> Vec<&'static str> {
    a.iter().map(VmAction::kind).collect()
}

fn seen(running: bool, health: Option<&str>) -> BTreeMap<String, VmSeen> {
    BTreeMap::from([(
        "v".to_string(),
        VmSeen {
            running,
            health: health.map(str::to_string),
            probe_error: health
                .filter(|h| *h == "unhealthy")
                .map(|_| "tcp 10.0.0.2:80: connection refused".to_string()),
            start_failed: None,
        },
    )])
}

/// One pass over VM `v` with the planner's `planned` actions.
fn pass(
    entries: &mut BTreeMap<String, VmEntry>,
    spec: &VmSpec,
    planned: Vec<VmAction>,
    seen: &BTreeMap<String, VmSeen>,
    p: &LadderPolicy,
    generation: u64,
    now: u64,
) -> (Vec<VmAction>, crate::heal::status::Healed) {
    let mut a = planned;
    let desired = [spec.clone()];
    let h = heal_vms(
        entries,
        &mut a,
        &Pass {
            desired: &desired,
            payloads: &[],
            seen,
            policy: p,
            generation,
            now,
        },
    );
    (a, h)
}

#[test]
fn crashes_walk_restart_reset_recreate_then_failed() {
    let p = policy();
    let v = vm("v", "a");
    let mut entries = BTreeMap::new();
    let dead = seen(false, None);
    let cases: &[(&[&str], &str)] = &[
        (&["start"], "restart"),
        (&["start"], "reset"),
        (&["delete", "create"], "recreate"),
        (&[], "failed"),
        (&[], "failed"),
    ];
    for (i, (want, pos)) in cases.iter().enumerate() {
        let (a, h) = pass(&mut entries, &v, vec![crash("v")], &dead, &p, 1, i as u64);
        assert_eq!(kinds(&a), *want, "step {i}");
        assert_eq!(h.escalation["v"].1.position, *pos, "step {i}");
        assert_eq!(h.failed.contains_key("v"), *pos == "failed", "step {i}");
    }
    // A config change (a restart that is not a crash) starts afresh.
    let restart = VmAction::Restart {
        name: "v".into(),
        reason: "config changed".into(),
        crash: false,
    };
    let (a, h) = pass(&mut entries, &v, vec![restart], &dead, &p, 2, 10);
    assert_eq!(kinds(&a), ["restart"]);
    assert!(h.escalation.is_empty() && h.failed.is_empty());
}

#[test]
fn an_unhealthy_live_vm_is_restarted_reset_by_qmp_recreated_then_stopped() {
    let p = policy();
    let v = vm("v", "a");
    let mut entries = BTreeMap::new();
    let sick = seen(true, Some("unhealthy"));
    let cases: &[(&[&str], &str)] = &[
        (&["restart"], "restart"),
        (&["reset"], "reset"),
        (&["delete", "create"], "recreate"),
        (&["stop"], "failed"),
    ];
    for (i, (want, pos)) in cases.iter().enumerate() {
        let (a, h) = pass(&mut entries, &v, vec![], &sick, &p, 1, i as u64);
        assert_eq!(kinds(&a), *want, "step {i}");
        assert_eq!(h.escalation["v"].1.position, *pos, "step {i}");
        let acted: &[&str] = if *pos == "failed" { &[] } else { &["v"] };
        assert_eq!(
            h.acted, acted,
            "step {i}: its probe starts over after a step"
        );
        if let Some(VmAction::Reset { reason, .. } | VmAction::Restart { reason, .. }) = a.first() {
            assert!(reason.contains("connection refused"), "{reason}");
        }
    }
    // Failed and stopped: the planner's start is dropped.
    let start = VmAction::Start {
        name: "v".into(),
        reason: "desired running".into(),
        crash: false,
    };
    let (a, h) = pass(&mut entries, &v, vec![start], &seen(false, None), &p, 1, 9);
    assert!(a.is_empty(), "{a:?}");
    assert!(h.failed["v"].contains("left stopped"));
}

#[test]
fn healthy_and_starting_vms_are_left_alone() {
    let p = policy();
    let v = vm("v", "a");
    let mut entries = BTreeMap::new();
    for health in [None, Some("starting"), Some("healthy")] {
        let (a, h) = pass(&mut entries, &v, vec![], &seen(true, health), &p, 1, 0);
        assert!(a.is_empty() && h.escalation.is_empty(), "{health:?}");
    }
    // An unhealthy check of a VM whose QEMU is not running is not a health failure.
    let (a, _) = pass(
        &mut entries,
        &v,
        vec![],
        &seen(false, Some("unhealthy")),
        &p,
        1,
        0,
    );
    assert!(a.is_empty());
}

/// A 30 s rollback grace, and VM `v` seen healthy at generation 1.
fn healthy_generation_1() -> (LadderPolicy, VmSpec, BTreeMap<String, VmEntry>) {
    let p = LadderPolicy {
        rollback_grace: 30,
        ..policy()
    };
    let v1 = vm("v", "good");
    let mut entries = BTreeMap::new();
    pass(
        &mut entries,
        &v1,
        vec![],
        &seen(true, Some("healthy")),
        &p,
        1,
        0,
    );
    (p, v1, entries)
}

#[test]
fn a_failing_update_is_rolled_back_to_the_last_healthy_vm_config() {
    let (p, v1, mut entries) = healthy_generation_1();
    let mut v2 = v1.clone();
    v2.cmdline = Some("bad".into());
    assert_eq!(
        entries["v"].track.last_healthy.as_ref().unwrap().generation,
        1
    );

    // Generation 2 is unhealthy: the ladder acts within grace, then the rollback.
    assert_eq!(
        effective(&mut entries, std::slice::from_ref(&v2), &[]),
        [v2.clone()]
    );
    let sick = seen(true, Some("unhealthy"));
    let (a, h) = pass(&mut entries, &v2, vec![], &sick, &p, 2, 10);
    assert_eq!(kinds(&a), ["restart"]);
    assert!(h.rolled_back_now.is_empty());
    let (a, h) = pass(&mut entries, &v2, vec![], &sick, &p, 2, 40);
    assert!(a.is_empty(), "the next pass applies the old config: {a:?}");
    assert_eq!(h.rolled_back_now, ["v"]);
    let rb = &h.rolled_back["v"];
    assert_eq!((rb.from_generation, rb.to_generation), (2, 1));
    assert!(rb.reason.contains("health check failing"), "{}", rb.reason);
    assert!(h.escalation.is_empty(), "the ladder starts over");

    // While the spec stays at generation 2, generation 1's VM is what converges.
    assert_eq!(
        effective(&mut entries, std::slice::from_ref(&v2), &[]),
        std::slice::from_ref(&v1)
    );
    let (_, h) = pass(
        &mut entries,
        &v1,
        vec![],
        &seen(true, Some("healthy")),
        &p,
        2,
        50,
    );
    assert_eq!(h.rolled_back["v"].from_generation, 2);
    assert!(h.rolled_back_now.is_empty());
    // rollback: false leaves it to the ladder.
    let mut v3 = v2.clone();
    v3.cmdline = Some("bad again".into());
    v3.rollback = false;
    assert_eq!(
        effective(&mut entries, std::slice::from_ref(&v3), &[]),
        [v3.clone()]
    );
    let (a, h) = pass(&mut entries, &v3, vec![], &sick, &p, 3, 100);
    let (a2, h2) = pass(&mut entries, &v3, vec![], &sick, &p, 3, 200);
    assert!(h.rolled_back.is_empty() && h2.rolled_back.is_empty());
    assert_eq!((kinds(&a), kinds(&a2)), (vec!["restart"], vec!["reset"]));
}

#[test]
fn entries_survive_a_store_round_trip() {
    let p = policy();
    let v = vm("v", "a");
    let mut entries = BTreeMap::new();
    pass(
        &mut entries,
        &v,
        vec![crash("v")],
        &seen(false, None),
        &p,
        1,
        0,
    );
    pass(
        &mut entries,
        &v,
        vec![],
        &seen(true, Some("healthy")),
        &p,
        1,
        1,
    );
    let json = serde_json::to_string(&entries).unwrap();
    let back: BTreeMap<String, VmEntry> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, entries);
    assert_eq!(back["v"].ladder.level, 1);
}

#[test]
fn an_update_that_does_not_start_is_rolled_back() {
    let (p, v1, mut entries) = healthy_generation_1();
    let mut v2 = v1.clone();
    v2.kernel = Some("/nonexistent/vmlinuz".into());
    let start = || VmAction::Start {
        name: "v".into(),
        reason: "desired running".into(),
        crash: false,
    };
    let mut failed = seen(false, None);
    failed.get_mut("v").unwrap().start_failed = Some("could not open kernel file".into());
    let (a, h) = pass(&mut entries, &v2, vec![start()], &failed, &p, 2, 10);
    assert_eq!(kinds(&a), ["restart"], "the ladder's first rung");
    assert_eq!(h.escalation["v"].1.position, "restart");
    let (_, h) = pass(&mut entries, &v2, vec![start()], &failed, &p, 2, 40);
    assert_eq!(h.rolled_back_now, ["v"]);
    assert!(
        h.rolled_back["v"].reason.contains("does not start"),
        "{:?}",
        h.rolled_back["v"]
    );
    assert_eq!(
        effective(&mut entries, std::slice::from_ref(&v2), &[]),
        std::slice::from_ref(&v1)
    );
    // Not running and no start failure: a plain start, nothing counted.
    let (a, h) = pass(
        &mut entries,
        &v1,
        vec![start()],
        &seen(false, None),
        &p,
        2,
        50,
    );
    assert_eq!(kinds(&a), ["start"]);
    assert!(h.escalation.is_empty());
}
