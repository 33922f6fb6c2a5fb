//! A long reconcile pass and newer specs: the real agent binary (daemon and `apply --watch`), the
//! real registry binary and the real Docker engine. A spec of many containers takes a pass of
//! several seconds here; a newer spec written meanwhile must take over between two actions, the
//! pass must report its progress, and a restarted agent must start from its newest stored spec.
//! Containers are counted through Docker's own event log, by the node's label.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{containers_with, engine_ready, suffix, wait_for, Agent, Registry, IMAGE};
use serde_json::Value;

/// Containers in the long generation: at several hundred ms per container here, a pass of
/// 10-20 s, long enough to be caught in the middle.
const MANY: usize = 40;

/// Hang guard for passes of `MANY` containers on a loaded 2-core machine.
const GUARD_SECS: u64 = 300;

fn sleeper(name: &str) -> String {
    format!("  - {{name: {name}, image: '{IMAGE}', command: [sleep, '3600']}}\n")
}

fn many(prefix: &str) -> String {
    let mut s = String::from("containers:\n");
    for i in 0..MANY {
        s.push_str(&sleeper(&format!("{prefix}-{i}")));
    }
    s
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Docker's `create` events for the containers of one node, followed live from the moment it
/// is made (the engine keeps only its last 256 events for later queries: too few here). Stops
/// following when dropped.
struct Creates {
    child: Child,
    out: tempfile::NamedTempFile,
}

impl Creates {
    fn follow(node: &str) -> Creates {
        let out = tempfile::NamedTempFile::new().unwrap();
        // Replayed from a second ago, so nothing falls between starting and subscribing.
        let since = now_secs().saturating_sub(1);
        let child = Command::new("docker")
            .args(["events", "--since", &since.to_string()])
            .args(["--filter", "type=container", "--filter", "event=create"])
            .args(["--filter", &format!("label=io.steward.node={node}")])
            .args(["--format", "{{.Actor.Attributes.name}}"])
            .stdout(out.reopen().unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Creates { child, out }
    }

    /// Names created so far that start with `prefix` (a container created then removed counts).
    fn named(&self, prefix: &str) -> Vec<String> {
        std::fs::read_to_string(self.out.path())
            .unwrap()
            .split_whitespace()
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Creates {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `node`'s containers are exactly `want`, all running.
async fn wait_exactly(node: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    wait_for(GUARD_SECS, "exactly the newer spec's containers", || {
        let want = want.clone();
        async move {
            let seen = containers_with(&format!("io.steward.node={node}"));
            let names: BTreeSet<String> = seen.iter().map(|s| s.name.clone()).collect();
            (names == want && seen.iter().all(|s| s.running)).then_some(())
        }
    })
    .await;
}

/// Waits until the agent has created at least `n` containers of the long generation.
async fn wait_started(node: &str, n: usize) {
    wait_for(GUARD_SECS, "the long pass to create its first containers", || async move {
        (containers_with(&format!("io.steward.node={node}")).len() >= n).then_some(())
    })
    .await;
}

/// The generations the registry logged a status for (`status-changed` events of the node).
async fn observed_in_events(r: &Registry, node: &str) -> Vec<u64> {
    let events = r
        .get_json(&format!("/v1/events?node={node}&limit=1000"))
        .await;
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "status-changed")
        .filter_map(|e| e["generation"].as_u64())
        .collect()
}

#[tokio::test]
async fn a_newer_spec_takes_over_a_long_pass_between_actions() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let node = a.node_id.clone();
    let (bulk, after) = (format!("bulk-{}", suffix()), format!("after-{}", suffix()));
    let creates = Creates::follow(&node);
    let g1 = r.put_spec(&node, &many(&bulk)).await;
    wait_started(&node, 2).await;
    let g2 = r
        .put_spec(&node, &format!("containers:\n{}", sleeper(&after)))
        .await;
    assert!(g2 > g1);
    let resources = wait_for(GUARD_SECS, "the node to report generation 2", || async {
        let n = r.node(&node).await;
        (n["status"]["observed_generation"].as_u64() == Some(g2)).then(|| {
            n["status"]["resources"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
    })
    .await;
    wait_exactly(&node, &[&after]).await;
    let names: Vec<&str> = resources
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, [after.as_str()], "the status is generation 2's");

    let created = creates.named(&bulk);
    assert!(!created.is_empty(), "the creates were followed");
    assert!(
        created.len() < MANY,
        "the pass of generation {g1} ran to its end ({} of {MANY} containers created) although \
         generation {g2} arrived after its first containers",
        created.len()
    );
    eprintln!(
        "generation {g1}: {} of {MANY} containers created before generation {g2} took over",
        created.len()
    );
    let observed = observed_in_events(&r, &node).await;
    assert!(observed.contains(&g2), "{observed:?}");
    assert!(
        !observed.contains(&g1),
        "generation {g1} was never applied whole, yet reported as observed: {observed:?}"
    );
}

#[tokio::test]
async fn a_long_pass_reports_its_progress_to_the_registry() {
    if !engine_ready() {
        return;
    }
    let r = Registry::start().await;
    let a = Agent::start(&r, "").await;
    let node = a.node_id.clone();
    let g = r
        .put_spec(&node, &many(&format!("prog-{}", suffix())))
        .await;
    let (progress, observed) = wait_for(
        GUARD_SECS,
        "progress of the pass in a heartbeat",
        || async {
            let n = r.node(&node).await;
            let p = n["progress"].clone();
            let started = p["generation"].as_u64() == Some(g) && p["done"].as_u64() >= Some(1);
            started.then(|| (p, n["observed_generation"].as_u64().unwrap()))
        },
    )
    .await;
    let (done, total) = (
        progress["done"].as_u64().unwrap(),
        progress["total"].as_u64().unwrap(),
    );
    assert!(
        done < total,
        "a pass caught in the middle has actions left: {progress}"
    );
    assert!(
        total >= MANY as u64,
        "every container's create is planned: {progress}"
    );
    assert_eq!(progress["phase"], "containers", "{progress}");
    assert!(progress["started_at"].is_string(), "{progress}");
    assert!(observed < g, "a generation in progress is not observed yet");

    wait_for(
        GUARD_SECS,
        "the long pass to be reported applied",
        || async {
            (r.node(&node).await["status"]["observed_generation"].as_u64() == Some(g)).then_some(())
        },
    )
    .await;
    wait_for(30, "the progress to go once the pass is over", || async {
        r.node(&node).await.get("progress").is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_restarted_agent_starts_from_its_newest_stored_spec() {
    if !engine_ready() {
        return;
    }
    let mut r = Registry::start().await;
    let mut a = Agent::start(&r, "").await;
    let node = a.node_id.clone();
    let (bulk, after) = (format!("old-{}", suffix()), format!("new-{}", suffix()));
    r.put_spec(&node, &many(&bulk)).await;
    wait_started(&node, 2).await;
    let g2 = r
        .put_spec(&node, &format!("containers:\n{}", sleeper(&after)))
        .await;
    let stored = a.dir.path().join("state/state/spec.json");
    wait_for(30, "the agent to store the newer spec", || {
        let stored = stored.clone();
        async move {
            let s: Value = serde_json::from_slice(&std::fs::read(&stored).ok()?).ok()?;
            (s["generation"].as_u64() == Some(g2)).then_some(())
        }
    })
    .await;
    // Agent and registry gone at once: only the store can tell the agent what to apply.
    a.kill9();
    r.kill9();
    let logged_before = a.log().len();
    a.spawn();
    wait_exactly(&node, &[&after]).await;
    let status = a.dir.path().join("state/status.json");
    wait_for(
        30,
        "the restarted agent to record generation 2 applied",
        || {
            let status = status.clone();
            async move {
                let s: Value = serde_json::from_slice(&std::fs::read(&status).ok()?).ok()?;
                (s["observed_generation"].as_u64() == Some(g2)).then_some(())
            }
        },
    )
    .await;
    // The agent's own record of its actions (a create in flight at the kill may still land in
    // Docker's event log after it, so that log cannot tell who made it).
    let log = a.log();
    let old: Vec<&str> = log[logged_before..]
        .lines()
        .filter(|l| l.contains(" applied ") && l.contains("kind=\"create\""))
        .filter(|l| l.contains(&format!("container={bulk}-")))
        .collect();
    assert!(
        old.is_empty(),
        "after the restart the agent worked on the older spec: {old:#?}"
    );
    assert!(
        log[logged_before..].contains("starting steward-agent"),
        "the restarted agent logs to this file"
    );
}

/// `apply --watch` on a file, with its own node id (so its containers carry a label of their
/// own); killed and its containers removed on drop.
struct Watch {
    child: Child,
    node: String,
    dir: tempfile::TempDir,
}

impl Watch {
    fn start(node: &str, spec: &str) -> Watch {
        let dir = tempfile::tempdir().unwrap();
        let node = node.to_string();
        let data = dir.path().join("state");
        std::fs::create_dir_all(&data).unwrap();
        let identity = serde_json::json!({
            "registry": "http://127.0.0.1:9", "node_id": node, "node_secret": "unused.unused",
        });
        std::fs::write(data.join("node.json"), identity.to_string()).unwrap();
        let file = write_spec(dir.path(), spec);
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--data-dir")
            .arg(&data)
            .args(["apply", "--watch", "--file"])
            .arg(file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Watch { child, node, dir }
    }

    /// Replaces the watched file.
    fn write(&self, spec: &str) {
        write_spec(self.dir.path(), spec);
    }
}

/// Writes `dir/spec.yaml` at once (aside, then renamed), so the watcher never reads half of it.
fn write_spec(dir: &std::path::Path, spec: &str) -> std::path::PathBuf {
    let (tmp, file) = (dir.join(".spec.yaml"), dir.join("spec.yaml"));
    std::fs::write(&tmp, spec).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    file
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let ids: Vec<String> = containers_with(&format!("io.steward.node={}", self.node))
            .into_iter()
            .map(|s| s.id)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

#[tokio::test]
async fn apply_watch_hands_a_long_pass_over_to_the_newer_file() {
    if !engine_ready() {
        return;
    }
    let (bulk, after) = (format!("file-{}", suffix()), format!("edit-{}", suffix()));
    let node = format!("watch-{}", suffix());
    let creates = Creates::follow(&node);
    let w = Watch::start(&node, &many(&bulk));
    wait_started(&w.node, 2).await;
    w.write(&format!("containers:\n{}", sleeper(&after)));
    wait_exactly(&w.node, &[&after]).await;
    let created = creates.named(&bulk);
    assert!(!created.is_empty(), "the creates were followed");
    assert!(
        created.len() < MANY,
        "the pass over the first file ran to its end ({} of {MANY} containers created)",
        created.len()
    );
    eprintln!(
        "apply --watch: {} of {MANY} containers created before the edited file took over",
        created.len()
    );
    let status = w.dir.path().join("state/status.json");
    wait_for(
        30,
        "the edited file's generation recorded as applied",
        || {
            let (status, after) = (status.clone(), after.clone());
            async move {
                let s: Value = serde_json::from_slice(&std::fs::read(&status).ok()?).ok()?;
                let names: Vec<String> = s["resources"]
                    .as_array()?
                    .iter()
                    .filter_map(|r| r["name"].as_str().map(str::to_string))
                    .collect();
                (s["observed_generation"].as_u64() == Some(2) && names == [after]).then_some(())
            }
        },
    )
    .await;
}
