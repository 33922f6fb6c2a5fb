//! Sessions' jobs against the real registry binary: hot spares kept and claimed, idle
//! sessions warned then ended from the activity their node reports, sessions of a
//! decommissioned node ended.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::agent::wait_for;
use common::sessions::{create, enrollment_token, node, put_template, registry_with, sessions};
use common::Registry;
use reqwest::Method;
use serde_json::json;

/// The ids of the live spares of template `warm`.
async fn spares(r: &Registry) -> Vec<String> {
    let all = sessions(r, &r.admin, "?template=warm").await;
    all.iter()
        .filter(|s| s["spare"] == true && s["state"] != "ended")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn spares_are_kept_and_a_create_claims_one() {
    let r = Registry::start(&[]).await;
    node(&r, vec![r.url("")], "m1", json!({})).await;
    let t = json!({"spares": 2, "ports": ["http"], "ttl": "1h", "per_owner": 1,
                   "params": {"size": {"type": "string", "default": "s"}},
                   "spec": {"containers": [{"name": "c-{{session}}", "image": "busybox",
                                            "ports": ["{{port.http}}:80"],
                                            "env": {"SIZE": "{{param.size}}"}}]}});
    assert_eq!(put_template(&r, &r.admin, "warm", t).await.0, 200);
    let first = wait_for(30, "two spares", || async {
        let s = spares(&r).await;
        (s.len() == 2).then_some(s)
    })
    .await;
    // A create with the default parameters claims the oldest spare: its id, now owned, its
    // lifetime starting now.
    let (st, s) = create(
        &r,
        &r.admin,
        json!({"template": "warm", "owner": "ada", "ttl": "10m"}),
    )
    .await;
    assert_eq!(st, 201, "{s}");
    assert!(
        first.contains(&s["id"].as_str().unwrap().to_string()),
        "{s}"
    );
    assert_eq!(s["owner"], "ada");
    assert!(s.get("spare").is_none(), "{s}");
    assert_eq!(s["endpoints"].as_array().unwrap().len(), 1);
    let left = (chrono::DateTime::parse_from_rfc3339(s["expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc)
        - chrono::Utc::now())
    .num_seconds();
    assert!((590..=600).contains(&left), "{left}");
    // Its lease on the node moved with it.
    let (_, doc) = r
        .get(
            &format!("/v1/nodes/{}/spec", s["node"].as_str().unwrap()),
            &r.admin,
        )
        .await;
    let lease = doc["spec"]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == s["id"])
        .unwrap()
        .clone();
    assert_eq!(lease["expires_at"], s["expires_at"]);
    // Another spare takes its place.
    wait_for(30, "the spare to be replaced", || async {
        let now = spares(&r).await;
        (now.len() == 2 && !now.contains(&s["id"].as_str().unwrap().to_string())).then_some(())
    })
    .await;
    // Other parameters make a new session; the owner's quota counts claimed sessions.
    let (st, other) = create(
        &r,
        &r.admin,
        json!({"template": "warm", "owner": "bob", "params": {"size": "m"}}),
    )
    .await;
    assert_eq!(st, 201, "{other}");
    assert!(!first.contains(&other["id"].as_str().unwrap().to_string()));
    let (st, e) = create(&r, &r.admin, json!({"template": "warm", "owner": "ada"})).await;
    assert_eq!(st, 409, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("its per_owner"),
        "{e}"
    );
}

#[tokio::test]
async fn an_idle_session_is_warned_then_ended_while_a_busy_one_lives() {
    let (r, _cfg) = registry_with("[sessions]\nidle_warning = \"4s\"\n").await;
    let tok = enrollment_token(&r, json!({})).await;
    let facts = json!({"machine_id": "idle-m", "hostname": "idle-m", "cpus": 4, "memory_bytes": 8u64 << 30});
    let (_, en) = r
        .req(
            Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": tok, "facts": facts})),
        )
        .await;
    let (id, secret) = (
        en["node_id"].as_str().unwrap().to_string(),
        en["node_secret"].as_str().unwrap().to_string(),
    );
    let t = json!({"idle_timeout": "10s",
                   "spec": {"containers": [{"name": "c-{{session}}", "image": "busybox"}]}});
    assert_eq!(put_template(&r, &r.admin, "lab", t).await.0, 200);
    let (_, busy) = create(&r, &r.admin, json!({"template": "lab", "owner": "busy"})).await;
    let (_, idle) = create(&r, &r.admin, json!({"template": "lab", "owner": "idle"})).await;
    let (busy_id, idle_id) = (
        busy["id"].as_str().unwrap().to_string(),
        idle["id"].as_str().unwrap().to_string(),
    );
    // The node: heartbeats, and every 500 ms a status in which the busy session's container
    // moved bytes and the idle one's did not.
    let (client, url, status_url) = (
        r.client.clone(),
        r.url(&format!("/v1/nodes/{id}/heartbeat")),
        r.url(&format!("/v1/nodes/{id}/status")),
    );
    let (b, i) = (busy_id.clone(), idle_id.clone());
    tokio::spawn(async move {
        for n in 0u64.. {
            let _ = client
                .post(&url)
                .bearer_auth(&secret)
                .json(&json!({"observed_generation": 0}))
                .send()
                .await;
            let resources = json!([
                {"kind": "container", "name": format!("c-{b}"), "state": "converged", "activity": 1000 + n * 10},
                {"kind": "container", "name": format!("c-{i}"), "state": "converged", "activity": 500}
            ]);
            let status = json!({"observed_generation": 0, "resources": resources, "payloads": [], "digest": format!("d{n}")});
            let _ = client
                .put(&status_url)
                .bearer_auth(&secret)
                .json(&status)
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let ended = wait_for(60, "the idle session to end", || async {
        let (_, s) = r.get(&format!("/v1/sessions/{idle_id}"), &r.admin).await;
        (s["state"] == "ended").then_some(s)
    })
    .await;
    assert_eq!(ended["reason"], "idle");
    let (_, s) = r.get(&format!("/v1/sessions/{busy_id}"), &r.admin).await;
    assert_eq!(s["state"], "running", "{s}");
    // It was warned of first, once.
    let (_, events) = r.get("/v1/events?limit=1000", &r.admin).await;
    let msgs: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "session")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    let warned = msgs
        .iter()
        .position(|m| m.starts_with(&format!("session {idle_id} idle:")))
        .expect("a warning");
    let end = msgs
        .iter()
        .position(|m| m.contains(&format!("session {idle_id} ended (idle)")))
        .expect("the end");
    assert!(warned < end, "{msgs:?}");
    assert_eq!(
        msgs.iter()
            .filter(|m| m.starts_with(&format!("session {idle_id} idle:")))
            .count(),
        1
    );
    assert!(
        !msgs
            .iter()
            .any(|m| m.starts_with(&format!("session {busy_id} idle:"))),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn sessions_on_a_decommissioned_node_end() {
    let r = Registry::start(&[]).await;
    let id = node(&r, vec![r.url("")], "m1", json!({})).await;
    let t = json!({"spec": {"containers": [{"name": "c-{{session}}", "image": "busybox"}]}});
    assert_eq!(put_template(&r, &r.admin, "t", t).await.0, 200);
    let (st, s) = create(&r, &r.admin, json!({"template": "t", "owner": "o"})).await;
    assert_eq!(st, 201, "{s}");
    let (st, _) = r
        .req(
            Method::DELETE,
            &format!("/v1/nodes/{id}"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let sid = s["id"].as_str().unwrap();
    let ended = wait_for(30, "the session to end", || async {
        let (_, s) = r.get(&format!("/v1/sessions/{sid}"), &r.admin).await;
        (s["state"] == "ended").then_some(s)
    })
    .await;
    assert_eq!(ended["reason"], "node-decommissioned");
    // No other node: a new session is refused, naming why.
    let (st, e) = create(&r, &r.admin, json!({"template": "t", "owner": "o"})).await;
    assert_eq!(st, 409, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("no node matches"),
        "{e}"
    );
}
