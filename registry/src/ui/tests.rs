//! In-process tests of the status page on the full router: every view × every kind of
//! caller (none, wrong token, node secret, read, admin, session cookie, public registry), the
//! login and logout flow, cookie flags, escaping of reflected input, and that secrets from the
//! spec never reach a page.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::state::{AppState, Settings};
use crate::store::Store;

const ADMIN: &str = "admin-token-0123456789";
const READ: &str = "read-token-0123456789";

struct Fx {
    _dir: tempfile::TempDir,
    state: AppState,
    node: (String, String),
}

async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let stream = req.uri().path() == "/ui/events";
    let resp = crate::api::router(state.clone(), 64 * 1024)
        .oneshot(req)
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    if stream {
        // The stream never ends: the status line and headers are the answer.
        return (status, headers, String::new());
    }
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get(uri: &str, auth: Option<&str>, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(Method::GET).uri(uri);
    if let Some(t) = auth {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

fn post_json(uri: &str, auth: Option<&str>, body: Value) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = auth {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_string())).unwrap()
}

fn form(uri: &str, body: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

async fn fixture(public_status: bool, tls: bool) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let settings = Settings {
        public_status,
        tls,
        ..Settings::default()
    };
    let state = AppState::new(settings, store, dir.path(), ADMIN, Some(READ))
        .await
        .unwrap();
    crate::replica::follow_store(&state, state.loaded_at + 1)
        .await
        .unwrap();
    let (st, _, tok) = send(
        &state,
        post_json("/v1/enrollment-tokens", Some(ADMIN), json!({})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{tok}");
    let tok: Value = serde_json::from_str(&tok).unwrap();
    let facts = json!({"machine_id": "m1", "hostname": "node-one"});
    let (st, _, en) = send(
        &state,
        post_json(
            "/v1/enroll",
            None,
            json!({"token": tok["token"], "facts": facts}),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{en}");
    let en: Value = serde_json::from_str(&en).unwrap();
    let node = (
        en["node_id"].as_str().unwrap().to_string(),
        en["node_secret"].as_str().unwrap().to_string(),
    );
    // A spec holding a secret in a container's environment: no page may show it.
    let spec = "containers: [{name: web, image: nginx, env: {DB_PASSWORD: hunter2-secret}}]";
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/nodes/{}/spec", node.0))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from(spec))
        .unwrap();
    assert_eq!(send(&state, req).await.0, StatusCode::OK);
    Fx {
        _dir: dir,
        state,
        node,
    }
}

fn views(node: &str) -> Vec<String> {
    vec![
        "/".into(),
        format!("/nodes/{node}"),
        "/sessions".into(),
        "/metrics".into(),
        "/ui/events".into(),
    ]
}

fn is_page(v: &str) -> bool {
    v == "/" || v.starts_with("/nodes/") || v == "/sessions"
}

/// The sessions page lists a session with its owner and endpoint to signed-in viewers, and
/// only a sign-in prompt to the public.
#[tokio::test]
async fn the_sessions_page_shows_sessions_to_signed_in_viewers_only() {
    for public in [false, true] {
        let fx = fixture(public, false).await;
        let t = json!({"ports": ["http"], "spec": {"containers": [
            {"name": "c-{{session}}", "image": "busybox", "ports": ["{{port.http}}:80"]}]}});
        let put = Request::builder()
            .method(Method::PUT)
            .uri("/v1/templates/conf")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(t.to_string()))
            .unwrap();
        assert_eq!(send(&fx.state, put).await.0, StatusCode::OK);
        let body = json!({"template": "conf", "owner": "ada<b>"});
        let (st, _, s) = send(&fx.state, post_json("/v1/sessions", Some(ADMIN), body)).await;
        assert_eq!(st, StatusCode::CREATED, "{s}");
        let (st, _, page) = send(&fx.state, get("/sessions", Some(READ), None)).await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            page.contains("ada&lt;b&gt;") && page.contains(":10000"),
            "{page}"
        );
        if public {
            let (st, _, page) = send(&fx.state, get("/sessions", None, None)).await;
            assert_eq!(st, StatusCode::OK);
            assert!(!page.contains("ada") && page.contains("Sign in to see sessions"));
        }
    }
}

#[tokio::test]
async fn access_matrix_every_view_and_caller() {
    let fx = fixture(false, false).await;
    let public = fixture(true, false).await;
    for view in views(&fx.node.0) {
        // No credential: pages redirect to the login form, the rest is 401.
        let (st, h, _) = send(&fx.state, get(&view, None, None)).await;
        if is_page(&view) {
            assert_eq!(st, StatusCode::SEE_OTHER, "{view}");
            let loc = h[header::LOCATION].to_str().unwrap();
            let want = if view == "/" {
                "/login".to_string()
            } else {
                format!("/login?next={view}")
            };
            assert_eq!(loc, want, "{view}");
        } else {
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{view}");
            assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
        }
        // A wrong token is refused, a node secret is not enough.
        let (st, _, _) = send(&fx.state, get(&view, Some("wrong-token"), None)).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{view} with a wrong token");
        let (st, _, _) = send(&fx.state, get(&view, Some(&fx.node.1), None)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{view} with a node secret");
        // Read and admin tokens see everything; so does anyone on a public registry.
        for (who, state, token) in [
            ("read", &fx.state, Some(READ)),
            ("admin", &fx.state, Some(ADMIN)),
            ("public", &public.state, None),
        ] {
            let view = if who == "public" {
                view.replace(&fx.node.0, &public.node.0)
            } else {
                view.clone()
            };
            let (st, h, body) = send(state, get(&view, token, None)).await;
            assert_eq!(st, StatusCode::OK, "{view} as {who}: {body}");
            if is_page(&view) {
                assert!(
                    body.contains(&format!(
                        "{} view",
                        if who == "read" { "read-only" } else { who }
                    )),
                    "{view} as {who}"
                );
                assert!(
                    !body.contains("hunter2"),
                    "{view} as {who} shows a spec secret"
                );
                assert!(
                    !body.contains(&fx.node.1) && !body.contains(ADMIN) && !body.contains(READ)
                );
                assert!(h[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .contains("script-src 'self'"));
            }
            if view == "/ui/events" {
                assert_eq!(h[header::CONTENT_TYPE], "text/event-stream");
            }
        }
    }
    // A public registry still refuses a wrong token and keeps the API closed.
    let (st, _, _) = send(&public.state, get("/", Some("wrong-token"), None)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, _) = send(&public.state, get("/v1/nodes", None, None)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Public viewers get no sign-out button, only a sign-in link.
    let (_, _, body) = send(&public.state, get("/", None, None)).await;
    assert!(body.contains("href=\"/login\"") && !body.contains("action=\"/logout\""));
}

fn cookie_of(h: &HeaderMap) -> String {
    let set = h[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn login_sets_a_session_cookie_and_logout_ends_it() {
    let fx = fixture(false, false).await;
    let node_page = format!("/nodes/{}", fx.node.0);
    // A wrong token: 401, the form again, no cookie.
    let (st, h, body) = send(&fx.state, form("/login", "token=nope&next=%2F", None)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(h.get(header::SET_COOKIE).is_none());
    assert!(body.contains("neither the admin nor the read token"));
    // The read token: a 303 back to `next` with an HttpOnly, SameSite=Strict cookie that is
    // not the token.
    let body = format!("token={READ}&next=%2Fnodes%2F{}", fx.node.0);
    let (st, h, _) = send(&fx.state, form("/login", &body, None)).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], node_page.as_str());
    let set = h[header::SET_COOKIE].to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"));
    assert!(!set.contains("Secure"), "no TLS, no Secure flag: {set}");
    assert!(!set.contains(READ));
    let cookie = cookie_of(&h);
    for view in views(&fx.node.0) {
        let (st, _, body) = send(&fx.state, get(&view, None, Some(&cookie))).await;
        assert_eq!(st, StatusCode::OK, "{view} with the session cookie: {body}");
    }
    let (_, _, body) = send(&fx.state, get("/", None, Some(&cookie))).await;
    assert!(body.contains("read-only view") && body.contains("action=\"/logout\""));
    // A next pointing elsewhere goes home instead.
    let (_, h, _) = send(
        &fx.state,
        form(
            "/login",
            &format!("token={ADMIN}&next=%2F%2Fevil.example"),
            None,
        ),
    )
    .await;
    assert_eq!(h[header::LOCATION], "/");
    // Logout forgets the session: the same cookie goes back to the login form.
    let (st, h, _) = send(&fx.state, form("/logout", "", Some(&cookie))).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert!(h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (st, h, _) = send(&fx.state, get("/", None, Some(&cookie))).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/login");
    // Serving TLS: the cookie is Secure.
    let tls = fixture(false, true).await;
    let (_, h, _) = send(&tls.state, form("/login", &format!("token={ADMIN}"), None)).await;
    assert!(h[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .ends_with("; Secure"));
}

#[tokio::test]
async fn reflected_input_is_escaped_and_bad_queries_are_explained() {
    let fx = fixture(true, false).await;
    let (st, _, body) = send(
        &fx.state,
        get("/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", None, None),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!body.contains("<script>alert(1)"), "{body}");
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let (st, _, body) = send(&fx.state, get("/?health=sick", None, None)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown health"), "{body}");
    let (st, _, _) = send(&fx.state, get("/nodes/no-such-node", None, None)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, h, _) = send(&fx.state, get("/assets/app.js", None, None)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
}

#[tokio::test]
async fn metrics_count_heartbeats_spec_writes_and_events() {
    let fx = fixture(false, false).await;
    let hb = post_json(
        &format!("/v1/nodes/{}/heartbeat", fx.node.0),
        Some(&fx.node.1),
        json!({"observed_generation": 1}),
    );
    assert_eq!(send(&fx.state, hb).await.0, StatusCode::OK);
    let mut req = get("/metrics", Some(READ), None);
    req.headers_mut().insert(
        header::ACCEPT,
        "application/openmetrics-text; version=1.0.0"
            .parse()
            .unwrap(),
    );
    let (st, h, om) = send(&fx.state, req).await;
    assert_eq!(st, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(om.ends_with("# EOF\n"));
    let (_, h, text) = send(&fx.state, get("/metrics", Some(ADMIN), None)).await;
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    for want in [
        "steward_registry_nodes{health=\"ready\"} 1",
        "steward_registry_heartbeats_total 1",
        "steward_registry_heartbeat_handling_seconds_count 1",
        "steward_registry_spec_writes_total{target=\"node\"} 1",
        "steward_registry_events_total{kind=\"node-enrolled\"} 1",
        "steward_registry_events_total{kind=\"spec-written\"} 1",
        "steward_registry_longpoll_watchers 0",
        "steward_registry_drifted_nodes 0",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
}

/// The node page lists the writes made to the node (the audit trail) to signed-in viewers,
/// refused ones too, and not to anonymous visitors of a public page.
#[tokio::test]
async fn node_page_shows_the_audit_trail_to_signed_in_viewers_only() {
    let fx = fixture(true, false).await;
    // A refused write (the read token may not write) is on the page too.
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/nodes/{}/spec", fx.node.0))
        .header(header::AUTHORIZATION, format!("Bearer {READ}"))
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from("containers: []"))
        .unwrap();
    assert_eq!(send(&fx.state, req).await.0, StatusCode::FORBIDDEN);
    let page = format!("/nodes/{}", fx.node.0);
    let (st, _, html) = send(&fx.state, get(&page, Some(READ), None)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Changes (audit trail)"), "{html}");
    assert!(html.contains("admin-token (admin)") && html.contains("PUT /v1/nodes/{id}/spec"));
    assert!(
        html.contains("read-token (viewer)") && html.contains("refused"),
        "{html}"
    );
    assert!(!html.contains("hunter2-secret"));
    let (st, _, public) = send(&fx.state, get(&page, None, None)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(!public.contains("audit trail") && !public.contains("admin-token"));
}

/// A session opened with a named credential ends when the credential is revoked.
#[tokio::test]
async fn a_session_of_a_named_credential_ends_with_it() {
    let fx = fixture(false, false).await;
    let (st, _, made) = send(
        &fx.state,
        post_json(
            "/v1/credentials",
            Some(ADMIN),
            json!({"name": "ops", "role": "viewer"}),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{made}");
    let made: Value = serde_json::from_str(&made).unwrap();
    let token = made["token"].as_str().unwrap();
    let (st, h, _) = send(&fx.state, form("/login", &format!("token={token}"), None)).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let cookie = cookie_of(&h);
    let (st, _, _) = send(&fx.state, get("/", None, Some(&cookie))).await;
    assert_eq!(st, StatusCode::OK);
    let req = Request::builder()
        .method(Method::DELETE)
        .uri("/v1/credentials/ops")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&fx.state, req).await.0, StatusCode::OK);
    let (st, h, _) = send(&fx.state, get("/", None, Some(&cookie))).await;
    assert_eq!(
        st,
        StatusCode::SEE_OTHER,
        "the session ended with its credential"
    );
    assert_eq!(h[header::LOCATION], "/login");
}
