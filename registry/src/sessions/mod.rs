//! Sessions: owned, expiring, quota-bounded instances of templates, placed on a node and
//! allocated host ports, a VLAN and Docker volumes by the registry. The [`Sessions`] service and
//! its [`SessionError`]; templates in `templates.rs`, the jobs (expiry, state, trimming) in
//! `jobs.rs`, the pure parts in `render.rs` (templates) and `place.rs` (quotas, placement,
//! allocation).
//!
//! Every change that moves a node's spec (create, extend, end) runs under the spec gate, reads
//! the stored sessions there, and is stored in one transaction with the node's spec record,
//! compared on the spec epoch (`store/sessions.rs`): a quota or an allocation decided here
//! holds on every replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use steward_proto::quantity::{parse_cpus, parse_memory};
use steward_proto::selector::Selector;
use steward_proto::validate::{parse_port, SpecLimits};
use steward_proto::{
    Actor, Allocations, Event, EventKind, Problem, Resources, Session, SessionCreate, SessionLease,
    SessionState, Template,
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
mod jobs;
pub mod place;
pub mod render;
mod templates;

pub use config::SessionsConfig;
use place::{AllocError, Candidate, PlaceError, QuotaError, Reserve};

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
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Deleted => "deleted",
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

    /// `POST /v1/sessions`.
    #[tracing::instrument(skip_all, fields(template = %req.template))]
    pub async fn create(&self, req: SessionCreate, caller: &Caller) -> Result<Session> {
        let owner = self.owner_for(&req, caller)?;
        let mut tries = 0;
        loop {
            match self.create_once(&req, Some(&owner), &caller.actor()).await {
                Err(SessionError::Spec(SpecError::Store(StoreError::Stale)))
                | Err(SessionError::Store(StoreError::Stale))
                    if tries < crate::spec_gate::ATTEMPTS =>
                {
                    tries += 1
                }
                r => {
                    if let Err(e) = &r {
                        self.events.metrics().session_refused(refusal(e));
                    }
                    return r;
                }
            }
        }
    }

    async fn create_once(
        &self,
        req: &SessionCreate,
        owner: Option<&str>,
        actor: &Actor,
    ) -> Result<Session> {
        let guard = self.specs.take_gate().await?;
        let made = match self.create_under(&guard, req, owner, actor).await {
            // A refusal computed from reads that another replica's change overtook (the
            // sessions read before it, the node's spec after) is computed again.
            Err(
                e @ (SessionError::Quota(_)
                | SessionError::Place(_)
                | SessionError::Alloc(_)
                | SessionError::Spec(SpecError::Conflict { .. })),
            ) => {
                return Err(if self.store.spec_epoch().await? != guard.epoch {
                    StoreError::Stale.into()
                } else {
                    e
                });
            }
            r => r?,
        };
        drop(guard);
        if owner.is_some() {
            self.events.metrics().session_created(&made.template);
        }
        Ok(made)
    }

    /// Decides and stores a create under the spec gate (a template is not deleted between
    /// its read and the store): for `owner`, a spare claimed or a new session; `None`, a new
    /// spare.
    async fn create_under(
        &self,
        guard: &SpecGuard,
        req: &SessionCreate,
        owner: Option<&str>,
        actor: &Actor,
    ) -> Result<Session> {
        let (template, _) = self
            .store
            .template(&req.template)
            .await?
            .ok_or_else(|| SessionError::NoTemplate(req.template.clone()))?;
        let t = &template.body;
        let params =
            render::resolve_params(&t.params, &req.params).map_err(SessionError::Invalid)?;
        let (default_ttl, max_ttl) = templates::lifetimes(t).map_err(SessionError::Invalid)?;
        let ttl = match (&req.ttl, owner) {
            (Some(text), _) => Self::ttl("ttl", text, max_ttl)?,
            (None, Some(_)) => default_ttl,
            // A spare waits as long as a session may live.
            (None, None) => max_ttl,
        };
        let stored = self.live_under(guard).await?;
        let all: Vec<&Session> = stored.iter().collect();
        if let Some(owner) = owner {
            // Spares count towards the fleet's limit only (checked below for a new session).
            let owned: Vec<&Session> = all.iter().filter(|s| !s.spare).copied().collect();
            let own = place::TemplateLimits {
                per_owner: t.per_owner,
                max_sessions: t.max_sessions,
            };
            let limits = place::Limits {
                max_live: None,
                ..self.config.limits()
            };
            place::check_quotas(&owned, &template.name, owner, &limits, own)
                .map_err(SessionError::Quota)?;
            if let Some(spare) = self.claimable(&all, &template.name, &params).await? {
                return self.claim(guard, spare, owner, ttl, actor).await;
            }
        }
        let fleet = place::Limits {
            per_owner: None,
            ..self.config.limits()
        };
        place::check_quotas(&all, &template.name, "", &fleet, Default::default())
            .map_err(SessionError::Quota)?;
        let reserve = reserve_of(&t.reserve);
        let candidates = self.candidates(&t.selector)?;
        let node = place::place(&candidates, &t.selector, reserve, &all, |s| {
            reserve_of(&s.reserve)
        })
        .map_err(SessionError::Place)?;
        let id = format!("s-{}", &crate::auth::new_id()[..10]);
        let alloc = self.allocate(&template, &id, &node, &all).await?;
        let now = self.clock.now();
        let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut session = Session {
            id: id.clone(),
            template: template.name.clone(),
            template_revision: template.revision,
            owner: owner.unwrap_or_default().to_string(),
            spare: owner.is_none(),
            node: node.clone(),
            params,
            allocations: alloc,
            reserve: t.reserve.clone(),
            state: SessionState::Pending,
            reason: None,
            created_at: now,
            created_by: actor.name.clone().unwrap_or_else(|| "-".into()),
            expires_at,
            running_at: None,
            ended_at: None,
            endpoints: Vec::new(),
        };
        let piece = self.piece(&template, &session)?;
        session.endpoints = self.endpoints(&session);
        let why = format!("session {id} created");
        let message = match owner {
            Some(owner) => format!(
                "session {id} created from template {:?} for {owner:?}, expires {}",
                template.name,
                expires_at.to_rfc3339()
            ),
            None => format!("spare session {id} of template {:?} started", template.name),
        };
        let event = Event::new(EventKind::Session, Some(&node), None, actor, message);
        let (_, revision) = self
            .specs
            .write_session_piece(guard, &session, 0, Some(piece), actor, &why, event)
            .await?;
        self.stored(guard.epoch, revision, &session);
        Ok(session)
    }

    /// A spare of `template` made with these parameters, running ones first, then the oldest.
    async fn claimable(
        &self,
        live: &[&Session],
        template: &str,
        params: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Option<(Session, Revision)>> {
        let mut spares: Vec<&&Session> = (live.iter())
            .filter(|s| s.spare && s.template == template && &s.params == params)
            .collect();
        spares.sort_by_key(|s| s.created_at);
        let mut best: Option<(Session, Revision)> = None;
        for s in spares {
            // The copy of the live sessions does not follow states: read the record.
            if let Some((s, rev)) = self.store.session(&s.id).await? {
                if s.state == SessionState::Running {
                    return Ok(Some((s, rev)));
                }
                if best.is_none() && s.state.is_live() {
                    best = Some((s, rev));
                }
            }
        }
        Ok(best)
    }

    /// Gives a spare to `owner`: its lifetime starts now (only its lease's deadline changes on
    /// the node, its workloads keep running).
    async fn claim(
        &self,
        guard: &SpecGuard,
        (mut s, rev): (Session, Revision),
        owner: &str,
        ttl: Duration,
        actor: &Actor,
    ) -> Result<Session> {
        let now = self.clock.now();
        s.owner = owner.to_string();
        s.spare = false;
        s.created_at = now;
        s.created_by = actor.name.clone().unwrap_or_else(|| "-".into());
        s.expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut piece = self
            .specs
            .session_piece(&s.node, &s.id)
            .await?
            .unwrap_or_default();
        for lease in piece.sessions.iter_mut().filter(|l| l.id == s.id) {
            lease.expires_at = s.expires_at;
        }
        s.endpoints = self.endpoints(&s);
        let message = format!(
            "session {} claimed from the spares of template {:?} for {owner:?}, expires {}",
            s.id,
            s.template,
            s.expires_at.to_rfc3339()
        );
        let why = format!("session {} claimed", s.id);
        let event = Event::new(EventKind::Session, Some(&s.node), None, actor, message);
        let (_, revision) = self
            .specs
            .write_session_piece(guard, &s, rev, Some(piece), actor, &why, event)
            .await?;
        self.stored(guard.epoch, revision, &s);
        Ok(s)
    }

    /// Starts one spare of `template` (the jobs leader keeps each template's `spares`).
    pub(crate) async fn start_spare(&self, template: &str) -> Result<Session> {
        let req = SessionCreate {
            template: template.to_string(),
            owner: None,
            params: Default::default(),
            ttl: None,
        };
        let mut tries = 0;
        loop {
            match self.create_once(&req, None, &Actor::SYSTEM).await {
                Err(SessionError::Spec(SpecError::Store(StoreError::Stale)))
                | Err(SessionError::Store(StoreError::Stale))
                    if tries < crate::spec_gate::ATTEMPTS =>
                {
                    tries += 1
                }
                r => return r,
            }
        }
    }

    /// The template's spec rendered for `session` (placeholders, lease).
    fn piece(&self, template: &Template, s: &Session) -> Result<steward_proto::NodeSpec> {
        let ctx = render::Context {
            session: &s.id,
            owner: &s.owner,
            params: &s.params,
            alloc: &s.allocations,
        };
        let lease = SessionLease {
            id: s.id.clone(),
            expires_at: s.expires_at,
            volumes: s.allocations.volumes.values().cloned().collect(),
            keep_volumes: template.body.keep_volumes,
        };
        render::render(&template.body, &ctx, lease, &self.limits).map_err(SessionError::Invalid)
    }

    /// The nodes matching `selector` (not decommissioned), with their capacity, from the
    /// fleet view.
    fn candidates(&self, selector: &str) -> Result<Vec<Candidate>> {
        let sel: Selector = selector
            .parse()
            .map_err(|e| SessionError::Invalid(vec![Problem::new("selector", format!("{e}"))]))?;
        let mut out = Vec::new();
        self.fleet.for_each(|id, ln| {
            let l = ln.lock();
            if l.health != steward_proto::Health::Decommissioned && sel.matches(&l.labels) {
                out.push(Candidate {
                    id: id.to_string(),
                    health: l.health,
                    labels: l.labels.clone(),
                    cpu_milli: u64::from(l.brief.cpus) * 1000,
                    memory: l.brief.memory_bytes,
                });
            }
        });
        Ok(out)
    }

    /// Host ports on `node` (none used by a live session there or by the node's own spec and
    /// fragments), a VLAN from the fleet pool (none used by a live session), and volume names.
    async fn allocate(
        &self,
        template: &Template,
        id: &str,
        node: &str,
        live: &[&Session],
    ) -> Result<Allocations> {
        let t = &template.body;
        let mut alloc = Allocations::default();
        if !t.ports.is_empty() {
            let labels = (self.fleet.live(node))
                .map(|n| n.lock().labels.clone())
                .unwrap_or_default();
            let range = self.config.port_range_of(&labels);
            let mut taken: BTreeSet<u16> = (live.iter())
                .filter(|s| s.node == node)
                .flat_map(|s| s.allocations.ports.values().copied())
                .collect();
            taken.extend(self.ports_in_spec(node).await?);
            alloc.ports =
                place::alloc_ports(node, &t.ports, &range, &taken).map_err(SessionError::Alloc)?;
        }
        if t.lab {
            let taken: BTreeSet<u16> = (live.iter())
                .filter_map(|s| s.allocations.lab.as_ref().map(|l| l.vlan))
                .collect();
            let vlan =
                place::alloc_vlan(&self.config.vlan_pool(), &taken).map_err(SessionError::Alloc)?;
            let lab = render::lab_for(vlan, &self.config.lab_cidr)
                .map_err(|e| SessionError::Invalid(vec![Problem::new("sessions.lab_cidr", e)]))?;
            alloc.lab = Some(lab);
        }
        alloc.volumes = (t.volumes.iter())
            .map(|v| (v.clone(), render::volume_name(id, v)))
            .collect();
        Ok(alloc)
    }

    /// Host ports the node's own spec and the fragments matching it publish (the sessions'
    /// are in their allocations; a piece publishing a fixed port that clashes is refused when
    /// stored).
    async fn ports_in_spec(&self, node: &str) -> Result<Vec<u16>> {
        let own = self
            .store
            .spec(node)
            .await?
            .map(|r| r.own)
            .unwrap_or_default();
        let labels = (self.fleet.live(node))
            .map(|n| n.lock().labels.clone())
            .unwrap_or_default();
        let set = self.fleet.fragments();
        let specs = std::iter::once(&own).chain(set.matching(&labels).map(|f| &f.spec));
        Ok((specs.flat_map(|s| s.containers.iter()))
            .flat_map(|c| c.ports.iter())
            .filter_map(|p| parse_port(p).ok())
            .filter_map(|p| p.host_port)
            .collect())
    }

    /// Where to reach a session: the node's address (its `address_label`, else its hostname)
    /// and each allocated port.
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

    /// Sessions per template and state, for the metrics.
    pub async fn counts(&self) -> Result<BTreeMap<(String, SessionState), u64>> {
        let mut out = BTreeMap::new();
        for (s, _) in self.store.sessions().await? {
            *out.entry((s.template, s.state)).or_default() += 1;
        }
        Ok(out)
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
