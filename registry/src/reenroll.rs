//! Who may enrol, and as which node: enrollment tokens checked before they are spent, the
//! node's current secret as proof of being an enrolled node, and the re-enrolment grants an
//! admin issues for a reinstalled host (one use, bound to one node id, expiring, stored hashed).
//!
//! A machine id is not a secret (`/etc/machine-id` is world-readable), so it never hands an
//! existing node to a caller: an enrollment token alone creates new nodes only.
//!
//! The [`Enrolments`] service and its [`EnrollError`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use steward_proto::{
    Actor, CreateReenrollGrant, CredentialKind, EnrollRequest, EventKind, Health, Labels, Problem,
    ReenrollGrantCreated,
};

use crate::auth;
use crate::clock::{parse_ttl, Clock, Lifetime};
use crate::events::EventLog;
use crate::store::{GrantRecord, NodeRecord, Store, StoreError, TokenRecord};

/// What an enrolment or a grant's creation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The credential does not allow this enrolment (unknown, expired, used up, no proof).
    #[error("enrollment refused: {0}")]
    Refused(String),
    /// The enrolment or grant contradicts the nodes enrolled (a machine id of another node, a
    /// decommissioned node).
    #[error("{0}")]
    Conflict(String),
    #[error("invalid input: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("no node with id {0:?}")]
    NoNode(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, EnrollError>;

/// Enrollment credentials: checking and spending them, and re-enrolment grants.
#[derive(Clone)]
pub struct Enrolments {
    store: Store,
    events: EventLog,
    /// Where "now" comes from for token and grant lifetimes.
    clock: Arc<dyn Clock>,
}

impl Enrolments {
    pub fn new(store: Store, events: EventLog, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            events,
            clock,
        }
    }

    /// Now, as the lifetimes of tokens and grants are judged.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// Start of a grant's id, so a grant and an enrollment token are told apart by their form.
pub const GRANT_PREFIX: &str = "reenroll-";
/// Lifetime of a grant when the request names none.
const DEFAULT_GRANT_TTL: &str = "1h";
/// Longest lifetime of a grant.
const MAX_GRANT_TTL: Duration = Duration::from_secs(7 * 86400);

/// What an enrolment presents, checked but not yet spent.
pub enum Credential {
    Token(TokenRecord),
    Grant(GrantRecord),
}

impl Credential {
    /// Labels given to the node (a grant gives none).
    pub fn labels(&self) -> Labels {
        match self {
            Credential::Token(t) => t.labels.clone(),
            Credential::Grant(_) => Labels::new(),
        }
    }

    /// How the event log names it (ids only, never the secret).
    pub fn describe(&self) -> String {
        match self {
            Credential::Token(t) => format!("enrollment token {}", t.id),
            Credential::Grant(g) => format!("re-enrolment grant {}", g.id),
        }
    }
}

/// An enrolment allowed to go ahead.
pub struct Admitted {
    /// The enrolled node the caller proved to be; `None` creates a new node.
    pub existing: Option<NodeRecord>,
    pub credential: Credential,
    /// The node id the machine id mapped to when this was decided (`None`: none); the
    /// enrolment claims the mapping only if it is still that.
    pub machine_was: Option<String>,
}

/// Why an enrollment token cannot be used now, if it cannot.
fn token_problem(t: &TokenRecord, presented: &[u8; 32], now: DateTime<Utc>) -> Option<String> {
    if !auth::hash_eq(&t.secret_sha256, presented) {
        Some("unknown enrollment token".to_string())
    } else if t.revoked {
        Some(format!("enrollment token {} was revoked", t.id))
    } else if !Lifetime(Some(t.expires_at)).live_at(now) {
        Some(format!(
            "enrollment token {} expired at {}",
            t.id, t.expires_at
        ))
    } else if t.uses_left == 0 {
        Some(format!("enrollment token {} has no uses left", t.id))
    } else {
        None
    }
}

impl Enrolments {
    /// Checks the body's `token` (an enrollment token or a grant) without spending it.
    async fn check_credential(&self, token: &str, now: DateTime<Utc>) -> Result<Credential> {
        let unknown = || EnrollError::Refused("unknown enrollment token".into());
        let id = auth::secret_id(token).ok_or_else(unknown)?;
        let presented = auth::sha256(token);
        if id.starts_with(GRANT_PREFIX) {
            let unknown = || {
                EnrollError::Refused(
                    "unknown re-enrolment grant (already used, or never issued)".into(),
                )
            };
            let g = self.store.grant(id).await?.ok_or_else(unknown)?;
            if !auth::hash_eq(&g.secret_sha256, &presented) {
                return Err(unknown());
            }
            if !Lifetime(Some(g.expires_at)).live_at(now) {
                return Err(EnrollError::Refused(format!(
                    "re-enrolment grant {} expired at {}; ask an admin for a new one \
                 (stewardctl nodes reenroll {})",
                    g.id, g.expires_at, g.node_id
                )));
            }
            return Ok(Credential::Grant(g));
        }
        let t = self.store.token(id).await?.ok_or_else(unknown)?;
        match token_problem(&t, &presented, now) {
            Some(p) => Err(EnrollError::Refused(p)),
            None => Ok(Credential::Token(t)),
        }
    }

    /// Records a refused enrolment (no secret in it) and returns the error to answer with.
    async fn refuse(
        &self,
        node: Option<&str>,
        client: Option<SocketAddr>,
        what: String,
        err: EnrollError,
    ) -> EnrollError {
        let from = client.map(|a| format!(" from {a}")).unwrap_or_default();
        if let Err(e) = self
            .events
            .record(
                EventKind::EnrollRefused,
                node,
                None,
                &Actor::kind(CredentialKind::Enrollment),
                format!("enrolment refused{from}: {what}"),
            )
            .await
        {
            tracing::error!(error = %format!("{e:#}"), "recording a refused enrolment failed");
        }
        tracing::warn!(node = ?node, client = ?client, "enrolment refused: {what}");
        err
    }
}

fn conflict(message: String) -> EnrollError {
    EnrollError::Conflict(message)
}

impl Enrolments {
    /// Decides whether `req` may enrol, and as which node. Refusals change nothing (no token use
    /// or grant spent) and are recorded as `enroll-refused` events.
    pub async fn admit(
        &self,
        req: &EnrollRequest,
        now: DateTime<Utc>,
        client: Option<SocketAddr>,
    ) -> Result<Admitted> {
        let credential = self.check_credential(&req.token, now).await?;
        let at = Attempt {
            enrolments: self,
            client,
            hostname: &req.facts.hostname,
        };
        let machine_was = self.store.node_for_machine(&req.facts.machine_id).await?;
        let mapped = match &machine_was {
            Some(id) => self
                .store
                .node(id)
                .await?
                .filter(|n| n.health != Health::Decommissioned),
            None => None,
        };
        let proven = match (&credential, &req.node_secret) {
            (Credential::Grant(g), _) => at.grant_node(g).await?,
            (Credential::Token(t), Some(secret)) => at.secret_node(t, secret).await?,
            (Credential::Token(t), None) => {
                return match mapped {
                    Some(m) => Err(at.unproven(t, &m).await),
                    None => Ok(Admitted {
                        existing: None,
                        credential,
                        machine_was,
                    }),
                };
            }
        };
        if let Some(m) = mapped.filter(|m| m.id != proven.id) {
            return Err(at
                .refuse(
                    Some(&proven.id),
                    format!(
                        "re-enrolment of node {} with {} on the machine id of node {}",
                        proven.id,
                        credential.describe(),
                        m.id
                    ),
                    conflict(format!(
                "this machine id belongs to another enrolled node, {id}; decommission node {id} \
                 (stewardctl nodes delete {id}) before enrolling this host as node {}",
                proven.id,
                id = m.id
            )),
                )
                .await);
        }
        Ok(Admitted {
            existing: Some(proven),
            credential,
            machine_was,
        })
    }
}

/// One enrolment being decided: what refusals record.
struct Attempt<'a> {
    enrolments: &'a Enrolments,
    client: Option<SocketAddr>,
    hostname: &'a str,
}

impl Attempt<'_> {
    /// Records a refused enrolment (no secret in it) and returns the error to answer with.
    async fn refuse(&self, node: Option<&str>, what: String, err: EnrollError) -> EnrollError {
        self.enrolments.refuse(node, self.client, what, err).await
    }

    /// The live node a grant is for.
    async fn grant_node(&self, g: &GrantRecord) -> Result<NodeRecord> {
        let found = self.enrolments.store.node(&g.node_id).await?;
        let why = match found {
            Some(n) if n.health != Health::Decommissioned => return Ok(n),
            Some(_) => "was decommissioned",
            None => "does not exist",
        };
        let what = format!(
            "re-enrolment grant {} is for node {}, which {why}",
            g.id, g.node_id
        );
        Err(self
            .refuse(
                Some(&g.node_id),
                what.clone(),
                EnrollError::Refused(format!(
                    "{what}; enrol with an enrollment token to create a new node"
                )),
            )
            .await)
    }

    /// The live node whose current secret `secret` is.
    async fn secret_node(&self, t: &TokenRecord, secret: &str) -> Result<NodeRecord> {
        if let Some(n) = self.enrolments.node_by_secret(secret).await? {
            return Ok(n);
        }
        let mut claimed = auth::secret_id(secret);
        if let Some(id) = claimed {
            if !matches!(self.enrolments.store.node(id).await, Ok(Some(_))) {
                claimed = None;
            }
        }
        Err(self
            .refuse(
                claimed,
                format!(
                    "node_secret is not the current secret of an enrolled node (enrollment token \
                 {}, hostname given {:?})",
                    t.id, self.hostname
                ),
                EnrollError::Refused(
                    "node_secret is not the current secret of an enrolled node (the node was \
                 decommissioned, or its secret was rotated since); enrol without node_secret to \
                 create a new node, or ask an admin for a re-enrolment grant"
                        .into(),
                ),
            )
            .await)
    }

    /// The refusal of an enrollment token on the machine id of enrolled node `m`.
    async fn unproven(&self, t: &TokenRecord, m: &NodeRecord) -> EnrollError {
        self.refuse(
            Some(&m.id),
            format!(
                "the machine id of node {} was presented with enrollment token {} and no proof \
                 of being that node (hostname given {:?})",
                m.id, t.id, self.hostname
            ),
            conflict(format!(
                "this machine id is already enrolled as node {id}, and an enrollment token only \
                 creates new nodes. If this host is node {id}, enrol with its current secret as \
                 node_secret (steward-agent enroll --force sends the one in its identity file). \
                 If the host was reinstalled and lost its secret, an admin issues a re-enrolment \
                 grant (stewardctl nodes reenroll {id}) and the host enrols with the grant as its \
                 token; or an admin decommissions node {id} (stewardctl nodes delete {id}) and \
                 the host enrols as a new node",
                id = m.id
            )),
        )
        .await
    }
}

impl Enrolments {
    /// The enrolled (not decommissioned) node whose current secret `secret` is.
    async fn node_by_secret(&self, secret: &str) -> Result<Option<NodeRecord>> {
        let Some(id) = auth::secret_id(secret) else {
            return Ok(None);
        };
        let presented = auth::sha256(secret);
        Ok(self.store.node(id).await?.filter(|n| {
            n.health != Health::Decommissioned
                && n.secret_sha256
                    .is_some_and(|h| auth::hash_eq(&h, &presented))
        }))
    }

    /// Spends what an admitted enrolment presented: one use of the token (checked again inside
    /// the compare-and-swap) or the grant.
    pub async fn spend(&self, credential: &Credential, now: DateTime<Utc>) -> Result<()> {
        match credential {
            Credential::Token(t) => {
                let presented = t.secret_sha256;
                self.store
                    .take_token_use(&t.id, |t| match token_problem(t, &presented, now) {
                        Some(p) => Err(p),
                        None => Ok(()),
                    })
                    .await?
                    .ok_or_else(|| EnrollError::Refused("unknown enrollment token".into()))?
                    .map_err(EnrollError::Refused)?;
            }
            Credential::Grant(g) => {
                if !self.store.take_grant(&g.id).await? {
                    return Err(EnrollError::Refused(format!(
                        "re-enrolment grant {} was already used",
                        g.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// `POST /v1/nodes/{id}/reenroll`: issues a one-time grant for node `id`, shown only in this
    /// answer and stored hashed.
    pub async fn create_grant(
        &self,
        node_id: &str,
        req: CreateReenrollGrant,
        cred: &Actor,
    ) -> Result<ReenrollGrantCreated> {
        let text = req.expires.as_deref().unwrap_or(DEFAULT_GRANT_TTL);
        let ttl = parse_ttl("expires", text, Duration::from_secs(1), MAX_GRANT_TTL)
            .map_err(|p| EnrollError::Invalid(vec![p]))?;
        let node = self
            .store
            .node(node_id)
            .await?
            .ok_or_else(|| EnrollError::NoNode(node_id.to_string()))?;
        if node.health == Health::Decommissioned {
            return Err(conflict(format!(
            "node {node_id} is decommissioned: it cannot be enrolled again; enrol the host with \
             an enrollment token to create a new node"
        )));
        }
        let id = format!("{GRANT_PREFIX}{}", auth::new_id());
        let grant = auth::new_secret(&id);
        let now = self.clock.now();
        let rec = GrantRecord {
            id: id.clone(),
            node_id: node_id.to_string(),
            secret_sha256: auth::sha256(&grant),
            created_at: now,
            expires_at: Lifetime::starting(now, Some(ttl)).0.unwrap_or(now),
        };
        self.store.put_grant(&rec, now).await?;
        self.events
            .record(
                EventKind::ReenrollGrantCreated,
                Some(node_id),
                None,
                cred,
                format!(
                    "re-enrolment grant {id} created for node {node_id} ({}), expires {}",
                    node.facts.hostname, rec.expires_at
                ),
            )
            .await?;
        Ok(ReenrollGrantCreated {
            grant,
            id,
            node_id: node_id.to_string(),
            expires_at: rec.expires_at,
        })
    }
}
