//! Test support for sessions: a node that stays ready (enrolled with room for sessions, kept
//! heartbeating), and small calls of the templates and sessions API.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::Registry;

/// Enrols a node with room for sessions (4 CPUs, 8 GiB) and keeps it ready with heartbeats
/// sent to `urls` in turn, until the test ends.
pub async fn node(r: &Registry, urls: Vec<String>, machine: &str, labels: Value) -> String {
    node_with_secret(r, urls, machine, labels).await.0
}

/// [`node`], and the node's secret (to send its status as the node).
pub async fn node_with_secret(
    r: &Registry,
    urls: Vec<String>,
    machine: &str,
    labels: Value,
) -> (String, String) {
    let (st, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"labels": labels})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    let facts = json!({"machine_id": machine, "hostname": format!("host-{machine}"),
                       "cpus": 4, "memory_bytes": 8u64 << 30});
    let (st, en) = r
        .req(
            Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": tok["token"], "facts": facts})),
        )
        .await;
    assert_eq!(st, 200, "{en}");
    let id = en["node_id"].as_str().unwrap().to_string();
    let secret = en["node_secret"].as_str().unwrap().to_string();
    let (client, hb_id, hb_secret) = (r.client.clone(), id.clone(), secret.clone());
    tokio::spawn(async move {
        for i in 0.. {
            let url = format!("{}/v1/nodes/{hb_id}/heartbeat", urls[i % urls.len()]);
            let body = json!({"observed_generation": 0});
            let _ = client
                .post(url)
                .bearer_auth(&hb_secret)
                .json(&body)
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    (id, secret)
}

pub async fn put_template(r: &Registry, token: &str, name: &str, t: Value) -> (u16, Value) {
    r.req(
        Method::PUT,
        &format!("/v1/templates/{name}"),
        Some(token),
        Some(t),
    )
    .await
}

pub async fn create(r: &Registry, token: &str, body: Value) -> (u16, Value) {
    r.req(Method::POST, "/v1/sessions", Some(token), Some(body))
        .await
}

/// `GET /v1/sessions/{id}` with the admin token.
pub async fn session(r: &Registry, id: &str) -> Value {
    let (st, s) = r.get(&format!("/v1/sessions/{id}"), &r.admin).await;
    assert_eq!(st, 200, "{s}");
    s
}

/// Waits for session `id` to be running (never failed on the way).
pub async fn running(r: &Registry, id: &str) -> Value {
    super::agent::wait_for(120, &format!("session {id} to run"), || async {
        let s = session(r, id).await;
        assert_ne!(s["state"], "failed", "{s}");
        (s["state"] == "running").then_some(s)
    })
    .await
}

pub async fn end(r: &Registry, token: &str, id: &str) -> (u16, Value) {
    r.req(
        Method::DELETE,
        &format!("/v1/sessions/{id}"),
        Some(token),
        None,
    )
    .await
}

pub async fn sessions(r: &Registry, token: &str, query: &str) -> Vec<Value> {
    let (st, v) = r.get(&format!("/v1/sessions{query}"), token).await;
    assert_eq!(st, 200, "{v}");
    v.as_array().unwrap().clone()
}

/// A named credential made with the admin token.
pub async fn credential(r: &Registry, name: &str, role: &str, owner: Option<&str>) -> String {
    let mut body = json!({"name": name, "role": role});
    if let Some(o) = owner {
        body["owner"] = json!(o);
    }
    let (st, c) = r
        .req(Method::POST, "/v1/credentials", Some(&r.admin), Some(body))
        .await;
    assert_eq!(st, 201, "{c}");
    c["token"].as_str().unwrap().to_string()
}

/// A registry started with `config` as its config file (e.g. a `[sessions]` table), and the
/// directory holding the file (keep it as long as the registry may restart).
pub async fn registry_with(config: &str) -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(&cfg, config).unwrap();
    let r = Registry::start(&["--config", cfg.to_str().unwrap()]).await;
    (r, dir)
}

/// A fresh enrollment token (admin) for nodes with `labels`.
pub async fn enrollment_token(r: &Registry, labels: Value) -> String {
    let (st, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"labels": labels})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    tok["token"].as_str().unwrap().to_string()
}
