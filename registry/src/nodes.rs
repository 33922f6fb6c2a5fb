//! Nodes: enrolment, heartbeats, reported status, health transitions and decommissioning.
//!
//! Heartbeats update only the in-memory [`Live`](crate::fleet::Live) entry; the store is
//! written when a node's health changes (a small record, in batches, without the heartbeat
//! waiting), it reports a new status or a heartbeat takes queued workload resets, so disk
//! writes do not grow with fleet size × heartbeat rate.
//!
//! The [`Nodes`] service and its [`NodeError`]; who may enrol is `reenroll.rs`'s, health
//! transitions and the health monitor are `nodes/health.rs`'s, listing (filters, pages) is
//! `nodes/list.rs`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use steward_proto::validate::validate_labels;
use steward_proto::{
    Actor, CredentialKind, EnrollRequest, EnrollResponse, EventKind, Health, Heartbeat,
    HeartbeatResponse, Node, NodeStatus, Problem,
};

use crate::alerts::Alerts;
use crate::auth;
use crate::events::EventLog;
use crate::fleet::Fleet;
use crate::reenroll::{EnrollError, Enrolments};
use crate::spec_gate::SpecGate;
use crate::store::{NodeRecord, Store, StoreError};
pub use health::{health_for, health_monitor, health_writer};
use health::{HealthQueue, Transition};
pub use list::{NodePage, NodeQuery, MAX_PAGE, MAX_UNPAGED};

mod health;
mod list;

/// What a node operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no node with id {0:?}")]
    NoNode(String),
    #[error("invalid input: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, NodeError>;

/// How health is judged from heartbeats.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub heartbeat_interval: Duration,
    /// Missed intervals before a node is stale.
    pub stale_after: u32,
    /// Missed intervals before a node is down.
    pub down_after: u32,
}

/// Enrolment, heartbeats, status, health and decommissioning of nodes.
#[derive(Clone)]
pub struct Nodes {
    store: Store,
    fleet: Arc<Fleet>,
    events: EventLog,
    gate: SpecGate,
    alerts: Alerts,
    enrolments: Enrolments,
    settings: HealthSettings,
    /// Health transitions waiting to be stored (`nodes/health.rs`).
    health: HealthQueue,
}

impl Nodes {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        events: EventLog,
        gate: SpecGate,
        alerts: Alerts,
        enrolments: Enrolments,
        settings: HealthSettings,
    ) -> Self {
        Self {
            store,
            fleet,
            events,
            gate,
            alerts,
            enrolments,
            settings,
            health: HealthQueue::default(),
        }
    }

    /// The wire view of a node: its stored record overlaid with live heartbeat data.
    pub fn to_wire(&self, rec: NodeRecord) -> Node {
        let mut node = Node {
            hostname: rec.facts.hostname.clone(),
            id: rec.id,
            labels: rec.labels,
            facts: rec.facts,
            health: rec.health,
            enrolled_at: rec.enrolled_at,
            last_heartbeat: rec.last_heartbeat,
            heartbeat_rtt_ms: rec.heartbeat_rtt_ms,
            generation: 0,
            observed_generation: rec.observed_generation,
            stats: rec.stats,
            drift: rec.status.as_ref().map(|s| s.drift()).unwrap_or_default(),
            drifted: false,
            rolled_back_from: rec.status.as_ref().and_then(|s| {
                s.resources
                    .iter()
                    .filter_map(|r| r.rolled_back.as_ref().map(|b| b.from_generation))
                    .max()
            }),
            status: rec.status,
            progress: None,
        };
        node.drifted = !node.drift.is_empty();
        if let Some(ln) = self.fleet.live(&node.id) {
            node.generation = ln.generation();
            let l = ln.lock();
            node.health = l.health;
            node.last_heartbeat = l.last_heartbeat;
            node.heartbeat_rtt_ms = l.rtt_ms;
            node.observed_generation = l.observed_generation;
            // A node that stopped heartbeating is in no pass we know of.
            node.progress = l.progress.clone().filter(|_| l.health == Health::Ready);
            if l.stats.is_some() {
                node.stats = l.stats.clone();
            }
        }
        node
    }
}

/// The record of an enrolling node: the existing node's with the new facts (and the token's
/// labels it lacks), or a new node's.
fn enrolled_record(
    existing: Option<NodeRecord>,
    facts: steward_proto::NodeFacts,
    labels: steward_proto::Labels,
    now: chrono::DateTime<Utc>,
) -> NodeRecord {
    match existing {
        Some(mut rec) => {
            rec.facts = facts;
            for (k, v) in &labels {
                rec.labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
            rec
        }
        None => NodeRecord {
            id: uuid::Uuid::new_v4().to_string(),
            labels,
            facts,
            health: Health::Ready,
            enrolled_at: now,
            last_heartbeat: Some(now),
            heartbeat_rtt_ms: None,
            stats: None,
            status: None,
            observed_generation: 0,
            secret_sha256: None,
        },
    }
}

fn check_facts(req: &EnrollRequest) -> Result<()> {
    let mut problems = Vec::new();
    let mid = &req.facts.machine_id;
    if mid.is_empty()
        || mid.len() > 128
        || !mid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        problems.push(Problem::new(
            "facts.machine_id",
            "must be 1-128 letters, digits or '-' (the content of /etc/machine-id)",
        ));
    }
    if req.facts.hostname.is_empty() || req.facts.hostname.len() > 253 {
        problems.push(Problem::new("facts.hostname", "must be 1-253 characters"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(NodeError::Invalid(problems))
    }
}

impl Nodes {
    /// `POST /v1/enroll`: trades an enrollment token for a new node's id and secret, or
    /// re-enrols an existing node (secret rotated) when the caller proves to be it: its current
    /// secret, or a re-enrolment grant (see [`crate::reenroll`]). A machine id alone never does.
    pub async fn enroll(
        &self,
        req: EnrollRequest,
        client: Option<std::net::SocketAddr>,
    ) -> Result<EnrollResponse> {
        check_facts(&req)?;
        let now = self.enrolments.now();
        // One enrolment at a time: what `admit` saw of the machine map still holds when writing.
        let _guard = self.gate.lock().await;
        let admitted = self.enrolments.admit(&req, now, client).await?;
        let via = admitted.credential.describe();
        let labels = admitted.credential.labels();
        let rotated = admitted.existing.is_some();
        let old_machine = admitted
            .existing
            .as_ref()
            .map(|r| r.facts.machine_id.clone());
        let previous = admitted.existing.clone();
        let mut rec = enrolled_record(admitted.existing, req.facts, labels, now);
        let problems = validate_labels(&rec.labels, "labels");
        if !problems.is_empty() {
            return Err(NodeError::Invalid(problems));
        }
        let secret = auth::new_secret(&rec.id);
        rec.secret_sha256 = Some(auth::sha256(&secret));
        rec.health = Health::Ready;
        rec.last_heartbeat = Some(now);
        self.claim(&rec, admitted.machine_was.as_deref()).await?;
        if let Err(e) = self.enrolments.spend(&admitted.credential, now).await {
            self.unclaim(&rec, admitted.machine_was.as_deref(), previous.as_ref())
                .await;
            return Err(e.into());
        }
        // A grant may move the node to a new machine id: the old one no longer names it.
        if let Some(old) = old_machine.filter(|m| *m != rec.facts.machine_id) {
            if self.store.node_for_machine(&old).await?.as_deref() == Some(rec.id.as_str()) {
                self.store.set_machine(&old, None).await?;
            }
        }
        let weight = self.fleet.fragments().weight(&rec.labels);
        let base = self
            .store
            .spec(&rec.id)
            .await?
            .map(|s| s.base_under(weight));
        self.show_enrolled(&rec, base, now);
        let (kind, what) = if rotated {
            (EventKind::NodeReenrolled, "enrolled again; secret rotated")
        } else {
            (EventKind::NodeEnrolled, "enrolled")
        };
        self.events
            .record(
                kind,
                Some(&rec.id),
                None,
                &Actor::kind(CredentialKind::Enrollment),
                // No machine id: events are readable with the read token.
                format!("{} {what} with {via}", rec.facts.hostname),
            )
            .await?;
        tracing::info!(node = %rec.id, hostname = %rec.facts.hostname, rotated, "node enrolled");
        Ok(EnrollResponse {
            node_id: rec.id,
            node_secret: secret,
            heartbeat_interval_secs: self.settings.heartbeat_interval.as_secs().max(1),
            rotated,
        })
    }

    /// Stores `rec` and points its machine id at it, in one transaction, against what `admit`
    /// saw (`seen`): of two enrolments of one machine id at once (on two replicas), one gets it
    /// and the other changes nothing (409).
    async fn claim(&self, rec: &NodeRecord, seen: Option<&str>) -> Result<()> {
        if self
            .store
            .claim_machine(&rec.facts.machine_id, seen, rec)
            .await?
        {
            return Ok(());
        }
        Err(EnrollError::Conflict(format!(
            "machine id {:?} was enrolled by another request at the same moment; try again \
             (with this node's secret or a re-enrolment grant if it is now enrolled)",
            rec.facts.machine_id
        ))
        .into())
    }

    /// Not enrolled after all (the credential could not be spent): the mapping and the node
    /// record as they were.
    async fn unclaim(&self, rec: &NodeRecord, seen: Option<&str>, previous: Option<&NodeRecord>) {
        let undo = self
            .store
            .unclaim_machine(&rec.facts.machine_id, seen, &rec.id, previous)
            .await;
        if let Err(e) = undo {
            tracing::error!(node = %rec.id, error = %e, "undoing a failed enrolment failed");
        }
    }

    /// The fleet view takes an enrolled node at once (the store watch brings it too, later).
    fn show_enrolled(&self, rec: &NodeRecord, base: Option<i64>, now: chrono::DateTime<Utc>) {
        match self.fleet.live(&rec.id) {
            Some(ln) => {
                let labels = self.fleet.intern(&rec.labels);
                let mut l = ln.lock();
                l.secret_sha256 = rec.secret_sha256;
                l.labels = labels;
                let from = l.health;
                l.health = Health::Ready;
                l.last_seen = Instant::now();
                l.last_heartbeat = Some(now);
                l.brief = crate::fleet::Brief::of(rec);
                if from != Health::Ready {
                    self.health.push(Transition::of(&rec.id, from, &l));
                }
            }
            None => {
                self.fleet.insert_live(rec, base);
            }
        }
    }
}

impl Nodes {
    /// `POST /v1/nodes/{id}/heartbeat` (already authorised for that node).
    pub async fn heartbeat(&self, id: &str, hb: Heartbeat) -> Result<HeartbeatResponse> {
        let problems = steward_proto::validate::validate_heartbeat(&hb);
        if !problems.is_empty() {
            return Err(NodeError::Invalid(problems));
        }
        let ln = self
            .fleet
            .live(id)
            .ok_or_else(|| NodeError::NoNode(id.to_string()))?;
        let generation = ln.generation();
        let status_wanted = {
            let mut l = ln.lock();
            l.last_seen = Instant::now();
            l.heard_here = Some(l.last_seen);
            l.last_heartbeat = Some(Utc::now());
            l.observed_generation = hb.observed_generation;
            l.progress = hb.progress;
            if hb.rtt_ms.is_some() {
                l.rtt_ms = hb.rtt_ms;
            }
            if hb.stats.is_some() {
                l.stats = hb.stats;
            }
            let from = l.health;
            l.health = Health::Ready;
            let wanted = !hb.status_digest.is_empty() && hb.status_digest != l.status_digest;
            (
                wanted,
                (from != Health::Ready).then(|| Transition::of(id, from, &l)),
            )
        };
        let (status_wanted, change) = status_wanted;
        if let Some(t) = change {
            // Stored by the health writer in a batch: the heartbeat does not wait for it.
            self.health.push(t);
        }
        // Queued resets are stored (they survive a registry restart) and taken once; their removal
        // is durable before they are handed over, so a restart does not deliver them again. The
        // store is read only for nodes the fleet view knows to have resets queued.
        let (reset, reset_workloads) = if self.fleet.has_resets(id) {
            let r = self.store.take_resets(id).await?;
            self.fleet.set_resets(id, false);
            crate::store::split_resets(r)
        } else {
            Default::default()
        };
        Ok(HeartbeatResponse {
            generation,
            server_time: Utc::now(),
            status_wanted,
            heartbeat_interval_secs: self.settings.heartbeat_interval.as_secs().max(1),
            reset,
            reset_workloads,
        })
    }

    /// `POST /v1/nodes/{id}/workloads/{name}/reset`: queues a reset of the workload's escalation
    /// ladder (and rollback) for the node's next heartbeat. The queue is in the store and flushed
    /// before the answer, so it survives a registry restart. With `kind` (`container`, `vm`)
    /// only the workload of that kind is reset; without, every workload of that name.
    pub async fn reset_workload(
        &self,
        id: &str,
        name: &str,
        kind: Option<&str>,
        cred: &Actor,
    ) -> Result<steward_proto::api::ResetQueued> {
        if self.fleet.live(id).is_none() {
            return Err(NodeError::NoNode(id.to_string()));
        }
        if !steward_proto::patterns::is_workload_name(name) {
            return Err(NodeError::Invalid(vec![Problem::new(
            "name",
            format!("{name:?} is not a workload name: give the name of a container or VM of the node's spec"),
        )]));
        }
        let kind = match kind.map(|k| (k, steward_proto::WorkloadKind::parse(k))) {
            None => None,
            Some((_, Some(k))) => Some(k),
            Some((k, None)) => {
                return Err(NodeError::Invalid(vec![Problem::new(
                    "kind",
                    format!(
                        "{k:?} is not a kind of workload: give {}",
                        steward_proto::WorkloadKind::choices()
                    ),
                )]))
            }
        };
        self.store
            .queue_reset(id, &crate::store::queued_reset(name, kind))
            .await?;
        let what = match kind {
            Some(k) => format!("{} {name}", k.as_str()),
            None => name.to_string(),
        };
        self.events
            .record_about(
                EventKind::WorkloadReset,
                id,
                kind.map(|k| steward_proto::WorkloadRef::new(k, name)),
                cred,
                format!("reset of {what}'s escalation ladder queued for the next heartbeat"),
            )
            .await?;
        Ok(steward_proto::api::ResetQueued {
            node_id: id.to_string(),
            workload: name.to_string(),
            kind,
        })
    }

    /// `PUT /v1/nodes/{id}/status`: stores a full status (only sent when it changed).
    pub async fn put_status(&self, id: &str, status: NodeStatus) -> Result<()> {
        let ln = self
            .fleet
            .live(id)
            .ok_or_else(|| NodeError::NoNode(id.to_string()))?;
        let (last, rtt, stats) = {
            let mut l = ln.lock();
            l.status_digest = status.digest.clone();
            l.observed_generation = status.observed_generation;
            l.last_seen = Instant::now();
            l.last_heartbeat = Some(Utc::now());
            (l.last_heartbeat, l.rtt_ms, l.stats.clone())
        };
        let summary = summarize(&status);
        let observed = status.observed_generation;
        let before = self.store.node(id).await?.and_then(|r| r.status);
        let alerts = crate::alerts::from_status(id, before.as_ref(), &status);
        let stored = self
            .store
            .update_node(id, |r| {
                r.status = Some(status.clone());
                r.observed_generation = observed;
                r.last_heartbeat = last;
                r.heartbeat_rtt_ms = rtt;
                r.stats = stats.clone();
            })
            .await?;
        if let Some(rec) = &stored {
            ln.lock().brief = crate::fleet::Brief::of(rec);
        }
        if !only_counters_moved(before.as_ref(), &status) {
            self.events
                .record(
                    EventKind::StatusChanged,
                    Some(id),
                    Some(observed),
                    &Actor::new(CredentialKind::Node, id),
                    summary,
                )
                .await?;
        }
        for a in alerts {
            if let Err(e) = self.alerts.raise(a).await {
                tracing::warn!(node = %id, error = %e, "raising an alert failed");
            }
        }
        Ok(())
    }
}

/// True when `after` differs from `before` only in what moves on its own (workloads'
/// activity counters, the host ports in use): stored, but no `status-changed` event, or every
/// node with traffic would log one per activity read.
fn only_counters_moved(before: Option<&NodeStatus>, after: &NodeStatus) -> bool {
    let Some(before) = before else { return false };
    let bare = |s: &NodeStatus| {
        let mut s = s.clone();
        s.digest.clear();
        s.ports_in_use.clear();
        for r in &mut s.resources {
            r.activity = None;
        }
        s
    };
    bare(before) == bare(after)
}

fn summarize(s: &NodeStatus) -> String {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &s.resources {
        *counts
            .entry(
                serde_json::to_value(r.state)
                    .map(|v| v.as_str().unwrap_or("").to_string())
                    .unwrap_or_default(),
            )
            .or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let drift = s.drift();
    let drift = if drift.is_empty() {
        String::new()
    } else {
        format!(
            "; DRIFTED: {}",
            drift
                .iter()
                .map(|d| format!("{} {}", d.name, d.detail))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    format!(
        "observed generation {}: {}{drift}",
        s.observed_generation,
        if parts.is_empty() {
            "no resources".into()
        } else {
            parts.join(", ")
        }
    )
}

impl Nodes {
    /// `DELETE /v1/nodes/{id}`: revokes the node's secret; its record and history stay.
    pub async fn decommission(&self, id: &str, cred: &Actor) -> Result<Node> {
        let _guard = self.gate.lock().await;
        let rec = self
            .store
            .update_node(id, |r| {
                r.health = Health::Decommissioned;
                r.secret_sha256 = None;
            })
            .await?
            .ok_or_else(|| NodeError::NoNode(id.to_string()))?;
        if self
            .store
            .node_for_machine(&rec.facts.machine_id)
            .await?
            .as_deref()
            == Some(id)
        {
            self.store.set_machine(&rec.facts.machine_id, None).await?;
        }
        // Its queued resets can never be delivered now.
        self.store.take_resets(id).await?;
        if let Some(ln) = self.fleet.live(id) {
            let mut l = ln.lock();
            l.secret_sha256 = None;
            l.health = Health::Decommissioned;
        }
        self.events
            .record(
                EventKind::NodeDecommissioned,
                Some(id),
                None,
                cred,
                format!(
                    "{} decommissioned; its secret is revoked",
                    rec.facts.hostname
                ),
            )
            .await?;
        Ok(self.to_wire(rec))
    }
}

#[cfg(test)]
#[path = "nodes_tests.rs"]
mod tests;
