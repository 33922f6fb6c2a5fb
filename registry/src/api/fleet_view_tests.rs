//! The in-memory fleet view agrees with the store after every kind of write (enrolment, status,
//! labels, health transitions both ways, decommissioning) and after a restart (a fresh state
//! loaded from the same store), and `GET /v1/nodes` pages through it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::tests::{call, enroll, ADMIN, READ};
use crate::fleet::{Brief, Fleet};
use crate::state::{AppState, Settings};
use crate::store::Store;

/// What the fleet view holds of a node that the store also holds.
#[derive(Debug, PartialEq)]
struct Seen {
    health: steward_proto::Health,
    labels: steward_proto::Labels,
    brief: Brief,
    secret: Option<[u8; 32]>,
}

fn view_of(fleet: &Fleet) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    fleet.for_each(|id, ln| {
        let l = ln.lock();
        out.insert(
            id.to_string(),
            Seen {
                health: l.health,
                labels: (*l.labels).clone(),
                brief: l.brief.clone(),
                secret: l.secret_sha256,
            },
        );
    });
    out
}

async fn stored(store: &Store) -> BTreeMap<String, Seen> {
    store
        .nodes_with_health()
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let seen = Seen {
                health: r.health,
                labels: r.labels.clone(),
                brief: Brief::of(&r),
                secret: r.secret_sha256,
            };
            (r.id, seen)
        })
        .collect()
}

async fn state_on(store: Store, dir: &std::path::Path) -> AppState {
    let settings = Settings {
        heartbeat_interval: Duration::from_secs(10),
        stale_after: 1,
        down_after: 2,
        ..Settings::default()
    };
    AppState::new(settings, store, dir, ADMIN, Some(READ))
        .await
        .unwrap()
}

/// Makes a node look silent for `secs` (no sleeping: the health monitor compares instants).
fn silence(state: &AppState, id: &str, secs: u64) {
    let ln = state.fleet.live(id).unwrap();
    ln.lock().last_seen = Instant::now() - Duration::from_secs(secs);
}

async fn agree(state: &AppState, what: &str) {
    assert_eq!(
        view_of(&state.fleet),
        stored(&state.store).await,
        "after {what}"
    );
}

#[tokio::test]
async fn the_fleet_view_agrees_with_the_store_after_every_write_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = state_on(store.clone(), dir.path()).await;
    let mut nodes = Vec::new();
    for m in ["m-a", "m-b", "m-c", "m-d"] {
        nodes.push(enroll(&state, m).await);
    }
    agree(&state, "enrolment").await;
    let (a, a_secret) = &nodes[0];
    let status = json!({
        "observed_generation": 0, "digest": "d1",
        "resources": [
            {"kind": "container", "name": "web", "state": "failed"},
            {"kind": "vm", "name": "v", "state": "converged"}],
        "payloads": [{"name": "p", "version": "1", "path": "/srv/p", "expected": "aa", "actual": "bb"}]
    });
    let (st, _) = call(
        &state,
        Method::PUT,
        &format!("/v1/nodes/{a}/status"),
        Some(a_secret),
        Some(("application/json", status.to_string())),
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let brief = state.fleet.live(a).unwrap().lock().brief.clone();
    assert_eq!(
        (brief.containers, brief.vms, brief.failed, brief.drifted),
        (1, 1, 1, true)
    );
    agree(&state, "a status").await;
    let b = &nodes[1].0;
    let (st, _) = call(
        &state,
        Method::PATCH,
        &format!("/v1/nodes/{b}"),
        Some(ADMIN),
        Some((
            "application/json",
            json!({"labels": {"role": "db"}}).to_string(),
        )),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    agree(&state, "a label change").await;
    // b goes stale, c down, a stays.
    silence(&state, b, 15);
    silence(&state, &nodes[2].0, 25);
    state.nodes.check_health().await;
    agree(&state, "health transitions down").await;
    let health = |id: &str| state.fleet.live(id).unwrap().lock().health;
    use steward_proto::Health::*;
    assert_eq!(
        (health(a), health(b), health(&nodes[2].0)),
        (Ready, Stale, Down)
    );
    // c comes back on a heartbeat (stored by the writer in a batch).
    let (c, c_secret) = &nodes[2];
    let (st, _) = call(
        &state,
        Method::POST,
        &format!("/v1/nodes/{c}/heartbeat"),
        Some(c_secret),
        Some((
            "application/json",
            json!({"observed_generation": 0}).to_string(),
        )),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    state.nodes.store_health().await.unwrap();
    assert_eq!(health(c), Ready);
    agree(&state, "a recovery").await;
    let d = &nodes[3].0;
    let (st, _) = call(
        &state,
        Method::DELETE,
        &format!("/v1/nodes/{d}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    silence(&state, d, 100);
    state.nodes.check_health().await;
    agree(&state, "decommissioning").await;
    // A restart: a fresh state loaded from the same store holds the same view.
    let before = view_of(&state.fleet);
    let restarted = state_on(store.clone(), dir.path()).await;
    assert_eq!(view_of(&restarted.fleet), before, "after a restart");
    // Events: one per node for these few changes.
    let events = store.events_after(0, 1000).await.unwrap();
    let mut changes: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.kind == steward_proto::EventKind::HealthChanged)
        .map(|e| (e.node_id.clone().unwrap_or_default(), e.message.clone()))
        .collect();
    // The monitor's pass sees b and c in no particular order; the recovery comes after both.
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!(changes[2], (c.to_string(), "down -> ready".to_string()));
    changes.truncate(2);
    changes.sort_by_key(|(id, _)| id != b);
    assert_eq!(
        changes,
        [
            (b.to_string(), "ready -> stale".to_string()),
            (c.to_string(), "ready -> down".to_string()),
        ]
    );
}

#[tokio::test]
async fn a_fragment_for_many_nodes_is_one_event_naming_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = state_on(store.clone(), dir.path()).await;
    let n = crate::events::EACH_NODE_UP_TO + 2;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(enroll(&state, &format!("m-{i:02}")).await.0);
    }
    // Two nodes labelled: a fragment for them is one event each.
    for id in &ids[..2] {
        let (st, _) = call(
            &state,
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(ADMIN),
            Some((
                "application/json",
                json!({"labels": {"few": "yes"}}).to_string(),
            )),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    let from = store.last_event_seq().await.unwrap();
    for (name, selector) in [("few", "few=yes"), ("all", "")] {
        let spec = json!({"containers": [{"name": name, "image": "nginx:1"}]});
        let body = json!({"selector": selector, "spec": spec}).to_string();
        let (st, w) = call(
            &state,
            Method::PUT,
            &format!("/v1/fragments/{name}"),
            Some(ADMIN),
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{w}");
    }
    let written: Vec<(Option<String>, String)> = store
        .events_after(from, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == steward_proto::EventKind::SpecWritten)
        .map(|e| (e.node_id, e.message))
        .collect();
    assert_eq!(written.len(), 3, "{written:?}");
    assert!(
        written[..2].iter().all(|(id, _)| id.is_some()),
        "{written:?}"
    );
    assert_eq!(written[2].0, None);
    assert!(
        written[2]
            .1
            .starts_with(&format!("new generation for {n} nodes")),
        "{}",
        written[2].1
    );
}
