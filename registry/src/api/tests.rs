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

struct Fx {
    _dir: tempfile::TempDir,
    state: AppState,
    own: (String, String),
    other: (String, String),
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

fn hex_sha256(b: &[u8]) -> String {
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

async fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = AppState::new(Settings::default(), store, dir.path(), ADMIN, Some(READ))
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
    }
}

/// Who may call what, written out by hand (not derived from the route table), in the order
/// none, wrong, admin, read, own node, other node. `true` = allowed.
fn expectations() -> Vec<(Method, &'static str, [bool; 4])> {
    use Method as M;
    //                                                  admin  read   own    other
    vec![
        (
            M::POST,
            "/v1/enrollment-tokens",
            [true, false, false, false],
        ),
        (M::GET, "/v1/enrollment-tokens", [true, true, false, false]),
        (
            M::DELETE,
            "/v1/enrollment-tokens/{id}",
            [true, false, false, false],
        ),
        (M::GET, "/v1/nodes", [true, true, false, false]),
        (M::GET, "/v1/nodes/{id}", [true, true, true, false]),
        (M::PATCH, "/v1/nodes/{id}", [true, false, false, false]),
        (M::DELETE, "/v1/nodes/{id}", [true, false, false, false]),
        (
            M::POST,
            "/v1/nodes/{id}/reenroll",
            [true, false, false, false],
        ),
        (M::GET, "/v1/nodes/{id}/spec", [true, true, true, false]),
        (M::PUT, "/v1/nodes/{id}/spec", [true, false, false, false]),
        (
            M::POST,
            "/v1/nodes/{id}/heartbeat",
            [false, false, true, false],
        ),
        (M::PUT, "/v1/nodes/{id}/status", [false, false, true, false]),
        (
            M::POST,
            "/v1/nodes/{id}/workloads/{name}/reset",
            [true, false, false, false],
        ),
        (M::GET, "/v1/fragments", [true, true, false, false]),
        (M::GET, "/v1/fragments/{name}", [true, true, false, false]),
        (M::PUT, "/v1/fragments/{name}", [true, false, false, false]),
        (
            M::DELETE,
            "/v1/fragments/{name}",
            [true, false, false, false],
        ),
        (
            M::PUT,
            "/v1/payloads/{name}/{version}",
            [true, false, false, false],
        ),
        (M::GET, "/v1/payloads", [true, true, false, false]),
        (M::GET, "/v1/payloads/{name}", [true, true, false, false]),
        (
            M::GET,
            "/v1/payloads/{name}/{version}",
            [true, true, false, false],
        ),
        (
            M::DELETE,
            "/v1/payloads/{name}/{version}",
            [true, false, false, false],
        ),
        // A node may download only blobs its own spec references (the own node's does).
        (M::GET, "/v1/blobs/{sha256}", [true, true, true, false]),
        (M::PUT, "/v1/blobs/{sha256}", [true, false, false, false]),
        (M::POST, "/v1/rollouts", [true, false, false, false]),
        (M::GET, "/v1/rollouts", [true, true, false, false]),
        (M::GET, "/v1/rollouts/{rollout}", [true, true, false, false]),
        (
            M::POST,
            "/v1/rollouts/{rollout}/pause",
            [true, false, false, false],
        ),
        (
            M::POST,
            "/v1/rollouts/{rollout}/resume",
            [true, false, false, false],
        ),
        (
            M::POST,
            "/v1/rollouts/{rollout}/abort",
            [true, false, false, false],
        ),
        (
            M::POST,
            "/v1/rollouts/{rollout}/rollback",
            [true, false, false, false],
        ),
        (M::GET, "/v1/events", [true, true, false, false]),
        (M::GET, "/v1/events/stream", [true, true, false, false]),
    ]
}

const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/enroll"),
    ("GET", "/install.sh"),
    ("GET", "/v1/packages"),
    ("GET", "/packages/{file}"),
];

fn body_for(method: &Method, path: &str) -> Option<(&'static str, String)> {
    let json = |v: Value| Some(("application/json", v.to_string()));
    match (method.as_str(), path) {
        ("POST", "/v1/enrollment-tokens") => json(json!({"uses": 1})),
        ("PATCH", _) => json(json!({"labels": {"k": "v"}})),
        ("PUT", "/v1/nodes/{id}/spec") => Some((
            "application/yaml",
            "containers: [{name: a, image: busybox}]".into(),
        )),
        ("POST", "/v1/nodes/{id}/heartbeat") => json(json!({"observed_generation": 0})),
        ("PUT", "/v1/nodes/{id}/status") => json(json!({"observed_generation": 0, "digest": "d"})),
        ("PUT", "/v1/fragments/{name}") => json(json!({"selector": "x=y", "spec": {}})),
        ("POST", "/v1/rollouts") => json(json!({"payload": "f1", "version": "2", "timeout": "1h"})),
        ("PUT", "/v1/payloads/{name}/{version}") => {
            Some(("application/octet-stream", "two".into()))
        }
        // A replica's copy: the path's sha256 is that of "one".
        ("PUT", "/v1/blobs/{sha256}") => Some(("application/octet-stream", "one".into())),
        _ => None,
    }
}

#[tokio::test]
async fn route_table_is_the_documented_one() {
    let mut documented: Vec<String> = expectations()
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    documented.extend(PUBLIC.iter().map(|(m, p)| format!("{m} {p}")));
    documented.sort();
    let mut actual: Vec<String> = super::routes()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    actual.sort();
    assert_eq!(
        actual, documented,
        "a route was added or removed without updating the auth matrix"
    );

    // The OpenAPI document lists exactly the routes of the router.
    let doc = super::openapi::document();
    let mut in_doc: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {p}", m.to_uppercase()))
        })
        .collect();
    in_doc.sort();
    assert_eq!(in_doc, actual);
    // Every schema it names is defined.
    let text = doc.to_string();
    for r in text.split("#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "schema {name} is not defined"
        );
    }
}

#[tokio::test]
async fn auth_matrix_every_route_and_credential() {
    for (method, path, allowed) in expectations() {
        // A fresh registry per route so destructive calls do not affect the next rows.
        let fx = fixture().await;
        let (_, tok) = call(
            &fx.state,
            Method::POST,
            "/v1/enrollment-tokens",
            Some(ADMIN),
            Some(("application/json", "{}".into())),
        )
        .await;
        let rollout = if path.contains("{rollout}") {
            let body = body_for(&Method::POST, "/v1/rollouts");
            let (st, r) = call(&fx.state, Method::POST, "/v1/rollouts", Some(ADMIN), body).await;
            assert_eq!(st, StatusCode::CREATED, "{r}");
            let id = r["id"].as_str().unwrap().to_string();
            if path.ends_with("/resume") {
                let (st, r) = call(
                    &fx.state,
                    Method::POST,
                    &format!("/v1/rollouts/{id}/pause"),
                    Some(ADMIN),
                    None,
                )
                .await;
                assert_eq!(st, StatusCode::OK, "{r}");
            }
            id
        } else {
            String::new()
        };
        let uri = path
            .replace("{rollout}", &rollout)
            .replace(
                "{id}",
                if path.starts_with("/v1/enrollment-tokens") {
                    tok["id"].as_str().unwrap()
                } else {
                    &fx.own.0
                },
            )
            .replace("{name}", "f1")
            .replace("{version}", "2")
            .replace("{sha256}", &hex_sha256(b"one"));
        let creds: [(&str, Option<&str>); 6] = [
            ("none", None),
            ("wrong", Some("wrong-token")),
            ("read", Some(READ)),
            ("other node", Some(&fx.other.1)),
            ("own node", Some(&fx.own.1)),
            ("admin", Some(ADMIN)),
        ];
        for (who, token) in creds {
            let may = match who {
                "none" | "wrong" => false,
                "admin" => allowed[0],
                "read" => allowed[1],
                "own node" => allowed[2],
                _ => allowed[3],
            };
            if path == "/v1/events/stream" && may {
                // The stream never ends; check the status line only.
                let req = Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .header("authorization", format!("Bearer {}", token.unwrap()))
                    .body(Body::empty())
                    .unwrap();
                let resp = super::router(fx.state.clone(), 64 * 1024)
                    .oneshot(req)
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "{method} {path} as {who}");
                continue;
            }
            let (st, body) = call(
                &fx.state,
                method.clone(),
                &uri,
                token,
                body_for(&method, path),
            )
            .await;
            let documented = super::routes()
                .into_iter()
                .find(|r| r.method == method && r.path == path)
                .map(|r| super::openapi::statuses(&r))
                .unwrap_or_default();
            assert!(
                documented.contains(&st.as_u16()),
                "{method} {path} as {who} answered {st}, not in its documented {documented:?}"
            );
            let want = match (who, may) {
                ("none" | "wrong", _) => Some(StatusCode::UNAUTHORIZED),
                (_, false) => Some(StatusCode::FORBIDDEN),
                (_, true) => None,
            };
            match want {
                Some(w) => assert_eq!(st, w, "{method} {path} as {who}: {body}"),
                None => assert!(
                    st.is_success(),
                    "{method} {path} as {who} should succeed, got {st}: {body}"
                ),
            }
        }
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
