//! Re-enrolment grants in the store's tree `reenroll_grants`: one host may enrol once as an
//! existing node (hash only, one use, expiring).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{dec, enc, health, Result, Store};

/// A re-enrolment grant as stored (hash only): lets one host enrol once as node `node_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRecord {
    pub id: String,
    pub node_id: String,
    pub secret_sha256: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Re-enrolment grants, in the tree `reenroll_grants`.
impl Store {
    /// Stores a grant and drops the expired ones (grants are few: one per reinstall).
    pub fn put_grant(&self, g: &GrantRecord, now: DateTime<Utc>) -> Result<()> {
        let t = self.w(health::WriteKind::Ordinary)?;
        for kv in t.grants.iter() {
            let (k, v) = kv?;
            let old: GrantRecord = dec("reenroll_grants", &v)?;
            if old.expires_at <= now {
                t.grants.remove(k).map_err(|e| self.fail(e))?;
            }
        }
        t.grants
            .insert(g.id.as_bytes(), enc(g))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub fn grant(&self, id: &str) -> Result<Option<GrantRecord>> {
        self.t()?
            .grants
            .get(id)?
            .map(|b| dec("reenroll_grants", &b))
            .transpose()
    }

    /// Removes a grant (its one use); `false` when it was already gone.
    pub fn take_grant(&self, id: &str) -> Result<bool> {
        let t = self.w(health::WriteKind::Ordinary)?;
        Ok(t.grants.remove(id).map_err(|e| self.fail(e))?.is_some())
    }
}
