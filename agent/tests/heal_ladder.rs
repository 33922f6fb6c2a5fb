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

/// The resources of the node's status, by name.
async fn resource_of(r: &Registry, node: &str, name: &str) -> Option<serde_json::Value> {
    let n = r.node(node).await;
    n["status"]["resources"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)
        .cloned()
}

/// A container's `tcp`/`http` check is made from inside the container, as Docker's HEALTHCHECK:
/// `localhost` reaches a service listening only in the container (its port not published, and
/// free on the host), which is healthy and never restarted while the probes run again and
/// again; a port only the host listens on is not the container's, so that one is unhealthy.
#[tokio::test]
async fn a_localhost_check_probes_inside_the_container() {
    if !engine_ready() {
        return;
    }
    // The host listens here; the container does not.
    let host_only = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_only.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in host_only.incoming() {});
    // Free on the host: only the containers listen on these.
    let (tcp_port, http_port) = (common::free_port(), common::free_port());
    let r = Registry::start().await;
    let a = Agent::start(
        &r,
        "\n[heal]\nattempts_per_rung = 1\nbackoff_initial = \"1s\"\nbackoff_max = \"2s\"\n",
    )
    .await;
    let s = suffix();
    let (tcp, http, host) = (
        format!("in-tcp-{s}"),
        format!("in-http-{s}"),
        format!("in-host-{s}"),
    );
    let check = "interval: 1s, timeout: 2s, retries: 1";
    let spec = format!(
        "containers:\n\
         \x20 - {{name: {tcp}, image: '{IMAGE}', command: [httpd, -f, -p, '{tcp_port}', -h, /www], healthcheck: {{tcp: 'localhost:{tcp_port}', {check}}}}}\n\
         \x20 - {{name: {http}, image: '{IMAGE}', command: [httpd, -f, -p, '{http_port}', -h, /www], healthcheck: {{http: 'http://localhost:{http_port}/', {check}}}}}\n\
         \x20 - {{name: {host}, image: '{IMAGE}', command: [sleep, '3600'], healthcheck: {{tcp: '127.0.0.1:{host_port}', {check}}}}}\n"
    );
    r.put_spec(&a.node_id, &spec).await;
    let first_id = |n: &str| common::docker(&["inspect", "-f", "{{.Id}}", n]);
    let ids = wait_for(60, "both served containers healthy", || {
        let (r, node, tcp, http) = (&r, a.node_id.clone(), tcp.clone(), http.clone());
        async move {
            let t = resource_of(r, &node, &tcp).await?;
            let h = resource_of(r, &node, &http).await?;
            (t["health"] == "healthy" && h["health"] == "healthy")
                .then(|| (first_id(&tcp), first_id(&http)))
        }
    })
    .await;
    // The probes go on (the host-only one climbs its whole ladder meanwhile: restart,
    // recreate, failed, each after probes of all three): the served ones stay as they are.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let bad = loop {
        let b = resource_of(&r, &a.node_id, &host).await;
        if let Some(b) = b.filter(|b| b["escalation"]["position"] == "failed") {
            break b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the host-only check never failed: {:?}\n{}",
            resource_of(&r, &a.node_id, &host).await,
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(bad["state"], "failed", "{bad}");
    for (name, id) in [(&tcp, &ids.0), (&http, &ids.1)] {
        let me = resource_of(&r, &a.node_id, name).await.unwrap();
        assert_eq!(me["health"], "healthy", "{me}\n{}", a.log());
        assert_eq!(me["state"], "converged", "{me}");
        assert_eq!(me["restarts"], 0, "{me}");
        assert!(me["escalation"].is_null(), "{me}");
        assert!(me["error"].is_null(), "{me}");
        assert_eq!(&first_id(name), id, "{name} was recreated");
        assert_eq!(
            common::docker(&["inspect", "-f", "{{.RestartCount}}", name]),
            "0",
            "{name}"
        );
    }
    common::docker(&["rm", "-f", &tcp, &http, &host]);
}

/// A container whose check keeps failing is reported `failed` — while the ladder restarts and
/// recreates it, not only at the top — with an error naming its health and its rung; the
/// registry's node view and the fleet page count it among the workloads failing, and once it
/// is steady (failed, stopped) no further status is sent nor `status-changed` event logged.
#[tokio::test]
async fn an_unhealthy_container_is_failed_and_counted_failing() {
    if !engine_ready() {
        return;
    }
    let closed = common::free_port();
    let r = Registry::start().await;
    let a = Agent::start(
        &r,
        "\n[heal]\nattempts_per_rung = 1\nbackoff_initial = \"1s\"\nbackoff_max = \"2s\"\n",
    )
    .await;
    let s = suffix();
    let (sick, fine) = (format!("sick-{s}"), format!("fine-{s}"));
    r.put_spec(
        &a.node_id,
        &format!(
            "containers:\n\
             \x20 - {{name: {sick}, image: '{IMAGE}', command: [sleep, '3600'], healthcheck: {{tcp: 'localhost:{closed}', interval: 1s, timeout: 2s, retries: 1}}}}\n\
             \x20 - {{name: {fine}, image: '{IMAGE}', command: [sleep, '3600']}}\n"
        ),
    )
    .await;
    // On its ladder (restart or recreate), before the top: already failed, naming health and rung.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut seen_states = Vec::new();
    loop {
        if let Some(me) = resource_of(&r, &a.node_id, &sick).await {
            let pos = me["escalation"]["position"]
                .as_str()
                .unwrap_or("")
                .to_string();
            seen_states.push((pos.clone(), me["state"].clone(), me["health"].clone()));
            if pos == "restart" || pos == "recreate" {
                assert_eq!(me["state"], "failed", "on the ladder: {me}");
                let e = me["error"].as_str().unwrap();
                assert!(e.contains(&format!("escalation at {pos}")), "{me}");
                assert!(
                    e.contains("health check failing") || e.contains("not yet healthy again"),
                    "{me}"
                );
            }
            if me["health"] == "unhealthy" && pos != "failed" {
                assert_eq!(me["state"], "failed", "{me}");
                let e = me["error"].as_str().unwrap();
                assert!(e.contains(&format!("localhost:{closed}")), "{me}");
            }
            if pos == "failed" {
                assert_eq!(me["state"], "failed", "{me}");
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never failed: {seen_states:?}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen_states
            .iter()
            .any(|(p, st, _)| (p == "restart" || p == "recreate") && st == "failed"),
        "never seen failing on the ladder: {seen_states:?}"
    );
    let me = resource_of(&r, &a.node_id, &fine).await.unwrap();
    assert_eq!(me["state"], "converged", "{me}");

    // The registry: the node's failing workloads on the fleet page.
    let page = r
        .http
        .get(r.url("/"))
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let card = page
        .split("id=\"count-failed\"")
        .nth(1)
        .and_then(|rest| rest.split("</a>").next())
        .unwrap_or_else(|| panic!("no failing count on the fleet page:\n{page}"));
    assert!(card.contains("data-count=\"1\""), "{card}");
    assert!(card.contains("workloads failing on 1 node"), "{card}");

    // Steady now: the digest stays, and no more status-changed events come (the agent resyncs
    // every 2 s, so several passes run meanwhile).
    let events = || async {
        let v = r
            .get_json(&format!("/v1/events?node={}&limit=1000", a.node_id))
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "status-changed")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    // Steady: stopped, so no longer probed (no health); then let a status on its way arrive.
    wait_for(60, "the failed container's last status", || {
        let (r, node, sick) = (&r, a.node_id.clone(), sick.clone());
        async move {
            let me = resource_of(r, &node, &sick).await?;
            let stopped =
                common::docker(&["inspect", "-f", "{{.State.Running}}", &sick]) == "false";
            (me["health"].is_null() && stopped).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = events().await;
    assert!(
        before.last().is_some_and(|m| m.contains("1 failed")),
        "{before:?}"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = events().await;
    assert_eq!(after, before, "status-changed events for a steady node");
    common::docker(&["rm", "-f", &sick, &fine]);
}
