//! Creating sessions: a spare claimed, or a new session placed, allocated, rendered and
//! stored under the spec gate (see the module above); and the spares the jobs leader starts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use steward_proto::selector::Selector;
use steward_proto::validate::parse_port;
use steward_proto::{
    Actor, Allocations, Event, EventKind, Problem, Session, SessionCreate, SessionLease,
    SessionState, Template,
};

use super::place::{self, Candidate};
use super::{refusal, render, reserve_of, templates, Result, SessionError, Sessions};
use crate::auth::Caller;
use crate::kv::Revision;
use crate::spec_gate::SpecGuard;
use crate::specs::SpecError;
use crate::store::StoreError;

impl Sessions {
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
        // The spare's endpoints (its ports, its workloads' addresses) stay what they are.
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
                    labels: (*l.labels).clone(),
                    cpu_milli: u64::from(l.brief.cpus) * 1000,
                    memory: l.brief.memory_bytes,
                });
            }
        });
        Ok(out)
    }

    /// Host ports on `node` from its port range (none used by a live session there, published
    /// by the node's own spec or the fragments matching it, or reported in use by the node in
    /// its last status: see `place::taken_ports`), a VLAN from the fleet pool (none used by a
    /// live session), and volume names.
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
            let (labels, in_use) = (self.fleet.live(node))
                .map(|n| {
                    let l = n.lock();
                    (l.labels.clone(), l.brief.ports_in_use.clone())
                })
                .unwrap_or_default();
            let range = self.config.port_range_of(&labels);
            let in_spec = self.ports_in_spec(node).await?;
            let taken = place::taken_ports(node, live, in_spec, &in_use);
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
}
