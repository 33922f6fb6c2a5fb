//! The reconciler's self-healing state: every workload's escalation ladder and rollback (the
//! heal tracker's `HealState`, loaded from the store on first use, saved when changed), the
//! spec a pass converges once rollbacks are applied, operator resets, and when the next probe
//! of any registered kind is due.

use steward_proto::{NodeSpec, WorkloadRef};
use tracing::info;

use super::Reconciler;
use crate::heal::tracker::{effective, HealState};

impl Reconciler {
    /// How long until an agent-side probe of `spec`'s workloads is due, if any runs.
    pub fn next_probe_in(&self, spec: &NodeSpec) -> Option<std::time::Duration> {
        let due = self.workloads.iter().filter_map(|w| w.next_probe_in(spec));
        due.min()
    }

    /// An operator's reset: the workload's ladder back to the bottom and its rollback dropped,
    /// so the next pass converges it to its spec afresh (a workload of another kind with the
    /// same name is left alone).
    pub fn reset_workload(&mut self, w: &WorkloadRef) {
        if self.heal_state().reset(w) {
            info!(workload = %w, "escalation ladder reset by an operator (any rollback dropped)");
        } else {
            info!(workload = %w, "reset asked for a workload with no escalation; nothing to do");
        }
    }

    /// The ladders and rollback memory, loaded from the store on first use.
    pub(super) fn heal_state(&mut self) -> &mut HealState {
        self.heal.state.get()
    }

    /// What a pass converges: the spec, with rolled-back containers and VMs at their last
    /// healthy configuration and those workloads' payloads at the versions they had then.
    pub(super) fn effective_spec(&mut self, spec: &NodeSpec) -> NodeSpec {
        let state = self.heal_state();
        let mut eff = spec.clone();
        eff.containers = effective(&mut state.containers, &spec.containers, &spec.payloads);
        eff.vms = effective(&mut state.vms, &spec.vms, &spec.payloads);
        let back = state.payloads_in_force();
        for (name, from) in crate::heal::rollback::restore_payloads(&mut eff.payloads, &back) {
            info!(payload = %name, from_version = %from, "payload held at its version from before the rollback");
        }
        eff
    }
}
