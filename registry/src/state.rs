//! The composition root: [`AppState`] builds the domain services (specs, nodes, payloads,
//! rollouts, alerts) over one store, fleet view and event log, and holds them with what only the
//! HTTP layer (`api/`, `ui/`) needs: settings, credentials, the event broadcast, metrics and
//! login sessions. Domain modules never import this one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_proto::Event;
use tokio::sync::broadcast;

use crate::alerts::Alerts;
use crate::events::EventLog;
use crate::fleet::Fleet;
pub use crate::fleet::{Live, LiveNode};
use crate::fragment_set::{base_for, FragmentSet};
use crate::metrics::Metrics;
use crate::nodes::{HealthSettings, Nodes};
use crate::payloads::blobs::Blobs;
use crate::payloads::Payloads;
use crate::reenroll::Enrolments;
use crate::rollout::Rollouts;
use crate::spec_gate::SpecGate;
use crate::specs::Specs;
use crate::store::{Store, StoreError};

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
    /// Versions kept of each node's own spec and each fragment.
    pub spec_history_kept: usize,
    /// Session limits, pools and ranges (`[sessions]`).
    pub sessions: crate::sessions::SessionsConfig,
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
            spec_history_kept: 100,
            sessions: Default::default(),
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
    pub fleet: Arc<Fleet>,
    /// Events as they are stored (by any replica), fed by the store watch.
    pub events: broadcast::Sender<Event>,
    /// Where events are recorded (the store and the metrics hook).
    pub event_log: EventLog,
    pub started: Instant,
    pub metrics: Arc<Metrics>,
    /// Status page login sessions.
    pub logins: crate::ui::sessions::Sessions,
    /// Sessions: templates, placement, quotas, allocations (`sessions/`).
    pub sessions: crate::sessions::Sessions,
    pub alerts: Alerts,
    pub specs: Specs,
    pub nodes: Nodes,
    pub enrolments: Enrolments,
    pub payloads: Payloads,
    pub rollouts: Rollouts,
    /// Named API credentials (in memory, kept in step by the store watch).
    pub credentials: crate::credentials::Credentials,
    /// Trusted JWT issuers (configured by the server after start-up; none in tests unless set).
    pub oidc: crate::oidc::Oidc,
    pub audit: crate::audit::Audit,
    /// Where "now" comes from for things that expire.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// The store revision the fleet view was loaded at: the store watch (`replica.rs`) follows
    /// the store from the next one.
    pub loaded_at: crate::kv::Revision,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The domain services over one store, fleet view and event log.
struct Services {
    alerts: Alerts,
    specs: Specs,
    nodes: Nodes,
    enrolments: Enrolments,
    payloads: Payloads,
    rollouts: Rollouts,
    sessions: crate::sessions::Sessions,
}

impl Services {
    fn new(
        settings: &Settings,
        store: &Store,
        fleet: &Arc<Fleet>,
        events: &EventLog,
        blobs: Blobs,
        clock: &Arc<dyn crate::clock::Clock>,
    ) -> Self {
        let gate = SpecGate::new(store.clone());
        let alerts = Alerts::new(store.clone(), events.clone(), settings.public_url.clone());
        let payloads = Payloads::new(store.clone(), events.clone(), blobs, gate.clone());
        let specs = Specs::new(
            store.clone(),
            fleet.clone(),
            events.clone(),
            gate.clone(),
            payloads.clone(),
            settings.limits.clone(),
            settings.spec_history_kept,
        );
        let enrolments = Enrolments::new(store.clone(), events.clone(), clock.clone());
        let health = HealthSettings {
            heartbeat_interval: settings.heartbeat_interval,
            stale_after: settings.stale_after,
            down_after: settings.down_after,
        };
        let nodes = Nodes::new(
            store.clone(),
            fleet.clone(),
            events.clone(),
            gate,
            alerts.clone(),
            enrolments.clone(),
            health,
        );
        let rollouts = Rollouts::new(store.clone(), fleet.clone(), events.clone(), specs.clone());
        let sessions = crate::sessions::Sessions::new(
            store.clone(),
            fleet.clone(),
            events.clone(),
            specs.clone(),
            clock.clone(),
            settings.sessions.clone(),
            settings.limits.clone(),
        );
        Self {
            sessions,
            alerts,
            specs,
            nodes,
            enrolments,
            payloads,
            rollouts,
        }
    }
}

impl AppState {
    /// Loads nodes and generations from the store (the caller then starts following its
    /// changes from [`Inner::loaded_at`] with `replica::follow_store`). Nodes are given a fresh
    /// grace period: their heartbeat clock starts now, so a restart does not mark the fleet
    /// down.
    pub async fn new(
        settings: Settings,
        store: Store,
        blobs_dir: &std::path::Path,
        admin_token: &str,
        read_token: Option<&str>,
    ) -> Result<Self, StoreError> {
        let clock = crate::clock::system();
        Self::with_clock(settings, store, blobs_dir, admin_token, read_token, clock).await
    }

    /// [`AppState::new`] with the clock that expiring things read (tests move it by hand).
    pub async fn with_clock(
        settings: Settings,
        store: Store,
        blobs_dir: &std::path::Path,
        admin_token: &str,
        read_token: Option<&str>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Self, StoreError> {
        let revision = store.kv().revision().await?;
        let fleet = Arc::new(Fleet::default());
        let (ghosts, version) = store.ghosts().await?;
        let set = Arc::new(FragmentSet::new(store.fragments().await?, ghosts, version));
        fleet.set_fragments(set.clone());
        let bases: HashMap<String, (u64, Option<i64>)> = store
            .bases()
            .await?
            .into_iter()
            .map(|(id, g, b)| (id, (g, b)))
            .collect();
        let mut legacy = Vec::new();
        store
            .for_each_node(|rec| {
                let base = match bases.get(&rec.id) {
                    Some((_, Some(b))) => Some(*b),
                    Some((g, None)) => {
                        let b = base_for(*g, set.weight(&rec.labels));
                        legacy.push((rec.id.clone(), b));
                        Some(b)
                    }
                    None => None,
                };
                fleet.insert_live(&rec, base);
            })
            .await?;
        if !legacy.is_empty() {
            let n = store.set_bases(&legacy).await?;
            tracing::info!(
                records = legacy.len(),
                written = n,
                "spec records from before effective specs were computed when read: base stored"
            );
        }
        for node in store.reset_nodes().await? {
            fleet.set_resets(&node, true);
        }
        let logins = crate::ui::sessions::Sessions::default();
        for (key, s) in store.ui_sessions().await? {
            logins.apply(&key, Some(s));
        }
        let (events, _) = broadcast::channel(4096);
        let metrics = Arc::new(Metrics::new());
        let event_log = EventLog::new(store.clone(), metrics.clone());
        let blobs = Blobs::new(blobs_dir);
        let s = Services::new(&settings, &store, &fleet, &event_log, blobs, &clock);
        let credentials =
            crate::credentials::Credentials::load(store.clone(), clock.clone()).await?;
        let audit = crate::audit::Audit::new(store.clone(), clock.clone());
        let oidc = crate::oidc::Oidc::new(clock.clone());
        let state = AppState(Arc::new(Inner {
            settings,
            store,
            admin_sha256: crate::auth::sha256(admin_token),
            read_sha256: read_token.map(crate::auth::sha256),
            fleet,
            events,
            event_log,
            started: Instant::now(),
            metrics,
            logins,
            sessions: s.sessions,
            alerts: s.alerts,
            specs: s.specs,
            nodes: s.nodes,
            enrolments: s.enrolments,
            payloads: s.payloads,
            rollouts: s.rollouts,
            credentials,
            oidc,
            audit,
            clock,
            loaded_at: revision,
        }));
        Ok(state)
    }

    /// Which credential a bearer token is, if any: the admin or read token, a named credential
    /// (`stc_...`), a JWT from a configured issuer, a node secret. Every comparison is constant-time on hashes; nothing is read
    /// from the store.
    pub fn identify(&self, token: &str) -> Option<crate::auth::Caller> {
        use crate::auth::{self, Caller};
        if token.starts_with(crate::credentials::TOKEN_PREFIX) {
            return self.credentials.identify(token);
        }
        let h = auth::sha256(token);
        let is_admin = auth::hash_eq(&h, &self.admin_sha256);
        let is_read = self
            .read_sha256
            .as_ref()
            .is_some_and(|r| auth::hash_eq(&h, r));
        if is_admin {
            return Some(Caller::admin_token());
        }
        if is_read {
            return Some(Caller::read_token());
        }
        if crate::oidc::Oidc::looks_like_jwt(token) && self.oidc.enabled() {
            return match self.oidc.identify_hashed(token, &h) {
                Ok(c) => Some(c),
                Err(why) => {
                    tracing::debug!(reason = %why, "bearer JWT refused");
                    None
                }
            };
        }
        let id = auth::secret_id(token)?;
        let ln = self.live(id)?;
        let stored = ln.lock().secret_sha256?;
        auth::hash_eq(&h, &stored).then(|| Caller::Node(id.to_string()))
    }

    pub fn live(&self, id: &str) -> Option<Arc<LiveNode>> {
        self.fleet.live(id)
    }

    /// Current spec generation of a node (0 when unknown).
    pub fn generation(&self, id: &str) -> u64 {
        self.fleet.generation(id)
    }

    /// The blob directory.
    pub fn blobs(&self) -> &Blobs {
        self.payloads.blobs()
    }
}
