//! Rollout records (`rollouts/{id}`, opaque JSON owned by `rollout/`), each change stored in
//! one transaction with the event that records it, and only if the record is still the one the
//! change was computed from: a rollout step is done exactly once, even when a replica that lost
//! its leadership tries it too.

use serde::{de::DeserializeOwned, Serialize};
use steward_proto::Event;

use super::{enc, event_key, Result, Store, StoreError, CAS_ATTEMPTS, EVENT_SEQ};
use crate::kv::{Revision, Txn};

impl Store {
    /// A stored rollout record.
    pub async fn rollout<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        self.value(&format!("rollouts/{id}")).await
    }

    /// A stored rollout record and its revision.
    pub async fn rollout_rev<T: DeserializeOwned>(
        &self,
        id: &str,
    ) -> Result<Option<(T, Revision)>> {
        self.get(&format!("rollouts/{id}")).await
    }

    pub async fn rollouts<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.values("rollouts/").await
    }

    /// Stores a rollout record and the event recording the change, in one transaction, if the
    /// record is still at `revision` (`0`: new); [`StoreError::Stale`] otherwise (someone else
    /// changed the rollout: read it again). Returns the event, numbered.
    pub async fn put_rollout_logged<T: Serialize>(
        &self,
        id: &str,
        r: &T,
        revision: Revision,
        mut event: Event,
    ) -> Result<Event> {
        let key = format!("rollouts/{id}");
        for attempt in 0..CAS_ATTEMPTS {
            // After a conflict: was it the rollout (stale, give up) or the event number (retry)?
            if attempt > 0
                && self
                    .get::<serde_json::Value>(&key)
                    .await?
                    .map_or(0, |(_, rev)| rev)
                    != revision
            {
                return Err(StoreError::Stale);
            }
            let (last, seq_rev) = self.get::<u64>(EVENT_SEQ).await?.unwrap_or((0, 0));
            event.seq = last + 1;
            let txn = Txn::new()
                .when(key.clone(), revision)
                .when(EVENT_SEQ, seq_rev)
                .put(key.clone(), enc(r))
                .put(event_key(event.seq), enc(&event))
                .put(EVENT_SEQ, enc(&event.seq));
            match self.commit(txn).await {
                Ok(_) => return Ok(event),
                // Either the rollout changed (caught on the next turn) or another event was
                // numbered meanwhile (number again). The first attempt reads neither back.
                Err(StoreError::Stale) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Busy { what: "rollout" })
    }
}
