//! The container side of self-healing, pure: finds failing managed containers (restarted by
//! Docker since the last pass, stopped against their restart policy, or unhealthy), walks each
//! one's ladder, and rewrites the plan with the ladder's step; a container at the top is stopped
//! and kept stopped until its spec changes. The reconciler stores [`HealState`] so a restart of
//! the agent does not forget a crash loop.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use steward_proto::{ContainerSpec, Escalation, RestartPolicy};

use super::ladder::{Decision, Ladder, LadderPolicy, Rung, CONTAINER_RUNGS};
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
}

/// Every managed container's ladder (stored as `state/heal.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealState {
    pub containers: BTreeMap<String, Entry>,
}

/// What healing concluded in one pass, by container name.
#[derive(Debug, Default)]
pub struct Healed {
    /// At the top of the ladder: why, for the status.
    pub failed: BTreeMap<String, String>,
    pub escalation: BTreeMap<String, (u32, Escalation)>,
}

fn time(secs: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
}

fn escalation(l: &Ladder) -> Escalation {
    Escalation {
        position: l.position(CONTAINER_RUNGS).to_string(),
        attempts: l.attempts,
        last_action: l.last_action.map(|(r, _)| r.as_str().to_string()),
        last_action_at: l.last_action.and_then(|(_, t)| time(t)),
        next_step_at: l.next_due.and_then(time),
    }
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

/// Rewrites `plan` with each failing container's ladder step, at `now` (unix seconds).
pub fn heal(
    state: &mut HealState,
    desired: &[ContainerSpec],
    observed: &Observed,
    plan: &mut Plan,
    policy: &LadderPolicy,
    node_id: &str,
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
            *e = Entry {
                spec_hash: hash.clone(),
                ..Entry::default()
            };
        }
        if e.container_id != o.id {
            // A new container (created, recreated): its restarts count from here.
            e.container_id = o.id.clone();
            e.restart_count = o.restart_count;
        }
        let why = failure(c, o, e);
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
