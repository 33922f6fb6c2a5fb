//! Who may see the status page: a bearer token (admin or read token, or an unscoped named
//! credential of the admin, operator or viewer role), a login session cookie, or
//! nobody at all when the registry serves it publicly (`--public-status`).
//!
//! A session cookie carries a random 256-bit id; the registry keeps only its sha256, mapped in
//! the store (shared by replicas) to the credential kind and an expiry. The token itself never
//! goes into the cookie.

use axum::http::{header, HeaderMap};

use steward_proto::{CredentialKind, Role};

use crate::auth::{self, Caller};
use crate::state::AppState;

pub use super::sessions::{Session, Sessions, SignIn, Viewer, COOKIE, SESSION_TTL};

/// Why a request may not see the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("sign in with the admin or read token")]
    NoCredential,
    #[error("unknown credential: send 'Authorization: Bearer <admin or read token>'")]
    BadCredential,
    #[error("node secrets cannot open the status page; use the admin or read token")]
    NodeCredential,
    #[error("a credential narrowed to some nodes cannot open the whole fleet's status page; use the API")]
    Scoped,
    #[error("the sessions role cannot open the status page")]
    Role,
}

/// The value of our cookie in a request, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Which viewer a token is: the admin token or an unscoped admin credential see the page as
/// admin; the read token and unscoped operator or viewer credentials read-only.
pub fn token_viewer(state: &AppState, token: &str) -> Result<Viewer, Denied> {
    sign_in(state, token).map(|s| s.viewer)
}

/// Who a token signs in as (for `POST /login`): the viewer, the named credential (whose
/// revocation or expiry ends the session) and when the credential stops being valid.
pub fn sign_in(state: &AppState, token: &str) -> Result<SignIn, Denied> {
    let p = match state.identify(token) {
        Some(Caller::Principal(p)) if p.scope.is_some() => return Err(Denied::Scoped),
        Some(Caller::Principal(p)) => p,
        Some(Caller::Node(_)) => return Err(Denied::NodeCredential),
        None => return Err(Denied::BadCredential),
    };
    let viewer = match p.role {
        Role::Admin => Viewer::Admin,
        Role::Operator | Role::Viewer => Viewer::Read,
        Role::Sessions => return Err(Denied::Role),
    };
    let (named, until) = match p.credential {
        CredentialKind::Named => (Some(p.name.to_string()), state.credentials.expiry(&p.name)),
        CredentialKind::Jwt => (None, state.oidc.expiry(token)),
        _ => (None, None),
    };
    Ok(SignIn {
        viewer,
        named,
        until,
    })
}

/// Resolves the viewer: a bearer token first, then the session cookie, then public access.
pub fn viewer(state: &AppState, headers: &HeaderMap) -> Result<Viewer, Denied> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer);
    if let Some(token) = bearer {
        return token_viewer(state, token);
    }
    if let Some(s) = session_cookie(headers).and_then(|id| state.logins.get(id)) {
        // A session opened with a named credential ends when the credential is revoked.
        if s.named
            .as_ref()
            .is_none_or(|n| state.credentials.is_live(n))
        {
            return Ok(s.viewer);
        }
    }
    if state.settings.public_status {
        Ok(Viewer::Public)
    } else {
        Err(Denied::NoCredential)
    }
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A local path to go back to after login (never another origin).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn sessions_are_stored_hashed_and_cookies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let s = Sessions::default();
        let who = SignIn {
            viewer: Viewer::Read,
            named: None,
            until: None,
        };
        let id = s.create(&store, who).await.unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(s.get(&id).map(|s| s.viewer), Some(Viewer::Read));
        assert!(s.get("nope").is_none());
        // Stored under the hash only, and found by a second process (a replica) from the store.
        let stored: Vec<(String, Session)> = store.ui_sessions().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, hex::encode(auth::sha256(&id)));
        assert!(!stored[0].0.contains(&id));
        let other = Sessions::default();
        other.apply(&stored[0].0, Some(stored[0].1.clone()));
        assert_eq!(other.get(&id).map(|s| s.viewer), Some(Viewer::Read));
        s.remove(&store, &id).await.unwrap();
        assert!(s.get(&id).is_none());
        assert!(store.ui_sessions::<Session>().await.unwrap().is_empty());
        let c = set_cookie("abc", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=b; steward_session=xyz".parse().unwrap());
        assert_eq!(session_cookie(&h), Some("xyz"));
    }

    #[test]
    fn next_stays_local() {
        assert_eq!(safe_next(Some("/nodes/a?x=1")), "/nodes/a?x=1");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", ""] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
