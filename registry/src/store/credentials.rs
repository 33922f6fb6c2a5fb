//! Named API credentials (`credentials/{name}`): role, scope, lifetime, the secret's hash only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use steward_proto::Role;

use super::{enc, Result, Store, StoreError, Update};
use crate::kv::Txn;

/// Key prefix of the named credentials.
pub const CREDENTIALS: &str = "credentials/";

/// A named credential as stored (the secret's sha256, never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `sessions` role: the one session owner it acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub secret_sha256: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<DateTime<Utc>>,
    #[serde(default)]
    pub revoked: bool,
}

impl Store {
    /// Stores a new credential; `false` (nothing written) when the name is taken.
    pub async fn create_credential(&self, c: &CredentialRecord) -> Result<bool> {
        let key = format!("{CREDENTIALS}{}", c.name);
        match self
            .commit(Txn::new().when(&key, 0).put(&key, enc(c)))
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::Stale) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn credentials(&self) -> Result<Vec<CredentialRecord>> {
        self.values(CREDENTIALS).await
    }

    /// Read-modify-write of one credential; `None` when there is none of that name.
    pub async fn update_credential(
        &self,
        name: &str,
        f: impl Fn(&mut CredentialRecord) -> bool,
    ) -> Result<Option<CredentialRecord>> {
        self.update(
            &format!("{CREDENTIALS}{name}"),
            false,
            "credential",
            |old: Option<CredentialRecord>| match old {
                Some(mut c) => {
                    if f(&mut c) {
                        Update::Put(c.clone(), Some(c))
                    } else {
                        Update::Keep(Some(c))
                    }
                }
                None => Update::Keep(None),
            },
        )
        .await
    }
}
