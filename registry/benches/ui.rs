//! Status page benchmark: how long the registry takes to answer the first view of the status
//! page (`GET /`, 100 rows of 5,000), a later page sorted by heartbeat, a filtered view, a
//! node page and `/metrics`, for a fleet of 5,000 nodes with statuses (some drifted, some
//! failing, some stale), in process on the real router and store.
//!
//! `cargo bench -p steward-registry --bench ui [-- --nodes N] [--quick]`. Timings are printed,
//! never asserted; a non-200 answer or a page without its rows fails the run.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use http_body_util::BodyExt;
use steward_proto::{
    Health, HostStats, NodeFacts, NodeKind, NodeStatus, PayloadAttestation, ResourceKind,
    ResourceState, ResourceStatus,
};
use steward_registry::state::{AppState, Settings};
use steward_registry::store::{NodeRecord, Store};
use tower::ServiceExt;

const ADMIN: &str = "bench-admin-token-0123456789";

fn record(i: usize) -> NodeRecord {
    let res = |kind, name: &str, state| {
        let error =
            (state == ResourceState::Failed).then(|| "pull failed: manifest unknown".into());
        let mut r = ResourceStatus::new(kind, name, state, error);
        r.restarts = (i % 4) as u32;
        r
    };
    let failing = i % 50 == 0;
    let drifted = i % 70 == 0;
    let expected = format!("{:064x}", i);
    NodeRecord {
        id: format!("{:08x}-0000-4000-8000-{:012x}", i, i),
        labels: [
            (
                "role".to_string(),
                ["web", "db", "build", "edge"][i % 4].to_string(),
            ),
            ("rack".to_string(), format!("r{}", i % 40)),
        ]
        .into(),
        facts: NodeFacts {
            machine_id: format!("machine-{i}"),
            hostname: format!("host-{i:05}"),
            kind: [NodeKind::BareMetal, NodeKind::Vm, NodeKind::Container][i % 3],
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0-18-amd64".into(),
            arch: "x86_64".into(),
            cpus: 8,
            memory_bytes: 32 << 30,
            agent_version: "0.1.0".into(),
            ..Default::default()
        },
        health: if i % 97 == 0 {
            Health::Stale
        } else {
            Health::Ready
        },
        enrolled_at: Utc::now(),
        last_heartbeat: Some(Utc::now()),
        heartbeat_rtt_ms: Some(1.0 + (i % 13) as f64 / 10.0),
        stats: Some(HostStats {
            cpu_percent: 12.5,
            memory_used_bytes: 4 << 30,
            memory_total_bytes: 32 << 30,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            observed_generation: 3,
            resources: vec![
                res(ResourceKind::Container, "web", ResourceState::Converged),
                res(ResourceKind::Container, "sidecar", ResourceState::Converged),
                res(
                    ResourceKind::Container,
                    "worker",
                    if failing {
                        ResourceState::Failed
                    } else {
                        ResourceState::Converged
                    },
                ),
                res(ResourceKind::Payload, "toolchain", ResourceState::Converged),
            ],
            payloads: vec![PayloadAttestation {
                name: "toolchain".into(),
                version: "1.4.2".into(),
                path: "/opt/toolchain/gcc.tar.zst".into(),
                actual: Some(if drifted {
                    "0".repeat(64)
                } else {
                    expected.clone()
                }),
                expected,
            }],
            ports_in_use: Vec::new(),
            digest: format!("d{i}"),
        }),
        observed_generation: 3,
        secret_sha256: None,
    }
}

async fn get(state: &AppState, uri: &str) -> (Duration, usize) {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let started = Instant::now();
    let resp = steward_registry::api::router(state.clone(), 1 << 20)
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "{uri}: {}",
        String::from_utf8_lossy(&body)
    );
    (took, body.len())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let nodes: usize = args
        .iter()
        .position(|a| a == "--nodes")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000);
    let runs = if quick { 3 } else { 15 };

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let started = Instant::now();
    for i in 0..nodes {
        store.put_node(&record(i)).await.unwrap();
    }
    let state = AppState::new(Settings::default(), store, dir.path(), ADMIN, None)
        .await
        .unwrap();
    steward_registry::replica::follow_store(&state, state.loaded_at + 1)
        .await
        .unwrap();
    println!(
        "status page bench: {nodes} nodes stored in {} ms; {runs} runs per view (in process, real router and store)",
        ms(started.elapsed())
    );
    let some = record(nodes / 2).id;
    let views = [
        ("first view  GET /", "/".to_string()),
        (
            "page 30 by heartbeat",
            "/?sort=heartbeat&dir=desc&page=30".to_string(),
        ),
        (
            "filtered role=db,flag=failed",
            "/?selector=role%3Ddb&flag=failed".to_string(),
        ),
        ("node page", format!("/nodes/{some}")),
        ("/metrics", "/metrics".to_string()),
    ];
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>10}",
        "view", "first ms", "median ms", "max ms", "bytes"
    );
    for (name, uri) in views {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..runs {
            let (t, b) = get(&state, &uri).await;
            times.push(t);
            bytes = b;
        }
        let first = times[0];
        times.sort();
        println!(
            "{name:<32} {:>9} {:>9} {:>9} {bytes:>10}",
            ms(first),
            ms(times[times.len() / 2]),
            ms(*times.last().unwrap())
        );
    }
    // The first view holds exactly one page of rows.
    let req = Request::builder()
        .uri("/")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let resp = steward_registry::api::router(state.clone(), 1 << 20)
        .oneshot(req)
        .await
        .unwrap();
    let html = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let rows = html.matches("<tr id=\"node-").count();
    assert_eq!(rows, nodes.min(100), "rows on the first page");
}
