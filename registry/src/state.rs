//! Shared state of a running registry, as the HTTP layer sees it: settings, the store, the fleet
//! view, the event broadcast, metrics, login sessions, alerts, blobs and rollouts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use steward_proto::{CredentialKind, Event, EventKind};
use tokio::sync::broadcast;

use crate::fleet::Fleet;
pub use crate::fleet::{Live, LiveNode};
use crate::store::{NodeRecord, Store, StoreError};

/// Settings the request handlers need (a subset of the server's config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    /// Missed intervals before a node is stale.
    pub stale_after: u32,
    /// Missed intervals before a node is down.
    pub down_after: u32,
    /// Longest long-poll a client may ask for.
    pub max_wait: Duration,
    /// Serve the status page and `/metrics` without credentials (read-only views).
    pub public_status: bool,
    /// Serving TLS: session cookies get the `Secure` flag.
    pub tls: bool,
    /// Public downloads (`/packages/{file}`, `/install.sh`).
    pub packages_dir: std::path::PathBuf,
    /// Base URL `/install.sh` writes into agent configs; from the request when unset.
    pub public_url: Option<String>,
    /// sha256 (hex) of the registry's TLS certificate, pinned by `/install.sh`.
    pub tls_pin: Option<String>,
    /// This replica's id when the store is shared with other replicas (etcd); `None` with the
    /// embedded store.
    pub replica_id: Option<String>,
    /// Upper bounds on node specs, fragments and effective specs (`[limits]`).
    pub limits: steward_proto::validate::SpecLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            stale_after: 3,
            down_after: 10,
            max_wait: Duration::from_secs(300),
            public_status: false,
            tls: false,
            packages_dir: crate::config::DEFAULT_PACKAGES_DIR.into(),
            public_url: None,
            tls_pin: None,
            replica_id: None,
            limits: Default::default(),
        }
    }
}

/// Everything the handlers share.
pub struct Inner {
    pub settings: Settings,
    pub store: Store,
    pub admin_sha256: [u8; 32],
    pub read_sha256: Option<[u8; 32]>,
    /// The nodes as this process sees them (kept in step with the store by `replica.rs`).
    pub fleet: Fleet,
    /// Serialises this process's writes that change specs (spec, fragment and label writes);
    /// across replicas the store's spec epoch does (`store.rs`).
    pub spec_lock: tokio::sync::Mutex<()>,
    /// Events as they are stored (by any replica), fed by the store watch.
    pub events: broadcast::Sender<Event>,
    pub started: Instant,
    pub metrics: crate::metrics::Metrics,
    pub sessions: crate::ui::access::Sessions,
    /// Set at start-up when webhooks are configured.
    pub alerts: std::sync::OnceLock<crate::alerts::AlertSender>,
    /// This replica as a peer of the others (set at start-up with an etcd store): payload
    /// blobs are copied between replicas.
    pub peers: std::sync::OnceLock<crate::payloads::peers::Peers>,
    /// Payload contents (`<data_dir>/blobs`).
    pub blobs: crate::payloads::blobs::Blobs,
    /// Serialises payload metadata changes and blob collection (taken after `spec_lock`
    /// when both are needed).
    pub payload_lock: tokio::sync::Mutex<()>,
    /// Rollout record lock and running drivers.
    pub rollouts: crate::rollout::Rollouts,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Loads nodes and generations from the store and starts following its changes. Nodes are
    /// given a fresh grace period: their heartbeat clock starts now, so a restart does not mark
    /// the fleet down.
    pub async fn new(
        settings: Settings,
        store: Store,
        blobs_dir: &std::path::Path,
        admin_token: &str,
        read_token: Option<&str>,
    ) -> Result<Self, StoreError> {
        let revision = store.kv().revision().await?;
        let generations: HashMap<String, u64> = store.generations().await?.into_iter().collect();
        let fleet = Fleet::default();
        for rec in store.nodes().await? {
            let generation = generations.get(&rec.id).copied().unwrap_or(0);
            fleet.insert_live(&rec, generation);
        }
        for node in store.reset_nodes().await? {
            fleet.set_resets(&node, true);
        }
        let sessions = crate::ui::access::Sessions::default();
        for (key, s) in store.ui_sessions().await? {
            sessions.apply(&key, Some(s));
        }
        let (events, _) = broadcast::channel(4096);
        let blobs = crate::payloads::blobs::Blobs::new(blobs_dir);
        let state = AppState(Arc::new(Inner {
            settings,
            store,
            admin_sha256: crate::auth::sha256(admin_token),
            read_sha256: read_token.map(crate::auth::sha256),
            fleet,
            spec_lock: tokio::sync::Mutex::new(()),
            events,
            started: Instant::now(),
            metrics: crate::metrics::Metrics::new(),
            sessions,
            alerts: Default::default(),
            peers: Default::default(),
            blobs,
            payload_lock: tokio::sync::Mutex::new(()),
            rollouts: Default::default(),
        }));
        crate::replica::follow_store(&state, revision + 1).await?;
        Ok(state)
    }

    pub fn live(&self, id: &str) -> Option<Arc<LiveNode>> {
        self.fleet.live(id)
    }

    pub fn all_live(&self) -> Vec<(String, Arc<LiveNode>)> {
        self.fleet.all_live()
    }

    pub fn insert_live(&self, rec: &NodeRecord, generation: u64) -> Arc<LiveNode> {
        self.fleet.insert_live(rec, generation)
    }

    /// Current spec generation of a node (0 when unknown).
    pub fn generation(&self, id: &str) -> u64 {
        self.fleet.generation(id)
    }

    /// Raises an alert (sent to the webhooks that take its kind, if any are configured).
    pub fn alert(&self, a: steward_proto::api::Alert) {
        if let Some(s) = self.alerts.get() {
            s.send(a);
        }
    }

    /// Appends an event to the log (numbered by the store); live subscribers get it from the
    /// store watch.
    pub async fn event(
        &self,
        kind: EventKind,
        node_id: Option<&str>,
        generation: Option<u64>,
        credential: CredentialKind,
        message: impl Into<String>,
    ) -> Result<Event, StoreError> {
        let ev = Event {
            seq: 0,
            time: Utc::now(),
            kind,
            node_id: node_id.map(str::to_string),
            generation,
            credential,
            message: message.into(),
        };
        let ev = self.store.append_events(vec![ev]).await?.remove(0);
        self.metrics.event(ev.kind);
        Ok(ev)
    }

    /// Appends several events in one store transaction (numbered in order).
    pub async fn events_many(&self, events: Vec<Event>) -> Result<Vec<Event>, StoreError> {
        let events = self.store.append_events(events).await?;
        for e in &events {
            self.metrics.event(e.kind);
        }
        Ok(events)
    }
}
