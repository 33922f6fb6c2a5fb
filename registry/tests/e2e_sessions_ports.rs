//! Session ports never taken from the host: a port the node reports in use (its status's
//! `ports_in_use`) is never allocated, whether the status comes from a fake node over HTTP or
//! from a real agent that sees a listener of this test process.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;

use common::agent::{wait_for, Agent};
use common::sessions::{create, enrollment_token, node_with_secret, put_template, registry_with};
use reqwest::Method;
use serde_json::{json, Value};

/// A template of one host port and no workload (nothing to run: only the allocation counts).
fn template(selector: &str) -> Value {
    json!({"selector": selector, "ports": ["http"], "ttl": "1h", "spec": {}})
}

#[tokio::test]
async fn ports_a_node_reports_in_use_are_never_allocated() {
    let (r, _cfg) = registry_with("[sessions]\nports = \"30000-30003\"\n").await;
    let (id, secret) = node_with_secret(&r, vec![r.url("")], "ports-m", json!({})).await;
    // The node's host listens on the first two ports of the range (and on 22, outside it).
    let status = json!({"observed_generation": 0, "resources": [], "payloads": [],
                        "ports_in_use": [22, 30000, 30001], "digest": "d1"});
    let st = r
        .client
        .put(r.url(&format!("/v1/nodes/{id}/status")))
        .bearer_auth(&secret)
        .json(&status)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(st, 204);
    let (_, n) = r.get(&format!("/v1/nodes/{id}"), &r.admin).await;
    assert_eq!(
        n["status"]["ports_in_use"],
        json!([22, 30000, 30001]),
        "{n}"
    );
    assert_eq!(put_template(&r, &r.admin, "web", template("")).await.0, 200);

    let mut got = Vec::new();
    for owner in ["ada", "bob"] {
        let (st, s) = create(&r, &r.admin, json!({"template": "web", "owner": owner})).await;
        assert_eq!(st, 201, "{s}");
        assert_eq!(s["node"], id.as_str());
        got.push(s["allocations"]["ports"]["http"].as_u64().unwrap());
    }
    assert_eq!(got, [30002, 30003], "the ports nobody uses, lowest first");
    let (st, e) = create(&r, &r.admin, json!({"template": "web", "owner": "cy"})).await;
    assert_eq!(st, 409, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "node {id} has no free host port left in 30000-30003 (4 taken)"
        )),
        "{e}"
    );
}

/// A listener on the first port of the range, and the registry's range from `base`, where
/// the bind succeeds (a port some other process holds is skipped).
fn listen_at_a_range() -> (TcpListener, u16) {
    // A range of its own (10 ports from a base depending on the process), as in
    // e2e_sessions_agent: another test's leftovers hold none of them.
    let start = 24_000 + (std::process::id() % 100) as u16 * 10;
    (0..100)
        .map(|i| start + i * 10)
        .find_map(|base| {
            TcpListener::bind(("127.0.0.1", base))
                .ok()
                .map(|l| (l, base))
        })
        .expect("a free port to listen on")
}

#[tokio::test]
async fn a_real_agent_reports_a_host_listener_and_its_port_is_skipped() {
    let (listener, base) = listen_at_a_range();
    let (r, _cfg) = registry_with(&format!("[sessions]\nports = \"{base}-{}\"\n", base + 9)).await;
    let tok = enrollment_token(&r, json!({"pool": "ports"})).await;
    let agent = Agent::start(&r.url(""), &tok, None).await;
    assert_eq!(
        put_template(&r, &r.admin, "web", template("pool=ports"))
            .await
            .0,
        200
    );
    // An (empty) spec of its own answers the agent's first long poll at once; the status of
    // its pass lists the port this test listens on.
    let spec = format!("/v1/nodes/{}/spec", agent.id);
    let (st, w) = r
        .req(Method::PUT, &spec, Some(&r.admin), Some(json!({})))
        .await;
    assert_eq!(st, 200, "{w}");
    let path = format!("/v1/nodes/{}", agent.id);
    wait_for(120, "the agent to report the listener's port", || async {
        let (_, n) = r.get(&path, &r.admin).await;
        let ports = n["status"]["ports_in_use"].as_array()?.clone();
        ports.contains(&json!(base)).then_some(())
    })
    .await;
    let (st, s) = create(&r, &r.admin, json!({"template": "web", "owner": "ada"})).await;
    assert_eq!(st, 201, "{s}");
    assert_eq!(s["node"], agent.id.as_str());
    let port = s["allocations"]["ports"]["http"].as_u64().unwrap();
    assert_ne!(port, u64::from(base), "the port a host process listens on");
    assert!(
        (u64::from(base) + 1..=u64::from(base) + 9).contains(&port),
        "{s}"
    );
    drop(listener);
}
