//! Login sessions of the status page: a random cookie id, of which only the sha256 is kept,
//! mapped to the viewer and an expiry; stored (shared by replicas, kept over a restart) and
//! mirrored in memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::auth;
use crate::store::{Store, StoreError};

/// Name of the session cookie.
pub const COOKIE: &str = "steward_session";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// Who is looking at the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Viewer {
    Admin,
    Read,
    /// No credential, on a registry serving the status publicly.
    Public,
}

impl Viewer {
    pub fn as_str(self) -> &'static str {
        match self {
            Viewer::Admin => "admin",
            Viewer::Read => "read-only",
            Viewer::Public => "public",
        }
    }
}

/// A login session as stored (`ui-sessions/{sha256 of the id}`): shared by every replica.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub viewer: Viewer,
    pub expires_at: DateTime<Utc>,
    /// The named credential it was opened with: the session ends when that is revoked or
    /// expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named: Option<String>,
}

/// Who signs in: the viewer, the named credential used (if one was), and when the credential
/// itself stops being valid (a named credential's expiry, a JWT's `exp`), which caps the
/// session's life.
#[derive(Debug, Clone, PartialEq)]
pub struct SignIn {
    pub viewer: Viewer,
    pub named: Option<String>,
    pub until: Option<DateTime<Utc>>,
}

/// Login sessions: kept in the store (so every replica knows them and a restart keeps them) and
/// mirrored in memory, where the store watch (`replica.rs`) adds those made on other replicas.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn lock(
    m: &Mutex<HashMap<String, Session>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    /// Creates a session for `viewer`, stores it, and returns the id to put in the cookie.
    /// Expired sessions are removed on the way; past [`MAX_SESSIONS`] the oldest goes.
    pub async fn create(&self, store: &Store, who: SignIn) -> Result<String, StoreError> {
        let id = auth::new_id() + &auth::new_id() + &auth::new_id() + &auth::new_id();
        let now = Utc::now();
        let mut gone: Vec<String> = {
            let map = lock(&self.map);
            map.iter()
                .filter(|(_, s)| s.expires_at <= now)
                .map(|(k, _)| k.clone())
                .collect()
        };
        {
            let map = lock(&self.map);
            if map.len() - gone.len() >= MAX_SESSIONS {
                if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires_at) {
                    gone.push(oldest.0.clone());
                }
            }
        }
        store.remove_ui_sessions(&gone).await?;
        let key = hex::encode(auth::sha256(&id));
        let ttl_end = now + chrono::Duration::from_std(SESSION_TTL).unwrap_or_default();
        let s = Session {
            viewer: who.viewer,
            expires_at: who.until.map_or(ttl_end, |u| u.min(ttl_end)),
            named: who.named,
        };
        store.put_ui_session(&key, &s).await?;
        let mut map = lock(&self.map);
        for k in &gone {
            map.remove(k);
        }
        map.insert(key, s);
        Ok(id)
    }

    /// A live session (not expired; the caller checks its named credential).
    pub fn get(&self, id: &str) -> Option<Session> {
        lock(&self.map)
            .get(&hex::encode(auth::sha256(id)))
            .filter(|s| s.expires_at > Utc::now())
            .cloned()
    }

    /// Forgets a session (signing out), in the store too.
    pub async fn remove(&self, store: &Store, id: &str) -> Result<(), StoreError> {
        let key = hex::encode(auth::sha256(id));
        store.remove_ui_sessions(std::slice::from_ref(&key)).await?;
        lock(&self.map).remove(&key);
        Ok(())
    }

    /// Applies a stored session change (from the store watch or at start-up).
    pub fn apply(&self, key: &str, s: Option<Session>) {
        let mut map = lock(&self.map);
        match s {
            Some(s) => map.insert(key.to_string(), s),
            None => map.remove(key),
        };
    }

    /// Sessions not yet expired.
    pub fn alive(&self) -> usize {
        let now = Utc::now();
        lock(&self.map)
            .values()
            .filter(|s| s.expires_at > now)
            .count()
    }
}
