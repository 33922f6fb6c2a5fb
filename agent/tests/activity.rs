//! Workloads' network activity (`ResourceStatus.activity`) against the real agent binary and
//! the real Docker engine: `apply --watch` on a file, its status read from `status.json`.
//! A container serving HTTP (busybox `httpd`, port published on loopback) and an idle one on
//! the same bridge: once the test fetches pages, the web container's activity grows while the
//! idle one's stays the same across two refreshes (read at most once a second here,
//! `--activity-interval 1s`); with the default-sized interval the values hold between
//! refreshes, whatever flows, and the status's digest with them. Polls have deadlines (hang
//! guards), never timing assertions. Each test has a node id of its own.
//!
//!   cargo test -p steward-agent --test activity
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::docker::{docker_cli, http_get};
use common::{engine_ready, suffix, wait_for, IMAGE};
use serde_json::{json, Value};

/// Hang guard for polls (never a timing assertion).
const GUARD_SECS: u64 = 90;

/// An `apply --watch` agent with its own data dir and node id; on drop it is killed and its
/// node's containers removed.
struct Agent {
    child: Child,
    node: String,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Enforces `spec`, passes at least every second, activity read at most every `interval`.
    fn watching(node: &str, spec: &Value, interval: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("state");
        std::fs::create_dir_all(&data).unwrap();
        let identity = json!({
            "registry": "http://127.0.0.1:9", "node_id": node, "node_secret": "unused.unused",
        });
        std::fs::write(data.join("node.json"), identity.to_string()).unwrap();
        let file = dir.path().join("spec.json");
        std::fs::write(&file, spec.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--vm-dir")
            .arg(dir.path().join("vms"))
            .args(["--resync-interval", "1s", "--metrics-listen", "off"])
            .args(["--activity-interval", interval])
            .args(["apply", "--watch", "--file", file.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            child,
            node: node.to_string(),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Passes run to their end so far (one `reconciled ... not_converged=` line each).
    fn passes(&self) -> usize {
        self.log().matches("not_converged=").count()
    }

    /// The last status the agent published (`status.json`).
    fn status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.dir.path().join("state/status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits for a status `ok` accepts; returns it.
    async fn wait_status(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let what = format!("{what}; log:\n{}", self.log());
        wait_for(GUARD_SECS, &what, || {
            let st = self.status().filter(&ok);
            async move { st }
        })
        .await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let label = format!("label=io.steward.node={}", self.node);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        else {
            return;
        };
        let ids = String::from_utf8_lossy(&out.stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// The names one test uses.
struct Names {
    node: String,
    web: String,
    idle: String,
}

impl Names {
    fn new() -> Names {
        let s = suffix();
        Names {
            node: format!("activity-{s}"),
            web: format!("web-{s}"),
            idle: format!("idle-{s}"),
        }
    }

    /// `web` serving /www over HTTP on a loopback port Docker picks, `idle` sleeping.
    fn spec(&self) -> Value {
        json!({"containers": [
            {"name": self.web, "image": IMAGE, "command": ["httpd", "-f", "-p", "80", "-h", "/www"],
             "ports": ["127.0.0.1::80"]},
            {"name": self.idle, "image": IMAGE, "command": ["sleep", "3600"]},
        ]})
    }
}

/// A container's reported activity in `status`, if it has a status and an activity.
fn activity(status: &Value, name: &str) -> Option<u64> {
    let r = (status["resources"].as_array()?.iter()).find(|r| r["name"] == name)?;
    r["activity"].as_u64()
}

/// Both containers converged and reported with an activity.
fn both_counted(st: &Value, n: &Names) -> bool {
    let converged = |name: &str| {
        (st["resources"].as_array().into_iter().flatten())
            .any(|r| r["name"] == name && r["state"] == "converged")
    };
    converged(&n.web)
        && converged(&n.idle)
        && activity(st, &n.web).is_some()
        && activity(st, &n.idle).is_some()
}

/// Fetches the web container's page a few times (bytes flow through its veth).
fn fetch_pages(addr: &str) {
    for _ in 0..5 {
        let (code, body) = http_get(addr, "/", Duration::from_secs(20));
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("steward test image"), "{body}");
    }
}

/// `web`'s loopback address, as Docker published it.
fn web_addr(n: &Names) -> String {
    let port = docker_cli(&["port", &n.web, "80/tcp"]);
    port.lines().next().unwrap().trim().to_string()
}

#[tokio::test]
async fn a_served_containers_activity_grows_and_an_idle_ones_stays() {
    if !engine_ready() {
        return;
    }
    let n = Names::new();
    let agent = Agent::watching(&n.node, &n.spec(), "1s");
    let first = agent
        .wait_status("both containers converged with an activity", |s| {
            both_counted(s, &n)
        })
        .await;
    let addr = web_addr(&n);
    // The first requests resolve neighbours (ARP broadcasts reach every port of the bridge).
    fetch_pages(&addr);
    let mut before = first;
    // Two refreshes in a row, each after pages were fetched: the web container's activity
    // grows in each, the idle one's stays. Background packets the kernel floods to every port
    // (router solicitations of a bridge that just came up, other tests' ARP) can move the idle
    // one's counters now and then: such a window is tried again, within the guard.
    let mut quiet = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(GUARD_SECS);
    while quiet < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no two refreshes in a row with the web container's activity growing and the idle \
             one's unchanged; last status {before}; log:\n{}",
            agent.log()
        );
        fetch_pages(&addr);
        let web_before = activity(&before, &n.web).unwrap();
        let after = agent
            .wait_status("the web container's activity to grow", |s| {
                both_counted(s, &n) && activity(s, &n.web).is_some_and(|a| a > web_before)
            })
            .await;
        let same = activity(&after, &n.idle) == activity(&before, &n.idle);
        quiet = if same { quiet + 1 } else { 0 };
        before = after;
    }
}

#[tokio::test]
async fn activity_holds_between_refreshes_and_the_digest_with_it() {
    if !engine_ready() {
        return;
    }
    let n = Names::new();
    let agent = Agent::watching(&n.node, &n.spec(), "1h");
    let first = agent
        .wait_status("both containers converged with an activity", |s| {
            both_counted(s, &n)
        })
        .await;
    let passes = agent.passes();
    fetch_pages(&web_addr(&n));
    // Three more whole passes (one a second) see the traffic; none reads the counters again.
    let what = format!("three more passes; log:\n{}", agent.log());
    wait_for(GUARD_SECS, &what, || {
        let done = agent.passes() >= passes + 3;
        async move { done.then_some(()) }
    })
    .await;
    let now = agent.status().unwrap();
    for name in [&n.web, &n.idle] {
        assert_eq!(
            activity(&now, name),
            activity(&first, name),
            "{name}: {now}"
        );
    }
    assert_eq!(now["digest"], first["digest"], "{first}\n{now}");
}
