//! Self-healing end to end: real registry, real agent, real Docker engine. A container that
//! crashes at once (restart: always) walks the escalation ladder — restart, recreate — and ends
//! failed: stopped, kept stopped, reported failed with its escalation in the status; a webhook
//! receiver configured on the registry gets exactly one `workload-failed` alert for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{engine_ready, inspect, suffix, wait_for, Agent, Registry, IMAGE};

#[tokio::test]
async fn a_crash_loop_walks_the_ladder_ends_failed_and_alerts_once() {
    if !engine_ready() {
        return;
    }
    let (hook, seen) = common::webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        format!("[[alerts.webhooks]]\nurl = \"http://127.0.0.1:{hook}/hook\"\nkinds = [\"workload-failed\"]\n"),
    )
    .unwrap();

    let r = Registry::start_with(&["--config", cfg.to_str().unwrap()]).await;
    // A fast ladder: one attempt per rung, 1 s backoff doubling.
    let a = Agent::start(
        &r,
        "\n[heal]\nattempts_per_rung = 1\nbackoff_initial = \"1s\"\nbackoff_max = \"4s\"\ncooldown = \"10m\"\n",
    )
    .await;
    let name = format!("crash-{}", suffix());
    let g = r
        .put_spec(
            &a.node_id,
            &format!(
                "containers:\n  - {{name: {name}, image: '{IMAGE}', command: [sh, -c, 'sleep 0.3; exit 3'], restart: always}}\n"
            ),
        )
        .await;
    assert!(g > 0);

    // Positions seen in the node's status, in order, until failed (a bound against hangs, not
    // a timing assertion).
    let mut positions: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let last = loop {
        let n = r.node(&a.node_id).await;
        let me = n["status"]["resources"]
            .as_array()
            .and_then(|res| res.iter().find(|x| x["name"] == name.as_str()).cloned());
        if let Some(me) = me {
            if let Some(p) = me["escalation"]["position"].as_str() {
                if positions.last().map(String::as_str) != Some(p) {
                    positions.push(p.to_string());
                }
                if p == "failed" {
                    break me;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never failed; positions {positions:?}\nnode: {}\nstatus.json: {}",
            r.node(&a.node_id).await["status"],
            std::fs::read_to_string(a.dir.path().join("state/status.json")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(last["state"], "failed", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("stopped until its spec changes"),
        "{last}"
    );
    assert!(last["escalation_level"].as_u64().unwrap() >= 3, "{last}");
    assert_eq!(last["escalation"]["last_action"], "recreate", "{last}");
    assert_eq!(
        positions.last().map(String::as_str),
        Some("failed"),
        "{positions:?}"
    );

    // Kept stopped: Docker does not restart it, the agent does not start it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = inspect(&name).expect("the container is kept, stopped");
    assert!(!c.running, "{name} runs again");

    // Exactly one alert, even after several more statuses and resyncs.
    wait_for(30, "the workload-failed alert", || {
        let n = seen.lock().unwrap().len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["kind"], "workload-failed");
    assert_eq!(got[0]["resource"], name.as_str());
    assert_eq!(got[0]["node_id"], a.node_id.as_str());

    // An operator's reset: the container is started afresh (and, still crashing, climbs again).
    let started = |n: &str| common::docker(&["inspect", "-f", "{{.State.StartedAt}}", n]);
    let before = started(&name);
    let resp = r
        .http
        .post(r.url(&format!("/v1/nodes/{}/workloads/{name}/reset", a.node_id)))
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while started(&name) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "not started after the reset\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a.log().contains("escalation ladder reset by an operator"),
        "{}",
        a.log()
    );
    common::docker(&["rm", "-f", &name]);
}

/// Agent-side TCP probes: a container whose probe target answers is `healthy` and left alone;
/// one whose target refuses is `unhealthy`, and its ladder starts.
#[tokio::test]
async fn tcp_probes_give_health_and_start_the_ladder() {
    if !engine_ready() {
        return;
    }
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in open.incoming() {});
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = Registry::start().await;
    let a = Agent::start(&r, "\n[heal]\nbackoff_initial = \"1s\"\n").await;
    let (good, bad) = (format!("pgood-{}", suffix()), format!("pbad-{}", suffix()));
    let c = |name: &str, port: u16| {
        format!(
            "  - {{name: {name}, image: '{IMAGE}', command: [sleep, '3600'], healthcheck: {{tcp: '127.0.0.1:{port}', interval: 1s, timeout: 1s, retries: 1}}}}\n"
        )
    };
    r.put_spec(
        &a.node_id,
        &format!(
            "containers:\n{}{}",
            c(&good, open_port),
            c(&bad, closed_port)
        ),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = r.node(&a.node_id).await;
        let res = n["status"]["resources"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let of = |name: &str| res.iter().find(|x| x["name"] == name).cloned();
        if let (Some(g), Some(b)) = (of(&good), of(&bad)) {
            if g["health"] == "healthy" && b["health"] == "unhealthy" && b["escalation"].is_object()
            {
                assert!(g["escalation"].is_null(), "{g}");
                assert_eq!(g["state"], "converged", "{g}");
                assert!(
                    b["error"].as_str().unwrap_or("").contains("escalation"),
                    "{b}"
                );
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probes never told healthy from unhealthy: {res:?}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::docker(&["rm", "-f", &good, &bad]);
}
