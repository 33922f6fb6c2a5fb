//! The audit trail (`audit/{time in ns, 20 digits}-{random}`): one record per write, in time
//! order, with no counter shared between replicas.

use chrono::{DateTime, Utc};
use steward_proto::AuditRecord;

use super::{dec, enc, Result, Store};
use crate::kv::Txn;

const AUDIT: &str = "audit/";

/// The key prefix of records at or after `t` (20-digit nanoseconds since 1970).
pub fn audit_id_at(t: DateTime<Utc>) -> String {
    format!("{:020}", t.timestamp_nanos_opt().unwrap_or(i64::MAX).max(0))
}

impl Store {
    /// Appends a record under its `id` (which starts with [`audit_id_at`] its time).
    pub async fn append_audit(&self, rec: &AuditRecord) -> Result<()> {
        self.commit(Txn::new().put(format!("{AUDIT}{}", rec.id), enc(rec)))
            .await
            .map(drop)
    }

    /// Up to `limit` records after the id `after` (exclusive), oldest first.
    pub async fn audit_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>> {
        let start = after.map(|a| format!("{AUDIT}{a}"));
        self.kv
            .range(AUDIT, start.as_deref(), limit)
            .await?
            .iter()
            .map(dec)
            .collect()
    }

    /// Deletes up to `limit` of the oldest records from before `before`; returns how many.
    pub async fn trim_audit(&self, before: DateTime<Utc>, limit: usize) -> Result<usize> {
        let old = self.kv.range(AUDIT, None, limit).await?;
        let cut = format!("{AUDIT}{}", audit_id_at(before));
        let mut txn = Txn::new().freeing();
        let mut n = 0;
        for kv in old.iter().take_while(|kv| kv.key < cut) {
            txn = txn.delete(kv.key.clone());
            n += 1;
        }
        if n > 0 {
            self.commit(txn).await?;
        }
        Ok(n)
    }
}
