//! One kind of workload as the reconcile pass sees it: the [`WorkloadPhase`] every kind
//! implements (containers in `reconciler/containers.rs`, VMs in `vm/`) and registers in the
//! reconciler's list, which the pass loops over. A kind observes through its driver, plans with
//! its own pure `plan(desired, observed)` (`reconcile::plan`, `vm::plan::plan`), puts the plan
//! through the heal tracker (`heal/tracker.rs`), applies it until the pass is superseded and
//! reports one `ResourceStatus` per workload (`heal::status::workload_status`).

use std::time::Duration;

use async_trait::async_trait;
use steward_proto::{NodeSpec, ResourceStatus, WorkloadKind, WorkloadRef};

use crate::docker::engine::EngineSlot;
use crate::heal::ladder::LadderPolicy;
use crate::heal::tracker::HealState;
use crate::network::counters::Interfaces;
use crate::network::NetOutcome;
use crate::pass::Pass;
use crate::reconcile::Policy;

/// What one pass gives every kind's phase.
pub struct PassCx<'a> {
    /// The pass's effective spec (rollbacks applied).
    pub spec: &'a NodeSpec,
    /// The host networks' outcome: bridges, lab addresses, what cannot be used.
    pub net: &'a NetOutcome,
    /// Every workload's ladder and rollback memory (stored by the reconciler).
    pub heal: &'a mut HealState,
    pub ladder: LadderPolicy,
    pub policy: &'a Policy,
    pub node_id: &'a str,
    pub generation: u64,
    /// Asked before each action whether a newer generation took over.
    pub pass: &'a Pass,
    /// The container engine, reached on first use.
    pub engine: &'a mut EngineSlot,
}

/// What a kind's phase made of the pass.
#[derive(Debug, Default)]
pub struct WorkloadPass {
    pub statuses: Vec<ResourceStatus>,
    /// A workload was rolled back: the reconciler converges the old configuration now.
    pub rolled_back: bool,
    /// The workloads seen running, with where their traffic is counted (their activity,
    /// `activity.rs`); one with no traffic of its own (a container on the host's network) is
    /// not listed.
    pub interfaces: Vec<(WorkloadRef, Interfaces)>,
}

/// One kind of workload (see the module docs).
#[async_trait]
pub trait WorkloadPhase: Send + Sync {
    fn kind(&self) -> WorkloadKind;
    /// Restarts a running workload of this kind (a payload it restarts on changed).
    async fn restart(&mut self, name: &str, cx: &mut PassCx<'_>) -> Result<(), String>;
    /// Observe → plan → heal → apply → report for every workload of this kind in `cx.spec`.
    async fn reconcile(&mut self, cx: &mut PassCx<'_>) -> WorkloadPass;
    /// How long until an agent-side probe of `spec`'s workloads of this kind is due.
    fn next_probe_in(&self, spec: &NodeSpec) -> Option<Duration>;
}
