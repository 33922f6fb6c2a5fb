//! A node's spec document, computed when read: its stored own spec and payload overrides merged
//! with the fragments that match its labels. Merges are cached per fragment-set version, stored
//! record and matching fragments, so the thousands of long-polls one fragment write wakes share
//! a handful of merges instead of each doing its own.

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
/// spec with the names of the fragments merged in (or why they do not merge).
struct Merged {
    record: Vec<u8>,
    own: NodeSpec,
    result: std::result::Result<(NodeSpec, Vec<String>), Vec<Problem>>,
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
        let ln = self
            .fleet
            .live(id)
            .ok_or_else(|| SpecError::NoNode(id.to_string()))?;
        let (base, labels) = {
            let l = ln.lock();
            (l.base, l.labels.clone())
        };
        drop(ln);
        let set = self.fleet.fragments();
        let raw = self.store.spec_raw(id).await?;
        let record = raw
            .as_ref()
            .map(|kv| kv.value.as_slice())
            .unwrap_or_default();
        let mut h = DefaultHasher::new();
        record.hash(&mut h);
        let key = (h.finish(), set.mask(&labels));
        let merged = match self.docs.get(set.version, &key, record) {
            Some(m) => m,
            None => {
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
                let m = Arc::new(Merged {
                    record: record.to_vec(),
                    own: rec.own,
                    result,
                });
                self.docs.put(set.version, key, m.clone());
                m
            }
        };
        let (effective, names) = merged
            .result
            .clone()
            .map_err(|problems| SpecError::Conflict {
                message: format!(
                    "node {id}'s spec does not merge with the fragments that match its labels"
                ),
                problems,
            })?;
        Ok(SpecDocument {
            node_id: id.to_string(),
            generation: generation(base, set.weight(&labels)),
            spec: effective,
            own: merged.own.clone(),
            fragments: names,
        })
    }
}
