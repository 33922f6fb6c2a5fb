//! The reconciler's own types: what the drivers observed, and the actions the planner asks for.
//! Drivers convert to and from these at their border; nothing here knows about Docker's API.

use std::collections::BTreeSet;

use steward_proto::quantity::{parse_cpus, parse_memory};
use steward_proto::ContainerSpec;

/// Labels Steward puts on everything it creates.
pub const LABEL_MANAGED: &str = "io.steward.managed";
pub const LABEL_NAME: &str = "io.steward.name";
pub const LABEL_SPEC_HASH: &str = "io.steward.spec-hash";
pub const LABEL_NODE: &str = "io.steward.node";
/// The session (one of the spec's leases) a container or volume belongs to.
pub const LABEL_SESSION: &str = "io.steward.session";
/// On a session volume: kept when its session ends (`keep_volumes`).
pub const LABEL_KEEP: &str = "io.steward.keep";

/// Settings a container was observed to run with, compared against the spec to find drift.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedConfig {
    /// Image reference the container was created from (as given at create time).
    pub image: String,
    /// Memory limit in bytes (0 = none).
    pub memory: i64,
    /// CPU limit in billionths of a CPU (0 = none).
    pub nano_cpus: i64,
    pub privileged: bool,
}

/// One container as the Docker driver observed it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    /// Docker name without the leading '/'.
    pub name: String,
    /// Carries `io.steward.managed=true`.
    pub managed: bool,
    /// `io.steward.name`: the spec name it was created for.
    pub steward_name: Option<String>,
    /// `io.steward.spec-hash`.
    pub spec_hash: Option<String>,
    /// `io.steward.node`: the node (agent identity) that created it.
    pub node: Option<String>,
    pub running: bool,
    /// Docker's state word: created, running, exited, dead, ...
    pub state: String,
    pub exit_code: Option<i64>,
    pub restart_count: u32,
    /// Docker's health check verdict (`starting`, `healthy`, `unhealthy`), when it has one.
    pub health: Option<String>,
    /// The pid of its init process while it runs (in the engine's pid namespace): the agent's
    /// own probes run in this process's network namespace.
    pub pid: Option<u32>,
    /// Its IP addresses on its Docker networks (by network name, IPv4 then IPv6 of each).
    pub addresses: Vec<std::net::IpAddr>,
    pub config: ObservedConfig,
}

/// Everything observed in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub containers: Vec<ObservedContainer>,
    /// Image references present locally (`repo:tag` and `repo@digest` forms).
    pub images: BTreeSet<String>,
}

/// One step for a driver to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Pull an image that is not present; the containers needing it follow.
    Pull {
        image: String,
        for_containers: Vec<String>,
    },
    /// Create and start a container from the spec.
    Create { spec: ContainerSpec, hash: String },
    /// Start an existing managed container that is not running.
    Start { name: String, id: String },
    /// Remove the old container, then create and start from the spec.
    Recreate {
        spec: ContainerSpec,
        hash: String,
        old_id: String,
        reason: String,
    },
    /// Restart a managed container (the escalation ladder's first rung).
    Restart { name: String, id: String },
    /// Stop a managed container and leave it stopped (the top of the ladder: failed).
    Stop { name: String, id: String },
    /// Remove a managed container no longer wanted (or a stray duplicate).
    Remove {
        name: String,
        id: String,
        reason: String,
    },
}

impl Action {
    /// Short kind name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Pull { .. } => "pull",
            Action::Create { .. } => "create",
            Action::Start { .. } => "start",
            Action::Restart { .. } => "restart",
            Action::Stop { .. } => "stop",
            Action::Recreate { .. } => "recreate",
            Action::Remove { .. } => "remove",
        }
    }

    /// The spec name of the container this action is for (Pull: none).
    pub fn container(&self) -> Option<&str> {
        match self {
            Action::Pull { .. } => None,
            Action::Create { spec, .. } | Action::Recreate { spec, .. } => Some(&spec.name),
            Action::Start { name, .. }
            | Action::Restart { name, .. }
            | Action::Stop { name, .. }
            | Action::Remove { name, .. } => Some(name),
        }
    }
}

/// What the planner concluded about one desired container before anything is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Running as specified: nothing to do.
    Converged,
    /// Actions are planned for it.
    Pending,
    /// Actions are planned because it had drifted from the spec (the reason says how).
    Drifted(String),
    /// The name is held by a container Steward does not own; left alone.
    Conflict(String),
    /// The node's local policy forbids it.
    Refused(String),
}

/// The planner's output: actions in order, and a verdict for every desired container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub verdicts: Vec<(String, Verdict)>,
}

/// Memory limit in bytes and CPU limit in nano-CPUs the spec asks for (0 = none).
pub fn limits(c: &ContainerSpec) -> (i64, i64) {
    let mem = c
        .resources
        .memory
        .as_ref()
        .and_then(|q| parse_memory(q).ok())
        .map(|b| b as i64)
        .unwrap_or(0);
    let cpus = c
        .resources
        .cpus
        .as_ref()
        .and_then(|q| parse_cpus(q).ok())
        .map(|c| (c * 1e9).round() as i64)
        .unwrap_or(0);
    (mem, cpus)
}
