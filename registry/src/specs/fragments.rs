//! Fragment writes and deletes: checked against every node they can change, stored as one
//! record (plus the ghosts, `fragment_set.rs`) however many nodes they match, then given to the fleet
//! view, which raises and wakes the nodes whose generation moved.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use steward_proto::selector::Selector;
use steward_proto::validate::validate_spec;
use steward_proto::{
    CredentialKind, EventKind, Fragment, FragmentWrite, FragmentWritten, Health, Labels, Problem,
    SpecWritten,
};

use super::{prefixed, Result, SpecError, Specs};
use crate::fragment_set::FragmentSet;
use crate::spec_gate::SpecGuard;

/// Up to this many nodes a fragment change is checked node by node (reading each spec
/// record); above it, the spec records are read in one pass.
const ONE_BY_ONE_UP_TO: usize = 16;

impl Specs {
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
        let set = self.stored_set().await?;
        let old = set.get(name).cloned();
        if let Some(old) = old
            .as_ref()
            .filter(|o| o.selector == body.selector && o.spec == body.spec)
        {
            // The same fragment again: nothing changes, no node moves.
            return Ok(FragmentWritten {
                name: name.to_string(),
                revision: old.revision,
                affected: Vec::new(),
            });
        }
        let frag = Fragment {
            name: name.to_string(),
            selector: body.selector,
            spec: body.spec,
            revision: old.as_ref().map_or(0, |o| o.revision) + 1,
            updated_at: Utc::now(),
        };
        let next = set.with(frag.clone());
        let selectors = [
            Some(frag.selector.as_str()),
            old.as_ref().map(|o| o.selector.as_str()),
        ];
        self.check_nodes(&next, &selectors).await?;
        let affected = self
            .store_set(&guard, name, Some(&frag), &set, next)
            .await?;
        let why = format!("fragment {name:?} revision {}", frag.revision);
        self.fragment_events(
            &affected,
            cred,
            &why,
            EventKind::FragmentWritten,
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
        let set = self.stored_set().await?;
        let Some(old) = set.get(name).cloned() else {
            return Err(SpecError::NoFragment(name.to_string()));
        };
        let next = set.deleted(name);
        self.check_nodes(&next, &[Some(old.selector.as_str())])
            .await?;
        let affected = self.store_set(&guard, name, None, &set, next).await?;
        let why = format!("fragment {name:?} deleted");
        let message = format!(
            "fragment {name:?} deleted; {} node(s) affected",
            affected.len()
        );
        self.fragment_events(&affected, cred, &why, EventKind::FragmentDeleted, message)
            .await?;
        Ok(FragmentWritten {
            name: name.to_string(),
            revision: old.revision,
            affected,
        })
    }

    /// Stores the fragment change (`prev` -> `next`), gives the fleet view the new set and
    /// returns the nodes whose generation it moved, by id.
    async fn store_set(
        &self,
        guard: &SpecGuard,
        name: &str,
        fragment: Option<&Fragment>,
        prev: &FragmentSet,
        mut next: FragmentSet,
    ) -> Result<Vec<SpecWritten>> {
        next.version = self
            .store
            .write_fragment(guard.epoch, name, fragment, &next.ghosts())
            .await?;
        let moved = self.fleet.moved(prev, &next);
        self.fleet.set_fragments(Arc::new(next));
        Ok(moved
            .into_iter()
            .map(|(node_id, generation)| SpecWritten {
                node_id,
                generation,
            })
            .collect())
    }

    /// The events of a fragment change: the nodes' `spec-written` events (one naming the count
    /// when many), then the fragment's own.
    async fn fragment_events(
        &self,
        affected: &[SpecWritten],
        cred: CredentialKind,
        why: &str,
        kind: EventKind,
        message: String,
    ) -> Result<()> {
        self.spec_events(affected, cred, why).await?;
        self.events.record(kind, None, None, cred, message).await?;
        Ok(())
    }

    /// Checks that every (not decommissioned) node whose labels match one of `selectors` gets a
    /// valid effective spec under `next`. Nodes are picked on the labels in memory; nodes with
    /// the same own spec, overrides and fragments are merged once.
    async fn check_nodes(&self, next: &FragmentSet, selectors: &[Option<&str>]) -> Result<()> {
        let parsed: Vec<Selector> = selectors
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect();
        let mut nodes: Vec<(String, Labels)> = Vec::new();
        self.fleet.for_each(|id, ln| {
            let l = ln.lock();
            if l.health != Health::Decommissioned && parsed.iter().any(|s| s.matches(&l.labels)) {
                nodes.push((id.to_string(), l.labels.clone()));
            }
        });
        let records = if nodes.len() <= ONE_BY_ONE_UP_TO {
            let mut out = Vec::with_capacity(nodes.len());
            for (id, _) in &nodes {
                out.push(self.store.spec(id).await?.unwrap_or_default());
            }
            out
        } else {
            let ids: Vec<String> = nodes.iter().map(|(id, _)| id.clone()).collect();
            self.store
                .spec_revs(&ids)
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        };
        let mut seen: HashMap<(Vec<u8>, Vec<String>), ()> = HashMap::new();
        let mut problems = Vec::new();
        for ((id, labels), rec) in nodes.iter().zip(records) {
            let names: Vec<String> = next.matching(labels).map(|f| f.name.clone()).collect();
            let key = (
                serde_json::to_vec(&(&rec.own, &rec.payload_overrides)).unwrap_or_default(),
                names,
            );
            if seen.insert(key, ()).is_some() {
                continue;
            }
            let checked = self
                .check(next, &rec.own, labels, &rec.payload_overrides, String::new)
                .await;
            match checked {
                Ok(()) => {}
                Err(SpecError::Conflict { problems: ps, .. }) => {
                    problems.extend(prefixed(ps, &format!("nodes[{id}].")));
                }
                Err(e) => return Err(e),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Conflict {
                message: "the change would give some nodes a conflicting or invalid spec".into(),
                problems,
            })
        }
    }
}
