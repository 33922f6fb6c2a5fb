//! Credentials: generating secrets, hashing them, comparing in constant time; who a caller
//! is (a [`Principal`] with a role and maybe a [`Scope`], or a node) and which caller may use
//! which route ([`Access`]).
//!
//! Node secrets and enrollment tokens have the form `<id>.<random>`: the id part finds the
//! record, the whole string is hashed (sha256) and compared in constant time with the stored
//! hash. Secrets themselves are never stored or logged.

use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};
use steward_proto::selector::Selector;
use steward_proto::{Actor, CredentialKind, Labels, Role};
use subtle::ConstantTimeEq;

/// The name the admin token file's holder is known by (audit, events).
pub const ADMIN_TOKEN: &str = "admin-token";
/// The name the read token's holder is known by.
pub const READ_TOKEN: &str = "read-token";

/// A credential's narrowing to the nodes matching a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// As the operator wrote it.
    pub text: String,
    pub selector: Selector,
}

impl Scope {
    /// Whether a node with `labels` is inside the scope.
    pub fn sees(&self, labels: &Labels) -> bool {
        self.selector.matches(labels)
    }

    /// Whether every node `selector` can match is inside the scope.
    pub fn covers(&self, selector: &Selector) -> bool {
        selector.implies(&self.selector)
    }
}

/// A caller with a role: the admin token, the read token, a named credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub role: Role,
    pub scope: Option<Arc<Scope>>,
    pub credential: CredentialKind,
    /// The session owner it acts for alone (a `sessions` credential created with an owner,
    /// a `sessions` JWT: its subject); `None`: any owner.
    pub owner: Option<Arc<str>>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Principal(Principal),
    Node(String),
}

impl Caller {
    /// The admin token's holder.
    pub fn admin_token() -> Self {
        Caller::Principal(Principal {
            name: ADMIN_TOKEN.into(),
            role: Role::Admin,
            scope: None,
            credential: CredentialKind::Admin,
            owner: None,
        })
    }

    /// The read token's holder.
    pub fn read_token() -> Self {
        Caller::Principal(Principal {
            name: READ_TOKEN.into(),
            role: Role::Viewer,
            scope: None,
            credential: CredentialKind::Read,
            owner: None,
        })
    }

    pub fn kind(&self) -> CredentialKind {
        match self {
            Caller::Principal(p) => p.credential,
            Caller::Node(_) => CredentialKind::Node,
        }
    }

    /// Who this is, for events and the audit trail.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Principal(p) => Actor::new(p.credential, &*p.name),
            Caller::Node(id) => Actor::new(CredentialKind::Node, id),
        }
    }

    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Principal(p) => Some(p.role),
            Caller::Node(_) => None,
        }
    }

    /// The caller's scope, if it is narrowed to some nodes.
    pub fn scope(&self) -> Option<&Scope> {
        match self {
            Caller::Principal(p) => p.scope.as_deref(),
            Caller::Node(_) => None,
        }
    }

    /// The only session owner the caller may act for, if it is narrowed to one.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Caller::Principal(p) => p.owner.as_deref(),
            Caller::Node(_) => None,
        }
    }

    /// Whether the caller may see or act on the sessions of `owner`.
    pub fn acts_for(&self, owner: &str) -> bool {
        self.owner().is_none_or(|o| o == owner)
    }

    /// Whether the caller may see or touch a node with `labels` (always, without a scope).
    pub fn sees(&self, labels: &Labels) -> bool {
        self.scope().is_none_or(|s| s.sees(labels))
    }

    /// Whether every node `selector` can match is within the caller's scope.
    pub fn covers(&self, selector: &Selector) -> bool {
        self.scope().is_none_or(|s| s.covers(selector))
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential needed (health probes, the API document, enrolment which carries its own
    /// token in the body).
    Public,
    /// The `admin` role: credentials, enrollment tokens, re-enrolment, decommissioning.
    Admin,
    /// `admin` or `operator`: specs, fragments, labels, payloads, rollouts, resets.
    Operate,
    /// `admin`, `operator` or `viewer`.
    Read,
    /// `admin` or `viewer` (the audit trail).
    Audit,
    /// A reader, or the node named by the `{id}` path parameter.
    ReadOrOwnNode,
    /// Only the node named by `{id}`.
    OwnNode,
    /// `admin`, `operator` or `sessions`: creating, extending and ending sessions (an
    /// owner-scoped caller only its owner's).
    Sessions,
    /// Any role: reading sessions and templates (an owner-scoped caller sees only its owner's
    /// sessions).
    SessionsRead,
    /// A reader, or any node's secret; the handler narrows what a node may see (blob
    /// downloads: only blobs the node's spec references).
    ReadOrAnyNode,
}

impl Access {
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "none",
            Access::Admin => "the admin role",
            Access::Operate => "the admin or operator role",
            Access::Read => "the admin, operator or viewer role",
            Access::Audit => "the admin or viewer role",
            Access::ReadOrOwnNode => {
                "the admin, operator or viewer role, or the node's own secret"
            }
            Access::OwnNode => "the node's own secret",
            Access::Sessions => "the admin, operator or sessions role",
            Access::SessionsRead => "the admin, operator, viewer or sessions role",
            Access::ReadOrAnyNode => {
                "the admin, operator or viewer role, or a node secret (a node reads only what its spec references)"
            }
        }
    }

    /// Whether `caller` may call a route with this access; `path_id` is the route's `{id}`.
    pub fn allows(self, caller: &Caller, path_id: Option<&str>) -> bool {
        let own = matches!((caller, path_id), (Caller::Node(n), Some(p)) if n == p);
        let reads = matches!(
            caller.role(),
            Some(Role::Admin | Role::Operator | Role::Viewer)
        );
        match self {
            Access::Public => true,
            Access::Admin => caller.role() == Some(Role::Admin),
            Access::Operate => matches!(caller.role(), Some(Role::Admin | Role::Operator)),
            Access::Read => reads,
            Access::Audit => matches!(caller.role(), Some(Role::Admin | Role::Viewer)),
            Access::ReadOrOwnNode => reads || own,
            Access::OwnNode => own,
            Access::Sessions => matches!(
                caller.role(),
                Some(Role::Admin | Role::Operator | Role::Sessions)
            ),
            Access::SessionsRead => caller.role().is_some(),
            Access::ReadOrAnyNode => reads || matches!(caller, Caller::Node(_)),
        }
    }

    /// Whether calls of `method` on a route with this access go to the audit trail: every
    /// write an operator makes (not the agents' own heartbeats, status and enrolment).
    pub fn audited(self, method: &axum::http::Method) -> bool {
        method != axum::http::Method::GET
            && method != axum::http::Method::HEAD
            && !matches!(self, Access::Public | Access::OwnNode)
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

    fn named(role: Role, scope: Option<&str>) -> Caller {
        Caller::Principal(Principal {
            name: "n".into(),
            role,
            scope: scope.map(|s| {
                Arc::new(Scope {
                    text: s.into(),
                    selector: s.parse().unwrap(),
                })
            }),
            credential: CredentialKind::Named,
            owner: None,
        })
    }

    #[test]
    fn access_table() {
        use Access::*;
        let node = Caller::Node("n1".into());
        // (access, admin, operator, viewer, sessions, own node, other node)
        let rows = [
            (Admin, [true, false, false, false, false, false]),
            (Operate, [true, true, false, false, false, false]),
            (Read, [true, true, true, false, false, false]),
            (Audit, [true, false, true, false, false, false]),
            (ReadOrOwnNode, [true, true, true, false, true, false]),
            (OwnNode, [false, false, false, false, true, false]),
            (ReadOrAnyNode, [true, true, true, false, true, true]),
            (Sessions, [true, true, false, true, false, false]),
            (SessionsRead, [true, true, true, true, false, false]),
            (Public, [true, true, true, true, true, true]),
        ];
        for (access, want) in rows {
            let got = [
                access.allows(&named(Role::Admin, None), Some("n1")),
                access.allows(&named(Role::Operator, None), Some("n1")),
                access.allows(&named(Role::Viewer, None), Some("n1")),
                access.allows(&named(Role::Sessions, None), Some("n1")),
                access.allows(&node, Some("n1")),
                access.allows(&node, Some("n2")),
            ];
            assert_eq!(got, want, "{access:?}");
        }
        assert!(Read.allows(&Caller::read_token(), None));
        assert!(!Operate.allows(&Caller::read_token(), None));
        assert!(Admin.allows(&Caller::admin_token(), None));
    }

    #[test]
    fn scopes_see_and_cover() {
        let lab = named(Role::Operator, Some("env=lab"));
        let mut l = Labels::new();
        l.insert("env".into(), "lab".into());
        assert!(lab.sees(&l));
        l.insert("env".into(), "prod".into());
        assert!(!lab.sees(&l));
        assert!(lab.covers(&"env=lab,role=web".parse().unwrap()));
        assert!(!lab.covers(&"role=web".parse().unwrap()));
        assert!(named(Role::Operator, None).covers(&"".parse().unwrap()));
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
