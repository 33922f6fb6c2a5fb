//! Test support for registry replicas: several real `steward-registry` processes sharing one
//! real etcd cluster (same key prefix, same admin token file), real agents pointed at all of
//! them (`registry = "a,b,c"`), and the small waits and payload helpers the replica tests share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// A real agent process with its own data dir, payload root and machine id, in a private mount
/// namespace (needs root) where its own file is bound over /etc/machine-id and its own payload
/// root over the test's mount point `mp`: specs name paths under `mp` (one path for every
/// agent, as a fragment needs) and each agent's files land in its own `root`.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub root: tempfile::TempDir,
    pub id: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A binary of the workspace built next to this test's executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p steward-agent` first (cargo test --workspace does)",
        p.display()
    );
    p
}

impl Agent {
    /// Starts an agent on `registries` (comma-separated URLs) that enrols with `token`; its
    /// payload root is bound over `mp` (an existing directory) in its mount namespace.
    pub async fn start(registries: &str, token: &str, mp: &std::path::Path) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "registry = \"{registries}\"\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\n\
                 resync_interval = \"2s\"\nlong_poll_wait = \"30s\"\nbackoff_max = \"1s\"\n\
                 [policy]\npayload_roots = [\"{}\"]\n",
                dir.path().join("state").display(),
                mp.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let machine_id = dir.path().join("machine-id");
        std::fs::write(&machine_id, format!("{}\n", uuid::Uuid::new_v4().simple())).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/machine-id && mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"")
            .arg(&machine_id)
            .arg(root.path())
            .arg(mp)
            .arg(workspace_bin("steward-agent"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let idfile = dir.path().join("state/node.json");
        let id = wait_for(30, "an agent to enrol", || {
            let v: Option<Value> = std::fs::read(&idfile)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            async move { v.and_then(|v| v["node_id"].as_str().map(str::to_string)) }
        })
        .await;
        Agent {
            child: Some(child),
            dir,
            root,
            id,
        }
    }

    /// Where the agent's payload `name` lands, seen from the test (the spec names
    /// `mp/{name}.bin`).
    pub fn target(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("{name}.bin"))
    }

    /// True while the agent process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

/// Polls `f` every 200 ms until it gives a value (hang guard: `secs`).
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
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
