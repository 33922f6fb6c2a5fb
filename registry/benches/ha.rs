//! Registry high-availability benchmarks, side by side in one run: the embedded store (one
//! registry on sled) against three registry replicas on a three-member etcd cluster (loopback).
//!
//! `cargo bench -p steward-registry --bench ha [-- [write|fanout|heartbeat] [--quick]]`. Measures spec write latency,
//! long-poll fan-out (watchers spread over the replicas, one fragment write matching all),
//! heartbeat ingest per replica, and the etcd write rate while the fleet heartbeats (at two
//! fleet sizes, to show it does not grow with the node count). Results: stdout and
//! `target/bench-results/ha.json`. Timings are reported, never asserted; wrong answers fail.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code
)]

#[path = "../tests/common/etcd.rs"]
mod etcd;
#[path = "ha/measure.rs"]
mod measure;
#[path = "registry/procfs.rs"]
mod procfs;
#[path = "registry/stats.rs"]
mod stats;
#[path = "registry/util.rs"]
mod util;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};

use util::Registry;

/// A free loopback port (the etcd harness asks its parent module for one).
pub fn free_port() -> u16 {
    util::free_port().expect("a free port")
}

/// Health thresholds far away: the simulated nodes heartbeat only while measured.
const FLAGS: [&str; 6] = [
    "--stale-after",
    "360",
    "--down-after",
    "720",
    "--max-connections-per-address",
    "1000000",
];

struct Setup {
    sled: Registry,
    replicas: Vec<Registry>,
    cluster: etcd::EtcdCluster,
    _token: tempfile::NamedTempFile,
}

async fn setup() -> Result<Setup> {
    let cluster = etcd::EtcdCluster::start(3)
        .await
        .ok_or_else(|| anyhow::anyhow!("etcd is not installed (bash scripts/deps.sh)"))?;
    let token = tempfile::NamedTempFile::new()?;
    std::fs::write(token.path(), "bench-admin-token-0123456789abcdef\n")?;
    let tpath = token.path().to_string_lossy().into_owned();
    let sled = Registry::start(&FLAGS).await?;
    let url = cluster.url("/bench");
    let mut replicas = Vec::new();
    for i in 0..3 {
        let id = format!("r{i}");
        let mut flags: Vec<&str> = FLAGS.to_vec();
        flags.extend([
            "--store",
            &url,
            "--replica-id",
            &id,
            "--admin-token-file",
            &tpath,
        ]);
        replicas.push(Registry::start(&flags).await?);
    }
    Ok(Setup {
        sled,
        replicas,
        cluster,
        _token: token,
    })
}

async fn run(quick: bool, wants: impl Fn(&str) -> bool) -> Result<Value> {
    let s = setup().await?;
    let mut out = json!({"quick": quick});
    if wants("write") {
        spec_writes(&s, quick, &mut out).await?;
    }
    if wants("fanout") {
        fanout(&s, quick, &mut out).await?;
    }
    if wants("heartbeat") {
        heartbeats(&s, quick, &mut out).await?;
    }
    Ok(out)
}

async fn spec_writes(s: &Setup, quick: bool, out: &mut Value) -> Result<()> {
    let writes = if quick { 100 } else { 300 };
    println!("\n== spec write latency ({writes} sequential PUT /v1/nodes/{{id}}/spec) ==");
    let sled_w = measure::spec_writes(&s.sled, writes).await?;
    let etcd_w = measure::spec_writes(&s.replicas[0], writes).await?;
    measure::print_pair("spec write", &sled_w, &etcd_w);
    out["spec_write"] = json!({"sled": sled_w.json(), "etcd": etcd_w.json(),
        "p50_ratio_etcd_over_sled": stats::r3(etcd_w.p50 / sled_w.p50),
        "p99_ratio_etcd_over_sled": stats::r3(etcd_w.p99 / sled_w.p99)});
    Ok(())
}

async fn fanout(s: &Setup, quick: bool, out: &mut Value) -> Result<()> {
    let watchers = if quick { 200 } else { 1_000 };
    println!("\n== long-poll fan-out: {watchers} watchers, one fragment write matching all ==");
    let sled_f = measure::fanout(&[&s.sled], watchers, "sled").await?;
    let reps: Vec<&Registry> = s.replicas.iter().collect();
    let etcd_f = measure::fanout(&reps, watchers, "etcd").await?;
    measure::print_pair("wake after write", &sled_f, &etcd_f);
    out["fanout"] = json!({"watchers": watchers, "sled_one_replica": sled_f.json(),
        "etcd_three_replicas": etcd_f.json()});
    Ok(())
}

/// Heartbeat ingest on one replica, then the etcd write rate at two fleet sizes.
async fn heartbeats(s: &Setup, quick: bool, out: &mut Value) -> Result<()> {
    let reps: Vec<&Registry> = s.replicas.iter().collect();
    let fleet = if quick { 1_000 } else { 10_000 };
    println!("\n== heartbeat ingest (closed loop, 64 connections, {fleet} nodes) ==");
    let sled_nodes = measure::enroll(&s.sled, fleet, "hb").await?;
    let etcd_nodes = measure::enroll(&s.replicas[0], fleet, "hb").await?;
    let secs = if quick { 3 } else { 8 };
    let sled_h = measure::ingest(&s.sled, &sled_nodes, secs).await?;
    let etcd_h = measure::ingest(&s.replicas[0], &etcd_nodes, secs).await?;
    println!(
        "heartbeats/s: sled {sled_h:.0}, etcd replica {etcd_h:.0} (ratio {:.2})",
        etcd_h / sled_h
    );
    out["heartbeat_ingest"] = json!({"sled_per_s": stats::r3(sled_h), "etcd_replica_per_s": stats::r3(etcd_h),
        "ratio_etcd_over_sled": stats::r3(etcd_h / sled_h)});

    println!("\n== etcd writes/s while the fleet heartbeats every 10 s across 3 replicas ==");
    let dur = if quick { 10 } else { 30 };
    let small = &etcd_nodes[..fleet / 10];
    let w_small = measure::etcd_write_rate(&s.cluster, &reps, small, dur).await?;
    let w_full = measure::etcd_write_rate(&s.cluster, &reps, &etcd_nodes, dur).await?;
    println!(
        "etcd writes/s: {} nodes {w_small:.2}, {} nodes {w_full:.2} (ratio {:.2})",
        small.len(),
        etcd_nodes.len(),
        w_full / w_small.max(1e-9)
    );
    out["etcd_write_rate"] = json!({"nodes_small": small.len(), "writes_per_s_small": stats::r3(w_small),
        "nodes_full": etcd_nodes.len(), "writes_per_s_full": stats::r3(w_full), "seconds": dur});
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    // Bare words select parts: write, fanout, heartbeat (all by default).
    let filters: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    let wants =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let res = rt.block_on(run(quick, wants));
    let path = measure::results_path();
    match &res {
        Ok(v) => {
            let _ = path.parent().map(std::fs::create_dir_all);
            let _ = std::fs::write(&path, serde_json::to_string_pretty(v).unwrap_or_default());
            println!(
                "\nresults: {} (total {:.1} s)",
                path.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("benchmark error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
