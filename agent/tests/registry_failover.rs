//! A real `steward-agent run` given several registry URLs, against real `steward-registry`
//! processes: it enrols through the second URL when the first has nothing listening, and when
//! its registry dies it moves to the next URL (a registry restarted on another port from the
//! same data dir, standing in for a replica), its long-poll resumes from the generation it had,
//! heartbeats and status keep going, and a spec written there (a file payload, downloaded from
//! there) reaches it.
//!
//! Needs no Docker: the specs are empty or a file payload (the agent's Docker socket points
//! nowhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{free_port, wait_for, Registry};
use serde_json::Value;

/// An agent process with its own data dir, configured with `registry` (a URL list).
struct ListAgent {
    child: Child,
    dir: tempfile::TempDir,
    node_id: String,
}

impl ListAgent {
    async fn start(registry: &str, token: &str, policy: &str) -> ListAgent {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        let urls: Vec<String> = registry.split(',').map(|u| format!("\"{u}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "registry = [{}]\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\n\
                 docker_socket = \"{}\"\nresync_interval = \"2s\"\nlong_poll_wait = \"30s\"\n\
                 backoff_max = \"1s\"\nmetrics_listen = \"off\"\n[policy]\n{policy}\n",
                urls.join(", "),
                dir.path().join("state").display(),
                dir.path().join("no-docker.sock").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("STEWARD_REGISTRY")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let idfile = dir.path().join("state/node.json");
        let id: Value = wait_for(30, "the agent to enrol", || {
            let idfile = idfile.clone();
            async move {
                std::fs::read(&idfile)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            }
        })
        .await;
        ListAgent {
            child,
            node_id: id["node_id"].as_str().unwrap().to_string(),
            dir,
        }
    }

    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default())
    }
}

impl Drop for ListAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text without ANSI colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Long-polls parked on `r` now (its `/metrics`).
async fn parked_long_polls(r: &Registry) -> Option<u64> {
    let text = r
        .http
        .get(r.url("/metrics"))
        .bearer_auth(&r.admin)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("steward_registry_longpoll_watchers "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The lines of `log` saying a spec of `generation` was received.
fn received(log: &str, generation: u64) -> usize {
    log.lines()
        .filter(|l| l.contains("new spec received"))
        .filter(|l| l.trim_end().ends_with(&format!("generation={generation}")))
        .count()
}

fn identity(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("state/node.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn an_agent_whose_first_registry_url_is_closed_enrols_and_converges_through_the_next() {
    let r = Registry::start().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let list = format!("{closed},{}", r.base());
    let a = ListAgent::start(&list, &r.token().await, "").await;
    assert_eq!(identity(a.dir.path())["registry"], list.as_str());

    let g = r.put_spec(&a.node_id, "{}\n").await;
    r.wait_observed(&a.node_id, g).await;
    let n = r.node(&a.node_id).await;
    assert_eq!(n["health"], "ready", "{n}");
    // Heartbeats reach it too (the node was enrolled before this first heartbeat time).
    let first = n["last_heartbeat"].as_str().unwrap().to_string();
    wait_for(30, "another heartbeat", || {
        let (r, id, first) = (&r, a.node_id.clone(), first.clone());
        async move {
            let n = r.node(&id).await;
            (n["last_heartbeat"].as_str() != Some(first.as_str())).then_some(())
        }
    })
    .await;
    let log = a.log();
    assert!(
        log.contains("switched registry URL") || log.contains("switching to the next registry URL"),
        "the agent should say it moved past the closed URL:\n{log}"
    );
}

#[tokio::test]
async fn an_agent_moves_to_the_next_registry_when_its_registry_dies_and_resumes_its_long_poll() {
    let mut r = Registry::start().await;
    let next_port = free_port();
    let list = format!("{},http://127.0.0.1:{next_port}", r.base());
    let root = tempfile::tempdir().unwrap();
    let policy = format!("payload_roots = [\"{}\"]", root.path().display());
    let a = ListAgent::start(&list, &r.token().await, &policy).await;
    let g1 = r.put_spec(&a.node_id, "{}\n").await;
    r.wait_observed(&a.node_id, g1).await;
    wait_for(
        30,
        "the agent's long-poll parked on the first registry",
        || {
            let r = &r;
            async move { (parked_long_polls(r).await? >= 1).then_some(()) }
        },
    )
    .await;

    // The first registry dies; the "replica" serves the same data on the next URL.
    r.kill9();
    r.port = next_port;
    r.spawn().await;

    // The long-poll parks there: with generation g1 stored, a poll from 0 would have been
    // answered at once, so a parked poll is one that resumed after g1.
    wait_for(
        60,
        "the agent's long-poll parked on the next registry",
        || {
            let r = &r;
            async move { (parked_long_polls(r).await? >= 1).then_some(()) }
        },
    )
    .await;
    let log = a.log();
    assert!(
        log.contains("switching to the next registry URL"),
        "no switch logged:\n{log}"
    );
    assert_eq!(
        received(&log, g1),
        1,
        "generation {g1} fetched again:\n{log}"
    );

    // Heartbeats go on against the next registry...
    let before = r.node(&a.node_id).await["last_heartbeat"].clone();
    wait_for(30, "a heartbeat on the next registry", || {
        let (r, id, before) = (&r, a.node_id.clone(), before.clone());
        async move { (r.node(&id).await["last_heartbeat"] != before).then_some(()) }
    })
    .await;
    // ...and a spec written there reaches the agent, which fetches the payload from there and
    // reports it applied.
    let body = common::payload::content(64 << 10, 7);
    r.upload("failover-file", "1", body.clone()).await;
    let target = root.path().join("failover.bin");
    let spec = format!(
        "payloads:\n  - {{name: failover-file, version: '1', path: '{}'}}\n",
        target.display()
    );
    let g2 = r.put_spec(&a.node_id, &spec).await;
    assert!(g2 > g1);
    let res = r.wait_observed(&a.node_id, g2).await;
    assert_eq!(res[0]["state"], "converged", "{res:?}");
    assert_eq!(std::fs::read(&target).unwrap(), body);
    assert_eq!(r.node(&a.node_id).await["health"], "ready");
    let log = a.log();
    assert_eq!(received(&log, g2), 1, "{log}");
    assert_eq!(received(&log, g1), 1, "{log}");
}
