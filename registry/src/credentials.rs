//! Named API credentials: the `Credentials` service creates (secret shown once, sha256 stored),
//! lists and revokes them, and identifies a bearer token against an in-memory copy (no store
//! read per request; kept in step with other replicas by the store watch). Last use is kept in
//! memory and written back at most once a minute per credential ([`Credentials::flush_last_used`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use steward_proto::selector::Selector;
use steward_proto::{
    Actor, CreateCredential, CredentialCreated, CredentialInfo, CredentialKind, Problem,
};

use crate::auth::{self, Caller, Principal, Scope};
use crate::clock::{parse_ttl, Clock, Lifetime};
use crate::store::{CredentialRecord, Store, StoreError};

/// The prefix of a named credential's token: `stc_<name>.<64 hex chars>`.
pub const TOKEN_PREFIX: &str = "stc_";
/// Longest lifetime a credential may be given.
const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 86400);
/// Last use is stored no more often than this per credential.
const LAST_USED_STEP: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("invalid credential request")]
    Invalid(Vec<Problem>),
    #[error(
        "a credential named {0:?} exists already (revoked ones keep their name); pick another name"
    )]
    Exists(String),
    #[error("no credential named {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, CredentialError>;

/// One credential as held in memory.
#[derive(Debug)]
struct Held {
    rec: CredentialRecord,
    principal: Principal,
    /// Last use seen by this process (unix seconds), and the last one stored.
    used: AtomicI64,
    stored: AtomicI64,
}

/// The named credentials service.
#[derive(Clone)]
pub struct Credentials {
    store: Store,
    clock: Arc<dyn Clock>,
    held: Arc<RwLock<HashMap<String, Arc<Held>>>>,
}

fn info(c: &CredentialRecord) -> CredentialInfo {
    CredentialInfo {
        name: c.name.clone(),
        role: c.role,
        selector: c.selector.clone(),
        description: c.description.clone(),
        owner: c.owner.clone(),
        created_at: c.created_at,
        created_by: c.created_by.clone(),
        expires_at: c.expires_at,
        last_used: c.last_used,
        revoked: c.revoked,
    }
}

fn held(rec: CredentialRecord) -> Held {
    let scope = rec.selector.as_ref().map(|text| {
        Arc::new(Scope {
            text: text.clone(),
            // Checked when created; a record that no longer parses matches nothing.
            selector: text.parse().unwrap_or_else(|_| {
                Selector(vec![steward_proto::selector::Requirement::Exists(
                    "\0".into(),
                )])
            }),
        })
    });
    let last = rec.last_used.map_or(0, |t| t.timestamp());
    Held {
        principal: Principal {
            name: rec.name.as_str().into(),
            role: rec.role,
            scope,
            credential: CredentialKind::Named,
            owner: rec.owner.as_deref().map(Arc::from),
        },
        used: AtomicI64::new(last),
        stored: AtomicI64::new(last),
        rec,
    }
}

impl Credentials {
    /// Loads every stored credential.
    pub async fn load(
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> std::result::Result<Self, StoreError> {
        let c = Credentials {
            store,
            clock,
            held: Arc::default(),
        };
        for rec in c.store.credentials().await? {
            c.apply(&rec.name.clone(), Some(rec));
        }
        Ok(c)
    }

    /// Takes a stored change (this replica's or another's, from the store watch).
    pub fn apply(&self, name: &str, rec: Option<CredentialRecord>) {
        let mut map = self.held.write().unwrap_or_else(|p| p.into_inner());
        match rec {
            Some(rec) => {
                let h = held(rec);
                if let Some(old) = map.get(name) {
                    // Keep the newer last use this process saw.
                    h.used
                        .fetch_max(old.used.load(Ordering::Relaxed), Ordering::Relaxed);
                    h.stored
                        .fetch_max(old.stored.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                map.insert(name.to_string(), Arc::new(h));
            }
            None => {
                map.remove(name);
            }
        }
    }

    /// The caller a `stc_` token is, if it is a live credential's (constant-time comparison of
    /// hashes; no store read).
    pub fn identify(&self, token: &str) -> Option<Caller> {
        let rest = token.strip_prefix(TOKEN_PREFIX)?;
        let (name, _) = rest.rsplit_once('.')?;
        let h = self
            .held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()?;
        if !auth::hash_eq(&auth::sha256(token), &h.rec.secret_sha256) || h.rec.revoked {
            return None;
        }
        let now = self.clock.now();
        if !Lifetime(h.rec.expires_at).live_at(now) {
            return None;
        }
        h.used.fetch_max(now.timestamp(), Ordering::Relaxed);
        Some(Caller::Principal(h.principal.clone()))
    }

    /// Whether a credential of that name exists, is not revoked and has not expired.
    pub fn is_live(&self, name: &str) -> bool {
        let now = self.clock.now();
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|h| !h.rec.revoked && Lifetime(h.rec.expires_at).live_at(now))
    }

    /// When a credential expires (`None`: never, or no such credential).
    pub fn expiry(&self, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .and_then(|h| h.rec.expires_at)
    }

    /// Replaces every credential held with those stored (after a broken store watch).
    pub fn reload(&self, records: Vec<CredentialRecord>) {
        let names: std::collections::HashSet<String> =
            records.iter().map(|r| r.name.clone()).collect();
        for rec in records {
            self.apply(&rec.name.clone(), Some(rec));
        }
        self.held
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n, _| names.contains(n));
    }

    fn check(&self, req: &CreateCredential) -> std::result::Result<Option<Duration>, Vec<Problem>> {
        let mut problems = Vec::new();
        if let Err(p) = crate::names::check_name("name", &req.name) {
            problems.push(p);
        }
        if let Some(sel) = &req.selector {
            if req.role == steward_proto::Role::Admin {
                problems.push(Problem::new(
                    "selector",
                    "an admin credential cannot be narrowed: it manages credentials and enrollment \
                     tokens for the whole fleet; give a scoped credential the operator or viewer role",
                ));
            }
            match sel.parse::<Selector>() {
                Ok(s) if s.0.is_empty() => problems.push(Problem::new(
                    "selector",
                    "an empty selector matches every node; leave selector out for an unscoped credential",
                )),
                Ok(_) => {}
                Err(e) => problems.push(Problem::new("selector", e.to_string())),
            }
        }
        let ttl = match req.expires_in.as_deref() {
            None => None,
            Some(t) => match parse_ttl("expires_in", t, Duration::from_secs(1), MAX_TTL) {
                Ok(d) => Some(d),
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
        };
        if let Some(owner) = &req.owner {
            if req.role != steward_proto::Role::Sessions {
                problems.push(Problem::new(
                    "owner",
                    "only a credential of the sessions role acts for one session owner",
                ));
            }
            if let Err(p) = crate::names::check_name("owner", owner) {
                problems.push(p);
            }
        }
        if req.description.as_ref().is_some_and(|d| d.len() > 1024) {
            problems.push(Problem::new("description", "at most 1024 bytes"));
        }
        if problems.is_empty() {
            Ok(ttl)
        } else {
            Err(problems)
        }
    }

    /// Creates a credential; the answer holds the token, shown this once.
    #[tracing::instrument(skip_all, fields(name = %req.name, role = %req.role))]
    pub async fn create(&self, req: CreateCredential, by: &Actor) -> Result<CredentialCreated> {
        let ttl = self.check(&req).map_err(CredentialError::Invalid)?;
        let token = auth::new_secret(&format!("{TOKEN_PREFIX}{}", req.name));
        let now = self.clock.now();
        let rec = CredentialRecord {
            name: req.name.clone(),
            role: req.role,
            selector: req.selector.map(|s| s.trim().to_string()),
            description: req.description,
            owner: req.owner,
            secret_sha256: auth::sha256(&token),
            created_at: now,
            created_by: by.name.clone().unwrap_or_else(|| "-".into()),
            expires_at: Lifetime::starting(now, ttl).0,
            last_used: None,
            revoked: false,
        };
        if !self.store.create_credential(&rec).await? {
            return Err(CredentialError::Exists(req.name));
        }
        self.apply(&rec.name, Some(rec.clone()));
        Ok(CredentialCreated {
            token,
            info: info(&rec),
        })
    }

    /// Every credential, by name, with the last use this process has seen.
    pub fn list(&self) -> Vec<CredentialInfo> {
        let map = self.held.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .values()
            .map(|h| {
                let mut i = info(&h.rec);
                let used = h.used.load(Ordering::Relaxed);
                if used > 0 {
                    i.last_used = chrono::DateTime::from_timestamp(used, 0).max(i.last_used);
                }
                i
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Revokes a credential (it stays listed, revoked); revoking twice changes nothing.
    #[tracing::instrument(skip(self))]
    pub async fn revoke(&self, name: &str) -> Result<(CredentialInfo, bool)> {
        let changed = std::sync::atomic::AtomicBool::new(false);
        let rec = self
            .store
            .update_credential(name, |c| {
                let now = !c.revoked;
                changed.store(now, Ordering::Relaxed);
                c.revoked = true;
                now
            })
            .await?
            .ok_or_else(|| CredentialError::NotFound(name.to_string()))?;
        self.apply(name, Some(rec.clone()));
        Ok((info(&rec), changed.into_inner()))
    }

    /// Stores the last use of every credential used since its last store (a minute or more
    /// later than the stored one).
    pub async fn flush_last_used(&self) -> std::result::Result<usize, StoreError> {
        let due: Vec<(String, i64)> = {
            let map = self.held.read().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .filter_map(|(n, h)| {
                    let used = h.used.load(Ordering::Relaxed);
                    (used >= h.stored.load(Ordering::Relaxed) + LAST_USED_STEP)
                        .then(|| (n.clone(), used))
                })
                .collect()
        };
        for (name, used) in &due {
            let at = chrono::DateTime::from_timestamp(*used, 0);
            self.store
                .update_credential(name, |c| {
                    if c.last_used < at {
                        c.last_used = at;
                        true
                    } else {
                        false
                    }
                })
                .await?;
            if let Some(h) = self
                .held
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
            {
                h.stored.fetch_max(*used, Ordering::Relaxed);
            }
        }
        Ok(due.len())
    }
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod tests;
