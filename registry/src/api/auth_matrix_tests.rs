//! The authorisation matrix: every route × every kind of credential (the admin and read
//! tokens, named credentials of each role, one narrowed to a label selector, an expired and a
//! revoked one, node secrets, none, garbage), against a table written out by hand; plus what a
//! scoped credential may see and touch outside the matrix's own node.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use steward_proto::{AuditOutcome, AuditRecord};

use super::tests::{call, fixture, hex_sha256, Fx, ADMIN, READ};

/// The credentials of the matrix, in the order of the table's columns.
const COLUMNS: [&str; 10] = [
    "admin-token",
    "read-token",
    "admin",
    "operator",
    "viewer",
    "sessions",
    "lab-operator",
    "own-node",
    "other-node",
    "jwt-operator",
];

/// Who may call what: one row per route, one column per entry of [`COLUMNS`] (`y` allowed,
/// `.` refused with 403). No credential, a wrong one, an expired and a revoked credential, and
/// JWTs with a wrong signature, issuer or audience, expired or of an unknown group are refused
/// with 401 everywhere. The JWT column is a token of the `ops` group (operator role). The lab
/// operator is scoped to `team=a`, which the own node has and the fragment `f1` (`x=y`) and
/// rollouts over every node do not.
#[rustfmt::skip]
fn expectations() -> Vec<(Method, &'static str, &'static str)> {
    use Method as M;
    vec![
        //                                                   AT RT ad op vi se lab own oth jwt
        (M::POST, "/v1/enrollment-tokens",                 "y  .  y  .  .  .  .   .   .   ."),
        (M::GET, "/v1/enrollment-tokens",                  "y  y  y  y  y  .  y   .   .   y"),
        (M::DELETE, "/v1/enrollment-tokens/{id}",          "y  .  y  .  .  .  .   .   .   ."),
        (M::GET, "/v1/nodes",                              "y  y  y  y  y  .  y   .   .   y"),
        (M::GET, "/v1/nodes/{id}",                         "y  y  y  y  y  .  y   y   .   y"),
        (M::PATCH, "/v1/nodes/{id}",                       "y  .  y  y  .  .  y   .   .   y"),
        (M::DELETE, "/v1/nodes/{id}",                      "y  .  y  .  .  .  .   .   .   ."),
        (M::POST, "/v1/nodes/{id}/reenroll",               "y  .  y  .  .  .  .   .   .   ."),
        (M::GET, "/v1/nodes/{id}/spec",                    "y  y  y  y  y  .  y   y   .   y"),
        (M::PUT, "/v1/nodes/{id}/spec",                    "y  .  y  y  .  .  y   .   .   y"),
        (M::GET, "/v1/nodes/{id}/spec/history",            "y  y  y  y  y  .  y   .   .   y"),
        (M::POST, "/v1/nodes/{id}/spec/revert",            "y  .  y  y  .  .  y   .   .   y"),
        (M::POST, "/v1/nodes/{id}/heartbeat",              ".  .  .  .  .  .  .   y   .   ."),
        (M::PUT, "/v1/nodes/{id}/status",                  ".  .  .  .  .  .  .   y   .   ."),
        (M::POST, "/v1/nodes/{id}/workloads/{name}/reset", "y  .  y  y  .  .  y   .   .   y"),
        (M::GET, "/v1/fragments",                          "y  y  y  y  y  .  y   .   .   y"),
        (M::GET, "/v1/fragments/{name}",                   "y  y  y  y  y  .  .   .   .   y"),
        (M::PUT, "/v1/fragments/{name}",                   "y  .  y  y  .  .  .   .   .   y"),
        (M::DELETE, "/v1/fragments/{name}",                "y  .  y  y  .  .  .   .   .   y"),
        (M::GET, "/v1/fragments/{name}/history",           "y  y  y  y  y  .  .   .   .   y"),
        (M::POST, "/v1/fragments/{name}/revert",           "y  .  y  y  .  .  .   .   .   y"),
        (M::PUT, "/v1/payloads/{name}/{version}",          "y  .  y  y  .  .  y   .   .   y"),
        (M::GET, "/v1/payloads",                           "y  y  y  y  y  .  y   .   .   y"),
        (M::GET, "/v1/payloads/{name}",                    "y  y  y  y  y  .  y   .   .   y"),
        (M::GET, "/v1/payloads/{name}/{version}",          "y  y  y  y  y  .  y   .   .   y"),
        (M::DELETE, "/v1/payloads/{name}/{version}",       "y  .  y  y  .  .  .   .   .   y"),
        // A node may download only blobs its own spec references (the own node's does).
        (M::GET, "/v1/blobs/{sha256}",                     "y  y  y  y  y  .  y   y   .   y"),
        (M::PUT, "/v1/blobs/{sha256}",                     "y  .  y  .  .  .  .   .   .   ."),
        (M::POST, "/v1/rollouts",                          "y  .  y  y  .  .  .   .   .   y"),
        (M::GET, "/v1/rollouts",                           "y  y  y  y  y  .  y   .   .   y"),
        (M::GET, "/v1/rollouts/{rollout}",                 "y  y  y  y  y  .  .   .   .   y"),
        (M::POST, "/v1/rollouts/{rollout}/pause",          "y  .  y  y  .  .  .   .   .   y"),
        (M::POST, "/v1/rollouts/{rollout}/resume",         "y  .  y  y  .  .  .   .   .   y"),
        (M::POST, "/v1/rollouts/{rollout}/abort",          "y  .  y  y  .  .  .   .   .   y"),
        (M::POST, "/v1/rollouts/{rollout}/rollback",       "y  .  y  y  .  .  .   .   .   y"),
        (M::GET, "/v1/events",                             "y  y  y  y  y  .  y   .   .   y"),
        (M::GET, "/v1/events/stream",                      "y  y  y  y  y  .  y   .   .   y"),
        (M::POST, "/v1/credentials",                       "y  .  y  .  .  .  .   .   .   ."),
        (M::GET, "/v1/credentials",                        "y  .  y  .  .  .  .   .   .   ."),
        (M::DELETE, "/v1/credentials/{name}",              "y  .  y  .  .  .  .   .   .   ."),
        (M::GET, "/v1/audit",                              "y  y  y  .  y  .  .   .   .   ."),
        // The template `f1` selects `team=a` (the lab operator's scope, where the own node is).
        (M::PUT, "/v1/templates/{name}",                   "y  .  y  y  .  .  y   .   .   y"),
        (M::GET, "/v1/templates",                          "y  y  y  y  y  y  y   .   .   y"),
        (M::GET, "/v1/templates/{name}",                   "y  y  y  y  y  y  y   .   .   y"),
        (M::DELETE, "/v1/templates/{name}",                "y  .  y  y  .  .  y   .   .   y"),
        (M::POST, "/v1/sessions",                          "y  .  y  y  .  y  y   .   .   y"),
        (M::GET, "/v1/sessions",                           "y  y  y  y  y  y  y   .   .   y"),
        (M::GET, "/v1/sessions/{id}",                      "y  y  y  y  y  y  y   .   .   y"),
        (M::POST, "/v1/sessions/{id}/extend",              "y  .  y  y  .  y  y   .   .   y"),
        (M::DELETE, "/v1/sessions/{id}",                   "y  .  y  y  .  y  y   .   .   y"),
    ]
}

fn allowed(row: &str) -> [bool; 10] {
    let cells: Vec<bool> = row.split_whitespace().map(|c| c == "y").collect();
    cells.try_into().expect("ten columns")
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
        ("POST", "/v1/credentials") => json(json!({"name": "made-here", "role": "viewer"})),
        ("PUT", "/v1/templates/{name}") => json(template()),
        ("POST", "/v1/sessions") => json(json!({"template": "f1", "owner": "o1"})),
        ("POST", "/v1/sessions/{id}/extend") => json(json!({"by": "1m"})),
        ("POST", "/v1/nodes/{id}/spec/revert" | "/v1/fragments/{name}/revert") => {
            json(json!({"to": 1}))
        }
        _ => None,
    }
}

/// The matrix's session template: one container, on the nodes of team `a`.
fn template() -> Value {
    json!({"selector": "team=a", "max_ttl": "2h",
           "spec": {"containers": [{"name": "c-{{session}}", "image": "busybox"}]}})
}

/// Named credentials made through the API, by column name; plus an expired and a revoked one.
pub(super) struct Creds {
    pub(super) tokens: Vec<(&'static str, String)>,
    expired: String,
    revoked: String,
    /// JWTs that must be refused, by why.
    bad_jwts: Vec<(&'static str, String)>,
}

/// Trusts a test issuer (JWKS file) and mints its good and bad tokens.
async fn jwts(fx: &Fx) -> (String, Vec<(&'static str, String)>) {
    use crate::oidc::tests::{claims, issuer, TestKey};
    let key = TestKey::new("k1");
    let cfg = issuer(fx._dir.path(), &[&key]);
    fx.state.oidc.configure(&[cfg]).await.unwrap();
    let good = key.sign(&claims("jwt-operator", &["ops"]));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("jwt-operator", &["ops"]);
        f(&mut c);
        key.sign(&c)
    };
    let past = chrono::Utc::now().timestamp() - 3600;
    let bad = vec![
        (
            "jwt wrong signature",
            TestKey::new("k1").sign(&claims("jwt-operator", &["ops-admins"])),
        ),
        (
            "jwt wrong issuer",
            with(&|c| c["iss"] = json!("https://other.test")),
        ),
        (
            "jwt wrong audience",
            with(&|c| c["aud"] = json!("not-steward")),
        ),
        ("jwt expired", with(&|c| c["exp"] = json!(past))),
        (
            "jwt unknown group",
            with(&|c| c["groups"] = json!(["interns"])),
        ),
    ];
    (good, bad)
}

pub(super) async fn create(fx: &Fx, name: &str, role: &str, extra: Value) -> String {
    let mut body = json!({"name": name, "role": role});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (st, r) = call(
        &fx.state,
        Method::POST,
        "/v1/credentials",
        Some(ADMIN),
        Some(("application/json", body.to_string())),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    r["token"].as_str().unwrap().to_string()
}

pub(super) async fn credentials(fx: &Fx) -> Creds {
    // The own node is in the lab operator's scope.
    let (st, r) = call(
        &fx.state,
        Method::PATCH,
        &format!("/v1/nodes/{}", fx.own.0),
        Some(ADMIN),
        Some((
            "application/json",
            json!({"labels": {"team": "a"}}).to_string(),
        )),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let mut tokens = vec![
        ("admin-token", ADMIN.to_string()),
        ("read-token", READ.to_string()),
    ];
    for (name, role) in [
        ("admin", "admin"),
        ("operator", "operator"),
        ("viewer", "viewer"),
        ("sessions", "sessions"),
    ] {
        tokens.push((name, create(fx, name, role, json!({})).await));
    }
    let lab = create(
        fx,
        "lab-operator",
        "operator",
        json!({"selector": "team=a"}),
    )
    .await;
    tokens.push(("lab-operator", lab));
    tokens.push(("own-node", fx.own.1.clone()));
    tokens.push(("other-node", fx.other.1.clone()));
    let (jwt, bad_jwts) = jwts(fx).await;
    tokens.push(("jwt-operator", jwt));
    let expired = create(fx, "expired", "admin", json!({"expires_in": "1h"})).await;
    let revoked = create(fx, "revoked", "admin", json!({})).await;
    let (st, _) = call(
        &fx.state,
        Method::DELETE,
        "/v1/credentials/revoked",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    create(fx, "spare", "viewer", json!({})).await;
    fx.clock.advance(Duration::from_secs(3601));
    Creds {
        tokens,
        expired,
        revoked,
        bad_jwts,
    }
}

/// A registry with the matrix's objects: tokens, a rollout when the route needs one.
async fn setup(path: &str) -> (Fx, Creds, String) {
    let fx = fixture().await;
    let creds = credentials(&fx).await;
    let (_, tok) = call(
        &fx.state,
        Method::POST,
        "/v1/enrollment-tokens",
        Some(ADMIN),
        Some(("application/json", "{}".into())),
    )
    .await;
    if path.starts_with("/v1/templates/{name}") || path.starts_with("/v1/sessions") {
        let body = Some(("application/json", template().to_string()));
        let (st, r) = call(
            &fx.state,
            Method::PUT,
            "/v1/templates/f1",
            Some(ADMIN),
            body,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{r}");
    }
    let session = if path.starts_with("/v1/sessions/") {
        let body = body_for(&Method::POST, "/v1/sessions");
        let (st, r) = call(&fx.state, Method::POST, "/v1/sessions", Some(ADMIN), body).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        r["id"].as_str().unwrap().to_string()
    } else {
        String::new()
    };
    let rollout = if path.contains("{rollout}") {
        let body = body_for(&Method::POST, "/v1/rollouts");
        let (st, r) = call(&fx.state, Method::POST, "/v1/rollouts", Some(ADMIN), body).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        if path.ends_with("/resume") {
            let uri = format!("/v1/rollouts/{id}/pause");
            let (st, r) = call(&fx.state, Method::POST, &uri, Some(ADMIN), None).await;
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
            } else if path.starts_with("/v1/sessions/") {
                &session
            } else {
                &fx.own.0
            },
        )
        .replace(
            "{name}",
            if path.starts_with("/v1/credentials") {
                "spare"
            } else {
                "f1"
            },
        )
        .replace("{version}", "2")
        .replace("{sha256}", &hex_sha256(b"one"));
    (fx, creds, uri)
}

/// The status of one call (the event stream never ends: its status line only).
async fn status_of(
    fx: &Fx,
    method: &Method,
    path: &str,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    if path == "/v1/events/stream" {
        let mut b = Request::builder().method(method.clone()).uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let resp = super::router(fx.state.clone(), 64 * 1024)
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap();
        return (resp.status(), Value::Null);
    }
    call(
        &fx.state,
        method.clone(),
        uri,
        token,
        body_for(method, path),
    )
    .await
}

async fn audit_trail(fx: &Fx) -> Vec<AuditRecord> {
    fx.state.store.audit_after(None, 0).await.unwrap()
}

/// A write left exactly one audit record naming its caller and outcome; a read left none.
async fn check_audited(
    fx: &Fx,
    method: &Method,
    path: &str,
    before: usize,
    actor: &str,
    outcome: AuditOutcome,
) {
    let trail = audit_trail(fx).await;
    let access = super::routes()
        .into_iter()
        .find(|r| r.method == *method && r.path == path)
        .unwrap()
        .access;
    if !access.audited(method) {
        assert_eq!(trail.len(), before, "{method} {path} is not audited");
        return;
    }
    assert_eq!(
        trail.len(),
        before + 1,
        "{method} {path} as {actor}: one audit record"
    );
    let rec = trail.last().unwrap();
    assert_eq!(rec.actor, actor, "{method} {path}");
    assert_eq!(rec.outcome, outcome, "{method} {path} as {actor}");
    assert_eq!(rec.route, path);
    assert_eq!(rec.method, method.as_str());
    if outcome == AuditOutcome::Refused {
        assert!(
            rec.reason.as_ref().is_some_and(|r| !r.is_empty()),
            "{rec:?}"
        );
    }
}

/// No secret of the test (tokens, node secrets) appears in any audit record.
async fn no_secret_in_the_trail(fx: &Fx, creds: &Creds) {
    let text = serde_json::to_string(&audit_trail(fx).await).unwrap();
    let mut secrets: Vec<&str> = creds.tokens.iter().map(|(_, t)| t.as_str()).collect();
    secrets.extend([creds.expired.as_str(), creds.revoked.as_str()]);
    secrets.extend(creds.bad_jwts.iter().map(|(_, t)| t.as_str()));
    for s in secrets {
        let random = s.rsplit('.').next().unwrap();
        assert!(!text.contains(random), "a secret is in the audit trail");
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
    for (method, path, row) in expectations() {
        let allowed = allowed(row);
        let documented = super::routes()
            .into_iter()
            .find(|r| r.method == method && r.path == path)
            .map(|r| super::openapi::statuses(&r))
            .unwrap_or_default();
        // Refused callers first, on one registry: a refusal changes nothing.
        let (fx, creds, uri) = setup(path).await;
        let refused: Vec<(String, Option<String>, StatusCode)> = [
            ("none", None),
            ("wrong", Some("wrong-token".to_string())),
            ("forged", Some(format!("stc_admin.{}", "0".repeat(64)))),
            ("expired", Some(creds.expired.clone())),
            ("revoked", Some(creds.revoked.clone())),
        ]
        .into_iter()
        .chain(creds.bad_jwts.iter().map(|(w, t)| (*w, Some(t.clone()))))
        .map(|(w, t)| (w.to_string(), t, StatusCode::UNAUTHORIZED))
        .chain(
            creds
                .tokens
                .iter()
                .zip(allowed)
                .filter(|(_, may)| !may)
                .map(|((w, t), _)| (w.to_string(), Some(t.clone()), StatusCode::FORBIDDEN)),
        )
        .collect();
        for (who, token, want) in refused {
            let before = audit_trail(&fx).await.len();
            let (st, body) = status_of(&fx, &method, path, &uri, token.as_deref()).await;
            assert_eq!(st, want, "{method} {path} as {who}: {body}");
            assert!(
                documented.contains(&st.as_u16()),
                "{method} {path}: {st} undocumented"
            );
            let actor = match (want, who.as_str()) {
                (StatusCode::UNAUTHORIZED, _) => "-".to_string(),
                (_, "own-node") => fx.own.0.clone(),
                (_, "other-node") => fx.other.0.clone(),
                (_, name) => name.to_string(),
            };
            check_audited(&fx, &method, path, before, &actor, AuditOutcome::Refused).await;
        }
        // Each allowed caller on a registry of its own for writes (deletes, pauses... are
        // not repeatable), on the shared one for reads.
        for (i, (who, _)) in creds.tokens.iter().enumerate().filter(|(i, _)| allowed[*i]) {
            let (own_fx, own_creds, own_uri);
            let (fx, creds, uri) = if method == Method::GET {
                (&fx, &creds, uri.as_str())
            } else {
                (own_fx, own_creds, own_uri) = setup(path).await;
                (&own_fx, &own_creds, own_uri.as_str())
            };
            let token = creds.tokens[i].1.as_str();
            let before = audit_trail(fx).await.len();
            let (st, body) = status_of(fx, &method, path, uri, Some(token)).await;
            assert!(
                st.is_success(),
                "{method} {path} as {who} should succeed, got {st}: {body}"
            );
            assert!(
                documented.contains(&st.as_u16()),
                "{method} {path}: {st} undocumented"
            );
            let actor = match *who {
                "own-node" => fx.own.0.clone(),
                name => name.to_string(),
            };
            check_audited(fx, &method, path, before, &actor, AuditOutcome::Done).await;
            no_secret_in_the_trail(fx, creds).await;
        }
        no_secret_in_the_trail(&fx, &creds).await;
        assert_eq!(COLUMNS.len(), creds.tokens.len());
        for (c, (name, _)) in COLUMNS.iter().zip(&creds.tokens) {
            assert_eq!(c, name);
        }
    }
}
