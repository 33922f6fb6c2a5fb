//! Test support: real `steward-agent` processes (each with its own data dir, payload root and
//! machine id in a private mount namespace), polling waits and test content.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A real agent process with its own data dir, payload root and machine id, in a private mount
/// namespace (needs root) where its own file is bound over /etc/machine-id. With a mount point
/// `mp`, its payload root is bound over `mp` too: specs name paths under `mp` (one path for
/// every agent, as a fragment needs) and each agent's files land in its own `root`; without,
/// specs name paths under `root` itself.
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
    /// payload root is bound over `mp` (an existing directory) in its mount namespace if given.
    /// Its workloads' activity is read at most once an hour (see [`Agent::start_with`]).
    pub async fn start(registries: &str, token: &str, mp: Option<&Path>) -> Agent {
        Self::start_with(registries, token, mp, "1h").await
    }

    /// As [`Agent::start`], its workloads' activity read at most every `activity_interval`
    /// (the agent's `activity_interval`, e.g. `"1s"`).
    pub async fn start_with(
        registries: &str,
        token: &str,
        mp: Option<&Path>,
        activity_interval: &str,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let allowed = mp.unwrap_or(root.path());
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "registry = \"{registries}\"\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\n\
                 resync_interval = \"2s\"\nactivity_interval = \"{activity_interval}\"\nlong_poll_wait = \"30s\"\nbackoff_max = \"1s\"\n\
                 [policy]\npayload_roots = [\"{}\"]\n",
                dir.path().join("state").display(),
                allowed.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let machine_id = dir.path().join("machine-id");
        std::fs::write(&machine_id, format!("{}\n", uuid::Uuid::new_v4().simple())).unwrap();
        // Its own payload root over `mp` (or over itself: nothing changes).
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/machine-id && mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"")
            .arg(&machine_id)
            .arg(root.path())
            .arg(allowed)
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
    /// `mp/{name}.bin`, or this path itself without `mp`).
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
