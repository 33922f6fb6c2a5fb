//! Credentials: generating secrets, hashing them, comparing in constant time, and deciding
//! which caller may use which route.
//!
//! Node secrets and enrollment tokens have the form `<id>.<random>`: the id part finds the
//! record, the whole string is hashed (sha256) and compared in constant time with the stored
//! hash. Secrets themselves are never stored or logged.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Read,
    Node(String),
}

impl Caller {
    pub fn kind(&self) -> steward_proto::CredentialKind {
        match self {
            Caller::Admin => steward_proto::CredentialKind::Admin,
            Caller::Read => steward_proto::CredentialKind::Read,
            Caller::Node(_) => steward_proto::CredentialKind::Node,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential needed (health probes, the API document, enrolment which carries its own
    /// token in the body).
    Public,
    Admin,
    AdminOrRead,
    /// Admin, read token, or the node named by the `{id}` path parameter.
    ReadOrOwnNode,
    /// Only the node named by `{id}`.
    OwnNode,
    /// Admin or read token, or any node's secret; the handler narrows what a node may see
    /// (blob downloads: only blobs the node's spec references).
    ReadOrAnyNode,
}

impl Access {
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "none",
            Access::Admin => "admin token",
            Access::AdminOrRead => "admin or read token",
            Access::ReadOrOwnNode => "admin or read token, or the node's own secret",
            Access::OwnNode => "the node's own secret",
            Access::ReadOrAnyNode => {
                "admin or read token, or a node secret (a node reads only what its spec references)"
            }
        }
    }
}

/// A fresh secret `<id>.<64 hex chars>` (256 random bits).
pub fn new_secret(id: &str) -> String {
    let mut buf = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut buf);
    format!("{id}.{}", hex::encode(buf))
}

/// A fresh random id (16 hex chars).
pub fn new_id() -> String {
    let mut buf = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

pub fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Constant-time equality of two hashes.
pub fn hash_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// The id part of an `<id>.<random>` secret.
pub fn secret_id(secret: &str) -> Option<&str> {
    secret
        .split_once('.')
        .map(|(id, _)| id)
        .filter(|id| !id.is_empty())
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_their_id_and_differ() {
        let a = new_secret("n1");
        let b = new_secret("n1");
        assert_ne!(a, b);
        assert_eq!(secret_id(&a), Some("n1"));
        assert_eq!(a.len(), 3 + 64);
        assert!(hash_eq(&sha256(&a), &sha256(&a)));
        assert!(!hash_eq(&sha256(&a), &sha256(&b)));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(secret_id(".abc"), None);
        assert_eq!(secret_id("abc"), None);
    }
}
