//! The spec gate: what serialises changes that depend on the set of specs (spec, fragment and
//! label writes, rollout overrides, enrolments, decommissioning, payload deletion). In this
//! process a lock; across replicas the store's spec epoch, read under the lock, which a change
//! commits against (`StoreError::Stale` when another replica's change committed first).

use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard};

use crate::kv::Revision;
use crate::store::{Store, StoreError};

/// How often a spec change is computed again when another replica's change committed first.
pub const ATTEMPTS: usize = 16;

/// This process's spec lock and the store it reads the spec epoch from.
#[derive(Clone)]
pub struct SpecGate {
    store: Store,
    lock: Arc<Mutex<()>>,
}

/// Held while a spec change is computed and written: this process's spec lock, and the spec
/// epoch read under it (the change commits only if no other replica's change did meanwhile).
pub struct SpecGuard {
    _lock: OwnedMutexGuard<()>,
    pub epoch: Revision,
}

impl SpecGate {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            lock: Default::default(),
        }
    }

    /// This process's lock alone (what is then read of the store holds until it is written).
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// The lock, then the spec epoch under it.
    pub async fn take(&self) -> Result<SpecGuard, StoreError> {
        let lock = self.lock.clone().lock_owned().await;
        let epoch = self.store.spec_epoch().await?;
        Ok(SpecGuard { _lock: lock, epoch })
    }
}
