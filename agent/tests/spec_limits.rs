//! End-to-end: the real agent binary refuses a spec over its `[limits]` — a spec file given to
//! `apply --file` (exit status 1, the limit named, nothing created) and a spec from the real
//! registry (not acted on, reported failed in the node's status) — against the real Docker engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{docker, engine_ready, inspect, suffix, Agent, Registry, IMAGE};
use serde_json::Value;

/// A spec of `n` sleeping containers named `<prefix>-<i>`.
fn sleepers(prefix: &str, n: usize) -> String {
    let mut s = String::from("containers:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - {{name: {prefix}-{i}, image: '{IMAGE}', command: [sleep, '3600']}}\n"
        ));
    }
    s
}

/// Containers (running or not) whose name contains `prefix`.
fn named(prefix: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name={prefix}"),
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test]
async fn apply_file_over_the_limits_exits_non_zero_naming_the_limit_and_creates_nothing() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("lim-{}", suffix());
    let spec = dir.path().join("spec.yaml");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", dir.path().join("state").display()),
    )
    .unwrap();
    let agent = |env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_steward-agent"));
        c.arg("--config")
            .arg(&config)
            .args(["apply", "--file", spec.to_str().unwrap()]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };

    // Default limits: 501 containers are refused before anything is created.
    std::fs::write(&spec, sleepers(&prefix, 501)).unwrap();
    let out = agent(&[]);
    assert!(!out.status.success(), "501 containers were applied");
    assert!(
        stderr(&out)
            .contains("containers: 501 containers exceed the limit of 500 (limits.max_containers)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        named(&prefix),
        Vec::<String>::new(),
        "a refused spec created containers"
    );

    // Limits from the config file, and from the environment over the file.
    std::fs::write(&spec, sleepers(&prefix, 3)).unwrap();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[limits]\nmax_containers = 2\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = agent(&[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("containers: 3 containers exceed the limit of 2 (limits.max_containers)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(named(&prefix), Vec::<String>::new());
    let out = agent(&[("STEWARD_LIMITS_MAX_CONTAINERS", "3")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(named(&prefix).len(), 3);

    // Clean up: the empty spec removes what this run created.
    std::fs::write(&spec, "{}").unwrap();
    let out = agent(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(named(&prefix), Vec::<String>::new());
}

#[tokio::test]
async fn a_registry_spec_over_the_agents_limits_is_not_acted_on_and_reported_failed() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    // The agent's config ends with `[policy]` and these lines: a `[limits]` table follows it.
    let a = Agent::start(&r, "[limits]\nmax_containers = 2").await;
    let prefix = format!("rlim-{}", suffix());
    let g1 = r.put_spec(&a.node_id, &sleepers(&prefix, 1)).await;
    let res = r.wait_observed(&a.node_id, g1).await;
    assert_eq!(res.len(), 1, "{res:?}");
    let first = inspect(&format!("{prefix}-0")).expect("the first container runs");

    // Three containers: the registry (limit 500) takes it, this agent (limit 2) refuses it.
    let g2 = r.put_spec(&a.node_id, &sleepers(&prefix, 3)).await;
    let res = r.wait_observed(&a.node_id, g2).await;
    let spec: Vec<&Value> = res.iter().filter(|x| x["kind"] == "spec").collect();
    assert_eq!(spec.len(), 1, "no failed spec entry in {res:?}");
    assert_eq!(spec[0]["state"], "failed");
    let error = spec[0]["error"].as_str().unwrap();
    assert!(
        error.contains("containers: 3 containers exceed the limit of 2 (limits.max_containers)"),
        "{error}"
    );
    assert!(
        inspect(&format!("{prefix}-1")).is_none(),
        "a refused spec created a container"
    );
    assert!(
        inspect(&format!("{prefix}-2")).is_none(),
        "a refused spec created a container"
    );
    let still = inspect(&format!("{prefix}-0")).expect("the running container was left alone");
    assert_eq!(still.id, first.id);
    assert!(
        a.log().contains("spec over this agent's limits"),
        "{}",
        a.log()
    );

    // A spec within the limits is acted on again.
    let g3 = r.put_spec(&a.node_id, &sleepers(&prefix, 2)).await;
    let res = r.wait_observed(&a.node_id, g3).await;
    assert!(
        res.iter()
            .all(|x| x["kind"] == "container" && x["state"] == "converged"),
        "{res:?}"
    );
    assert!(inspect(&format!("{prefix}-1")).is_some());
}
