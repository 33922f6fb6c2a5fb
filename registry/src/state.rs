//! Shared state of a running registry: the store, the in-memory view of live nodes (heartbeats,
//! credentials, spec generation watchers) and the event log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use steward_proto::{CredentialKind, Event, EventKind, Health, HostStats};
use tokio::sync::{broadcast, watch};

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
            limits: Default::default(),
        }
    }
}

/// What the registry keeps in memory per node: heartbeats never touch the disk by themselves.
#[derive(Debug)]
pub struct Live {
    pub secret_sha256: Option<[u8; 32]>,
    /// The node's labels, kept here so fragment writes select nodes without reading the store.
    pub labels: steward_proto::Labels,
    pub health: Health,
    pub last_seen: Instant,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub rtt_ms: Option<f64>,
    pub stats: Option<HostStats>,
    pub observed_generation: u64,
    pub status_digest: String,
    /// The reconcile pass in progress, per the last heartbeat (memory only).
    pub progress: Option<steward_proto::PassProgress>,
}

/// One node's live entry: its heartbeat data and its spec generation channel.
#[derive(Debug)]
pub struct LiveNode {
    pub live: Mutex<Live>,
    pub generation: watch::Sender<u64>,
}

impl LiveNode {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything the handlers share.
pub struct Inner {
    pub settings: Settings,
    pub store: Store,
    pub admin_sha256: [u8; 32],
    pub read_sha256: Option<[u8; 32]>,
    pub nodes: RwLock<HashMap<String, Arc<LiveNode>>>,
    /// Serialises writes that change specs (spec, fragment and label writes).
    pub spec_lock: tokio::sync::Mutex<()>,
    event_seq: Mutex<u64>,
    pub events: broadcast::Sender<Event>,
    pub started: Instant,
    pub metrics: crate::metrics::Metrics,
    pub sessions: crate::ui::access::Sessions,
    /// Set at start-up when webhooks are configured.
    pub alerts: std::sync::OnceLock<crate::alerts::AlertSender>,
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
    /// Loads nodes and generations from the store. Nodes are given a fresh grace period: their
    /// heartbeat clock starts at registry start-up, so a restart does not mark the fleet down.
    pub fn new(
        settings: Settings,
        store: Store,
        admin_token: &str,
        read_token: Option<&str>,
    ) -> Result<Self, StoreError> {
        let generations: HashMap<String, u64> = store.generations()?.into_iter().collect();
        let mut nodes = HashMap::new();
        let now = Instant::now();
        for rec in store.nodes()? {
            let generation = generations.get(&rec.id).copied().unwrap_or(0);
            nodes.insert(
                rec.id.clone(),
                Arc::new(live_from_record(&rec, generation, now)),
            );
        }
        let seq = store.last_event_seq()?;
        let (events, _) = broadcast::channel(4096);
        let blobs = crate::payloads::blobs::Blobs::new(store.dir());
        Ok(AppState(Arc::new(Inner {
            settings,
            store,
            admin_sha256: crate::auth::sha256(admin_token),
            read_sha256: read_token.map(crate::auth::sha256),
            nodes: RwLock::new(nodes),
            spec_lock: tokio::sync::Mutex::new(()),
            event_seq: Mutex::new(seq),
            events,
            started: now,
            metrics: crate::metrics::Metrics::new(),
            sessions: Default::default(),
            alerts: Default::default(),
            blobs,
            payload_lock: tokio::sync::Mutex::new(()),
            rollouts: Default::default(),
        })))
    }

    pub fn live(&self, id: &str) -> Option<Arc<LiveNode>> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn all_live(&self) -> Vec<(String, Arc<LiveNode>)> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn insert_live(&self, rec: &NodeRecord, generation: u64) -> Arc<LiveNode> {
        let ln = Arc::new(live_from_record(rec, generation, Instant::now()));
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id.clone(), ln.clone());
        ln
    }

    /// Current spec generation of a node (0 when unknown).
    pub fn generation(&self, id: &str) -> u64 {
        self.live(id).map(|l| *l.generation.borrow()).unwrap_or(0)
    }

    /// Raises an alert (sent to the webhooks that take its kind, if any are configured).
    pub fn alert(&self, a: steward_proto::api::Alert) {
        if let Some(s) = self.alerts.get() {
            s.send(a);
        }
    }

    /// Appends an event to the log and to live subscribers.
    pub fn event(
        &self,
        kind: EventKind,
        node_id: Option<&str>,
        generation: Option<u64>,
        credential: CredentialKind,
        message: impl Into<String>,
    ) -> Result<Event, StoreError> {
        let mut seq = self.event_seq.lock().unwrap_or_else(|p| p.into_inner());
        let ev = Event {
            seq: *seq + 1,
            time: Utc::now(),
            kind,
            node_id: node_id.map(str::to_string),
            generation,
            credential,
            message: message.into(),
        };
        self.store.put_event(&ev)?;
        *seq = ev.seq;
        self.metrics.event(ev.kind);
        // No subscribers is fine.
        let _ = self.events.send(ev.clone());
        Ok(ev)
    }
}

fn live_from_record(rec: &NodeRecord, generation: u64, now: Instant) -> LiveNode {
    let (generation, _) = watch::channel(generation);
    LiveNode {
        live: Mutex::new(Live {
            secret_sha256: rec.secret_sha256,
            labels: rec.labels.clone(),
            health: rec.health,
            last_seen: now,
            last_heartbeat: rec.last_heartbeat,
            rtt_ms: rec.heartbeat_rtt_ms,
            stats: rec.stats.clone(),
            observed_generation: rec.observed_generation,
            status_digest: rec
                .status
                .as_ref()
                .map(|s| s.digest.clone())
                .unwrap_or_default(),
            progress: None,
        }),
        generation,
    }
}
