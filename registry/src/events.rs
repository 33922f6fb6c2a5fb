//! The event log as the domain services write it: events appended to the store (numbered there,
//! gap-free across replicas) and counted by the metrics hook. Live subscribers (SSE) get the
//! stored events from the store watch (`replica.rs`), whichever replica wrote them.

use std::sync::Arc;

use steward_proto::{Actor, Event, EventKind, WorkloadRef};

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// A change touching this many nodes or fewer is recorded as one event per node; one touching
/// more as one event naming the count (a fragment matching the whole fleet, a fleet-wide outage:
/// one line, not 100,000).
pub const EACH_NODE_UP_TO: usize = 20;

/// Where services record what happened.
#[derive(Clone)]
pub struct EventLog {
    store: Store,
    metrics: Arc<Metrics>,
}

impl EventLog {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }

    /// The metrics events are counted in (services count their own figures there too).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Appends one event (numbered by the store).
    pub async fn record(
        &self,
        kind: EventKind,
        node_id: Option<&str>,
        generation: Option<u64>,
        by: &Actor,
        message: impl Into<String>,
    ) -> Result<Event, StoreError> {
        let mut ev = Event::new(kind, node_id, None, by, message.into());
        ev.generation = generation;
        Ok(self.record_many(vec![ev]).await?.remove(0))
    }

    /// Appends one event about a node's workload (numbered by the store).
    pub async fn record_about(
        &self,
        kind: EventKind,
        node_id: &str,
        workload: Option<WorkloadRef>,
        by: &Actor,
        message: impl Into<String>,
    ) -> Result<Event, StoreError> {
        let ev = Event::new(kind, Some(node_id), workload, by, message.into());
        Ok(self.record_many(vec![ev]).await?.remove(0))
    }

    /// Counts an event another store transaction appended (with the change it records).
    pub fn counted(&self, e: &Event) {
        self.metrics.event(e.kind);
    }

    /// Appends several events in one store transaction (numbered in order).
    pub async fn record_many(&self, events: Vec<Event>) -> Result<Vec<Event>, StoreError> {
        let events = self.store.append_events(events).await?;
        for e in &events {
            self.metrics.event(e.kind);
        }
        Ok(events)
    }
}
