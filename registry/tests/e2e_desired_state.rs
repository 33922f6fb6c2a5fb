//! End-to-end against the real registry binary: long-poll wake-ups, fragments, labels,
//! durability across kill -9 (specs and queued workload resets), enrolment and decommissioning.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};

/// Starts a long-poll for `id` after `after`; returns its task.
fn watch(
    r: &Registry,
    id: &str,
    secret: &str,
    after: u64,
    wait: &str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let client = r.client.clone();
    let url = r.url(&format!("/v1/nodes/{id}/spec?after={after}&wait={wait}"));
    let secret = secret.to_string();
    tokio::spawn(async move {
        let resp = client.get(url).bearer_auth(secret).send().await.unwrap();
        let st = resp.status().as_u16();
        (st, resp.json().await.unwrap_or(Value::Null))
    })
}

async fn assert_still_waiting(h: &tokio::task::JoinHandle<(u16, Value)>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !h.is_finished(),
        "the long-poll answered before anything changed"
    );
}

#[tokio::test]
async fn long_poll_wakes_on_spec_fragment_and_label_changes() {
    let r = Registry::start(&[]).await;
    let (id, secret) = r.enroll("m-longpoll", json!({"role": "web"})).await;

    // 1. A spec write wakes the watcher.
    let h = watch(&r, &id, &secret, 0, "30s");
    assert_still_waiting(&h).await;
    let (st, w) = r
        .put_yaml(
            &format!("/v1/nodes/{id}/spec"),
            &r.admin,
            "containers:\n  - {name: web, image: nginx:1.27}\n",
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let (st, doc) = tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(doc["generation"], 1);
    assert_eq!(doc["spec"]["containers"][0]["name"], "web");

    // 2. A fragment write that matches the node wakes it; one that does not match leaves it.
    let h = watch(&r, &id, &secret, 1, "30s");
    let (st, fw) = r
        .req(Method::PUT, "/v1/fragments/db-only", Some(&r.admin),
             Some(json!({"selector": "role=db", "spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}})))
        .await;
    assert_eq!(st, 200, "{fw}");
    assert_eq!(
        fw["affected"],
        json!([]),
        "a non-matching fragment must not bump anyone"
    );
    assert_still_waiting(&h).await;
    // Payload versions must exist before a spec names them (the registry pins their sha256).
    let up = r
        .client
        .put(r.url("/v1/payloads/tc/1.0"))
        .bearer_auth(&r.admin)
        .body("toolchain")
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 201);
    let (st, fw) = r
        .req(Method::PUT, "/v1/fragments/base", Some(&r.admin),
             Some(json!({"selector": "role=web", "spec": {"payloads": [{"name": "tc", "version": "1.0", "path": "/opt/tc"}]}})))
        .await;
    assert_eq!(st, 200, "{fw}");
    assert_eq!(fw["affected"][0]["node_id"], id.as_str());
    let (st, doc) = tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(doc["generation"], 2);
    assert_eq!(doc["fragments"], json!(["base"]));
    assert_eq!(doc["spec"]["payloads"][0]["name"], "tc");

    // 3. A label change that makes a fragment match wakes it.
    let h = watch(&r, &id, &secret, 2, "30s");
    assert_still_waiting(&h).await;
    let (st, _) = r
        .req(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(&r.admin),
            Some(json!({"labels": {"role": "db"}})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, doc) = tokio::time::timeout(Duration::from_secs(5), h)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(doc["generation"], 3);
    assert_eq!(
        doc["fragments"],
        json!(["db-only"]),
        "base no longer matches, db-only does"
    );
    let names: Vec<&str> = doc["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "pg"]);

    // 4. Nothing new: 304 after `wait`.
    let started = std::time::Instant::now();
    let (st, _) = watch(&r, &id, &secret, 3, "1s").await.unwrap();
    assert_eq!(st, 304);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "304 came before wait elapsed"
    );
    // Already newer: answers at once.
    let (st, doc) = watch(&r, &id, &secret, 0, "30s").await.unwrap();
    assert_eq!((st, doc["generation"].clone()), (200, json!(3)));
}

#[tokio::test]
async fn fragment_conflicts_are_refused_naming_both_sources() {
    let r = Registry::start(&[]).await;
    let (id, _) = r.enroll("m-conflict", json!({"role": "web"})).await;
    let (st, _) = r
        .put_yaml(
            &format!("/v1/nodes/{id}/spec"),
            &r.admin,
            "containers:\n  - {name: web, image: nginx}\n",
        )
        .await;
    assert_eq!(st, 200);
    let (st, err) = r
        .req(Method::PUT, "/v1/fragments/dup", Some(&r.admin),
             Some(json!({"selector": "role=web", "spec": {"containers": [{"name": "web", "image": "other"}]}})))
        .await;
    assert_eq!(st, 409, "{err}");
    let reason = err["problems"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("the node's own spec") && reason.contains("fragment \"dup\""),
        "{reason}"
    );
    // Refused as a whole: no fragment stored, generation unchanged.
    let (st, _) = r.get("/v1/fragments/dup", &r.admin).await;
    assert_eq!(st, 404);
    let (_, doc) = r.get(&format!("/v1/nodes/{id}/spec"), &r.admin).await;
    assert_eq!(doc["generation"], 1);
}

#[tokio::test]
async fn if_match_gives_optimistic_concurrency() {
    let r = Registry::start(&[]).await;
    let (id, _) = r.enroll("m-ifmatch", json!({})).await;
    let put = |gen: &str, yaml: &'static str| {
        r.client
            .put(r.url(&format!("/v1/nodes/{id}/spec")))
            .bearer_auth(&r.admin)
            .header("content-type", "application/yaml")
            .header("if-match", gen.to_string())
            .body(yaml)
            .send()
    };
    assert_eq!(
        put("0", "containers: [{name: a, image: x}]")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        put("0", "containers: [{name: b, image: x}]")
            .await
            .unwrap()
            .status(),
        412
    );
    assert_eq!(
        put("\"1\"", "containers: [{name: c, image: x}]")
            .await
            .unwrap()
            .status(),
        200
    );
    let (_, doc) = r.get(&format!("/v1/nodes/{id}/spec"), &r.admin).await;
    assert_eq!(doc["generation"], 2);
    assert_eq!(doc["own"]["containers"][0]["name"], "c");
}

#[tokio::test]
async fn spec_survives_kill_9_right_after_the_200() {
    let mut r = Registry::start(&[]).await;
    let (id, _) = r.enroll("m-durable", json!({})).await;
    for gen in 1..=5u64 {
        let yaml = format!("containers:\n  - {{name: c{gen}, image: busybox}}\n");
        let (st, w) = r
            .put_yaml(&format!("/v1/nodes/{id}/spec"), &r.admin, &yaml)
            .await;
        assert_eq!(st, 200);
        assert_eq!(w["generation"], gen);
        r.kill9();
        r.spawn().await;
        let (st, doc) = r.get(&format!("/v1/nodes/{id}/spec"), &r.admin).await;
        assert_eq!(st, 200);
        assert_eq!(doc["generation"], gen, "generation lost after kill -9");
        assert_eq!(doc["own"]["containers"][0]["name"], format!("c{gen}"));
    }
}

/// Sends an empty heartbeat as the node.
async fn heartbeat(r: &Registry, id: &str, secret: &str) -> (u16, Value) {
    r.req(
        Method::POST,
        &format!("/v1/nodes/{id}/heartbeat"),
        Some(secret),
        Some(json!({})),
    )
    .await
}

#[tokio::test]
async fn queued_reset_survives_a_restart_and_is_delivered_once() {
    let mut r = Registry::start(&[]).await;
    let (id, secret) = r.enroll("m-reset", json!({})).await;
    for name in ["web", "vm-1", "web"] {
        let (st, q) = r
            .req(
                Method::POST,
                &format!("/v1/nodes/{id}/workloads/{name}/reset"),
                Some(&r.admin),
                None,
            )
            .await;
        assert_eq!(st, 200, "{q}");
        assert_eq!(q["workload"], name);
    }
    // SIGKILL right after the 200s: the queue was durable before the answer.
    r.kill9();
    r.spawn().await;
    let (st, hb) = heartbeat(&r, &id, &secret).await;
    assert_eq!(st, 200, "{hb}");
    assert_eq!(
        hb["reset"],
        json!(["web", "vm-1"]),
        "queued resets lost in the restart or queued twice: {hb}"
    );
    let (st, hb) = heartbeat(&r, &id, &secret).await;
    assert_eq!(st, 200, "{hb}");
    let again = hb.get("reset").cloned().unwrap_or(json!([]));
    assert_eq!(
        again,
        json!([]),
        "a delivered reset was handed over again: {hb}"
    );
    // Nor does it come back after another restart.
    r.kill9();
    r.spawn().await;
    let (st, hb) = heartbeat(&r, &id, &secret).await;
    assert_eq!(st, 200, "{hb}");
    let again = hb.get("reset").cloned().unwrap_or(json!([]));
    assert_eq!(
        again,
        json!([]),
        "a delivered reset came back after a restart: {hb}"
    );
}

#[tokio::test]
async fn a_reset_of_one_kind_names_the_workload_in_its_event_and_in_the_heartbeat_answer() {
    let r = Registry::start(&[]).await;
    let (id, secret) = r.enroll("m-reset-kind", json!({})).await;
    let (st, q) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id}/workloads/web/reset?kind=vm"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200, "{q}");
    assert_eq!((&q["workload"], &q["kind"]), (&json!("web"), &json!("vm")));
    let (st, bad) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id}/workloads/web/reset?kind=lxc"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 400, "{bad}");
    assert!(bad.to_string().contains("kind"), "{bad}");
    let (_, ev) = r.get(&format!("/v1/events?node={id}"), &r.admin).await;
    let resets: Vec<&Value> = ev
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "workload-reset")
        .collect();
    assert_eq!(resets.len(), 1, "the refused reset recorded an event: {ev}");
    assert_eq!(resets[0]["workload"], json!({"kind": "vm", "name": "web"}));
    let (st, hb) = heartbeat(&r, &id, &secret).await;
    assert_eq!(st, 200, "{hb}");
    assert_eq!(
        hb["reset_workloads"],
        json!([{"kind": "vm", "name": "web"}]),
        "{hb}"
    );
    assert_eq!(
        hb.get("reset").cloned().unwrap_or(json!([])),
        json!([]),
        "{hb}"
    );
}

#[tokio::test]
async fn reenrolment_rotates_the_secret_and_decommission_revokes_it() {
    let r = Registry::start(&[]).await;
    let (id1, s1) = r.enroll("m-same", json!({"a": "1"})).await;
    // Enrolling the same machine again needs proof of being its node: the current secret
    // (without it: 409, see e2e_identity.rs).
    let (_, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"labels": {"b": "2"}})),
        )
        .await;
    let (st, en) = r
        .req(
            Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": tok["token"], "node_secret": s1,
                "facts": {"machine_id": "m-same", "hostname": "host-m-same"}})),
        )
        .await;
    assert_eq!(st, 200, "{en}");
    assert_eq!(en["rotated"], true);
    let id2 = en["node_id"].as_str().unwrap().to_string();
    let s2 = en["node_secret"].as_str().unwrap().to_string();
    assert_eq!(id1, id2, "the proven node keeps its id");
    assert_ne!(s1, s2);
    let hb = json!({"observed_generation": 0});
    let (st, _) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id1}/heartbeat"),
            Some(&s1),
            Some(hb.clone()),
        )
        .await;
    assert_eq!(st, 401, "the old secret must stop working");
    let (st, _) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id1}/heartbeat"),
            Some(&s2),
            Some(hb.clone()),
        )
        .await;
    assert_eq!(st, 200);
    let (_, nodes) = r.get("/v1/nodes", &r.admin).await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);

    let (st, n) = r
        .req(
            Method::DELETE,
            &format!("/v1/nodes/{id1}"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!((st, n["health"].as_str()), (200, Some("decommissioned")));
    let (st, _) = r
        .req(
            Method::POST,
            &format!("/v1/nodes/{id1}/heartbeat"),
            Some(&s2),
            Some(hb),
        )
        .await;
    assert_eq!(st, 401);
    let (st, n) = r.get(&format!("/v1/nodes/{id1}"), &r.admin).await;
    assert_eq!(
        (st, n["health"].as_str()),
        (200, Some("decommissioned")),
        "history kept"
    );
    let (_, ev) = r.get(&format!("/v1/events?node={id1}"), &r.admin).await;
    let kinds: Vec<&str> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["node-enrolled", "node-reenrolled", "node-decommissioned"]
    );
}

#[tokio::test]
async fn enrollment_tokens_are_limited_expire_and_revoke() {
    let r = Registry::start(&[]).await;
    let (_, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": 1})),
        )
        .await;
    let facts = |m: &str| json!({"token": tok["token"], "facts": {"machine_id": m, "hostname": m}});
    let (st, _) = r
        .req(Method::POST, "/v1/enroll", None, Some(facts("one")))
        .await;
    assert_eq!(st, 200);
    let (st, e) = r
        .req(Method::POST, "/v1/enroll", None, Some(facts("two")))
        .await;
    assert_eq!(st, 403);
    assert!(e["error"].as_str().unwrap().contains("no uses left"), "{e}");

    let (_, tok2) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": 5, "expires_in": "1s"})),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (st, e) = r
        .req(
            Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": tok2["token"], "facts": {"machine_id": "x", "hostname": "x"}})),
        )
        .await;
    assert_eq!(st, 403);
    assert!(e["error"].as_str().unwrap().contains("expired"), "{e}");

    let (_, tok3) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": 5})),
        )
        .await;
    let id3 = tok3["id"].as_str().unwrap();
    let (st, _) = r
        .req(
            Method::DELETE,
            &format!("/v1/enrollment-tokens/{id3}"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, e) = r
        .req(
            Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": tok3["token"], "facts": {"machine_id": "y", "hostname": "y"}})),
        )
        .await;
    assert_eq!(st, 403);
    assert!(e["error"].as_str().unwrap().contains("revoked"), "{e}");
    let (st, e) = r
        .req(
            Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": "nope.nope", "facts": {"machine_id": "y", "hostname": "y"}})),
        )
        .await;
    assert_eq!(st, 403, "{e}");
    // Listing never shows the token itself.
    let (_, list) = r.get("/v1/enrollment-tokens", &r.admin).await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert!(!list.to_string().contains(tok["token"].as_str().unwrap()));
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("token").is_none()));
}
