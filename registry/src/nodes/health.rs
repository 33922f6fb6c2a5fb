//! Node health: transitions queued without waiting (by heartbeats and the health monitor) and
//! stored in batches — each node's small `health/{id}` record, many per store transaction, with
//! their events (one per node, or one per kind of change when many nodes change at once) and
//! the `node-down` alerts — and the health monitor that moves silent nodes to stale or down
//! (run on the replica holding the jobs leadership, `replica.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use steward_proto::{Event, EventKind, Health};

use super::Nodes;
use crate::fleet::Live;
use crate::store::HealthRecord;

/// One change of kind (`from -> to`) is recorded as one event per node up to this many nodes in
/// a batch; more make one event naming the count.
use crate::events::EACH_NODE_UP_TO as EVENTS_EACH_UP_TO;
/// Transitions arriving within this long of each other are stored together.
const GATHER: Duration = Duration::from_millis(100);
/// Wait after a failed store write before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// A health change of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub id: String,
    pub from: Health,
    pub to: Health,
    pub last_heartbeat: Option<DateTime<Utc>>,
}

impl Transition {
    pub(super) fn of(id: &str, from: Health, l: &Live) -> Self {
        Self {
            id: id.to_string(),
            from,
            to: l.health,
            last_heartbeat: l.last_heartbeat,
        }
    }
}

/// What one batch of transitions stores: each node's newest health, the events and the nodes
/// that went down.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    pub records: Vec<(String, HealthRecord)>,
    /// `(node, message)`: a node's own event, or (`None`) one for many nodes.
    pub events: Vec<(Option<String>, String)>,
    /// `(node, was)` for every node that turned down.
    pub down: Vec<(String, Health)>,
}

/// Folds transitions (in the order they happened) into one [`Batch`]. Pure.
pub fn batch(ts: &[Transition]) -> Batch {
    let mut b = Batch::default();
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut kinds: Vec<((Health, Health), Vec<&str>)> = Vec::new();
    for t in ts {
        let rec = HealthRecord {
            health: t.to,
            last_heartbeat: t.last_heartbeat,
        };
        match at.get(t.id.as_str()) {
            Some(&i) => b.records[i].1 = rec,
            None => {
                at.insert(&t.id, b.records.len());
                b.records.push((t.id.clone(), rec));
            }
        }
        match kinds.iter_mut().find(|(k, _)| *k == (t.from, t.to)) {
            Some((_, ids)) => ids.push(&t.id),
            None => kinds.push(((t.from, t.to), vec![&t.id])),
        }
        if t.to == Health::Down && t.from != Health::Down {
            b.down.push((t.id.clone(), t.from));
        }
    }
    let many = |k: &(Health, Health)| {
        kinds
            .iter()
            .any(|(kk, ids)| kk == k && ids.len() > EVENTS_EACH_UP_TO)
    };
    for t in ts.iter().filter(|t| !many(&(t.from, t.to))) {
        b.events
            .push((Some(t.id.clone()), format!("{} -> {}", t.from, t.to)));
    }
    for ((from, to), ids) in kinds.iter().filter(|(k, _)| many(k)) {
        let shown: Vec<&str> = ids.iter().take(5).copied().collect();
        b.events.push((
            None,
            format!(
                "{} nodes {from} -> {to} (first: {}, ...)",
                ids.len(),
                shown.join(", ")
            ),
        ));
    }
    b
}

/// Transitions waiting to be stored, and the writer's wake-up.
#[derive(Debug, Clone, Default)]
pub struct HealthQueue {
    pending: Arc<Mutex<Vec<Transition>>>,
    wake: Arc<tokio::sync::Notify>,
    /// One batch stored at a time: events keep the order of the changes.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl HealthQueue {
    /// Queues a transition; the writer stores it shortly (never waits for the store).
    pub fn push(&self, t: Transition) {
        self.lock().push(t);
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Transition>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Nodes {
    /// Stores every queued transition now (in batches); on a store error they stay queued.
    pub async fn store_health(&self) -> Result<(), crate::store::StoreError> {
        let _one = self.health.writing.lock().await;
        let ts = std::mem::take(&mut *self.health.lock());
        if ts.is_empty() {
            return Ok(());
        }
        let b = batch(&ts);
        if let Err(e) = self.store.put_healths(&b.records).await {
            // Put back in front of anything queued meanwhile, in order.
            let mut q = self.health.lock();
            let newer = std::mem::replace(&mut *q, ts);
            q.extend(newer);
            return Err(e);
        }
        self.record_health_events(b).await;
        Ok(())
    }

    async fn record_health_events(&self, b: Batch) {
        let now = Utc::now();
        let events: Vec<Event> = b
            .events
            .into_iter()
            .map(|(node, message)| {
                match &node {
                    Some(id) => {
                        tracing::info!(node = %id, change = %message, "node health changed")
                    }
                    None => tracing::warn!(change = %message, "health of many nodes changed"),
                }
                let mut ev = Event::new(
                    EventKind::HealthChanged,
                    node.as_deref(),
                    None,
                    &steward_proto::Actor::SYSTEM,
                    message,
                );
                ev.time = now;
                ev
            })
            .collect();
        if let Err(e) = self.events.record_many(events).await {
            tracing::error!(error = %format!("{e:#}"), "recording health change events failed");
        }
        for (id, from) in b.down {
            let a = crate::alerts::alert(
                steward_proto::api::AlertKind::NodeDown,
                &id,
                None,
                format!(
                    "node {id} is down: no heartbeat for {} intervals (was {from})",
                    self.settings.down_after
                ),
            );
            if let Err(e) = self.alerts.raise(a).await {
                tracing::warn!(node = %id, error = %e, "raising the node-down alert failed");
            }
        }
    }
}

/// Stores queued health transitions as they come (gathered for [`GATHER`]), until the task is
/// dropped.
pub async fn health_writer(nodes: Nodes) {
    loop {
        nodes.health.wake.notified().await;
        tokio::time::sleep(GATHER).await;
        while let Err(e) = nodes.store_health().await {
            tracing::error!(error = %format!("{e:#}"), "storing health changes failed; retrying");
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Health a node should have after `silent` without heartbeats.
pub fn health_for(
    silent: Duration,
    interval: Duration,
    stale_after: u32,
    down_after: u32,
) -> Health {
    if silent >= interval * down_after {
        Health::Down
    } else if silent >= interval * stale_after {
        Health::Stale
    } else {
        Health::Ready
    }
}

impl Nodes {
    /// One pass of the health monitor: moves silent nodes to stale or down, and stores the
    /// changes (one look at every node under the fleet's read lock; nothing written when
    /// nothing changed).
    pub async fn check_health(&self) {
        let s = &self.settings;
        let now = Instant::now();
        let mut changed = 0usize;
        self.fleet.for_each(|id, ln| {
            let mut l = ln.lock();
            if l.health == Health::Decommissioned {
                return;
            }
            let next = health_for(
                now.duration_since(l.last_seen),
                s.heartbeat_interval,
                s.stale_after,
                s.down_after,
            );
            // Only silence degrades health here; recovery happens on the next heartbeat.
            if next <= l.health {
                return;
            }
            let from = l.health;
            l.health = next;
            self.health.push(Transition::of(id, from, &l));
            changed += 1;
        });
        if changed > 0 {
            if let Err(e) = self.store_health().await {
                tracing::error!(error = %format!("{e:#}"), "storing health changes failed; retrying");
            }
        }
    }
}

/// Runs the health monitor until the task is dropped.
pub async fn health_monitor(nodes: Nodes) {
    let tick = (nodes.settings.heartbeat_interval / 4).max(Duration::from_millis(50));
    let mut iv = tokio::time::interval(tick);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        nodes.check_health().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    #[test]
    fn health_thresholds() {
        let i = Duration::from_secs(10);
        let cases = [
            (0, Ready),
            (29, Ready),
            (30, Stale),
            (99, Stale),
            (100, Down),
            (1000, Down),
        ];
        for (secs, want) in cases {
            assert_eq!(
                health_for(Duration::from_secs(secs), i, 3, 10),
                want,
                "{secs}s"
            );
        }
    }

    fn t(id: &str, from: Health, to: Health) -> Transition {
        Transition {
            id: id.into(),
            from,
            to,
            last_heartbeat: None,
        }
    }

    fn rec(health: Health) -> HealthRecord {
        HealthRecord {
            health,
            last_heartbeat: None,
        }
    }

    #[test]
    fn a_batch_keeps_each_nodes_newest_health_and_every_change_in_order() {
        let b = batch(&[
            t("a", Ready, Stale),
            t("b", Stale, Down),
            t("a", Stale, Down),
            t("a", Down, Ready),
        ]);
        assert_eq!(
            b.records,
            vec![("a".to_string(), rec(Ready)), ("b".to_string(), rec(Down))]
        );
        let ev: Vec<(Option<&str>, &str)> = b
            .events
            .iter()
            .map(|(n, m)| (n.as_deref(), m.as_str()))
            .collect();
        assert_eq!(
            ev,
            [
                (Some("a"), "ready -> stale"),
                (Some("b"), "stale -> down"),
                (Some("a"), "stale -> down"),
                (Some("a"), "down -> ready"),
            ]
        );
        assert_eq!(
            b.down,
            vec![("b".to_string(), Stale), ("a".to_string(), Stale)]
        );
    }

    #[test]
    fn many_nodes_changing_alike_make_one_event_naming_the_count() {
        let n = EVENTS_EACH_UP_TO + 1;
        let mut ts: Vec<Transition> = (0..n)
            .map(|i| t(&format!("n{i:02}"), Ready, Stale))
            .collect();
        ts.push(t("x", Down, Ready));
        let b = batch(&ts);
        assert_eq!(b.records.len(), n + 1);
        assert_eq!(b.events.len(), 2, "{:?}", b.events);
        assert_eq!(b.events[0], (Some("x".into()), "down -> ready".into()));
        assert_eq!(b.events[1].0, None);
        assert!(
            b.events[1]
                .1
                .starts_with(&format!("{n} nodes ready -> stale (first: n00, n01")),
            "{}",
            b.events[1].1
        );
        // Exactly the threshold: still one event per node.
        let ts: Vec<Transition> = (0..EVENTS_EACH_UP_TO)
            .map(|i| t(&format!("n{i}"), Stale, Down))
            .collect();
        let b = batch(&ts);
        assert!(b.events.iter().all(|(n, _)| n.is_some()));
        assert_eq!(b.down.len(), EVENTS_EACH_UP_TO);
    }

    #[test]
    fn an_empty_batch_writes_nothing() {
        assert_eq!(batch(&[]), Batch::default());
    }
}
