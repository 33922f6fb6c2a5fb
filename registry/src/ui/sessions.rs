//! Login sessions of the status page, in memory: a random cookie id, of which only the sha256
//! is kept, mapped to the viewer and an expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth;

/// Name of the session cookie.
pub const COOKIE: &str = "steward_session";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// Who is looking at the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

struct Session {
    viewer: Viewer,
    expires: Instant,
}

/// Login sessions, in memory only (a registry restart signs everyone out).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Creates a session for `viewer` and returns the id to put in the cookie.
    pub fn create(&self, viewer: Viewer) -> String {
        let id = auth::new_id() + &auth::new_id() + &auth::new_id() + &auth::new_id();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            auth::sha256(&id),
            Session {
                viewer,
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    /// The viewer of a live session.
    pub fn get(&self, id: &str) -> Option<Viewer> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&auth::sha256(id))
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.viewer)
    }

    pub fn remove(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&auth::sha256(id));
    }

    /// Sessions not yet expired.
    pub fn alive(&self) -> usize {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|s| s.expires > now).count()
    }
}
