//! Handler tests on the router, in process: the authorisation matrix over every route and
//! credential kind, and the bad-input table (each refused write leaves the stored spec as it
//! was).
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::state::{AppState, Settings};
use crate::store::Store;

pub(super) const ADMIN: &str = "admin-token-0123456789";
pub(super) const READ: &str = "read-token-0123456789";

pub(super) struct Fx {
    pub(super) _dir: tempfile::TempDir,
    pub(super) state: AppState,
    pub(super) own: (String, String),
    pub(super) other: (String, String),
    pub(super) clock: std::sync::Arc<crate::clock::ManualClock>,
}

pub(super) async fn call(
    state: &AppState,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some((ct, text)) => b.header("content-type", ct).body(Body::from(text)).unwrap(),
        None => b.body(Body::empty()).unwrap(),
    };
    let resp = super::router(state.clone(), 64 * 1024)
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub(super) fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

pub(super) async fn enroll(state: &AppState, machine: &str) -> (String, String) {
    let (st, tok) = call(
        state,
        Method::POST,
        "/v1/enrollment-tokens",
        Some(ADMIN),
        Some(("application/json", "{}".into())),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let body =
        json!({"token": tok["token"], "facts": {"machine_id": machine, "hostname": machine}});
    let (st, en) = call(
        state,
        Method::POST,
        "/v1/enroll",
        None,
        Some(("application/json", body.to_string())),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{en}");
    (
        en["node_id"].as_str().unwrap().into(),
        en["node_secret"].as_str().unwrap().into(),
    )
}

pub(super) async fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let clock = crate::clock::ManualClock::new(chrono::Utc::now());
    let state = AppState::with_clock(
        Settings::default(),
        store,
        dir.path(),
        ADMIN,
        Some(READ),
        clock.clone(),
    )
    .await
    .unwrap();
    crate::replica::follow_store(&state, state.loaded_at + 1)
        .await
        .unwrap();
    let own = enroll(&state, "own-machine").await;
    let other = enroll(&state, "other-machine").await;
    let frag = json!({"selector": "x=y", "spec": {}}).to_string();
    let (st, _) = call(
        &state,
        Method::PUT,
        "/v1/fragments/f1",
        Some(ADMIN),
        Some(("application/json", frag)),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    // Payload f1: version 1 referenced by the own node's spec, version 2 by nothing.
    for (v, content) in [("1", "one"), ("2", "two")] {
        let (st, body) = call(
            &state,
            Method::PUT,
            &format!("/v1/payloads/f1/{v}"),
            Some(ADMIN),
            Some(("application/octet-stream", content.into())),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
    let (st, body) = call(
        &state,
        Method::PUT,
        &format!("/v1/nodes/{}/spec", own.0),
        Some(ADMIN),
        Some((
            "application/yaml",
            "payloads: [{name: f1, version: '1', path: /opt/f1}]".into(),
        )),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    Fx {
        _dir: dir,
        state,
        own,
        other,
        clock,
    }
}

#[tokio::test]
async fn public_routes_need_no_credential() {
    let fx = fixture().await;
    for path in ["/healthz", "/readyz", "/v1/openapi.json", "/v1/packages"] {
        let (st, _) = call(&fx.state, Method::GET, path, None, None).await;
        assert_eq!(st, StatusCode::OK, "{path}");
    }
}

/// One case per validation rule: (spec YAML, field that must be named).
const BAD_SPECS: &[(&str, &str)] = &[
    ("containers: [{name: 'bad name', image: busybox}]", "containers[0].name"),
    ("containers: [{name: a, image: 'UPPER/Case'}]", "containers[0].image"),
    ("containers: [{name: a, image: busybox, ports: ['70000:80']}]", "containers[0].ports[0]"),
    ("containers: [{name: a, image: busybox, ports: ['80/sctp']}]", "containers[0].ports[0]"),
    ("containers: [{name: a, image: busybox, resources: {memory: 12Zi}}]", "containers[0].resources.memory"),
    ("containers: [{name: a, image: busybox, resources: {cpus: -1}}]", "containers[0].resources.cpus"),
    ("containers: [{name: a, image: busybox, volumes: ['data:relative']}]", "containers[0].volumes[0]"),
    ("containers: [{name: a, image: busybox, colour: red}]", "containers[0].colour"),
    ("networks: {vlans: [{name: v1, parent: eth1, id: 4095}]}", "networks.vlans[0].id"),
    ("networks: {vlans: [{name: v1, parent: eth1, id: 0}]}", "networks.vlans[0].id"),
    ("networks: {bridges: [{name: thisnameiswaytoolong}]}", "networks.bridges[0].name"),
    ("networks: {bridges: [{name: 'br/0'}]}", "networks.bridges[0].name"),
    ("networks: {bridges: [{name: br0, addresses: [10.0.0.1/33]}]}", "networks.bridges[0].addresses[0]"),
    ("networks: {bridges: [{name: br0, mtu: 20}]}", "networks.bridges[0].mtu"),
    ("networks: {bridges: [{name: br0, vlan_filtering: true, ports: [{iface: eth2, vlans: [{id: 5000}]}]}]}", "networks.bridges[0].ports[0].vlans[0].id"),
    ("vms: [{name: vm1, image: relative.qcow2, memory: 1Gi}]", "vms[0].image"),
    ("vms: [{name: vm1, image: /i.qcow2, memory: lots}]", "vms[0].memory"),
    ("payloads: [{name: p, version: '1', path: /opt/../etc/passwd}]", "payloads[0].path"),
    ("payloads: [{name: p, version: '1', path: relative/file}]", "payloads[0].path"),
    ("payloads: [{name: p, version: '1', path: /opt/p, sha256: XYZ}]", "payloads[0].sha256"),
    ("payloads: [{name: p, version: '1', path: /opt/p, mode: '999'}]", "payloads[0].mode"),
];

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let fx = fixture().await;
    let id = &fx.own.0;
    let uri = format!("/v1/nodes/{id}/spec");
    let good = "containers: [{name: keep, image: busybox}]";
    let (st, _) = call(
        &fx.state,
        Method::PUT,
        &uri,
        Some(ADMIN),
        Some(("application/yaml", good.into())),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (_, before) = call(&fx.state, Method::GET, &uri, Some(ADMIN), None).await;
    for (yaml, field) in BAD_SPECS {
        let (st, err) = call(
            &fx.state,
            Method::PUT,
            &uri,
            Some(ADMIN),
            Some(("application/yaml", yaml.to_string())),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{yaml}: {err}");
        let fields: Vec<&str> = err["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(field),
            "{yaml}: expected a problem on {field}, got {fields:?}"
        );
        assert!(err["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["reason"].as_str().unwrap().is_empty()));
        let (_, after) = call(&fx.state, Method::GET, &uri, Some(ADMIN), None).await;
        assert_eq!(
            after, before,
            "a refused spec changed the stored one: {yaml}"
        );
    }
    // Other inputs: labels, tokens, selectors, query parameters, bodies.
    type Case<'a> = (Method, String, Option<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::PATCH,
            format!("/v1/nodes/{id}"),
            Some((
                "application/json",
                json!({"labels": {"bad key!": "v"}}).to_string(),
            )),
            "labels.bad key!",
        ),
        (
            Method::POST,
            "/v1/enrollment-tokens".into(),
            Some(("application/json", json!({"uses": 0}).to_string())),
            "uses",
        ),
        (
            Method::POST,
            "/v1/enrollment-tokens".into(),
            Some((
                "application/json",
                json!({"expires_in": "soon"}).to_string(),
            )),
            "expires_in",
        ),
        (
            Method::PUT,
            "/v1/fragments/f2".into(),
            Some((
                "application/json",
                json!({"selector": "a b", "spec": {}}).to_string(),
            )),
            "selector",
        ),
        (
            Method::PUT,
            "/v1/fragments/f2".into(),
            Some((
                "application/json",
                json!({"selector": "", "spec": {"containers": [{"name": "x", "image": "BAD"}]}})
                    .to_string(),
            )),
            "spec.containers[0].image",
        ),
        (
            Method::GET,
            "/v1/nodes?selector=a%20b".into(),
            None,
            "selector",
        ),
        (
            Method::GET,
            "/v1/nodes?health=sleepy".into(),
            None,
            "health",
        ),
        (
            Method::GET,
            format!("/v1/nodes/{id}/spec?after=x"),
            None,
            "after",
        ),
        (
            Method::GET,
            format!("/v1/nodes/{id}/spec?after=1&wait=forever"),
            None,
            "wait",
        ),
        (
            Method::PUT,
            uri.clone(),
            Some(("application/json", "{not json".into())),
            "(document)",
        ),
    ];
    for (m, u, body, field) in cases {
        let (st, err) = call(&fx.state, m.clone(), &u, Some(ADMIN), body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{m} {u}: {err}");
        let fields: Vec<&str> = err["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&field),
            "{m} {u}: expected {field}, got {fields:?}"
        );
    }
    let (_, after) = call(&fx.state, Method::GET, &uri, Some(ADMIN), None).await;
    assert_eq!(after, before);
    let (st, _) = call(
        &fx.state,
        Method::GET,
        "/v1/fragments/f2",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let fx = fixture().await;
    let big = format!("{{\"labels\": {{\"k\": \"{}\"}}}}", "x".repeat(100 * 1024));
    let (st, _) = call(
        &fx.state,
        Method::PATCH,
        &format!("/v1/nodes/{}", fx.own.0),
        Some(ADMIN),
        Some(("application/json", big)),
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn decommission_drops_queued_resets() {
    let fx = fixture().await;
    for id in [&fx.own.0, &fx.other.0] {
        let (st, body) = call(
            &fx.state,
            Method::POST,
            &format!("/v1/nodes/{id}/workloads/web/reset"),
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
    let (st, body) = call(
        &fx.state,
        Method::DELETE,
        &format!("/v1/nodes/{}", fx.own.0),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(fx
        .state
        .store
        .take_resets(&fx.own.0)
        .await
        .unwrap()
        .is_empty());
    // Another node's queue is untouched.
    assert_eq!(
        fx.state.store.take_resets(&fx.other.0).await.unwrap(),
        vec!["web"]
    );
}

/// A heartbeat number too large for its type (parsed as infinity) or negative is refused
/// naming the field, and the node's record stays readable (schemathesis found a stored
/// infinity that made `GET /v1/nodes/{id}` answer 500).
#[tokio::test]
async fn heartbeat_numbers_must_be_finite_and_not_negative() {
    let fx = fixture().await;
    let (id, secret) = (&fx.own.0, &fx.own.1);
    let uri = format!("/v1/nodes/{id}/heartbeat");
    let hb = |extra: Value| {
        let mut v = json!({"observed_generation": 0, "status_digest": ""});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Some(("application/json", v.to_string()))
    };
    for (extra, field) in [
        (json!({"stats": {"cpu_percent": 1e40}}), "stats.cpu_percent"),
        (json!({"stats": {"load5": -1.0}}), "stats.load5"),
        (json!({"rtt_ms": -7.7e15}), "rtt_ms"),
    ] {
        let (st, err) = call(
            &fx.state,
            Method::POST,
            &uri,
            Some(secret),
            hb(extra.clone()),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{extra}: {err}");
        assert_eq!(err["problems"][0]["field"], field, "{err}");
    }
    let (st, _) = call(
        &fx.state,
        Method::POST,
        &uri,
        Some(secret),
        hb(json!({"stats": {"cpu_percent": 12.5, "load1": 0.5}, "rtt_ms": 1.5})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, node) = call(
        &fx.state,
        Method::GET,
        &format!("/v1/nodes/{id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{node}");
}

/// Enrollment tokens and re-enrolment grants expire on the registry's clock (moved by hand).
#[tokio::test]
async fn tokens_and_grants_expire_on_the_injected_clock() {
    let fx = fixture().await;
    let (st, tok) = call(
        &fx.state,
        Method::POST,
        "/v1/enrollment-tokens",
        Some(ADMIN),
        Some(("application/json", json!({"expires_in": "1h"}).to_string())),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{tok}");
    let (st, grant) = call(
        &fx.state,
        Method::POST,
        &format!("/v1/nodes/{}/reenroll", fx.own.0),
        Some(ADMIN),
        Some(("application/json", json!({"expires": "30m"}).to_string())),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{grant}");
    fx.clock.advance(std::time::Duration::from_secs(3600));
    let enrol = |token: &Value, machine: &str| {
        json!({"token": token, "facts": {"machine_id": machine, "hostname": machine}}).to_string()
    };
    let (st, e) = call(
        &fx.state,
        Method::POST,
        "/v1/enroll",
        None,
        Some(("application/json", enrol(&tok["token"], "new-machine"))),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{e}");
    assert!(e["error"].as_str().unwrap().contains("expired"), "{e}");
    let (st, e) = call(
        &fx.state,
        Method::POST,
        "/v1/enroll",
        None,
        Some(("application/json", enrol(&grant["grant"], "own-machine"))),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{e}");
    assert!(e["error"].as_str().unwrap().contains("expired"), "{e}");
}
