//! Automatic rollback end to end: real registry, real agent, real Docker engine. A container
//! runs healthy (a Docker health check) at generation 1; generation 2 makes its health check
//! fail; past the rollback grace period the agent returns it to generation 1's configuration,
//! reports the rollback, the registry shows the node "rolled back from generation 2", and a
//! webhook receiver gets one `rollback` alert. A payload-only update that breaks the container
//! (its health check reads the payload) is rolled back with the payload's version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{docker, engine_ready, inspect, suffix, Agent, Registry, IMAGE};

fn container(name: &str, v: &str, health: &str) -> String {
    format!(
        "containers:\n  - {{name: {name}, image: '{IMAGE}', command: [sleep, '3600'], env: {{V: '{v}'}}, healthcheck: {{exec: [sh, -c, '{health}'], interval: 1s, retries: 1}}}}\n"
    )
}

fn health(name: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Health.Status}}", name])
        .trim()
        .to_string()
}

fn env_v(name: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        "{{range .Config.Env}}{{println .}}{{end}}",
        name,
    ])
    .lines()
    .find_map(|l| l.strip_prefix("V=").map(str::to_string))
    .unwrap_or_default()
}

/// Waits until the registry shows `name` on `a`'s node rolled back, and the node "rolled back
/// from generation `from`"; returns the resource.
async fn rolled_back(r: &Registry, a: &Agent, name: &str, from: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = r.node(&a.node_id).await;
        let res = n["status"]["resources"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == name).cloned());
        if let Some(res) = res.filter(|x| x["rolled_back"].is_object()) {
            assert_eq!(n["rolled_back_from"], from, "{n}");
            return res;
        }
        assert!(
            Instant::now() < deadline,
            "no rollback reported\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_update_that_turns_unhealthy_is_rolled_back_and_reported() {
    if !engine_ready() {
        return;
    }
    let (hook, seen) = common::webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[alerts.webhooks]]\nurl = \"http://127.0.0.1:{hook}/hook\"\nkinds = [\"rollback\"]\n"
        ),
    )
    .unwrap();
    let r = Registry::start_with(&["--config", cfg.to_str().unwrap()]).await;
    let a = Agent::start(
        &r,
        "\n[heal]\nrollback_grace = \"3s\"\nbackoff_initial = \"1s\"\n",
    )
    .await;
    let name = format!("rb-{}", suffix());

    // Generation 1: healthy, and seen healthy by the agent (a resync is 2 s).
    let g1 = r
        .put_spec(&a.node_id, &container(&name, "1", "exit 0"))
        .await;
    r.wait_observed(&a.node_id, g1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(&name) != "healthy" {
        assert!(
            Instant::now() < deadline,
            "never healthy: {}",
            health(&name)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Generation 2 fails its health check: rolled back past the grace period.
    let g2 = r
        .put_spec(&a.node_id, &container(&name, "2", "exit 1"))
        .await;
    assert!(g2 > g1);
    let res = rolled_back(&r, &a, &name, g2).await;
    assert_eq!(res["rolled_back"]["from_generation"], g2, "{res}");
    assert_eq!(res["rolled_back"]["to_generation"], g1, "{res}");
    assert!(
        res["error"]
            .as_str()
            .unwrap()
            .contains(&format!("rolled back from generation {g2}")),
        "{res}"
    );
    // The container runs generation 1's configuration again, healthy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(env_v(&name) == "1" && health(&name) == "healthy") {
        assert!(
            Instant::now() < deadline,
            "not back to generation 1: V={} health={}",
            env_v(&name),
            health(&name)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(inspect(&name).unwrap().running);
    // It stays there while the spec is generation 2 (a few resyncs), and one alert was sent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env_v(&name), "1");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["kind"], "rollback");
    assert!(
        got[0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("from generation {g2}")),
        "{got:?}"
    );
    docker(&["rm", "-f", &name]);
}

/// Generation 2 changes only the version of a payload the container restarts on (and its health
/// check reads): the container turns unhealthy, and the rollback puts the payload back at
/// version 1 (from the agent's blob cache: the registry serves a node only its current spec's
/// blobs) with the container healthy again.
#[tokio::test]
async fn a_payload_update_that_breaks_its_container_is_rolled_back_with_the_payload() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let root = tempfile::tempdir().unwrap();
    let root_s = root.path().display().to_string();
    let a = Agent::start(
        &r,
        &format!(
            "payload_roots = [\"{root_s}\"]\nallowed_bind_roots = [\"{root_s}\"]\n[heal]\nrollback_grace = \"3s\"\nbackoff_initial = \"1s\"\n"
        ),
    )
    .await;
    let name = format!("rbp-{}", suffix());
    let pay = format!("{name}-conf");
    r.upload(&pay, "1", b"good\n".to_vec()).await;
    r.upload(&pay, "2", b"bad\n".to_vec()).await;
    let file = root.path().join("app.conf");
    let spec = |version: &str| {
        format!(
            "payloads:\n  - {{name: {pay}, version: '{version}', path: {}, on_change: {{restart_containers: [{name}]}}}}\ncontainers:\n  - {{name: {name}, image: '{IMAGE}', command: [sleep, '3600'], volumes: ['{root_s}:/conf:ro'], healthcheck: {{exec: [sh, -c, 'grep -q good /conf/app.conf'], interval: 1s, retries: 1}}}}\n",
            file.display()
        )
    };
    let g1 = r.put_spec(&a.node_id, &spec("1")).await;
    r.wait_observed(&a.node_id, g1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(&name) != "healthy" {
        assert!(Instant::now() < deadline, "never healthy\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"good\n");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let g2 = r.put_spec(&a.node_id, &spec("2")).await;
    let res = rolled_back(&r, &a, &name, g2).await;
    assert_eq!(res["rolled_back"]["to_generation"], g1, "{res}");
    // The payload is back at version 1, attested as such, and the container healthy.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let att = r.attestations(&a.node_id).await;
        let back = att.iter().any(|x| {
            x["name"] == pay.as_str() && x["version"] == "1" && x["actual"] == x["expected"]
        });
        if back && health(&name) == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "payload not back at version 1: {att:?} health={}\n{}",
            health(&name),
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"good\n");
    assert!(
        a.log()
            .contains("payload held at its version from before the rollback"),
        "{}",
        a.log()
    );
    docker(&["rm", "-f", &name]);
}
