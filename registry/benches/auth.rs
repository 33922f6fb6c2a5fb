//! What authorisation costs per request, in process, side by side in one run: identifying the
//! caller (admin token, node secret, named credential, JWT remembered and JWT checked afresh)
//! and whole requests through the router (a heartbeat with its node secret, the reference; a
//! read of one node with each credential).
//!
//! `cargo bench -p steward-registry --bench auth [-- --quick]`. Timings are only reported; a
//! request that does not succeed fails the run.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "../tests/common/jwt.rs"]
mod jwt;

use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::json;
use steward_proto::{CreateCredential, Role};
use steward_registry::oidc::IssuerConfig;
use steward_registry::state::{AppState, Settings};
use steward_registry::store::Store;
use tower::ServiceExt;

const ADMIN: &str = "bench-admin-token-0123456789abcdef";

async fn request(router: &axum::Router, method: Method, uri: &str, token: &str, body: &str) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert!(resp.status().is_success(), "{uri}: {}", resp.status());
}

/// Median ns per call of `f` over `rounds` rounds of `n` calls.
fn per_call(rounds: usize, n: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut v: Vec<f64> = (0..rounds)
        .map(|r| {
            let t = Instant::now();
            for i in 0..n {
                f(r * n + i);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let (rounds, n) = if quick { (5, 2_000) } else { (9, 20_000) };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = AppState::new(Settings::default(), store, dir.path(), ADMIN, None)
        .await
        .unwrap();
    let router = steward_registry::api::router(state.clone(), 1 << 20);
    // A node, a named credential, an SSO issuer with its JWKS file.
    let (node, secret) = enroll(&router).await;
    let named = state
        .credentials
        .create(
            CreateCredential {
                name: "bench".into(),
                role: Role::Operator,
                selector: None,
                expires_in: None,
                description: None,
                owner: None,
            },
            &steward_proto::Actor::SYSTEM,
        )
        .await
        .unwrap()
        .token;
    let key = jwt::TestKey::new("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, jwt::jwks(&[&key]).to_string()).unwrap();
    state
        .oidc
        .configure(&[IssuerConfig {
            issuer: "https://sso.bench".into(),
            audience: "steward".into(),
            jwks_url: None,
            jwks_file: Some(jwks),
            roles_claim: "groups".into(),
            name_claim: "sub".into(),
            roles: [("ops".to_string(), Role::Operator)].into(),
        }])
        .await
        .unwrap();
    let claims =
        |i: usize| jwt::claims_for("https://sso.bench", "steward", &format!("u{i}"), &["ops"]);
    let jwt_token = key.sign(&claims(0));
    let fresh: Vec<String> = (0..n).map(|i| key.sign(&claims(i + 1))).collect();

    println!("authorisation cost per request ({rounds} rounds x {n} calls, median; one thread)");
    println!("{:<44} {:>10} {:>8}", "what", "ns/call", "ratio");
    let admin_id = per_call(rounds, n, |_| {
        assert!(state.identify(ADMIN).is_some());
    });
    let rows_id: Vec<(&str, f64)> = vec![
        ("identify: admin token (today's)", admin_id),
        (
            "identify: node secret",
            per_call(rounds, n, |_| {
                assert!(state.identify(&secret).is_some());
            }),
        ),
        (
            "identify: node secret, as before issue 18",
            per_call(rounds, n, |_| {
                assert!(identify_before(&state, &secret));
            }),
        ),
        (
            "identify: named credential",
            per_call(rounds, n, |_| {
                assert!(state.identify(&named).is_some());
            }),
        ),
        (
            "identify: JWT, remembered",
            per_call(rounds, n, |_| {
                assert!(state.identify(&jwt_token).is_some());
            }),
        ),
        (
            "identify: JWT, signature checked (first use)",
            per_call(1, n, |i| {
                assert!(state.identify(&fresh[i]).is_some());
            }),
        ),
    ];
    for (what, ns) in &rows_id {
        println!("{what:<44} {ns:>10.0} {:>8.2}", ns / admin_id);
    }

    let hb_uri = format!("/v1/nodes/{node}/heartbeat");
    let get_uri = format!("/v1/nodes/{node}");
    let hb_body = json!({"observed_generation": 0}).to_string();
    let mut whole = Vec::new();
    for (what, method, uri, token) in [
        (
            "request: heartbeat, node secret (reference)",
            Method::POST,
            &hb_uri,
            secret.as_str(),
        ),
        (
            "request: GET node, admin token",
            Method::GET,
            &get_uri,
            ADMIN,
        ),
        (
            "request: GET node, named credential",
            Method::GET,
            &get_uri,
            named.as_str(),
        ),
        (
            "request: GET node, JWT (remembered)",
            Method::GET,
            &get_uri,
            jwt_token.as_str(),
        ),
    ] {
        let body = if method == Method::POST {
            hb_body.as_str()
        } else {
            ""
        };
        let mut times = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..n / 10 {
                request(&router, method.clone(), uri, token, body).await;
            }
            times.push(t.elapsed().as_nanos() as f64 / (n / 10) as f64);
        }
        times.sort_by(f64::total_cmp);
        whole.push((what, times[times.len() / 2]));
    }
    let hb = whole[0].1;
    for (what, ns) in &whole {
        println!("{what:<44} {ns:>10.0} {:>8.2}", ns / hb);
    }
    println!(
        "\nnamed credential and remembered JWT: authorisation {:.0} / {:.0} ns on top of a request \
         of {:.0} ns, i.e. {:.3}x / {:.3}x the heartbeat's handling",
        rows_id[3].1,
        rows_id[4].1,
        hb,
        (hb + rows_id[3].1 - admin_id) / hb,
        (hb + rows_id[4].1 - admin_id) / hb,
    );
}

/// The node-secret path of `identify` as it was before named credentials and JWTs: the admin
/// hash, then the node's.
fn identify_before(state: &AppState, token: &str) -> bool {
    use steward_registry::auth;
    let h = auth::sha256(token);
    if auth::hash_eq(&h, &state.admin_sha256) {
        return true;
    }
    if state
        .read_sha256
        .as_ref()
        .is_some_and(|r| auth::hash_eq(&h, r))
    {
        return true;
    }
    let Some(id) = auth::secret_id(token) else {
        return false;
    };
    let Some(ln) = state.live(id) else {
        return false;
    };
    let stored = ln.lock().secret_sha256;
    stored.is_some_and(|s| auth::hash_eq(&h, &s))
}

async fn enroll(router: &axum::Router) -> (String, String) {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/enrollment-tokens")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let tok: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let body =
        json!({"token": tok["token"], "facts": {"machine_id": "bench", "hostname": "bench"}});
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/enroll")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let en: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    (
        en["node_id"].as_str().unwrap().into(),
        en["node_secret"].as_str().unwrap().into(),
    )
}
