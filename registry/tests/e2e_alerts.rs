//! Alerts against the real registry binary: a node that stops heartbeating goes down and a
//! webhook receiver (an HTTP server in this test) gets exactly one signed `node-down` alert;
//! the delivery is in the event log. A webhook nobody answers is retried with backoff, each
//! failed attempt logged, then given up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use common::{free_port, Registry};
use serde_json::{json, Value};

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// An HTTP server recording every POST /hook; returns its port.
async fn receiver(seen: Seen) -> u16 {
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

async fn events(r: &Registry, kind: &str) -> Vec<String> {
    let (_, ev) = r.get("/v1/events", &r.admin).await;
    ev.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn node_down_alerts_once_signed_and_failures_are_retried_then_given_up() {
    let seen: Seen = Arc::default();
    let port = receiver(seen.clone()).await;
    let dead = free_port(); // nothing listens there
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-key\n").unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[alerts]
max_attempts = 3
retry_initial = "100ms"
retry_max = "200ms"
timeout = "2s"

[[alerts.webhooks]]
url = "http://127.0.0.1:{port}/hook?token=do-not-log-me"
kinds = ["node-down"]
secret_file = "{}"

[[alerts.webhooks]]
url = "http://127.0.0.1:{dead}/nobody"

[[alerts.webhooks]]
url = "http://127.0.0.1:{port}/hook"
kinds = ["workload-failed"]
"#,
            secret.display()
        ),
    )
    .unwrap();
    let r = Registry::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--heartbeat-interval",
        "200ms",
        "--stale-after",
        "2",
        "--down-after",
        "4",
    ])
    .await;
    let (id, _secret) = r.enroll("m-alert", json!({})).await;

    // No heartbeat: stale, then down, then one alert.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no alert:\n{}", r.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The failing webhook gives up after 3 attempts (100 + 200 ms apart); wait well past it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events(&r, "alert-failed")
        .await
        .iter()
        .any(|m| m.contains("giving up"))
    {
        assert!(
            Instant::now() < deadline,
            "the dead webhook never gave up:\n{}",
            r.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let got = seen.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        1,
        "exactly one alert (the workload-failed hook gets none): {got:?}"
    );
    let (headers, raw) = &got[0];
    let body: Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(body["kind"], "node-down");
    assert_eq!(body["node_id"], id.as_str());
    assert_eq!(body["hostname"], "host-m-alert");
    assert!(body["message"].as_str().unwrap().contains("down"), "{body}");
    assert!(!body["id"].as_str().unwrap().is_empty());
    assert_eq!(headers["x-steward-alert"], "node-down");
    // HMAC-SHA256 of the exact bytes received, under the webhook's secret.
    let want = steward_registry::alerts::signature(b"s3cret-key", raw);
    assert_eq!(headers["x-steward-signature"].to_str().unwrap(), want);

    let delivered = events(&r, "alert-delivered").await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].contains("node-down alert"), "{delivered:?}");
    let failed = events(&r, "alert-failed").await;
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(
        failed[0].contains("attempt 1/3") && failed[0].contains("retrying in 100ms"),
        "{failed:?}"
    );
    assert!(
        failed[1].contains("attempt 2/3") && failed[1].contains("retrying in 200ms"),
        "{failed:?}"
    );
    assert!(
        failed[2].contains("attempt 3/3") && failed[2].contains("giving up"),
        "{failed:?}"
    );
    // The webhook's query (a credential, often) is never logged or recorded.
    let all = format!("{delivered:?}{failed:?}{}", r.log());
    assert!(!all.contains("do-not-log-me"), "{all}");
}

#[tokio::test]
async fn a_payload_turning_drifted_alerts_once() {
    let seen: Seen = Arc::default();
    let port = receiver(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        format!("[[alerts.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nkinds = [\"payload-drift\"]\n"),
    )
    .unwrap();
    let r = Registry::start(&["--config", cfg.to_str().unwrap()]).await;
    let (id, secret) = r.enroll("m-drift", json!({})).await;
    let status = |actual: &str, digest: &str| {
        json!({"observed_generation": 0, "resources": [], "digest": digest, "payloads": [
            {"name": "tool", "version": "1", "path": "/opt/tool", "expected": "aa", "actual": actual}
        ]})
    };
    // Matching, drifted, drifted again (another digest), matching: one alert.
    for (actual, digest) in [("aa", "d1"), ("bb", "d2"), ("cc", "d3"), ("aa", "d4")] {
        let (st, body) = r
            .req(
                reqwest::Method::PUT,
                &format!("/v1/nodes/{id}/status"),
                Some(&secret),
                Some(status(actual, digest)),
            )
            .await;
        assert!(st == 204 || st == 200, "{st} {body}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while events(&r, "alert-delivered").await.is_empty() {
        assert!(Instant::now() < deadline, "no delivery:\n{}", r.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let body: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(body["kind"], "payload-drift");
    assert_eq!(body["resource"], "tool");
    assert!(
        body["message"].as_str().unwrap().contains("sha256 bb"),
        "{body}"
    );
    assert!(
        got[0].0.get("x-steward-signature").is_none(),
        "no secret, no signature"
    );
}
