//! The status page and `/metrics` against the real `steward-registry` binary: nodes in several
//! states sent through the real node endpoints (enrol, heartbeat, PUT status), then headless
//! Chromium signs in, checks the counts and flags, sees a status change arrive without a
//! reload, checks that hostile text renders as text, and saves screenshots under
//! `target/test-artefacts/`. `promtool check metrics` checks the metrics exposition.
//!
//! Needs `chromium` and `promtool` (Debian packages `chromium` and `prometheus`, installed by
//! scripts/deps.sh): skipped loudly without them, failed when `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ui/cdp.rs"]
mod cdp;
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Registry;
use serde_json::{json, Value};

const READ_TOKEN: &str = "read-token-for-the-ui-test-0123456789";
const XSS_HOST: &str = "<script>window.__pwned=1</script>";
const XSS_ERROR: &str = "pull failed: <img src=x onerror=\"window.__pwned=2\">";

/// Runs `promtool check metrics` on `text`; panics with its output when it complains.
pub fn promtool_check(text: &str) {
    let Some(promtool) = cdp::require("promtool", &["promtool"], "STEWARD_PROMTOOL") else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn enroll_as(r: &Registry, machine: &str, hostname: &str, labels: Value) -> (String, String) {
    let (st, tok) = r
        .req(
            reqwest::Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({ "labels": labels })),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    let facts = json!({"machine_id": machine, "hostname": hostname, "kind": "vm",
        "agent_version": "0.1.0", "os": "Debian 12", "cpus": 2});
    let (st, en) = r
        .req(
            reqwest::Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": tok["token"], "facts": facts})),
        )
        .await;
    assert_eq!(st, 200, "{en}");
    (
        en["node_id"].as_str().unwrap().to_string(),
        en["node_secret"].as_str().unwrap().to_string(),
    )
}

async fn put_status(r: &Registry, node: &(String, String), status: Value) {
    let (st, body) = r
        .req(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{}/status", node.0),
            Some(&node.1),
            Some(status),
        )
        .await;
    assert_eq!(st, 204, "{body}");
}

fn container(name: &str, state: &str, error: Option<&str>) -> Value {
    json!({"kind": "container", "name": name, "state": state, "error": error})
}

async fn heartbeat(http: &reqwest::Client, base: &str, node: &(String, String)) {
    let _ = http
        .post(format!("{base}/v1/nodes/{}/heartbeat", node.0))
        .bearer_auth(&node.1)
        .json(&json!({"observed_generation": 0, "rtt_ms": 1.7}))
        .send()
        .await;
}

async fn wait_health(r: &Registry, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, n) = r.get(&format!("/v1/nodes/{id}"), &r.admin).await;
        if n["health"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never became {want}: {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let Some(chromium) = cdp::require(
        "chromium",
        &["chromium", "chromium-browser"],
        "STEWARD_CHROMIUM",
    ) else {
        return;
    };
    let tokens = tempfile::tempdir().unwrap();
    let read_file = tokens.path().join("read.token");
    std::fs::write(&read_file, READ_TOKEN).unwrap();
    let r = Registry::start(&[
        "--heartbeat-interval",
        "500ms",
        "--stale-after",
        "3",
        "--down-after",
        "100000",
        "--read-token-file",
        read_file.to_str().unwrap(),
    ])
    .await;
    let ok = enroll_as(&r, "m-ok", "ok-host", json!({"role": "web"})).await;
    let stale = enroll_as(&r, "m-stale", "stale-host", json!({"role": "db"})).await;
    let drift = enroll_as(&r, "m-drift", "drift-host", json!({"role": "build"})).await;
    let fail = enroll_as(&r, "m-fail", "fail-host", json!({"role": "web"})).await;
    let xss = enroll_as(&r, "m-xss", XSS_HOST, json!({"role": "edge"})).await;

    // Everyone but the stale node keeps heartbeating (bounded: at most 5 minutes).
    let http = reqwest::Client::new();
    let base = r.url("");
    let beating = vec![ok.clone(), drift.clone(), fail.clone(), xss.clone()];
    let beats = tokio::spawn(async move {
        for _ in 0..3000 {
            for n in &beating {
                heartbeat(&http, &base, n).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    put_status(
        &r,
        &ok,
        json!({"resources": [container("web", "converged", None)], "digest": "ok-1"}),
    )
    .await;
    let expected = "a".repeat(64);
    put_status(
        &r,
        &drift,
        json!({
        "resources": [{"kind": "payload", "name": "toolchain", "state": "converged"}],
        "payloads": [{"name": "toolchain", "version": "1.4.2", "path": "/opt/toolchain/gcc.tar.zst",
                      "expected": expected, "actual": "b".repeat(64)}],
        "digest": "drift-1"}),
    )
    .await;
    put_status(&r, &fail, json!({
        "resources": [container("web", "converged", None), container("builder", "failed", Some(XSS_ERROR))],
        "digest": "fail-1"})).await;
    put_status(&r, &xss, json!({"resources": [], "digest": "xss-1"})).await;
    wait_health(&r, &stale.0, "stale").await;

    let mut b = cdp::Browser::start(&chromium).await;
    // Not signed in: the page sends the browser to the login form.
    b.goto(&r.url("/"), &r.url("/login")).await;
    let js_token = Value::String(READ_TOKEN.into());
    b.eval(&format!(
        "document.querySelector('input[name=token]').value = {js_token}; \
         document.querySelector('section.login form').submit(); true"
    ))
    .await
    .unwrap();
    b.wait_true(
        "the fleet page after signing in",
        &format!(
            "location.href === {} && document.readyState === 'complete' && !!document.getElementById('nodes')",
            Value::String(r.url("/"))
        ),
    )
    .await;
    // The session cookie is HttpOnly: scripts cannot read it.
    assert_eq!(b.eval("document.cookie").await.unwrap(), "");
    assert_eq!(
        b.eval("document.querySelector('.viewer').textContent")
            .await
            .unwrap(),
        "read-only view"
    );

    // Counts and flags as rendered by the server.
    let count = |id: &str| format!("document.getElementById('{id}').dataset.count");
    for (id, want) in [
        ("count-total", "5"),
        ("count-ready", "4"),
        ("count-stale", "1"),
        ("count-down", "0"),
        ("count-drifted", "1"),
        ("count-failed", "1"),
    ] {
        assert_eq!(b.eval(&count(id)).await.unwrap(), want, "{id}");
    }
    let row = |id: &str, attr: &str| format!("document.getElementById('node-{id}').dataset.{attr}");
    assert_eq!(b.eval(&row(&stale.0, "health")).await.unwrap(), "stale");
    assert_eq!(b.eval(&row(&drift.0, "drifted")).await.unwrap(), "true");
    assert_eq!(b.eval(&row(&fail.0, "failed")).await.unwrap(), "1");
    assert_eq!(b.eval(&row(&ok.0, "failed")).await.unwrap(), "0");
    assert_eq!(b.eval(&row(&ok.0, "drifted")).await.unwrap(), "false");

    // Hostile text is text: the hostname shows literally and no injected script ran.
    assert_eq!(
        b.eval(&format!(
            "document.querySelector('#node-{} td.name a').textContent",
            xss.0
        ))
        .await
        .unwrap(),
        XSS_HOST
    );
    assert_eq!(b.eval("typeof window.__pwned").await.unwrap(), "undefined");
    assert_eq!(b.eval("document.scripts.length").await.unwrap(), 1);

    // Live: a status change rewrites the row and the counts in place, with no navigation.
    b.eval("window.__sameDocument = 'yes'; true").await.unwrap();
    b.wait_true(
        "the live stream to connect",
        "document.getElementById('live').textContent === 'live'",
    )
    .await;
    put_status(
        &r,
        &ok,
        json!({
        "resources": [container("web", "failed", Some("exited with code 1"))], "digest": "ok-2"}),
    )
    .await;
    b.wait_true(
        "the row of ok-host to show the failure",
        &format!(
            "document.getElementById('node-{}').dataset.failed === '1' && \
             document.getElementById('count-failed').dataset.count === '2'",
            ok.0
        ),
    )
    .await;
    assert_eq!(
        b.eval("window.__sameDocument").await.unwrap(),
        "yes",
        "the page was reloaded"
    );
    assert!(
        b.eval("document.querySelectorAll('#events li').length")
            .await
            .unwrap()
            .as_u64()
            .unwrap()
            >= 1
    );
    let shots = cdp::artefacts_dir();
    b.screenshot(&shots.join("status-page.png")).await;

    // Node page: resources with their error text (as text), payload hashes.
    b.goto(&r.url(&format!("/nodes/{}", fail.0)), &r.url("/nodes/"))
        .await;
    assert_eq!(
        b.eval("document.querySelector('#resources tr[data-state=failed] td.err').textContent")
            .await
            .unwrap(),
        XSS_ERROR
    );
    assert_eq!(b.eval("document.images.length").await.unwrap(), 0);
    assert_eq!(b.eval("typeof window.__pwned").await.unwrap(), "undefined");
    b.screenshot(&shots.join("node-page.png")).await;
    b.goto(&r.url(&format!("/nodes/{}", drift.0)), &r.url("/nodes/"))
        .await;
    assert_eq!(
        b.eval("document.querySelectorAll('#payloads tr[data-ok=false]').length")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        b.eval("document.getElementById('detail').dataset.drifted")
            .await
            .unwrap(),
        "true"
    );
    eprintln!("screenshots in {}", shots.display());

    // The same registry over plain HTTP: redirects, 401s, and metrics for the read token.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = plain.get(r.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login");
    assert_eq!(
        plain.get(r.url("/metrics")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        plain
            .get(r.url("/ui/events"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let m = plain
        .get(r.url("/metrics"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    for want in [
        "steward_registry_nodes{health=\"stale\"} 1",
        "steward_registry_drifted_nodes 1",
        "steward_registry_events_total{kind=\"status-changed\"} 5",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    assert!(
        !text.contains("steward_registry_heartbeats_total 0\n"),
        "{text}"
    );
    promtool_check(&text);
    beats.abort();
}

#[tokio::test]
async fn public_status_serves_read_only_views_without_credentials() {
    let r = Registry::start(&["--public-status"]).await;
    let (id, _) = r.enroll("m-public", json!({"env": "lab"})).await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/", &format!("/nodes/{id}"), "/metrics"] {
        let resp = plain.get(r.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body = resp.text().await.unwrap();
        if path == "/metrics" {
            promtool_check(&body);
        } else {
            assert!(body.contains("public view"), "{path}: {body}");
            assert!(body.contains("host-m-public"), "{path}");
        }
    }
    let resp = plain.get(r.url("/ui/events")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The API itself stays closed.
    assert_eq!(
        plain.get(r.url("/v1/nodes")).send().await.unwrap().status(),
        401
    );
}
