//! End-to-end: TLS, the plain-HTTP refusal, the read token, the event stream, the OpenAPI
//! document, and that secrets never reach the log.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::{wait_for, Agent};
use common::Registry;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn serves_tls_and_refuses_plain_http_on_public_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut r = Registry::start_with(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "https",
        Some(ck.cert.pem()),
    )
    .await;
    let (st, _) = r.get("/v1/nodes", &r.admin).await;
    assert_eq!(st, 200);
    // Plain HTTP to the TLS port does not get an answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", r.port))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    assert!(untrusting.get(r.url("/healthz")).send().await.is_err());
    r.kill9();

    let out = Command::new(env!("CARGO_BIN_EXE_steward-registry"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("d2"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve plain HTTP on non-loopback address"),
        "{err}"
    );
}

#[tokio::test]
async fn read_token_reads_but_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("read.token");
    std::fs::write(&rt, "read-only-token-0123456789\n").unwrap();
    let r = Registry::start(&["--read-token-file", rt.to_str().unwrap()]).await;
    let read = "read-only-token-0123456789";
    let (id, _) = r.enroll("m-read", json!({})).await;
    assert_eq!(r.get("/v1/nodes", read).await.0, 200);
    assert_eq!(r.get(&format!("/v1/nodes/{id}/spec"), read).await.0, 200);
    assert_eq!(r.get("/v1/events", read).await.0, 200);
    assert_eq!(
        r.put_yaml(&format!("/v1/nodes/{id}/spec"), read, "{}")
            .await
            .0,
        403
    );
    assert_eq!(
        r.req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(read),
            Some(json!({}))
        )
        .await
        .0,
        403
    );
}

#[tokio::test]
async fn event_stream_replays_then_follows() {
    let r = Registry::start(&[]).await;
    let (id, _) = r.enroll("m-sse", json!({})).await;
    let resp = r
        .client
        .get(r.url("/v1/events/stream?after=0"))
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut events: Vec<Value> = Vec::new();
    let mut wrote = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < 3 {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("stream stalled")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block
                .lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            {
                events.push(serde_json::from_str(data).unwrap());
            }
        }
        if events.len() >= 2 && !wrote {
            // Replayed history is in; now a live event.
            wrote = true;
            let (st, _) = r
                .put_yaml(
                    &format!("/v1/nodes/{id}/spec"),
                    &r.admin,
                    "containers: [{name: a, image: busybox}]",
                )
                .await;
            assert_eq!(st, 200);
        }
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["token-created", "node-enrolled", "spec-written"]);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(events[2]["generation"], 1);
    assert_eq!(events[2]["credential"], "admin");
}

#[tokio::test]
async fn openapi_document_validates_and_lists_the_routes() {
    let r = Registry::start(&[]).await;
    let (st, doc) = r.req(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(st, 200);
    assert!(doc["paths"]["/v1/nodes/{id}/spec"]["get"].is_object());
    let path = r.dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    // The test venv made by scripts/deps.sh (python3 -m venv: no pip needed on the system).
    let python = std::env::var("STEWARD_PYTEST_PYTHON")
        .unwrap_or_else(|_| "/opt/steward-pytest/bin/python".to_string());
    let out = Command::new(&python)
        .args(["-c", "import sys,json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{python} is needed for this test (scripts/deps.sh makes it): {e}"));
    assert!(
        out.status.success(),
        "openapi-spec-validator ({python}) refused the document or is missing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test]
async fn secrets_never_reach_the_log_and_are_stored_0600() {
    use std::os::unix::fs::PermissionsExt;
    let r = Registry::start(&[]).await;
    let (_, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({})),
        )
        .await;
    let (id, secret) = r.enroll("m-secret", json!({})).await;
    r.req(
        Method::POST,
        &format!("/v1/nodes/{id}/heartbeat"),
        Some(&secret),
        Some(json!({})),
    )
    .await;
    r.req(Method::GET, "/v1/nodes", Some("wrong-token"), None)
        .await;
    let meta = std::fs::metadata(r.dir.path().join("data/admin.token")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let log = r.log();
    assert!(
        log.contains("admin.token"),
        "the generated token's path is logged"
    );
    for s in [
        r.admin.as_str(),
        secret.as_str(),
        tok["token"].as_str().unwrap(),
    ] {
        assert!(!log.contains(s), "a secret reached the log");
        let hex_part = s.split('.').nth(1).unwrap();
        assert!(!log.contains(hex_part));
    }
    // Not stored in the clear either.
    let mut found = false;
    for entry in walk(&r.dir.path().join("data/db")) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        found |= text.contains(secret.split('.').nth(1).unwrap());
    }
    assert!(!found, "a node secret is stored in the clear");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Established TCP connections of process `pid` to `port`: its sockets (inodes under
/// /proc/PID/fd) found in the kernel's table with remote port `port`.
fn connections_of(pid: u32, port: u16) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // rem_address is HEXIP:HEXPORT; st 01 = ESTABLISHED; column 9 the inode.
            let remote_port = f[2].rsplit(':').next().unwrap();
            if u16::from_str_radix(remote_port, 16).unwrap() == port
                && f[3] == "01"
                && inodes.iter().any(|i| i == f[9])
            {
                n += 1;
            }
        }
    }
    n
}

/// An agent's long-poll and heartbeats share one HTTP/2 connection to the registry (h2c over
/// plain HTTP), so a registry needs one descriptor per agent, not two.
#[tokio::test]
async fn an_agent_holds_one_connection_to_the_registry() {
    let r = Registry::start(&["--heartbeat-interval", "1s"]).await;
    let (st, tok) = r
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    let agent = Agent::start(&r.url(""), tok["token"].as_str().unwrap(), None).await;
    // Several heartbeats while its long-poll waits (30 s).
    let id = agent.id.clone();
    wait_for(30, "heartbeats of the agent", || {
        let r = &r;
        let id = id.clone();
        async move {
            let (_, n) = r.get(&format!("/v1/nodes/{id}"), &r.admin).await;
            n["last_heartbeat"].is_string().then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = agent.child.as_ref().unwrap().id();
    assert_eq!(
        connections_of(pid, r.port),
        1,
        "agent log:\n{}",
        agent.log()
    );
}
