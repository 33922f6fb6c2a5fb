//! The registry's typed records and where they live in the key-value store ([`crate::kv::Kv`]):
//! nodes, machines, specs, fragments, enrollment tokens, events, payload version metadata,
//! rollouts, queued workload resets (`store/resets.rs`), re-enrolment grants
//! (`store/grants.rs`) and pending webhook deliveries (`store/alerts.rs`). Payload contents are files (`payloads/blobs.rs`).
//!
//! Keys: `nodes/{id}`, `machines/{machine_id}`, `specs/{id}`, `fragments/{name}`, `tokens/{id}`,
//! `events/{seq:020}` (with the counter `meta/event-seq`), `payloads/{name}/{version}`,
//! `rollouts/{id}`, `resets/{node}`, `grants/{id}`, `alerts/{delivery-id}`, `credentials/{name}` (named API credentials,
//! `store/credentials.rs`), `history/{node|fragment}/{name}/{seq}` (spec history,
//! `store/history.rs`), `audit/{ns}-{random}` (the audit trail, `store/audit.rs`), `templates/{name}` and
//! `sessions/{id}` (`store/sessions.rs`),
//! `meta/fragment-ghosts`
//! (what deleted fragments and old selectors add to generations, `fragment_set.rs`), and `meta/spec-epoch`, raised by every change
//! that can alter effective specs (spec, fragment and label writes, payload deletions): such a
//! change reads the epoch first and commits only if it did not move (optimistic concurrency
//! across replicas). Values are JSON. Every write is durable before the call returns.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use steward_proto::{
    Event, Health, HostStats, Labels, NodeFacts, NodeSpec, NodeStatus, PayloadVersion,
};

use crate::kv::{KeyValue, Kv, KvError, Revision, Txn, TxnOutcome};

mod alerts;
mod audit;
mod credentials;
mod grants;
mod history;
mod node_health;
mod replicas;
mod resets;
mod rollouts;
mod sessions;
mod specs;
#[cfg(test)]
mod tests;
pub use alerts::DeliveryRecord;
pub use audit::audit_id_at;
pub use credentials::{CredentialRecord, CREDENTIALS};
pub use grants::GrantRecord;
pub use history::{HistoryOf, HistoryWrite};
pub use node_health::HealthRecord;
pub use resets::{queued_reset, split_resets};
pub use sessions::{SESSIONS, TEMPLATES};
pub use specs::GHOSTS;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("corrupt record {key} in the registry store: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// Another writer changed the records this change was computed from; compute it again.
    #[error("the records changed while this change was computed (another registry replica wrote at the same time)")]
    Stale,
    /// Too many writers at once on the same records.
    #[error("registry store busy: {what} kept conflicting with concurrent writes; try again")]
    Busy { what: &'static str },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// How often a compare-and-swap loop retries before answering [`StoreError::Busy`].
const CAS_ATTEMPTS: usize = 64;
/// The key raised by every change that can alter effective specs.
const SPEC_EPOCH: &str = "meta/spec-epoch";
/// Most operations in one transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 100;
/// Most value bytes in one transaction (etcd's default request limit is 1.5 MiB).
const TXN_BYTES: usize = 1024 * 1024;
/// Records read per page by [`Store::scan`].
const SCAN_PAGE: usize = 1_000;
/// The counter of event sequence numbers (gap-free: raised in the event's own transaction).
const EVENT_SEQ: &str = "meta/event-seq";
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

#[cfg(test)]
impl NodeRecord {
    /// A ready node with empty facts, for unit tests.
    pub fn test(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            labels: Default::default(),
            facts: Default::default(),
            health: Health::Ready,
            enrolled_at: Utc::now(),
            last_heartbeat: None,
            heartbeat_rtt_ms: None,
            stats: None,
            status: None,
            observed_generation: 0,
            secret_sha256: None,
        }
    }
}

/// A node's desired state as stored: its own spec and payload overrides, and the `base` of its
/// generation. The effective spec is not stored: it is computed when read, from the own spec and
/// the fragments that match the node's labels (`fragment_set.rs`, which also explains `base`). The
/// default is the record of a node that has none: base 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecRecord {
    /// The node's generation when this record was written (for reading the store by hand;
    /// the live generation is `base` plus the weight of the fragments that match the node).
    pub generation: u64,
    /// `None` only in records written before effective specs were computed when read; they are
    /// given one at start-up (`Specs::migrate_bases`).
    #[serde(default)]
    pub base: Option<i64>,
    pub own: NodeSpec,
    pub updated_at: Option<DateTime<Utc>>,
    /// Payload versions set for this node alone by a rollout (payload name -> version),
    /// applied over the merged spec when the effective spec is computed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub payload_overrides: std::collections::BTreeMap<String, String>,
    /// The pieces of the sessions placed on this node (session id -> rendered spec, with the
    /// session's lease), merged into the effective spec like fragments (`sessions/`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sessions: std::collections::BTreeMap<String, NodeSpec>,
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

/// A node's spec record to write with a spec change.
pub struct SpecWrite {
    pub node_id: String,
    pub record: SpecRecord,
    /// Revision of the spec record this one was computed from (`0`: there was none).
    pub revision: Revision,
    /// The version of the node's own spec to keep, when the own spec changed.
    pub history: Option<HistoryWrite>,
}

/// What a read-modify-write step decides.
pub enum Update<T, R> {
    /// Store this value, answer `R`.
    Put(T, R),
    /// Delete the key, answer `R`.
    Delete(R),
    /// Write nothing, answer `R`.
    Keep(R),
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt {
        key: kv.key.clone(),
        source,
    })
}

/// The store: typed access to the registry's records in a [`Kv`] backend.
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn Kv>,
}

impl Store {
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv }
    }

    /// The embedded store in `dir` without a disk reserve (tests, tools).
    pub fn open_embedded(dir: &std::path::Path) -> Result<Self> {
        let kv = crate::kv::sled::SledKv::open(dir, 0)?;
        Ok(Self::new(Arc::new(kv)))
    }

    /// The backend (for watches, sessions and the leader election).
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// Ready when the backend can serve writes.
    pub async fn readiness(&self) -> Result<()> {
        Ok(self.kv.readiness().await?)
    }

    async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, Revision)>> {
        match self.kv.get(key).await? {
            Some(kv) => Ok(Some((dec(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    async fn value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        Ok(self.get(key).await?.map(|(v, _)| v))
    }

    /// Every record under `prefix` with its key minus the prefix, in key order.
    async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        self.kv
            .range(prefix, None, 0)
            .await?
            .iter()
            .map(|kv| Ok((kv.key[prefix.len()..].to_string(), dec(kv)?)))
            .collect()
    }

    /// Calls `f` with every record under `prefix` (key minus the prefix) in key order, reading
    /// [`SCAN_PAGE`] at a time, so a whole-fleet read never holds every record at once. Not at
    /// one revision: callers that need a consistent view follow the store watch from a revision
    /// read before the scan.
    pub(crate) async fn scan<T: DeserializeOwned>(
        &self,
        prefix: &str,
        mut f: impl FnMut(String, T),
    ) -> Result<()> {
        self.scan_raw(prefix, |id, kv| {
            f(id.to_string(), dec(kv)?);
            Ok(())
        })
        .await
    }

    /// Calls `f` with every record under `prefix` (the id after the prefix, and the record as
    /// stored), a page at a time.
    pub(crate) async fn scan_raw(
        &self,
        prefix: &str,
        mut f: impl FnMut(&str, &KeyValue) -> Result<()>,
    ) -> Result<()> {
        let mut after: Option<String> = None;
        loop {
            let page = self.kv.range(prefix, after.as_deref(), SCAN_PAGE).await?;
            let full = page.len() == SCAN_PAGE;
            after = page.last().map(|kv| kv.key.clone());
            for kv in &page {
                f(&kv.key[prefix.len()..], kv)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn values<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    async fn put<T: Serialize>(&self, key: &str, v: &T) -> Result<()> {
        self.commit(Txn::new().put(key, enc(v))).await.map(drop)
    }

    /// Commits a transaction; a failed compare is [`StoreError::Stale`].
    async fn commit(&self, txn: Txn) -> Result<Revision> {
        match self.kv.txn(txn).await? {
            TxnOutcome::Committed(rev) => Ok(rev),
            TxnOutcome::Conflict => Err(StoreError::Stale),
        }
    }

    /// Read-modify-write of one record, retried while another writer changes it in between.
    pub async fn update<T, R>(
        &self,
        key: &str,
        freeing: bool,
        what: &'static str,
        mut f: impl FnMut(Option<T>) -> Update<T, R>,
    ) -> Result<R>
    where
        T: Serialize + DeserializeOwned,
    {
        for _ in 0..CAS_ATTEMPTS {
            let (old, rev) = match self.get::<T>(key).await? {
                Some((v, rev)) => (Some(v), rev),
                None => (None, 0),
            };
            let (txn, out) = match f(old) {
                Update::Keep(r) => return Ok(r),
                Update::Put(v, r) => (Txn::new().when(key, rev).put(key, enc(&v)), r),
                Update::Delete(r) => (Txn::new().when(key, rev).delete(key), r),
            };
            let txn = if freeing { txn.freeing() } else { txn };
            match self.commit(txn).await {
                Ok(_) => return Ok(out),
                Err(StoreError::Stale) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Busy { what })
    }
}

/// Nodes and machines.
impl Store {
    pub async fn node(&self, id: &str) -> Result<Option<NodeRecord>> {
        self.value(&format!("nodes/{id}")).await
    }

    /// These nodes' records in the order asked (ids without one skipped), read at once
    /// ([`Kv::get_many`]) and decoded off the async workers.
    pub async fn nodes_by_id(&self, ids: &[String]) -> Result<Vec<NodeRecord>> {
        let keys: Vec<String> = ids.iter().map(|id| format!("nodes/{id}")).collect();
        let found = self.kv.get_many(&keys).await?;
        tokio::task::spawn_blocking(move || found.iter().flatten().map(dec).collect())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.values("nodes/").await
    }

    pub async fn put_node(&self, n: &NodeRecord) -> Result<()> {
        self.put(&format!("nodes/{}", n.id), n).await
    }

    /// Read-modify-write of one node record (so concurrent updates of other fields are not
    /// lost). Returns the new record, or `None` when absent.
    pub async fn update_node(
        &self,
        id: &str,
        mut f: impl FnMut(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>> {
        self.update(
            &format!("nodes/{id}"),
            false,
            "node update",
            |old| match old {
                Some(mut rec) => {
                    f(&mut rec);
                    Update::Put(rec.clone(), Some(rec))
                }
                None => Update::Keep(None),
            },
        )
        .await
    }

    pub async fn node_for_machine(&self, machine_id: &str) -> Result<Option<String>> {
        Ok(self
            .kv
            .get(&format!("machines/{machine_id}"))
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Points `machines/{machine_id}` at `rec` and stores `rec`, in one transaction, if the
    /// mapping still names `seen`, the node (or none) an enrolment was decided on. False,
    /// changing nothing, when another enrolment (on this replica or another) changed the mapping
    /// meanwhile. A mapping never names a node whose record is not stored yet, so a concurrent
    /// enrolment of the same machine id sees either nothing or the whole node.
    pub async fn claim_machine(
        &self,
        machine_id: &str,
        seen: Option<&str>,
        rec: &NodeRecord,
    ) -> Result<bool> {
        let key = format!("machines/{machine_id}");
        let now = self.kv.get(&key).await?;
        let (value, rev) = match &now {
            Some(kv) => (Some(String::from_utf8_lossy(&kv.value)), kv.mod_revision),
            None => (None, 0),
        };
        if value.as_deref() != seen {
            return Ok(false);
        }
        let txn = Txn::new()
            .when(key.clone(), rev)
            .put(key, rec.id.as_bytes())
            .put(format!("nodes/{}", rec.id), enc(rec));
        match self.commit(txn).await {
            Ok(_) => Ok(true),
            Err(StoreError::Stale) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Undoes [`Store::claim_machine`] for an enrolment that failed afterwards: the mapping
    /// back to `seen` (or none) and the node record back to `previous` (or none).
    pub async fn unclaim_machine(
        &self,
        machine_id: &str,
        seen: Option<&str>,
        node_id: &str,
        previous: Option<&NodeRecord>,
    ) -> Result<()> {
        let (key, node_key) = (format!("machines/{machine_id}"), format!("nodes/{node_id}"));
        let txn = match seen {
            Some(s) => Txn::new().put(key, s.as_bytes()),
            None => Txn::new().delete(key),
        };
        let txn = match previous {
            Some(p) => txn.put(node_key, enc(p)),
            None => txn.delete(node_key),
        };
        self.commit(txn).await.map(drop)
    }

    pub async fn set_machine(&self, machine_id: &str, node_id: Option<&str>) -> Result<()> {
        let key = format!("machines/{machine_id}");
        let txn = match node_id {
            Some(id) => Txn::new().put(key, id.as_bytes()),
            None => Txn::new().delete(key),
        };
        self.commit(txn).await.map(drop)
    }
}

/// Enrollment tokens.
impl Store {
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.value(&format!("tokens/{id}")).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.values("tokens/").await
    }

    pub async fn put_token(&self, t: &TokenRecord) -> Result<()> {
        self.put(&format!("tokens/{}", t.id), t).await
    }

    /// Takes one use of a token atomically; returns the record as it was before, or `None`
    /// when it does not exist. The caller checks expiry, revocation and uses left first via
    /// `check`, which runs inside the compare-and-swap loop.
    pub async fn take_token_use<E>(
        &self,
        id: &str,
        check: impl Fn(&TokenRecord) -> std::result::Result<(), E>,
    ) -> Result<Option<std::result::Result<TokenRecord, E>>> {
        self.update(&format!("tokens/{id}"), false, "token use", |old| {
            let Some(rec): Option<TokenRecord> = old else {
                return Update::Keep(None);
            };
            if let Err(e) = check(&rec) {
                return Update::Keep(Some(Err(e)));
            }
            let mut next = rec.clone();
            next.uses_left = next.uses_left.saturating_sub(1);
            Update::Put(next, Some(Ok(rec)))
        })
        .await
    }
}

fn event_key(seq: u64) -> String {
    format!("events/{seq:020}")
}

/// The event log.
impl Store {
    /// Sequence number of the last stored event (0 when none).
    pub async fn last_event_seq(&self) -> Result<u64> {
        Ok(self.value::<u64>(EVENT_SEQ).await?.unwrap_or(0))
    }

    /// Appends events, numbering them after the last stored one (gap-free across replicas: the
    /// counter is raised in the same transaction as the events it numbers); returns them
    /// numbered. Up to [`TXN_OPS`] events go in one transaction, numbered consecutively; a
    /// longer list takes several, between which other writers' events may be numbered.
    pub async fn append_events(&self, events: Vec<Event>) -> Result<Vec<Event>> {
        let mut out = Vec::with_capacity(events.len());
        let mut rest = events;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(TXN_OPS - 1));
            out.extend(self.append_chunk(rest).await?);
            rest = tail;
        }
        Ok(out)
    }

    async fn append_chunk(&self, mut events: Vec<Event>) -> Result<Vec<Event>> {
        for _ in 0..CAS_ATTEMPTS {
            let (last, rev) = self.get::<u64>(EVENT_SEQ).await?.unwrap_or((0, 0));
            let mut txn = Txn::new().freeing().when(EVENT_SEQ, rev);
            for (i, e) in events.iter_mut().enumerate() {
                e.seq = last + 1 + i as u64;
                txn = txn.put(event_key(e.seq), enc(e));
            }
            txn = txn.put(EVENT_SEQ, enc(&(last + events.len() as u64)));
            match self.commit(txn).await {
                Ok(_) => return Ok(events),
                Err(StoreError::Stale) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Busy { what: "event log" })
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let start = (after > 0).then(|| event_key(after));
        self.kv
            .range("events/", start.as_deref(), limit)
            .await?
            .iter()
            .map(dec)
            .collect()
    }

    /// Deletes events with `seq <= upto` (the oldest), at most `limit` of them; returns how
    /// many were deleted.
    pub async fn trim_events(&self, upto: u64, limit: usize) -> Result<usize> {
        let old = self.kv.range("events/", None, limit).await?;
        let mut txn = Txn::new().freeing();
        let mut n = 0;
        for kv in &old {
            if dec::<Event>(kv)?.seq > upto {
                break;
            }
            txn = txn.delete(kv.key.clone());
            n += 1;
        }
        if n > 0 {
            self.commit(txn).await?;
        }
        Ok(n)
    }
}

fn payload_key(name: &str, version: &str) -> String {
    format!("payloads/{name}/{version}")
}

/// Payload version metadata.
impl Store {
    pub async fn payload_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<PayloadVersion>> {
        self.value(&payload_key(name, version)).await
    }

    /// Every payload version (ordered by name, then version bytes).
    pub async fn payload_versions(&self) -> Result<Vec<PayloadVersion>> {
        self.values("payloads/").await
    }

    /// Stores a new version; `false` (nothing written) when it exists already.
    pub async fn create_payload_version(&self, v: &PayloadVersion) -> Result<bool> {
        let key = payload_key(&v.name, &v.version);
        match self.commit(Txn::new().when(&key, 0).put(key, enc(v))).await {
            Ok(_) => Ok(true),
            Err(StoreError::Stale) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a version, only if no spec change committed since `epoch` (a spec write
    /// could have pinned it): [`StoreError::Stale`] otherwise.
    pub async fn remove_payload_version(
        &self,
        epoch: Revision,
        name: &str,
        version: &str,
    ) -> Result<()> {
        let txn = Txn::new()
            .freeing()
            .when(SPEC_EPOCH, epoch)
            .put(SPEC_EPOCH, Vec::new())
            .delete(payload_key(name, version));
        self.commit(txn).await.map(drop)
    }
}
