//! End-to-end: named credentials, roles, scopes and the audit trail on the real registry
//! binary over HTTP, driven by the real `stewardctl`; on the embedded store across a restart,
//! and on two etcd replicas (a credential made or revoked on one holds on the other).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::jwt::TestKey;
use common::replicas::Replicas;
use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};

fn ctl(r: &Registry, token: &str, args: &[&str]) -> Output {
    r.ctl(token, args)
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

async fn spec_put(r: &Registry, id: &str, token: &str, image: &str) -> (u16, Value) {
    r.put_yaml(
        &format!("/v1/nodes/{id}/spec"),
        token,
        &format!("containers: [{{name: web, image: '{image}'}}]"),
    )
    .await
}

#[tokio::test]
async fn named_credentials_roles_scopes_and_the_audit_trail() {
    let mut r = Registry::start(&[]).await;
    let admin = r.admin.clone();
    let (lab_node, _) = r.enroll("m-lab", json!({"env": "lab"})).await;
    let (prod_node, _) = r.enroll("m-prod", json!({"env": "prod"})).await;

    // Created with stewardctl; -q prints only the token, shown this once.
    let alice = ok(ctl(
        &r,
        &admin,
        &["credentials", "create", "alice", "--role", "operator", "-q"],
    ))
    .trim()
    .to_string();
    assert!(alice.starts_with("stc_alice."), "{alice}");
    let lab = ok(ctl(
        &r,
        &admin,
        &[
            "credentials",
            "create",
            "lab",
            "--role",
            "operator",
            "--selector",
            "env=lab",
            "--expires",
            "90d",
            "-q",
        ],
    ))
    .trim()
    .to_string();
    let viewer = ok(ctl(
        &r,
        &admin,
        &["credentials", "create", "vic", "--role", "viewer", "-q"],
    ))
    .trim()
    .to_string();
    // A second credential of the same name is refused, naming the conflict.
    let dup = ctl(
        &r,
        &admin,
        &["credentials", "create", "alice", "--role", "admin"],
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("exists already"));

    // The operator writes specs but cannot manage credentials; the viewer reads only.
    assert_eq!(spec_put(&r, &lab_node, &alice, "nginx:1").await.0, 200);
    let (st, _) = r.get("/v1/credentials", &alice).await;
    assert_eq!(st, 403);
    assert_eq!(spec_put(&r, &lab_node, &viewer, "nginx:2").await.0, 403);
    assert_eq!(
        r.get(&format!("/v1/nodes/{prod_node}"), &viewer).await.0,
        200
    );
    // The scoped operator: its nodes only, for reads and writes.
    assert_eq!(spec_put(&r, &lab_node, &lab, "nginx:3").await.0, 200);
    assert_eq!(spec_put(&r, &prod_node, &lab, "nginx:3").await.0, 403);
    assert_eq!(
        r.get(&format!("/v1/nodes/{prod_node}/spec"), &lab).await.0,
        403
    );
    let listed = ok(ctl(&r, &lab, &["-o", "json", "nodes", "list"]));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], lab_node.as_str());

    // Events name who wrote (and stewardctl shows it).
    let (_, events) = r.get(&format!("/v1/events?node={lab_node}"), &admin).await;
    let writers: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "spec-written")
        .map(|e| e["actor"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(writers, vec!["alice", "lab"], "{events}");
    let shown = ok(ctl(&r, &admin, &["events", "--node", &lab_node]));
    assert!(shown.contains(" BY ") && shown.contains("alice"), "{shown}");

    // The audit trail: every write with its actor, refusals with their reason.
    let trail = ok(ctl(
        &r,
        &admin,
        &[
            "-o",
            "json",
            "audit",
            "--target",
            &format!("node/{prod_node}"),
        ],
    ));
    let trail: Value = serde_json::from_str(&trail).unwrap();
    let trail = trail.as_array().unwrap();
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(trail[0]["actor"], "lab");
    assert_eq!(trail[0]["outcome"], "refused");
    assert_eq!(trail[0]["address"], "127.0.0.1");
    assert!(trail[0]["reason"]
        .as_str()
        .unwrap()
        .contains("outside this credential's scope"));
    let by_alice = ok(ctl(&r, &admin, &["audit", "--actor", "alice"]));
    assert!(
        by_alice.contains("/v1/nodes/{id}/spec") && by_alice.contains("done 200"),
        "{by_alice}"
    );
    // Viewers read the trail; operators do not.
    assert!(ctl(&r, &viewer, &["audit"]).status.success());
    assert!(!ctl(&r, &alice, &["audit"]).status.success());

    // Spec history with stewardctl: who wrote what, the diff between two generations, a revert
    // (by the scoped operator, on its node) written as a new generation.
    let hist = ok(ctl(&r, &admin, &["spec", "history", &lab_node]));
    assert!(
        hist.contains("alice") && hist.contains("lab") && hist.contains("written"),
        "{hist}"
    );
    let d = ctl(
        &r,
        &admin,
        &["spec", "diff", &lab_node, "--from", "1", "--to", "2"],
    );
    assert_eq!(d.status.code(), Some(1), "differs");
    let d = String::from_utf8_lossy(&d.stdout).to_string();
    assert!(
        d.contains("-") && d.contains("nginx:1") && d.contains("+") && d.contains("nginx:3"),
        "{d}"
    );
    let back = ok(ctl(&r, &lab, &["spec", "revert", &lab_node, "--to", "1"]));
    assert!(back.contains("generation 3"), "{back}");
    let same = ctl(&r, &admin, &["spec", "diff", &lab_node, "--from", "1"]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "the latest is generation 1's spec again"
    );
    let bad = ctl(&r, &lab, &["spec", "revert", &prod_node, "--to", "1"]);
    assert!(!bad.status.success(), "outside the scope");

    // Revoked: refused at once, and still refused after a crash and restart; the others
    // (stored hashed) still work, and so does the trail.
    ok(ctl(&r, &admin, &["credentials", "revoke", "alice"]));
    assert_eq!(spec_put(&r, &lab_node, &alice, "nginx:4").await.0, 401);
    r.kill9();
    r.spawn().await;
    assert_eq!(spec_put(&r, &lab_node, &alice, "nginx:4").await.0, 401);
    assert_eq!(spec_put(&r, &lab_node, &lab, "nginx:5").await.0, 200);
    let list = ok(ctl(&r, &admin, &["credentials", "list"]));
    for want in [
        "alice",
        "revoked",
        "lab",
        "env=lab",
        "vic",
        "viewer",
        "by admin-token",
    ] {
        assert!(list.contains(want), "{want} not in:\n{list}");
    }
    let (_, all) = r.get("/v1/audit?limit=1000", &admin).await;
    let text = all.to_string();
    assert!(all.as_array().unwrap().len() >= 8, "{text}");
    // No secret anywhere: not in the trail, not in the log.
    let log = r.log();
    for secret in [&alice, &lab, &viewer, &admin] {
        let random = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(random), "a secret is in the audit trail");
        assert!(!log.contains(random), "a secret is in the registry's log");
    }
}

/// Polls `f` until it answers true (hang guard `secs`).
async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn credentials_and_audit_hold_across_etcd_replicas() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let rs = Replicas::start(&etcd, 2, &[]).await;
    let (a, b) = (&rs.regs[0], &rs.regs[1]);
    let (node, _) = a.enroll("m-rep", json!({})).await;
    let (st, made) = a
        .req(
            Method::POST,
            "/v1/credentials",
            Some(&rs.admin),
            Some(json!({"name": "bob", "role": "operator"})),
        )
        .await;
    assert_eq!(st, 201, "{made}");
    let bob = made["token"].as_str().unwrap().to_string();
    // Made on A, usable on B (B follows the store).
    eventually(20, "B to know bob", || async {
        spec_put(b, &node, &bob, "nginx:1").await.0 == 200
    })
    .await;
    // Written on B, in the trail read on A.
    let (st, trail) = a.get("/v1/audit?actor=bob", &rs.admin).await;
    assert_eq!(st, 200);
    assert_eq!(trail.as_array().unwrap().len(), 1, "{trail}");
    assert_eq!(trail[0]["route"], "/v1/nodes/{id}/spec");
    // Spec history on etcd: written on B by bob, changed on A, reverted on B, read on A.
    assert_eq!(spec_put(a, &node, &rs.admin, "nginx:9").await.0, 200);
    let (st, w) = b
        .req(
            Method::POST,
            &format!("/v1/nodes/{node}/spec/revert"),
            Some(&bob),
            Some(json!({"to": 1})),
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let (_, h) = a
        .get(&format!("/v1/nodes/{node}/spec/history"), &rs.admin)
        .await;
    let kept: Vec<(&str, &str, &str)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["author"].as_str().unwrap(),
                v["note"].as_str().unwrap(),
                v["spec"]["containers"][0]["image"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            ("bob", "written", "nginx:1"),
            ("admin-token", "written", "nginx:9"),
            ("bob", "reverted to generation 1", "nginx:1"),
        ]
    );
    // Revoked on A, refused on B.
    let (st, _) = a
        .req(Method::DELETE, "/v1/credentials/bob", Some(&rs.admin), None)
        .await;
    assert_eq!(st, 200);
    eventually(20, "B to refuse bob", || async {
        spec_put(b, &node, &bob, "nginx:2").await.0 == 401
    })
    .await;
}

fn sign(key: &TestKey, sub: &str, groups: &[&str], aud: &str) -> String {
    key.sign(&common::jwt::claims_for(
        "https://sso.test",
        aud,
        sub,
        groups,
    ))
}

/// Serves `jwks` (changeable while it runs) at http://127.0.0.1:PORT/jwks.
async fn serve_jwks(jwks: std::sync::Arc<std::sync::Mutex<Value>>) -> String {
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn single_sign_on_with_jwts_from_a_served_jwks() {
    let k1 = TestKey::new("k1");
    let jwks = std::sync::Arc::new(std::sync::Mutex::new(common::jwt::jwks(&[&k1])));
    let url = serve_jwks(jwks.clone()).await;
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("registry.toml");
    std::fs::write(
        &conf,
        format!(
            "[[oidc]]\nissuer = \"https://sso.test\"\naudience = \"steward\"\njwks_url = \"{url}\"\n\
             roles = {{ ops = \"operator\", auditors = \"viewer\" }}\n"
        ),
    )
    .unwrap();
    let r = Registry::start(&["--config", conf.to_str().unwrap()]).await;
    let (node, _) = r.enroll("m-sso", json!({})).await;

    // An operator by group: writes, and is named by its subject in the trail and events.
    let carol = sign(&k1, "carol@example.com", &["ops"], "steward");
    assert_eq!(spec_put(&r, &node, &carol, "nginx:1").await.0, 200);
    let (_, trail) = r.get("/v1/audit?actor=carol@example.com", &r.admin).await;
    assert_eq!(trail.as_array().unwrap().len(), 1, "{trail}");
    let (_, events) = r.get(&format!("/v1/events?node={node}"), &r.admin).await;
    assert!(
        events
            .to_string()
            .contains("\"actor\":\"carol@example.com\""),
        "{events}"
    );
    // A viewer by group reads but cannot write; other audiences and groups are nobody.
    let dave = sign(&k1, "dave", &["auditors"], "steward");
    assert_eq!(r.get("/v1/nodes", &dave).await.0, 200);
    assert_eq!(spec_put(&r, &node, &dave, "nginx:2").await.0, 403);
    assert_eq!(
        r.get("/v1/nodes", &sign(&k1, "eve", &["ops"], "other-app"))
            .await
            .0,
        401
    );
    assert_eq!(
        r.get("/v1/nodes", &sign(&k1, "eve", &["interns"], "steward"))
            .await
            .0,
        401
    );

    // The status page's login takes a JWT as it takes a token.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirect
        .post(r.url("/login"))
        .form(&[("token", carol.as_str()), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = no_redirect
        .get(r.url("/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    // A rotated-in key: fetched again when a token names it.
    let k2 = TestKey::new("k2");
    *jwks.lock().unwrap() = common::jwt::jwks(&[&k1, &k2]);
    let frank = sign(&k2, "frank", &["ops"], "steward");
    eventually(20, "the registry to fetch the new key", || async {
        r.get("/v1/nodes", &frank).await.0 == 200
    })
    .await;
    assert!(
        !r.log().contains(carol.rsplit('.').next().unwrap()),
        "a JWT is in the log"
    );
}
