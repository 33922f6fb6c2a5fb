//! Desired state: node specs, fleet-wide fragments, and the effective spec of each node (its
//! own spec merged with every fragment whose selector matches its labels), computed when read
//! ([`Specs::document`]), never stored per node. The [`Specs`] service and its [`SpecError`];
//! fragment writes are in `fragments.rs`, the fragment set and generation arithmetic in `fragment_set.rs`.
//!
//! Every change that can alter effective specs runs under the spec gate (`spec_gate.rs`),
//! checks every node it changes, refuses the change as a whole if any node would get an invalid
//! or conflicting spec, writes it (a fragment write: one record, whatever the number of nodes it
//! matches), and only then wakes the watchers.

use std::sync::Arc;

use chrono::Utc;
use steward_proto::validate::{validate_labels, validate_spec, SpecLimits};
use steward_proto::{
    Actor, Event, EventKind, Health, Labels, NodePatch, NodeSpec, Problem, SpecWritten,
};

use crate::events::{EventLog, EACH_NODE_UP_TO};
use crate::fleet::Fleet;
use crate::fragment_set::{base_for, generation, FragmentSet};
use crate::payloads::{PayloadError, Payloads};
use crate::spec_gate::{SpecGate, SpecGuard};
use crate::store::{HistoryOf, NodeRecord, SpecRecord, SpecWrite, Store, StoreError};

/// What a spec, fragment or label change can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no node with id {0:?}")]
    NoNode(String),
    #[error("no fragment named {0:?}")]
    NoFragment(String),
    #[error("invalid input: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("node {0:?} is decommissioned")]
    Decommissioned(String),
    /// The change would give nodes a conflicting or invalid effective spec.
    #[error("{message}")]
    Conflict {
        message: String,
        problems: Vec<Problem>,
    },
    /// `If-Match` named another generation than the stored one.
    #[error("generation is {current}, If-Match asked for {expected}")]
    PreconditionFailed { current: u64, expected: u64 },
    /// A revert to a version the history does not hold.
    #[error("no kept version of {what} at {at} ({kept}); see its history")]
    NoVersion { what: String, at: u64, kept: String },
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A spec document that serde cannot write as JSON (a bug, never the caller's input).
    #[error("cannot encode a spec document as JSON: {0}")]
    Encode(#[source] serde_json::Error),
}

type Result<T> = std::result::Result<T, SpecError>;

/// Node specs, fragments and labels.
#[derive(Clone)]
pub struct Specs {
    store: Store,
    fleet: Arc<Fleet>,
    events: EventLog,
    gate: SpecGate,
    payloads: Payloads,
    /// Upper bounds on node specs, fragments and effective specs (`[limits]`).
    limits: SpecLimits,
    /// Merges shared by the documents of nodes with the same record and fragments.
    docs: Arc<document::DocCache>,
    /// Versions of each own spec and fragment kept in the history.
    history_kept: usize,
}

fn prefixed(problems: Vec<Problem>, prefix: &str) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|p| Problem::new(format!("{prefix}{}", p.field), p.reason))
        .collect()
}

/// Runs a `*_once` step again while it fails with [`StoreError::Stale`] (another writer
/// committed a spec change since it read the spec epoch), at most [`ATTEMPTS`] times.
macro_rules! retry_stale {
    ($e:expr) => {{
        let mut tries = 0;
        loop {
            match $e.await {
                Err(SpecError::Store($crate::store::StoreError::Stale))
                    if tries < $crate::spec_gate::ATTEMPTS =>
                {
                    tries += 1
                }
                Err(SpecError::Store($crate::store::StoreError::Stale)) => {
                    break Err($crate::store::StoreError::Busy {
                        what: "spec change",
                    }
                    .into())
                }
                r => break r,
            }
        }
    }};
}

// After the macro: fragment writes use `retry_stale!` too.
mod document;
mod fragments;
mod history;
mod sessions;

impl Specs {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        events: EventLog,
        gate: SpecGate,
        payloads: Payloads,
        limits: SpecLimits,
        history_kept: usize,
    ) -> Self {
        Self {
            store,
            fleet,
            events,
            gate,
            payloads,
            limits,
            docs: Arc::default(),
            history_kept,
        }
    }

    async fn live_node(&self, id: &str) -> Result<NodeRecord> {
        self.store
            .node(id)
            .await?
            .ok_or_else(|| SpecError::NoNode(id.to_string()))
    }

    /// The fragment set as stored (read under the spec gate, so it is the one a change is
    /// computed against). When this process's view lags behind it (another replica's fragment
    /// change whose watch event has not arrived yet), the view takes it first, so generations
    /// published here are the ones the change is computed with.
    async fn stored_set(&self) -> Result<FragmentSet> {
        let (ghosts, version) = self.store.ghosts().await?;
        let set = FragmentSet::new(self.store.fragments().await?, ghosts, version);
        if set.version > self.fleet.fragments().version {
            let (fleet, newer) = (self.fleet.clone(), Arc::new(set.clone()));
            tokio::task::spawn_blocking(move || fleet.set_fragments(newer))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        Ok(set)
    }

    /// Checks that a node with this record and labels gets a valid effective spec under `set`.
    async fn check(
        &self,
        set: &FragmentSet,
        own: &NodeSpec,
        sessions: &std::collections::BTreeMap<String, NodeSpec>,
        labels: &Labels,
        overrides: &std::collections::BTreeMap<String, String>,
        message: impl FnOnce() -> String,
    ) -> Result<()> {
        let (mut effective, _) =
            set.effective(own, sessions, labels, &self.limits)
                .map_err(|problems| SpecError::Conflict {
                    message: message(),
                    problems,
                })?;
        self.payloads
            .apply_overrides(&mut effective, overrides)
            .await?;
        Ok(())
    }

    /// Stores node spec records (and `node`, a label change), then sets the nodes' bases in
    /// the fleet view, which wakes their watchers, and logs one event per node (or, when more
    /// than [`EACH_NODE_UP_TO`] changed, one event naming the count).
    async fn commit(
        &self,
        guard: &SpecGuard,
        writes: Vec<SpecWrite>,
        node: Option<&NodeRecord>,
        cred: &Actor,
        why: &str,
    ) -> Result<Vec<SpecWritten>> {
        let written = self.store.write_specs(guard.epoch, &writes, node).await?;
        let mut out = Vec::with_capacity(written.len());
        for w in &written {
            let labels = node.filter(|n| n.id == w.node_id).map(|n| &n.labels);
            let base = w.record.base.unwrap_or_default();
            self.fleet.set_base(&w.node_id, labels, base);
            out.push(SpecWritten {
                node_id: w.node_id.clone(),
                generation: w.record.generation,
            });
        }
        self.spec_events(&out, cred, why).await?;
        Ok(out)
    }

    /// One `spec-written` event per node, or one naming the count above [`EACH_NODE_UP_TO`].
    async fn spec_events(&self, written: &[SpecWritten], cred: &Actor, why: &str) -> Result<()> {
        let event = |node_id: Option<String>, generation: Option<u64>, message: String| {
            let mut ev = Event::new(
                EventKind::SpecWritten,
                node_id.as_deref(),
                None,
                cred,
                message,
            );
            ev.generation = generation;
            ev
        };
        let events = if written.len() > EACH_NODE_UP_TO {
            vec![event(
                None,
                None,
                format!("new generation for {} nodes ({why})", written.len()),
            )]
        } else {
            written
                .iter()
                .map(|w| {
                    let g = w.generation;
                    event(
                        Some(w.node_id.clone()),
                        Some(g),
                        format!("generation {g} ({why})"),
                    )
                })
                .collect()
        };
        self.events.record_many(events).await?;
        Ok(())
    }

    /// `PUT /v1/nodes/{id}/spec`.
    pub async fn write_node_spec(
        &self,
        id: &str,
        own: NodeSpec,
        if_match: Option<u64>,
        cred: &Actor,
    ) -> Result<SpecWritten> {
        retry_stale!(self.write_node_spec_once(id, own.clone(), if_match, cred, "written"))
    }

    /// Writes a node's own spec; `note` goes to its history (`written`, `reverted to …`).
    async fn write_node_spec_once(
        &self,
        id: &str,
        mut own: NodeSpec,
        if_match: Option<u64>,
        cred: &Actor,
        note: &str,
    ) -> Result<SpecWritten> {
        validate_spec(&own, &self.limits).map_err(|e| SpecError::Invalid(e.0))?;
        let guard = self.gate.take().await?;
        // Under spec_lock: a version cannot be deleted between pinning and storing.
        self.payloads.pin(&mut own, "").await?;
        let node = self.live_node(id).await?;
        if node.health == Health::Decommissioned {
            return Err(SpecError::Decommissioned(id.to_string()));
        }
        let set = self.stored_set().await?;
        let weight = set.weight(&node.labels);
        let (current, revision) = self.store.spec_rev(id).await?;
        let now = generation(current.base_under(weight), weight);
        if let Some(expected) = if_match {
            if expected != now {
                return Err(SpecError::PreconditionFailed {
                    current: now,
                    expected,
                });
            }
        }
        let message = || "the spec conflicts with the fragments that apply to this node".into();
        self.check(
            &set,
            &own,
            &current.sessions,
            &node.labels,
            &current.payload_overrides,
            message,
        )
        .await?;
        if revision > 0 && current.own == own {
            return Ok(SpecWritten {
                node_id: id.to_string(),
                generation: now,
            });
        }
        let history = self
            .version(HistoryOf::Node, id, now + 1, cred, note, Some(&own), None)
            .await?;
        let record = SpecRecord {
            generation: now + 1,
            base: Some(base_for(now + 1, weight)),
            own,
            updated_at: Some(Utc::now()),
            payload_overrides: current.payload_overrides,
            sessions: current.sessions,
        };
        let write = SpecWrite {
            node_id: id.to_string(),
            record,
            revision,
            history: Some(history),
        };
        let mut done = self
            .commit(&guard, vec![write], None, cred, "node spec written")
            .await?;
        Ok(done.remove(0))
    }

    /// `PATCH /v1/nodes/{id}`: label merge patch; re-evaluates which fragments apply.
    pub async fn patch_node(&self, id: &str, patch: NodePatch, cred: &Actor) -> Result<NodeRecord> {
        retry_stale!(self.patch_node_once(id, patch.clone(), cred))
    }

    async fn patch_node_once(
        &self,
        id: &str,
        patch: NodePatch,
        cred: &Actor,
    ) -> Result<NodeRecord> {
        let guard = self.gate.take().await?;
        let mut node = self.live_node(id).await?;
        if node.health == Health::Decommissioned {
            return Err(SpecError::Decommissioned(id.to_string()));
        }
        let before = node.labels.clone();
        for (k, v) in patch.labels {
            match v {
                Some(v) => node.labels.insert(k, v),
                None => node.labels.remove(&k),
            };
        }
        let problems = validate_labels(&node.labels, "labels");
        if !problems.is_empty() {
            return Err(SpecError::Invalid(problems));
        }
        if node.labels == before {
            return Ok(node);
        }
        let set = self.stored_set().await?;
        let (current, revision) = self.store.spec_rev(id).await?;
        let (old_weight, new_weight) = (set.weight(&before), set.weight(&node.labels));
        let names = |l: &Labels| set.matching(l).map(|f| f.name.clone()).collect::<Vec<_>>();
        if old_weight == new_weight && names(&before) == names(&node.labels) {
            // The same fragments apply: the node keeps its spec and generation.
            self.store
                .write_specs(guard.epoch, &[], Some(&node))
                .await?;
            if let Some(ln) = self.fleet.live(id) {
                let labels = self.fleet.intern(&node.labels);
                ln.lock().labels = labels;
            }
        } else {
            let now = generation(current.base_under(old_weight), old_weight);
            let message = || format!("with these labels, node {id}'s spec would not merge");
            self.check(
                &set,
                &current.own,
                &current.sessions,
                &node.labels,
                &current.payload_overrides,
                message,
            )
            .await?;
            let write = SpecWrite {
                node_id: id.to_string(),
                record: SpecRecord {
                    generation: now + 1,
                    base: Some(base_for(now + 1, new_weight)),
                    updated_at: Some(Utc::now()),
                    ..current
                },
                revision,
                history: None,
            };
            self.commit(&guard, vec![write], Some(&node), cred, "labels changed")
                .await?;
        }
        let fmt = |l: &Labels| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        self.events
            .record(
                EventKind::LabelsChanged,
                Some(id),
                Some(self.fleet.generation(id)),
                cred,
                format!("labels {} -> {}", fmt(&before), fmt(&node.labels)),
            )
            .await?;
        Ok(node)
    }

    /// Sets (`Some`) or removes (`None`) a node's rollout override of a payload's version
    /// (`(node id, payload, version)`), and bumps and wakes the nodes whose overrides changed.
    pub async fn set_payload_overrides(
        &self,
        changes: &[(String, String, Option<String>)],
        cred: &Actor,
        why: &str,
    ) -> Result<Vec<SpecWritten>> {
        retry_stale!(self.set_payload_overrides_once(changes, cred, why))
    }

    async fn set_payload_overrides_once(
        &self,
        changes: &[(String, String, Option<String>)],
        cred: &Actor,
        why: &str,
    ) -> Result<Vec<SpecWritten>> {
        let guard = self.gate.take().await?;
        let set = self.stored_set().await?;
        let mut writes: Vec<SpecWrite> = Vec::new();
        for (id, payload, version) in changes {
            let labels = self
                .fleet
                .live(id)
                .map(|l| l.lock().labels.clone())
                .unwrap_or_default();
            // A node may appear more than once: build on what this change wrote before.
            let (current, revision, earlier) = match writes.iter().position(|w| &w.node_id == id) {
                Some(i) => {
                    let w = writes.remove(i);
                    (w.record, w.revision, true)
                }
                None => {
                    let (r, rev) = self.store.spec_rev(id).await?;
                    (r, rev, false)
                }
            };
            let mut overrides = current.payload_overrides.clone();
            match version {
                Some(v) => overrides.insert(payload.clone(), v.clone()),
                None => overrides.remove(payload),
            };
            if overrides == current.payload_overrides {
                if earlier {
                    writes.push(SpecWrite {
                        node_id: id.clone(),
                        record: current,
                        revision,
                        history: None,
                    });
                }
                continue;
            }
            let message = || format!("node {id}'s spec no longer merges");
            self.check(
                &set,
                &current.own,
                &current.sessions,
                &labels,
                &overrides,
                message,
            )
            .await?;
            let weight = set.weight(&labels);
            let now = generation(current.base_under(weight), weight);
            writes.push(SpecWrite {
                node_id: id.clone(),
                record: SpecRecord {
                    generation: now + 1,
                    base: Some(base_for(now + 1, weight)),
                    updated_at: Some(Utc::now()),
                    payload_overrides: overrides,
                    ..current
                },
                revision,
                history: None,
            });
        }
        self.commit(&guard, writes, None, cred, why).await
    }
}
