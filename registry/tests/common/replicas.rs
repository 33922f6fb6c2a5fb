//! Test support for registry replicas: several real `steward-registry` processes sharing one
//! real etcd cluster (same key prefix, same admin token file), real agents pointed at all of
//! them (`registry = "a,b,c"`), a spec writer that goes through the replicas in turn, and the
//! small waits and payload helpers the replica tests share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::agent::{wait_for, Agent};
use super::etcd::EtcdCluster;
use super::Registry;

/// N registry replicas on one etcd cluster; replica `i` is named `r{i}`.
pub struct Replicas {
    pub regs: Vec<Registry>,
    pub admin: String,
    /// Holds the shared admin token file.
    _dir: tempfile::TempDir,
}

impl Replicas {
    /// Starts `n` replicas on `etcd` under a fresh key prefix, with 1 s heartbeats and a 3 s
    /// lease; `extra` are more `serve` flags for every replica.
    pub async fn start(etcd: &EtcdCluster, n: usize, extra: &[&str]) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let admin = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{admin}\n")).unwrap();
        let prefix = format!("/t{}", uuid::Uuid::new_v4().simple());
        let store = etcd.url("");
        let mut regs = Vec::new();
        for i in 0..n {
            let id = format!("r{i}");
            let mut flags: Vec<&str> = vec![
                "--store",
                &store,
                "--etcd-prefix",
                &prefix,
                "--replica-id",
                &id,
                "--admin-token-file",
                token_file.to_str().unwrap(),
                "--heartbeat-interval",
                "1s",
                "--etcd-lease-ttl",
                "3s",
            ];
            flags.extend_from_slice(extra);
            let mut r = Registry::start(&flags).await;
            r.admin = admin.clone();
            regs.push(r);
        }
        Replicas {
            regs,
            admin,
            _dir: dir,
        }
    }

    /// Every replica's base URL, comma-separated (what agents and stewardctl take).
    pub fn urls(&self) -> String {
        self.regs
            .iter()
            .map(|r| r.url(""))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// True while replica `i`'s process runs.
    pub fn alive(&self, i: usize) -> bool {
        self.regs[i].child.is_some()
    }

    /// A running replica (the first one).
    pub fn any(&self) -> &Registry {
        self.regs
            .iter()
            .find(|r| r.child.is_some())
            .expect("no replica runs")
    }

    /// The running replica that holds the jobs leadership now, from the logs: since it last
    /// started, it logged "leading:" more often than "leadership lost" (waits for one, hang
    /// guard 60 s).
    pub async fn leader(&self) -> usize {
        wait_for(60, "a replica to lead the jobs", || {
            let found = (0..self.regs.len()).find(|&i| {
                let whole = self.regs[i].log();
                let log = whole
                    .rsplit("starting steward-registry")
                    .next()
                    .unwrap_or("");
                self.alive(i)
                    && log.matches("leading:").count() > log.matches("leadership lost").count()
            });
            async move { found }
        })
        .await
    }
}

/// Hex sha256 of `b`.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Uploads payload `name` at `version` through `r`; returns its sha256.
pub async fn upload(r: &Registry, name: &str, version: &str, body: Vec<u8>) -> String {
    let resp = r
        .client
        .put(r.url(&format!("/v1/payloads/{name}/{version}")))
        .bearer_auth(&r.admin)
        .body(body)
        .send()
        .await
        .unwrap();
    let st = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(st, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["sha256"].as_str().unwrap().to_string()
}

/// Every event in `r`'s log, oldest first (paged).
pub async fn all_events(r: &Registry) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let (st, page) = r
            .get(&format!("/v1/events?after={after}&limit=1000"), &r.admin)
            .await;
        assert_eq!(st, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        after = last["seq"].as_u64().unwrap();
        out.extend(page);
    }
    out
}

/// Asserts that the event sequence numbers are consecutive (no gap, no repeat).
pub fn assert_gap_free(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "event seqs not gap-free around {w:?}");
    }
}

/// Downloads blob `sha` from `r` (admin) and returns its bytes.
pub async fn download(r: &Registry, sha: &str) -> (u16, Vec<u8>) {
    let resp = r
        .client
        .get(r.url(&format!("/v1/blobs/{sha}")))
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.bytes().await.unwrap().to_vec())
}

/// A node's payload spec: `tc` at `version` in `file` under the agents' mount point.
pub fn tc_spec(mp: &Path, version: &str, file: &str) -> Value {
    json!({"payloads": [{"name": "tc", "version": version, "path": mp.join(file)}]})
}

/// The fragment every agent gets: `fr` at `version` in `file`.
pub fn fr_fragment(mp: &Path, version: &str, file: &str) -> Value {
    json!({"selector": "role=w",
           "spec": {"payloads": [{"name": "fr", "version": version, "path": mp.join(file)}]}})
}

/// What the writer sends, in turn through each replica: node specs and, every fourth write, the
/// fragment, each with a path of its own (so every write changes the spec: an unchanged spec
/// keeps its generation) and versions 1 and 2 in turn.
pub struct Writer {
    pub client: reqwest::Client,
    pub urls: Vec<String>,
    pub admin: String,
    pub nodes: Vec<String>,
    pub mp: PathBuf,
}

/// An acknowledged write: (node, generation) in the order acknowledged.
pub type Acks = Arc<Mutex<Vec<(String, u64)>>>;

impl Writer {
    /// A writer of `agents`' specs (payload paths under `mp`) through every replica of `rs`.
    pub fn new(rs: &Replicas, agents: &[Agent], mp: &Path) -> Writer {
        Writer {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            urls: rs.regs.iter().map(|r| r.url("")).collect(),
            admin: rs.admin.clone(),
            nodes: agents.iter().map(|a| a.id.clone()).collect(),
            mp: mp.to_path_buf(),
        }
    }

    /// Write number `i`; `Ok` with the (node, generation) pairs it acknowledged.
    pub async fn write(&self, i: usize) -> Result<Vec<(String, u64)>, String> {
        let url = &self.urls[i % self.urls.len()];
        let version = if (i / 4) % 2 == 0 { "1" } else { "2" };
        let (path, body) = if i % 4 == 3 {
            let spec = fr_fragment(&self.mp, version, &format!("fr-{i}.bin"));
            ("/v1/fragments/fr".to_string(), spec)
        } else {
            let node = &self.nodes[i % self.nodes.len()];
            let spec = tc_spec(&self.mp, version, &format!("tc-{i}.bin"));
            (format!("/v1/nodes/{node}/spec"), spec)
        };
        let resp = self
            .client
            .put(format!("{url}{path}"))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let st = resp.status();
        let v: Value = resp.json().await.map_err(|e| format!("{url}: {e}"))?;
        if !st.is_success() {
            return Err(format!("{url}{path}: {st} {v}"));
        }
        let pair = |w: &Value| {
            (
                w["node_id"].as_str().unwrap().to_string(),
                w["generation"].as_u64().unwrap(),
            )
        };
        Ok(match v["affected"].as_array() {
            Some(affected) => affected.iter().map(pair).collect(),
            None => vec![pair(&v)],
        })
    }

    /// Writes until `stop`, recording every acknowledged write in `acks`.
    pub async fn run(self, acks: Acks, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
        let mut failed = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            match self.write(i).await {
                Ok(w) => acks.lock().unwrap().extend(w),
                Err(e) => failed.push(e),
            }
            i += 1;
        }
        (i, failed)
    }
}

/// Waits until `more` writes beyond those acknowledged now are acknowledged.
pub async fn acked_more(acks: &Acks, more: usize, what: &str) {
    let target = acks.lock().unwrap().len() + more;
    wait_for(60, what, || async {
        (acks.lock().unwrap().len() >= target).then_some(())
    })
    .await;
}

/// Starts `n` agents on every replica (token with label role=w), sorted by node id.
pub async fn start_agents(rs: &Replicas, n: usize, mp: &Path) -> Vec<Agent> {
    let r = rs.any();
    let (st, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": n, "labels": {"role": "w"}})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    let token = tok["token"].as_str().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Agent::start(&rs.urls(), token, Some(mp)).await);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Waits until node `a` reports its current generation applied and its payload files hold
/// `want` (name -> bytes); asserts it is ready.
pub async fn converged(r: &Registry, a: &Agent, want: &[(&str, &[u8])]) {
    let node = wait_for(120, &format!("node {} to converge", a.id), || async {
        let (st, n) = r.get(&format!("/v1/nodes/{}", a.id), &r.admin).await;
        let files_ok = want
            .iter()
            .all(|(name, bytes)| std::fs::read(a.target(name)).is_ok_and(|g| g == *bytes));
        (st == 200 && files_ok && n["generation"] == n["observed_generation"]).then_some(n)
    })
    .await;
    assert_eq!(node["health"], "ready", "{node}\n{}", a.log());
}

/// The node secret an agent stored.
pub fn node_secret(a: &Agent) -> String {
    let v: Value =
        serde_json::from_slice(&std::fs::read(a.dir.path().join("state/node.json")).unwrap())
            .unwrap();
    v["node_secret"].as_str().unwrap().to_string()
}
