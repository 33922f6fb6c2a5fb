//! Fragment writes and deletes: checked against every node they can change, stored as one
//! record (plus the ghosts, `fragment_set.rs`) however many nodes they match, then given to the fleet
//! view, which raises and wakes the nodes whose generation moved.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::value::RawValue;

use chrono::Utc;
use steward_proto::selector::Selector;
use steward_proto::validate::validate_spec;
use steward_proto::{
    Actor, EventKind, Fragment, FragmentWrite, FragmentWritten, Health, Problem, SpecWritten,
};

use super::{prefixed, Result, SpecError, Specs};
use crate::fleet::labels::Memo;
use crate::fleet::Wake;
use crate::fragment_set::{base_for, generation, FragmentSet};
use crate::kv::KeyValue;
use crate::spec_gate::SpecGuard;
use crate::store::{HistoryOf, HistoryWrite, StoreError};

/// Up to this many nodes a fragment change is checked node by node (reading each spec
/// record); above it, the spec records are read in one pass.
const ONE_BY_ONE_UP_TO: usize = 16;

impl Specs {
    /// `PUT /v1/fragments/{name}`: its answer, and the wake-up of the nodes it moved (to drop
    /// once the answer is on its way).
    pub async fn write_fragment(
        &self,
        name: &str,
        body: FragmentWrite,
        cred: &Actor,
    ) -> Result<(FragmentWritten, Wake)> {
        retry_stale!(self.write_fragment_once(name, body.clone(), cred, "written"))
    }

    /// Writes a fragment; `note` goes to its history (`written`, `reverted to …`).
    pub(super) async fn write_fragment_once(
        &self,
        name: &str,
        body: FragmentWrite,
        cred: &Actor,
        note: &str,
    ) -> Result<(FragmentWritten, Wake)> {
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
            let same = FragmentWritten {
                name: name.to_string(),
                revision: old.revision,
                affected: Vec::new(),
                affected_count: Some(0),
            };
            return Ok((same, Wake::default()));
        }
        let frag = Fragment {
            name: name.to_string(),
            selector: body.selector,
            spec: body.spec,
            revision: old.as_ref().map_or(0, |o| o.revision) + 1,
            updated_at: Utc::now(),
        };
        let next = Arc::new(set.with(frag.clone()));
        let selectors = [
            Some(frag.selector.as_str()),
            old.as_ref().map(|o| o.selector.as_str()),
        ];
        let affected = self.check_nodes(&set, &next, &selectors).await?;
        let what = format!(
            "fragment {name:?} revision {} (selector {:?}) written",
            frag.revision, frag.selector
        );
        let history = self
            .version(
                HistoryOf::Fragment,
                name,
                frag.revision,
                cred,
                note,
                Some(&frag.spec),
                Some(&frag.selector),
            )
            .await?;
        let change = Change {
            name,
            fragment: Some(&frag),
            history,
            kind: EventKind::FragmentWritten,
            why: format!("fragment {name:?} revision {}", frag.revision),
            what,
        };
        self.store_set(&guard, change, affected, next, cred).await
    }

    /// `DELETE /v1/fragments/{name}`, like [`Specs::write_fragment`].
    pub async fn delete_fragment(
        &self,
        name: &str,
        cred: &Actor,
    ) -> Result<(FragmentWritten, Wake)> {
        retry_stale!(self.delete_fragment_once(name, cred))
    }

    async fn delete_fragment_once(
        &self,
        name: &str,
        cred: &Actor,
    ) -> Result<(FragmentWritten, Wake)> {
        let guard = self.gate.take().await?;
        let set = self.stored_set().await?;
        let Some(old) = set.get(name).cloned() else {
            return Err(SpecError::NoFragment(name.to_string()));
        };
        let next = Arc::new(set.deleted(name));
        let affected = self
            .check_nodes(&set, &next, &[Some(old.selector.as_str())])
            .await?;
        let history = self
            .version(
                HistoryOf::Fragment,
                name,
                old.revision,
                cred,
                "deleted",
                None,
                None,
            )
            .await?;
        let change = Change {
            name,
            fragment: None,
            history,
            kind: EventKind::FragmentDeleted,
            why: format!("fragment {name:?} deleted"),
            what: format!("fragment {name:?} deleted"),
        };
        let (mut done, wake) = self.store_set(&guard, change, affected, next, cred).await?;
        done.revision = old.revision;
        Ok((done, wake))
    }

    /// Takes a fragment change seen in the store watch (made here or by another replica): waits
    /// until no spec change of this process is in progress (a local fragment write gives the
    /// fleet view its set itself, after its events and before its answer, and wakes the watchers
    /// as its answer goes out; its own watch event, of the same set version, changes nothing),
    /// then reads the set from the store and gives it to the fleet view (a newer one only).
    pub async fn follow_fragments(&self) -> Result<()> {
        let _guard = self.gate.take().await?;
        let next = self.stored_set().await?;
        let fleet = self.fleet.clone();
        tokio::task::spawn_blocking(move || fleet.set_fragments(Arc::new(next)))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Ok(())
    }

    /// Stores the fragment change (to `next`; `affected`: the nodes it moves), logs its events,
    /// then gives the fleet view the new set and answers, with the wake-up of those nodes for
    /// the caller to drop once its answer is on its way (so that the answer is not queued behind
    /// the woken long-polls).
    async fn store_set(
        &self,
        guard: &SpecGuard,
        change: Change<'_>,
        affected: Vec<SpecWritten>,
        next: Arc<FragmentSet>,
        cred: &Actor,
    ) -> Result<(FragmentWritten, Wake)> {
        let mut next = Arc::try_unwrap(next).unwrap_or_else(|shared| (*shared).clone());
        next.version = self
            .store
            .write_fragment(
                guard.epoch,
                change.name,
                change.fragment,
                &next.ghosts(),
                &change.history,
            )
            .await?;
        let next = Arc::new(next);
        self.spec_events(&affected, cred, &change.why).await?;
        let message = format!("{}; {} node(s) affected", change.what, affected.len());
        self.events
            .record(change.kind, None, None, cred, message)
            .await?;
        let wake = self.fleet.take_fragments(next);
        let count = affected.len() as u64;
        let mut listed = affected;
        listed.truncate(FragmentWritten::LISTED);
        let written = FragmentWritten {
            name: change.name.to_string(),
            revision: change.fragment.map_or(0, |f| f.revision),
            affected: listed,
            affected_count: Some(count),
        };
        Ok((written, wake))
    }

    /// Checks that every (not decommissioned) node whose labels match one of `selectors` gets a
    /// valid effective spec under `next`, and returns those whose generation moves from `prev`
    /// to `next`, with their new generation (computed from their stored base), by id (the first
    /// [`FragmentWritten::LISTED`]; the rest in no order). Nodes are picked on the labels in
    /// memory (off the async workers, once per distinct label set); their spec records are read (one
    /// by one for a few, else a page at a time) and grouped by own spec, overrides and matching
    /// fragments: each group is merged once.
    async fn check_nodes(
        &self,
        prev: &FragmentSet,
        next: &Arc<FragmentSet>,
        selectors: &[Option<&str>],
    ) -> Result<Vec<SpecWritten>> {
        let parsed: Vec<Selector> = selectors
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect();
        let (fleet, from, to) = (self.fleet.clone(), prev.clone(), next.clone());
        let picked = tokio::task::spawn_blocking(move || {
            let mut out: HashMap<String, Arc<Picked>> = HashMap::new();
            // Selectors and weights depend on labels alone: computed once per distinct set.
            let mut memo = Memo::default();
            fleet.for_each(|id, ln| {
                let l = ln.lock();
                if l.health == Health::Decommissioned {
                    return;
                }
                let pick = memo.get(&l.labels, |labels| {
                    parsed.iter().any(|s| s.matches(labels)).then(|| {
                        Arc::new(Picked {
                            mask: to.mask(labels),
                            from: from.weight(labels),
                            to: to.weight(labels),
                        })
                    })
                });
                if let Some(p) = pick {
                    out.insert(id.to_string(), p.clone());
                }
            });
            out
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let mut groups = Groups::default();
        let mut bases: HashMap<&str, i64> = HashMap::new();
        if picked.len() <= ONE_BY_ONE_UP_TO {
            for (id, p) in &picked {
                if let Some(kv) = self.store.spec_raw(id).await? {
                    bases.insert(id, groups.add(id, p, Some(&kv))?);
                }
            }
        } else {
            self.store
                .scan_raw("specs/", |id, kv| {
                    if let Some((id, p)) = picked.get_key_value(id) {
                        bases.insert(id, groups.add(id, p, Some(kv))?);
                    }
                    Ok(())
                })
                .await?;
        }
        // Nodes without a spec record (base 0): one group per set of matching fragments.
        for (id, p) in &picked {
            if !bases.contains_key(id.as_str()) {
                groups.add(id, p, None)?;
            }
        }
        let mut problems = Vec::new();
        for g in groups.0.into_values().flatten() {
            let rec = match &g.record {
                Some(kv) => crate::store::Store::decode_spec(kv)?,
                None => Default::default(),
            };
            let labels = match self.fleet.live(&g.id) {
                Some(ln) => ln.lock().labels.clone(),
                None => continue, // removed meanwhile
            };
            let checked = self
                .check(
                    next,
                    &rec.own,
                    &rec.sessions,
                    &labels,
                    &rec.payload_overrides,
                    String::new,
                )
                .await;
            match checked {
                Ok(()) => {}
                Err(SpecError::Conflict { problems: ps, .. }) => {
                    problems.extend(prefixed(ps, &format!("nodes[{}].", g.id)));
                }
                Err(e) => return Err(e),
            }
        }
        if !problems.is_empty() {
            return Err(SpecError::Conflict {
                message: "the change would give some nodes a conflicting or invalid spec".into(),
                problems,
            });
        }
        let mut moved: Vec<SpecWritten> = picked
            .iter()
            .filter(|(_, p)| p.from != p.to)
            .map(|(id, p)| SpecWritten {
                node_id: id.clone(),
                generation: generation(bases.get(id.as_str()).copied().unwrap_or(0), p.to),
            })
            .collect();
        // Sorted by id as far as an answer lists them; the rest are only counted.
        let by_id = |a: &SpecWritten, b: &SpecWritten| a.node_id.cmp(&b.node_id);
        if moved.len() > FragmentWritten::LISTED {
            moved.select_nth_unstable_by(FragmentWritten::LISTED, by_id);
            moved[..FragmentWritten::LISTED].sort_unstable_by(by_id);
        } else {
            moved.sort_unstable_by(by_id);
        }
        Ok(moved)
    }
}

/// A fragment change to store: the fragment (`None`: deleted), its event's kind, why nodes got
/// a new generation, and what happened (for the events).
struct Change<'a> {
    name: &'a str,
    fragment: Option<&'a Fragment>,
    /// The version it adds to the fragment's history.
    history: HistoryWrite,
    kind: EventKind,
    why: String,
    what: String,
}

/// A node a fragment change may move: the fragments matching it under the new set, and the
/// weight of what matches it under the old and the new set.
struct Picked {
    mask: Vec<u16>,
    from: u64,
    to: u64,
}

/// The parts of a stored spec record the effective spec depends on (undecoded), and its base.
#[derive(serde::Deserialize)]
struct Parts<'a> {
    #[serde(borrow)]
    own: &'a RawValue,
    #[serde(borrow, default)]
    payload_overrides: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sessions: Option<&'a RawValue>,
    generation: u64,
    #[serde(default)]
    base: Option<i64>,
}

/// One group of nodes with the same own spec, overrides, session pieces and matching
/// fragments: the first node seen stands for it (its labels are read when it is checked).
struct Group {
    own: String,
    overrides: String,
    sessions: String,
    mask: Vec<u16>,
    id: String,
    record: Option<KeyValue>,
}

/// Groups by a hash of their key (exact keys compared within a bucket).
#[derive(Default)]
struct Groups(HashMap<u64, Vec<Group>>);

impl Groups {
    /// Adds a node (with its stored record, if any); returns its stored base.
    fn add(
        &mut self,
        id: &str,
        picked: &Picked,
        kv: Option<&KeyValue>,
    ) -> std::result::Result<i64, StoreError> {
        let mask = picked.mask.as_slice();
        let (own, overrides, sessions, base) = match kv {
            Some(kv) => {
                let p: Parts =
                    serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt {
                        key: kv.key.clone(),
                        source,
                    })?;
                let base = p
                    .base
                    .unwrap_or_else(|| base_for(p.generation, picked.from));
                (
                    p.own.get(),
                    p.payload_overrides.map_or("", |o| o.get()),
                    p.sessions.map_or("", |o| o.get()),
                    base,
                )
            }
            None => ("", "", "", 0),
        };
        let mut h = DefaultHasher::new();
        (own, overrides, sessions, mask).hash(&mut h);
        let bucket = self.0.entry(h.finish()).or_default();
        if bucket.iter().any(|g| {
            g.own == own && g.overrides == overrides && g.sessions == sessions && g.mask == mask
        }) {
            return Ok(base);
        }
        bucket.push(Group {
            own: own.to_string(),
            overrides: overrides.to_string(),
            sessions: sessions.to_string(),
            mask: mask.to_vec(),
            id: id.to_string(),
            record: kv.cloned(),
        });
        Ok(base)
    }
}
