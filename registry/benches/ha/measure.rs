//! The measurements of the HA benchmark, each run the same way against the embedded registry
//! and against the etcd replicas.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::etcd::EtcdCluster;
use crate::stats::{r3, Lat};
use crate::util::{bearer, enroll_many, Conn, NodeCred, Registry};

pub fn results_path() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    target.join("bench-results").join("ha.json")
}

pub fn print_pair(what: &str, sled: &Lat, etcd: &Lat) {
    println!(
        "{what}: sled p50 {:.2} ms p99 {:.2} ms | etcd p50 {:.2} ms p99 {:.2} ms | ratio p50 {:.2}x p99 {:.2}x",
        sled.p50,
        sled.p99,
        etcd.p50,
        etcd.p99,
        etcd.p50 / sled.p50,
        etcd.p99 / sled.p99
    );
}

pub async fn enroll(reg: &Registry, n: usize, prefix: &str) -> Result<Vec<NodeCred>> {
    let (nodes, t) = enroll_many(reg, n, prefix, json!({}), 16).await?;
    eprintln!("enrolled {n} nodes in {:.1} s", t.as_secs_f64());
    Ok(nodes)
}

/// `n` sequential spec writes to one node, each changing its spec (a new generation).
pub async fn spec_writes(reg: &Registry, n: usize) -> Result<Lat> {
    let node = enroll(reg, 1, "writer").await?.remove(0);
    let mut c = Conn::connect(reg.addr).await?;
    let mut lats = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({"containers": [{"name": "c", "image": "busybox:1", "env": {"I": i.to_string()}}]});
        let path = format!("/v1/nodes/{}/spec", node.id);
        let t0 = Instant::now();
        let (st, v) = c.call(Method::PUT, &path, &reg.admin, Some(&body)).await?;
        lats.push(t0.elapsed());
        if st != StatusCode::OK || v["generation"].as_u64() != Some(i as u64 + 1) {
            bail!("spec write {i}: {st} {v}");
        }
    }
    Ok(Lat::of(lats))
}

/// Parks one long-poll per node, spread round-robin over `regs`, then writes one fragment
/// matching all of them through the first and measures when each watcher gets its answer.
pub async fn fanout(regs: &[&Registry], n: usize, label: &str) -> Result<Lat> {
    let reg0 = regs[0];
    let (nodes, _) =
        enroll_many(reg0, n, &format!("fan-{label}"), json!({"fan": label}), 16).await?;
    let parked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let addr = regs[i % regs.len()].addr;
        let (id, secret, parked) = (node.id.clone(), node.secret.clone(), parked.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await?;
            let path = format!("/v1/nodes/{id}/spec?after=0&wait=120s");
            let req = c.request(Method::GET, &path, Some(&bearer(&secret)?), None)?;
            let (st, body) = c.send_counted(req, Some(&parked)).await?;
            let at = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if st != StatusCode::OK || v["generation"].as_u64() != Some(1) {
                bail!("watcher {id}: {st} {v}");
            }
            Ok::<_, anyhow::Error>(at)
        }));
    }
    while parked.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let every request reach its handler and park.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = json!({"selector": format!("fan={label}"), "spec": {"containers": [{"name": "probe", "image": "busybox:1"}]}});
    let mut admin = Conn::connect(reg0.addr).await?;
    let t0 = Instant::now();
    let (st, v) = admin
        .call(Method::PUT, "/v1/fragments/fan", &reg0.admin, Some(&body))
        .await?;
    if st != StatusCode::OK {
        bail!("fragment write: {st} {v}");
    }
    eprintln!(
        "{label}: the fragment write answered after {:.1} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let mut lats = Vec::with_capacity(n);
    for t in tasks {
        let at = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .map_err(|_| anyhow!("a watcher was not woken within 120 s"))???;
        lats.push(at.saturating_duration_since(t0));
    }
    // Leave no matching fragment behind for the next run.
    admin
        .call(Method::DELETE, "/v1/fragments/fan", &reg0.admin, None)
        .await?;
    Ok(Lat::of(lats))
}

/// Closed-loop heartbeats over 64 connections for `secs`: heartbeats per second.
pub async fn ingest(reg: &Registry, nodes: &[NodeCred], secs: u64) -> Result<f64> {
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let nodes: Arc<Vec<(String, String)>> = Arc::new(
        nodes
            .iter()
            .map(|n| (n.id.clone(), n.secret.clone()))
            .collect(),
    );
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (done, stop, nodes, addr) = (done.clone(), stop.clone(), nodes.clone(), reg.addr);
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await?;
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let (id, secret) = &nodes[i % nodes.len()];
                i += 64;
                let body = Bytes::from(r#"{"observed_generation":0}"#);
                let path = format!("/v1/nodes/{id}/heartbeat");
                let req = c.request(Method::POST, &path, Some(&bearer(secret)?), Some(body))?;
                let (st, b) = c.send(req).await?;
                if st != StatusCode::OK {
                    bail!("heartbeat: {st} {}", String::from_utf8_lossy(&b));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = done.load(Ordering::SeqCst);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = done.load(Ordering::SeqCst);
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    Ok((b - a) as f64 / el)
}

/// Sum of a counter over every member's `/metrics`.
async fn etcd_counter(cluster: &EtcdCluster, name: &str) -> Result<f64> {
    let http = reqwest::Client::new();
    let mut total = 0.0;
    // The raft leader applies every write; any one member's applied count is the cluster's.
    let text = http
        .get(cluster.metrics_url(0))
        .send()
        .await?
        .text()
        .await?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(name) {
            if let Some(v) = rest.split_whitespace().last() {
                total += v.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    Ok(total)
}

/// Heartbeats every node once per 10 s, spread over the replicas, for `secs`; returns the
/// writes per second etcd applied meanwhile (`etcd_server_proposals_applied_total`).
pub async fn etcd_write_rate(
    cluster: &EtcdCluster,
    regs: &[&Registry],
    nodes: &[NodeCred],
    secs: u64,
) -> Result<f64> {
    let metric = "etcd_server_proposals_applied_total";
    let rate = nodes.len() as f64 / 10.0;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let workers = 32usize;
    for w in 0..workers {
        let stop = stop.clone();
        let mine: Vec<(String, String, std::net::SocketAddr)> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| i % workers == w)
            .map(|(i, n)| (n.id.clone(), n.secret.clone(), regs[i % regs.len()].addr))
            .collect();
        let per = rate / workers as f64;
        tasks.push(tokio::spawn(async move {
            let mut conns = std::collections::HashMap::new();
            let mut i = 0usize;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && !mine.is_empty() {
                let (id, secret, addr) = &mine[i % mine.len()];
                i += 1;
                if !conns.contains_key(addr) {
                    conns.insert(*addr, Conn::connect(*addr).await?);
                }
                let c = conns.get_mut(addr).unwrap();
                let body = Bytes::from(r#"{"observed_generation":0}"#);
                let req = c.request(
                    Method::POST,
                    &format!("/v1/nodes/{id}/heartbeat"),
                    Some(&bearer(secret)?),
                    Some(body),
                )?;
                let (st, _) = c.send(req).await?;
                if st != StatusCode::OK {
                    bail!("heartbeat: {st}");
                }
                let due = start + Duration::from_secs_f64(i as f64 / per);
                tokio::time::sleep_until(due.into()).await;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = etcd_counter(cluster, metric).await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = etcd_counter(cluster, metric).await?;
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    let per_s = (b - a) / el;
    eprintln!(
        "{} nodes at {rate:.0} heartbeats/s: {:.0} etcd proposals in {el:.1} s",
        nodes.len(),
        b - a
    );
    Ok(r3(per_s))
}
