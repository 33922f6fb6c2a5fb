//! The registry's embedded store (sled): nodes, specs, fragments, enrollment tokens, events,
//! payload version metadata, rollouts, queued workload resets and re-enrolment grants (payload
//! contents are files,
//! see `payloads/blobs.rs`).
//!
//! Only this module touches sled. Writes that must be durable before they are acknowledged
//! call [`Store::flush`] (fsync of the log) before the handler answers.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use steward_proto::{
    Event, Fragment, Health, HostStats, Labels, NodeFacts, NodeSpec, NodeStatus, PayloadVersion,
};

mod grants;
mod health;
pub use grants::GrantRecord;
pub use health::WriteKind;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree}: {source}")]
    Corrupt {
        tree: &'static str,
        source: serde_json::Error,
    },
    /// The disk holding the data dir is full: writes are refused until space is freed.
    #[error(
        "registry store at {} is out of disk space (ENOSPC): free space or delete payload versions",
        .dir.display()
    )]
    Full { dir: std::path::PathBuf },
    /// The store cannot write (an I/O error); it is reopened at the next write or /readyz.
    #[error("registry store at {} cannot write: {source}", .dir.display())]
    Io {
        dir: std::path::PathBuf,
        #[source]
        source: sled::Error,
    },
    /// A reopen after an error did not complete; the next write or /readyz tries again.
    #[error("registry store at {} is unavailable: {reason}", .dir.display())]
    Unavailable {
        dir: std::path::PathBuf,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A node as stored: the wire `Node` fields that are persisted, plus its credential hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub labels: Labels,
    pub facts: NodeFacts,
    pub health: Health,
    pub enrolled_at: DateTime<Utc>,
    /// Last heartbeat as of the last write (heartbeats themselves live in memory).
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub heartbeat_rtt_ms: Option<f64>,
    pub stats: Option<HostStats>,
    pub status: Option<NodeStatus>,
    pub observed_generation: u64,
    /// sha256 of the node secret; `None` once decommissioned.
    pub secret_sha256: Option<[u8; 32]>,
}

/// A node's desired state as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpecRecord {
    pub generation: u64,
    pub own: NodeSpec,
    pub effective: NodeSpec,
    pub fragments: Vec<String>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Payload versions set for this node alone by a rollout (payload name -> version),
    /// applied over the merged spec when the effective spec is computed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub payload_overrides: std::collections::BTreeMap<String, String>,
}

/// An enrollment token as stored (hash only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: [u8; 32],
    pub description: Option<String>,
    pub labels: Labels,
    pub uses_total: u32,
    pub uses_left: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
}

/// The store: the open sled database (reopened after an I/O error such as a full disk, since
/// sled keeps failing every write once one happened), its health and the disk reserve.
#[derive(Clone)]
pub struct Store {
    trees: std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<Trees>>>>,
    health: std::sync::Arc<health::Health>,
    reserve: crate::disk::Reserve,
    dir: std::path::PathBuf,
}

/// The sled database and its trees.
struct Trees {
    db: sled::Db,
    nodes: sled::Tree,
    machines: sled::Tree,
    specs: sled::Tree,
    fragments: sled::Tree,
    tokens: sled::Tree,
    events: sled::Tree,
    payloads: sled::Tree,
    rollouts: sled::Tree,
    /// Node id -> JSON list of workload names whose reset awaits the node's next heartbeat.
    resets: sled::Tree,
    /// Re-enrolment grants (hash only), one use each.
    grants: sled::Tree,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { tree, source })
}

/// Changes to write atomically with a spec change.
pub struct SpecWrite {
    pub node_id: String,
    pub record: SpecRecord,
}

impl Trees {
    fn open(dir: &std::path::Path) -> std::result::Result<Self, sled::Error> {
        let db = sled::Config::new().path(dir.join("db")).open()?;
        Ok(Self {
            nodes: db.open_tree("nodes")?,
            machines: db.open_tree("machines")?,
            specs: db.open_tree("specs")?,
            fragments: db.open_tree("fragments")?,
            tokens: db.open_tree("tokens")?,
            events: db.open_tree("events")?,
            payloads: db.open_tree("payloads")?,
            rollouts: db.open_tree("rollouts")?,
            resets: db.open_tree("resets")?,
            grants: db.open_tree("reenroll_grants")?,
            db,
        })
    }
}

impl Store {
    /// Opens the store in `dir` without a disk reserve.
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        Self::open_with_reserve(dir, 0)
    }

    /// Opens the store in `dir` and keeps a reserve file of `reserve_bytes` there (created now
    /// when the disk has room, else once it has).
    pub fn open_with_reserve(dir: &std::path::Path, reserve_bytes: u64) -> Result<Self> {
        let trees = Trees::open(dir)?;
        let store = Self {
            trees: std::sync::Arc::new(std::sync::RwLock::new(Some(std::sync::Arc::new(trees)))),
            health: Default::default(),
            reserve: crate::disk::Reserve::new(dir, reserve_bytes),
            dir: dir.to_path_buf(),
        };
        store.start_reserve();
        Ok(store)
    }

    /// Makes every write so far durable (fsync).
    pub async fn flush(&self) -> Result<()> {
        let t = self.w(health::WriteKind::Freeing)?;
        t.db.flush_async().await.map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>> {
        self.t()?
            .nodes
            .get(id)?
            .map(|b| dec("nodes", &b))
            .transpose()
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.t()?
            .nodes
            .iter()
            .values()
            .map(|v| dec("nodes", &v?))
            .collect()
    }

    pub fn put_node(&self, n: &NodeRecord) -> Result<()> {
        let t = self.w(health::WriteKind::Ordinary)?;
        t.nodes
            .insert(n.id.as_bytes(), enc(n))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub fn node_for_machine(&self, machine_id: &str) -> Result<Option<String>> {
        Ok(self
            .t()?
            .machines
            .get(machine_id)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_machine(&self, machine_id: &str, node_id: Option<&str>) -> Result<()> {
        let t = self.w(health::WriteKind::Ordinary)?;
        match node_id {
            Some(id) => t.machines.insert(machine_id, id.as_bytes()),
            None => t.machines.remove(machine_id),
        }
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub fn spec(&self, node_id: &str) -> Result<Option<SpecRecord>> {
        self.t()?
            .specs
            .get(node_id)?
            .map(|b| dec("specs", &b))
            .transpose()
    }

    /// Every node's spec generation, for the watchers at start-up.
    pub fn generations(&self) -> Result<Vec<(String, u64)>> {
        self.t()?
            .specs
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let rec: SpecRecord = dec("specs", &v)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), rec.generation))
            })
            .collect()
    }

    pub fn fragment(&self, name: &str) -> Result<Option<Fragment>> {
        self.t()?
            .fragments
            .get(name)?
            .map(|b| dec("fragments", &b))
            .transpose()
    }

    pub fn fragments(&self) -> Result<Vec<Fragment>> {
        self.t()?
            .fragments
            .iter()
            .values()
            .map(|v| dec("fragments", &v?))
            .collect()
    }

    /// Writes node specs, optionally a fragment change and a node record, in one transaction:
    /// either all of them are stored or none is. `fragment`: `(name, Some(f))` stores,
    /// `(name, None)` deletes.
    pub fn write_specs(
        &self,
        specs: &[SpecWrite],
        fragment: Option<(&str, Option<&Fragment>)>,
        node: Option<&NodeRecord>,
    ) -> Result<()> {
        let encoded: Vec<(&str, Vec<u8>)> = specs
            .iter()
            .map(|w| (w.node_id.as_str(), enc(&w.record)))
            .collect();
        let frag = fragment.map(|(name, f)| (name, f.map(enc)));
        let node = node.map(|n| (n.id.as_str(), enc(n)));
        let t = self.w(health::WriteKind::Ordinary)?;
        let res: std::result::Result<(), TransactionError<()>> = (&t.specs, &t.fragments, &t.nodes)
            .transaction(|(s, f, n)| {
                if let Some((id, bytes)) = &node {
                    n.insert(id.as_bytes(), bytes.as_slice())?;
                }
                for (id, bytes) in &encoded {
                    s.insert(id.as_bytes(), bytes.as_slice())?;
                }
                if let Some((name, val)) = &frag {
                    match val {
                        Some(bytes) => {
                            f.insert(name.as_bytes(), bytes.as_slice())?;
                        }
                        None => {
                            f.remove(name.as_bytes())?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(self.fail(e)),
            Err(TransactionError::Abort(())) => Ok(()),
        }
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.t()?
            .tokens
            .get(id)?
            .map(|b| dec("tokens", &b))
            .transpose()
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.t()?
            .tokens
            .iter()
            .values()
            .map(|v| dec("tokens", &v?))
            .collect()
    }

    pub fn put_token(&self, t: &TokenRecord) -> Result<()> {
        let trees = self.w(health::WriteKind::Ordinary)?;
        trees
            .tokens
            .insert(t.id.as_bytes(), enc(t))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Takes one use of a token atomically; returns the record as it was before, or `None`
    /// when it does not exist. The caller checks expiry, revocation and uses left first via
    /// `check`, which runs inside the compare-and-swap loop.
    pub fn take_token_use<E>(
        &self,
        id: &str,
        check: impl Fn(&TokenRecord) -> std::result::Result<(), E>,
    ) -> Result<Option<std::result::Result<TokenRecord, E>>> {
        let t = self.w(health::WriteKind::Ordinary)?;
        loop {
            let Some(old) = t.tokens.get(id)? else {
                return Ok(None);
            };
            let rec: TokenRecord = dec("tokens", &old)?;
            if let Err(e) = check(&rec) {
                return Ok(Some(Err(e)));
            }
            let mut next = rec.clone();
            next.uses_left = next.uses_left.saturating_sub(1);
            if t.tokens
                .compare_and_swap(id, Some(old), Some(enc(&next)))
                .map_err(|e| self.fail(e))?
                .is_ok()
            {
                return Ok(Some(Ok(rec)));
            }
        }
    }

    /// Sequence number of the last stored event (0 when none).
    pub fn last_event_seq(&self) -> Result<u64> {
        Ok(self
            .t()?
            .events
            .last()?
            .map(|(k, _)| seq_from_key(&k))
            .unwrap_or(0))
    }

    pub fn put_event(&self, e: &Event) -> Result<()> {
        let t = self.w(health::WriteKind::Freeing)?;
        t.events
            .insert(e.seq.to_be_bytes(), enc(e))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let start = after.saturating_add(1).to_be_bytes();
        self.t()?
            .events
            .range(start..)
            .values()
            .take(limit)
            .map(|v| dec("events", &v?))
            .collect()
    }
}

fn seq_from_key(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

impl Store {
    /// Read-modify-write of one node record (compare-and-swap loop, so concurrent updates of
    /// other fields are not lost). Returns the new record, or `None` when absent.
    pub fn update_node(
        &self,
        id: &str,
        mut f: impl FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>> {
        let t = self.w(health::WriteKind::Ordinary)?;
        loop {
            let Some(old) = t.nodes.get(id)? else {
                return Ok(None);
            };
            let mut rec: NodeRecord = dec("nodes", &old)?;
            f(&mut rec);
            if t.nodes
                .compare_and_swap(id, Some(old), Some(enc(&rec)))
                .map_err(|e| self.fail(e))?
                .is_ok()
            {
                return Ok(Some(rec));
            }
        }
    }
}

/// Key of a payload version: `name`, a NUL, `version` (so one name's versions are a prefix).
fn payload_key(name: &str, version: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + version.len() + 1);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

impl Store {
    /// The data directory the store was opened in (blobs live under `<dir>/blobs`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn payload_version(&self, name: &str, version: &str) -> Result<Option<PayloadVersion>> {
        self.t()?
            .payloads
            .get(payload_key(name, version))?
            .map(|b| dec("payloads", &b))
            .transpose()
    }

    /// Every payload version (ordered by name, then version bytes).
    pub fn payload_versions(&self) -> Result<Vec<PayloadVersion>> {
        self.t()?
            .payloads
            .iter()
            .values()
            .map(|v| dec("payloads", &v?))
            .collect()
    }

    pub fn put_payload_version(&self, v: &PayloadVersion) -> Result<()> {
        let t = self.w(health::WriteKind::Ordinary)?;
        t.payloads
            .insert(payload_key(&v.name, &v.version), enc(v))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub fn remove_payload_version(&self, name: &str, version: &str) -> Result<()> {
        let t = self.w(health::WriteKind::Freeing)?;
        t.payloads
            .remove(payload_key(name, version))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Every node's spec record.
    pub fn specs(&self) -> Result<Vec<(String, SpecRecord)>> {
        self.t()?
            .specs
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), dec("specs", &v)?))
            })
            .collect()
    }

    /// A stored rollout record (opaque JSON owned by `rollout/`).
    pub fn rollout<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        self.t()?
            .rollouts
            .get(id)?
            .map(|b| dec("rollouts", &b))
            .transpose()
    }

    pub fn rollouts<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.t()?
            .rollouts
            .iter()
            .values()
            .map(|v| dec("rollouts", &v?))
            .collect()
    }

    pub fn put_rollout<T: Serialize>(&self, id: &str, r: &T) -> Result<()> {
        let t = self.w(health::WriteKind::Ordinary)?;
        t.rollouts
            .insert(id.as_bytes(), enc(r))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }
}

impl Store {
    /// Queues a reset of workload `name` for node `node` (once: a name already queued is not
    /// added again). Compare-and-swap loop, so a concurrent [`Store::take_resets`] or queueing
    /// loses nothing. Durable once [`Store::flush`] returns.
    pub fn queue_reset(&self, node: &str, name: &str) -> Result<()> {
        let t = self.w(health::WriteKind::Ordinary)?;
        loop {
            let old = t.resets.get(node)?;
            let mut names: Vec<String> = match &old {
                Some(b) => dec("resets", b)?,
                None => Vec::new(),
            };
            if names.iter().any(|n| n == name) {
                return Ok(());
            }
            names.push(name.to_string());
            if t.resets
                .compare_and_swap(node, old, Some(enc(&names)))
                .map_err(|e| self.fail(e))?
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    /// Takes (reads and removes, in one atomic step) the resets queued for `node`, oldest first.
    /// Writes nothing when none are queued, so calling it on every heartbeat costs no disk.
    pub fn take_resets(&self, node: &str) -> Result<Vec<String>> {
        let t = self.w(health::WriteKind::Freeing)?;
        t.resets
            .remove(node)
            .map_err(|e| self.fail(e))?
            .map(|b| dec("resets", &b))
            .transpose()
            .map(Option::unwrap_or_default)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn queued_resets_survive_reopen_and_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.queue_reset("n1", "web").unwrap();
            store.queue_reset("n1", "db").unwrap();
            store.queue_reset("n1", "web").unwrap();
            store.queue_reset("n2", "vm").unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.take_resets("n1").unwrap(), vec!["web", "db"]);
        assert!(store.take_resets("n1").unwrap().is_empty());
        assert_eq!(store.take_resets("n2").unwrap(), vec!["vm"]);
        assert!(store.take_resets("unknown").unwrap().is_empty());
    }
}
