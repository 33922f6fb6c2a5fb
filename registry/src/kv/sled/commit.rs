//! Commits of the embedded store, in groups: callers queue their transaction; whoever holds the
//! commit lock takes every queued one, applies each in its own sled transaction over `kv` and
//! `meta` (its own revision), flushes once (fsync), then publishes the changes in revision order
//! and answers each caller. So nothing is acknowledged or seen by a watcher before it is
//! durable, and concurrent writers share an fsync instead of queueing for one each.

use std::sync::{Arc, Weak};

use ::sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use ::sled::Transactional;
use tokio::sync::oneshot;

use super::{be_u64, encode, lock, watch, CorruptRecord, Db, Inner, REVISION_KEY};
use crate::kv::{Compare, KvError, Op, Revision, Txn, TxnOutcome, WatchEvent, WriteKind};

type Reply = oneshot::Sender<Result<TxnOutcome, KvError>>;

/// A transaction waiting for a group.
pub(super) struct Pending {
    id: u64,
    txn: Txn,
    reply: Reply,
}

/// The transactions waiting for the next group.
#[derive(Default)]
pub(super) struct Queue {
    last_id: u64,
    waiting: Vec<Pending>,
}

/// Takes a transaction out of the queue when its caller stops waiting before a group took it
/// (so that it is not committed later, out of the blue).
struct Enqueued<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for Enqueued<'_> {
    fn drop(&mut self) {
        lock(&self.inner.queue).waiting.retain(|p| p.id != self.id);
    }
}

/// Commits `txn` (see [`crate::kv::Kv::txn`]).
pub(super) async fn txn(inner: &Arc<Inner>, txn: Txn) -> Result<TxnOutcome, KvError> {
    let (reply, mut answer) = oneshot::channel();
    let id = {
        let mut q = lock(&inner.queue);
        q.last_id += 1;
        let id = q.last_id;
        q.waiting.push(Pending { id, txn, reply });
        id
    };
    let _enqueued = Enqueued { inner, id };
    let guard = inner.commit.clone().lock_owned().await;
    // Answered by the group that held the lock before?
    if let Ok(res) = answer.try_recv() {
        return res;
    }
    let batch = std::mem::take(&mut lock(&inner.queue).waiting);
    let group_inner = inner.clone();
    // The guard moves into the blocking task: a caller that stops waiting cannot let the next
    // group start before this one is flushed and published.
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        group_inner.commit_group(batch);
    })
    .await
    .map_err(|e| inner.backend(e))?;
    answer.await.map_err(|e| inner.backend(e))?
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

/// The body of a sled transaction (may run more than once; no side effects outside it).
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

/// Transactions applied in memory, answered once flushed.
#[derive(Default)]
struct Group {
    /// The database they were applied to (not held: a reopen must not wait for the group).
    db: Option<Weak<Db>>,
    applied: Vec<(Reply, TxnOutcome, Option<watch::Change>)>,
}

impl Inner {
    /// Applies, flushes and publishes a group of transactions, answering each.
    fn commit_group(&self, batch: Vec<Pending>) {
        let mut group = Group::default();
        for Pending { txn, reply, .. } in batch {
            // A transaction without ops writes nothing: it is answered on a full disk too.
            let kind = if txn.ops.is_empty() {
                WriteKind::Freeing
            } else {
                txn.kind
            };
            let db = match self.w(kind) {
                Ok(db) => db,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            if group
                .db
                .as_ref()
                .is_some_and(|d| !Weak::ptr_eq(d, &Arc::downgrade(&db)))
            {
                self.abandon(&mut group, &self.reopened());
            }
            group.db = Some(Arc::downgrade(&db));
            let res = (&db.kv, &db.meta).transaction(|(kv, meta)| apply(kv, meta, &txn));
            drop(db);
            let (outcome, change) = match res {
                Ok(Applied::Unchanged(rev)) => (TxnOutcome::Committed(rev), None),
                Ok(Applied::Changed(revision, events)) => (
                    TxnOutcome::Committed(revision),
                    Some(watch::Change { revision, events }),
                ),
                Err(TransactionError::Abort(Abort::Conflict)) => (TxnOutcome::Conflict, None),
                Err(TransactionError::Abort(Abort::Corrupt(c))) => {
                    let _ = reply.send(Err(self.backend(c)));
                    continue;
                }
                Err(TransactionError::Storage(e)) => {
                    let err = self.fail(e);
                    self.abandon(&mut group, &err);
                    let _ = reply.send(Err(err));
                    continue;
                }
            };
            group.applied.push((reply, outcome, change));
        }
        self.finish(group);
    }

    /// Flushes the group's changes, publishes them in order, and answers.
    fn finish(&self, mut group: Group) {
        if group.applied.iter().any(|(_, _, c)| c.is_some()) {
            let Some(db) = group.db.as_ref().and_then(Weak::upgrade) else {
                return self.abandon(&mut group, &self.reopened());
            };
            if let Err(e) = db.db.flush() {
                let err = self.fail(e);
                return self.abandon(&mut group, &err);
            }
            // Published while the database handle is held, so a reopen cannot come in between.
            let mut hub = lock(&self.hub);
            for (_, _, change) in &mut group.applied {
                if let Some(c) = change.take() {
                    hub.publish(c);
                }
            }
        }
        for (reply, outcome, _) in group.applied {
            let _ = reply.send(Ok(outcome));
        }
    }

    /// Answers every transaction of the group with `err`: what they changed was not flushed.
    fn abandon(&self, group: &mut Group, err: &KvError) {
        for (reply, _, _) in group.applied.drain(..) {
            let _ = reply.send(Err(self.copy_error(err)));
        }
    }

    fn reopened(&self) -> KvError {
        KvError::Unavailable {
            store: self.describe(),
            reason: "the store was reopened after an error before this write was flushed".into(),
        }
    }

    /// The same error for another caller.
    fn copy_error(&self, e: &KvError) -> KvError {
        match e {
            KvError::Full { dir } => KvError::Full { dir: dir.clone() },
            KvError::Io { dir, source } => KvError::Io {
                dir: dir.clone(),
                source: source.to_string().into(),
            },
            KvError::Unavailable { store, reason } => KvError::Unavailable {
                store: store.clone(),
                reason: reason.clone(),
            },
            KvError::Compacted {
                store,
                requested,
                oldest,
            } => KvError::Compacted {
                store: store.clone(),
                requested: *requested,
                oldest: *oldest,
            },
            KvError::Backend { store, source } => KvError::Backend {
                store: store.clone(),
                source: source.to_string().into(),
            },
        }
    }
}
