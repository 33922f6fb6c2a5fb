//! Alert deliveries are stored, not kept in one process's memory: a delivery failing when the
//! registry is killed is sent by the restarted registry, with the same `x-steward-delivery` id
//! as the failed attempts, and delivered exactly once; with two replicas on a real etcd, a
//! delivery being retried when the jobs leader is killed is delivered once by the other replica,
//! with the same id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::etcd::EtcdCluster;
use common::replicas::Replicas;
use common::Registry;
use serde_json::{json, Value};

/// Every request seen: (delivery id, alert kind, status answered).
type Seen = Arc<Mutex<Vec<(String, String, u16)>>>;

/// A webhook receiver answering 503 while `up` is false, 200 once it is true; returns its port.
async fn receiver(up: Arc<AtomicBool>, seen: Seen) -> u16 {
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let (up, seen) = (up.clone(), seen.clone());
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let status = if up.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let mut s = seen.lock().unwrap();
                s.push((
                    h("x-steward-delivery"),
                    h("x-steward-alert"),
                    status.as_u16(),
                ));
                status
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

async fn events(r: &Registry, kind: &str) -> Vec<String> {
    let (_, ev) = r.get("/v1/events?limit=1000", &r.admin).await;
    ev.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// A config with one node-down webhook on `port`, retried (almost) forever, quickly.
fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let cfg = dir.join("registry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\nmax_attempts = 1000\nretry_initial = \"100ms\"\nretry_max = \"300ms\"\n\n\
             [[alerts.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nkinds = [\"node-down\"]\n"
        ),
    )
    .unwrap();
    cfg
}

/// Waits until a request for it got a 200 (hang guard 60 s), lets a second (wrong) send happen,
/// then checks that the delivery `failed_id` was refused at least 3 times, then accepted once
/// and never sent again, and that no delivery id was accepted twice.
async fn delivered_once(seen: &Seen, failed_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.lock().unwrap().iter().any(|(_, _, st)| *st == 200) {
        assert!(Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = seen.lock().unwrap().clone();
    let mut answered: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for (id, kind, st) in &got {
        assert_eq!(kind, "node-down", "{got:?}");
        answered.entry(id).or_default().push(*st);
    }
    let of_failed = &answered[failed_id];
    assert!(
        of_failed.iter().filter(|s| **s == 503).count() >= 3,
        "{got:?}"
    );
    assert_eq!(
        of_failed.iter().filter(|s| **s == 200).count(),
        1,
        "the failed delivery is delivered once, with its id: {got:?}"
    );
    assert_eq!(
        *of_failed.last().unwrap(),
        200,
        "nothing after the delivery: {got:?}"
    );
    for (id, sts) in &answered {
        assert!(
            sts.iter().filter(|s| **s == 200).count() <= 1,
            "{id}: {sts:?}"
        );
    }
}

#[tokio::test]
async fn a_pending_delivery_is_sent_after_a_restart_with_the_same_delivery_id() {
    let up = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let port = receiver(up.clone(), seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), port);
    let mut r = Registry::start(&[
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
    r.enroll("m-durable", json!({})).await;

    // The node goes down; the receiver refuses a few attempts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "too few attempts:\n{}", r.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.kill9();
    let failed_id = seen.lock().unwrap()[0].0.clone();
    assert!(!failed_id.is_empty(), "no x-steward-delivery header");
    up.store(true, Ordering::SeqCst);
    r.spawn().await;

    delivered_once(&seen, &failed_id).await;
    let delivered = events(&r, "alert-delivered").await;
    assert!(
        delivered.iter().any(|m| m.contains(&failed_id)),
        "{delivered:?}"
    );
    let failed: Value = json!(events(&r, "alert-failed").await);
    assert!(failed.to_string().contains(&failed_id), "{failed}");
}

#[tokio::test]
async fn a_delivery_retried_when_the_leader_dies_is_delivered_once_by_the_next_leader() {
    let Some(etcd) = EtcdCluster::shared().await else {
        return;
    };
    let up = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let port = receiver(up.clone(), seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), port);
    let cfg = cfg.to_str().unwrap();
    let flags = ["--config", cfg, "--stale-after", "2", "--down-after", "4"];
    let mut rs = Replicas::start(&etcd, 2, &flags).await;
    rs.any().enroll("m-ha-alert", json!({})).await;

    // The node goes down (no heartbeat); the leader's attempts are refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "too few attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = rs.leader().await;
    rs.regs[leader].kill9();
    let failed_id = seen.lock().unwrap()[0].0.clone();
    assert!(!failed_id.is_empty(), "no x-steward-delivery header");
    up.store(true, Ordering::SeqCst);

    delivered_once(&seen, &failed_id).await;
    let new_leader = rs.leader().await;
    assert_ne!(new_leader, leader);
    let delivered = events(rs.any(), "alert-delivered").await;
    assert!(
        delivered.iter().any(|m| m.contains(&failed_id)),
        "{delivered:?}"
    );
}
