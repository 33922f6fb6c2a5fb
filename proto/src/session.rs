//! Sessions on the wire: templates (a spec piece with placeholders, its parameters, what each
//! session is allocated and its limits) and sessions (an owned, expiring instance of a template
//! placed on one node).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::spec::Resources;

fn is_false(b: &bool) -> bool {
    !*b
}

/// `PUT /v1/templates/{name}`: a spec piece rendered once per session.
///
/// Strings anywhere in `spec` may hold placeholders: `{{session}}`, `{{owner}}`,
/// `{{param.NAME}}`, `{{port.NAME}}`, `{{volume.NAME}}`, `{{lab.vlan}}`, `{{lab.bridge}}`,
/// `{{lab.cidr}}`, `{{lab.gateway}}`, `{{lab.ip.N}}`. In a numeric field (`vlan`, `id`, `mtu`,
/// `cpus`, `default_pvid`, `retries`) a string that is exactly one placeholder of a number (a
/// port, the VLAN, an `int` parameter) becomes that number; in a boolean field (`privileged`,
/// `up`, ...) one of a `bool` parameter becomes that boolean. Values are
/// substituted once: a parameter's value is data, never read as a placeholder or as spec syntax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateWrite {
    /// A `NodeSpec` with placeholders (containers, VMs, networks, payloads).
    pub spec: serde_json::Value,
    /// Declared parameters, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamDef>,
    /// Host ports allocated per session, by name (`{{port.NAME}}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Docker volumes created per session, by name (`{{volume.NAME}}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Keep the session's volumes when it ends.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_volumes: bool,
    /// Allocate a VLAN from the fleet's pool for each session (`{{lab.*}}`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub lab: bool,
    /// Nodes a session may be placed on (label selector; empty: any node).
    #[serde(default)]
    pub selector: String,
    /// Lifetime of a session when its create names none (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Longest lifetime a create or an extension may reach (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
    /// End a session whose workloads' network activity (bytes in and out, reported by the
    /// agent) has not moved for this long, such as `30m` (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Most live sessions of this template per owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_owner: Option<u32>,
    /// Most live sessions of this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// What a session reserves on its node, for placement.
    #[serde(default)]
    pub reserve: Resources,
    /// Unowned sessions kept running (hot spares): a create with the default parameters claims
    /// one at once (its lifetime starts then) and the registry starts another. A spare is
    /// rendered before it has an owner: `{{owner}}` is empty in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spares: Option<u32>,
}

/// The type of a template parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    String,
    Int,
    Bool,
}

/// A declared template parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamDef {
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Used when a create gives none; without it the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// `int`: smallest value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// `int`: largest value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// `string`: the values allowed (any string of at most 256 characters without control
    /// characters when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_of: Vec<String>,
}

/// A stored template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Template {
    pub name: String,
    #[serde(flatten)]
    pub body: TemplateWrite,
    pub revision: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCreate {
    pub template: String,
    /// Who the session is for; defaults to the caller's name. An owner-scoped caller may name
    /// only itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Lifetime such as `2h` (default: the template's `ttl`; at most its `max_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// `POST /v1/sessions/{id}/extend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionExtend {
    /// How much longer, such as `1h` (the lifetime stays within the template's `max_ttl`).
    pub by: String,
}

/// Where a session stands.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// Placed; its node has not reported all its workloads running yet.
    Pending,
    Running,
    /// Its node reports one of its workloads failed (`reason` says which).
    Failed,
    /// Ended (`reason`: expired, deleted, node decommissioned); its allocations are free.
    Ended,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::Running => "running",
            SessionState::Failed => "failed",
            SessionState::Ended => "ended",
        }
    }
    /// Not ended: it holds its allocations and counts towards the quotas.
    pub fn is_live(self) -> bool {
        self != SessionState::Ended
    }
}

impl std::str::FromStr for SessionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(SessionState::Pending),
            "running" => Ok(SessionState::Running),
            "failed" => Ok(SessionState::Failed),
            "ended" => Ok(SessionState::Ended),
            _ => Err(format!(
                "{s:?} is not a session state: pending, running, failed or ended"
            )),
        }
    }
}

/// A session's lab network, derived from its VLAN as `networks.labs` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LabAllocation {
    pub vlan: u16,
    pub bridge: String,
    pub cidr: String,
    pub gateway: String,
}

/// What a session was allocated (stored with it, free again once it has ended).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Allocations {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabAllocation>,
}

/// Where to reach a session: `host:port` of a published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoint {
    pub name: String,
    pub address: String,
}

/// A session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Session {
    pub id: String,
    pub template: String,
    pub template_revision: u64,
    /// Empty for an unclaimed spare.
    pub owner: String,
    /// An unclaimed hot spare (`spares` of its template).
    #[serde(default, skip_serializing_if = "is_false")]
    pub spare: bool,
    pub node: String,
    pub params: BTreeMap<String, serde_json::Value>,
    pub allocations: Allocations,
    pub reserve: Resources,
    pub state: SessionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Filled once running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
}
