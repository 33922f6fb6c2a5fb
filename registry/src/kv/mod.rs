//! The registry's key-value store interface ([`Kv`]) and its two implementations: the embedded
//! sled store (`sled.rs`, one machine, the default) and etcd (`etcd.rs`, several replicas).
//!
//! Everything the registry persists goes through this interface: string keys (`<prefix>/<id>`),
//! opaque values, one store-wide revision raised by every committed transaction, transactions
//! whose compares are on a key's `mod_revision` (optimistic concurrency: read, compute, commit
//! only if nothing changed in between, else retry), prefix reads in key order, watches from a
//! revision, process-lifetime ("session") keys and a leader election for the jobs that must
//! run on one replica at a time. `registry/tests/kv_conformance.rs` is the one test suite both
//! implementations pass. The typed records and their keys live in `store/`; nothing else imports sled or etcd.

use std::pin::Pin;

use futures_util::Stream;

/// A store revision: raised by one for every committed transaction that changed something.
/// `0` means "before anything was written".
pub type Revision = u64;

/// One stored key with its value and the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the transaction that last wrote this key.
    pub mod_revision: Revision,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals this one; `0` means "the key does not exist".
    ModRevision { key: String, revision: Revision },
}

/// A change made by a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting a key that does not exist is not an error.
    Delete {
        key: String,
    },
}

/// What a transaction is for, which decides whether it may run when the disk is short of space:
/// `Freeing` writes (deletions, the events recording them) may use the embedded store's disk
/// reserve; `Ordinary` ones are refused with [`KvError::Full`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteKind {
    #[default]
    Ordinary,
    Freeing,
}

/// An atomic transaction: if every compare holds, every op is applied, all or nothing, and the
/// result is durable before [`Kv::txn`] returns.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    pub kind: WriteKind,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn freeing(mut self) -> Self {
        self.kind = WriteKind::Freeing;
        self
    }
    /// Requires `key` to be at `revision` (`0`: absent).
    pub fn when(mut self, key: impl Into<String>, revision: Revision) -> Self {
        self.compares.push(Compare::ModRevision {
            key: key.into(),
            revision,
        });
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
}

/// The result of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Applied; the store is now at this revision (unchanged when there were no ops).
    Committed(Revision),
    /// A compare failed; nothing was changed. Re-read and try again.
    Conflict,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    /// The new value; `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
    /// Revision of the transaction that made the change.
    pub revision: Revision,
}

/// Changes under a prefix, in revision order; the changes of one transaction arrive together.
/// Ends with an error when the watch cannot continue (for example [`KvError::Compacted`]); the
/// caller re-reads and watches again.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<WatchEvent>, KvError>> + Send>>;

/// Errors of a store backend. Messages name the store so that an operator knows where to look.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The disk holding the embedded store is full: writes are refused until space is freed.
    #[error(
        "registry store at {} is out of disk space (ENOSPC): free space or delete payload versions",
        .dir.display()
    )]
    Full { dir: std::path::PathBuf },
    /// The embedded store cannot write (an I/O error); it is reopened at the next write or
    /// readiness check.
    #[error("registry store at {} cannot write: {source}", .dir.display())]
    Io {
        dir: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store cannot be reached or has no quorum (etcd), or is being reopened (sled).
    #[error("registry store {store} is unavailable: {reason}")]
    Unavailable { store: String, reason: String },
    /// A watch asked for changes older than the store still keeps.
    #[error("revision {requested} of store {store} was compacted (oldest kept: {oldest})")]
    Compacted {
        store: String,
        requested: Revision,
        oldest: Revision,
    },
    /// Any other backend error, with its source.
    #[error("registry store {store}: {source}")]
    Backend {
        store: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Leadership of one named job group, as seen by this process.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// `true` while this process holds the leadership; turns `false` as soon as it may have been
    /// lost (lease expired or not renewed in time), before another process can hold it.
    pub is_leader: tokio::sync::watch::Receiver<bool>,
}

/// The store interface. Implementations: `sled::SledKv`, `etcd::EtcdKv`.
#[async_trait::async_trait]
pub trait Kv: Send + Sync + 'static {
    /// A short description for errors and logs (`sled:/var/lib/steward-registry`,
    /// `etcd://h1:2379,h2:2379/steward`).
    fn describe(&self) -> String;

    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, KvError>;

    /// Several keys, each as [`Kv::get`] answers it, in the order asked (`None`: absent); a
    /// key asked twice is answered twice. Not one snapshot: each key is as it was when read. For
    /// pages of records: far fewer round trips than one `get` per key (etcd: read-only
    /// transactions of many gets).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, KvError>;

    /// Keys starting with `prefix`, in key order, starting after `start_after` (exclusive) when
    /// given, at most `limit` (0 = no limit).
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, KvError>;

    /// Applies a transaction (see [`Txn`]); durable before it returns `Committed`.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, KvError>;

    /// The store's current revision.
    async fn revision(&self) -> Result<Revision, KvError>;

    /// Changes of keys under `prefix` with a revision `>= from` (`from = revision() + 1` for
    /// "from now on").
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, KvError>;

    /// Stores a key that lives as long as this process keeps its session with the store (etcd:
    /// attached to a lease kept alive by this process; sled: an ordinary key, since there is one
    /// process). Used for replica membership and heartbeat batches.
    async fn put_session(&self, key: &str, value: Vec<u8>) -> Result<(), KvError>;

    /// Campaigns for leadership of `name` in the background, for as long as the process runs.
    /// sled: always the leader (one process owns the directory).
    async fn elect(&self, name: &str, replica_id: &str) -> Result<Leadership, KvError>;

    /// Checks that the store can serve writes (used by `/readyz`).
    async fn readiness(&self) -> Result<(), KvError>;
}

pub mod etcd;
pub mod sled;
