//! Desired state: node specs, fleet-wide fragments, and the effective spec of each node
//! (its own spec merged with every fragment whose selector matches its labels).
//!
//! Every change that can alter effective specs runs under `spec_lock`, recomputes the affected
//! nodes, refuses the change as a whole if any node would get an invalid or conflicting spec,
//! writes all of it in one transaction, flushes, and only then wakes the watchers.

use chrono::Utc;
use steward_proto::merge::{merge_specs, Source};
use steward_proto::selector::Selector;
use steward_proto::validate::{validate_labels, validate_spec, SpecLimits};
use steward_proto::{
    CredentialKind, Event, EventKind, Fragment, FragmentWrite, FragmentWritten, Health, Labels,
    NodePatch, NodeSpec, Problem, SpecWritten,
};

use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;
use crate::store::{NodeRecord, SpecRecord, SpecWrite, StoreError};

/// The effective spec of a node with these labels, and the fragments merged in; it must be
/// valid and within `limits` (so fragments cannot add up past them).
pub fn effective_spec(
    own: &NodeSpec,
    labels: &Labels,
    fragments: &[Fragment],
    limits: &SpecLimits,
) -> Result<(NodeSpec, Vec<String>), Vec<Problem>> {
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

/// Validates a resource name used in a URL (fragment names).
pub fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            field,
            format!("{name:?} must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ))
    }
}

/// How often a spec change is computed again when another replica's change committed first.
pub const ATTEMPTS: usize = 16;

/// Runs a `*_once` step again while it fails with [`StoreError::Stale`] (another writer
/// committed a spec change since it read the spec epoch), at most [`ATTEMPTS`] times.
macro_rules! retry_stale {
    ($e:expr) => {{
        let mut tries = 0;
        loop {
            match $e.await {
                Err(RegistryError::Store(StoreError::Stale)) if tries < ATTEMPTS => tries += 1,
                Err(RegistryError::Store(StoreError::Stale)) => {
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

/// Held while a spec change is computed and written: this process's spec lock, and the spec
/// epoch read under it (the change commits only if no other replica's change did meanwhile).
struct SpecGuard<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    epoch: crate::kv::Revision,
}

impl<'a> SpecGuard<'a> {
    async fn take(state: &'a AppState) -> ApiResult<SpecGuard<'a>> {
        let lock = state.spec_lock.lock().await;
        let epoch = state.store.spec_epoch().await?;
        Ok(SpecGuard { _lock: lock, epoch })
    }
}

async fn live_node(state: &AppState, id: &str) -> ApiResult<NodeRecord> {
    state
        .store
        .node(id)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("no node with id {id:?}")))
}

/// Stores, flushes, then wakes watchers and logs one event per changed node.
async fn commit(
    state: &AppState,
    guard: &SpecGuard<'_>,
    writes: Vec<SpecWrite>,
    fragment: Option<(&str, Option<&Fragment>)>,
    node: Option<&NodeRecord>,
    cred: CredentialKind,
    why: &str,
) -> ApiResult<Vec<SpecWritten>> {
    state
        .store
        .write_specs(guard.epoch, &writes, fragment, node)
        .await?;
    let mut events = Vec::with_capacity(writes.len());
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        if let Some(ln) = state.live(&w.node_id) {
            ln.raise_generation(w.record.generation);
        }
        events.push(Event {
            seq: 0,
            time: Utc::now(),
            kind: EventKind::SpecWritten,
            node_id: Some(w.node_id.clone()),
            generation: Some(w.record.generation),
            credential: cred,
            message: format!("generation {} ({why})", w.record.generation),
        });
        out.push(SpecWritten {
            node_id: w.node_id,
            generation: w.record.generation,
        });
    }
    state.events_many(events).await?;
    Ok(out)
}

/// `PUT /v1/nodes/{id}/spec`.
pub async fn write_node_spec(
    state: &AppState,
    id: &str,
    own: NodeSpec,
    if_match: Option<u64>,
    cred: CredentialKind,
) -> ApiResult<SpecWritten> {
    retry_stale!(write_node_spec_once(state, id, own.clone(), if_match, cred))
}

async fn write_node_spec_once(
    state: &AppState,
    id: &str,
    mut own: NodeSpec,
    if_match: Option<u64>,
    cred: CredentialKind,
) -> ApiResult<SpecWritten> {
    validate_spec(&own, &state.settings.limits).map_err(|e| RegistryError::Invalid(e.0))?;
    let guard = SpecGuard::take(state).await?;
    // Under spec_lock: a version cannot be deleted between pinning and storing.
    crate::payloads::pin(state, &mut own, "").await?;
    let node = live_node(state, id).await?;
    if node.health == Health::Decommissioned {
        return Err(RegistryError::Conflict {
            message: format!("node {id:?} is decommissioned"),
            problems: vec![],
        });
    }
    let current = state.store.spec(id).await?.unwrap_or_default();
    if let Some(expected) = if_match {
        if expected != current.generation {
            return Err(RegistryError::PreconditionFailed {
                current: current.generation,
                expected,
            });
        }
    }
    let fragments = state.store.fragments().await?;
    let (mut effective, names) =
        effective_spec(&own, &node.labels, &fragments, &state.settings.limits).map_err(
            |problems| RegistryError::Conflict {
                message: "the spec conflicts with the fragments that apply to this node".into(),
                problems,
            },
        )?;
    crate::payloads::apply_overrides(state, &mut effective, &current.payload_overrides).await?;
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
    };
    let mut done = commit(
        state,
        &guard,
        vec![write],
        None,
        None,
        cred,
        "node spec written",
    )
    .await?;
    Ok(done.remove(0))
}

/// Recomputes the effective spec of every (non-decommissioned) node whose labels satisfy
/// `touches`, with `fragments` as the fragment set; returns the writes for nodes whose effective
/// spec changed, or every problem found. Nodes are selected on the labels kept in memory, so
/// only the matching nodes' specs are read from the store. `label_override` recomputes just
/// that node, with the labels it is about to get.
async fn recompute(
    state: &AppState,
    fragments: &[Fragment],
    touches: impl Fn(&Labels) -> bool,
    label_override: Option<&NodeRecord>,
) -> ApiResult<Vec<SpecWrite>> {
    let candidates: Vec<(String, Labels)> = match label_override {
        Some(n) => vec![(n.id.clone(), n.labels.clone())],
        None => state
            .all_live()
            .into_iter()
            .filter_map(|(id, ln)| {
                let l = ln.lock();
                (l.health != Health::Decommissioned && touches(&l.labels))
                    .then(|| (id, l.labels.clone()))
            })
            .collect(),
    };
    let mut writes = Vec::new();
    let mut problems = Vec::new();
    for (id, labels) in candidates {
        let current = state.store.spec(&id).await?.unwrap_or_default();
        match effective_spec(&current.own, &labels, fragments, &state.settings.limits) {
            Ok((mut effective, names)) => {
                crate::payloads::apply_overrides(state, &mut effective, &current.payload_overrides)
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
                    });
                }
            }
            Err(ps) => problems.extend(prefixed(ps, &format!("nodes[{id}]."))),
        }
    }
    if problems.is_empty() {
        Ok(writes)
    } else {
        Err(RegistryError::Conflict {
            message: "the change would give some nodes a conflicting or invalid spec".into(),
            problems,
        })
    }
}

/// `PUT /v1/fragments/{name}`.
pub async fn write_fragment(
    state: &AppState,
    name: &str,
    body: FragmentWrite,
    cred: CredentialKind,
) -> ApiResult<FragmentWritten> {
    retry_stale!(write_fragment_once(state, name, body.clone(), cred))
}

async fn write_fragment_once(
    state: &AppState,
    name: &str,
    body: FragmentWrite,
    cred: CredentialKind,
) -> ApiResult<FragmentWritten> {
    check_name("name", name)?;
    let mut problems = Vec::new();
    if let Err(e) = body.selector.parse::<Selector>() {
        problems.push(Problem::new("selector", e.to_string()));
    }
    if let Err(e) = validate_spec(&body.spec, &state.settings.limits) {
        problems.extend(prefixed(e.0, "spec."));
    }
    if !problems.is_empty() {
        return Err(RegistryError::Invalid(problems));
    }
    let mut body = body;
    let guard = SpecGuard::take(state).await?;
    crate::payloads::pin(state, &mut body.spec, "spec.").await?;
    let mut fragments = state.store.fragments().await?;
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
    let matches = |sel: &Option<Selector>, l: &Labels| sel.as_ref().is_some_and(|s| s.matches(l));
    let writes = recompute(
        state,
        &fragments,
        |l| matches(&new_sel, l) || matches(&old_sel, l),
        None,
    )
    .await?;
    let why = format!("fragment {name:?} revision {}", frag.revision);
    let affected = commit(
        state,
        &guard,
        writes,
        Some((name, Some(&frag))),
        None,
        cred,
        &why,
    )
    .await?;
    state
        .event(
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
    state: &AppState,
    name: &str,
    cred: CredentialKind,
) -> ApiResult<FragmentWritten> {
    retry_stale!(delete_fragment_once(state, name, cred))
}

async fn delete_fragment_once(
    state: &AppState,
    name: &str,
    cred: CredentialKind,
) -> ApiResult<FragmentWritten> {
    let guard = SpecGuard::take(state).await?;
    let mut fragments = state.store.fragments().await?;
    let Some(i) = fragments.iter().position(|f| f.name == name) else {
        return Err(RegistryError::NotFound(format!(
            "no fragment named {name:?}"
        )));
    };
    let old = fragments.remove(i);
    let old_sel: Option<Selector> = old.selector.parse().ok();
    let writes = recompute(
        state,
        &fragments,
        |l| old_sel.as_ref().is_some_and(|s| s.matches(l)),
        None,
    )
    .await?;
    let why = format!("fragment {name:?} deleted");
    let affected = commit(state, &guard, writes, Some((name, None)), None, cred, &why).await?;
    state
        .event(
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
    state: &AppState,
    id: &str,
    patch: NodePatch,
    cred: CredentialKind,
) -> ApiResult<NodeRecord> {
    retry_stale!(patch_node_once(state, id, patch.clone(), cred))
}

async fn patch_node_once(
    state: &AppState,
    id: &str,
    patch: NodePatch,
    cred: CredentialKind,
) -> ApiResult<NodeRecord> {
    let guard = SpecGuard::take(state).await?;
    let mut node = live_node(state, id).await?;
    if node.health == Health::Decommissioned {
        return Err(RegistryError::Conflict {
            message: format!("node {id:?} is decommissioned"),
            problems: vec![],
        });
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
        return Err(RegistryError::Invalid(problems));
    }
    if node.labels == before {
        return Ok(node);
    }
    let fragments = state.store.fragments().await?;
    let writes = recompute(state, &fragments, |_| true, Some(&node)).await?;
    commit(
        state,
        &guard,
        writes,
        None,
        Some(&node),
        cred,
        "labels changed",
    )
    .await?;
    if let Some(ln) = state.live(id) {
        ln.lock().labels = node.labels.clone();
    }
    let fmt = |l: &Labels| {
        l.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    state
        .event(
            EventKind::LabelsChanged,
            Some(id),
            Some(state.generation(id)),
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
    state: &AppState,
    changes: &[(String, String, Option<String>)],
    cred: CredentialKind,
    why: &str,
) -> ApiResult<Vec<SpecWritten>> {
    retry_stale!(set_payload_overrides_once(state, changes, cred, why))
}

async fn set_payload_overrides_once(
    state: &AppState,
    changes: &[(String, String, Option<String>)],
    cred: CredentialKind,
    why: &str,
) -> ApiResult<Vec<SpecWritten>> {
    let guard = SpecGuard::take(state).await?;
    let fragments = state.store.fragments().await?;
    let mut writes = Vec::new();
    for (id, payload, version) in changes {
        let labels = state
            .live(id)
            .map(|l| l.lock().labels.clone())
            .unwrap_or_default();
        let current = state.store.spec(id).await?.unwrap_or_default();
        let mut overrides = current.payload_overrides.clone();
        match version {
            Some(v) => overrides.insert(payload.clone(), v.clone()),
            None => overrides.remove(payload),
        };
        if overrides == current.payload_overrides {
            continue;
        }
        let (mut effective, names) =
            effective_spec(&current.own, &labels, &fragments, &state.settings.limits).map_err(
                |problems| RegistryError::Conflict {
                    message: format!("node {id}'s spec no longer merges"),
                    problems,
                },
            )?;
        crate::payloads::apply_overrides(state, &mut effective, &overrides).await?;
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
        });
    }
    commit(state, &guard, writes, None, None, cred, why).await
}
