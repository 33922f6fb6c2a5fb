//! The container side of self-healing, pure: finds failing managed containers (restarted by
//! Docker since the last pass, stopped against their restart policy, or unhealthy), walks each
//! one's ladder, and rewrites the plan with the ladder's step; a container at the top is stopped
//! and kept stopped until its spec changes. It also remembers each container's last healthy
//! configuration and rolls a spec change that keeps failing past the grace period back to it
//! ([`effective`] then keeps the old configuration until the spec changes again). The
//! reconciler stores [`HealState`] so a restart of the agent forgets neither.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use steward_proto::{ContainerSpec, Escalation, RestartPolicy, RolledBack};

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
    /// When the current spec was first seen failing (cleared once it proves healthy).
    #[serde(default)]
    pub failing_since: Option<u64>,
    /// Since when the current spec has run without failing.
    #[serde(default)]
    pub healthy_since: Option<u64>,
    /// The configuration that last ran healthy (kept across spec changes).
    #[serde(default)]
    pub last_healthy: Option<Healthy>,
    /// In force while the spec is still the one rolled back from.
    #[serde(default)]
    pub rolled_back: Option<Rollback>,
}

/// A configuration that ran healthy, and the generation it came with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Healthy {
    pub spec: ContainerSpec,
    pub hash: String,
    pub generation: u64,
}

/// A rollback in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    /// The hash of the spec rolled back from.
    pub from_hash: String,
    pub from_generation: u64,
    pub to_generation: u64,
    pub reason: String,
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
    /// Rolled back to their last healthy configuration.
    pub rolled_back: BTreeMap<String, RolledBack>,
}

/// The containers to converge: the spec's, except those rolled back, which keep their last
/// healthy configuration until their spec changes again (then the rollback is forgotten).
pub fn effective(state: &mut HealState, desired: &[ContainerSpec]) -> Vec<ContainerSpec> {
    desired
        .iter()
        .map(|c| {
            let Some(e) = state.containers.get_mut(&c.name) else {
                return c.clone();
            };
            match (&e.rolled_back, &e.last_healthy) {
                (Some(rb), Some(h)) if rb.from_hash == spec_hash(c) => h.spec.clone(),
                (Some(_), _) => {
                    e.rolled_back = None; // a new spec: a new chance
                    c.clone()
                }
                _ => c.clone(),
            }
        })
        .collect()
}

fn rolled_back(e: &Entry) -> RolledBack {
    let rb = e.rolled_back.as_ref();
    RolledBack {
        from_generation: rb.map_or(0, |r| r.from_generation),
        to_generation: rb.map_or(0, |r| r.to_generation),
        reason: rb.map(|r| r.reason.clone()).unwrap_or_default(),
    }
}

fn time(secs: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
}

fn escalation(l: &Ladder) -> Escalation {
    escalation_of(l, CONTAINER_RUNGS)
}

/// A ladder as the status shows it.
pub fn escalation_of(l: &Ladder, rungs: &[Rung]) -> Escalation {
    Escalation {
        position: l.position(rungs).to_string(),
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

/// Rewrites `plan` (made for `desired`, the [`effective`] containers of spec `generation`) with
/// each failing container's ladder step or rollback, at `now` (unix seconds).
#[allow(clippy::too_many_arguments)]
pub fn heal(
    state: &mut HealState,
    desired: &[ContainerSpec],
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
            *e = Entry {
                spec_hash: hash.clone(),
                last_healthy: e.last_healthy.take(),
                rolled_back: e.rolled_back.take(),
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
            e.healthy_since = None;
            let since = *e.failing_since.get_or_insert(now);
            let target = e
                .last_healthy
                .as_ref()
                .filter(|h| h.hash != hash && c.rollback && e.rolled_back.is_none());
            if let Some(h) = target.filter(|_| now.saturating_sub(since) >= policy.rollback_grace) {
                let rb = Rollback {
                    from_hash: hash.clone(),
                    from_generation: generation,
                    to_generation: h.generation,
                    reason: why.clone(),
                };
                plan.actions.retain(|a| !ours(a));
                plan.actions.push(Action::Recreate {
                    spec: h.spec.clone(),
                    hash: h.hash.clone(),
                    old_id: o.id.clone(),
                    reason: format!(
                        "rollback to generation {}: generation {generation} failing for {}s ({why})",
                        h.generation,
                        now.saturating_sub(since)
                    ),
                });
                e.rolled_back = Some(rb);
                e.ladder.reset();
                e.failing_since = None;
                out.rolled_back.insert(c.name.clone(), rolled_back(e));
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
            let since = *e.healthy_since.get_or_insert(now);
            let proven = o.health.as_deref() == Some("healthy")
                || (o.health.is_none() && now.saturating_sub(since) >= policy.rollback_grace);
            if proven && e.rolled_back.is_none() {
                e.failing_since = None;
                e.last_healthy = Some(Healthy {
                    spec: c.clone(),
                    hash: hash.clone(),
                    generation,
                });
            }
        }
        if e.rolled_back.is_some() {
            out.rolled_back.insert(c.name.clone(), rolled_back(e));
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
