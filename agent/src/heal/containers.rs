//! The container side of self-healing, pure: finds failing managed containers (restarted by
//! Docker since the last pass, stopped against their restart policy, or unhealthy), walks each
//! one's ladder, and rewrites the plan with the ladder's step; a container at the top is stopped
//! and kept stopped until its spec changes. It also remembers each container's last healthy
//! configuration and rolls a spec change that keeps failing past the grace period back to it
//! ([`effective`] then keeps the old configuration until the spec changes again). The
//! reconciler stores [`HealState`] so a restart of the agent forgets neither.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use steward_proto::{
    ContainerSpec, Escalation, PayloadSpec, RestartPolicy, WorkloadKind, WorkloadRef,
};

use super::ladder::{Decision, Ladder, LadderPolicy, Rung, CONTAINER_RUNGS};
use super::rollback::{config_hash, payloads_of, Track};
use super::state::{escalation_of, verdict};
pub use super::status::Healed;
use crate::reconcile::plan::spec_hash;
use crate::reconcile::{Action, Observed, Plan};

/// One container's ladder and what it was last seen as.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub ladder: Ladder,
    /// The spec the ladder is about: another spec starts a fresh ladder.
    pub spec_hash: String,
    pub container_id: String,
    /// Docker's restart count of `container_id` at the last pass.
    pub restart_count: u32,
    /// Last healthy configuration and rollback (stored in the same JSON object).
    #[serde(flatten)]
    pub track: Track<ContainerSpec>,
}

/// Every managed container's ladder (stored as `state/heal.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealState {
    pub containers: BTreeMap<String, Entry>,
    /// The VMs' ladders and rollbacks (`vms.rs`).
    #[serde(default)]
    pub vms: BTreeMap<String, super::vms::VmEntry>,
}

impl crate::store::Record for HealState {
    const KEY: &'static str = "heal";
}

impl HealState {
    /// An operator's reset of one workload: its ladder back to the bottom, its rollback
    /// dropped. False when it had no entry.
    pub fn reset(&mut self, w: &WorkloadRef) -> bool {
        match w.kind {
            WorkloadKind::Container => self.containers.get_mut(&w.name).map(|e| {
                e.ladder.reset();
                e.track.reset();
            }),
            WorkloadKind::Vm => self.vms.get_mut(&w.name).map(|e| {
                e.ladder.reset();
                e.track.reset();
            }),
        }
        .is_some()
    }

    /// The payload versions the rollbacks in force hold their workloads' payloads at.
    pub fn payloads_in_force(&self) -> Vec<PayloadSpec> {
        let containers = self
            .containers
            .values()
            .map(|e| e.track.payloads_in_force());
        let vms = self.vms.values().map(|e| e.track.payloads_in_force());
        containers.chain(vms).flatten().cloned().collect()
    }

    /// The sha256 of every payload a workload last ran healthy with: what a rollback may need
    /// again, so the blob cache keeps them.
    pub fn healthy_blobs(&self) -> BTreeSet<String> {
        let containers = self.containers.values().map(|e| &e.track.last_healthy);
        let vms = self.vms.values().map(|e| &e.track.last_healthy);
        containers
            .flat_map(|h| h.iter().flat_map(|h| &h.payloads))
            .chain(vms.flat_map(|h| h.iter().flat_map(|h| &h.payloads)))
            .filter_map(|p| p.sha256.clone())
            .collect()
    }
}

/// The containers to converge: the spec's, except those rolled back, which keep their last
/// healthy configuration until their spec (or a payload they restart on) changes again (then
/// the rollback is forgotten). `payloads` are the spec's.
pub fn effective(
    state: &mut HealState,
    desired: &[ContainerSpec],
    payloads: &[PayloadSpec],
) -> Vec<ContainerSpec> {
    desired
        .iter()
        .map(|c| match state.containers.get_mut(&c.name) {
            Some(e) => {
                let config =
                    config_hash(c, &payloads_of(payloads, WorkloadKind::Container, &c.name));
                e.track.effective(c, &config)
            }
            None => c.clone(),
        })
        .collect()
}

fn escalation(l: &Ladder) -> Escalation {
    escalation_of(l, CONTAINER_RUNGS)
}

/// Why `o` counts as failing now, if it does.
fn failure(
    c: &ContainerSpec,
    o: &crate::reconcile::ObservedContainer,
    e: &Entry,
) -> Option<String> {
    if o.restart_count > e.restart_count {
        return Some(format!(
            "restarted by Docker {} time(s) since the last look (exit code {})",
            o.restart_count - e.restart_count,
            o.exit_code.map_or("?".into(), |c| c.to_string())
        ));
    }
    if o.health.as_deref() == Some("unhealthy") {
        return Some("health check failing".into());
    }
    let stopped = !o.running && matches!(o.state.as_str(), "exited" | "dead");
    let should_run = match c.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => o.exit_code.unwrap_or(1) != 0,
        RestartPolicy::Never => false,
    };
    (stopped && should_run).then(|| {
        format!(
            "stopped (exit code {})",
            o.exit_code.map_or("?".into(), |c| c.to_string())
        )
    })
}

/// Rewrites `plan` (made for `desired`, the [`effective`] containers of spec `generation`) with
/// each failing container's ladder step or rollback, at `now` (unix seconds). `payloads` are
/// the pass's payloads: those restarting a container go with its healthy configuration.
#[allow(clippy::too_many_arguments)]
pub fn heal(
    state: &mut HealState,
    desired: &[ContainerSpec],
    payloads: &[PayloadSpec],
    observed: &Observed,
    plan: &mut Plan,
    policy: &LadderPolicy,
    node_id: &str,
    generation: u64,
    now: u64,
) -> Healed {
    let mut out = Healed::default();
    let names: Vec<&str> = desired.iter().map(|c| c.name.as_str()).collect();
    state.containers.retain(|n, _| names.contains(&n.as_str()));
    for c in desired {
        let hash = spec_hash(c);
        let Some(o) = observed.containers.iter().find(|o| {
            o.name == c.name
                && o.managed
                && o.node.as_deref() == Some(node_id)
                && o.spec_hash.as_deref() == Some(hash.as_str())
        }) else {
            continue; // not there yet, not ours, or about to be recreated for a new spec
        };
        let e = state.containers.entry(c.name.clone()).or_default();
        if e.spec_hash != hash {
            let mut track = std::mem::take(&mut e.track);
            track.restart_clocks();
            *e = Entry {
                spec_hash: hash.clone(),
                track,
                ..Entry::default()
            };
        }
        if e.container_id != o.id {
            // A new container (created, recreated): its restarts count from here.
            e.container_id = o.id.clone();
            e.restart_count = o.restart_count;
        }
        let why = failure(c, o, e);
        let mine = payloads_of(payloads, WorkloadKind::Container, &c.name);
        let config = config_hash(c, &mine);
        e.restart_count = o.restart_count;
        let ours = |a: &Action| a.container() == Some(c.name.as_str());
        if e.ladder.failed(CONTAINER_RUNGS) {
            // Kept stopped: nothing the planner wanted for it (a start) happens.
            plan.actions.retain(|a| !ours(a));
            if o.running {
                plan.actions.push(Action::Stop {
                    name: c.name.clone(),
                    id: o.id.clone(),
                });
            }
        } else if let Some(why) = why {
            let back = e.track.failing(
                &config,
                c.rollback,
                generation,
                &why,
                policy.rollback_grace,
                now,
            );
            if let Some((h, failing_for)) = back {
                plan.actions.retain(|a| !ours(a));
                plan.actions.push(Action::Recreate {
                    hash: spec_hash(&h.spec),
                    spec: h.spec,
                    old_id: o.id.clone(),
                    reason: format!(
                        "rollback to generation {}: generation {generation} failing for \
                         {failing_for}s ({why})",
                        h.generation
                    ),
                });
                e.ladder.reset();
                if let Some(rb) = e.track.reported() {
                    out.rolled_back.insert(c.name.clone(), rb);
                }
                out.rolled_back_now.push(c.name.clone());
                continue;
            }
            let decision = e.ladder.on_failure(CONTAINER_RUNGS, policy, now);
            plan.actions.retain(|a| !ours(a));
            match decision {
                Decision::Act(Rung::Restart) | Decision::Act(Rung::Reset) => {
                    plan.actions.push(Action::Restart {
                        name: c.name.clone(),
                        id: o.id.clone(),
                    })
                }
                Decision::Act(Rung::Recreate) => plan.actions.push(Action::Recreate {
                    spec: c.clone(),
                    hash: hash.clone(),
                    old_id: o.id.clone(),
                    reason: format!("escalation: {why}"),
                }),
                Decision::Wait(_) => {}
                Decision::Failed { .. } => {
                    if o.running {
                        plan.actions.push(Action::Stop {
                            name: c.name.clone(),
                            id: o.id.clone(),
                        });
                    }
                }
            }
            if e.ladder.failed(CONTAINER_RUNGS) {
                out.failed.insert(
                    c.name.clone(),
                    format!(
                        "failed: {why}; restarts and recreates did not help, so it is stopped \
                         until its spec changes"
                    ),
                );
            }
        } else if o.running {
            e.ladder.on_healthy(CONTAINER_RUNGS, policy, now);
            e.track.running(
                c,
                &config,
                generation,
                mine,
                verdict(o.health.as_deref()),
                policy.rollback_grace,
                now,
            );
        }
        if let Some(rb) = e.track.reported() {
            out.rolled_back.insert(c.name.clone(), rb);
        }
        if e.ladder.failed(CONTAINER_RUNGS) && !out.failed.contains_key(&c.name) {
            out.failed.insert(
                c.name.clone(),
                "failed: restarts and recreates did not help, so it is stopped until its spec \
                 changes"
                    .into(),
            );
        }
        if e.ladder.level > 0 {
            out.escalation
                .insert(c.name.clone(), (e.ladder.level, escalation(&e.ladder)));
        }
    }
    out
}

#[cfg(test)]
#[path = "containers_tests.rs"]
mod tests;
