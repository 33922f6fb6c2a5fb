//! The embedded store: [`Kv`] on one sled database (one process, one directory, the default).
//!
//! Layout in `DIR/db`: the tree `kv` maps each key to its value prefixed with the 8-byte
//! big-endian revision of the transaction that last wrote it; the tree `meta` holds the store
//! revision. A transaction checks its compares, applies its ops and raises the revision by one in
//! one sled transaction over both trees, is flushed (fsync) and only then published to watchers
//! (`watch.rs`); a tokio mutex serialises commit, flush and publish, so watchers see revision
//! order and never a change that is not durable. Reads see the trees directly, so a read may
//! return a value whose flush is still under way (as the old store did). The store's health and
//! its recovery from I/O errors and a full disk live in `health.rs`; the one-off import of the
//! old per-record-type trees in `legacy.rs`.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ::sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use ::sled::Transactional;

use super::{
    Compare, KeyValue, Kv, KvError, Leadership, Op, Revision, Txn, TxnOutcome, WatchEvent,
    WatchStream,
};
use crate::disk::Reserve;

mod health;
mod legacy;
#[cfg(test)]
mod tests;
mod watch;

use health::Health;

/// The key of the store revision in the `meta` tree.
const REVISION_KEY: &[u8] = b"revision";

/// The embedded store (cheap to clone: one shared database).
#[derive(Clone)]
pub struct SledKv {
    inner: Arc<Inner>,
}

/// The shared state of a [`SledKv`].
struct Inner {
    dir: PathBuf,
    /// The open database; `None` while it is being reopened after an error.
    slot: RwLock<Option<Arc<Db>>>,
    health: Health,
    reserve: Reserve,
    /// Serialises commit, flush and publish.
    commit: Arc<tokio::sync::Mutex<()>>,
    hub: Mutex<watch::Hub>,
    /// Always `true`: one process owns the directory.
    leader: tokio::sync::watch::Sender<bool>,
}

/// The sled database and its two trees.
struct Db {
    db: ::sled::Db,
    kv: ::sled::Tree,
    meta: ::sled::Tree,
}

impl Db {
    fn open(dir: &Path) -> Result<Self, ::sled::Error> {
        let db = ::sled::Config::new().path(dir.join("db")).open()?;
        Ok(Self {
            kv: db.open_tree("kv")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// The store revision as written in the `meta` tree.
    fn revision(&self) -> Result<Revision, ::sled::Error> {
        Ok(self.meta.get(REVISION_KEY)?.map_or(0, |v| be_u64(&v)))
    }
}

/// A big-endian u64 from the first 8 bytes (shorter input is zero-padded).
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_be_bytes(a)
}

/// A stored value: the revision that wrote it, then the value.
fn encode(revision: Revision, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// A value stored shorter than its revision prefix.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record {key:?}: {len} bytes, shorter than its 8-byte revision")]
struct CorruptRecord {
    key: String,
    len: usize,
}

fn decode(key: String, stored: &[u8]) -> Result<KeyValue, CorruptRecord> {
    if stored.len() < 8 {
        return Err(CorruptRecord {
            key,
            len: stored.len(),
        });
    }
    Ok(KeyValue {
        key,
        mod_revision: be_u64(&stored[..8]),
        value: stored[8..].to_vec(),
    })
}

/// Why a sled transaction was aborted.
enum Abort {
    Conflict,
    Corrupt(CorruptRecord),
}

/// What an applied transaction did.
enum Applied {
    /// No ops: the store is unchanged at this revision.
    Unchanged(Revision),
    /// The new revision and the changes to publish.
    Changed(Revision, Vec<WatchEvent>),
}

type TxResult<T> = Result<T, ConflictableTransactionError<Abort>>;

/// The mod_revision of `key` inside a transaction (0: absent).
fn mod_revision(kv: &TransactionalTree, key: &str) -> TxResult<Revision> {
    match kv.get(key.as_bytes())? {
        None => Ok(0),
        Some(v) if v.len() >= 8 => Ok(be_u64(&v)),
        Some(v) => Err(ConflictableTransactionError::Abort(Abort::Corrupt(
            CorruptRecord {
                key: key.to_string(),
                len: v.len(),
            },
        ))),
    }
}

/// The body of a sled transaction (may run more than once; it has no side effects outside it).
fn apply(kv: &TransactionalTree, meta: &TransactionalTree, txn: &Txn) -> TxResult<Applied> {
    for Compare::ModRevision { key, revision } in &txn.compares {
        if mod_revision(kv, key)? != *revision {
            return Err(ConflictableTransactionError::Abort(Abort::Conflict));
        }
    }
    let current = meta.get(REVISION_KEY)?.map_or(0, |v| be_u64(&v));
    if txn.ops.is_empty() {
        return Ok(Applied::Unchanged(current));
    }
    let rev = current + 1;
    let mut events = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        match op {
            Op::Put { key, value } => {
                kv.insert(key.as_bytes(), encode(rev, value))?;
                events.push(WatchEvent {
                    key: key.clone(),
                    value: Some(value.clone()),
                    revision: rev,
                });
            }
            Op::Delete { key } => {
                if kv.remove(key.as_bytes())?.is_some() {
                    events.push(WatchEvent {
                        key: key.clone(),
                        value: None,
                        revision: rev,
                    });
                }
            }
        }
    }
    meta.insert(REVISION_KEY, &rev.to_be_bytes())?;
    Ok(Applied::Changed(rev, events))
}

impl SledKv {
    /// Opens (or creates) the store in `dir` (database at `dir/db`), imports the records of the
    /// old per-type trees on first open, and keeps a disk reserve of `reserve_bytes` in `dir`
    /// (created now when the disk has room, else once it has; 0 = none).
    pub fn open(dir: &Path, reserve_bytes: u64) -> Result<SledKv, KvError> {
        Self::open_with(dir, reserve_bytes, watch::Limits::default())
    }

    fn open_with(dir: &Path, reserve_bytes: u64, limits: watch::Limits) -> Result<Self, KvError> {
        let open_err = |e: ::sled::Error| match e {
            ::sled::Error::Io(io) if crate::disk::is_out_of_space(&io) => KvError::Full {
                dir: dir.to_path_buf(),
            },
            e => KvError::Io {
                dir: dir.to_path_buf(),
                source: Box::new(e),
            },
        };
        let db = Db::open(dir).map_err(open_err)?;
        legacy::import(&db, dir).map_err(open_err)?;
        let revision = db.revision().map_err(open_err)?;
        let (leader, _) = tokio::sync::watch::channel(true);
        let kv = SledKv {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                slot: RwLock::new(Some(Arc::new(db))),
                health: Health::default(),
                reserve: Reserve::new(dir, reserve_bytes),
                commit: Arc::new(tokio::sync::Mutex::new(())),
                hub: Mutex::new(watch::Hub::new(limits, revision)),
                leader,
            }),
        };
        kv.inner.start_reserve();
        tracing::info!(dir = %dir.display(), revision, "embedded store open");
        Ok(kv)
    }

    /// The data directory the store was opened in (blobs live under `<dir>/blobs`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Makes every write so far durable, from a synchronous context (tests, shutdown).
    pub fn flush_blocking(&self) -> Result<(), KvError> {
        self.inner.flush_blocking()
    }
}

impl Inner {
    fn describe(&self) -> String {
        format!("sled:{}", self.dir.display())
    }

    fn backend(&self, e: impl std::error::Error + Send + Sync + 'static) -> KvError {
        KvError::Backend {
            store: self.describe(),
            source: Box::new(e),
        }
    }

    /// Commits one transaction: apply, flush, publish (the caller holds the commit lock).
    fn commit(&self, txn: &Txn) -> Result<TxnOutcome, KvError> {
        let db = self.w(txn.kind)?;
        let res = (&db.kv, &db.meta).transaction(|(kv, meta)| apply(kv, meta, txn));
        let (rev, events) = match res {
            Ok(Applied::Unchanged(rev)) => return Ok(TxnOutcome::Committed(rev)),
            Ok(Applied::Changed(rev, events)) => (rev, events),
            Err(TransactionError::Abort(Abort::Conflict)) => return Ok(TxnOutcome::Conflict),
            Err(TransactionError::Abort(Abort::Corrupt(c))) => return Err(self.backend(c)),
            Err(TransactionError::Storage(e)) => return Err(self.fail(e)),
        };
        db.db.flush().map_err(|e| self.fail(e))?;
        // Published while the database handle is held, so a reopen cannot come in between.
        lock(&self.hub).publish(watch::Change {
            revision: rev,
            events,
        });
        Ok(TxnOutcome::Committed(rev))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, KvError> {
        let db = self.t()?;
        let Some(v) = db.kv.get(key.as_bytes()).map_err(|e| self.backend(e))? else {
            return Ok(None);
        };
        decode(key.to_string(), &v)
            .map(Some)
            .map_err(|e| self.backend(e))
    }

    fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, KvError> {
        let db = self.t()?;
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s.as_bytes().to_vec()),
            _ => Bound::Included(prefix.as_bytes().to_vec()),
        };
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut out = Vec::new();
        for item in db.kv.range((lower, Bound::<Vec<u8>>::Unbounded)) {
            let (k, v) = item.map_err(|e| self.backend(e))?;
            if !k.starts_with(prefix.as_bytes()) || out.len() >= limit {
                break;
            }
            let key = String::from_utf8_lossy(&k).into_owned();
            out.push(decode(key, &v).map_err(|e| self.backend(e))?);
        }
        Ok(out)
    }
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: no panics while held).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl Kv for SledKv {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, KvError> {
        self.inner.get(key)
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, KvError> {
        self.inner.range(prefix, start_after, limit)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, KvError> {
        // The guard moves into the blocking task: a caller that stops waiting cannot let the
        // next commit start before this one is flushed and published.
        let guard = self.inner.commit.clone().lock_owned().await;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            inner.commit(&txn)
        })
        .await
        .map_err(|e| self.inner.backend(e))?
    }

    async fn revision(&self) -> Result<Revision, KvError> {
        Ok(lock(&self.inner.hub).revision())
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, KvError> {
        Ok(lock(&self.inner.hub).watch(self.inner.describe(), prefix, from))
    }

    async fn put_session(&self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        match self.txn(Txn::new().put(key, value)).await? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::Conflict => Err(KvError::Unavailable {
                store: self.describe(),
                reason: "a put without compares reported a conflict".into(),
            }),
        }
    }

    async fn elect(&self, name: &str, replica_id: &str) -> Result<Leadership, KvError> {
        tracing::debug!(
            name,
            replica_id,
            "embedded store: this process is the leader"
        );
        Ok(Leadership {
            is_leader: self.inner.leader.subscribe(),
        })
    }

    async fn readiness(&self) -> Result<(), KvError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readiness_blocking())
            .await
            .map_err(|e| self.inner.backend(e))?
    }
}
