//! The fleet view: what this registry process keeps in memory per node (heartbeat data, the
//! secret hash, labels, health, the `base` of its generation, the [`Brief`] of its stored facts
//! and status that fleet-wide views read instead of the store, and a `watch` channel carrying the
//! node's spec generation and, while long-polls wait on it, its spec document), plus the
//! fragment set every node's generation and effective spec are computed from; all kept
//! in step with the store by [`Fleet::apply`], which the store watch (`replica.rs`) feeds with
//! every change, including those written by other replicas. Heartbeats never touch the store by
//! themselves.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use steward_proto::{Health, HostStats};
use tokio::sync::watch;

use crate::fragment_set::{generation, FragmentSet};
use crate::store::{HealthRecord, NodeRecord, SpecRecord};

mod brief;
pub mod labels;
pub use brief::{Attest, Brief};
use labels::{Interner, Memo, Shared};

/// What the registry keeps in memory per node.
#[derive(Debug)]
pub struct Live {
    pub secret_sha256: Option<[u8; 32]>,
    /// The node's labels, kept here so fragment writes select nodes without reading the store
    /// (one copy per distinct set, [`Fleet::intern`]).
    pub labels: Shared,
    pub health: Health,
    pub last_seen: Instant,
    /// When this replica itself last received a heartbeat of the node (published in its
    /// heartbeat batch, `replica.rs`).
    pub heard_here: Option<Instant>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub rtt_ms: Option<f64>,
    pub stats: Option<HostStats>,
    pub observed_generation: u64,
    /// The `base` of the node's generation (`fragment_set.rs`; 0 while it has no spec record).
    pub base: i64,
    /// Whether the node has a spec record (set with `base`): without one, its document is the
    /// fragments' alone and needs no store read.
    pub has_spec: bool,
    pub status_digest: String,
    /// The reconcile pass in progress, per the last heartbeat (memory only).
    pub progress: Option<steward_proto::PassProgress>,
    /// The stored record summed up for fleet-wide views.
    pub brief: Brief,
}

/// One node's live entry: its heartbeat data and its spec channel.
#[derive(Debug)]
pub struct LiveNode {
    pub live: Mutex<Live>,
    /// The newest spec generation this process knows; what the node's long-polls wait on.
    pub spec: watch::Sender<u64>,
}

impl LiveNode {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest spec generation this process knows.
    pub fn generation(&self) -> u64 {
        *self.spec.borrow()
    }

    /// Raises the generation to `generation` (never lowers it: watch events may arrive after a
    /// local write) and wakes the long-polls, which read the document of it.
    pub fn publish(&self, generation: u64) {
        self.spec.send_if_modified(|g| {
            let raised = generation > *g;
            if raised {
                *g = generation;
            }
            raised
        });
    }
}

/// The wake-up of the long-polls a fragment change raised, done when this is dropped. Reads see
/// the new fragment set at once; the write's answer holds this and drops it when the answer has
/// been handed to its connection, whose bytes go out right after the pass: the answer waits for
/// the pass, not for the thousands of polls it wakes to be served, and every generation it
/// moved is published before its client can read it.
#[derive(Debug, Default)]
pub struct Wake(Option<Arc<Fleet>>);

impl Drop for Wake {
    fn drop(&mut self) {
        let Some(fleet) = self.0.take() else {
            return;
        };
        let pass = || fleet.wake_all();
        // A pass over every node: off the async worker's other tasks, which it hands over.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(pass),
            _ => pass(),
        }
    }
}

/// Every node this process knows, by id, and the nodes with queued resets.
#[derive(Debug, Default)]
pub struct Fleet {
    nodes: RwLock<HashMap<String, Arc<LiveNode>>>,
    /// Every fragment (and ghost), as of the newest change this process knows.
    fragments: RwLock<Arc<FragmentSet>>,
    /// Nodes with resets queued in the store (so heartbeats read the store only for those).
    resets: Mutex<HashSet<String>>,
    /// The distinct label sets nodes hold.
    label_sets: Mutex<Interner>,
}

impl Fleet {
    pub fn live(&self, id: &str) -> Option<Arc<LiveNode>> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Calls `f` with every node, under the fleet's read lock (no copy of the fleet: keep `f`
    /// short and never await in it).
    pub fn for_each(&self, mut f: impl FnMut(&str, &LiveNode)) {
        for (id, ln) in self.nodes.read().unwrap_or_else(|p| p.into_inner()).iter() {
            f(id, ln);
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shared copy of a label set, for [`Live::labels`].
    pub fn intern(&self, labels: &steward_proto::Labels) -> Shared {
        self.label_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .intern(labels)
    }

    /// Adds a node (or replaces its entry); its heartbeat clock starts now.
    /// Its generation is computed from `base`, its spec record's (`None`: it has none; 0).
    pub fn insert_live(&self, rec: &NodeRecord, base: Option<i64>) -> Arc<LiveNode> {
        let g = generation(base.unwrap_or(0), self.fragments().weight(&rec.labels));
        let mut live = live_from_record(rec, self.intern(&rec.labels), g, Instant::now());
        let l = live.live.get_mut().unwrap_or_else(|p| p.into_inner());
        (l.base, l.has_spec) = (base.unwrap_or(0), base.is_some());
        let ln = Arc::new(live);
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id.clone(), ln.clone());
        ln
    }

    /// The fragment set generations and effective specs are computed from.
    pub fn fragments(&self) -> Arc<FragmentSet> {
        self.fragments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a fragment set (written here or by another replica; ignored when older than the
    /// one held, as a store read that raced a newer write can be) and wakes every node whose
    /// generation it raised.
    pub fn set_fragments(&self, set: Arc<FragmentSet>) {
        if self.install(set) {
            self.wake_all();
        }
    }

    /// Takes a fragment set like [`Fleet::set_fragments`] (reads see it at once) but leaves
    /// waking the nodes it raised to the [`Wake`] returned, for a write to answer first.
    pub fn take_fragments(self: &Arc<Self>, set: Arc<FragmentSet>) -> Wake {
        Wake(self.install(set).then(|| self.clone()))
    }

    /// Holds `set` unless it is older than the one held; whether it was taken.
    fn install(&self, set: Arc<FragmentSet>) -> bool {
        let mut held = self.fragments.write().unwrap_or_else(|p| p.into_inner());
        // Older: a store read that raced a newer write. The same: a local write, then its
        // watch event.
        if set.version < held.version || (set.version == held.version && set.version != 0) {
            return false;
        }
        *held = set;
        true
    }

    /// Publishes every node's generation under the fragment set held now, which wakes the
    /// long-polls of the nodes it raised (a pass over the whole fleet).
    pub fn wake_all(&self) {
        let (set, started) = (self.fragments(), Instant::now());
        let (mut nodes, mut weights) = (0usize, Memo::default());
        self.for_each(|_, ln| {
            let g = {
                let l = ln.lock();
                generation(l.base, *weights.get(&l.labels, |l| set.weight(l)))
            };
            ln.publish(g);
            nodes += 1;
        });
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if nodes > 0 {
            tracing::info!(
                nodes,
                label_sets = weights.len(),
                version = set.version,
                ms,
                "generations published under a new fragment set"
            );
        }
    }

    /// Sets a node's labels (when given) and `base` (of the spec record just written) together,
    /// and publishes the generation they give; returns it.
    pub fn set_base(&self, id: &str, labels: Option<&steward_proto::Labels>, base: i64) -> u64 {
        let Some(ln) = self.live(id) else { return 0 };
        let (set, labels) = (self.fragments(), labels.map(|l| self.intern(l)));
        let g = {
            let mut l = ln.lock();
            if let Some(labels) = labels {
                l.labels = labels;
            }
            (l.base, l.has_spec) = (base, true);
            generation(base, set.weight(&l.labels))
        };
        ln.publish(g);
        g
    }

    /// Current spec generation of a node (0 when unknown).
    pub fn generation(&self, id: &str) -> u64 {
        self.live(id).map(|l| l.generation()).unwrap_or(0)
    }

    /// Whether resets may be queued for `node` (read the store then).
    pub fn has_resets(&self, node: &str) -> bool {
        self.resets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node)
    }

    pub fn set_resets(&self, node: &str, queued: bool) {
        let mut r = self.resets.lock().unwrap_or_else(|p| p.into_inner());
        if queued {
            r.insert(node.to_string());
        } else {
            r.remove(node);
        }
    }

    /// Applies a stored node record (written here or by another replica): a new node is added
    /// (with the record's health); for a known one the stored credential, labels and brief are
    /// taken, and its health only when decommissioned: health changes come as health records
    /// ([`Fleet::apply_health`]).
    pub fn apply_node(&self, rec: &NodeRecord) {
        let Some(ln) = self.live(&rec.id) else {
            self.insert_live(rec, None);
            return;
        };
        let labels = self.intern(&rec.labels);
        let mut l = ln.lock();
        l.secret_sha256 = rec.secret_sha256;
        l.labels = labels;
        if rec.health == Health::Decommissioned {
            l.health = Health::Decommissioned;
        }
        if let Some(s) = &rec.status {
            l.status_digest = s.digest.clone();
        }
        l.brief = Brief::of(rec);
    }

    /// Applies a stored health record (written here or by another replica; a decommissioned
    /// node stays so). Ready was written on a heartbeat some replica just received, so the node
    /// counts as seen now. Stale or down is taken only when no heartbeat newer than the one it
    /// was judged on has been received here (a late write never undoes a newer heartbeat).
    pub fn apply_health(&self, id: &str, rec: &HealthRecord) {
        let Some(ln) = self.live(id) else { return };
        let mut l = ln.lock();
        if l.health == Health::Decommissioned || l.health == rec.health {
            return;
        }
        if rec.health == Health::Ready {
            l.last_seen = l.last_seen.max(Instant::now());
            l.health = Health::Ready;
        } else if l.last_heartbeat <= rec.last_heartbeat {
            l.health = rec.health;
        }
    }

    /// Applies a stored spec record: takes its `base`, and wakes the node's long-polls when its
    /// generation rose. (Labels are taken from node records, [`Fleet::apply_node`]; a label
    /// change writes the node's spec record in the same transaction, so it follows at once.)
    pub fn apply_spec(&self, node: &str, rec: &SpecRecord) {
        let Some(ln) = self.live(node) else { return };
        let set = self.fragments();
        let g = {
            let mut l = ln.lock();
            (l.base, l.has_spec) = (rec.base_under(set.weight(&l.labels)), true);
            generation(l.base, set.weight(&l.labels))
        };
        ln.publish(g);
    }

    /// Applies heartbeat data published by another replica: a node heard from there counts as
    /// seen at `seen`, if that is later than what this replica knows.
    pub fn apply_heard(&self, node: &str, seen: Instant, at: DateTime<Utc>, observed: u64) {
        let Some(ln) = self.live(node) else { return };
        let mut l = ln.lock();
        if seen > l.last_seen {
            l.last_seen = seen;
            l.last_heartbeat = Some(at);
            l.observed_generation = observed;
        }
    }
}

fn live_from_record(rec: &NodeRecord, labels: Shared, generation: u64, now: Instant) -> LiveNode {
    let (spec, _) = watch::channel(generation);
    LiveNode {
        live: Mutex::new(Live {
            secret_sha256: rec.secret_sha256,
            labels,
            health: rec.health,
            last_seen: now,
            heard_here: None,
            last_heartbeat: rec.last_heartbeat,
            rtt_ms: rec.heartbeat_rtt_ms,
            stats: rec.stats.clone(),
            observed_generation: rec.observed_generation,
            base: 0,
            has_spec: false,
            status_digest: rec
                .status
                .as_ref()
                .map(|s| s.digest.clone())
                .unwrap_or_default(),
            progress: None,
            brief: Brief::of(rec),
        }),
        spec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> LiveNode {
        let rec = NodeRecord::test("n1");
        live_from_record(&rec, Arc::new(rec.labels.clone()), 1, Instant::now())
    }

    #[test]
    fn a_published_generation_only_rises_and_wakes_only_when_it_does() {
        let ln = node();
        let mut rx = ln.spec.subscribe();
        rx.borrow_and_update();
        ln.publish(3);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 3);
        // An older or the same generation (a late watch event of a local write) changes
        // nothing and wakes nobody.
        ln.publish(2);
        ln.publish(3);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(ln.generation(), 3);
    }

    /// A set of one fragment `f` (selector `role=web`) at `revision`, its version `version`.
    fn web_set(revision: u64, version: u64) -> Arc<FragmentSet> {
        let frag = steward_proto::Fragment {
            name: "f".into(),
            selector: "role=web".into(),
            spec: Default::default(),
            revision,
            updated_at: Utc::now(),
        };
        let ghosts = crate::fragment_set::Ghosts::new();
        Arc::new(FragmentSet::new(vec![frag], ghosts, version))
    }

    #[test]
    fn a_fragment_set_older_than_the_one_held_is_ignored_and_a_newer_one_raises_its_nodes() {
        let fleet = Fleet::default();
        let mut rec = NodeRecord::test("n1");
        rec.labels.insert("role".into(), "web".into());
        fleet.insert_live(&rec, Some(2));
        let set = web_set;
        let mut rx = fleet.live("n1").unwrap().spec.subscribe();
        fleet.set_fragments(set(3, 10));
        assert_eq!(fleet.generation("n1"), 5);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // A store read that raced the write above comes in late: nothing moves back.
        fleet.set_fragments(set(1, 9));
        assert_eq!((fleet.fragments().version, fleet.generation("n1")), (10, 5));
        assert!(!rx.has_changed().unwrap());
        fleet.set_fragments(set(4, 11));
        assert_eq!(fleet.generation("n1"), 6);
    }

    #[test]
    fn a_set_taken_is_read_at_once_and_wakes_its_nodes_only_when_the_wake_is_dropped() {
        let fleet = Arc::new(Fleet::default());
        let mut rec = NodeRecord::test("n1");
        rec.labels.insert("role".into(), "web".into());
        fleet.insert_live(&rec, Some(2));
        let mut rx = fleet.live("n1").unwrap().spec.subscribe();
        let wake = fleet.take_fragments(web_set(3, 10));
        assert_eq!(fleet.fragments().version, 10);
        assert_eq!(fleet.generation("n1"), 2);
        assert!(!rx.has_changed().unwrap());
        drop(wake);
        assert_eq!(fleet.generation("n1"), 5);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // An older set is not taken: its wake does nothing.
        drop(fleet.take_fragments(web_set(1, 9)));
        assert_eq!((fleet.fragments().version, fleet.generation("n1")), (10, 5));
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn nodes_with_equal_labels_share_one_copy_however_the_labels_arrive() {
        let fleet = Fleet::default();
        let web = |id: &str| {
            let mut rec = NodeRecord::test(id);
            rec.labels.insert("role".into(), "web".into());
            rec
        };
        fleet.insert_live(&web("a"), None);
        fleet.apply_node(&web("b"));
        fleet.insert_live(&NodeRecord::test("c"), None);
        fleet.set_base("c", Some(&web("c").labels), 1);
        let labels = |id: &str| fleet.live(id).unwrap().lock().labels.clone();
        assert!(Arc::ptr_eq(&labels("a"), &labels("b")));
        assert!(Arc::ptr_eq(&labels("a"), &labels("c")));
        // A relabelled node gets the copy of its new set; the others keep theirs.
        fleet.apply_node(&NodeRecord::test("b"));
        assert!(!Arc::ptr_eq(&labels("a"), &labels("b")));
        assert_eq!(*labels("b"), NodeRecord::test("b").labels);
        assert_eq!(labels("a")["role"], "web");
    }

    #[test]
    fn whether_a_node_has_a_spec_record_follows_every_way_one_arrives() {
        let fleet = Fleet::default();
        let has = |id: &str| fleet.live(id).unwrap().lock().has_spec;
        fleet.insert_live(&NodeRecord::test("none"), None);
        fleet.insert_live(&NodeRecord::test("loaded"), Some(0));
        fleet.apply_node(&NodeRecord::test("watched"));
        assert_eq!(
            (has("none"), has("loaded"), has("watched")),
            (false, true, false)
        );
        // Written here, or by another replica (its watch event).
        fleet.set_base("none", None, 1);
        let rec = SpecRecord {
            generation: 1,
            base: Some(1),
            ..Default::default()
        };
        fleet.apply_spec("watched", &rec);
        assert!(has("none") && has("watched"));
        assert_eq!(fleet.generation("watched"), 1);
    }
}
