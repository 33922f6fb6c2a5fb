//! Named API credentials, their roles, and the audit trail: the wire types of
//! `/v1/credentials` and `/v1/audit`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a named credential may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including credentials and enrollment tokens.
    Admin,
    /// Specs, fragments, labels, payloads, rollouts, workload resets; no credentials.
    Operator,
    /// Reads everything an operator can see; writes nothing.
    Viewer,
    /// Sessions only (create, list, extend, end); nothing else.
    Sessions,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Sessions];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Sessions => "sessions",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role: admin, operator, viewer or sessions"))
    }
}

/// `POST /v1/credentials`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    /// 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit; unique.
    pub name: String,
    pub role: Role,
    /// Narrows the credential to the nodes matching this label selector (reads and writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Lifetime such as `90d` (1s-10y); absent: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `sessions` role only: the credential acts for this session owner alone (creates,
    /// sees, extends and ends only that owner's sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A named credential as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CredentialInfo {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The session owner it acts for (`sessions` role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When a request last used it (kept to the minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<DateTime<Utc>>,
    pub revoked: bool,
}

/// Answer to `POST /v1/credentials`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CredentialCreated {
    /// The bearer token: `stc_<name>.<64 hex chars>`.
    pub token: String,
    pub info: CredentialInfo,
}

/// How an audited request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOutcome {
    /// Answered with a 2xx or 3xx status.
    Done,
    /// Refused: no or a bad credential, not allowed, invalid input, a conflict...
    Refused,
    /// Failed on the registry's side (5xx).
    Failed,
}

/// One write, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    /// Orders records; pass the last one as `?after=` for the next page.
    pub id: String,
    pub time: DateTime<Utc>,
    /// The credential's name (`admin-token`, `read-token`, a named credential) or a JWT's
    /// subject; `-` when no valid credential was sent.
    pub actor: String,
    /// The caller's role, when it had a valid credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The kind of credential (`admin`, `read`, `named`, `jwt`, `node`), so that a JWT whose
    /// subject happens to be a credential's name is told apart from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::api::CredentialKind>,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub method: String,
    /// The route, as in the API document (`/v1/nodes/{id}/spec`).
    pub route: String,
    /// What was written: `node/<id>`, `fragment/<name>`, `payload/<name>/<version>`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub outcome: AuditOutcome,
    pub status: u16,
    /// Why it was refused or failed (the error message of the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
