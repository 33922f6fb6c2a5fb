use super::*;
use crate::reconcile::{ObservedConfig, ObservedContainer};

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
        config: ObservedConfig::default(),
    }
}

fn policy() -> LadderPolicy {
    LadderPolicy {
        attempts_per_rung: 1,
        backoff_initial: 10,
        backoff_max: 100,
        cooldown: 1000,
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
        &observed,
        &mut plan,
        &policy(),
        "n1",
        now,
    );
    (
        plan.actions.iter().map(Action::kind).collect(),
        h.escalation.get(&c.name).map(|(_, e)| e.position.clone()),
        h.failed.contains_key(&c.name),
    )
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
