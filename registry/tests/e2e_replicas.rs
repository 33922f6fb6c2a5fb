//! Registry replicas end to end: real `steward-registry` processes sharing a real 3-member etcd
//! cluster (never a mock), real agents pointed at every replica. A long-poll and an SSE stream
//! on one replica see writes made on another; specs written while replicas (the jobs leader
//! included) are killed with SIGKILL all survive with strictly increasing generations and a
//! gap-free event log; a rollout in flight finishes exactly once across a leader kill; losing
//! etcd's quorum fails writes with a 503 naming the store and is never destructive; a payload
//! uploaded on one replica downloads from the others after it dies. Bounds are hang guards.
//! The tests run one at a time (each starts its own etcd cluster, replicas and agents on a
//! small machine); the agents need root (private mount namespaces).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::agent::{content, wait_for, Agent};
use common::etcd::EtcdCluster;
use common::replicas::{
    acked_more, all_events, assert_gap_free, converged, download, fr_fragment, node_secret,
    sha256_hex, start_agents, tc_spec, upload, Acks, Replicas, Writer,
};
use common::Registry;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

/// One test at a time in this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A long-poll of node `id`'s spec on `r` after generation `after`.
fn long_poll(
    r: &Registry,
    id: &str,
    secret: &str,
    after: u64,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let client = r.client.clone();
    let url = r.url(&format!("/v1/nodes/{id}/spec?after={after}&wait=30s"));
    let secret = secret.to_string();
    tokio::spawn(async move {
        let resp = client.get(url).bearer_auth(secret).send().await.unwrap();
        let st = resp.status().as_u16();
        (st, resp.json().await.unwrap_or(Value::Null))
    })
}

/// The highest event seq on `r` (0 when none).
async fn last_seq(r: &Registry) -> u64 {
    all_events(r)
        .await
        .last()
        .map_or(0, |e| e["seq"].as_u64().unwrap())
}

/// The first event of the SSE stream at `url` that `want` accepts.
async fn sse_until(
    client: reqwest::Client,
    url: String,
    token: String,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let resp = client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    loop {
        let chunk = body.next().await.expect("the event stream ended").unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(nl) = buf.find('\n') {
            let line = buf[..nl].to_string();
            buf.drain(..=nl);
            if let Some(data) = line.strip_prefix("data:") {
                let ev: Value = serde_json::from_str(data.trim()).unwrap();
                if want(&ev) {
                    return ev;
                }
            }
        }
    }
}

#[tokio::test]
async fn watcher_on_b_is_woken_by_a_write_on_a_and_sse_on_b_sees_a_events() {
    let _serial = SERIAL.lock().await;
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let rs = Replicas::start(&etcd, 2, &[]).await;
    let (a, b) = (&rs.regs[0], &rs.regs[1]);
    let (id, secret) = a.enroll("m-watch", json!({"role": "web"})).await;
    let spec = |image: &str| json!({"containers": [{"name": "web", "image": image}]});
    let (st, w) = a
        .req(
            Method::PUT,
            &format!("/v1/nodes/{id}/spec"),
            Some(&a.admin),
            Some(spec("nginx:1")),
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let g = w["generation"].as_u64().unwrap();

    // B knows the node (enrolled on A) and its spec, then parks a long-poll after it; an SSE
    // stream on B follows from the last event B has.
    wait_for(30, "B to serve the spec written on A", || async {
        let (st, doc) = b.get(&format!("/v1/nodes/{id}/spec"), &secret).await;
        (st == 200 && doc["generation"] == g).then_some(())
    })
    .await;
    let parked = long_poll(b, &id, &secret, g);
    let from = last_seq(b).await;
    let node = id.clone();
    let sse = tokio::spawn(sse_until(
        b.client.clone(),
        b.url(&format!("/v1/events/stream?after={from}")),
        b.admin.clone(),
        move |e| e["kind"] == "spec-written" && e["node_id"] == node.as_str(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!parked.is_finished(), "the long-poll on B answered early");

    let (st, w) = a
        .req(
            Method::PUT,
            &format!("/v1/nodes/{id}/spec"),
            Some(&a.admin),
            Some(spec("nginx:2")),
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let g2 = w["generation"].as_u64().unwrap();
    assert!(g2 > g);

    let (st, doc) = tokio::time::timeout(Duration::from_secs(20), parked)
        .await
        .expect("the long-poll on B was not woken by the write on A")
        .unwrap();
    assert_eq!(st, 200, "{doc}");
    assert_eq!(doc["generation"], g2);
    assert_eq!(doc["spec"]["containers"][0]["image"], "nginx:2");

    let ev = tokio::time::timeout(Duration::from_secs(20), sse)
        .await
        .expect("the SSE stream on B did not see the event written on A")
        .unwrap();
    assert_eq!(ev["generation"], g2, "{ev}");
    assert!(ev["seq"].as_u64().unwrap() > from);
}

#[tokio::test]
async fn upload_on_a_download_from_c_after_a_dies() {
    let _serial = SERIAL.lock().await;
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let mut rs = Replicas::start(&etcd, 3, &["--blob-copies", "2"]).await;
    let body = content(3 << 20, 77);
    let sha = upload(&rs.regs[0], "tc", "1", body.clone()).await;
    assert_eq!(sha, sha256_hex(&body));
    rs.regs[0].kill9();
    // C first, then B: at most one of them got the second copy, so at least one fetches the
    // blob from the other (A is gone) and checks it.
    for i in [2, 1] {
        let r = &rs.regs[i];
        let (st, got) = download(r, &sha).await;
        assert_eq!(st, 200, "replica r{i}: {}", String::from_utf8_lossy(&got));
        assert_eq!(got.len(), body.len(), "replica r{i}");
        assert_eq!(sha256_hex(&got), sha, "replica r{i} served other bytes");
        // The metadata is there too.
        let (st, v) = r.get("/v1/payloads/tc/1", &r.admin).await;
        assert_eq!((st, v["sha256"].as_str()), (200, Some(sha.as_str())), "{v}");
    }
    assert!(
        rs.regs[1..]
            .iter()
            .any(|r| r.log().contains("blob fetched from a replica")),
        "neither B nor C fetched the blob from the other"
    );
}

/// The generations acknowledged for `node`, in order.
fn acked_generations(acks: &[(String, u64)], node: &str) -> Vec<u64> {
    acks.iter()
        .filter(|(n, _)| n == node)
        .map(|(_, g)| *g)
        .collect()
}

/// Writes through `r` every agent's spec (`tc` at `version` in tc.bin) and the fragment (`fr`
/// at `version` in fr.bin).
async fn write_everywhere(r: &Registry, agents: &[Agent], mp: &std::path::Path, version: &str) {
    for a in agents {
        let (st, w) = r
            .req(
                Method::PUT,
                &format!("/v1/nodes/{}/spec", a.id),
                Some(&r.admin),
                Some(tc_spec(mp, version, "tc.bin")),
            )
            .await;
        assert_eq!(st, 200, "{w}");
    }
    let (st, w) = r
        .req(
            Method::PUT,
            "/v1/fragments/fr",
            Some(&r.admin),
            Some(fr_fragment(mp, version, "fr.bin")),
        )
        .await;
    assert_eq!(st, 200, "{w}");
}

/// Every acknowledged (node, generation) has its spec-written event in `events`, whose seqs
/// have no gap; no agent's node ever left ready, and every agent still runs.
fn assert_logged_and_ready(events: &[Value], acks: &[(String, u64)], agents: &mut [Agent]) {
    assert_gap_free(events);
    for (node, g) in acks {
        assert!(
            events.iter().any(|e| e["kind"] == "spec-written"
                && e["node_id"] == node.as_str()
                && e["generation"] == *g),
            "no spec-written event for node {node} generation {g}"
        );
    }
    for a in agents {
        let moves: Vec<&Value> = events
            .iter()
            .filter(|e| e["kind"] == "health-changed" && e["node_id"] == a.id.as_str())
            .collect();
        assert!(moves.is_empty(), "node {} left ready: {moves:#?}", a.id);
        assert!(a.running(), "agent {} exited:\n{}", a.id, a.log());
    }
}

#[tokio::test]
async fn replica_kill_while_writing_specs() {
    let _serial = SERIAL.lock().await;
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    // Stale after 10 missed 1 s heartbeats: a bound for an agent's fail-over, not a timing
    // assertion.
    let mut rs = Replicas::start(&etcd, 3, &["--stale-after", "10", "--down-after", "30"]).await;
    let mp = tempfile::tempdir().unwrap();
    let mut agents = start_agents(&rs, 3, mp.path()).await;
    // 64 KiB versions 1-3 of payloads tc and fr.
    let body = |name: &str, v: u64| content(64 << 10, v + if name == "tc" { 0 } else { 10 });
    for name in ["tc", "fr"] {
        for v in 1..=3 {
            upload(rs.any(), name, &v.to_string(), body(name, v)).await;
        }
    }

    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = Writer::new(&rs, &agents, mp.path());
    let writing = tokio::spawn(writer.run(acks.clone(), stop.clone()));
    acked_more(&acks, 10, "the first writes").await;

    // Kill a replica that is not the leader (the agents' first URL when it can), bring it back,
    // then kill the leader.
    let leader = rs.leader().await;
    let victim = if leader == 0 { 1 } else { 0 };
    rs.regs[victim].kill9();
    acked_more(&acks, 10, "writes after a replica was killed").await;
    rs.regs[victim].spawn().await;
    acked_more(&acks, 10, "writes after the replica came back").await;
    let leader = rs.leader().await;
    rs.regs[leader].kill9();
    acked_more(&acks, 10, "writes after the leader was killed").await;
    let new_leader = rs.leader().await;
    assert_ne!(new_leader, leader);
    stop.store(true, Ordering::SeqCst);
    let (attempts, failed) = writing.await.unwrap();
    let acks = acks.lock().unwrap().clone();
    eprintln!(
        "{attempts} writes, {} acknowledged node generations, {} failed: {failed:#?}",
        acks.len(),
        failed.len()
    );

    // Generations strictly increase per node, in the order they were acknowledged.
    for a in &agents {
        let gens = acked_generations(&acks, &a.id);
        assert!(
            gens.windows(2).all(|w| w[1] > w[0]),
            "node {}: {gens:?}",
            a.id
        );
    }
    // Last writes, then everything converges.
    let r = rs.any();
    write_everywhere(r, &agents, mp.path(), "3").await;
    let (tc3, fr3) = (body("tc", 3), body("fr", 3));
    for a in &agents {
        converged(r, a, &[("tc", &tc3), ("fr", &fr3)]).await;
        let (_, doc) = r.get(&format!("/v1/nodes/{}/spec", a.id), &r.admin).await;
        let last_acked = acked_generations(&acks, &a.id).last().copied();
        assert!(doc["generation"].as_u64() > last_acked, "{doc}");
        assert_eq!(
            doc["spec"]["payloads"].as_array().unwrap().len(),
            2,
            "{doc}"
        );
    }

    // Every acknowledged write is in the event log, whose seqs have no gap; the agents never
    // left ready.
    assert_logged_and_ready(&all_events(r).await, &acks, &mut agents);
}

#[tokio::test]
async fn rollout_in_flight_survives_leader_kill() {
    let _serial = SERIAL.lock().await;
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let mut rs = Replicas::start(&etcd, 3, &["--stale-after", "10", "--down-after", "30"]).await;
    let mp = tempfile::tempdir().unwrap();
    let agents = start_agents(&rs, 3, mp.path()).await;
    let (v1, v2) = (content(200_000, 31), content(200_000, 32));
    upload(rs.any(), "tc", "1", v1.clone()).await;
    upload(rs.any(), "tc", "2", v2.clone()).await;
    let r = rs.any();
    for a in &agents {
        let (st, w) = r
            .req(
                Method::PUT,
                &format!("/v1/nodes/{}/spec", a.id),
                Some(&r.admin),
                Some(tc_spec(mp.path(), "1", "tc.bin")),
            )
            .await;
        assert_eq!(st, 200, "{w}");
    }
    for a in &agents {
        converged(r, a, &[("tc", &v1)]).await;
    }

    let (st, ro) = r
        .req(
            Method::POST,
            "/v1/rollouts",
            Some(&r.admin),
            Some(
                json!({"payload": "tc", "version": "2", "selector": "role=w",
                        "batch": "1", "timeout": "60s"}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{ro}");
    assert_eq!(ro["batch_count"], 3);
    let id = ro["id"].as_str().unwrap().to_string();
    // Mid-rollout: the second batch has started, the third has not finished.
    let seen = wait_for(120, "the rollout's second batch", || async {
        let (_, ro) = r.get(&format!("/v1/rollouts/{id}"), &r.admin).await;
        (ro["current_batch"].as_u64() >= Some(1)).then_some(ro)
    })
    .await;
    assert_eq!(seen["state"], "running", "finished before the kill: {seen}");
    let leader = rs.leader().await;
    rs.regs[leader].kill9();
    let r = rs.any();
    let done = wait_for(120, "the rollout to finish", || async {
        let (_, ro) = r.get(&format!("/v1/rollouts/{id}"), &r.admin).await;
        (ro["state"] != "running").then_some(ro)
    })
    .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["message"], "done: 3 node(s) at version 2");
    let new_leader = rs.leader().await;
    assert_ne!(new_leader, leader);
    for a in &agents {
        converged(r, a, &[("tc", &v2)]).await;
    }

    // Exactly once: every batch started and converged once, one finish, no gap in the log.
    let events = all_events(r).await;
    assert_gap_free(&events);
    let steps: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "rollout")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .filter(|m| m.starts_with(&format!("rollout {id} ")))
        .collect();
    let count = |what: &str| steps.iter().filter(|m| m.contains(what)).count();
    for b in 1..=3 {
        assert_eq!(count(&format!("batch {b}/3 started")), 1, "{steps:#?}");
        assert_eq!(
            count(&format!("batch {b}/3 converged and attested")),
            1,
            "{steps:#?}"
        );
    }
    assert_eq!(count(": done: "), 1, "{steps:#?}");
    assert_eq!(count("started on 3 node(s)"), 1, "{steps:#?}");
}

/// Status and body of `GET path` on `r` with `token`.
async fn probe(r: &Registry, path: &str, token: &str) -> (u16, Value) {
    let (st, v) = r.get(path, token).await;
    eprintln!("quorum lost: GET {path} -> {st}");
    (st, v)
}

/// Without etcd quorum: a write through any replica answers 503 naming the store; liveness
/// answers, readiness does not; `agent`'s long-poll (after generation `g1`) is answered from
/// memory; reads served from the store answer a clear 503 (after the request time-out).
async fn assert_without_quorum(rs: &Replicas, agent: &Agent, g1: u64, mp: &std::path::Path) {
    let r = &rs.regs[0];
    for reg in &rs.regs {
        let path = format!("/v1/nodes/{}/spec", agent.id);
        let body = tc_spec(mp, "2", "tc.bin");
        let (st, err) = reg
            .req(Method::PUT, &path, Some(&reg.admin), Some(body))
            .await;
        assert_eq!(st, 503, "a write without etcd quorum: {err}");
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains("etcd://127.0.0.1:"), "{err}");
        assert_eq!(err["code"], "store_unavailable", "{err}");
    }
    // What a replica can still answer.
    let (st, _) = probe(r, "/healthz", "").await;
    assert_eq!(st, 200, "liveness does not need the store");
    let (st, ready) = probe(r, "/readyz", "").await;
    assert_eq!(st, 503, "not ready without the store: {ready}");
    let id1 = &agent.id;
    let secret1 = node_secret(agent);
    // An agent's long-poll is answered from memory: 304, nothing newer (the agents go on).
    let (st, lp) = probe(
        r,
        &format!("/v1/nodes/{id1}/spec?after={g1}&wait=2s"),
        &secret1,
    )
    .await;
    assert_eq!(st, 304, "{lp}");
    // Reads served from the store answer a clear 503 naming it (after the request time-out),
    // never hang.
    for (path, token) in [
        ("/v1/nodes".to_string(), r.admin.as_str()),
        (format!("/v1/nodes/{id1}/spec"), secret1.as_str()),
    ] {
        let (st, err) = probe(r, &path, token).await;
        assert_eq!(st, 503, "{err}");
        assert_eq!(err["code"], "store_unavailable", "{err}");
        assert!(
            err["error"]
                .as_str()
                .is_some_and(|m| m.contains("etcd://127.0.0.1:")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn etcd_member_loss() {
    let _serial = SERIAL.lock().await;
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let rs = Replicas::start(&etcd, 2, &["--stale-after", "10", "--down-after", "30"]).await;
    let mp = tempfile::tempdir().unwrap();
    let mut agents = start_agents(&rs, 2, mp.path()).await;
    let (v1, v2) = (content(100_000, 41), content(100_000, 42));
    upload(rs.any(), "tc", "1", v1.clone()).await;
    upload(rs.any(), "tc", "2", v2.clone()).await;
    let r = &rs.regs[0];
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    let write = |a: usize, version: &'static str| {
        let path = format!("/v1/nodes/{}/spec", ids[a]);
        let body = tc_spec(mp.path(), version, "tc.bin");
        async move { r.req(Method::PUT, &path, Some(&r.admin), Some(body)).await }
    };
    for a in 0..2 {
        let (st, w) = write(a, "1").await;
        assert_eq!(st, 200, "{w}");
    }
    for a in &agents {
        converged(r, a, &[("tc", &v1)]).await;
    }

    // One member of three gone (the raft leader): writes go on.
    let first = etcd.leader().await.expect("no etcd leader");
    etcd.kill(first);
    let (st, w) = write(0, "2").await;
    assert_eq!(st, 200, "a write with 2 of 3 etcd members: {w}");
    let g0 = w["generation"].as_u64().unwrap();
    converged(r, &agents[0], &[("tc", &v2)]).await;

    // Two of three gone: no quorum. Writes fail with a 503 naming the store; nothing is lost.
    let (_, spec1) = r
        .get(&format!("/v1/nodes/{}/spec", agents[1].id), &r.admin)
        .await;
    let second = (0..3).find(|&i| i != first).unwrap();
    etcd.kill(second);
    let g1 = spec1["generation"].as_u64().unwrap();
    assert_without_quorum(&rs, &agents[1], g1, mp.path()).await;

    // The agents keep what they run: files stay, processes run (a few resync intervals).
    tokio::time::sleep(Duration::from_secs(8)).await;
    for (a, want) in agents.iter_mut().zip([&v2, &v1]) {
        assert!(a.running(), "agent {} exited:\n{}", a.id, a.log());
        assert_eq!(
            &std::fs::read(a.target("tc")).unwrap(),
            want,
            "agent {} lost its file:\n{}",
            a.id,
            a.log()
        );
    }

    // Members back: writes work again, and what was acknowledged is there.
    etcd.restart(second).await;
    etcd.restart(first).await;
    let w = wait_for(60, "a write after etcd's quorum came back", || async {
        let (st, w) = write(1, "2").await;
        (st == 200).then_some(w)
    })
    .await;
    assert!(w["generation"].as_u64().unwrap() > g1, "{w}");
    for a in &agents {
        converged(r, a, &[("tc", &v2)]).await;
    }
    let (_, doc) = r
        .get(&format!("/v1/nodes/{}/spec", agents[0].id), &r.admin)
        .await;
    assert_eq!(doc["generation"], g0, "{doc}");
    assert_eq!(doc["spec"]["payloads"][0]["version"], "2", "{doc}");
    assert_gap_free(&all_events(r).await);
    // The replicas still know each other: an upload is copied to both again; and one of them
    // runs the jobs again.
    let sha3 = upload(r, "tc", "3", content(50_000, 43)).await;
    for reg in &rs.regs {
        let copy = reg.dir.path().join("data/blobs").join(&sha3);
        assert!(copy.is_file(), "no copy at {}", copy.display());
    }
    rs.leader().await;
}

/// Two enrolments of one machine id at the same moment, one on each replica, with a token each:
/// one enrols, the other is refused (409), and the fleet holds one node for the machine id,
/// in every round (the per-process enrolment lock cannot order two replicas; the store does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_machine_enrolled_on_two_replicas_at_once_gives_one_node() {
    let _serial = SERIAL.lock().await;
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let rs = Replicas::start(&etcd, 2, &[]).await;
    let (a, b) = (&rs.regs[0], &rs.regs[1]);
    let (st, tok) = a
        .req(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(&a.admin),
            Some(json!({"uses": 100})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    for round in 0..8 {
        let machine = format!("m-race-{round}");
        let body =
            json!({"token": tok["token"], "facts": {"machine_id": machine, "hostname": machine}});
        let (ra, rb) = tokio::join!(
            a.req(Method::POST, "/v1/enroll", None, Some(body.clone())),
            b.req(Method::POST, "/v1/enroll", None, Some(body.clone())),
        );
        let mut statuses = [ra.0, rb.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "round {round}: {ra:?} {rb:?}");
        let (st, nodes) = a.get("/v1/nodes", &a.admin).await;
        assert_eq!(st, 200, "{nodes}");
        let same = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["facts"]["machine_id"] == machine.as_str())
            .count();
        assert_eq!(same, 1, "round {round}: nodes for {machine}: {nodes}");
    }
}
