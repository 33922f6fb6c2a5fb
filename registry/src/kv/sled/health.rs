//! The embedded store's health and its recovery without a restart (moved from
//! `store/health.rs`). A sled I/O error marks the store failed; since sled 0.34 keeps that error
//! and fails every later write, the database is reopened (its log recovered to the last flushed
//! write) at the next read, write or readiness check. A full disk first releases the disk
//! reserve (`disk.rs`), so that reopening and `Freeing` writes (deletions, the way to free space)
//! can be written; `Ordinary` writes are refused with [`KvError::Full`] until the disk has room
//! for the reserve and as much again, when the reserve is re-created.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{lock, Db, Inner};
use crate::disk;
use crate::kv::{KvError, WriteKind};

/// How often a failed reopen is tried again at most.
const REOPEN_RETRY: Duration = Duration::from_secs(1);
/// How long a reopen waits for requests still holding the old database.
const HANDLES_WAIT: Duration = Duration::from_secs(5);
/// How long a reopen waits for the old database to close. sled flushes a database when it is
/// dropped, and after some ENOSPC errors that flush never returns; the store then stays
/// unavailable (answering at once, never hanging) until the registry is restarted.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Failure {
    full: bool,
    reason: String,
}

#[derive(Debug, Default)]
struct State {
    failure: Option<Failure>,
    needs_reopen: bool,
    last_reopen: Option<Instant>,
    /// The old database did not close: no reopen can succeed in this process.
    stuck: bool,
}

/// Health of one store.
#[derive(Debug, Default)]
pub(super) struct Health {
    state: Mutex<State>,
    /// Serialises recoveries (the state lock is only ever held briefly).
    recovery: Mutex<()>,
}

impl Inner {
    /// The open database (for reads), reopened first after a failed write, so that reads do
    /// not show writes that were refused.
    pub(super) fn t(&self) -> Result<Arc<Db>, KvError> {
        if lock(&self.health.state).needs_reopen {
            drop(self.recover(WriteKind::Freeing));
        }
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| KvError::Unavailable {
                store: self.describe(),
                reason: "it is being reopened after an error".into(),
            })
    }

    /// The open database for a write of `kind`: recovers a failed store first, and refuses an
    /// ordinary write while the disk is full.
    pub(super) fn w(&self, kind: WriteKind) -> Result<Arc<Db>, KvError> {
        if lock(&self.health.state).failure.is_none() {
            return self.t();
        }
        self.recover(kind)
    }

    /// Records a sled error of a write; returns the error to answer with.
    pub(super) fn fail(&self, e: ::sled::Error) -> KvError {
        let ::sled::Error::Io(io) = &e else {
            return self.backend(e);
        };
        let full = disk::is_out_of_space(io);
        {
            let mut st = lock(&self.health.state);
            if st.failure.is_none() {
                tracing::error!(dir = %self.dir.display(), error = %e, full,
                    "store write failed: writes are refused until the store recovers");
            }
            st.failure = Some(Failure {
                full,
                reason: e.to_string(),
            });
            st.needs_reopen = true;
        }
        if full {
            self.reserve.release();
            KvError::Full {
                dir: self.dir.clone(),
            }
        } else {
            KvError::Io {
                dir: self.dir.clone(),
                source: Box::new(e),
            }
        }
    }

    /// Creates the disk reserve at start-up when there is room (a warning otherwise: it is
    /// created once the store has recovered from a full disk).
    pub(super) fn start_reserve(&self) {
        if let Err(e) = self.reserve.create() {
            tracing::warn!(dir = %self.dir.display(), bytes = self.reserve.bytes(), error = %e,
                "could not create the store's disk reserve");
        }
    }

    /// Ready when the store can write: recovers it if it can, re-creates the reserve when
    /// there is room, and surfaces an error sled's background flush met.
    pub(super) fn readiness_blocking(&self) -> Result<(), KvError> {
        drop(self.w(WriteKind::Ordinary)?);
        if !self.reserve.held() && self.has_room() {
            self.start_reserve();
        }
        self.flush_blocking()
    }

    /// Makes every write so far durable.
    pub(super) fn flush_blocking(&self) -> Result<(), KvError> {
        let db = self.w(WriteKind::Freeing)?;
        db.db.flush().map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// True when the disk has room for the reserve (if released) and as much again.
    fn has_room(&self) -> bool {
        let want = if self.reserve.held() {
            0
        } else {
            self.reserve.bytes()
        } + self.reserve.bytes().max(disk::MIN_HEADROOM);
        disk::available_bytes(&self.dir).is_ok_and(|a| a >= want)
    }

    fn failure_error(&self, f: &Failure) -> KvError {
        if f.full {
            KvError::Full {
                dir: self.dir.clone(),
            }
        } else {
            KvError::Unavailable {
                store: self.describe(),
                reason: f.reason.clone(),
            }
        }
    }

    fn recover(&self, kind: WriteKind) -> Result<Arc<Db>, KvError> {
        let _one = lock(&self.health.recovery);
        let (failure, reopen) = {
            let st = lock(&self.health.state);
            let Some(f) = st.failure.clone() else {
                drop(st);
                return self.t();
            };
            if st.stuck {
                return Err(self.failure_error(&f));
            }
            let due = st.last_reopen.is_none_or(|t| t.elapsed() >= REOPEN_RETRY);
            (f, st.needs_reopen && due)
        };
        if failure.full {
            self.reserve.release();
        }
        if reopen {
            lock(&self.health.state).last_reopen = Some(Instant::now());
            if let Err(e) = self.reopen() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "reopening the store failed");
                return Err(match lock(&self.health.state).failure.clone() {
                    Some(f) => self.failure_error(&f),
                    None => e,
                });
            }
            lock(&self.health.state).needs_reopen = false;
        } else if lock(&self.health.state).needs_reopen {
            return Err(self.failure_error(&failure));
        }
        if !failure.full || self.has_room() {
            match self.reserve.create() {
                Err(e) if disk::is_out_of_space(&e) => return Err(self.failure_error(&failure)),
                Err(e) => tracing::warn!(error = %e, "could not re-create the disk reserve"),
                Ok(()) => {}
            }
            lock(&self.health.state).failure = None;
            tracing::info!(dir = %self.dir.display(), "store writable again");
            return self.t();
        }
        match kind {
            WriteKind::Freeing => self.t(),
            WriteKind::Ordinary => Err(self.failure_error(&failure)),
        }
    }

    /// Drops the old database on a thread of its own and waits at most [`CLOSE_WAIT`] for it;
    /// when it does not close, the store is marked stuck (the thread is left behind).
    fn close(&self, old: Arc<Db>) -> Result<(), KvError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let closing = std::thread::Builder::new()
            .name("sled-close".into())
            .spawn(move || {
                drop(old);
                let _ = tx.send(());
            });
        if closing.is_err() || rx.recv_timeout(CLOSE_WAIT).is_ok() {
            return Ok(());
        }
        let reason = "the database did not close after a write error (sled could not flush it): \
                      restart the registry";
        tracing::error!(dir = %self.dir.display(), "{reason}");
        let mut st = lock(&self.health.state);
        st.stuck = true;
        st.failure = Some(Failure {
            full: false,
            reason: reason.into(),
        });
        Err(KvError::Unavailable {
            store: self.describe(),
            reason: reason.into(),
        })
    }

    /// Drops the database (once no request holds it any more) and opens it again. When the
    /// reopened database is at another revision than the watchers were told (a write whose
    /// flush failed made it to disk after all), the watch history restarts there.
    fn reopen(&self) -> Result<(), KvError> {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + HANDLES_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if Arc::strong_count(&old) > 1 {
                *slot = Some(old);
                return Err(KvError::Unavailable {
                    store: self.describe(),
                    reason: "requests still hold the database".into(),
                });
            }
            self.close(old)?;
        }
        // sled's lock on its files can outlive the last handle by a moment.
        let mut tries = 0;
        let db = loop {
            match Db::open(&self.dir) {
                Ok(db) => break db,
                Err(e) if tries < 40 && e.to_string().contains("lock") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(self.fail(e)),
            }
        };
        let revision = db.revision().map_err(|e| self.fail(e))?;
        lock(&self.hub).reopened_at(revision);
        *slot = Some(Arc::new(db));
        tracing::info!(dir = %self.dir.display(), revision, "store reopened");
        Ok(())
    }
}
