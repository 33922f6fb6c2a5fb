//! Desired state: node specs, fleet-wide fragments, and the effective spec of each node
//! (its own spec merged with every fragment whose selector matches its labels).
//!
//! Every change that can alter effective specs runs under the spec gate (`spec_gate.rs`),
//! recomputes the affected nodes, refuses the change as a whole if any node would get an
//! invalid or conflicting spec, writes all of it in one transaction, flushes, and only then
//! wakes the watchers. The [`Specs`] service and its [`SpecError`].

use std::sync::Arc;

use chrono::Utc;
use steward_proto::merge::{merge_specs, Source};
use steward_proto::selector::Selector;
use steward_proto::validate::{validate_labels, validate_spec, SpecLimits};
use steward_proto::{
    CredentialKind, Event, EventKind, Fragment, FragmentWrite, FragmentWritten, Health, Labels,
    NodePatch, NodeSpec, Problem, SpecWritten,
};

use crate::events::{EventLog, EACH_NODE_UP_TO};
use crate::fleet::Fleet;
use crate::payloads::{PayloadError, Payloads};
use crate::spec_gate::{SpecGate, SpecGuard, ATTEMPTS};
use crate::store::{NodeRecord, SpecRecord, SpecWrite, Store, StoreError};

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
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Store(#[from] StoreError),
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
}

/// The effective spec of a node with these labels, and the fragments merged in; it must be
/// valid and within `limits` (so fragments cannot add up past them).
pub fn effective_spec(
    own: &NodeSpec,
    labels: &Labels,
    fragments: &[Fragment],
    limits: &SpecLimits,
) -> std::result::Result<(NodeSpec, Vec<String>), Vec<Problem>> {
    let mut matching: Vec<&Fragment> = fragments
        .iter()
        .filter(|f| {
            f.selector
                .parse::<Selector>()
                .map(|s| s.matches(labels))
                .unwrap_or(false)
        })
        .collect();
    matching.sort_by(|a, b| a.name.cmp(&b.name));
    let mut parts = vec![(Source::Node, own)];
    parts.extend(
        matching
            .iter()
            .map(|f| (Source::Fragment(f.name.as_str()), &f.spec)),
    );
    let merged = merge_specs(&parts)?;
    validate_spec(&merged, limits).map_err(|e| e.0)?;
    Ok((merged, matching.iter().map(|f| f.name.clone()).collect()))
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
                Err(SpecError::Store(StoreError::Stale)) if tries < ATTEMPTS => tries += 1,
                Err(SpecError::Store(StoreError::Stale)) => {
                    break Err(StoreError::Busy {
                        what: "spec change",
                    }
                    .into())
                }
                r => break r,
            }
        }
    }};
}

impl Specs {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        events: EventLog,
        gate: SpecGate,
        payloads: Payloads,
        limits: SpecLimits,
    ) -> Self {
        Self {
            store,
            fleet,
            events,
            gate,
            payloads,
            limits,
        }
    }

    async fn live_node(&self, id: &str) -> Result<NodeRecord> {
        self.store
            .node(id)
            .await?
            .ok_or_else(|| SpecError::NoNode(id.to_string()))
    }

    /// Stores, flushes, then wakes watchers and logs one event per changed node (or, when more
    /// than [`EACH_NODE_UP_TO`] changed, one event naming the count).
    async fn commit(
        &self,
        guard: &SpecGuard,
        writes: Vec<SpecWrite>,
        fragment: Option<(&str, Option<&Fragment>)>,
        node: Option<&NodeRecord>,
        cred: CredentialKind,
        why: &str,
    ) -> Result<Vec<SpecWritten>> {
        let written = self
            .store
            .write_specs(guard.epoch, &writes, fragment, node)
            .await?;
        let mut out = Vec::with_capacity(written.len());
        for w in &written {
            if let Some(ln) = self.fleet.live(&w.node_id) {
                ln.publish(&w.record);
            }
            out.push(SpecWritten {
                node_id: w.node_id.clone(),
                generation: w.record.generation,
            });
        }
        let event = |node_id: Option<String>, generation: Option<u64>, message: String| Event {
            seq: 0,
            time: Utc::now(),
            kind: EventKind::SpecWritten,
            node_id,
            generation,
            workload: None,
            credential: cred,
            message,
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
                    let g = w.record.generation;
                    event(
                        Some(w.node_id.clone()),
                        Some(g),
                        format!("generation {g} ({why})"),
                    )
                })
                .collect()
        };
        self.events.record_many(events).await?;
        Ok(out)
    }

    /// `PUT /v1/nodes/{id}/spec`.
    pub async fn write_node_spec(
        &self,
        id: &str,
        own: NodeSpec,
        if_match: Option<u64>,
        cred: CredentialKind,
    ) -> Result<SpecWritten> {
        retry_stale!(self.write_node_spec_once(id, own.clone(), if_match, cred))
    }

    async fn write_node_spec_once(
        &self,
        id: &str,
        mut own: NodeSpec,
        if_match: Option<u64>,
        cred: CredentialKind,
    ) -> Result<SpecWritten> {
        validate_spec(&own, &self.limits).map_err(|e| SpecError::Invalid(e.0))?;
        let guard = self.gate.take().await?;
        // Under spec_lock: a version cannot be deleted between pinning and storing.
        self.payloads.pin(&mut own, "").await?;
        let node = self.live_node(id).await?;
        if node.health == Health::Decommissioned {
            return Err(SpecError::Decommissioned(id.to_string()));
        }
        let (current, revision) = self.store.spec_rev(id).await?;
        if let Some(expected) = if_match {
            if expected != current.generation {
                return Err(SpecError::PreconditionFailed {
                    current: current.generation,
                    expected,
                });
            }
        }
        let fragments = self.store.fragments().await?;
        let (mut effective, names) = effective_spec(&own, &node.labels, &fragments, &self.limits)
            .map_err(|problems| SpecError::Conflict {
            message: "the spec conflicts with the fragments that apply to this node".into(),
            problems,
        })?;
        self.payloads
            .apply_overrides(&mut effective, &current.payload_overrides)
            .await?;
        if current.generation > 0 && current.own == own && current.effective == effective {
            return Ok(SpecWritten {
                node_id: id.to_string(),
                generation: current.generation,
            });
        }
        let record = SpecRecord {
            generation: current.generation + 1,
            own,
            effective,
            fragments: names,
            updated_at: Some(Utc::now()),
            payload_overrides: current.payload_overrides,
        };
        let write = SpecWrite {
            node_id: id.to_string(),
            record,
            revision,
        };
        let mut done = self
            .commit(&guard, vec![write], None, None, cred, "node spec written")
            .await?;
        Ok(done.remove(0))
    }

    /// Recomputes the effective spec of every (non-decommissioned) node whose labels satisfy
    /// `touches`, with `fragments` as the fragment set; returns the writes for nodes whose effective
    /// spec changed, or every problem found. Nodes are selected on the labels kept in memory, so
    /// only the matching nodes' specs are read from the store. `label_override` recomputes just
    /// that node, with the labels it is about to get.
    async fn recompute(
        &self,
        fragments: &[Fragment],
        touches: impl Fn(&Labels) -> bool,
        label_override: Option<&NodeRecord>,
    ) -> Result<Vec<SpecWrite>> {
        let candidates: Vec<(String, Labels)> = match label_override {
            Some(n) => vec![(n.id.clone(), n.labels.clone())],
            None => {
                let mut out = Vec::new();
                self.fleet.for_each(|id, ln| {
                    let l = ln.lock();
                    if l.health != Health::Decommissioned && touches(&l.labels) {
                        out.push((id.to_string(), l.labels.clone()));
                    }
                });
                out
            }
        };
        let mut writes = Vec::new();
        let mut problems = Vec::new();
        let ids: Vec<String> = candidates.iter().map(|(id, _)| id.clone()).collect();
        let records = self.store.spec_revs(&ids).await?;
        for ((id, labels), (current, revision)) in candidates.into_iter().zip(records) {
            match effective_spec(&current.own, &labels, fragments, &self.limits) {
                Ok((mut effective, names)) => {
                    self.payloads
                        .apply_overrides(&mut effective, &current.payload_overrides)
                        .await?;
                    if effective != current.effective || names != current.fragments {
                        writes.push(SpecWrite {
                            node_id: id.clone(),
                            record: SpecRecord {
                                generation: current.generation + 1,
                                own: current.own,
                                effective,
                                fragments: names,
                                updated_at: Some(Utc::now()),
                                payload_overrides: current.payload_overrides,
                            },
                            revision,
                        });
                    }
                }
                Err(ps) => problems.extend(prefixed(ps, &format!("nodes[{id}]."))),
            }
        }
        if problems.is_empty() {
            Ok(writes)
        } else {
            Err(SpecError::Conflict {
                message: "the change would give some nodes a conflicting or invalid spec".into(),
                problems,
            })
        }
    }

    /// `PUT /v1/fragments/{name}`.
    pub async fn write_fragment(
        &self,
        name: &str,
        body: FragmentWrite,
        cred: CredentialKind,
    ) -> Result<FragmentWritten> {
        retry_stale!(self.write_fragment_once(name, body.clone(), cred))
    }

    async fn write_fragment_once(
        &self,
        name: &str,
        body: FragmentWrite,
        cred: CredentialKind,
    ) -> Result<FragmentWritten> {
        crate::names::check_name("name", name).map_err(|p| SpecError::Invalid(vec![p]))?;
        let mut problems = Vec::new();
        if let Err(e) = body.selector.parse::<Selector>() {
            problems.push(Problem::new("selector", e.to_string()));
        }
        if let Err(e) = validate_spec(&body.spec, &self.limits) {
            problems.extend(prefixed(e.0, "spec."));
        }
        if !problems.is_empty() {
            return Err(SpecError::Invalid(problems));
        }
        let mut body = body;
        let guard = self.gate.take().await?;
        self.payloads.pin(&mut body.spec, "spec.").await?;
        let mut fragments = self.store.fragments().await?;
        let old = fragments.iter().position(|f| f.name == name);
        let old_selector = old.map(|i| fragments[i].selector.clone());
        let frag = Fragment {
            name: name.to_string(),
            selector: body.selector,
            spec: body.spec,
            revision: old.map(|i| fragments[i].revision).unwrap_or(0) + 1,
            updated_at: Utc::now(),
        };
        match old {
            Some(i) => fragments[i] = frag.clone(),
            None => fragments.push(frag.clone()),
        }
        // Selectors were checked above; a stored one that no longer parses matches nothing.
        let new_sel: Option<Selector> = frag.selector.parse().ok();
        let old_sel: Option<Selector> = old_selector.as_deref().and_then(|s| s.parse().ok());
        let matches =
            |sel: &Option<Selector>, l: &Labels| sel.as_ref().is_some_and(|s| s.matches(l));
        let writes = self
            .recompute(
                &fragments,
                |l| matches(&new_sel, l) || matches(&old_sel, l),
                None,
            )
            .await?;
        let why = format!("fragment {name:?} revision {}", frag.revision);
        let affected = self
            .commit(&guard, writes, Some((name, Some(&frag))), None, cred, &why)
            .await?;
        self.events
            .record(
                EventKind::FragmentWritten,
                None,
                None,
                cred,
                format!(
                    "fragment {name:?} revision {} (selector {:?}) written; {} node(s) affected",
                    frag.revision,
                    frag.selector,
                    affected.len()
                ),
            )
            .await?;
        Ok(FragmentWritten {
            name: name.to_string(),
            revision: frag.revision,
            affected,
        })
    }

    /// `DELETE /v1/fragments/{name}`.
    pub async fn delete_fragment(
        &self,
        name: &str,
        cred: CredentialKind,
    ) -> Result<FragmentWritten> {
        retry_stale!(self.delete_fragment_once(name, cred))
    }

    async fn delete_fragment_once(
        &self,
        name: &str,
        cred: CredentialKind,
    ) -> Result<FragmentWritten> {
        let guard = self.gate.take().await?;
        let mut fragments = self.store.fragments().await?;
        let Some(i) = fragments.iter().position(|f| f.name == name) else {
            return Err(SpecError::NoFragment(name.to_string()));
        };
        let old = fragments.remove(i);
        let old_sel: Option<Selector> = old.selector.parse().ok();
        let writes = self
            .recompute(
                &fragments,
                |l| old_sel.as_ref().is_some_and(|s| s.matches(l)),
                None,
            )
            .await?;
        let why = format!("fragment {name:?} deleted");
        let affected = self
            .commit(&guard, writes, Some((name, None)), None, cred, &why)
            .await?;
        self.events
            .record(
                EventKind::FragmentDeleted,
                None,
                None,
                cred,
                format!(
                    "fragment {name:?} deleted; {} node(s) affected",
                    affected.len()
                ),
            )
            .await?;
        Ok(FragmentWritten {
            name: name.to_string(),
            revision: old.revision,
            affected,
        })
    }

    /// `PATCH /v1/nodes/{id}`: label merge patch; re-evaluates which fragments apply.
    pub async fn patch_node(
        &self,
        id: &str,
        patch: NodePatch,
        cred: CredentialKind,
    ) -> Result<NodeRecord> {
        retry_stale!(self.patch_node_once(id, patch.clone(), cred))
    }

    async fn patch_node_once(
        &self,
        id: &str,
        patch: NodePatch,
        cred: CredentialKind,
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
        let fragments = self.store.fragments().await?;
        let writes = self.recompute(&fragments, |_| true, Some(&node)).await?;
        self.commit(&guard, writes, None, Some(&node), cred, "labels changed")
            .await?;
        if let Some(ln) = self.fleet.live(id) {
            ln.lock().labels = node.labels.clone();
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
    /// (`(node id, payload, version)`), recomputes the effective specs, and bumps and wakes exactly
    /// the nodes whose effective spec changed, like a fragment write.
    pub async fn set_payload_overrides(
        &self,
        changes: &[(String, String, Option<String>)],
        cred: CredentialKind,
        why: &str,
    ) -> Result<Vec<SpecWritten>> {
        retry_stale!(self.set_payload_overrides_once(changes, cred, why))
    }

    async fn set_payload_overrides_once(
        &self,
        changes: &[(String, String, Option<String>)],
        cred: CredentialKind,
        why: &str,
    ) -> Result<Vec<SpecWritten>> {
        let guard = self.gate.take().await?;
        let fragments = self.store.fragments().await?;
        let mut writes = Vec::new();
        for (id, payload, version) in changes {
            let labels = self
                .fleet
                .live(id)
                .map(|l| l.lock().labels.clone())
                .unwrap_or_default();
            let (current, revision) = self.store.spec_rev(id).await?;
            let mut overrides = current.payload_overrides.clone();
            match version {
                Some(v) => overrides.insert(payload.clone(), v.clone()),
                None => overrides.remove(payload),
            };
            if overrides == current.payload_overrides {
                continue;
            }
            let (mut effective, names) =
                effective_spec(&current.own, &labels, &fragments, &self.limits).map_err(
                    |problems| SpecError::Conflict {
                        message: format!("node {id}'s spec no longer merges"),
                        problems,
                    },
                )?;
            self.payloads
                .apply_overrides(&mut effective, &overrides)
                .await?;
            let bump = u64::from(effective != current.effective || names != current.fragments);
            writes.push(SpecWrite {
                node_id: id.clone(),
                record: SpecRecord {
                    generation: current.generation + bump,
                    own: current.own,
                    effective,
                    fragments: names,
                    updated_at: Some(Utc::now()),
                    payload_overrides: overrides,
                },
                revision,
            });
        }
        self.commit(&guard, writes, None, None, cred, why).await
    }
}
