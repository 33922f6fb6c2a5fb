//! Session creates per second on the real registry binary (embedded store) with quotas,
//! placement and allocation, side by side in one run with what a user's own session manager
//! would do instead: write each session's containers into a node's spec by hand
//! (`PUT /v1/nodes/{id}/spec`), and the session ends.
//!
//! `cargo bench -p steward-registry --bench sessions [-- --quick]`. Rates are only reported; a
//! request that does not succeed fails the run.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CONCURRENCY: usize = 16;

struct Registry {
    child: Child,
    url: String,
    admin: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        "[sessions]\nmax_live = 1000000\nports = \"10000-60000\"\nvlans = \"2-4000\"\nlab_cidr = \"10.{vlan_hi}.{vlan_lo}.0/24\"\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_steward-registry"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--heartbeat-interval",
            "60s",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if client.get(format!("{url}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    Registry {
        child,
        url,
        admin: admin.trim().to_string(),
        client,
        _dir: dir,
    }
}

impl Registry {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rb = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let st = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(st.is_success(), "{path}: {st} {v}");
        v
    }

    async fn node(&self, machine: &str) -> String {
        let tok = self
            .send(
                reqwest::Method::POST,
                "/v1/enrollment-tokens",
                Some(json!({})),
            )
            .await;
        let facts = json!({"machine_id": machine, "hostname": machine, "cpus": 64, "memory_bytes": 1u64 << 40});
        let en = self
            .send(
                reqwest::Method::POST,
                "/v1/enroll",
                Some(json!({"token": tok["token"], "facts": facts})),
            )
            .await;
        en["node_id"].as_str().unwrap().to_string()
    }
}

/// Runs `n` calls of `f(i)` with [`CONCURRENCY`] in flight; returns calls per second.
async fn rate<F, Fut>(n: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (f, next) = (f.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    f(i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let n = if quick { 500 } else { 2_000 };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("session benchmarks: {n} creates, {CONCURRENCY} in flight, {cpus} CPU(s) shared with the load generator; embedded store");
    let r = Arc::new(start().await);
    let mut nodes = Vec::new();
    for i in 0..8 {
        nodes.push(r.node(&format!("bench-{i}")).await);
    }
    let template = json!({"ports": ["http"], "volumes": ["data"], "lab": true,
        "reserve": {"cpus": 0.01, "memory": "16Mi"}, "per_owner": 1000000,
        "spec": {"containers": [{"name": "web-{{session}}", "image": "nginx",
            "ports": ["{{port.http}}:80"], "volumes": ["{{volume.data}}:/data"],
            "env": {"OWNER": "{{owner}}"}}]}});
    r.send(reqwest::Method::PUT, "/v1/templates/conf", Some(template))
        .await;
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (rc, idc) = (r.clone(), ids.clone());
    let creates = rate(n, move |i| {
        let (r, ids) = (rc.clone(), idc.clone());
        async move {
            let s = r
                .send(
                    reqwest::Method::POST,
                    "/v1/sessions",
                    Some(json!({"template": "conf", "owner": format!("o{}", i % 150)})),
                )
                .await;
            ids.lock()
                .unwrap()
                .push(s["id"].as_str().unwrap().to_string());
        }
    })
    .await;
    let nodes = Arc::new(nodes);
    let (rc, nc) = (r.clone(), nodes.clone());
    let by_hand = rate(n, move |i| {
        let (r, nodes) = (rc.clone(), nc.clone());
        async move {
            let spec = json!({"containers": [{"name": format!("web-{i}"), "image": "nginx",
                "ports": [format!("{}:80", 1000 + i)], "volumes": [format!("v{i}:/data")],
                "env": {"OWNER": format!("o{}", i % 150)}}]});
            r.send(
                reqwest::Method::PUT,
                &format!("/v1/nodes/{}/spec", nodes[i % nodes.len()]),
                Some(spec),
            )
            .await;
        }
    })
    .await;
    let all: Arc<Vec<String>> = Arc::new(ids.lock().unwrap().clone());
    let (rc, ac) = (r.clone(), all.clone());
    let ends = rate(all.len(), move |i| {
        let (r, all) = (rc.clone(), ac.clone());
        async move {
            r.send(
                reqwest::Method::DELETE,
                &format!("/v1/sessions/{}", all[i]),
                None,
            )
            .await;
        }
    })
    .await;
    println!("{:<58} {:>10}", "what", "per second");
    println!(
        "{:<58} {:>10.0}",
        "session create (quotas, placement, ports, VLAN, volume)", creates
    );
    println!(
        "{:<58} {:>10.0}",
        "node spec write by hand (PUT /v1/nodes/{id}/spec)", by_hand
    );
    println!("{:<58} {:>10.0}", "session end", ends);
    println!(
        "create / spec write by hand: {:.2}x the rate",
        creates / by_hand
    );
}
