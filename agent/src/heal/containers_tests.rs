use super::*;
use crate::heal::ladder::Ladder;
use crate::heal::tracker::effective;
use crate::reconcile::{ObservedConfig, ObservedContainer};
use steward_proto::PayloadSpec;
use steward_proto::{WorkloadKind, WorkloadRef};

fn spec(name: &str, restart: RestartPolicy) -> ContainerSpec {
    serde_json::from_value(serde_json::json!({"name": name, "image": "img:1", "restart": restart}))
        .unwrap()
}

fn seen(c: &ContainerSpec, id: &str, running: bool, restarts: u32) -> ObservedContainer {
    ObservedContainer {
        id: id.into(),
        name: c.name.clone(),
        managed: true,
        steward_name: Some(c.name.clone()),
        spec_hash: Some(spec_hash(c)),
        node: Some("n1".into()),
        running,
        state: if running { "running" } else { "exited" }.into(),
        exit_code: (!running).then_some(1),
        restart_count: restarts,
        health: None,
        pid: None,
        addresses: Vec::new(),
        config: ObservedConfig::default(),
    }
}

fn policy() -> LadderPolicy {
    LadderPolicy {
        attempts_per_rung: 1,
        backoff_initial: 10,
        backoff_max: 100,
        cooldown: 1000,
        rollback_grace: 1000,
    }
}

/// One pass: the healer's actions (kind names) and the container's ladder position.
fn pass(
    st: &mut HealState,
    c: &ContainerSpec,
    o: ObservedContainer,
    planned: Vec<Action>,
    now: u64,
) -> (Vec<&'static str>, Option<String>, bool) {
    let observed = Observed {
        containers: vec![o],
        ..Default::default()
    };
    let mut plan = Plan {
        actions: planned,
        verdicts: vec![],
    };
    let h = heal(
        st,
        std::slice::from_ref(c),
        &[],
        &observed,
        &mut plan,
        &policy(),
        "n1",
        1,
        now,
    );
    (
        plan.actions.iter().map(Action::kind).collect(),
        h.escalation.get(&c.name).map(|(_, e)| e.position.clone()),
        h.failed.contains_key(&c.name),
    )
}

/// One pass over container `c` seen as `o`: the healer's actions and conclusions.
fn heal_one(
    st: &mut HealState,
    c: &ContainerSpec,
    payloads: &[PayloadSpec],
    o: ObservedContainer,
    p: &LadderPolicy,
    generation: u64,
    now: u64,
) -> (Vec<Action>, Healed) {
    let observed = Observed {
        containers: vec![o],
        ..Default::default()
    };
    let mut plan = Plan::default();
    let h = heal(
        st,
        std::slice::from_ref(c),
        payloads,
        &observed,
        &mut plan,
        p,
        "n1",
        generation,
        now,
    );
    (plan.actions, h)
}

#[test]
fn a_crash_loop_walks_restart_recreate_failed_then_stays_stopped() {
    let c = spec("web", RestartPolicy::Always);
    let mut st = HealState::default();
    let start = |id: &str| Action::Start {
        name: "web".into(),
        id: id.into(),
    };
    // (time, observed, what the planner wanted, healer's actions, position, failed)
    type Step = (
        u64,
        ObservedContainer,
        Vec<Action>,
        Vec<&'static str>,
        Option<&'static str>,
        bool,
    );
    let steps: Vec<Step> = vec![
        (0, seen(&c, "a", true, 0), vec![], vec![], None, false),
        (1, seen(&c, "a", true, 0), vec![], vec![], None, false),
        // Docker restarted it: first rung.
        (
            2,
            seen(&c, "a", true, 1),
            vec![],
            vec!["restart"],
            Some("restart"),
            false,
        ),
        // Again within the backoff: wait.
        (
            5,
            seen(&c, "a", true, 2),
            vec![],
            vec![],
            Some("restart"),
            false,
        ),
        // Stopped now; the planner's start is replaced by the next rung.
        (
            12,
            seen(&c, "a", false, 3),
            vec![start("a")],
            vec!["recreate"],
            Some("recreate"),
            false,
        ),
        // A new container counts its restarts from zero.
        (
            13,
            seen(&c, "b", true, 0),
            vec![],
            vec![],
            Some("recreate"),
            false,
        ),
        (
            40,
            seen(&c, "b", true, 1),
            vec![],
            vec!["stop"],
            Some("failed"),
            true,
        ),
        // Kept stopped, whatever the planner or Docker do.
        (
            41,
            seen(&c, "b", false, 1),
            vec![start("b")],
            vec![],
            Some("failed"),
            true,
        ),
        (
            42,
            seen(&c, "b", true, 1),
            vec![],
            vec!["stop"],
            Some("failed"),
            true,
        ),
    ];
    for (now, o, planned, want, pos, failed) in steps {
        let (got, p, f) = pass(&mut st, &c, o, planned, now);
        assert_eq!(got, want, "actions at {now}");
        assert_eq!(p.as_deref(), pos, "position at {now}");
        assert_eq!(f, failed, "failed at {now}");
    }
    // A new spec starts a fresh ladder.
    let mut c2 = c.clone();
    c2.image = "img:2".into();
    let (got, pos, failed) = pass(&mut st, &c2, seen(&c2, "c", true, 0), vec![], 50);
    assert_eq!((got, pos, failed), (vec![], None, false));
}

#[test]
fn what_counts_as_a_failure() {
    let always = spec("a", RestartPolicy::Always);
    let never = spec("n", RestartPolicy::Never);
    let on_failure = spec("f", RestartPolicy::OnFailure);
    let mut unhealthy = seen(&always, "x", true, 0);
    unhealthy.health = Some("unhealthy".into());
    let mut clean_exit = seen(&on_failure, "x", false, 0);
    clean_exit.exit_code = Some(0);
    let cases = [
        (
            "running, no restart",
            &always,
            seen(&always, "x", true, 0),
            false,
        ),
        ("unhealthy", &always, unhealthy, true),
        (
            "stopped, restart always",
            &always,
            seen(&always, "x", false, 0),
            true,
        ),
        (
            "stopped, restart never",
            &never,
            seen(&never, "x", false, 0),
            false,
        ),
        (
            "failed exit, on-failure",
            &on_failure,
            seen(&on_failure, "x", false, 0),
            true,
        ),
        ("clean exit, on-failure", &on_failure, clean_exit, false),
    ];
    for (name, c, o, fails) in cases {
        let mut st = HealState::default();
        // The first look sets the baseline; a failure shows at once for states, not restarts.
        let (_, pos, _) = pass(&mut st, c, o, vec![], 0);
        assert_eq!(pos.is_some(), fails, "{name}");
    }
}

#[test]
fn containers_not_ours_or_being_recreated_are_left_to_the_planner() {
    let c = spec("web", RestartPolicy::Always);
    let mut other = seen(&c, "a", false, 5);
    other.node = Some("n2".into());
    let mut old_spec = seen(&c, "a", false, 5);
    old_spec.spec_hash = Some("old".into());
    for o in [other, old_spec] {
        let mut st = HealState::default();
        let planned = vec![Action::Start {
            name: "web".into(),
            id: "a".into(),
        }];
        let (got, pos, _) = pass(&mut st, &c, o, planned, 0);
        assert_eq!((got, pos), (vec!["start"], None));
    }
}

#[test]
fn a_failing_update_is_rolled_back_to_the_last_healthy_config_until_the_spec_changes() {
    let p = LadderPolicy {
        rollback_grace: 30,
        ..policy()
    };
    let v1 = spec("web", RestartPolicy::Always);
    let mut v2 = v1.clone();
    v2.image = "img:2".into();
    let mut st = HealState::default();
    let run =
        |st: &mut HealState, desired: &ContainerSpec, o: ObservedContainer, gen: u64, now: u64| {
            heal_one(st, desired, &[], o, &p, gen, now)
        };
    let mut healthy = seen(&v1, "a", true, 0);
    healthy.health = Some("healthy".into());
    run(&mut st, &v1, healthy, 1, 0);
    assert_eq!(
        st.containers["web"]
            .track
            .last_healthy
            .as_ref()
            .unwrap()
            .generation,
        1
    );

    // Generation 2 is unhealthy: the ladder acts within the grace period...
    let mut sick = seen(&v2, "b", true, 0);
    sick.health = Some("unhealthy".into());
    assert_eq!(
        effective(&mut st.containers, std::slice::from_ref(&v2), &[]),
        vec![v2.clone()]
    );
    let (a, h) = run(&mut st, &v2, sick.clone(), 2, 10);
    assert_eq!(a.iter().map(Action::kind).collect::<Vec<_>>(), ["restart"]);
    assert!(h.rolled_back.is_empty());
    // ...and past it, rolls back to generation 1's configuration.
    let (a, h) = run(&mut st, &v2, sick, 2, 40);
    match a.as_slice() {
        [Action::Recreate { spec, reason, .. }] => {
            assert_eq!(spec.image, "img:1");
            assert!(reason.contains("rollback to generation 1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let rb = &h.rolled_back["web"];
    assert_eq!((rb.from_generation, rb.to_generation), (2, 1));
    assert!(rb.reason.contains("health check failing"), "{}", rb.reason);

    // While the spec stays at generation 2, generation 1's configuration is what converges.
    assert_eq!(
        effective(&mut st.containers, std::slice::from_ref(&v2), &[]),
        vec![v1.clone()]
    );
    let (a, h) = run(&mut st, &v1, seen(&v1, "c", true, 0), 2, 50);
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(h.rolled_back["web"].from_generation, 2);
    // A new spec gets its chance.
    let mut v3 = v1.clone();
    v3.image = "img:3".into();
    assert_eq!(
        effective(&mut st.containers, std::slice::from_ref(&v3), &[]),
        vec![v3.clone()]
    );
    assert!(st.containers["web"].track.rolled_back.is_none());
}

#[test]
fn rollback_switched_off_leaves_it_to_the_ladder() {
    let p = LadderPolicy {
        rollback_grace: 0,
        ..policy()
    };
    let v1 = spec("web", RestartPolicy::Always);
    let mut v2 = v1.clone();
    v2.image = "img:2".into();
    v2.rollback = false;
    let mut st = HealState::default();
    let mut healthy = seen(&v1, "a", true, 0);
    healthy.health = Some("healthy".into());
    let observed = |o| Observed {
        containers: vec![o],
        ..Default::default()
    };
    let mut plan = Plan::default();
    heal(
        &mut st,
        std::slice::from_ref(&v1),
        &[],
        &observed(healthy),
        &mut plan,
        &p,
        "n1",
        1,
        0,
    );
    let mut sick = seen(&v2, "b", true, 0);
    sick.health = Some("unhealthy".into());
    let mut plan = Plan::default();
    let h = heal(
        &mut st,
        std::slice::from_ref(&v2),
        &[],
        &observed(sick),
        &mut plan,
        &p,
        "n1",
        2,
        100,
    );
    assert!(h.rolled_back.is_empty());
    assert_eq!(
        plan.actions.iter().map(Action::kind).collect::<Vec<_>>(),
        ["restart"]
    );
}

fn conf(version: &str) -> PayloadSpec {
    serde_json::from_value(serde_json::json!({
        "name": "conf", "version": version, "path": "/srv/conf",
        "sha256": format!("{:0>64}", version),
        "on_change": {"restart_containers": ["web"]},
    }))
    .unwrap()
}

#[test]
fn a_payload_only_update_that_breaks_the_container_rolls_the_payload_back() {
    let p = LadderPolicy {
        rollback_grace: 30,
        ..policy()
    };
    let c = spec("web", RestartPolicy::Always);
    let mut st = HealState::default();
    let run = |st: &mut HealState, payloads: &[PayloadSpec], health: &str, gen: u64, now: u64| {
        let mut o = seen(&c, "a", true, 0);
        o.health = Some(health.into());
        heal_one(st, &c, payloads, o, &p, gen, now)
    };
    run(&mut st, &[conf("1")], "healthy", 1, 0);
    assert!(st.healthy_blobs().contains(&format!("{:0>64}", "1")));
    // Generation 2 changes only the payload; the container turns unhealthy.
    let (_, h) = run(&mut st, &[conf("2")], "unhealthy", 2, 10);
    assert!(h.rolled_back.is_empty());
    let (a, h) = run(&mut st, &[conf("2")], "unhealthy", 2, 40);
    assert_eq!(a.iter().map(Action::kind).collect::<Vec<_>>(), ["recreate"]);
    assert_eq!(h.rolled_back_now, ["web"]);
    // The payload goes back with it, while the spec stays at generation 2.
    assert_eq!(
        effective(&mut st.containers, std::slice::from_ref(&c), &[conf("2")]),
        std::slice::from_ref(&c)
    );
    let back = st.payloads_in_force();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].version, "1");
    // Payload version 3: a new chance, nothing held back.
    effective(&mut st.containers, std::slice::from_ref(&c), &[conf("3")]);
    assert!(st.payloads_in_force().is_empty());
}

#[test]
fn a_reset_names_one_kind_a_container_and_a_vm_may_share_a_name() {
    let mut st = HealState::default();
    let climbed = Ladder {
        level: 2,
        ..Ladder::default()
    };
    st.containers.insert(
        "web".into(),
        Entry {
            ladder: climbed.clone(),
            ..Entry::default()
        },
    );
    st.vms.insert(
        "web".into(),
        crate::heal::vms::VmEntry {
            ladder: climbed.clone(),
            ..Default::default()
        },
    );
    assert!(st.reset(&WorkloadRef::new(WorkloadKind::Container, "web")));
    assert_eq!(st.containers["web"].ladder, Ladder::default());
    assert_eq!(
        st.vms["web"].ladder, climbed,
        "the VM of the same name was reset too"
    );
    assert!(st.reset(&WorkloadRef::new(WorkloadKind::Vm, "web")));
    assert_eq!(st.vms["web"].ladder, Ladder::default());
    assert!(!st.reset(&WorkloadRef::new(WorkloadKind::Vm, "db")));
}
