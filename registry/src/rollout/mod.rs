//! Rollouts: move one payload to a version across the nodes matching a selector, in batches
//! (pure logic in `plan.rs`, the background task in `driver.rs`). Records live in the store;
//! every step is an event. The [`Rollouts`] service and its [`RolloutError`].

pub mod driver;
pub mod plan;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use steward_proto::Event;

use crate::kv::Revision;
use steward_proto::selector::Selector;
use steward_proto::{
    Actor, EventKind, Health, Problem, Rollout, RolloutNode, RolloutNodeState, RolloutState,
    StartRollout,
};

use crate::events::EventLog;
use crate::fleet::Fleet;
use crate::payloads::PayloadError;
use crate::specs::{SpecError, Specs};
use crate::store::{Store, StoreError};
use plan::BatchSize;

/// What a rollout operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no rollout with id {0:?}")]
    NoRollout(String),
    #[error("invalid input: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    /// Well-formed, but names a payload version or nodes that are not there.
    #[error("unprocessable: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Unresolved(Vec<Problem>),
    /// Not possible in the rollout's (or its payload's) present self.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RolloutError {
    /// Something the step needs is gone (the rollout, a node, a payload version).
    fn is_not_found(&self) -> bool {
        use PayloadError as P;
        matches!(
            self,
            RolloutError::NoRollout(_)
                | RolloutError::Spec(
                    SpecError::NoNode(_)
                        | SpecError::NoFragment(_)
                        | SpecError::Payload(P::NoPayload { .. } | P::NoVersion { .. })
                )
        )
    }

    /// The store failed (worth trying again).
    fn is_store(&self) -> bool {
        matches!(
            self,
            RolloutError::Store(_)
                | RolloutError::Spec(
                    SpecError::Store(_) | SpecError::Payload(PayloadError::Store(_))
                )
        )
    }
}

type Result<T> = std::result::Result<T, RolloutError>;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Rollouts: their records and their drivers.
#[derive(Clone)]
pub struct Rollouts {
    store: Store,
    fleet: Arc<Fleet>,
    events: EventLog,
    /// Rollout steps change nodes' payload overrides.
    specs: Specs,
    drivers: Arc<Drivers>,
}

/// In-memory coordination of rollouts: one lock for record changes, and which rollouts have a
/// driver task running.
#[derive(Debug)]
struct Drivers {
    pub lock: tokio::sync::Mutex<()>,
    drivers: std::sync::Mutex<HashMap<String, Option<tokio::task::AbortHandle>>>,
    /// Whether this replica runs the drivers (holds the jobs leadership, `replica.rs`).
    leading: AtomicBool,
}

impl Default for Drivers {
    fn default() -> Self {
        Self {
            lock: Default::default(),
            drivers: Default::default(),
            leading: AtomicBool::new(true),
        }
    }
}

impl Drivers {
    /// Claims the driver slot of a rollout; false when a driver already runs.
    fn claim(&self, id: &str) -> bool {
        let mut d = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
        if d.contains_key(id) {
            return false;
        }
        d.insert(id.to_string(), None);
        true
    }

    fn started(&self, id: &str, h: tokio::task::AbortHandle) {
        if let Some(slot) = self
            .drivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            *slot = Some(h);
        }
    }

    fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            let mut d = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
            for (_, h) in d.drain() {
                if let Some(h) = h {
                    h.abort();
                }
            }
        }
    }

    fn release(&self, id: &str) {
        self.drivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Checks a rollout request: its selector, batch size (its text kept), time-out and payload
/// name and version, every problem named.
fn check_start(req: &StartRollout) -> Result<(Selector, BatchSize, String, Duration)> {
    let mut problems = Vec::new();
    let selector = match req.selector.parse::<Selector>() {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(Problem::new("selector", e.to_string()));
            None
        }
    };
    let batch_text = req.batch.clone().unwrap_or_else(|| "1".into());
    let batch = match batch_text.parse::<BatchSize>() {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(Problem::new("batch", e));
            None
        }
    };
    let timeout = match &req.timeout {
        None => Some(DEFAULT_TIMEOUT),
        Some(t) => match humantime::parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            Ok(_) => {
                problems.push(Problem::new("timeout", "must be at least 1s"));
                None
            }
            Err(e) => {
                problems.push(Problem::new(
                    "timeout",
                    format!("not a duration like 5m: {e}"),
                ));
                None
            }
        },
    };
    if let Err(PayloadError::Invalid(ps)) =
        crate::payloads::check_name_version(&req.payload, &req.version)
    {
        problems.extend(ps.into_iter().map(|p| {
            let field = if p.field == "name" {
                "payload".into()
            } else {
                p.field
            };
            Problem::new(field, p.reason)
        }));
    }
    let (Some(selector), Some(batch), Some(timeout), true) =
        (selector, batch, timeout, problems.is_empty())
    else {
        return Err(RolloutError::Invalid(problems));
    };
    Ok((selector, batch, batch_text, timeout))
}

impl Rollouts {
    pub fn new(store: Store, fleet: Arc<Fleet>, events: EventLog, specs: Specs) -> Self {
        Self {
            store,
            fleet,
            events,
            specs,
            drivers: Arc::new(Drivers::default()),
        }
    }

    /// Whether this replica runs rollout drivers.
    pub fn leading(&self) -> bool {
        self.drivers.leading()
    }

    /// Starts (`true`) or stops (`false`, every driver aborted) running drivers here.
    pub fn set_leading(&self, leading: bool) {
        self.drivers.set_leading(leading)
    }

    /// Starts the driver of rollout `id` unless one runs already or another replica runs them
    /// (it sees the rollout through the store watch).
    pub fn spawn_driver(&self, id: &str) {
        if self.drivers.leading() && self.drivers.claim(id) {
            let (svc, id2) = (self.clone(), id.to_string());
            let h = tokio::spawn(async move { driver::drive(&svc, &id2).await });
            self.drivers.started(id, h.abort_handle());
        }
    }

    /// On taking the lead: drivers for every rollout that was running or rolling back.
    pub async fn resume_all(&self) -> Result<()> {
        for r in self.store.rollouts::<Rollout>().await? {
            if matches!(r.state, RolloutState::Running | RolloutState::RollingBack) {
                self.spawn_driver(&r.id);
            }
        }
        Ok(())
    }

    /// Stores the rollout with the event saying what changed, in one transaction, only if the
    /// record is still at `revision` (`0`: a new rollout): a step is recorded exactly once,
    /// also when a replica that lost the leadership attempts it.
    async fn save_logged(
        &self,
        r: &mut Rollout,
        revision: Revision,
        cred: &Actor,
        msg: String,
    ) -> Result<()> {
        r.updated_at = Utc::now();
        let event = Event::new(
            EventKind::Rollout,
            None,
            None,
            cred,
            format!("rollout {} ({}@{}): {msg}", r.id, r.payload, r.version),
        );
        let event = self
            .store
            .put_rollout_logged(&r.id, r, revision, event)
            .await?;
        self.events.counted(&event);
        Ok(())
    }

    /// A rollout and the revision of its record.
    async fn get_rev(&self, id: &str) -> Result<(Rollout, Revision)> {
        self.store
            .rollout_rev(id)
            .await?
            .ok_or_else(|| RolloutError::NoRollout(id.to_string()))
    }

    /// `POST /v1/rollouts`.
    pub async fn start(&self, req: StartRollout, cred: &Actor) -> Result<Rollout> {
        let (selector, batch, batch_text, timeout) = check_start(&req)?;
        let _guard = self.drivers.lock.lock().await;
        let target = self
            .store
            .payload_version(&req.payload, &req.version)
            .await?
            .ok_or_else(|| {
                RolloutError::Unresolved(vec![Problem::new(
                    "version",
                    format!(
                        "payload {:?} has no version {:?} in the registry",
                        req.payload, req.version
                    ),
                )])
            })?;
        if let Some(active) = self
            .store
            .rollouts::<Rollout>()
            .await?
            .into_iter()
            .find(|r| r.payload == req.payload && r.state.is_active())
        {
            return Err(RolloutError::Conflict(format!(
                "rollout {} of payload {:?} is {:?}; abort it, roll it back or let it finish first",
                active.id, req.payload, active.state
            )));
        }
        let mut nodes = self.targets(&selector, &req.payload).await?;
        if nodes.is_empty() {
            return Err(RolloutError::Unresolved(vec![Problem::new(
                "selector",
                format!(
                    "no node matching {:?} has payload {:?} in its spec",
                    req.selector, req.payload
                ),
            )]));
        }
        let assignment = plan::assign_batches(nodes.len(), batch);
        for (n, b) in nodes.iter_mut().zip(&assignment) {
            n.batch = *b;
        }
        let now = Utc::now();
        let mut r = Rollout {
            id: crate::auth::new_id(),
            payload: req.payload,
            version: req.version,
            sha256: target.sha256,
            selector: req.selector,
            batch: batch_text,
            timeout_secs: timeout.as_secs(),
            state: RolloutState::Running,
            batch_count: assignment.last().map_or(0, |b| b + 1),
            current_batch: 0,
            batch_started_at: None,
            nodes,
            message: "started".into(),
            created_at: now,
            updated_at: now,
        };
        let msg = format!(
            "started on {} node(s) in {} batch(es) of {} (selector {:?}, time-out {}s)",
            r.nodes.len(),
            r.batch_count,
            r.batch,
            r.selector,
            r.timeout_secs
        );
        self.save_logged(&mut r, 0, cred, msg).await?;
        self.spawn_driver(&r.id);
        Ok(r)
    }

    /// The nodes a rollout of `payload` moves: matching, not decommissioned, and whose effective
    /// spec has the payload; in id order.
    async fn targets(&self, selector: &Selector, payload: &str) -> Result<Vec<RolloutNode>> {
        let mut candidates: Vec<String> = Vec::new();
        self.fleet.for_each(|id, ln| {
            let l = ln.lock();
            if l.health != Health::Decommissioned && selector.matches(&l.labels) {
                candidates.push(id.to_string());
            }
        });
        candidates.sort();
        let mut nodes = Vec::new();
        for id in candidates {
            let doc = self.specs.document(&id).await?;
            let Some(p) = doc.spec.payloads.iter().find(|p| p.name == payload) else {
                continue;
            };
            let rec = self.store.spec(&id).await?.unwrap_or_default();
            nodes.push(RolloutNode {
                node_id: id.clone(),
                batch: 0,
                previous_version: p.version.clone(),
                previous_sha256: p.sha256.clone(),
                previous_override: rec.payload_overrides.get(payload).cloned(),
                state: RolloutNodeState::Waiting,
                error: None,
            });
        }
        Ok(nodes)
    }

    pub async fn list(&self) -> Result<Vec<Rollout>> {
        let mut v = self.store.rollouts::<Rollout>().await?;
        v.sort_by_key(|a| a.created_at);
        Ok(v)
    }

    pub async fn get(&self, id: &str) -> Result<Rollout> {
        self.store
            .rollout(id)
            .await?
            .ok_or_else(|| RolloutError::NoRollout(id.to_string()))
    }
}

/// An operator's command on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Rollouts {
    /// `POST /v1/rollouts/{rollout}/{pause|resume|abort|rollback}`.
    pub async fn command(&self, id: &str, cmd: Command, cred: &Actor) -> Result<Rollout> {
        use RolloutState as S;
        let _guard = self.drivers.lock.lock().await;
        let (mut r, revision) = self.get_rev(id).await?;
        let next = match (cmd, r.state) {
            (Command::Pause, S::Running) => S::Paused,
            (Command::Resume, S::Paused | S::Halted) => S::Running,
            (Command::Abort, S::Running | S::Paused | S::Halted) => S::Aborted,
            (Command::Rollback, S::Running | S::Paused | S::Halted | S::Aborted | S::Done) => {
                S::RollingBack
            }
            (cmd, st) => {
                return Err(RolloutError::Conflict(
                    format!("cannot {cmd:?} rollout {id}: it is {st:?}").to_lowercase(),
                ))
            }
        };
        let what = match cmd {
            Command::Pause => "paused: no new batch starts until resumed".to_string(),
            Command::Resume => {
                // The current batch gets a fresh time-out; failed nodes are judged again.
                if r.batch_started_at.is_some() {
                    r.batch_started_at = Some(Utc::now());
                }
                for n in r
                    .nodes
                    .iter_mut()
                    .filter(|n| n.state == RolloutNodeState::Failed)
                {
                    n.state = RolloutNodeState::Applying;
                    n.error = None;
                }
                format!("resumed at batch {}/{}", r.current_batch + 1, r.batch_count)
            }
            Command::Abort => "aborted: nodes keep the version they have".to_string(),
            Command::Rollback => {
                r.batch_started_at = None;
                "rolling back: putting the previous version back on every node touched".to_string()
            }
        };
        r.state = next;
        r.message = what.clone();
        self.save_logged(&mut r, revision, cred, what).await?;
        if matches!(next, S::Running | S::RollingBack) {
            self.spawn_driver(id);
        }
        Ok(r)
    }
}
