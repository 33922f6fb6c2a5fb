//! Re-enrolment grants (`grants/{id}`): one host may enrol once as an existing node (hash only,
//! one use, expiring).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{enc, Result, Store, StoreError, Update};
use crate::kv::Txn;

/// A re-enrolment grant as stored (hash only): lets one host enrol once as node `node_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRecord {
    pub id: String,
    pub node_id: String,
    pub secret_sha256: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Stores a grant and drops the expired ones (grants are few: one per reinstall).
    pub async fn put_grant(&self, g: &GrantRecord, now: DateTime<Utc>) -> Result<()> {
        let mut txn = Txn::new();
        for (id, old) in self.list::<GrantRecord>("grants/").await? {
            if old.expires_at <= now {
                txn = txn.delete(format!("grants/{id}"));
            }
        }
        txn = txn.put(format!("grants/{}", g.id), enc(g));
        self.commit(txn).await.map(drop)
    }

    pub async fn grant(&self, id: &str) -> Result<Option<GrantRecord>> {
        self.value(&format!("grants/{id}")).await
    }

    /// Removes a grant (its one use); `false` when it was already gone.
    pub async fn take_grant(&self, id: &str) -> Result<bool> {
        let key = format!("grants/{id}");
        self.update(
            &key,
            false,
            "grant use",
            |old: Option<GrantRecord>| match old {
                Some(_) => Update::Delete(true),
                None => Update::Keep(false),
            },
        )
        .await
        .or_else(|e| match e {
            StoreError::Stale => Ok(false),
            e => Err(e),
        })
    }
}
