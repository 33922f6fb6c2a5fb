//! A rollout over 5 real agent processes (separate data dirs and payload roots, one real
//! registry): batches of 2, the second batch has a node that cannot take the new version →
//! halted naming it; rollback puts the previous version back everywhere. Every step is in the
//! event log, and `stewardctl rollout status` shows it. Needs root (as the agent's network
//! tests do): each agent gets its own machine id in a private mount namespace.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::{content, wait_for, Agent};
use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};

async fn upload(r: &Registry, version: &str, body: Vec<u8>) -> String {
    let resp = r
        .client
        .put(r.url(&format!("/v1/payloads/tc/{version}")))
        .bearer_auth(&r.admin)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    v["sha256"].as_str().unwrap().to_string()
}

/// Waits until every agent has `want` at its target and attests it.
async fn all_at(r: &Registry, agents: &[Agent], want: &[u8], sha: &str, what: &str) {
    for a in agents {
        wait_for(90, &format!("node {} to attest {what}", a.id), || async {
            let (_, n) = r.get(&format!("/v1/nodes/{}", a.id), &r.admin).await;
            let att = n["status"]["payloads"].as_array()?.first()?.clone();
            (att["actual"] == sha && att["expected"] == sha).then_some(())
        })
        .await;
        let got = std::fs::read(a.target("tc"));
        assert!(
            got.as_ref().is_ok_and(|g| g == want),
            "node {}: {} {:?}\n{:?}\n{}",
            a.id,
            a.target("tc").display(),
            got.map(|g| g.len()),
            r.get(&format!("/v1/nodes/{}", a.id), &r.admin).await.1["status"],
            a.log()
        );
    }
}

async fn rollout(r: &Registry, id: &str) -> Value {
    r.get(&format!("/v1/rollouts/{id}"), &r.admin).await.1
}

#[tokio::test]
async fn rollout_over_five_agents_halts_on_a_failing_batch_and_rolls_back() {
    let r = Registry::start(&["--heartbeat-interval", "1s"]).await;
    let (st, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": 5, "labels": {"role": "builder"}})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    let token = tok["token"].as_str().unwrap();
    let mut agents = Vec::new();
    for _ in 0..5 {
        agents.push(Agent::start(&r.url(""), token, None).await);
    }
    // Batches follow node id order.
    agents.sort_by(|a, b| a.id.cmp(&b.id));

    let (v1, v2) = (content(1 << 20, 1), content(1 << 20, 2));
    let sha1 = upload(&r, "1", v1.clone()).await;
    let sha2 = upload(&r, "2", v2.clone()).await;
    for a in &agents {
        let yaml = format!(
            "payloads: [{{name: tc, version: '1', path: '{}'}}]",
            a.target("tc").display()
        );
        let (st, w) = r
            .put_yaml(&format!("/v1/nodes/{}/spec", a.id), &r.admin, &yaml)
            .await;
        assert_eq!(st, 200, "{w}");
    }
    all_at(&r, &agents, &v1, &sha1, "version 1").await;

    // The third node (second batch) cannot take version 2: a directory sits where its blob
    // cache would put the blob, so the download cannot land.
    let bad = &agents[2];
    let trap = bad.dir.path().join("state/blobs").join(&sha2);
    std::fs::create_dir_all(trap.join("keep")).unwrap();

    let (st, ro) = r
        .req(
            Method::POST,
            "/v1/rollouts",
            Some(&r.admin),
            Some(
                json!({"payload": "tc", "version": "2", "selector": "role=builder",
                        "batch": "2", "timeout": "60s"}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{ro}");
    let id = ro["id"].as_str().unwrap().to_string();
    assert_eq!(ro["batch_count"], 3);
    assert_eq!(ro["nodes"].as_array().unwrap().len(), 5);
    // A second rollout of the same payload is refused while this one is active.
    let (st, _) = r
        .req(
            Method::POST,
            "/v1/rollouts",
            Some(&r.admin),
            Some(json!({"payload": "tc", "version": "1"})),
        )
        .await;
    assert_eq!(st, 409);
    // Versions an active rollout needs cannot be deleted.
    let (st, err) = r
        .req(Method::DELETE, "/v1/payloads/tc/2", Some(&r.admin), None)
        .await;
    assert_eq!(st, 409, "{err}");

    let halted = wait_for(120, "the rollout to halt", || async {
        let ro = rollout(&r, &id).await;
        (ro["state"] != "running").then_some(ro)
    })
    .await;
    assert_eq!(halted["state"], "halted", "{halted}\n{}", bad.log());
    let msg = halted["message"].as_str().unwrap();
    assert!(msg.contains("batch 2/3") && msg.contains(&bad.id), "{msg}");
    let node = |ro: &Value, id: &str| {
        ro["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(node(&halted, &bad.id)["state"], "failed");
    assert!(node(&halted, &bad.id)["error"].as_str().is_some());
    for a in &agents[..2] {
        assert_eq!(node(&halted, &a.id)["state"], "converged");
        assert_eq!(
            std::fs::read(a.target("tc")).unwrap(),
            v2,
            "batch 1 got version 2"
        );
    }
    assert_eq!(node(&halted, &agents[4].id)["state"], "waiting");
    assert_eq!(
        std::fs::read(bad.target("tc")).unwrap(),
        v1,
        "never replaced"
    );
    assert_eq!(
        std::fs::read(agents[4].target("tc")).unwrap(),
        v1,
        "batch 3 never started"
    );

    // stewardctl shows it.
    let out = Command::new(env!("CARGO_BIN_EXE_stewardctl"))
        .args([
            "--registry",
            &r.url(""),
            "--token",
            &r.admin,
            "rollout",
            "status",
            &id,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("halted") && text.contains(&bad.id), "{text}");

    // Rollback: version 1 everywhere again.
    let (st, rb) = r
        .req(
            Method::POST,
            &format!("/v1/rollouts/{id}/rollback"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200, "{rb}");
    let done = wait_for(120, "the rollback to finish", || async {
        let ro = rollout(&r, &id).await;
        (ro["state"] == "rolled-back").then_some(ro)
    })
    .await;
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .starts_with("rolled back: 4 node(s)"),
        "{done}"
    );
    all_at(&r, &agents, &v1, &sha1, "version 1 after the rollback").await;
    for a in &agents {
        let (_, doc) = r.get(&format!("/v1/nodes/{}/spec", a.id), &r.admin).await;
        assert_eq!(doc["spec"]["payloads"][0]["version"], "1");
        assert_eq!(doc["spec"]["payloads"][0]["sha256"], sha1.as_str());
    }

    // Every step is in the event log.
    let (_, events) = r.get("/v1/events?limit=1000", &r.admin).await;
    let steps: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rollout")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    for want in [
        "started on 5 node(s) in 3 batch(es)",
        "batch 1/3 started",
        "batch 1/3 converged and attested",
        "batch 2/3 started",
        "halted at batch 2/3",
        "rolling back",
        "rollback applied to 4 node(s)",
        "rolled back: 4 node(s)",
    ] {
        assert!(
            steps.iter().any(|s| s.contains(want)),
            "no event {want:?} in {steps:#?}"
        );
    }
    // Done with it: version 2 is no longer needed by an active rollout.
    let (st, err) = r
        .req(Method::DELETE, "/v1/payloads/tc/2", Some(&r.admin), None)
        .await;
    assert_eq!(st, 200, "{err}");
}

/// Pause holds the next batch back; resume continues, also across a registry restart (`kill -9`
/// mid-rollout); a finished rollout can be rolled back; commands that do not fit the state are
/// refused.
#[tokio::test]
async fn pause_resume_survive_a_registry_restart_and_roll_back_a_finished_rollout() {
    let mut r = Registry::start(&["--heartbeat-interval", "1s"]).await;
    let (st, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": 3, "labels": {"role": "builder"}})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    let token = tok["token"].as_str().unwrap().to_string();
    let mut agents = Vec::new();
    for _ in 0..3 {
        agents.push(Agent::start(&r.url(""), &token, None).await);
    }
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let (v1, v2) = (content(200_000, 11), content(200_000, 12));
    let sha1 = upload(&r, "1", v1.clone()).await;
    let sha2 = upload(&r, "2", v2.clone()).await;
    for a in &agents {
        let yaml = format!(
            "payloads: [{{name: tc, version: '1', path: '{}'}}]",
            a.target("tc").display()
        );
        let (st, w) = r
            .put_yaml(&format!("/v1/nodes/{}/spec", a.id), &r.admin, &yaml)
            .await;
        assert_eq!(st, 200, "{w}");
    }
    all_at(&r, &agents, &v1, &sha1, "version 1").await;

    let (st, ro) = r
        .req(
            Method::POST,
            "/v1/rollouts",
            Some(&r.admin),
            Some(json!({"payload": "tc", "version": "2", "batch": "1", "timeout": "60s"})),
        )
        .await;
    assert_eq!(st, 201, "{ro}");
    let id = ro["id"].as_str().unwrap().to_string();
    let cmd = |what: &str| format!("/v1/rollouts/{id}/{what}");
    // Paused with stewardctl (JSON output).
    let out = Command::new(env!("CARGO_BIN_EXE_stewardctl"))
        .args(["--registry", &r.url(""), "--token", &r.admin, "-o", "json"])
        .args(["rollout", "pause", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["state"], "paused", "{p}");
    let (st, _) = r
        .req(Method::POST, &cmd("pause"), Some(&r.admin), None)
        .await;
    assert_eq!(st, 409, "pausing a paused rollout");
    // Paused: no later batch starts (the pause landed within the first batch or two).
    let at = p["current_batch"].as_u64().unwrap();
    assert!(at < 2, "{p}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ro = rollout(&r, &id).await;
    assert_eq!(ro["state"], "paused");
    assert_eq!(ro["current_batch"], at, "{ro}");
    for (i, a) in agents.iter().enumerate().skip(at as usize + 1) {
        assert_eq!(ro["nodes"][i]["node_id"], a.id.as_str());
        assert_eq!(ro["nodes"][i]["state"], "waiting", "{ro}");
        assert_eq!(std::fs::read(a.target("tc")).unwrap(), v1);
    }

    let (st, p) = r
        .req(Method::POST, &cmd("resume"), Some(&r.admin), None)
        .await;
    assert_eq!((st, p["state"].as_str()), (200, Some("running")), "{p}");
    // The registry dies mid-rollout and comes back: the rollout carries on.
    r.kill9();
    r.spawn().await;
    let done = wait_for(120, "the rollout to finish", || async {
        let ro = rollout(&r, &id).await;
        (ro["state"] != "running").then_some(ro)
    })
    .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["message"], "done: 3 node(s) at version 2");
    all_at(&r, &agents, &v2, &sha2, "version 2").await;
    let (st, _) = r
        .req(Method::POST, &cmd("resume"), Some(&r.admin), None)
        .await;
    assert_eq!(st, 409, "resuming a finished rollout");

    let (st, _) = r
        .req(Method::POST, &cmd("rollback"), Some(&r.admin), None)
        .await;
    assert_eq!(st, 200);
    let back = wait_for(120, "the rollback", || async {
        let ro = rollout(&r, &id).await;
        (ro["state"] == "rolled-back").then_some(ro)
    })
    .await;
    assert!(
        back["message"]
            .as_str()
            .unwrap()
            .starts_with("rolled back: 3 node(s)"),
        "{back}"
    );
    all_at(&r, &agents, &v1, &sha1, "version 1 after the rollback").await;
}

/// A node that does not report back within the batch time-out halts the rollout, named as
/// timed out; abort then stops it for good.
#[tokio::test]
async fn a_silent_node_times_the_batch_out_and_abort_stops_it() {
    let r = Registry::start(&["--heartbeat-interval", "1s"]).await;
    let (st, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": 2})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    let token = tok["token"].as_str().unwrap().to_string();
    let mut agents = vec![
        Agent::start(&r.url(""), &token, None).await,
        Agent::start(&r.url(""), &token, None).await,
    ];
    let (v1, v2) = (content(100_000, 21), content(100_000, 22));
    let sha1 = upload(&r, "1", v1.clone()).await;
    upload(&r, "2", v2).await;
    for a in &agents {
        let yaml = format!(
            "payloads: [{{name: tc, version: '1', path: '{}'}}]",
            a.target("tc").display()
        );
        let (st, w) = r
            .put_yaml(&format!("/v1/nodes/{}/spec", a.id), &r.admin, &yaml)
            .await;
        assert_eq!(st, 200, "{w}");
    }
    all_at(&r, &agents, &v1, &sha1, "version 1").await;
    // One agent stops answering.
    let silent = agents.pop().unwrap();
    let silent_id = silent.id.clone();
    drop(silent);

    let (st, ro) = r
        .req(
            Method::POST,
            "/v1/rollouts",
            Some(&r.admin),
            Some(json!({"payload": "tc", "version": "2", "batch": "100%", "timeout": "3s"})),
        )
        .await;
    assert_eq!(st, 201, "{ro}");
    assert_eq!(ro["batch_count"], 1);
    let id = ro["id"].as_str().unwrap().to_string();
    let halted = wait_for(60, "the rollout to time out", || async {
        let ro = rollout(&r, &id).await;
        (ro["state"] != "running").then_some(ro)
    })
    .await;
    assert_eq!(halted["state"], "halted", "{halted}");
    let msg = halted["message"].as_str().unwrap();
    assert!(
        msg.contains(&silent_id) && msg.contains("timed out") && !msg.contains(&agents[0].id),
        "{msg}"
    );
    let (st, ab) = r
        .req(
            Method::POST,
            &format!("/v1/rollouts/{id}/abort"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!((st, ab["state"].as_str()), (200, Some("aborted")), "{ab}");
    let (st, _) = r
        .req(
            Method::POST,
            &format!("/v1/rollouts/{id}/resume"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 409, "an aborted rollout cannot resume");
    // Aborted is not active: a new rollout of the payload may start.
    let (st, ro) = r
        .req(
            Method::POST,
            "/v1/rollouts",
            Some(&r.admin),
            Some(json!({"payload": "tc", "version": "1", "selector": "nope=1"})),
        )
        .await;
    assert_eq!(st, 422, "no node matches: {ro}");
}
