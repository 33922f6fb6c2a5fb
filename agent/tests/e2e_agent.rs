//! End-to-end: the real agent binary against the real registry binary and the real Docker
//! engine. Containers are named per test and owned per node, so tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    containers_with, docker, engine_ready, inspect, suffix, wait_for, Agent, Registry, IMAGE,
};
use serde_json::Value;

fn sleeper(name: &str, env: &str) -> String {
    format!(
        "  - {{name: {name}, image: '{IMAGE}', command: [sleep, '3600'], env: {{V: '{env}'}}}}\n"
    )
}

fn state_of<'a>(resources: &'a [Value], name: &str) -> (&'a str, &'a str) {
    let r = resources
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {resources:?}"));
    (
        r["state"].as_str().unwrap(),
        r["error"].as_str().unwrap_or(""),
    )
}

async fn running(name: &str) -> Option<common::Seen> {
    inspect(name).filter(|s| s.running)
}

#[tokio::test]
async fn converges_recreates_on_change_and_removes() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let (web, db) = (format!("web-{}", suffix()), format!("db-{}", suffix()));
    let g = r
        .put_spec(
            &a.node_id,
            &format!("containers:\n{}{}", sleeper(&web, "1"), sleeper(&db, "1")),
        )
        .await;
    let res = r.wait_observed(&a.node_id, g).await;
    assert_eq!(state_of(&res, &web).0, "converged");
    assert_eq!(state_of(&res, &db).0, "converged");
    let w1 = running(&web).await.expect("web runs");
    let d1 = running(&db).await.expect("db runs");
    assert_eq!(w1.labels["io.steward.node"], a.node_id.as_str());
    assert_eq!(w1.labels["io.steward.managed"], "true");

    // Change an env var: web is recreated, db untouched.
    let g = r
        .put_spec(
            &a.node_id,
            &format!("containers:\n{}{}", sleeper(&web, "2"), sleeper(&db, "1")),
        )
        .await;
    r.wait_observed(&a.node_id, g).await;
    let w2 = running(&web).await.expect("web runs");
    assert_ne!(w2.id, w1.id, "web must be recreated");
    assert!(w2.env.contains(&"V=2".to_string()), "{:?}", w2.env);
    assert_eq!(
        running(&db).await.unwrap().id,
        d1.id,
        "db must not be touched"
    );

    // Remove db from the spec.
    let g = r
        .put_spec(&a.node_id, &format!("containers:\n{}", sleeper(&web, "2")))
        .await;
    r.wait_observed(&a.node_id, g).await;
    assert!(inspect(&db).is_none(), "db must be removed");
    assert_eq!(running(&web).await.unwrap().id, w2.id);
    let n = r.node(&a.node_id).await;
    assert_eq!(n["health"], "ready");
    assert_eq!(n["observed_generation"], g);
}

/// Spec history: write, change, revert to the first generation; the node converges back to the
/// old containers (the reverted spec is a new generation, by the admin, in the history).
#[tokio::test]
async fn a_reverted_spec_brings_the_old_containers_back() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let (old, new) = (format!("old-{}", suffix()), format!("new-{}", suffix()));
    let g1 = r
        .put_spec(&a.node_id, &format!("containers:\n{}", sleeper(&old, "1")))
        .await;
    r.wait_observed(&a.node_id, g1).await;
    let first = running(&old).await.expect("old runs");
    let g2 = r
        .put_spec(&a.node_id, &format!("containers:\n{}", sleeper(&new, "2")))
        .await;
    r.wait_observed(&a.node_id, g2).await;
    assert!(inspect(&old).is_none() && running(&new).await.is_some());

    let resp = r
        .http
        .post(r.url(&format!("/v1/nodes/{}/spec/revert", a.node_id)))
        .bearer_auth(&r.admin)
        .json(&serde_json::json!({"to": g1}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let g3 = resp.json::<Value>().await.unwrap()["generation"]
        .as_u64()
        .unwrap();
    assert!(g3 > g2, "a revert is a new generation");
    let res = r.wait_observed(&a.node_id, g3).await;
    assert_eq!(state_of(&res, &old).0, "converged");
    let back = running(&old).await.expect("old runs again");
    assert!(back.env.contains(&"V=1".to_string()), "{:?}", back.env);
    assert_ne!(back.id, first.id, "a new container, as the spec says");
    assert!(inspect(&new).is_none(), "the newer container is gone");

    let history = r
        .get_json(&format!("/v1/nodes/{}/spec/history", a.node_id))
        .await;
    let notes: Vec<(u64, &str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["generation"].as_u64().unwrap(),
                v["note"].as_str().unwrap(),
                v["author"].as_str().unwrap(),
            )
        })
        .collect();
    let reverted = format!("reverted to generation {g1}");
    assert_eq!(
        notes,
        vec![
            (g1, "written", "admin-token"),
            (g2, "written", "admin-token"),
            (g3, reverted.as_str(), "admin-token"),
        ]
    );
    // Clean up: nothing left running.
    let g = r.put_spec(&a.node_id, "containers: []\n").await;
    r.wait_observed(&a.node_id, g).await;
    assert!(inspect(&old).is_none());
}

#[tokio::test]
async fn unmanaged_container_with_a_specd_name_is_left_alone() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let name = format!("mine-{}", suffix());
    let other = format!("ok-{}", suffix());
    let id = docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "3600"]);
    let g = r
        .put_spec(
            &a.node_id,
            &format!(
                "containers:\n{}{}",
                sleeper(&name, "1"),
                sleeper(&other, "1")
            ),
        )
        .await;
    let res = r.wait_observed(&a.node_id, g).await;
    let (state, err) = state_of(&res, &name);
    assert_eq!(state, "conflict");
    assert!(err.contains("does not own"), "{err}");
    assert_eq!(state_of(&res, &other).0, "converged");
    let seen = inspect(&name).unwrap();
    assert_eq!(seen.id, id, "the unmanaged container must not be replaced");
    assert!(seen.running);
    assert!(!seen.labels.contains_key("io.steward.managed"));
    docker(&["rm", "-f", &name]);
}

#[tokio::test]
async fn killed_or_removed_by_hand_is_restored() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let name = format!("svc-{}", suffix());
    let g = r
        .put_spec(&a.node_id, &format!("containers:\n{}", sleeper(&name, "1")))
        .await;
    r.wait_observed(&a.node_id, g).await;
    let first = running(&name).await.unwrap();

    // docker stop: a manual stop that Docker's own restart policy does not undo.
    docker(&["stop", "-t", "0", &name]);
    let back = wait_for(20, "the stopped container to run again", || running(&name)).await;
    assert_eq!(
        back.id, first.id,
        "a stopped container is started, not recreated"
    );

    docker(&["rm", "-f", &name]);
    let back = wait_for(20, "the removed container to come back", || running(&name)).await;
    assert_ne!(back.id, first.id);
    assert_eq!(back.labels["io.steward.node"], a.node_id.as_str());
}

#[tokio::test]
async fn privileged_container_is_refused_by_policy_and_the_rest_converge() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "allow_privileged = false").await;
    let (p, ok) = (format!("priv-{}", suffix()), format!("plain-{}", suffix()));
    let spec = format!(
        "containers:\n  - {{name: {p}, image: '{IMAGE}', command: [sleep, '3600'], privileged: true}}\n{}",
        sleeper(&ok, "1")
    );
    let g = r.put_spec(&a.node_id, &spec).await;
    let res = r.wait_observed(&a.node_id, g).await;
    let (state, err) = state_of(&res, &p);
    assert_eq!(state, "failed");
    assert!(
        err.contains("privileged") && err.contains("policy"),
        "{err}"
    );
    assert!(
        inspect(&p).is_none(),
        "the refused container must not exist"
    );
    assert_eq!(state_of(&res, &ok).0, "converged");
    assert!(running(&ok).await.is_some());
}

#[tokio::test]
async fn missing_image_fails_that_container_only() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let (bad, ok) = (format!("nope-{}", suffix()), format!("fine-{}", suffix()));
    let spec = format!(
        "containers:\n  - {{name: {bad}, image: 'steward-test/absent:9'}}\n{}",
        sleeper(&ok, "1")
    );
    let g = r.put_spec(&a.node_id, &spec).await;
    let res = r.wait_observed(&a.node_id, g).await;
    let (state, err) = state_of(&res, &bad);
    assert_eq!(state, "failed");
    assert!(err.contains("steward-test/absent:9"), "{err}");
    assert_eq!(state_of(&res, &ok).0, "converged");
}

#[tokio::test]
async fn registry_down_keeps_workloads_and_agent_catches_up() {
    if !engine_ready() {
        return;
    }
    let mut r = Registry::start().await;
    let mut a = Agent::start(&r, "").await;
    let name = format!("steady-{}", suffix());
    let g = r
        .put_spec(&a.node_id, &format!("containers:\n{}", sleeper(&name, "1")))
        .await;
    r.wait_observed(&a.node_id, g).await;
    let before = running(&name).await.unwrap();

    r.kill9();
    // Several resyncs (2 s) pass without a registry; the agent is restarted too, and must
    // enforce the stored spec rather than drop anything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill9();
    docker(&["stop", "-t", "0", &name]);
    a.spawn();
    let back = wait_for(
        20,
        "the stored spec to be enforced without a registry",
        || running(&name),
    )
    .await;
    assert_eq!(back.id, before.id);

    r.spawn().await;
    let second = format!("late-{}", suffix());
    let g = r
        .put_spec(
            &a.node_id,
            &format!(
                "containers:\n{}{}",
                sleeper(&name, "1"),
                sleeper(&second, "1")
            ),
        )
        .await;
    r.wait_observed(&a.node_id, g).await;
    assert!(running(&second).await.is_some());
    assert_eq!(running(&name).await.unwrap().id, before.id);
}

#[tokio::test]
async fn kill_9_during_applies_leaves_no_duplicates_or_leftovers() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let mut a = Agent::start(&r, "").await;
    let names: Vec<String> = (0..5).map(|i| format!("k{i}-{}", suffix())).collect();
    let spec_for = |round: usize| {
        // Each round changes env on some containers and drops/adds one, so applies are busy.
        let mut s = String::from("containers:\n");
        for (i, n) in names.iter().enumerate() {
            if (round + i) % 5 == 4 {
                continue;
            }
            s.push_str(&sleeper(n, &format!("{}", (round + i) % 3)));
        }
        s
    };
    let mut rng_state = 0x2545F4914F6CDD1Du64;
    let mut last_gen = 0;
    for round in 0..20 {
        last_gen = r.put_spec(&a.node_id, &spec_for(round)).await;
        if a.child.is_none() {
            a.spawn();
        }
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let ms = 100 + rng_state % 1400;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        a.kill9();
    }
    a.spawn();
    r.wait_observed(&a.node_id, last_gen).await;
    // Exactly the desired set: one running container per wanted name, nothing else of ours.
    let want: BTreeSet<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| (19 + i) % 5 != 4)
        .map(|(_, n)| n.clone())
        .collect();
    let ours = wait_for(30, "exactly the desired set", || {
        let want = want.clone();
        let node = a.node_id.clone();
        async move {
            let seen = containers_with(&format!("io.steward.node={node}"));
            let names: BTreeSet<String> = seen.iter().map(|s| s.name.clone()).collect();
            (names == want && seen.len() == want.len() && seen.iter().all(|s| s.running))
                .then_some(seen)
        }
    })
    .await;
    for s in ours {
        let i = names.iter().position(|n| *n == s.name).unwrap();
        assert!(
            s.env.contains(&format!("V={}", (19 + i) % 3)),
            "{} has {:?}",
            s.name,
            s.env
        );
    }
}

#[tokio::test]
async fn changed_by_hand_is_recreated_to_the_spec() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let name = format!("limited-{}", suffix());
    let spec = format!("containers:\n  - {{name: {name}, image: '{IMAGE}', command: [sleep, '3600'], resources: {{memory: 64Mi}}}}\n");
    let g = r.put_spec(&a.node_id, &spec).await;
    r.wait_observed(&a.node_id, g).await;
    let first = running(&name).await.unwrap();
    let mem = |n: &str| docker(&["inspect", "-f", "{{.HostConfig.Memory}}", n]);
    assert_eq!(mem(&name), (64 * 1024 * 1024).to_string());
    docker(&["update", "--memory", "128m", "--memory-swap", "256m", &name]);
    let back = wait_for(20, "the hand-changed container to be recreated", || {
        let name = name.clone();
        let old = first.id.clone();
        async move { running(&name).await.filter(|s| s.id != old) }
    })
    .await;
    assert_eq!(mem(&back.name), (64 * 1024 * 1024).to_string());
}

#[tokio::test]
async fn apply_file_and_status_work_without_a_registry() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("local-{}", suffix());
    let spec = dir.path().join("spec.yaml");
    std::fs::write(&spec, format!("containers:\n{}", sleeper(&name, "1"))).unwrap();
    let agent = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = agent(&["apply", "--file", spec.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&name) && table.contains("converged"),
        "{table}"
    );
    let seen = running(&name).await.expect("applied container runs");
    assert_eq!(seen.labels["io.steward.node"], "local");

    let out = agent(&["status", "--json"]);
    assert!(out.status.success());
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["resources"][0]["name"], name.as_str());
    assert_eq!(st["resources"][0]["state"], "converged");

    // A bad file is refused naming the field, and changes nothing.
    std::fs::write(
        &spec,
        "containers: [{name: x, image: busybox, ports: ['99999:1']}]",
    )
    .unwrap();
    let out = agent(&["apply", "--file", spec.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("containers[0].ports[0]"));
    assert_eq!(running(&name).await.unwrap().id, seen.id);

    // Applying an empty spec removes what this node created.
    std::fs::write(&spec, "{}").unwrap();
    let out = agent(&["apply", "--file", spec.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(inspect(&name).is_none());
}

#[tokio::test]
async fn secrets_stay_out_of_the_agent_log_and_identity_is_0600() {
    use std::os::unix::fs::PermissionsExt;
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let idfile = a.dir.path().join("state/node.json");
    let id: Value = serde_json::from_slice(&std::fs::read(&idfile).unwrap()).unwrap();
    let mode = std::fs::metadata(&idfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = id["node_secret"].as_str().unwrap();
    let config = std::fs::read_to_string(&a.config).unwrap();
    let token = config
        .lines()
        .find_map(|l| l.strip_prefix("enrollment_token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    // Let it heartbeat and log its start-up config.
    wait_for(20, "a heartbeat", || async {
        r.node(&a.node_id).await["last_heartbeat"]
            .as_str()
            .map(|_| ())
    })
    .await;
    let log = a.log();
    assert!(log.contains("starting steward-agent"), "{log}");
    assert!(
        log.contains("<redacted>"),
        "the config is logged with the token redacted"
    );
    for s in [secret, token.as_str()] {
        assert!(
            !log.contains(s.split('.').nth(1).unwrap()),
            "a secret reached the agent log"
        );
    }
}
