//! A node's spec document, computed when read: its stored own spec and payload overrides merged
//! with the fragments that match its labels. Merges are cached per fragment-set version, stored
//! record and matching fragments, with their JSON, so the thousands of long-polls one fragment
//! write wakes share a handful of merges and serialisations instead of each doing its own; a
//! node without a spec record (the fleet view knows) costs no store read at all.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use steward_proto::{NodeSpec, Problem, SpecDocument};

use super::{Result, SpecError, Specs};
use crate::fragment_set::generation;
use crate::store::Store;

/// Most merges kept (for one fragment-set version); the cache is emptied when full.
const ENTRIES: usize = 4096;

/// One merge: the record it was computed from (as stored), its own spec, and the effective
/// spec with the names of the fragments merged in (or why they do not merge); `tail`, the
/// document's JSON after its node id and generation (`"spec":…,"own":…,"fragments":[…]}`).
struct Merged {
    record: Vec<u8>,
    own: NodeSpec,
    result: std::result::Result<(NodeSpec, Vec<String>), Vec<Problem>>,
    tail: String,
}

/// `"spec":…,"own":…,"fragments":…}`: [`SpecDocument`]'s JSON after `generation`, in its
/// field order.
fn tail(own: &NodeSpec, effective: &NodeSpec, names: &[String]) -> serde_json::Result<String> {
    Ok(format!(
        "\"spec\":{},\"own\":{},\"fragments\":{}}}",
        serde_json::to_string(effective)?,
        serde_json::to_string(own)?,
        serde_json::to_string(names)?
    ))
}

/// A merge's key: the hash of the stored record, and the matching fragments.
type Key = (u64, Vec<u16>);

/// Merges by [`Key`], for one fragment-set version.
#[derive(Default)]
pub(super) struct DocCache(Mutex<(u64, HashMap<Key, Arc<Merged>>)>);

impl DocCache {
    fn get(&self, version: u64, key: &Key, record: &[u8]) -> Option<Arc<Merged>> {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if held.0 != version {
            return None;
        }
        held.1.get(key).filter(|m| m.record == record).cloned()
    }

    fn put(&self, version: u64, key: Key, merged: Arc<Merged>) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if held.0 != version || held.1.len() >= ENTRIES {
            held.1.clear();
            held.0 = version;
        }
        held.1.insert(key, merged);
    }
}

impl Specs {
    /// A node's document: its generation, own spec, the fragments that match its labels and
    /// the effective spec merged from them. Computed from this process's view (the node's base
    /// and labels, then the fragment set) and then its stored own spec, so the content is never
    /// older than the generation it is served under.
    pub async fn document(&self, id: &str) -> Result<SpecDocument> {
        let (generation, merged) = self.merged(id).await?;
        let (spec, fragments) = Self::merge_of(id, &merged)?.clone();
        Ok(SpecDocument {
            node_id: id.to_string(),
            generation,
            spec,
            own: merged.own.clone(),
            fragments,
        })
    }

    /// [`Specs::document`] as its JSON, and its generation: the spec parts serialised once
    /// per merge, not once per read.
    pub async fn document_json(&self, id: &str) -> Result<(u64, String)> {
        let (generation, merged) = self.merged(id).await?;
        Self::merge_of(id, &merged)?;
        let node_id = serde_json::to_string(id).map_err(SpecError::Encode)?;
        let head = format!("{{\"node_id\":{node_id},\"generation\":{generation},");
        Ok((generation, head + &merged.tail))
    }

    fn merge_of<'a>(id: &str, merged: &'a Merged) -> Result<&'a (NodeSpec, Vec<String>)> {
        merged
            .result
            .as_ref()
            .map_err(|problems| SpecError::Conflict {
                message: format!(
                    "node {id}'s spec does not merge with the fragments that match its labels"
                ),
                problems: problems.clone(),
            })
    }

    /// The node's generation and merge (see [`Specs::document`]).
    async fn merged(&self, id: &str) -> Result<(u64, Arc<Merged>)> {
        let ln = self
            .fleet
            .live(id)
            .ok_or_else(|| SpecError::NoNode(id.to_string()))?;
        let (base, labels, has_spec) = {
            let l = ln.lock();
            (l.base, l.labels.clone(), l.has_spec)
        };
        drop(ln);
        let set = self.fleet.fragments();
        let raw = match has_spec {
            true => self.store.spec_raw(id).await?,
            false => None,
        };
        let record = raw
            .as_ref()
            .map(|kv| kv.value.as_slice())
            .unwrap_or_default();
        let mut h = DefaultHasher::new();
        record.hash(&mut h);
        let key = (h.finish(), set.mask(&labels));
        let generation = generation(base, set.weight(&labels));
        if let Some(m) = self.docs.get(set.version, &key, record) {
            return Ok((generation, m));
        }
        let rec = match &raw {
            Some(kv) => Store::decode_spec(kv)?,
            None => Default::default(),
        };
        let mut result = set.effective(&rec.own, &rec.sessions, &labels, &self.limits);
        if let Ok((effective, _)) = &mut result {
            self.payloads
                .apply_overrides(effective, &rec.payload_overrides)
                .await?;
        }
        let tail = match &result {
            Ok((effective, names)) => {
                tail(&rec.own, effective, names).map_err(SpecError::Encode)?
            }
            Err(_) => String::new(),
        };
        let m = Arc::new(Merged {
            record: record.to_vec(),
            own: rec.own,
            result,
            tail,
        });
        self.docs.put(set.version, key, m.clone());
        Ok((generation, m))
    }
}
