//! Test support: start the real `steward-registry` binary on a free port with a temporary data
//! dir, and small HTTP helpers around it.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod agent;
pub mod docker;
pub mod etcd;
pub mod jwt;
pub mod replicas;
pub mod sessions;

pub struct Registry {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub extra: Vec<String>,
    pub scheme: &'static str,
    pub client: reqwest::Client,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry; `extra` are additional `serve` flags.
    pub async fn start(extra: &[&str]) -> Registry {
        Self::start_with(extra, "http", None).await
    }

    /// Starts a registry speaking `scheme`, trusting `ca_pem` when given.
    pub async fn start_with(
        extra: &[&str],
        scheme: &'static str,
        ca_pem: Option<String>,
    ) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(120));
        if let Some(pem) = ca_pem {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        let mut r = Registry {
            child: None,
            port: free_port(),
            dir,
            admin: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            scheme,
            client: builder.build().unwrap(),
        };
        r.spawn().await;
        r
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// (Re)starts the process on the same port and data dir.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_steward-registry"))
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "registry exited with {st}; log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "registry did not answer /healthz in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tok = self.dir.path().join("data/admin.token");
        if tok.exists() {
            self.admin = std::fs::read_to_string(tok).unwrap().trim().to_string();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.req(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn put_yaml(&self, path: &str, token: &str, yaml: &str) -> (u16, Value) {
        let resp = self
            .client
            .put(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Creates a token with `labels` and enrols a node with `machine_id`; returns (id, secret).
    pub async fn enroll(&self, machine_id: &str, labels: Value) -> (String, String) {
        let (st, tok) = self
            .req(
                reqwest::Method::POST,
                "/v1/enrollment-tokens",
                Some(&self.admin),
                Some(json!({"labels": labels})),
            )
            .await;
        assert_eq!(st, 201, "{tok}");
        let (st, en) = self
            .req(
                reqwest::Method::POST,
                "/v1/enroll",
                None,
                Some(json!({"token": tok["token"], "facts": {"machine_id": machine_id, "hostname": format!("host-{machine_id}")}})),
            )
            .await;
        assert_eq!(st, 200, "{en}");
        (
            en["node_id"].as_str().unwrap().to_string(),
            en["node_secret"].as_str().unwrap().to_string(),
        )
    }

    /// Runs the real `stewardctl` against this registry with `token`.
    pub fn ctl(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_stewardctl"))
            .arg("--registry")
            .arg(self.url(""))
            .args(args)
            .env_remove("STEWARD_TOKEN_FILE")
            .env("STEWARD_TOKEN", token)
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
