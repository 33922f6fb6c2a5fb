//! End-to-end: node health from heartbeats (ready → stale → down → ready), each transition in
//! the event log; heartbeats alone do not write events.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Registry;
use reqwest::Method;
use serde_json::json;

async fn health(r: &Registry, id: &str) -> String {
    let (_, n) = r.get(&format!("/v1/nodes/{id}"), &r.admin).await;
    n["health"].as_str().unwrap().to_string()
}

async fn wait_for_health(r: &Registry, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(r, id).await != want {
        assert!(Instant::now() < deadline, "node never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ready_stale_down_and_back_with_events() {
    let r = Registry::start(&[
        "--heartbeat-interval",
        "200ms",
        "--stale-after",
        "3",
        "--down-after",
        "10",
    ])
    .await;
    let (id, secret) = r.enroll("m-health", json!({})).await;
    assert_eq!(health(&r, &id).await, "ready");
    // Heartbeats keep it ready and write no events.
    for _ in 0..8 {
        let (st, hb) = r
            .req(
                Method::POST,
                &format!("/v1/nodes/{id}/heartbeat"),
                Some(&secret),
                Some(json!({"observed_generation": 0, "rtt_ms": 1.5})),
            )
            .await;
        assert_eq!(st, 200);
        assert_eq!(hb["generation"], 0);
        assert!(hb["server_time"].is_string());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health(&r, &id).await, "ready");
    wait_for_health(&r, &id, "stale").await;
    wait_for_health(&r, &id, "down").await;
    let (st, _) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id}/heartbeat"),
            Some(&secret),
            Some(json!({"observed_generation": 0})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(health(&r, &id).await, "ready");
    // The recovery is stored by the health writer shortly after the heartbeat's answer (which
    // does not wait for the store): wait for its event.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let (_, ev) = r.get(&format!("/v1/events?node={id}"), &r.admin).await;
        let seen: Vec<(String, String)> = ev
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().to_string(),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if seen.len() >= 4 || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expect = [
        ("node-enrolled", None),
        ("health-changed", Some("ready -> stale")),
        ("health-changed", Some("stale -> down")),
        ("health-changed", Some("down -> ready")),
    ];
    assert_eq!(seen.len(), expect.len(), "{seen:?}");
    for ((kind, msg), (k, m)) in seen.iter().zip(expect) {
        assert_eq!(kind, k);
        if let Some(m) = m {
            assert_eq!(msg, m);
        }
    }
    // Health filter on the list.
    let (_, ready) = r.get("/v1/nodes?health=ready", &r.admin).await;
    assert_eq!(ready.as_array().unwrap().len(), 1);
    let (_, down) = r.get("/v1/nodes?health=down,stale", &r.admin).await;
    assert_eq!(down.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn status_is_requested_when_its_digest_changes() {
    let r = Registry::start(&[]).await;
    let (id, secret) = r.enroll("m-status", json!({})).await;
    let hb = |d: &str| json!({"observed_generation": 0, "status_digest": d});
    let (_, a) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id}/heartbeat"),
            Some(&secret),
            Some(hb("d1")),
        )
        .await;
    assert_eq!(a["status_wanted"], true);
    let status = json!({"observed_generation": 0, "digest": "d1", "resources": [
        {"kind": "container", "name": "web", "state": "failed", "error": "image not found"}]});
    let (st, _) = r
        .req(
            Method::PUT,
            &format!("/v1/nodes/{id}/status"),
            Some(&secret),
            Some(status),
        )
        .await;
    assert_eq!(st, 204);
    let (_, a) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id}/heartbeat"),
            Some(&secret),
            Some(hb("d1")),
        )
        .await;
    assert_eq!(a["status_wanted"], false);
    let (_, n) = r.get(&format!("/v1/nodes/{id}"), &r.admin).await;
    assert_eq!(n["status"]["resources"][0]["error"], "image not found");
}
