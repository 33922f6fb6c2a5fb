//! Running as one of several replicas on a shared store: the store watch that keeps this
//! process's fleet view and event stream in step with writes made by any replica
//! ([`follow_store`]), the heartbeat batches each replica publishes so that health is judged on
//! the union of what all replicas heard ([`publish_heartbeats`]), and the jobs that must run on
//! exactly one replica at a time, started and stopped with the store's leader election
//! ([`run_jobs`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::kv::{Revision, WatchEvent};
use crate::state::{AppState, Inner};
use crate::store::StoreError;

/// Key prefix of the heartbeat batches (`hb/{replica}/{part}`).
const HEARTBEATS: &str = "hb/";
/// Most nodes in one part of a heartbeat batch (one key): node ids are 36-byte UUIDs, so a part
/// is about 0.4 MB of JSON, well under etcd's request limit (1.5 MiB by default), which a whole
/// batch of 100,000 nodes (5 MB) is not.
const PER_PART: usize = 8_000;

/// What one replica heard since its previous batch: node id -> (milliseconds before the batch
/// was written, observed generation). Ages, not times, so replicas' clocks need not agree.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatBatch {
    pub written_at: DateTime<Utc>,
    pub nodes: BTreeMap<String, (u64, u64)>,
}

/// Starts following the store from revision `from` in the background, for as long as `state`
/// lives. Changes are applied to the fleet view and stored events are broadcast to live
/// subscribers (the SSE streams), whichever replica wrote them.
pub async fn follow_store(state: &AppState, from: Revision) -> Result<(), StoreError> {
    let stream = state.store.kv().watch("", from).await?;
    let weak = Arc::downgrade(&state.0);
    tokio::spawn(follow(weak, stream));
    Ok(())
}

async fn follow(weak: Weak<Inner>, mut stream: crate::kv::WatchStream) {
    loop {
        let Some(item) = stream.next().await else {
            tracing::warn!("store watch ended; following again");
            match rewatch(&weak).await {
                Some(s) => stream = s,
                None => return,
            }
            continue;
        };
        let Some(inner) = weak.upgrade() else { return };
        let state = AppState(inner);
        match item {
            Ok(changes) => {
                for c in &changes {
                    apply(&state, c);
                }
                if changes.iter().any(|c| touches_fragments(&c.key)) {
                    // In a task of its own: it waits for this process's spec change in progress.
                    tokio::spawn(follow_fragments(state));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "store watch failed; reloading the fleet view");
                drop(state);
                match rewatch(&weak).await {
                    Some(s) => stream = s,
                    None => return,
                }
            }
        }
    }
}

/// Reloads what a broken watch may have missed and watches again (retrying every second).
async fn rewatch(weak: &Weak<Inner>) -> Option<crate::kv::WatchStream> {
    loop {
        let state = AppState(weak.upgrade()?);
        match reload(&state).await {
            Ok(s) => return Some(s),
            Err(e) => tracing::warn!(error = %e, "cannot follow the store yet; retrying"),
        }
        drop(state);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a change to `key` changes the fragment set.
fn touches_fragments(key: &str) -> bool {
    key.starts_with("fragments/") || key == crate::store::GHOSTS
}

/// Takes a fragment change from the store watch (retrying a failed store read every second, a
/// few times; a broken watch reloads the set anyway).
async fn follow_fragments(state: AppState) {
    for attempt in 1..=5 {
        match state.specs.follow_fragments().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, "cannot read the fragments after a change");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Reads the fragment set from the store and gives it to the fleet view (which wakes the nodes
/// whose generation it raised).
async fn reload_fragments(state: &AppState) -> Result<(), StoreError> {
    let (ghosts, version) = state.store.ghosts().await?;
    let set =
        crate::fragment_set::FragmentSet::new(state.store.fragments().await?, ghosts, version);
    // A pass over every node: off the async workers.
    let fleet = state.fleet.clone();
    tokio::task::spawn_blocking(move || fleet.set_fragments(Arc::new(set)))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    Ok(())
}

async fn reload(state: &AppState) -> Result<crate::kv::WatchStream, StoreError> {
    let rev = state.store.kv().revision().await?;
    reload_fragments(state).await?;
    state
        .store
        .scan("nodes/", |_, rec| state.fleet.apply_node(&rec))
        .await?;
    for (id, rec) in state.store.healths().await? {
        state.fleet.apply_health(&id, &rec);
    }
    state
        .store
        .scan("specs/", |id, rec| state.fleet.apply_spec(&id, &rec))
        .await?;
    // A revocation the broken watch missed must not stay unseen.
    state.credentials.reload(state.store.credentials().await?);
    Ok(state.store.kv().watch("", rev + 1).await?)
}

fn apply(state: &AppState, c: &WatchEvent) {
    let (area, id) = c.key.split_once('/').unwrap_or((c.key.as_str(), ""));
    let Some(value) = &c.value else {
        match area {
            "resets" => state.fleet.set_resets(id, false),
            "ui-sessions" => state.logins.apply(id, None),
            "credentials" => state.credentials.apply(id, None),
            _ => {}
        }
        return;
    };
    let decoded = match area {
        "events" => serde_json::from_slice(value).map(|e| {
            let _ = state.events.send(e);
        }),
        "specs" => serde_json::from_slice(value).map(|r| state.fleet.apply_spec(id, &r)),
        "nodes" => serde_json::from_slice(value).map(|r| state.fleet.apply_node(&r)),
        "health" => serde_json::from_slice(value).map(|r| state.fleet.apply_health(id, &r)),
        "rollouts" => serde_json::from_slice::<steward_proto::Rollout>(value).map(|r| {
            use steward_proto::RolloutState as S;
            if matches!(r.state, S::Running | S::RollingBack) {
                state.rollouts.spawn_driver(&r.id);
            }
        }),
        "resets" => {
            state.fleet.set_resets(id, true);
            Ok(())
        }
        "alerts" => {
            state.alerts.wake();
            Ok(())
        }
        "ui-sessions" => serde_json::from_slice(value).map(|s| state.logins.apply(id, Some(s))),
        "credentials" => {
            serde_json::from_slice(value).map(|c| state.credentials.apply(id, Some(c)))
        }
        "hb" if Some(batch_replica(id)) != state.settings.replica_id.as_deref() => {
            serde_json::from_slice(value).map(|b| apply_batch(state, &b))
        }
        _ => Ok(()),
    };
    if let Err(e) = decoded {
        tracing::warn!(key = %c.key, error = %e, "undecodable record in the store watch");
    }
}

/// The replica a heartbeat batch key (`hb/{replica}/{part}`, or `hb/{replica}` from a
/// registry before batches were cut in parts) was written by, from the key without `hb/`.
fn batch_replica(id: &str) -> &str {
    id.split_once('/').map_or(id, |(replica, _)| replica)
}

/// `batch` cut into parts of at most `per` nodes, each with the batch's time (one part at
/// least: an empty batch is written too).
fn parts(batch: HeartbeatBatch, per: usize) -> Vec<HeartbeatBatch> {
    let mut out = Vec::with_capacity(batch.nodes.len().div_ceil(per.max(1)).max(1));
    let mut rest = batch.nodes.into_iter().peekable();
    loop {
        let nodes: BTreeMap<_, _> = rest.by_ref().take(per.max(1)).collect();
        out.push(HeartbeatBatch {
            written_at: batch.written_at,
            nodes,
        });
        if rest.peek().is_none() {
            return out;
        }
    }
}

fn apply_batch(state: &AppState, b: &HeartbeatBatch) {
    let now = Instant::now();
    for (node, (age_ms, observed)) in &b.nodes {
        let age = Duration::from_millis(*age_ms);
        let seen = now.checked_sub(age).unwrap_or(now);
        let at = b.written_at - chrono::Duration::milliseconds(*age_ms as i64);
        state.fleet.apply_heard(node, seen, at, *observed);
    }
}

/// Stores the last use of the named credentials this replica saw, once a minute (every
/// replica: each knows only the requests it took).
pub async fn store_credential_use(state: AppState) {
    let mut iv = tokio::time::interval(Duration::from_secs(60));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        if let Err(e) = state.credentials.flush_last_used().await {
            tracing::warn!(error = %e, "cannot store the credentials' last use; trying again later");
        }
    }
}

/// Publishes, once per heartbeat interval, the nodes this replica heard from since its last
/// batch, in parts of at most [`PER_PART`] nodes (one store write per part: a handful per
/// interval whatever the fleet size; parts a smaller batch no longer fills are written empty,
/// so none is left holding old news). Only with a replica id (a shared store).
pub async fn publish_heartbeats(state: AppState) {
    let Some(me) = state.settings.replica_id.clone() else {
        return;
    };
    let mut iv = tokio::time::interval(state.settings.heartbeat_interval);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last, mut written) = (Instant::now(), 0usize);
    loop {
        iv.tick().await;
        let now = Instant::now();
        // A pass over the whole fleet and its JSON: off the async workers (heartbeats).
        let fleet = state.fleet.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            let mut batch = HeartbeatBatch {
                written_at: Utc::now(),
                nodes: BTreeMap::new(),
            };
            fleet.for_each(|id, ln| {
                let l = ln.lock();
                if l.heard_here.is_some_and(|t| t >= last) {
                    let age = now.duration_since(l.last_seen).as_millis() as u64;
                    batch
                        .nodes
                        .insert(id.to_string(), (age, l.observed_generation));
                }
            });
            let at = batch.written_at;
            let mut values: Vec<Vec<u8>> = parts(batch, PER_PART)
                .iter()
                .map(|p| serde_json::to_vec(p).unwrap_or_default())
                .collect();
            let empty = HeartbeatBatch {
                written_at: at,
                nodes: BTreeMap::new(),
            };
            values.resize(
                values.len().max(written),
                serde_json::to_vec(&empty).unwrap_or_default(),
            );
            values
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        last = now;
        written = encoded.len();
        for (i, value) in encoded.into_iter().enumerate() {
            let key = format!("{HEARTBEATS}{me}/{i}");
            if let Err(e) = state.store.kv().put_session(&key, value).await {
                tracing::warn!(error = %e, part = i, "publishing the heartbeat batch failed");
            }
        }
    }
}

/// Events kept in the log: older ones are deleted by the leader, a batch at a time.
pub const EVENTS_KEPT: u64 = 100_000;
/// Most events deleted per transaction (etcd allows 128 operations in one).
const TRIM_BATCH: usize = 100;

/// Keeps the event log to its last [`EVENTS_KEPT`] events and the audit trail to
/// [`crate::audit::AUDIT_KEPT`] (on the leader; once a minute).
async fn trim_events(state: AppState) {
    let mut iv = tokio::time::interval(Duration::from_secs(60));
    loop {
        iv.tick().await;
        let last = match state.store.last_event_seq().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "event trimming: cannot read the event counter");
                continue;
            }
        };
        let upto = last.saturating_sub(EVENTS_KEPT);
        let mut trimmed = 0;
        loop {
            match state.store.trim_events(upto, TRIM_BATCH).await {
                Ok(0) => break,
                Ok(n) => trimmed += n,
                Err(e) => {
                    tracing::warn!(error = %e, "event trimming failed; trying again later");
                    break;
                }
            }
        }
        if trimmed > 0 {
            tracing::info!(trimmed, kept_from = upto + 1, "old events deleted");
        }
        match state.audit.trim(TRIM_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(trimmed = n, "old audit records deleted"),
            Err(e) => tracing::warn!(error = %e, "audit trimming failed; trying again later"),
        }
    }
}

/// Runs the jobs that must run on one replica at a time — the health monitor, event trimming,
/// the alert dispatcher and the rollout drivers — while this process holds the store's leadership, and stops them when it loses it.
pub async fn run_jobs(state: AppState) {
    let me = state
        .settings
        .replica_id
        .clone()
        .unwrap_or_else(|| "embedded".into());
    state.rollouts.set_leading(false);
    let mut leadership = loop {
        match state.store.kv().elect("jobs", &me).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot campaign for the jobs leadership; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        if leadership
            .is_leader
            .wait_for(|leader| *leader)
            .await
            .is_err()
        {
            return;
        }
        tracing::info!(replica = %me, "leading: running the health monitor, alert dispatcher, rollout drivers and session jobs");
        let monitor = tokio::spawn(crate::nodes::health_monitor(state.nodes.clone()));
        let trimmer = tokio::spawn(trim_events(state.clone()));
        let alerts = tokio::spawn(state.alerts.clone().dispatch());
        let sessions = tokio::spawn(state.sessions.clone().run_jobs());
        state.rollouts.set_leading(true);
        if let Err(e) = state.rollouts.resume_all().await {
            tracing::warn!(error = %e, "resuming rollouts failed; they resume when next written");
        }
        let _ = leadership.is_leader.wait_for(|leader| !*leader).await;
        tracing::warn!(replica = %me, "leadership lost: stopping the jobs");
        monitor.abort();
        trimmer.abort();
        alerts.abort();
        sessions.abort();
        state.rollouts.set_leading(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> HeartbeatBatch {
        HeartbeatBatch {
            written_at: Utc::now(),
            nodes: (0..n)
                .map(|i| (format!("node-{i:05}"), (i as u64, 1)))
                .collect(),
        }
    }

    #[test]
    fn a_heartbeat_batch_is_cut_in_parts_that_together_hold_it_once() {
        for (n, per, sizes) in [
            (0, 8, vec![0]),
            (1, 8, vec![1]),
            (8, 8, vec![8]),
            (9, 8, vec![8, 1]),
            (20_001, 8_000, vec![8_000, 8_000, 4_001]),
        ] {
            let whole = batch(n);
            let (at, nodes) = (whole.written_at, whole.nodes.clone());
            let got = parts(whole, per);
            let got_sizes: Vec<usize> = got.iter().map(|p| p.nodes.len()).collect();
            assert_eq!(got_sizes, sizes, "{n} nodes, {per} per part");
            assert!(got.iter().all(|p| p.written_at == at));
            let union: BTreeMap<_, _> = got.into_iter().flat_map(|p| p.nodes).collect();
            assert_eq!(union, nodes, "{n} nodes, {per} per part");
        }
    }

    #[test]
    fn a_full_part_fits_in_an_etcd_request_with_room_to_spare() {
        let mut b = batch(0);
        for i in 0..PER_PART {
            let id = uuid::Uuid::new_v4().to_string();
            b.nodes.insert(id, (u64::MAX, i as u64 * 1_000_000));
        }
        let bytes = serde_json::to_vec(&b).unwrap_or_default().len();
        assert!(bytes < 1024 * 1024, "{bytes} bytes");
    }

    #[test]
    fn the_replica_is_read_from_batch_keys_old_and_new() {
        assert_eq!(batch_replica("r1/0"), "r1");
        assert_eq!(batch_replica("r1/12"), "r1");
        assert_eq!(batch_replica("r1"), "r1");
    }
}
