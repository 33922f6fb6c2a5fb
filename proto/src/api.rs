//! Request and response bodies of the registry's HTTP API (`/v1`).

use crate::node::{Labels, NodeFacts};
use crate::spec::NodeSpec;
use crate::validate::Problem;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every error body: a message, a machine-readable code and, for invalid input, every problem
/// with its field path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiError {
    pub error: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// `POST /v1/enrollment-tokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CreateEnrollmentToken {
    /// How many enrolments the token allows (default 1).
    #[schemars(range(min = 1, max = crate::patterns::TOKEN_USES_MAX))]
    pub uses: Option<u32>,
    /// Lifetime such as `24h` (default `24h`).
    pub expires_in: Option<String>,
    /// Labels given to nodes enrolled with this token.
    #[schemars(schema_with = "crate::patterns::labels_schema")]
    pub labels: Labels,
    pub description: Option<String>,
}

/// An enrollment token as listed (never the secret itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EnrollmentTokenInfo {
    pub id: String,
    pub description: Option<String>,
    #[schemars(schema_with = "crate::patterns::labels_schema")]
    pub labels: Labels,
    pub uses_total: u32,
    pub uses_left: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
}

/// Answer to `POST /v1/enrollment-tokens`: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EnrollmentTokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub info: EnrollmentTokenInfo,
}

/// `POST /v1/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// An enrollment token (creates a new node), or a re-enrolment grant issued by an admin
    /// for one node (`POST /v1/nodes/{id}/reenroll`; re-enrols that node).
    pub token: String,
    pub facts: NodeFacts,
    /// Proof that the caller is the node already enrolled: its current node secret. With a
    /// valid one an enrollment token re-enrols that node (secret rotated); without it, a
    /// machine id that belongs to an enrolled node is refused (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_secret: Option<String>,
}

/// `POST /v1/nodes/{id}/reenroll` (body optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CreateReenrollGrant {
    /// Lifetime such as `1h` (default `1h`, 1s to 7d).
    pub expires: Option<String>,
}

/// Answer to `POST /v1/nodes/{id}/reenroll`: the only time the grant is shown. The host enrols
/// with it as its token (`steward-agent --token GRANT enroll`): once, before `expires_at`, as
/// node `node_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReenrollGrantCreated {
    pub grant: String,
    pub id: String,
    pub node_id: String,
    pub expires_at: DateTime<Utc>,
}

/// Answer to an enrolment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EnrollResponse {
    pub node_id: String,
    pub node_secret: String,
    pub heartbeat_interval_secs: u64,
    /// True when this machine was already enrolled and its secret was rotated.
    pub rotated: bool,
}

/// `GET /v1/nodes/{id}/spec`: the effective spec and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpecDocument {
    pub node_id: String,
    pub generation: u64,
    /// Effective spec: the node's own spec merged with every matching fragment.
    pub spec: NodeSpec,
    /// The node's own spec, as last written with `PUT /v1/nodes/{id}/spec`.
    pub own: NodeSpec,
    /// Names of the fragments merged in.
    pub fragments: Vec<String>,
}

/// Answer to a spec or fragment write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpecWritten {
    pub node_id: String,
    pub generation: u64,
}

/// `PUT /v1/fragments/{name}`: a spec fragment applied to every node matching `selector`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FragmentWrite {
    /// Label selector, e.g. `role=builder,env!=dev`.
    pub selector: String,
    pub spec: NodeSpec,
}

/// A stored fragment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Fragment {
    pub name: String,
    pub selector: String,
    pub spec: NodeSpec,
    pub revision: u64,
    pub updated_at: DateTime<Utc>,
}

/// Answer to a fragment write or delete: which nodes got a new generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FragmentWritten {
    pub name: String,
    pub revision: u64,
    /// The nodes that got a new generation, by id: the first [`FragmentWritten::LISTED`] of them.
    pub affected: Vec<SpecWritten>,
    /// How many nodes got a new generation (more than `affected` lists when above
    /// [`FragmentWritten::LISTED`]). Older registries did not send it: read as `affected`'s length.
    #[serde(default)]
    pub affected_count: Option<u64>,
}

impl FragmentWritten {
    /// The most affected nodes an answer lists.
    pub const LISTED: usize = 1_000;

    /// How many nodes got a new generation.
    pub fn count(&self) -> u64 {
        self.affected_count.unwrap_or(self.affected.len() as u64)
    }
}

/// `PATCH /v1/nodes/{id}`: JSON merge patch of labels (`null` removes a key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NodePatch {
    #[schemars(schema_with = "crate::patterns::label_patch_schema")]
    pub labels: BTreeMap<String, Option<String>>,
}

/// Which kind of credential made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// The admin token file.
    Admin,
    /// The read token.
    Read,
    /// A named credential (`/v1/credentials`); the event's `actor` names it.
    Named,
    /// A JWT from a configured OIDC issuer; the event's `actor` is its subject.
    Jwt,
    Node,
    Enrollment,
    System,
}

/// Kinds of event in the registry's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    TokenCreated,
    TokenRevoked,
    /// A named API credential was created.
    CredentialCreated,
    /// A named API credential was revoked.
    CredentialRevoked,
    NodeEnrolled,
    NodeReenrolled,
    /// An enrolment refused: a machine id of an enrolled node without proof, a node secret
    /// that is not the node's current one, or a grant that does not fit.
    EnrollRefused,
    /// An admin issued a re-enrolment grant for a node.
    ReenrollGrantCreated,
    SpecWritten,
    FragmentWritten,
    FragmentDeleted,
    LabelsChanged,
    HealthChanged,
    StatusChanged,
    NodeDecommissioned,
    /// An operator reset a workload's escalation ladder.
    WorkloadReset,
    /// An alert reached a webhook.
    AlertDelivered,
    /// An attempt to deliver an alert failed (retried, or given up as the message says).
    AlertFailed,
    PayloadUploaded,
    PayloadDeleted,
    /// A rollout step: started, batch started/converged, halted, paused, resumed, aborted,
    /// done, rolled back (the message says which).
    Rollout,
    TemplateWritten,
    TemplateDeleted,
    /// A session step: created, running, failed, extended, ended (the message says which, and
    /// why it ended: expired, deleted, node decommissioned).
    Session,
}

/// The answer to a workload reset: queued for the node's next heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResetQueued {
    pub node_id: String,
    pub workload: String,
    /// The kind asked for; absent: every workload of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::node::WorkloadKind>,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A node stopped heartbeating for `down_after` intervals.
    NodeDown,
    /// A workload reached the top of its escalation ladder and was marked failed.
    WorkloadFailed,
    /// A deployed payload no longer matches its pinned sha256 (or is missing).
    PayloadDrift,
    /// The agent returned a workload to its last healthy configuration.
    Rollback,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NodeDown => "node-down",
            AlertKind::WorkloadFailed => "workload-failed",
            AlertKind::PayloadDrift => "payload-drift",
            AlertKind::Rollback => "rollback",
        }
    }
}

/// The JSON body the registry POSTs to a webhook. With a webhook secret, the request carries
/// `X-Steward-Signature: sha256=<hex HMAC-SHA256 of the body>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Alert {
    /// Unique per alert; the same on every retry (receivers can deduplicate on it).
    pub id: String,
    pub kind: AlertKind,
    pub node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The name of the workload or payload concerned, when the alert is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The workload concerned, named with its kind (a container and a VM may share a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<crate::node::WorkloadRef>,
    pub time: DateTime<Utc>,
    pub message: String,
    /// The registry's public URL, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The workload the event is about, when it is about one (e.g. a reset of `vm kali`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<crate::node::WorkloadRef>,
    pub credential: CredentialKind,
    /// Who did it: the credential's name (`admin-token`, a named credential, a node id) for
    /// writes; absent for the registry's own doings and in events of older registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub message: String,
}

/// Who does something: the kind of credential and, when known, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub credential: CredentialKind,
    pub name: Option<String>,
}

impl Actor {
    /// The registry itself (health monitor, rollout driver, ...).
    pub const SYSTEM: Actor = Actor {
        credential: CredentialKind::System,
        name: None,
    };

    pub fn new(credential: CredentialKind, name: impl Into<String>) -> Self {
        Actor {
            credential,
            name: Some(name.into()),
        }
    }

    /// Without a name (an enrollment token, a grant: their ids are not who).
    pub fn kind(credential: CredentialKind) -> Self {
        Actor {
            credential,
            name: None,
        }
    }
}

impl Event {
    /// An event to append (numbered by the store on append), now, with no generation.
    pub fn new(
        kind: EventKind,
        node_id: Option<&str>,
        workload: Option<crate::node::WorkloadRef>,
        by: &Actor,
        message: String,
    ) -> Self {
        Event {
            seq: 0,
            time: Utc::now(),
            kind,
            node_id: node_id.map(str::to_string),
            generation: None,
            workload,
            credential: by.credential,
            actor: by.name.clone(),
            message,
        }
    }
}

/// A file the registry serves for download from its `packages_dir` (`GET /v1/packages`): the
/// agent's Debian package, for `GET /install.sh` and `stewardctl cloud-init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PackageInfo {
    /// File name, e.g. `steward-agent_0.1.0_amd64.deb`.
    pub file: String,
    /// Package name from the file name, e.g. `steward-agent`.
    pub package: String,
    pub version: String,
    /// Debian architecture, e.g. `amd64`.
    pub arch: String,
    pub size: u64,
    /// sha256 of the file, lower-case hex.
    #[schemars(regex(pattern = crate::patterns::SHA256))]
    pub sha256: String,
    /// Where to download it, relative to the registry's base URL: `/packages/{file}`.
    pub path: String,
}

/// One immutable version of a payload (`PUT /v1/payloads/{name}/{version}`): its content is the
/// blob `GET /v1/blobs/{sha256}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PayloadVersion {
    #[schemars(regex(pattern = crate::patterns::RESOURCE_NAME))]
    pub name: String,
    #[schemars(regex(pattern = crate::patterns::PAYLOAD_VERSION))]
    pub version: String,
    /// sha256 of the content, lower-case hex.
    #[schemars(regex(pattern = crate::patterns::SHA256))]
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    pub created_at: DateTime<Utc>,
}

/// A payload as listed by `GET /v1/payloads`: its name and versions (oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PayloadSummary {
    pub name: String,
    pub versions: Vec<String>,
    /// Sum of the sizes of its versions (a blob shared by two versions counts twice).
    pub total_size: u64,
}

/// `POST /v1/rollouts`: move payload `payload` to `version` on the nodes matching `selector`,
/// in batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRollout {
    #[schemars(regex(pattern = crate::patterns::RESOURCE_NAME))]
    pub payload: String,
    #[schemars(regex(pattern = crate::patterns::PAYLOAD_VERSION))]
    pub version: String,
    /// Label selector (empty: every node whose spec has the payload).
    #[serde(default)]
    pub selector: String,
    /// Batch size: a count (`"2"`) or a percentage of the nodes (`"25%"`); default `"1"`.
    #[serde(default)]
    pub batch: Option<String>,
    /// How long one batch may take to report converged and attested, e.g. `"5m"`;
    /// default `"10m"`.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    Running,
    /// Stopped by an operator; no new batch starts until resumed.
    Paused,
    /// Stopped by a failed or timed-out batch (the message names the nodes).
    Halted,
    /// Stopped for good; nodes keep the version they have.
    Aborted,
    Done,
    /// Putting the previous version back on every node touched.
    RollingBack,
    RolledBack,
}

impl RolloutState {
    /// A rollout in this state may still change nodes (one per payload at a time).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::Running
                | RolloutState::Paused
                | RolloutState::Halted
                | RolloutState::RollingBack
        )
    }
}

/// Where one node of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutNodeState {
    /// Its batch has not started.
    Waiting,
    /// The new version is in its spec; waiting for it to report converged and attested.
    Applying,
    Converged,
    /// Reported the payload failed, or did not converge in time (see `error`).
    Failed,
    /// The previous version was put back.
    RolledBack,
}

/// One node of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RolloutNode {
    pub node_id: String,
    /// Index of its batch (0-based).
    pub batch: usize,
    /// The payload version in its effective spec before the rollout.
    pub previous_version: String,
    #[schemars(regex(pattern = crate::patterns::SHA256))]
    pub previous_sha256: Option<String>,
    /// The rollout override it had before (from an earlier rollout), restored on rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_override: Option<String>,
    pub state: RolloutNodeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A rollout and its progress (`GET /v1/rollouts/{rollout}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rollout {
    pub id: String,
    pub payload: String,
    pub version: String,
    /// sha256 of `payload@version`.
    #[schemars(regex(pattern = crate::patterns::SHA256))]
    pub sha256: String,
    pub selector: String,
    pub batch: String,
    pub timeout_secs: u64,
    pub state: RolloutState,
    pub batch_count: usize,
    /// The batch in progress (or next to start); `batch_count` when all are done.
    pub current_batch: usize,
    /// When the current batch (or the rollback) started; `None` before it starts.
    #[serde(default)]
    pub batch_started_at: Option<DateTime<Utc>>,
    pub nodes: Vec<RolloutNode>,
    /// What happened last, e.g. why it halted (naming the nodes).
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
