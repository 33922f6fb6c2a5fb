//! Test support for the agent's end-to-end tests: the real registry binary, the real agent
//! binary, the real Docker engine (through its CLI, to observe independently of the agent).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod docker;
pub mod guest;
pub mod isolation;
pub mod netns;
pub mod payload;
pub mod udp;
pub mod vm;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const IMAGE: &str = "steward-test/busybox:1";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Path of a binary of the workspace built next to this test's own executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p steward-registry` first (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Polls `f` every 100 ms until it returns Some, or panics after `secs` with `what`.
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Registry {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub http: reqwest::Client,
    /// Extra `serve` arguments.
    pub extra: Vec<String>,
}

impl Registry {
    pub async fn start() -> Registry {
        Self::start_with(&[]).await
    }

    /// Starts a registry with extra `serve` arguments.
    pub async fn start_with(extra: &[&str]) -> Registry {
        let mut r = Registry {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            admin: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        r.spawn().await;
        r
    }

    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        self.child = Some(
            Command::new(workspace_bin("steward-registry"))
                .args(["serve", "--heartbeat-interval", "1s", "--listen"])
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--data-dir")
                .arg(self.dir.path().join("data"))
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let url = self.url("/healthz");
        let http = self.http.clone();
        wait_for(30, "the registry to answer", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        self.admin = std::fs::read_to_string(self.dir.path().join("data/admin.token"))
            .unwrap()
            .trim()
            .to_string();
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    pub async fn token(&self) -> String {
        let v: Value = self
            .http
            .post(self.url("/v1/enrollment-tokens"))
            .bearer_auth(&self.admin)
            .json(&json!({"uses": 5}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    pub async fn put_spec(&self, node: &str, yaml: &str) -> u64 {
        let resp = self
            .http
            .put(self.url(&format!("/v1/nodes/{node}/spec")))
            .bearer_auth(&self.admin)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap();
        let st = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(st.is_success(), "spec refused: {v}");
        v["generation"].as_u64().unwrap()
    }

    pub async fn node(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/nodes/{id}")).await
    }

    /// `GET path` as the admin, the body as JSON (`Null` when it is not JSON).
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// Waits until the node reports `generation` applied; returns its resources by name.
    pub async fn wait_observed(&self, id: &str, generation: u64) -> Vec<Value> {
        wait_for(
            60,
            &format!("node to report generation {generation}"),
            || async move {
                let n = self.node(id).await;
                let st = &n["status"];
                (st["observed_generation"].as_u64() == Some(generation))
                    .then(|| st["resources"].as_array().cloned().unwrap_or_default())
            },
        )
        .await
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub node_id: String,
}

impl Agent {
    /// Writes a config for `registry` with `token` and `policy` (TOML lines), starts the agent
    /// and waits until it has enrolled. Workloads' activity is read once and then held for an
    /// hour: bytes the kernel floods to every port of a bridge (router solicitations, ARP)
    /// would otherwise move a steady node's status every 30 s (`tests/activity.rs` covers
    /// activity).
    pub async fn start(registry: &Registry, policy: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        let token = registry.token().await;
        std::fs::write(
            &config,
            format!(
                "registry = \"{}\"\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\nresync_interval = \"2s\"\nactivity_interval = \"1h\"\nlong_poll_wait = \"30s\"\nbackoff_max = \"1s\"\n[policy]\n{policy}\n",
                registry.base(),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let mut a = Agent {
            child: None,
            dir,
            config,
            node_id: String::new(),
        };
        a.spawn();
        let idfile = a.dir.path().join("state/node.json");
        let node: Value = wait_for(30, "the agent to enrol", || {
            let idfile = idfile.clone();
            async move {
                std::fs::read(&idfile)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            }
        })
        .await;
        a.node_id = node["node_id"].as_str().unwrap().to_string();
        a
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_steward-agent"))
                .arg("--config")
                .arg(&self.config)
                .arg("run")
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // Remove what this node created, so tests leave the engine clean.
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.steward.node={}", self.node_id))
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// A container as `docker inspect` shows it (independent of the agent's driver).
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub env: Vec<String>,
    pub labels: serde_json::Map<String, Value>,
}

/// Every container (running or not) carrying `label`.
pub fn containers_with(label: &str) -> Vec<Seen> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label={label}"))
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ids.iter().filter_map(|id| inspect(id)).collect()
}

pub fn inspect(name_or_id: &str) -> Option<Seen> {
    let out = Command::new("docker")
        .args(["inspect", name_or_id])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let c = &v[0];
    Some(Seen {
        id: c["Id"].as_str()?.to_string(),
        name: c["Name"].as_str()?.trim_start_matches('/').to_string(),
        running: c["State"]["Running"].as_bool().unwrap_or(false),
        env: c["Config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        labels: c["Config"]["Labels"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
    })
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A short random suffix for names, so parallel tests never collide.
pub fn suffix() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xffffff)
}

/// True when a Docker engine answers and the test image exists (built if needed). Without an
/// engine: in CI (`CI` set) the test fails; elsewhere it is skipped with a loud message.
pub fn engine_ready() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!(
                "no Docker engine answers `docker info`: .ci/run must install and start dockerd"
            );
        }
        eprintln!("SKIPPED: no Docker engine (start dockerd); this test FAILS in CI");
        return false;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-image.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(IMAGE)
        .status()
        .unwrap();
    assert!(st.success(), "building the test image failed");
    true
}

/// Alerts received so far by [`webhook_receiver`], as JSON bodies.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// An HTTP server on loopback recording every JSON body POSTed to `/hook`; returns its port.
pub async fn webhook_receiver() -> (u16, Received) {
    let seen: Received = Default::default();
    let app = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    "ok"
                }
            }),
        )
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (port, seen)
}
