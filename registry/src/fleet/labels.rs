//! Label sets shared between nodes: the fleet view holds one copy of each distinct set
//! ([`Interner`]), so a pass over the whole fleet can compute what depends on labels alone
//! (selector matches, fragment weights) once per distinct set ([`Memo`]) instead of once per
//! node. A fleet of 100,000 nodes typically has a few hundred distinct label sets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use steward_proto::Labels;

/// A label set as the fleet view holds it: immutable and shared.
pub type Shared = Arc<Labels>;

/// The distinct label sets in use. Sets no node holds any more are dropped when the table has
/// doubled since the last sweep, so it stays within twice what is in use.
#[derive(Debug, Default)]
pub struct Interner {
    sets: HashSet<Shared>,
    swept_at: usize,
}

impl Interner {
    /// The shared copy of `labels` (made now if no node holds these labels).
    pub fn intern(&mut self, labels: &Labels) -> Shared {
        if let Some(held) = self.sets.get(labels) {
            return held.clone();
        }
        if self.sets.len() >= 2 * self.swept_at.max(64) {
            // Held only here: no node uses them.
            self.sets.retain(|s| Arc::strong_count(s) > 1);
            self.swept_at = self.sets.len();
        }
        let shared = Arc::new(labels.clone());
        self.sets.insert(shared.clone());
        shared
    }

    /// How many distinct sets are held (including unused ones not yet swept).
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// Values computed from a label set, once per distinct set (by identity: the memo holds each
/// set it has seen, so an address is never reused while it is a key). For one pass over the
/// fleet; a set not interned (an equal copy) is computed again, never wrongly shared.
pub struct Memo<V> {
    seen: HashMap<*const Labels, (Shared, V)>,
}

impl<V> Default for Memo<V> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
        }
    }
}

impl<V> Memo<V> {
    /// `f(labels)`, computed the first time this set is seen.
    pub fn get(&mut self, labels: &Shared, f: impl FnOnce(&Labels) -> V) -> &V {
        &self
            .seen
            .entry(Arc::as_ptr(labels))
            .or_insert_with(|| (labels.clone(), f(labels)))
            .1
    }

    /// How many distinct sets were computed.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set of one label `k=v`.
    fn labels(k: &str, v: &str) -> Labels {
        Labels::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn equal_label_sets_are_held_once_and_unused_ones_are_swept() {
        let mut i = Interner::default();
        let a = i.intern(&labels("role", "web"));
        let b = i.intern(&labels("role", "web"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
        // 200 sets nobody keeps: the table is swept as it grows, down to what is held.
        for n in 0..200 {
            i.intern(&labels("n", &n.to_string()));
        }
        assert!(i.len() <= 2 * 64, "{} sets held", i.len());
        let c = i.intern(&labels("role", "web"));
        assert!(Arc::ptr_eq(&a, &c), "a set in use survives the sweep");
    }

    #[test]
    fn a_memo_computes_once_per_distinct_set_and_never_shares_between_different_ones() {
        let mut i = Interner::default();
        let web = i.intern(&labels("role", "web"));
        let web2 = i.intern(&labels("role", "web"));
        let db = i.intern(&labels("role", "db"));
        let mut calls = 0;
        let mut memo = Memo::default();
        let mut role = |l: &Shared| {
            memo.get(l, |l| {
                calls += 1;
                l["role"].clone()
            })
            .clone()
        };
        assert_eq!(
            [role(&web), role(&web2), role(&db), role(&web)],
            ["web", "web", "db", "web"]
        );
        assert_eq!(calls, 2);
        // An equal set that was not interned: computed again, with its own answer.
        let copy = Arc::new(labels("role", "web"));
        let mut memo = Memo::default();
        memo.get(&web, |_| 1);
        assert_eq!(*memo.get(&copy, |_| 2), 2);
        assert_eq!(memo.len(), 2);
    }
}
