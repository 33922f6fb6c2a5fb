//! The embedded store: [`Kv`] on one sled database (one process, one directory, the default).
//!
//! Layout in `DIR/db`: the tree `kv` maps each key to its value prefixed with the 8-byte
//! big-endian revision of the transaction that last wrote it; the tree `meta` holds the store
//! revision. A transaction checks its compares, applies its ops and raises the revision by one in
//! one sled transaction over both trees, is flushed (fsync) and only then published to watchers
//! (`watch.rs`) and acknowledged; a tokio mutex serialises commit, flush and publish
//! (`commit.rs`, where concurrent transactions share one flush), so watchers see revision order
//! and never a change that is not durable. Reads see the trees directly, so a read may return a
//! value whose flush is still under way (as the old store did). The store's health and its
//! recovery from I/O errors and a full disk live in `health.rs`; the one-off import of the old
//! per-record-type trees in `legacy.rs`.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::{KeyValue, Kv, KvError, Leadership, Revision, Txn, TxnOutcome, WatchStream};
use crate::disk::Reserve;

mod commit;
#[cfg(test)]
mod disk_tests;
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
    /// Serialises commit, flush and publish (held by the task committing a group).
    commit: Arc<tokio::sync::Mutex<()>>,
    /// Transactions waiting to be committed by the next group.
    queue: Mutex<commit::Queue>,
    hub: Mutex<watch::Hub>,
    /// Always `true`: one process owns the directory.
    leader: tokio::sync::watch::Sender<bool>,
}

/// sled's page cache (its default is 1 GiB, which a 100,000-node registry would fill with node
/// records it rarely reads: the fleet view answers fleet-wide reads from memory). 128 MiB: at
/// 100,000 nodes a page of 1,000 node records reads as fast as with 256 MiB (93 ms), and the
/// registry settles at 0.53 GB after reading every node instead of 0.64 GB (issue 16).
const CACHE_BYTES: u64 = 128 * 1024 * 1024;

/// The sled database and its two trees.
struct Db {
    db: ::sled::Db,
    kv: ::sled::Tree,
    meta: ::sled::Tree,
}

impl Db {
    fn open(dir: &Path) -> Result<Self, ::sled::Error> {
        let db = ::sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            // Every commit is flushed by the store itself; sled's own flusher thread would also
            // write and fsync twice a second with nothing to store.
            .flush_every_ms(None)
            .open()?;
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
                queue: Mutex::new(commit::Queue::default()),
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

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, KvError> {
        keys.iter().map(|k| self.inner.get(k)).collect()
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
        commit::txn(&self.inner, txn).await
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
