//! The container side of self-healing, pure: finds failing managed containers (restarted by
//! Docker since the last pass, stopped against their restart policy, or unhealthy), puts each
//! through the heal tracker (`tracker.rs`: ladder, rollback) and rewrites the plan with its
//! step — a restart, a recreate, a recreate at the last healthy configuration (a rollback;
//! [`effective`] then keeps the old configuration until the spec changes again) or, at the top
//! of the ladder, a stop that holds until its spec changes. The container rules: restart →
//! recreate.

use steward_proto::{ContainerSpec, PayloadSpec, RestartPolicy, WorkloadKind};

use super::ladder::{Decision, LadderPolicy, Rung};
use super::state::verdict;
pub use super::status::Healed;
use super::tracker::{Config, Rules, Step, WorkloadSpec};
pub use super::tracker::{Entry, HealState};
use crate::reconcile::plan::spec_hash;
use crate::reconcile::{Action, Observed, Plan};

impl WorkloadSpec for ContainerSpec {
    const KIND: WorkloadKind = WorkloadKind::Container;
    const RULES: Rules = Rules {
        rungs: &[Rung::Restart, Rung::Recreate],
        gave_up: "restarts and recreates did not help, so it is stopped until its spec changes",
        names_failure: true,
    };
    fn name(&self) -> &str {
        &self.name
    }
    fn rollback_allowed(&self) -> bool {
        self.rollback
    }
}

/// Why `o` counts as failing now, if it does.
fn failure(
    c: &ContainerSpec,
    o: &crate::reconcile::ObservedContainer,
    e: &Entry<ContainerSpec>,
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
        if e.instance != o.id {
            // A new container (created, recreated): its restarts count from here.
            e.instance = o.id.clone();
            e.restart_count = o.restart_count;
        }
        let why = failure(c, o, e);
        let config = Config::of(c, payloads, generation);
        e.restart_count = o.restart_count;
        let ours = |a: &Action| a.container() == Some(c.name.as_str());
        let mut climbed = None;
        if e.failed() {
            // Kept stopped: nothing the planner wanted for it (a start) happens.
            plan.actions.retain(|a| !ours(a));
            plan.actions.extend(stop(c, o));
        } else if let Some(why) = why {
            plan.actions.retain(|a| !ours(a));
            match e.on_failure(&config, &why, policy, now) {
                Step::RollBack { to, failing_for } => {
                    plan.actions.push(Action::Recreate {
                        hash: spec_hash(&to.spec),
                        spec: to.spec,
                        old_id: o.id.clone(),
                        reason: format!(
                            "rollback to generation {}: generation {generation} failing for \
                             {failing_for}s ({why})",
                            to.generation
                        ),
                    });
                    out.rolled_back_now.push(c.name.clone());
                }
                Step::Ladder(d) => {
                    plan.actions.extend(step(c, o, &hash, d, &why));
                    climbed = Some(why);
                }
            }
        } else if o.running {
            e.on_healthy(config, verdict(o.health.as_deref()), policy, now);
        }
        e.report(&c.name, climbed.as_deref(), &mut out);
    }
    out
}

/// A stop for a running container left at the top of its ladder.
fn stop(c: &ContainerSpec, o: &crate::reconcile::ObservedContainer) -> Option<Action> {
    o.running.then(|| Action::Stop {
        name: c.name.clone(),
        id: o.id.clone(),
    })
}

/// The action of the ladder's decision `d` for container `c` (seen as `o`, failing for `why`).
fn step(
    c: &ContainerSpec,
    o: &crate::reconcile::ObservedContainer,
    hash: &str,
    d: Decision,
    why: &str,
) -> Option<Action> {
    match d {
        Decision::Act(Rung::Restart) | Decision::Act(Rung::Reset) => Some(Action::Restart {
            name: c.name.clone(),
            id: o.id.clone(),
        }),
        Decision::Act(Rung::Recreate) => Some(Action::Recreate {
            spec: c.clone(),
            hash: hash.to_string(),
            old_id: o.id.clone(),
            reason: format!("escalation: {why}"),
        }),
        Decision::Wait(_) => None,
        Decision::Failed { .. } => stop(c, o),
    }
}

#[cfg(test)]
#[path = "containers_tests.rs"]
mod tests;
