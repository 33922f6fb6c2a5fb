//! Rollouts: move one payload to a version across the nodes matching a selector, in batches
//! (pure logic in `plan.rs`, the background task in `driver.rs`). Records live in the store;
//! every step is an event.

pub mod driver;
pub mod plan;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use steward_proto::selector::Selector;
use steward_proto::{
    CredentialKind, EventKind, Health, Problem, Rollout, RolloutNode, RolloutNodeState,
    RolloutState, StartRollout,
};

use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;
use plan::BatchSize;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// In-memory coordination of rollouts: one lock for record changes, and which rollouts have a
/// driver task running.
#[derive(Debug)]
pub struct Rollouts {
    pub lock: tokio::sync::Mutex<()>,
    drivers: std::sync::Mutex<HashMap<String, Option<tokio::task::AbortHandle>>>,
    /// Whether this replica runs the drivers (holds the jobs leadership, `replica.rs`).
    leading: AtomicBool,
}

impl Default for Rollouts {
    fn default() -> Self {
        Self {
            lock: Default::default(),
            drivers: Default::default(),
            leading: AtomicBool::new(true),
        }
    }
}

impl Rollouts {
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

    /// Whether this replica runs rollout drivers.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Starts (`true`) or stops (`false`, every driver aborted) running drivers here.
    pub fn set_leading(&self, leading: bool) {
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

    pub(crate) fn release(&self, id: &str) {
        self.drivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Starts the driver of rollout `id` unless one runs already or another replica runs them
/// (it sees the rollout through the store watch).
pub fn spawn_driver(state: &AppState, id: &str) {
    if state.rollouts.leading() && state.rollouts.claim(id) {
        let (st, id2) = (state.clone(), id.to_string());
        let h = tokio::spawn(async move { driver::drive(&st, &id2).await });
        state.rollouts.started(id, h.abort_handle());
    }
}

/// On taking the lead: drivers for every rollout that was running or rolling back.
pub async fn resume_all(state: &AppState) -> ApiResult<()> {
    for r in state.store.rollouts::<Rollout>().await? {
        if matches!(r.state, RolloutState::Running | RolloutState::RollingBack) {
            spawn_driver(state, &r.id);
        }
    }
    Ok(())
}

pub(crate) async fn save(state: &AppState, r: &mut Rollout) -> ApiResult<()> {
    r.updated_at = Utc::now();
    state.store.put_rollout(&r.id, r).await?;
    Ok(())
}

pub(crate) async fn log(
    state: &AppState,
    r: &Rollout,
    cred: CredentialKind,
    msg: String,
) -> ApiResult<()> {
    state
        .event(
            EventKind::Rollout,
            None,
            None,
            cred,
            format!("rollout {} ({}@{}): {msg}", r.id, r.payload, r.version),
        )
        .await?;
    Ok(())
}

/// `POST /v1/rollouts`.
pub async fn start(
    state: &AppState,
    req: StartRollout,
    cred: CredentialKind,
) -> ApiResult<Rollout> {
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
    if let Err(RegistryError::Invalid(ps)) =
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
        return Err(RegistryError::Invalid(problems));
    };
    let _guard = state.rollouts.lock.lock().await;
    let target = state
        .store
        .payload_version(&req.payload, &req.version)
        .await?
        .ok_or_else(|| {
            RegistryError::Unprocessable(vec![Problem::new(
                "version",
                format!(
                    "payload {:?} has no version {:?} in the registry",
                    req.payload, req.version
                ),
            )])
        })?;
    if let Some(active) = state
        .store
        .rollouts::<Rollout>()
        .await?
        .into_iter()
        .find(|r| r.payload == req.payload && r.state.is_active())
    {
        return Err(RegistryError::Conflict {
            message: format!(
                "rollout {} of payload {:?} is {:?}; abort it, roll it back or let it finish first",
                active.id, req.payload, active.state
            ),
            problems: vec![],
        });
    }
    // The nodes: matching, not decommissioned, and whose effective spec has the payload.
    let mut candidates: Vec<String> = state
        .all_live()
        .into_iter()
        .filter_map(|(id, ln)| {
            let l = ln.lock();
            (l.health != Health::Decommissioned && selector.matches(&l.labels)).then_some(id)
        })
        .collect();
    candidates.sort();
    let mut nodes = Vec::new();
    for id in candidates {
        let Some(rec) = state.store.spec(&id).await? else {
            continue;
        };
        let Some(p) = rec
            .effective
            .payloads
            .iter()
            .find(|p| p.name == req.payload)
        else {
            continue;
        };
        nodes.push(RolloutNode {
            node_id: id.clone(),
            batch: 0,
            previous_version: p.version.clone(),
            previous_sha256: p.sha256.clone(),
            previous_override: rec.payload_overrides.get(&req.payload).cloned(),
            state: RolloutNodeState::Waiting,
            error: None,
        });
    }
    if nodes.is_empty() {
        return Err(RegistryError::Unprocessable(vec![Problem::new(
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
    save(state, &mut r).await?;
    log(
        state,
        &r,
        cred,
        format!(
            "started on {} node(s) in {} batch(es) of {} (selector {:?}, time-out {}s)",
            r.nodes.len(),
            r.batch_count,
            r.batch,
            r.selector,
            r.timeout_secs
        ),
    )
    .await?;
    spawn_driver(state, &r.id);
    Ok(r)
}

pub async fn list(state: &AppState) -> ApiResult<Vec<Rollout>> {
    let mut v = state.store.rollouts::<Rollout>().await?;
    v.sort_by_key(|a| a.created_at);
    Ok(v)
}

pub async fn get(state: &AppState, id: &str) -> ApiResult<Rollout> {
    state
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("no rollout with id {id:?}")))
}

/// An operator's command on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
    Rollback,
}

/// `POST /v1/rollouts/{rollout}/{pause|resume|abort|rollback}`.
pub async fn command(
    state: &AppState,
    id: &str,
    cmd: Command,
    cred: CredentialKind,
) -> ApiResult<Rollout> {
    use RolloutState as S;
    let _guard = state.rollouts.lock.lock().await;
    let mut r = get(state, id).await?;
    let next = match (cmd, r.state) {
        (Command::Pause, S::Running) => S::Paused,
        (Command::Resume, S::Paused | S::Halted) => S::Running,
        (Command::Abort, S::Running | S::Paused | S::Halted) => S::Aborted,
        (Command::Rollback, S::Running | S::Paused | S::Halted | S::Aborted | S::Done) => {
            S::RollingBack
        }
        (cmd, st) => {
            return Err(RegistryError::Conflict {
                message: format!("cannot {cmd:?} rollout {id}: it is {st:?}").to_lowercase(),
                problems: vec![],
            })
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
    log(state, &r, cred, what).await?;
    save(state, &mut r).await?;
    if matches!(next, S::Running | S::RollingBack) {
        spawn_driver(state, id);
    }
    Ok(r)
}
