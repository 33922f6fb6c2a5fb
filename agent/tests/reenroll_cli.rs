//! `steward-agent enroll` (the real binary) against the real registry: `enroll --force` with a
//! stored identity proves to be that node with its secret and rotates it; a host that lost its
//! identity (reinstalled) is refused with a plain enrollment token (409, naming the node and the
//! remedies) and enrols as its node again with a re-enrolment grant from the admin.
//!
//! Both "hosts" are this machine (same /etc/machine-id), in separate data dirs. Needs no Docker.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Registry;
use serde_json::{json, Value};

fn agent(dir: &Path, data: &str, r: &Registry, token: &str, args: &[&str]) -> Output {
    let config = dir.join("agent.toml");
    std::fs::write(&config, "").unwrap();
    Command::new(env!("CARGO_BIN_EXE_steward-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--registry")
        .arg(r.base())
        .arg("--token")
        .arg(token)
        .arg("--data-dir")
        .arg(dir.join(data))
        .arg("--docker-socket")
        .arg(dir.join("no-docker.sock"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn identity(dir: &Path, data: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(data).join("node.json")).unwrap()).unwrap()
}

async fn heartbeat(r: &Registry, id: &Value) -> u16 {
    r.http
        .post(r.url(&format!(
            "/v1/nodes/{}/heartbeat",
            id["node_id"].as_str().unwrap()
        )))
        .bearer_auth(id["node_secret"].as_str().unwrap())
        .json(&json!({"observed_generation": 0}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn enroll_force_proves_the_stored_identity_and_a_grant_re_enrols_a_lost_one() {
    let r = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = r.token().await;

    let out = agent(dir.path(), "host", &r, &token, &["enroll"]);
    assert!(out.status.success(), "{out:?}");
    let first = identity(dir.path(), "host");
    assert_eq!(heartbeat(&r, &first).await, 200);

    // Enrolling again with the identity file: the stored secret is the proof.
    let out = agent(dir.path(), "host", &r, &token, &["enroll", "--force"]);
    assert!(out.status.success(), "{out:?}");
    let second = identity(dir.path(), "host");
    assert_eq!(second["node_id"], first["node_id"]);
    assert_ne!(second["node_secret"], first["node_secret"]);
    assert_eq!(
        heartbeat(&r, &first).await,
        401,
        "the old secret is revoked"
    );
    assert_eq!(heartbeat(&r, &second).await, 200);

    // Reinstalled: no identity file. A plain token is refused, naming the node and the way out.
    let out = agent(dir.path(), "reinstalled", &r, &token, &["enroll"]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let node_id = second["node_id"].as_str().unwrap();
    assert!(stderr.contains("409"), "{stderr}");
    assert!(stderr.contains(node_id), "{stderr}");
    assert!(
        stderr.contains(&format!("stewardctl nodes reenroll {node_id}")),
        "{stderr}"
    );
    assert!(!dir.path().join("reinstalled/node.json").exists());
    assert_eq!(heartbeat(&r, &second).await, 200, "the node keeps working");

    // The admin's grant takes the host back onto its node.
    let resp = r
        .http
        .post(r.url(&format!("/v1/nodes/{node_id}/reenroll")))
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let grant: Value = resp.json().await.unwrap();
    let grant = grant["grant"].as_str().unwrap();
    let out = agent(dir.path(), "reinstalled", &r, grant, &["enroll"]);
    assert!(out.status.success(), "{out:?}");
    let third = identity(dir.path(), "reinstalled");
    assert_eq!(third["node_id"], second["node_id"]);
    assert_eq!(heartbeat(&r, &third).await, 200);
    assert_eq!(
        heartbeat(&r, &second).await,
        401,
        "the lost secret is revoked"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains(grant.split('.').nth(1).unwrap()),
        "the grant reached the log: {log}"
    );
}
