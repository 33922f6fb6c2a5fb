//! Node, its facts, health, observed status and heartbeats.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Labels: `key -> value`. Keys and values are checked by `validate::validate_labels`.
pub type Labels = BTreeMap<String, String>;

/// What kind of machine the agent runs on (detected by the agent).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    BareMetal,
    Vm,
    Container,
    #[default]
    Unknown,
}

/// One mounted disk as the agent saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct DiskFact {
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Facts the agent reports at enrolment (and again when they change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct NodeFacts {
    /// `/etc/machine-id`: the same machine enrolling again keeps its node.
    pub machine_id: String,
    pub hostname: String,
    pub kind: NodeKind,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disks: Vec<DiskFact>,
    pub docker: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    pub kvm: bool,
    pub agent_version: String,
}

/// Health derived by the registry from heartbeats.
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
pub enum Health {
    Ready,
    Stale,
    Down,
    Decommissioned,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Stale => "stale",
            Health::Down => "down",
            Health::Decommissioned => "decommissioned",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Health {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ready" => Ok(Health::Ready),
            "stale" => Ok(Health::Stale),
            "down" => Ok(Health::Down),
            "decommissioned" => Ok(Health::Decommissioned),
            other => Err(format!(
                "unknown health {other:?}: expected ready, stale, down or decommissioned"
            )),
        }
    }
}

/// Host statistics sent with heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct HostStats {
    pub cpu_percent: f32,
    pub load1: f32,
    pub load5: f32,
    pub load15: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub data_dir_used_bytes: u64,
    pub data_dir_total_bytes: u64,
    pub uptime_secs: u64,
}

/// A node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    #[schemars(schema_with = "crate::patterns::labels_schema")]
    pub labels: Labels,
    pub facts: NodeFacts,
    pub health: Health,
    pub enrolled_at: DateTime<Utc>,
    #[serde(default)]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Round-trip of the previous heartbeat as measured by the agent, in milliseconds.
    #[serde(default)]
    pub heartbeat_rtt_ms: Option<f64>,
    /// Generation of the node's effective desired spec (0: none written yet).
    pub generation: u64,
    /// Generation the agent last reported as applied.
    pub observed_generation: u64,
    #[serde(default)]
    pub stats: Option<HostStats>,
    /// The last full status the agent sent.
    #[serde(default)]
    pub status: Option<NodeStatus>,
    /// True when the last status shows drift (see `drift`); computed by the registry.
    #[serde(default)]
    pub drifted: bool,
    /// What drifted according to the last status: payloads whose file on disk does not have
    /// the pinned sha256 (or is missing), and resources in state `drifted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    /// "rolled back from generation N": the newest generation the agent rolled a workload back
    /// from, per the last status; computed by the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<u64>,
    /// The reconcile pass the agent is in, per its last heartbeat; absent between passes (and
    /// from agents that do not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<PassProgress>,
}

/// How far the agent's current reconcile pass has got. A pass that a newer generation takes
/// over stops between two actions; `observed_generation` only ever names a generation whose
/// pass ran to its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PassProgress {
    /// The generation being applied.
    pub generation: u64,
    /// Actions carried out so far in this pass (failed ones included).
    pub done: u64,
    /// Actions planned so far: each phase adds its own when it plans, so `total` grows as the
    /// pass moves from one phase to the next.
    pub total: u64,
    /// The phase at work: `networks`, `payloads`, `containers`, `vms` or `deletions`.
    pub phase: String,
    /// When the pass started.
    pub started_at: DateTime<Utc>,
}

/// One drifted resource of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Drift {
    pub kind: ResourceKind,
    pub name: String,
    /// Payloads: the deployed file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Payloads: the pinned sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Payloads: the sha256 found on disk; `None` when the file is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// One line for people, e.g. `/opt/tc: sha256 abc… expected def…` or `file missing`.
    pub detail: String,
}

impl NodeStatus {
    /// Every drift this status shows: payload attestations with `actual != expected` (or a
    /// missing file), then resources in state `drifted` not already listed.
    pub fn drift(&self) -> Vec<Drift> {
        let mut out: Vec<Drift> = self
            .payloads
            .iter()
            .filter(|p| p.actual.as_deref() != Some(p.expected.as_str()))
            .map(|p| Drift {
                kind: ResourceKind::Payload,
                name: p.name.clone(),
                path: Some(p.path.clone()),
                expected: Some(p.expected.clone()),
                actual: p.actual.clone(),
                detail: match &p.actual {
                    None => format!("{}: file missing (expected sha256 {})", p.path, p.expected),
                    Some(a) => format!("{}: sha256 {a}, expected {}", p.path, p.expected),
                },
            })
            .collect();
        for r in &self.resources {
            let listed = out.iter().any(|d| d.kind == r.kind && d.name == r.name);
            if r.state == ResourceState::Drifted && !listed {
                out.push(Drift {
                    kind: r.kind,
                    name: r.name.clone(),
                    path: None,
                    expected: None,
                    actual: None,
                    detail: r.error.clone().unwrap_or_else(|| "drifted".into()),
                });
            }
        }
        out
    }
}

/// State of one managed resource as the agent observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceState {
    Pending,
    Converged,
    Failed,
    Drifted,
    /// A name held by something Steward does not own; left alone.
    Conflict,
}

/// Kind of a managed resource.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    Container,
    Vm,
    Network,
    Payload,
    /// The spec as a whole, refused before any action (e.g. over the agent's `[limits]`).
    Spec,
}

/// The kinds of workload an agent runs (a container and a VM may share a name).
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
pub enum WorkloadKind {
    Container,
    Vm,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 2] = [WorkloadKind::Container, WorkloadKind::Vm];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Container => "container",
            WorkloadKind::Vm => "vm",
        }
    }

    /// The kinds for a message: `container or vm`.
    pub fn choices() -> String {
        Self::ALL.map(Self::as_str).join(" or ")
    }

    /// `container` or `vm`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The list of a `NodeSpec` holding workloads of this kind: `containers`, `vms`.
    pub fn field(self) -> &'static str {
        match self {
            WorkloadKind::Container => "containers",
            WorkloadKind::Vm => "vms",
        }
    }

    /// Its name in a sentence's first word: `Container`, `VM`.
    pub fn title(self) -> &'static str {
        match self {
            WorkloadKind::Container => "Container",
            WorkloadKind::Vm => "VM",
        }
    }

    /// The kind of resource a workload of this kind is reported as.
    pub fn resource(self) -> ResourceKind {
        match self {
            WorkloadKind::Container => ResourceKind::Container,
            WorkloadKind::Vm => ResourceKind::Vm,
        }
    }
}

/// One workload, named with its kind.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub name: String,
}

impl WorkloadRef {
    pub fn new(kind: WorkloadKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// Observed state of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResourceStatus {
    pub kind: ResourceKind,
    pub name: String,
    pub state: ResourceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub escalation_level: u32,
    /// Extra facts about a converged resource, e.g. a VM's accelerator ("tcg (KVM not used:
    /// ...)"). Absent in older agents' reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Where the workload stands on its escalation ladder; absent while it has not failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// The agent returned this workload to its last healthy configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBack>,
    /// `starting`, `healthy` or `unhealthy`: Docker's health check, or the agent's own TCP/HTTP
    /// probe; absent without a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// A workload's network activity: bytes it sent on its interfaces (a container's veths, a
    /// VM's taps; what it received is left out, as an idle workload receives the host's own
    /// background traffic), cumulative and only ever compared for change (session idle
    /// reaping); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<u64>,
    /// A workload's IP addresses on its networks: a container's on its Docker networks, a
    /// VM's lab leases (one per NIC on a lab); absent when none is known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// An automatic rollback: the spec of `from_generation` left the workload failing past its
/// grace period, so it runs the configuration it last ran healthy, from `to_generation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RolledBack {
    pub from_generation: u64,
    pub to_generation: u64,
    pub reason: String,
}

impl ResourceStatus {
    /// The status of workload `w`, with no restarts, escalation, detail or rollback.
    pub fn of_workload(w: &WorkloadRef, state: ResourceState, error: Option<String>) -> Self {
        Self::new(w.kind.resource(), &w.name, state, error)
    }

    /// The workload it is the status of, when it is one's.
    pub fn workload(&self) -> Option<WorkloadRef> {
        let kind = WorkloadKind::ALL
            .into_iter()
            .find(|k| k.resource() == self.kind)?;
        Some(WorkloadRef::new(kind, &self.name))
    }

    /// A status with no restarts, escalation, detail or rollback.
    pub fn new(
        kind: ResourceKind,
        name: impl Into<String>,
        state: ResourceState,
        error: Option<String>,
    ) -> Self {
        ResourceStatus {
            kind,
            name: name.into(),
            state,
            error,
            restarts: 0,
            escalation_level: 0,
            detail: None,
            escalation: None,
            rolled_back: None,
            health: None,
            activity: None,
            addresses: Vec::new(),
        }
    }
}

/// A workload's escalation ladder (restart → recreate, VMs: restart → reset → recreate → failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Escalation {
    /// `restart`, `reset`, `recreate`, or `failed` (the top: left stopped until reset).
    pub position: String,
    /// Attempts made on the current rung.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_at: Option<DateTime<Utc>>,
    /// No further step before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step_at: Option<DateTime<Utc>>,
}

/// A payload as found on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PayloadAttestation {
    pub name: String,
    pub version: String,
    pub path: String,
    pub expected: String,
    /// `None` when the file is missing.
    #[serde(default)]
    pub actual: Option<String>,
}

/// Full observed status, sent only when it changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct NodeStatus {
    pub observed_generation: u64,
    pub resources: Vec<ResourceStatus>,
    pub payloads: Vec<PayloadAttestation>,
    /// Host ports in use in the agent's network namespace when the status was made: TCP
    /// ports listened on and UDP ports bound by an unconnected socket, IPv4 and IPv6, sorted
    /// and without duplicates — but the host ports the containers of the applied spec publish
    /// (the registry accounts for those from the specs and the sessions). Empty when they
    /// could not be read, and from older agents. The registry never allocates one of them to
    /// a session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports_in_use: Vec<u16>,
    /// Opaque digest of this status (the agent's choice of hash); echoed in heartbeats.
    pub digest: String,
}

/// The small, frequent message an agent sends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Heartbeat {
    pub observed_generation: u64,
    /// Digest of the agent's current full status; the registry asks for the status when it
    /// differs from the one it holds.
    pub status_digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<HostStats>,
    /// Round-trip of the previous heartbeat, measured by the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The reconcile pass in progress, if any (absent from older agents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<PassProgress>,
}

/// The registry's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatResponse {
    /// Current generation of the node's effective spec.
    pub generation: u64,
    pub server_time: DateTime<Utc>,
    /// True when the registry's copy of the status has another digest: send `PUT .../status`.
    pub status_wanted: bool,
    pub heartbeat_interval_secs: u64,
    /// Workloads whose escalation ladder (and rollback) an operator reset since the last
    /// heartbeat, by name only: every workload of that name, whatever its kind (the form older
    /// registries send, and a reset asked without a kind); the agent starts them afresh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reset: Vec<String>,
    /// Resets asked for one kind of workload: only that workload is started afresh (older
    /// agents ignore this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reset_workloads: Vec<WorkloadRef>,
}
