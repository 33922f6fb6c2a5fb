//! The seeded fleet: N enrolled nodes, each with one realistic full status (~10 resources, two
//! payloads, 4-8 KB of JSON), cached under `/tmp/steward-scale-seed-<N>/` (the registry's data
//! dir after a clean stop, and the nodes' credentials) and copied for every run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper::body::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use steward_proto::{NodeStatus, PayloadAttestation, ResourceKind, ResourceState, ResourceStatus};

use crate::procfs::Snap;
use crate::util::{bearer, enroll_many, free_port, registry_bin, Conn, NodeCred, Registry};

/// The digest of every seeded status; heartbeats echo it.
pub const DIGEST: &str = "seed-1";
/// The label every seeded node carries (a fragment selecting it matches the whole fleet).
pub const LABEL: (&str, &str) = ("fleet", "scale");

/// Health thresholds far away while seeding: no node changes health meanwhile.
const SEED_FLAGS: [&str; 8] = [
    "--stale-after",
    "360",
    "--down-after",
    "720",
    "--max-connections-per-address",
    "1000000",
    "--max-connections",
    "10000",
];

pub struct Seed {
    pub root: PathBuf,
    pub nodes: Vec<NodeCred>,
    /// Set when seeded in this run (else the cache's figures, if recorded).
    pub stats: Value,
}

impl Seed {
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
}

/// A realistic full status of node `i` (resources with states, errors and details, payloads).
pub fn status(i: usize, digest: &str) -> NodeStatus {
    let host = format!("scale-{i:06}");
    let res = |kind, name: &str, state, error: Option<String>, detail: Option<String>| {
        let mut r = ResourceStatus::new(kind, name, state, error);
        r.restarts = (i % 5) as u32;
        r.detail = detail;
        r
    };
    let failing = i % 40 == 0;
    let c = ResourceKind::Container;
    let mut resources = Vec::new();
    for (k, name) in [
        "web",
        "api",
        "worker",
        "cache",
        "metrics-exporter",
        "log-shipper",
    ]
    .iter()
    .enumerate()
    {
        let bad = failing && k == 2;
        let state = if bad {
            ResourceState::Failed
        } else {
            ResourceState::Converged
        };
        let error = bad.then(|| {
            format!(
                "container {name} on {host} exited with status 137 after 3 restarts: OOM killed \
                 (memory limit 512 MiB); last log lines: panic: runtime error: index out of range \
                 [3] with length 3 goroutine 1 [running]: main.main() /src/main.go:42 +0x1d"
            )
        });
        let detail = Some(format!(
            "image registry.example.com/platform/{name}@sha256:{:064x}; started 2026-11-30T08:{:02}:00Z; \
             ports 0.0.0.0:{}->8080/tcp; health healthy (http GET /healthz every 10s); \
             mounts /srv/{name}/data:/data:rw,/etc/{name}:/etc/{name}:ro; env 14 variables; \
             cgroup /system.slice/docker-{:064x}.scope",
            i * 7 + k,
            k * 7 % 60,
            8000 + k,
            i * 11 + k
        ));
        resources.push(res(c, name, state, error, detail));
    }
    resources.push(res(
        ResourceKind::Vm,
        "builder-vm",
        ResourceState::Converged,
        None,
        Some(format!(
            "kvm, 4 vCPU, 8192 MiB, disk /var/lib/steward/vms/builder-vm.qcow2 (40 GiB, {} GiB used), \
             QMP query-status running, mac 52:54:00:{:02x}:{:02x}:01",
            i % 40,
            i % 256,
            (i / 256) % 256
        )),
    ));
    resources.push(res(
        ResourceKind::Network,
        "br-steward",
        ResourceState::Converged,
        None,
        Some(format!(
            "bridge br-steward mtu 1500, 10.{}.{}.1/24, ports veth-web veth-api veth-worker",
            i % 200,
            (i / 200) % 250
        )),
    ));
    let mut payloads = Vec::new();
    for (name, version) in [("toolchain", "1.4.2"), ("ca-bundle", "2026.11")] {
        let expected = format!("{:064x}", i * 31 + name.len());
        resources.push(res(
            ResourceKind::Payload,
            name,
            ResourceState::Converged,
            None,
            Some(format!(
                "/opt/steward/payloads/{name}/{version}/{name}.tar.zst"
            )),
        ));
        payloads.push(PayloadAttestation {
            name: name.into(),
            version: version.into(),
            path: format!("/opt/steward/payloads/{name}/{version}/{name}.tar.zst"),
            actual: Some(expected.clone()),
            expected,
        });
    }
    NodeStatus {
        observed_generation: 0,
        resources,
        payloads,
        ports_in_use: Vec::new(),
        digest: digest.into(),
    }
}

fn load_cache(root: &Path) -> Result<Vec<NodeCred>> {
    let text = std::fs::read_to_string(root.join("nodes.tsv"))?;
    text.lines()
        .map(|l| {
            let (id, secret) = l
                .split_once('\t')
                .ok_or_else(|| anyhow!("bad line in nodes.tsv: {l}"))?;
            Ok(NodeCred {
                id: id.into(),
                secret: secret.into(),
            })
        })
        .collect()
}

/// The cached seed of `n` nodes, seeded first when missing (or when `reseed`).
pub async fn ensure(n: usize, reseed: bool) -> Result<Seed> {
    let root = PathBuf::from(format!("/tmp/steward-scale-seed-{n}"));
    if !reseed && root.join("complete").exists() {
        let nodes = load_cache(&root)?;
        if nodes.len() == n {
            let stats = std::fs::read_to_string(root.join("seed.json"))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(Value::Null);
            eprintln!("seed: using the cache {} ({n} nodes)", root.display());
            return Ok(Seed {
                root,
                nodes,
                stats: json!({"cached": true, "when_seeded": stats}),
            });
        }
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    let (nodes, mut stats) = seed(&root, n).await?;
    let tsv: String = nodes
        .iter()
        .map(|c| format!("{}\t{}\n", c.id, c.secret))
        .collect();
    std::fs::write(root.join("nodes.tsv"), tsv)?;
    std::fs::write(
        root.join("seed.json"),
        serde_json::to_string_pretty(&stats)?,
    )?;
    std::fs::write(root.join("complete"), "")?;
    stats["cached"] = json!(false);
    Ok(Seed { root, nodes, stats })
}

/// Enrols `n` nodes and sends each one full status, then stops the registry cleanly.
async fn seed(root: &Path, n: usize) -> Result<(Vec<NodeCred>, Value)> {
    let addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let (data, log) = (root.join("data"), root.join("seed-registry.log"));
    let mut reg = Registry::start_on(&data, &log, addr, &SEED_FLAGS, Duration::from_secs(60))
        .await
        .context("starting the registry to seed")?;
    let started = Instant::now();
    eprintln!("seed: enrolling {n} nodes ...");
    let labels = json!({ LABEL.0: LABEL.1 });
    let (nodes, enrol) = enroll_many(&reg, n, "scale", labels, 16).await?;
    eprintln!(
        "seed: enrolled in {:.1} s; sending statuses ...",
        enrol.as_secs_f64()
    );
    let t = Instant::now();
    let sizes = put_statuses(&reg, &nodes, 16).await?;
    let statuses = t.elapsed();
    let rss = Snap::take(reg.pid()).rss_kib;
    reg.guard
        .terminate(Duration::from_secs(120))
        .context("stopping the seeding registry")?;
    let total = started.elapsed();
    eprintln!(
        "seed: statuses in {:.1} s; seeded {n} nodes in {:.1} s",
        statuses.as_secs_f64(),
        total.as_secs_f64()
    );
    let stats = json!({
        "nodes": n, "registry": registry_bin().display().to_string(),
        "enrol_seconds": crate::stats::r3(enrol.as_secs_f64()),
        "status_seconds": crate::stats::r3(statuses.as_secs_f64()),
        "total_seconds": crate::stats::r3(total.as_secs_f64()),
        "status_bytes_min": sizes.0, "status_bytes_max": sizes.1,
        "registry_rss_kib_after_seeding": rss,
        "data_dir_bytes": crate::procfs::dir_bytes(&data),
    });
    Ok((nodes, stats))
}

/// `PUT /v1/nodes/{id}/status` once per node over `parallel` connections; returns the
/// smallest and largest body sent.
async fn put_statuses(
    reg: &Registry,
    nodes: &[NodeCred],
    parallel: usize,
) -> Result<(usize, usize)> {
    let nodes = Arc::new(nodes.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (nodes, next, addr) = (nodes.clone(), next.clone(), reg.addr);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let (mut lo, mut hi) = (usize::MAX, 0);
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(node) = nodes.get(i) else {
                    return Ok::<_, anyhow::Error>((lo, hi));
                };
                let body = serde_json::to_vec(&status(i, DIGEST))?;
                (lo, hi) = (lo.min(body.len()), hi.max(body.len()));
                let path = format!("/v1/nodes/{}/status", node.id);
                let auth = bearer(&node.secret)?;
                let body = Bytes::from(body);
                // A busy store (503) is retried, as an agent would.
                for attempt in 0.. {
                    let req = conn.request(Method::PUT, &path, Some(&auth), Some(body.clone()))?;
                    let (st, b) = conn.send(req).await?;
                    if st.is_success() {
                        break;
                    }
                    if st != hyper::StatusCode::SERVICE_UNAVAILABLE || attempt == 50 {
                        bail!("PUT {path}: {st} {}", String::from_utf8_lossy(&b));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if i % 10_000 == 9_999 {
                    eprintln!("seed: {} statuses", i + 1);
                }
            }
        }));
    }
    let (mut lo, mut hi) = (usize::MAX, 0);
    for t in tasks {
        let (l, h) = t.await??;
        (lo, hi) = (lo.min(l), hi.max(h));
    }
    Ok((lo, hi))
}

/// Copies the seeded data dir to `to` (`cp -a`, sparse-aware).
pub fn copy_data(seed: &Seed, to: &Path) -> Result<Duration> {
    let t = Instant::now();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(seed.data())
        .arg(to)
        .status()?;
    if !st.success() {
        bail!("cp -a {} {}: {st}", seed.data().display(), to.display());
    }
    Ok(t.elapsed())
}
