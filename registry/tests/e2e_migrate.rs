//! `steward-registry migrate` with real processes: an embedded registry with nodes, specs, a
//! fragment, tokens, events, payload versions and a finished rollout is copied into a real
//! 3-member etcd cluster and served by two registry replicas, one of them on the old data dir;
//! every record is there, every node still authenticates on both replicas, and the payload blob
//! downloads from the replica that did not have it. Also: migrate refuses a store in use and a
//! prefix that holds data (unless --force).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn migrate(from: &std::path::Path, to: &str, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_steward-registry"))
        .arg("migrate")
        .arg("--from-data-dir")
        .arg(from)
        .args(["--to", to])
        .args(extra)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Stops a registry with SIGTERM (a clean stop, as systemd does) and waits for it.
fn stop(r: &mut Registry) {
    let mut child = r.child.take().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap();
}

async fn upload(r: &Registry, version: &str, body: &[u8]) -> String {
    let resp = r
        .client
        .put(r.url(&format!("/v1/payloads/app/{version}")))
        .bearer_auth(&r.admin)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    hex::encode(Sha256::digest(body))
}

/// Plays the agents of `nodes` until the rollout `id` is done: each reports having observed
/// its spec's generation with every payload of that spec in place (attested sha256).
async fn drive_rollout(r: &Registry, nodes: &[(String, String)], id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, ro) = r.get(&format!("/v1/rollouts/{id}"), &r.admin).await;
        if ro["state"] == "done" {
            return ro;
        }
        assert!(ro["state"] == "running", "rollout stopped: {ro}");
        assert!(Instant::now() < deadline, "rollout not done in 120 s: {ro}");
        for (node, secret) in nodes {
            let (st, doc) = r.get(&format!("/v1/nodes/{node}/spec"), secret).await;
            assert_eq!(st, 200, "{doc}");
            let payloads: Vec<Value> = doc["spec"]["payloads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    json!({"name": p["name"], "version": p["version"], "path": p["path"],
                           "expected": p["sha256"], "actual": p["sha256"]})
                })
                .collect();
            let status = json!({"observed_generation": doc["generation"], "resources": [],
                                "payloads": payloads, "digest": format!("d{}", doc["generation"])});
            let (st, body) = r
                .req(
                    Method::PUT,
                    &format!("/v1/nodes/{node}/status"),
                    Some(secret),
                    Some(status),
                )
                .await;
            assert_eq!(st, 204, "{body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the old registry holds, as read through its API before the move.
struct Before {
    nodes: Vec<Value>,
    specs: Vec<Value>,
    fragments: Value,
    tokens: Value,
    events: Vec<Value>,
    payload: Value,
    rollouts: Value,
}

async fn read_state(r: &Registry, token: &str, nodes: &[(String, String)]) -> Before {
    let mut specs = Vec::new();
    for (id, _) in nodes {
        let (st, doc) = r.get(&format!("/v1/nodes/{id}/spec"), token).await;
        assert_eq!(st, 200, "{doc}");
        specs.push(doc);
    }
    let (_, list) = r.get("/v1/nodes", token).await;
    let mut ids: Vec<Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| json!({"id": n["id"], "labels": n["labels"], "facts": n["facts"]}))
        .collect();
    ids.sort_by_key(|n| n["id"].as_str().unwrap().to_string());
    let (_, events) = r.get("/v1/events?limit=1000", token).await;
    Before {
        nodes: ids,
        specs,
        fragments: r.get("/v1/fragments", token).await.1,
        tokens: r.get("/v1/enrollment-tokens", token).await.1,
        events: events.as_array().unwrap().clone(),
        payload: r.get("/v1/payloads/app", token).await.1,
        rollouts: r.get("/v1/rollouts", token).await.1,
    }
}

/// Builds the old registry's records; returns the nodes (id, secret), an unused enrollment
/// token and the sha256 of payload version 2.
async fn populate(r: &Registry) -> (Vec<(String, String)>, String, String) {
    let mut nodes = Vec::new();
    for m in ["m1", "m2"] {
        nodes.push(r.enroll(m, json!({"role": "web"})).await);
    }
    nodes.sort();
    let (st, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"labels": {"role": "late"}})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    upload(r, "1", b"app version one").await;
    let sha2 = upload(r, "2", b"app version two, a little longer").await;
    let (st, fw) = r
        .req(Method::PUT, "/v1/fragments/base", Some(&r.admin),
             Some(json!({"selector": "role=web", "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}})))
        .await;
    assert_eq!(st, 200, "{fw}");
    for (id, _) in &nodes {
        let yaml = "payloads: [{name: app, version: '1', path: /opt/app/app.bin}]";
        let (st, w) = r
            .put_yaml(&format!("/v1/nodes/{id}/spec"), &r.admin, yaml)
            .await;
        assert_eq!(st, 200, "{w}");
    }
    let (st, ro) = r
        .req(
            Method::POST,
            "/v1/rollouts",
            Some(&r.admin),
            Some(
                json!({"payload": "app", "version": "2", "selector": "role=web",
                        "batch": "1", "timeout": "60s"}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{ro}");
    let done = drive_rollout(r, &nodes, ro["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "done");
    (nodes, tok["token"].as_str().unwrap().to_string(), sha2)
}

/// Checks one replica against what the old registry held.
async fn check_replica(r: &Registry, admin: &str, nodes: &[(String, String)], before: &Before) {
    let now = read_state(r, admin, nodes).await;
    assert_eq!(now.nodes, before.nodes, "nodes on {}", r.url(""));
    for (a, b) in now.specs.iter().zip(&before.specs) {
        assert_eq!(a, b, "spec (and generation) on {}", r.url(""));
    }
    assert_eq!(now.fragments, before.fragments);
    assert_eq!(now.tokens, before.tokens);
    assert_eq!(now.payload, before.payload);
    assert_eq!(now.rollouts, before.rollouts);
    // The old events keep their sequence numbers (new ones may follow).
    assert!(now.events.len() >= before.events.len());
    assert_eq!(now.events[..before.events.len()], before.events[..]);
    for (id, secret) in nodes {
        let (st, hb) = r
            .req(
                Method::POST,
                &format!("/v1/nodes/{id}/heartbeat"),
                Some(secret),
                Some(json!({"observed_generation": 1, "status_digest": ""})),
            )
            .await;
        assert_eq!(st, 200, "heartbeat of {id} on {}: {hb}", r.url(""));
    }
}

#[tokio::test]
async fn an_embedded_registry_migrated_to_etcd_is_served_by_two_replicas() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let mut a = Registry::start(&[]).await;
    let data = a.dir.path().join("data");
    let token_file = data.join("admin.token");
    let (nodes, unused_token, sha2) = populate(&a).await;
    let before = read_state(&a, &a.admin, &nodes).await;
    assert!(before.events.len() > 5, "{:?}", before.events);
    let url = etcd.url("");

    // While the registry runs, its store is locked: migrate says so.
    let o = migrate(&data, &url, &["--etcd-prefix", "/mig"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("still running"), "{}", text(&o));

    stop(&mut a);
    let o = migrate(&data, &url, &["--etcd-prefix", "/mig"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{}", text(&o));
    assert!(out.contains("every key read back and compared"), "{out}");
    assert!(out.contains("admin.token"), "{out}");
    assert!(out.contains("nodes ") && out.contains("rollouts "), "{out}");

    // Replica A on the old data dir (it holds the blobs), replica B on a fresh one.
    let store = [
        "--store",
        &url,
        "--etcd-prefix",
        "/mig",
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ];
    a.extra = store.iter().map(|s| s.to_string()).collect();
    a.extra.extend(["--replica-id".into(), "a".into()]);
    a.spawn().await;
    let mut b_args = store.to_vec();
    b_args.extend(["--replica-id", "b"]);
    let mut b = Registry::start(&b_args).await;
    b.admin = a.admin.clone();

    for r in [&a, &b] {
        check_replica(r, &a.admin, &nodes, &before).await;
    }
    // The blob was uploaded to the embedded registry; B fetches it from A.
    let resp = b
        .client
        .get(b.url(&format!("/v1/blobs/{sha2}")))
        .bearer_auth(&b.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&body)), sha2);
    // The token nobody used still enrols, on either replica.
    let (st, en) = b
        .req(
            Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": unused_token, "facts": {"machine_id": "m3", "hostname": "host-m3"}})),
        )
        .await;
    assert_eq!(st, 200, "{en}");
    stop(&mut b);
}

#[tokio::test]
async fn migrate_refuses_a_prefix_holding_data_unless_forced() {
    let Some(etcd) = EtcdCluster::shared().await else {
        return;
    };
    let mut r = Registry::start(&[]).await;
    r.enroll("m1", json!({"role": "db"})).await;
    stop(&mut r);
    let data = r.dir.path().join("data");
    let prefix = format!("/refuse-{}", uuid::Uuid::new_v4().simple());
    let url = etcd.url("");
    let o = migrate(&data, &url, &["--etcd-prefix", &prefix]);
    assert!(o.status.success(), "{}", text(&o));
    let o = migrate(&data, &url, &["--etcd-prefix", &prefix]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("already holds registry data") && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    let o = migrate(&data, &url, &["--etcd-prefix", &prefix, "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("deleted first"),
        "{}",
        text(&o)
    );
}
