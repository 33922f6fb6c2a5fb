//! The embedded store's watches: an in-memory history of the last committed transactions and a
//! broadcast of new ones. A watcher takes the history from its revision and subscribes under
//! the same lock as a commit publishes, so it sees every change once, in revision order. A
//! revision older than the history (or from before this process opened the database) gives one
//! `Compacted` error; a watcher that falls behind the broadcast buffer gets an error and ends.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::kv::{KvError, Revision, WatchEvent, WatchStream};

/// Transactions kept in the history: a watcher can resume from any of the last 65,536 committed
/// transactions (at least minutes of a busy registry; older revisions get `Compacted`).
pub(super) const HISTORY_TXNS: usize = 65_536;
/// Bytes of keys and values kept in the history at most (whichever bound is reached first):
/// large spec writes must not make the history the registry's biggest memory user.
pub(super) const HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// Transactions a live watcher may be behind before it gets an error (its stream ends and it
/// watches again, from the history).
pub(super) const LIVE_BUFFER: usize = 4096;

/// The bounds of the history and of the live buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub txns: usize,
    pub bytes: usize,
    pub live: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            txns: HISTORY_TXNS,
            bytes: HISTORY_BYTES,
            live: LIVE_BUFFER,
        }
    }
}

/// The changes of one committed transaction (possibly none: a delete of absent keys).
#[derive(Debug)]
pub(super) struct Change {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

impl Change {
    fn bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.key.len() + e.value.as_ref().map_or(0, Vec::len) + 48)
            .sum::<usize>()
            + 32
    }

    /// The changes under `prefix`.
    fn under(&self, prefix: &str) -> Vec<WatchEvent> {
        self.events
            .iter()
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Change(Arc<Change>),
    /// The database was reopened at this revision, which watchers were not told about.
    Reset(Revision),
}

/// The history and the broadcast.
pub(super) struct Hub {
    limits: Limits,
    /// Last published (durable) revision.
    revision: Revision,
    /// Every revision above this one is in `history`.
    complete_after: Revision,
    history: VecDeque<Arc<Change>>,
    bytes: usize,
    tx: broadcast::Sender<Msg>,
}

impl Hub {
    /// A hub for a database opened at `revision` (older changes are unknown).
    pub(super) fn new(limits: Limits, revision: Revision) -> Self {
        let (tx, _) = broadcast::channel(limits.live.max(1));
        Self {
            limits,
            revision,
            complete_after: revision,
            history: VecDeque::new(),
            bytes: 0,
            tx,
        }
    }

    pub(super) fn revision(&self) -> Revision {
        self.revision
    }

    /// Records a durable transaction and sends it to the live watchers.
    pub(super) fn publish(&mut self, change: Change) {
        let change = Arc::new(change);
        self.revision = change.revision;
        self.bytes += change.bytes();
        self.history.push_back(change.clone());
        while self.history.len() > self.limits.txns
            || (self.bytes > self.limits.bytes && self.history.len() > 1)
        {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.bytes -= old.bytes();
            self.complete_after = old.revision;
        }
        // No receiver is not an error.
        let _ = self.tx.send(Msg::Change(change));
    }

    /// The database was reopened after an error at `revision`: when that is not the revision
    /// published last, watchers missed a change, so the history restarts there and every live
    /// watcher gets an error.
    pub(super) fn reopened_at(&mut self, revision: Revision) {
        if revision == self.revision {
            return;
        }
        tracing::warn!(
            published = self.revision,
            revision,
            "store reopened at another revision than published: watchers start again"
        );
        self.revision = revision;
        self.complete_after = revision;
        self.history.clear();
        self.bytes = 0;
        let _ = self.tx.send(Msg::Reset(revision));
    }

    /// A watch of `prefix` from `from` (0: from now on, as etcd does).
    pub(super) fn watch(&self, store: String, prefix: &str, from: Revision) -> WatchStream {
        let from = if from == 0 { self.revision + 1 } else { from };
        if from <= self.complete_after {
            let err = KvError::Compacted {
                store,
                requested: from,
                oldest: self.complete_after + 1,
            };
            return Box::pin(futures_util::stream::once(async move { Err(err) }));
        }
        let backlog: Vec<_> = self
            .history
            .iter()
            .filter(|c| c.revision >= from)
            .map(|c| c.under(prefix))
            .filter(|evs| !evs.is_empty())
            .map(Ok)
            .collect();
        let live = Live {
            rx: self.tx.subscribe(),
            seen: self.revision,
            from,
            prefix: prefix.to_string(),
            store,
        };
        let live = futures_util::stream::unfold(Some(live), |live| async move {
            let mut live = live?;
            let item = live.next().await?;
            let go_on = item.is_ok();
            Some((item, go_on.then_some(live)))
        });
        Box::pin(futures_util::stream::iter(backlog).chain(live))
    }
}

/// The live part of a watch.
struct Live {
    rx: broadcast::Receiver<Msg>,
    /// Last revision received.
    seen: Revision,
    from: Revision,
    prefix: String,
    store: String,
}

impl Live {
    /// The next item: changes under the prefix, or the error that ends the watch; `None` when
    /// the store is gone.
    async fn next(&mut self) -> Option<Result<Vec<WatchEvent>, KvError>> {
        loop {
            match self.rx.recv().await {
                Ok(Msg::Change(c)) => {
                    self.seen = c.revision;
                    if c.revision < self.from {
                        continue;
                    }
                    let evs = c.under(&self.prefix);
                    if !evs.is_empty() {
                        return Some(Ok(evs));
                    }
                }
                Ok(Msg::Reset(rev)) => {
                    return Some(Err(KvError::Unavailable {
                        store: self.store.clone(),
                        reason: format!(
                            "the store was reopened after an error at revision {rev}, after \
                             revision {} was published: read again and watch from there",
                            self.seen
                        ),
                    }))
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some(Err(KvError::Unavailable {
                        store: self.store.clone(),
                        reason: format!(
                            "the watcher fell {n} transactions behind after revision {}: watch \
                             again from revision {}",
                            self.seen,
                            self.seen.max(self.from - 1) + 1
                        ),
                    }))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
