//! Pending webhook deliveries (`alerts/{delivery-id}`): one record per alert and webhook, stored
//! when the alert is raised and removed once delivered or given up, so retries survive the
//! replica that raised them. Every change after the first is compared on the record's revision.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{dec, enc, Result, Store, StoreError};
use crate::kv::{Revision, Txn, TxnOutcome};

const PREFIX: &str = "alerts/";

/// One alert to send to one webhook, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The delivery id (a UUID), sent as `x-steward-delivery`: the same on every attempt.
    pub id: String,
    pub alert_id: String,
    /// The alert kind (`x-steward-alert`).
    pub kind: String,
    pub node_id: String,
    /// Identifies the webhook: hex sha256 of its configured URL (which may hold a credential).
    pub webhook: String,
    /// The webhook URL without query or credentials, for logs and events.
    pub shown: String,
    /// The exact JSON body sent (signed as is).
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this time.
    pub next_attempt: DateTime<Utc>,
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

impl Store {
    /// Stores new deliveries (all or none).
    pub async fn add_deliveries(&self, ds: &[DeliveryRecord]) -> Result<()> {
        let mut txn = Txn::new();
        for d in ds {
            txn = txn.when(key(&d.id), 0).put(key(&d.id), enc(d));
        }
        self.commit(txn).await.map(drop)
    }

    /// Every pending delivery with its revision, in delivery id order.
    pub async fn deliveries(&self) -> Result<Vec<(DeliveryRecord, Revision)>> {
        self.kv
            .range(PREFIX, None, 0)
            .await?
            .iter()
            .map(|kv| Ok((dec(kv)?, kv.mod_revision)))
            .collect()
    }

    /// A pending delivery with its revision.
    pub async fn delivery(&self, id: &str) -> Result<Option<(DeliveryRecord, Revision)>> {
        self.get(&key(id)).await
    }

    /// Stores the outcome of a failed attempt if the record is still at `rev`; returns its new
    /// revision, or `None` when another writer changed or removed it meanwhile.
    pub async fn save_delivery(
        &self,
        d: &DeliveryRecord,
        rev: Revision,
    ) -> Result<Option<Revision>> {
        let txn = Txn::new().when(key(&d.id), rev).put(key(&d.id), enc(d));
        match self.kv.txn(txn).await? {
            TxnOutcome::Committed(r) => Ok(Some(r)),
            TxnOutcome::Conflict => Ok(None),
        }
    }

    /// Removes a delivered or given-up delivery if it is still at `rev`; `false` when another
    /// writer changed or removed it meanwhile.
    pub async fn finish_delivery(&self, id: &str, rev: Revision) -> Result<bool> {
        let txn = Txn::new().freeing().when(key(id), rev).delete(key(id));
        match self.commit(txn).await {
            Ok(_) => Ok(true),
            Err(StoreError::Stale) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
