//! Table-style cases for the planner.

use super::*;
use crate::reconcile::types::ObservedConfig;

fn spec(yaml: &str) -> ContainerSpec {
    serde_norway::from_str(yaml).unwrap()
}

/// An observed managed container that matches `c` exactly, running.
fn running(c: &ContainerSpec) -> ObservedContainer {
    let (memory, nano_cpus) = limits(c);
    ObservedContainer {
        id: format!("id-{}", c.name),
        name: c.name.clone(),
        managed: true,
        steward_name: Some(c.name.clone()),
        spec_hash: Some(spec_hash(c)),
        node: Some("n1".into()),
        running: true,
        state: "running".into(),
        exit_code: None,
        restart_count: 0,
        health: None,
        pid: None,
        addresses: Vec::new(),
        config: ObservedConfig {
            image: c.image.clone(),
            memory,
            nano_cpus,
            privileged: c.privileged,
        },
    }
}

fn images(list: &[&str]) -> std::collections::BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Compact rendering of a plan for table comparisons.
fn render(p: &Plan) -> (Vec<String>, Vec<String>) {
    let actions = p
        .actions
        .iter()
        .map(|a| match a {
            Action::Pull { image, .. } => format!("pull {image}"),
            other => format!("{} {}", other.kind(), other.container().unwrap_or("")),
        })
        .collect();
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
            format!("{n}={v}")
        })
        .collect();
    (actions, verdicts)
}

#[test]
fn table() {
    let web = spec("{name: web, image: 'busybox:1', env: {A: '1'}}");
    let web2 = spec("{name: web, image: 'busybox:1', env: {A: '2'}}");
    let db = spec("{name: db, image: 'pg:16', resources: {memory: 64Mi}}");
    let priv_ = spec("{name: p, image: 'busybox:1', privileged: true}");
    let never = spec("{name: job, image: 'busybox:1', restart: never}");
    let onfail = spec("{name: job, image: 'busybox:1', restart: on-failure}");
    let have = images(&["busybox:1", "pg:16"]);

    let exited = |c: &ContainerSpec, code: i64| {
        let mut o = running(c);
        o.running = false;
        o.state = "exited".into();
        o.exit_code = Some(code);
        o
    };
    let unmanaged = {
        let mut o = running(&web);
        o.managed = false;
        o.steward_name = None;
        o.spec_hash = None;
        o
    };
    let renamed = {
        let mut o = running(&web);
        o.name = "web-old".into();
        o
    };
    let hand_memory = {
        let mut o = running(&db);
        o.config.memory = 128 * 1024 * 1024;
        o
    };
    let foreign = {
        let mut o = running(&web);
        o.node = Some("n2".into());
        o
    };
    let created = {
        let mut o = exited(&never, 0);
        o.state = "created".into();
        o.exit_code = None;
        o
    };

    type Case<'a> = (
        &'a str,
        Vec<ContainerSpec>,
        Vec<ObservedContainer>,
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: Vec<Case> = vec![
        ("empty", vec![], vec![], &[], &[]),
        (
            "create from empty",
            vec![web.clone(), db.clone()],
            vec![],
            &["create web", "create db"],
            &["web=pending", "db=pending"],
        ),
        (
            "converged is a no-op",
            vec![web.clone(), db.clone()],
            vec![running(&web), running(&db)],
            &[],
            &["web=converged", "db=converged"],
        ),
        (
            "env change recreates",
            vec![web2.clone()],
            vec![running(&web)],
            &["recreate web"],
            &["web=pending"],
        ),
        (
            "dropped from spec is removed",
            vec![],
            vec![running(&web)],
            &["remove web"],
            &[],
        ),
        (
            "unmanaged name is a conflict, left alone",
            vec![web.clone()],
            vec![unmanaged.clone()],
            &[],
            &["web=conflict"],
        ),
        (
            "unmanaged not in spec is ignored",
            vec![],
            vec![unmanaged],
            &[],
            &[],
        ),
        (
            "another node's container is a conflict",
            vec![web.clone()],
            vec![foreign.clone()],
            &[],
            &["web=conflict"],
        ),
        (
            "another node's container is never removed",
            vec![],
            vec![foreign],
            &[],
            &[],
        ),
        (
            "exited with always is started",
            vec![web.clone()],
            vec![exited(&web, 137)],
            &["start web"],
            &["web=drifted"],
        ),
        (
            "never: a finished job stays finished",
            vec![never.clone()],
            vec![exited(&never, 0)],
            &[],
            &["job=converged"],
        ),
        (
            "on-failure: clean exit stays",
            vec![onfail.clone()],
            vec![exited(&onfail, 0)],
            &[],
            &["job=converged"],
        ),
        (
            "on-failure: failure restarts",
            vec![onfail.clone()],
            vec![exited(&onfail, 1)],
            &["start job"],
            &["job=drifted"],
        ),
        (
            "created but never started is started",
            vec![never.clone()],
            vec![created],
            &["start job"],
            &["job=drifted"],
        ),
        (
            "renamed by hand: stray removed, original recreated",
            vec![web.clone()],
            vec![renamed],
            &["remove web-old", "create web"],
            &["web=pending"],
        ),
        (
            "memory changed by hand is recreated",
            vec![db.clone()],
            vec![hand_memory],
            &["recreate db"],
            &["db=drifted"],
        ),
        (
            "policy refuses privileged",
            vec![priv_.clone(), web.clone()],
            vec![],
            &["create web"],
            &["p=refused", "web=pending"],
        ),
        (
            "policy refusal removes an existing one",
            vec![priv_.clone()],
            vec![running(&priv_)],
            &["remove p"],
            &["p=refused"],
        ),
    ];
    for (name, desired, containers, want_actions, want_verdicts) in cases {
        let obs = Observed {
            containers,
            images: have.clone(),
        };
        let p = plan(&desired, &obs, &Policy::default(), "n1");
        let (a, v) = render(&p);
        assert_eq!(a, want_actions, "{name}: actions");
        assert_eq!(v, want_verdicts, "{name}: verdicts");
    }
}

#[test]
fn missing_images_are_pulled_once_before_creates() {
    let a = spec("{name: a, image: 'nginx:1.27'}");
    let b = spec("{name: b, image: nginx:1.27}");
    let c = spec("{name: c, image: busybox}");
    let obs = Observed {
        containers: vec![],
        images: images(&["busybox:latest"]),
    };
    let p = plan(&[a, b, c], &obs, &Policy::default(), "n1");
    let (actions, _) = render(&p);
    assert_eq!(
        actions,
        ["pull nginx:1.27", "create a", "create b", "create c"]
    );
    match &p.actions[0] {
        Action::Pull { for_containers, .. } => assert_eq!(for_containers, &["a", "b"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn image_names_normalise_like_docker_lists_them() {
    let cases = [
        ("busybox", "busybox:latest"),
        ("busybox:1", "busybox:1"),
        ("docker.io/library/nginx:1.27", "nginx:1.27"),
        ("docker.io/me/app", "me/app:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost:5000/app:2", "localhost:5000/app:2"),
        ("app@sha256:abc", "app@sha256:abc"),
    ];
    for (input, want) in cases {
        assert_eq!(normalize_image(input), want, "{input}");
    }
}

#[test]
fn spec_hash_is_stable_and_sensitive() {
    let a = spec("{name: web, image: x, env: {B: '2', A: '1'}}");
    let b = spec("{name: web, image: x, env: {A: '1', B: '2'}}");
    let c = spec("{name: web, image: x, env: {A: '1', B: '3'}}");
    assert_eq!(spec_hash(&a), spec_hash(&b));
    assert_ne!(spec_hash(&a), spec_hash(&c));
    assert_eq!(spec_hash(&a).len(), 32);
}
