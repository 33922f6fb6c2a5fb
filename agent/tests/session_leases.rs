//! Session leases against the real agent binary and the real Docker engine, with no registry
//! answering: the daemon enforcing its stored spec (its registry unreachable) and
//! `apply --watch` on a file. A session's container carries its session's label and its volume
//! is made, labelled, before it; at the lease's deadline the agent wakes by itself and removes
//! the session's container and volume (unless kept) and nothing else; an extended lease
//! recreates nothing; a volume of that name the agent did not make is never taken over or
//! removed. Each agent has a node id of its own, so the tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{engine_ready, inspect, suffix, wait_for, IMAGE};
use serde_json::{json, Map, Value};

/// How far ahead the short leases of these tests end: time enough for the agent to start and
/// apply the spec, little enough not to make the test wait long.
const SHORT_LEASE: Duration = Duration::from_secs(3);

/// Hang guard for polls (never a timing assertion).
const GUARD_SECS: u64 = 60;

/// The names one test uses.
struct Names {
    node: String,
    session: String,
    /// The session's container.
    lab: String,
    /// A container of no session.
    other: String,
    volume: String,
}

impl Names {
    fn new() -> Names {
        let s = suffix();
        Names {
            node: format!("lease-{s}"),
            session: format!("s-{s}"),
            lab: format!("lab-{s}"),
            other: format!("plain-{s}"),
            volume: format!("vol-{s}"),
        }
    }

    /// The session's lease ending at `expires_at` with its volume, its container on that
    /// volume, and a container of no session.
    fn spec(&self, expires_at: DateTime<Utc>, keep_volumes: bool) -> Value {
        json!({
            "sessions": [{
                "id": self.session,
                "expires_at": expires_at.to_rfc3339(),
                "volumes": [self.volume],
                "keep_volumes": keep_volumes,
            }],
            "containers": [
                {"name": self.lab, "image": IMAGE, "command": ["sleep", "3600"],
                 "session": self.session, "volumes": [format!("{}:/data", self.volume)]},
                {"name": self.other, "image": IMAGE, "command": ["sleep", "3600"]},
            ],
        })
    }
}

fn soon() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(SHORT_LEASE).unwrap()
}

/// An agent process with its own data dir and node id; on drop it is killed and what its node
/// made (containers and volumes, kept ones included) is removed.
struct Host {
    child: Child,
    node: String,
    dir: tempfile::TempDir,
}

impl Host {
    /// The daemon (`run`) enforcing `spec` as its stored spec of generation 1, enrolled with a
    /// registry that does not answer (nothing listens on the discard port).
    fn offline(node: &str, spec: &Value) -> Host {
        let dir = Self::data_dir(node);
        let stored = json!({"generation": 1, "spec": spec});
        let state = dir.path().join("state/state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("spec.json"), stored.to_string()).unwrap();
        Self::spawn(node, dir, &["run"])
    }

    /// `apply --watch` on a file holding `spec`.
    fn watching(node: &str, spec: &Value) -> Host {
        let dir = Self::data_dir(node);
        write_atomically(&dir.path().join("spec.json"), spec);
        let file = dir.path().join("spec.json");
        let file = file.to_str().unwrap().to_string();
        Self::spawn(node, dir, &["apply", "--watch", "--file", &file])
    }

    fn data_dir(node: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("state");
        std::fs::create_dir_all(&data).unwrap();
        let identity = json!({
            "registry": "http://127.0.0.1:9", "node_id": node, "node_secret": "unused.unused",
        });
        std::fs::write(data.join("node.json"), identity.to_string()).unwrap();
        dir
    }

    fn spawn(node: &str, dir: tempfile::TempDir, cmd: &[&str]) -> Host {
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .arg("--vm-dir")
            .arg(dir.path().join("vms"))
            // Nothing but the lease's deadline (and Docker's events) wakes the loop.
            .args(["--resync-interval", "600s", "--metrics-listen", "off"])
            .args(cmd)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Host {
            child,
            node: node.to_string(),
            dir,
        }
    }

    /// Replaces the watched file (`apply --watch`).
    fn rewrite(&self, spec: &Value) {
        write_atomically(&self.dir.path().join("spec.json"), spec);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The last status the agent published (`status.json`).
    fn status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.dir.path().join("state/status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits for a status of `generation` that `ok` accepts; returns it.
    async fn wait_status(&self, generation: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let what = format!("{what} (generation {generation}); log:\n{}", self.log());
        wait_for(GUARD_SECS, &what, || {
            let st = self
                .status()
                .filter(|s| s["observed_generation"].as_u64() == Some(generation))
                .filter(&ok);
            async move { st }
        })
        .await
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let label = format!("label=io.steward.node={}", self.node);
        for (list, rm) in [
            (vec!["ps", "-aq", "--filter", &label], vec!["rm", "-f"]),
            (
                vec!["volume", "ls", "-q", "--filter", &label],
                vec!["volume", "rm", "-f"],
            ),
        ] {
            let Ok(out) = Command::new("docker").args(&list).output() else {
                continue;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&rm).args(&ids).output();
            }
        }
    }
}

/// Writes `spec` to `path` at once (aside, then renamed), so a watcher never reads half of it.
fn write_atomically(path: &std::path::Path, spec: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A volume's labels, if it exists (`docker volume inspect`, independent of the agent).
fn volume_labels(name: &str) -> Option<Map<String, Value>> {
    let out = Command::new("docker")
        .args(["volume", "inspect", name])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0]["Labels"].as_object().cloned().unwrap_or_default())
}

/// A resource of a status, by name.
fn resource<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
}

/// Polls until the session's container runs and its volume exists, and the other container
/// runs, before the lease's deadline (after it the session's are gone again); returns the
/// session container's labels and id, and the volume's labels.
async fn wait_session_up(
    h: &Host,
    n: &Names,
    deadline: DateTime<Utc>,
) -> (Map<String, Value>, String, Map<String, Value>) {
    loop {
        let lab = inspect(&n.lab).filter(|c| c.running);
        let other = inspect(&n.other).is_some_and(|c| c.running);
        if let (Some(lab), Some(vol), true) = (lab, volume_labels(&n.volume), other) {
            return (lab.labels, lab.id, vol);
        }
        assert!(
            Utc::now() < deadline,
            "the session's container and volume were not up before the lease ended (the agent \
             took longer than {SHORT_LEASE:?} to apply the spec?); log:\n{}",
            h.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the session's container is gone and the expiry's pass has been published
/// (`status.json` no longer lists it: the pass ran to its end, volume sweep included).
async fn wait_session_gone(h: &Host, n: &Names) {
    let what = format!("the expired session's container to go; log:\n{}", h.log());
    wait_for(GUARD_SECS, &what, || {
        let gone = inspect(&n.lab).is_none()
            && h.status().is_some_and(|s| {
                resource(&s, &n.lab).is_none() && resource(&s, &n.other).is_some()
            });
        async move { gone.then_some(()) }
    })
    .await;
}

/// The labels a session's container or volume must carry.
fn assert_session_labels(labels: &Map<String, Value>, n: &Names, what: &str) {
    for (k, v) in [
        ("io.steward.managed", "true"),
        ("io.steward.node", n.node.as_str()),
        ("io.steward.session", n.session.as_str()),
    ] {
        assert_eq!(
            labels.get(k).and_then(Value::as_str),
            Some(v),
            "{what} label {k}: {labels:?}"
        );
    }
}

#[tokio::test]
async fn an_expired_session_is_removed_offline_and_nothing_else_is() {
    if !engine_ready() {
        return;
    }
    let n = Names::new();
    let deadline = soon();
    let h = Host::offline(&n.node, &n.spec(deadline, false));
    let (lab, _, vol) = wait_session_up(&h, &n, deadline).await;
    assert_session_labels(&lab, &n, "the session's container");
    assert_session_labels(&vol, &n, "the session's volume");
    assert!(!vol.contains_key("io.steward.keep"), "{vol:?}");
    let other = inspect(&n.other).expect("the other container runs");
    assert!(!other.labels.contains_key("io.steward.session"));

    // No new spec, no registry: the lease's deadline alone wakes the agent.
    wait_session_gone(&h, &n).await;
    let what = format!("the session's volume to go; log:\n{}", h.log());
    wait_for(GUARD_SECS, &what, || async {
        volume_labels(&n.volume).is_none().then_some(())
    })
    .await;
    let after = inspect(&n.other).expect("the other container stays");
    assert!(after.running);
    assert_eq!(
        after.id, other.id,
        "the other container must not be touched"
    );
    let log = h.log();
    assert!(
        log.contains("spec watch failed"),
        "the registry was reachable?\n{log}"
    );
    let expired: Vec<&str> = (log.lines())
        .filter(|l| l.contains("session expired") && l.contains(&n.session))
        .collect();
    assert_eq!(expired.len(), 1, "one line per expired session:\n{log}");
}

#[tokio::test]
async fn an_extended_lease_recreates_nothing() {
    if !engine_ready() {
        return;
    }
    let n = Names::new();
    let first = Utc::now() + chrono::Duration::hours(1);
    let h = Host::watching(&n.node, &n.spec(first, false));
    let (_, id, _) = wait_session_up(&h, &n, first).await;
    h.wait_status(1, "the first spec applied", |_| true).await;

    let later = first + chrono::Duration::hours(1);
    h.rewrite(&n.spec(later, false));
    let st = h
        .wait_status(2, "the extended lease applied", |s| {
            resource(s, &n.lab).is_some()
        })
        .await;
    assert_eq!(resource(&st, &n.lab).unwrap()["state"], "converged", "{st}");
    let lab = inspect(&n.lab).expect("the session's container stays");
    assert_eq!(
        lab.id, id,
        "an extended lease must not recreate the container"
    );
    assert!(lab.running);
    assert!(volume_labels(&n.volume).is_some(), "the volume stays");
}

#[tokio::test]
async fn a_kept_volume_outlives_its_session() {
    if !engine_ready() {
        return;
    }
    let n = Names::new();
    let deadline = soon();
    let h = Host::watching(&n.node, &n.spec(deadline, true));
    let (_, _, vol) = wait_session_up(&h, &n, deadline).await;
    assert_session_labels(&vol, &n, "the kept volume");
    assert_eq!(
        vol.get("io.steward.keep").and_then(Value::as_str),
        Some("true")
    );

    wait_session_gone(&h, &n).await;
    let vol = volume_labels(&n.volume).expect("a kept volume stays after its session");
    assert_session_labels(&vol, &n, "the kept volume");
}

#[tokio::test]
async fn a_volume_the_agent_did_not_make_is_neither_taken_over_nor_removed() {
    if !engine_ready() {
        return;
    }
    let n = Names::new();
    let _cleanup = ForeignVolume::create(&n.volume);
    let deadline = soon();
    let h = Host::watching(&n.node, &n.spec(deadline, false));
    let st = h
        .wait_status(1, "the spec applied", |s| resource(s, &n.lab).is_some())
        .await;
    let lab = resource(&st, &n.lab).unwrap();
    assert_eq!(lab["state"], "failed", "{st}");
    let err = lab["error"].as_str().unwrap_or("");
    assert!(
        err.contains(&n.volume) && err.contains("not taken over"),
        "{err}"
    );
    assert_eq!(
        resource(&st, &n.other).unwrap()["state"],
        "converged",
        "{st}"
    );
    assert!(
        inspect(&n.lab).is_none(),
        "the session's container must not be created"
    );
    assert_eq!(
        volume_labels(&n.volume),
        Some(Map::new()),
        "the volume was relabelled?"
    );

    // Past the deadline, the volume is still not the agent's to remove.
    wait_session_gone(&h, &n).await;
    assert_eq!(
        volume_labels(&n.volume),
        Some(Map::new()),
        "the foreign volume must stay"
    );
    assert!(inspect(&n.other).is_some_and(|c| c.running));
}

/// A volume made by hand, without labels; removed on drop.
struct ForeignVolume(String);

impl ForeignVolume {
    fn create(name: &str) -> ForeignVolume {
        common::docker(&["volume", "create", name]);
        ForeignVolume(name.to_string())
    }
}

impl Drop for ForeignVolume {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}
