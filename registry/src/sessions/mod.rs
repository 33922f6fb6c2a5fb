//! Sessions: owned, expiring, quota-bounded instances of templates, placed on a node and
//! allocated host ports, a VLAN and Docker volumes by the registry. The [`Sessions`] service and
//! its [`SessionError`]; creates and spares in `create.rs`, templates in `templates.rs`, the
//! jobs (expiry, spares, state, idleness, trimming) in `jobs.rs` and `idle.rs`, the pure parts in `render.rs` (templates) and `place.rs` (quotas, placement,
//! allocation).
//!
//! Every change that moves a node's spec (create, extend, end) runs under the spec gate, reads
//! the stored sessions there, and is stored in one transaction with the node's spec record,
//! compared on the spec epoch (`store/sessions.rs`): a quota or an allocation decided here
//! holds on every replica.

use std::sync::Arc;
use std::time::Duration;

use steward_proto::quantity::{parse_cpus, parse_memory};
use steward_proto::validate::SpecLimits;
use steward_proto::{
    Actor, Event, EventKind, Problem, Resources, Session, SessionCreate, SessionState,
};

use crate::auth::Caller;
use crate::clock::{parse_ttl, Clock};
use crate::events::EventLog;
use crate::fleet::Fleet;
use crate::kv::Revision;
use crate::spec_gate::SpecGuard;
use crate::specs::{SpecError, Specs};
use crate::store::{Store, StoreError};

mod config;
mod create;
mod idle;
mod jobs;
pub mod place;
pub mod render;
mod templates;

pub use config::SessionsConfig;
use place::{AllocError, PlaceError, QuotaError, Reserve};

/// What a session or template request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no template named {0:?}")]
    NoTemplate(String),
    #[error("no session {0:?}")]
    NoSession(String),
    #[error("invalid input: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("quota: {0}")]
    Quota(#[source] QuotaError),
    #[error("placement: {0}")]
    Place(#[source] PlaceError),
    #[error("allocation: {0}")]
    Alloc(#[source] AllocError),
    /// An owner-scoped caller naming another owner.
    #[error("this credential acts for owner {mine:?} only, not {asked:?}")]
    NotYourOwner { mine: String, asked: String },
    #[error("session {0} has ended")]
    Ended(String),
    #[error("template {name:?} has {count} live session(s); end them first")]
    TemplateInUse { name: String, count: usize },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, SessionError>;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    Deleted,
    /// Its workloads' activity did not move for the template's `idle_timeout`.
    Idle,
    /// Its node was decommissioned.
    NodeDecommissioned,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Deleted => "deleted",
            EndReason::Idle => "idle",
            EndReason::NodeDecommissioned => "node-decommissioned",
        }
    }
}

/// A list's filters (`GET /v1/sessions`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub owner: Option<String>,
    pub template: Option<String>,
    pub state: Option<SessionState>,
    pub node: Option<String>,
}

/// Templates and sessions.
#[derive(Clone)]
pub struct Sessions {
    store: Store,
    fleet: Arc<Fleet>,
    events: EventLog,
    specs: Specs,
    clock: Arc<dyn Clock>,
    config: Arc<SessionsConfig>,
    limits: SpecLimits,
    /// The live sessions as of a spec epoch: every change to the set of live sessions or
    /// their allocations moves the epoch, so under the gate a copy of the same epoch is
    /// current and creates need not read every session again.
    live: Arc<std::sync::Mutex<Option<LiveAt>>>,
    /// The leader's idle clocks, by session (memory only: a new leader starts them afresh,
    /// so a session is never ended early).
    idle: Arc<std::sync::Mutex<std::collections::HashMap<String, idle::Idle>>>,
    /// When a spare of a template could last not be started was logged.
    spare_warnings: Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

/// The live sessions as of a spec epoch.
type LiveAt = (Revision, Arc<Vec<Session>>);

/// Checks an owner: 1-128 characters, no whitespace or control characters.
pub fn check_owner(field: &str, owner: &str) -> std::result::Result<(), Problem> {
    let ok = (1..=128).contains(&owner.chars().count())
        && !owner.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            field,
            format!("{owner:?} must be 1-128 characters without spaces or control characters"),
        ))
    }
}

/// What a session reserves, from its template's `reserve`.
fn reserve_of(r: &Resources) -> Reserve {
    Reserve {
        cpu_milli: (r.cpus.as_ref())
            .and_then(|q| parse_cpus(q).ok())
            .map_or(0, |c| (c * 1000.0) as u64),
        memory: (r.memory.as_ref())
            .and_then(|q| parse_memory(q).ok())
            .unwrap_or(0),
    }
}

impl Sessions {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        events: EventLog,
        specs: Specs,
        clock: Arc<dyn Clock>,
        config: SessionsConfig,
        limits: SpecLimits,
    ) -> Self {
        Self {
            store,
            fleet,
            events,
            specs,
            clock,
            config: Arc::new(config),
            limits,
            live: Arc::default(),
            idle: Arc::default(),
            spare_warnings: Arc::default(),
        }
    }

    /// The live sessions, under the spec gate (`guard`): from the copy of this spec epoch if
    /// there is one, else from the store.
    async fn live_under(&self, guard: &SpecGuard) -> Result<Arc<Vec<Session>>> {
        if let Some((epoch, live)) = self.live.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if *epoch == guard.epoch {
                return Ok(live.clone());
            }
        }
        let live: Vec<Session> = (self.store.sessions().await?.into_iter())
            .map(|(s, _)| s)
            .filter(|s| s.state.is_live())
            .collect();
        let live = Arc::new(live);
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some((guard.epoch, live.clone()));
        Ok(live)
    }

    /// After this process stored `s` at `revision` under the gate of epoch `from`: the copy of
    /// the live sessions moves to the new epoch with `s` in it (or out of it, ended).
    fn stored(&self, from: Revision, revision: Revision, s: &Session) {
        let mut held = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let next = match held.as_ref() {
            Some((epoch, live)) if *epoch == from => {
                let mut v: Vec<Session> = live.iter().filter(|l| l.id != s.id).cloned().collect();
                if s.state.is_live() {
                    v.push(s.clone());
                }
                Some((revision, Arc::new(v)))
            }
            _ => None,
        };
        *held = next;
    }

    /// Whether `caller` may see session `s` (its owner, and its node within the caller's scope).
    fn sees(&self, caller: &Caller, s: &Session) -> bool {
        caller.acts_for(&s.owner)
            && (caller.scope().is_none()
                || (self.fleet.live(&s.node)).is_some_and(|n| caller.sees(&n.lock().labels)))
    }

    /// `GET /v1/sessions`: the sessions `caller` may see, matching `filter`, by creation time.
    pub async fn list(&self, filter: &Filter, caller: &Caller) -> Result<Vec<Session>> {
        let mut out: Vec<Session> = (self.store.sessions().await?.into_iter())
            .map(|(s, _)| s)
            .filter(|s| {
                filter.owner.as_ref().is_none_or(|o| &s.owner == o)
                    && filter.template.as_ref().is_none_or(|t| &s.template == t)
                    && filter.state.is_none_or(|st| s.state == st)
                    && filter.node.as_ref().is_none_or(|n| &s.node == n)
                    && self.sees(caller, s)
            })
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// `GET /v1/sessions/{id}` (a session the caller may not see is not found).
    pub async fn get(&self, id: &str, caller: &Caller) -> Result<Session> {
        match self.store.session(id).await? {
            Some((s, _)) if self.sees(caller, &s) => Ok(s),
            _ => Err(SessionError::NoSession(id.to_string())),
        }
    }

    /// The owner a create is for: the one named, else the caller's name; an owner-scoped
    /// caller may name only its own.
    fn owner_for(&self, req: &SessionCreate, caller: &Caller) -> Result<String> {
        let asked = match (&req.owner, caller.owner()) {
            (Some(o), _) => o.clone(),
            (None, Some(mine)) => mine.to_string(),
            (None, None) => caller.actor().name.unwrap_or_else(|| "-".into()),
        };
        if let Some(mine) = caller.owner().filter(|m| *m != asked) {
            return Err(SessionError::NotYourOwner {
                mine: mine.to_string(),
                asked,
            });
        }
        check_owner("owner", &asked).map_err(|p| SessionError::Invalid(vec![p]))?;
        Ok(asked)
    }

    /// A lifetime for `field` between 1 s and `max`.
    fn ttl(field: &str, text: &str, max: Duration) -> Result<Duration> {
        parse_ttl(field, text, Duration::from_secs(1), max)
            .map_err(|p| SessionError::Invalid(vec![p]))
    }

    /// Where to reach a session's published ports: the node's address (its `address_label`,
    /// else its hostname) and each allocated port. The jobs add its workloads' own addresses
    /// as the node reports them (`jobs::addresses_of`).
    fn endpoints(&self, s: &Session) -> Vec<steward_proto::Endpoint> {
        let host = (self.fleet.live(&s.node))
            .map(|n| {
                let l = n.lock();
                (l.labels.get(&self.config.address_label).cloned())
                    .unwrap_or_else(|| l.brief.hostname.clone())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| s.node.clone());
        (s.allocations.ports.iter())
            .map(|(name, port)| steward_proto::Endpoint {
                name: name.clone(),
                address: format!("{host}:{port}"),
            })
            .collect()
    }

    /// `POST /v1/sessions/{id}/extend`: a later deadline, within the template's `max_ttl`
    /// from the session's creation. Only the lease's deadline changes in the node's spec (its
    /// workloads are not touched).
    pub async fn extend(&self, id: &str, by: &str, caller: &Caller) -> Result<Session> {
        let s = self.get(id, caller).await?;
        let (template, _) = (self.store.template(&s.template).await?)
            .ok_or_else(|| SessionError::NoTemplate(s.template.clone()))?;
        let (_, max_ttl) = templates::lifetimes(&template.body).map_err(SessionError::Invalid)?;
        let by = Self::ttl("by", by, max_ttl)?;
        self.change(id, Some(caller), |s, piece| {
            let wanted = s.expires_at + chrono::Duration::from_std(by).unwrap_or_default();
            let cap = s.created_at + chrono::Duration::from_std(max_ttl).unwrap_or_default();
            if wanted > cap {
                let left = (cap - s.expires_at).to_std().unwrap_or_default();
                return Err(SessionError::Invalid(vec![Problem::new(
                    "by",
                    format!(
                        "the session would live past its template's max_ttl of {} (until {}); \
                         it can be extended by at most {}",
                        humantime::format_duration(max_ttl),
                        cap.to_rfc3339(),
                        humantime::format_duration(Duration::from_secs(left.as_secs()))
                    ),
                )]));
            }
            s.expires_at = wanted;
            let mut piece = piece.unwrap_or_default();
            for lease in piece.sessions.iter_mut().filter(|l| l.id == s.id) {
                lease.expires_at = wanted;
            }
            let message = format!("session {} extended to {}", s.id, wanted.to_rfc3339());
            Ok((Some(piece), message))
        })
        .await
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn end(&self, id: &str, caller: &Caller) -> Result<Session> {
        self.end_as(id, Some(caller), EndReason::Deleted).await
    }

    /// Ends a session for `caller` (`None`: the registry itself).
    pub(crate) async fn end_as(
        &self,
        id: &str,
        caller: Option<&Caller>,
        reason: EndReason,
    ) -> Result<Session> {
        let now = self.clock.now();
        let ended = self
            .change(id, caller, |s, _| {
                s.state = SessionState::Ended;
                s.reason = Some(reason.as_str().to_string());
                s.ended_at = Some(now);
                Ok((
                    None,
                    format!("session {} ended ({})", s.id, reason.as_str()),
                ))
            })
            .await?;
        self.events.metrics().session_ended(reason.as_str());
        Ok(ended)
    }

    /// Applies `f` (given the session and its current piece) to a live session under the spec
    /// gate and stores the result with its new piece (`None`: removed) in one transaction;
    /// records the event `f` describes.
    async fn change(
        &self,
        id: &str,
        caller: Option<&Caller>,
        f: impl Fn(
            &mut Session,
            Option<steward_proto::NodeSpec>,
        ) -> Result<(Option<steward_proto::NodeSpec>, String)>,
    ) -> Result<Session> {
        for _ in 0..crate::spec_gate::ATTEMPTS {
            let guard = self.specs.take_gate().await?;
            let (mut s, rev) = match self.store.session(id).await? {
                Some((s, rev)) if caller.is_none_or(|c| self.sees(c, &s)) => (s, rev),
                _ => return Err(SessionError::NoSession(id.to_string())),
            };
            if !s.state.is_live() {
                return Err(SessionError::Ended(id.to_string()));
            }
            let current = self.specs.session_piece(&s.node, id).await?;
            let (piece, message) = f(&mut s, current)?;
            let actor = caller.map_or(Actor::SYSTEM, Caller::actor);
            let event = Event::new(
                EventKind::Session,
                Some(&s.node),
                None,
                &actor,
                message.clone(),
            );
            match (self.specs)
                .write_session_piece(&guard, &s, rev, piece, &actor, &message, event)
                .await
            {
                Err(SpecError::Store(StoreError::Stale)) => continue,
                Err(e) => return Err(e.into()),
                Ok((_, revision)) => self.stored(guard.epoch, revision, &s),
            }
            return Ok(s);
        }
        Err(StoreError::Busy {
            what: "session change",
        }
        .into())
    }
}

/// The label a refusal is counted under (`steward_registry_session_refusals_total`).
fn refusal(e: &SessionError) -> &'static str {
    match e {
        SessionError::Quota(q) => q.limit(),
        SessionError::Place(_) => "placement",
        SessionError::Alloc(_) => "allocation",
        SessionError::Invalid(_) => "invalid",
        SessionError::NoTemplate(_) => "no-template",
        SessionError::NotYourOwner { .. } => "owner",
        SessionError::Spec(SpecError::Conflict { .. }) => "conflict",
        _ => "error",
    }
}
