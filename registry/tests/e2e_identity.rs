//! End-to-end, on the real registry binary: a node's identity is not for the taking. A machine
//! id (not a secret) plus any enrollment token is refused for an enrolled node (409, nothing
//! spent, nothing changed, an event recorded); the node's current secret or an admin's
//! one-time re-enrolment grant re-enrols it; the machine id is shown to the admin and the node
//! only.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};

const READ_TOKEN: &str = "read-token-for-the-identity-test-0123456789";

/// A registry with a read token; the directory holds its file (kept for restarts).
async fn start() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("read.token");
    std::fs::write(&rt, READ_TOKEN).unwrap();
    let r = Registry::start(&["--read-token-file", rt.to_str().unwrap()]).await;
    (r, dir)
}

async fn token(r: &Registry, uses: u32, labels: Value) -> Value {
    let (st, t) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": uses, "labels": labels})),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    t
}

fn body(token: &Value, machine: &str, hostname: &str) -> Value {
    json!({"token": token["token"], "facts": {"machine_id": machine, "hostname": hostname}})
}

async fn enroll(r: &Registry, body: Value) -> (u16, Value) {
    r.req(Method::POST, "/v1/enroll", None, Some(body)).await
}

async fn heartbeat(r: &Registry, id: &str, secret: &str) -> u16 {
    r.req(
        Method::POST,
        &format!("/v1/nodes/{id}/heartbeat"),
        Some(secret),
        Some(json!({"observed_generation": 0})),
    )
    .await
    .0
}

async fn uses_left(r: &Registry, t: &Value) -> u64 {
    let (_, list) = r.get("/v1/enrollment-tokens", &r.admin).await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == t["id"])
        .unwrap()["uses_left"]
        .as_u64()
        .unwrap()
}

async fn events(r: &Registry, kind: &str) -> Vec<Value> {
    let (_, evs) = r.get("/v1/events?limit=1000", &r.admin).await;
    evs.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

async fn grant(r: &Registry, node: &str, body: Option<Value>) -> (u16, Value) {
    r.req(
        Method::POST,
        &format!("/v1/nodes/{node}/reenroll"),
        Some(&r.admin),
        body,
    )
    .await
}

#[tokio::test]
async fn a_machine_id_and_another_token_do_not_take_a_node_over() {
    let (r, _rt) = start().await;
    let t1 = token(&r, 1, json!({"role": "web"})).await;
    let (st, a) = enroll(&r, body(&t1, "machine-a", "host-a")).await;
    assert_eq!(st, 200, "{a}");
    let (id, secret) = (
        a["node_id"].as_str().unwrap(),
        a["node_secret"].as_str().unwrap(),
    );

    // The attacker: A's machine id (world-readable on A) and a token made for other labels.
    let t2 = token(&r, 3, json!({"role": "attacker"})).await;
    let (st, e) = enroll(&r, body(&t2, "machine-a", "evil")).await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["code"], "conflict");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains(id), "names the node: {msg}");
    assert!(msg.contains("node_secret"), "names the proof: {msg}");
    assert!(
        msg.contains(&format!("stewardctl nodes reenroll {id}")),
        "names the grant: {msg}"
    );
    assert!(
        msg.contains(&format!("stewardctl nodes delete {id}")),
        "names decommissioning: {msg}"
    );
    assert!(e.get("node_secret").is_none());

    // Nothing changed: A still works, keeps its hostname and labels; t2 keeps its uses.
    assert_eq!(heartbeat(&r, id, secret).await, 200);
    let (_, node) = r.get(&format!("/v1/nodes/{id}"), &r.admin).await;
    assert_eq!(node["hostname"], "host-a");
    assert_eq!(node["labels"], json!({"role": "web"}));
    assert_eq!(uses_left(&r, &t2).await, 3);
    let (_, nodes) = r.get("/v1/nodes", &r.admin).await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);

    // The attempt is in the event log, with the node and the client, without the token.
    let refused = events(&r, "enroll-refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["node_id"], id);
    let text = refused[0]["message"].as_str().unwrap();
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(text.contains(t2["id"].as_str().unwrap()), "{text}");
    let t2_secret = t2["token"].as_str().unwrap().split('.').nth(1).unwrap();
    assert!(!refused[0].to_string().contains(t2_secret));
    assert!(!r.log().contains(t2_secret), "a token reached the log");

    // A wrong node_secret is refused too (403), spending nothing, and recorded.
    let mut wrong = body(&t2, "machine-a", "evil");
    wrong["node_secret"] = json!(format!("{id}.{}", "0".repeat(64)));
    let (st, e) = enroll(&r, wrong).await;
    assert_eq!(st, 403, "{e}");
    assert_eq!(e["code"], "enrollment_refused");
    assert_eq!(heartbeat(&r, id, secret).await, 200);
    assert_eq!(uses_left(&r, &t2).await, 3);
    assert_eq!(events(&r, "enroll-refused").await.len(), 2);

    // An unknown token is still refused first (403), before any machine id is looked at.
    let (st, _) = enroll(
        &r,
        json!({"token": "nope.nope", "facts": {"machine_id": "machine-a", "hostname": "x"}}),
    )
    .await;
    assert_eq!(st, 403);

    // A new machine with t2 is a new node, with t2's labels.
    let (st, b) = enroll(&r, body(&t2, "machine-b", "host-b")).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["rotated"], false);
    assert_ne!(b["node_id"], a["node_id"]);
    assert_eq!(uses_left(&r, &t2).await, 2);
}

#[tokio::test]
async fn the_current_secret_re_enrols_and_rotates() {
    let (r, _rt) = start().await;
    let (id, old) = r.enroll("machine-a", json!({"role": "web"})).await;
    let t = token(&r, 1, json!({"extra": "yes"})).await;
    let mut req = body(&t, "machine-a", "host-a-renamed");
    req["node_secret"] = json!(old);
    let (st, en) = enroll(&r, req.clone()).await;
    assert_eq!(st, 200, "{en}");
    assert_eq!(en["rotated"], true);
    assert_eq!(en["node_id"], id.as_str());
    let new = en["node_secret"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(
        heartbeat(&r, &id, &old).await,
        401,
        "the old secret is revoked"
    );
    assert_eq!(heartbeat(&r, &id, new).await, 200);
    let (_, node) = r.get(&format!("/v1/nodes/{id}"), &r.admin).await;
    assert_eq!(node["hostname"], "host-a-renamed");
    assert_eq!(node["labels"], json!({"role": "web", "extra": "yes"}));
    assert_eq!(uses_left(&r, &t).await, 0, "a re-enrolment uses the token");
    assert_eq!(events(&r, "node-reenrolled").await.len(), 1);

    // The old secret proves nothing any more.
    let t = token(&r, 1, json!({})).await;
    req["token"] = t["token"].clone();
    let (st, e) = enroll(&r, req).await;
    assert_eq!(st, 403, "{e}");
    assert_eq!(heartbeat(&r, &id, new).await, 200);
    assert_eq!(uses_left(&r, &t).await, 1);
}

#[tokio::test]
async fn a_grant_re_enrols_a_reinstalled_host_once() {
    let (mut r, _rt) = start().await;
    let (id, old) = r.enroll("machine-a", json!({"role": "web"})).await;
    let (st, g) = grant(&r, &id, Some(json!({"expires": "1h"}))).await;
    assert_eq!(st, 201, "{g}");
    assert_eq!(g["node_id"], id.as_str());
    let secret = g["grant"].as_str().unwrap().to_string();
    assert!(secret.starts_with("reenroll-"), "{secret}");
    // Shown once: stored hashed, never in the events or the log.
    let hidden = secret.split('.').nth(1).unwrap().to_string();
    let (_, evs) = r.get("/v1/events?limit=1000", &r.admin).await;
    assert!(!evs.to_string().contains(&hidden));
    assert_eq!(events(&r, "reenroll-grant-created").await.len(), 1);

    // Grants survive a registry restart (kill -9: the answer came after the flush).
    r.kill9();
    r.spawn().await;

    // The reinstalled host has a new machine id; the grant is its token.
    let req =
        json!({"token": secret, "facts": {"machine_id": "machine-a-new", "hostname": "host-a2"}});
    let (st, en) = enroll(&r, req.clone()).await;
    assert_eq!(st, 200, "{en}");
    assert_eq!(en["node_id"], id.as_str());
    assert_eq!(en["rotated"], true);
    let new = en["node_secret"].as_str().unwrap();
    assert_eq!(heartbeat(&r, &id, new).await, 200);
    assert_eq!(heartbeat(&r, &id, &old).await, 401);
    let (_, node) = r.get(&format!("/v1/nodes/{id}"), &r.admin).await;
    assert_eq!(node["facts"]["machine_id"], "machine-a-new");
    assert_eq!(node["hostname"], "host-a2");
    assert_eq!(node["labels"], json!({"role": "web"}));

    // Single use.
    let (st, e) = enroll(&r, req).await;
    assert_eq!(st, 403, "{e}");
    assert_eq!(heartbeat(&r, &id, new).await, 200);

    // The node's old machine id no longer names it: a plain token makes a new node there,
    // and the node's new machine id is protected like any other.
    let t = token(&r, 2, json!({})).await;
    let (st, fresh) = enroll(&r, body(&t, "machine-a", "other")).await;
    assert_eq!(st, 200, "{fresh}");
    assert_ne!(fresh["node_id"], id.as_str());
    let (st, _) = enroll(&r, body(&t, "machine-a-new", "evil")).await;
    assert_eq!(st, 409);

    // A grant cannot move a node onto another live node's machine id.
    let (_, g) = grant(&r, &id, None).await;
    let (st, e) = enroll(
        &r,
        json!({"token": g["grant"], "facts": {"machine_id": "machine-a", "hostname": "x"}}),
    )
    .await;
    assert_eq!(st, 409, "{e}");
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains(fresh["node_id"].as_str().unwrap()));
    assert_eq!(heartbeat(&r, &id, new).await, 200);

    log_has_no(&r, &hidden);
}

fn log_has_no(r: &Registry, secret: &str) {
    assert!(!r.log().contains(secret), "a secret reached the log");
}

#[tokio::test]
async fn grants_expire_are_for_live_nodes_only_and_admin_only() {
    let (r, _rt) = start().await;
    let (id, secret) = r.enroll("machine-a", json!({})).await;
    let (other, other_secret) = r.enroll("machine-b", json!({})).await;

    // Expired.
    let (st, g) = grant(&r, &id, Some(json!({"expires": "1s"}))).await;
    assert_eq!(st, 201, "{g}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (st, e) = enroll(
        &r,
        json!({"token": g["grant"], "facts": {"machine_id": "machine-a", "hostname": "x"}}),
    )
    .await;
    assert_eq!(st, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("expired"), "{e}");
    assert_eq!(heartbeat(&r, &id, &secret).await, 200);

    // Bad lifetimes, unknown and decommissioned nodes.
    for bad in ["8d", "0s", "soon"] {
        let (st, e) = grant(&r, &id, Some(json!({"expires": bad}))).await;
        assert_eq!(st, 400, "{bad}: {e}");
        assert_eq!(e["problems"][0]["field"], "expires", "{e}");
    }
    let (st, _) = grant(&r, "no-such-node", None).await;
    assert_eq!(st, 404);
    let (st, g_other) = grant(&r, &other, None).await;
    assert_eq!(st, 201);
    let (st, _) = r
        .req(
            Method::DELETE,
            &format!("/v1/nodes/{other}"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, e) = grant(&r, &other, None).await;
    assert_eq!(st, 409, "{e}");
    // A grant issued before the node was decommissioned is refused too.
    let (st, e) = enroll(
        &r,
        json!({"token": g_other["grant"], "facts": {"machine_id": "machine-b", "hostname": "b"}}),
    )
    .await;
    assert_eq!(st, 403, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("decommissioned"),
        "{e}"
    );
    // Decommissioning frees the machine id: a plain token enrols it as a new node.
    let t = token(&r, 1, json!({})).await;
    let (st, en) = enroll(&r, body(&t, "machine-b", "b")).await;
    assert_eq!(st, 200, "{en}");
    assert_eq!(en["rotated"], false);
    assert_ne!(en["node_id"], other.as_str());

    // Only the admin issues grants.
    for (who, cred) in [
        ("read", READ_TOKEN),
        ("own node", secret.as_str()),
        ("other node", other_secret.as_str()),
    ] {
        let (st, e) = r
            .req(
                Method::POST,
                &format!("/v1/nodes/{id}/reenroll"),
                Some(cred),
                None,
            )
            .await;
        let want = if who == "other node" { 401 } else { 403 };
        assert_eq!(st, want, "{who}: {e}");
    }
    let (st, _) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id}/reenroll"),
            None,
            None,
        )
        .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn machine_ids_are_shown_to_the_admin_and_the_node_only() {
    let (r, _rt) = start().await;
    let t = token(&r, 1, json!({})).await;
    let (st, en) = enroll(&r, body(&t, "machine-secretish-0123", "web-1")).await;
    assert_eq!(st, 200, "{en}");
    let id = en["node_id"].as_str().unwrap().to_string();
    let secret = en["node_secret"].as_str().unwrap().to_string();
    let (_, list) = r.get("/v1/nodes", READ_TOKEN).await;
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["facts"]["machine_id"], "");
    let (_, one) = r.get(&format!("/v1/nodes/{id}"), READ_TOKEN).await;
    assert_eq!(one["facts"]["machine_id"], "");
    assert_eq!(one["hostname"], "web-1");
    for cred in [r.admin.as_str(), secret.as_str()] {
        let (_, one) = r.get(&format!("/v1/nodes/{id}"), cred).await;
        assert_eq!(one["facts"]["machine_id"], "machine-secretish-0123");
    }
    let (_, list) = r.get("/v1/nodes", &r.admin).await;
    assert_eq!(list[0]["facts"]["machine_id"], "machine-secretish-0123");
    // Nor in the events, nor on the status page.
    let (_, evs) = r.get("/v1/events", READ_TOKEN).await;
    assert!(!evs.to_string().contains("machine-secretish"), "{evs}");
    for path in ["/".to_string(), format!("/nodes/{id}")] {
        let page = r
            .client
            .get(r.url(&path))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let html = page.text().await.unwrap();
        assert!(html.contains("web-1"), "{path}");
        assert!(!html.contains("machine-secretish"), "{path}: {html}");
    }
}

#[tokio::test]
async fn stewardctl_prints_a_grant_that_re_enrols_the_node() {
    let (r, _rt) = start().await;
    let (id, _) = r.enroll("machine-a", json!({})).await;
    let ctl = |args: &[&str], token: &str| r.ctl(token, args);
    let out = ctl(&["nodes", "reenroll", &id, "--expires", "30m"], &r.admin);
    assert!(out.status.success(), "{out:?}");
    let grant = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        grant.starts_with("reenroll-"),
        "only the grant on stdout: {grant}"
    );
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains(&id) && note.contains("one use"), "{note}");
    let (st, en) = enroll(
        &r,
        json!({"token": grant, "facts": {"machine_id": "machine-a", "hostname": "a"}}),
    )
    .await;
    assert_eq!(st, 200, "{en}");
    assert_eq!(en["node_id"], id.as_str());

    // Refusals keep their exit codes and messages.
    let out = ctl(&["nodes", "reenroll", &id, "--expires", "8d"], &r.admin);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expires"),
        "{out:?}"
    );
    let out = ctl(&["nodes", "reenroll", &id], READ_TOKEN);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}
