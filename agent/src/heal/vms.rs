//! The VM side of self-healing, pure. A VM fails when the VM planner restarts its QEMU after a
//! crash (QEMU gone, the guest powered off or panicked under restart policy always), when its
//! health check says unhealthy while QEMU runs, or when its start failed in the last pass. The
//! heal tracker (`tracker.rs`) turns a failure into a rollback or the ladder's step, which
//! becomes VM actions here: restart, reset (QMP `system_reset` of a live guest; a fresh start
//! of a dead QEMU), recreate (a fresh overlay from the base), and at the top the VM left
//! stopped and reported failed until its spec changes. The VM rules: restart → reset →
//! recreate. The reconciler stores the entries.

use std::collections::BTreeMap;

use steward_proto::{PayloadSpec, VmSpec, WorkloadKind};

use super::ladder::{Decision, LadderPolicy, Rung};
use super::state::verdict;
use super::status::Healed;
use super::tracker::{Config, Entries, Entry, Rules, Step, WorkloadSpec};
use crate::vm::plan::VmAction;

/// One VM's ladder and rollback memory (stored in `state/heal.json`).
pub type VmEntry = Entry<VmSpec>;

impl WorkloadSpec for VmSpec {
    const KIND: WorkloadKind = WorkloadKind::Vm;
    const RULES: Rules = Rules {
        rungs: &[Rung::Restart, Rung::Reset, Rung::Recreate],
        gave_up: "restarts, a reset and a recreate did not help, so it is left stopped until \
                  its spec changes",
        names_failure: false,
    };
    fn name(&self) -> &str {
        &self.name
    }
    fn rollback_allowed(&self) -> bool {
        self.rollback
    }
}

/// How one VM was found this pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmSeen {
    /// QEMU alive and QMP says `running`.
    pub running: bool,
    /// The agent-side probe's health (`starting`, `healthy`, `unhealthy`), when it has a check.
    pub health: Option<String>,
    /// The probe's last error, for the failure reason.
    pub probe_error: Option<String>,
    /// Its start failed in the last pass (the error): QEMU would not run this configuration.
    pub start_failed: Option<String>,
}

/// The pass being healed.
pub struct Pass<'a> {
    /// The effective VMs of the pass.
    pub desired: &'a [VmSpec],
    pub payloads: &'a [PayloadSpec],
    pub seen: &'a BTreeMap<String, VmSeen>,
    pub policy: &'a LadderPolicy,
    pub generation: u64,
    pub now: u64,
}

/// Rewrites `actions` (the VM planner's) with the ladder's step for every failing VM of
/// `pass.desired`, or its rollback. Entries of VMs not in it are left alone (the caller drops
/// those of VMs gone from the spec).
pub fn heal_vms(entries: &mut Entries<VmSpec>, actions: &mut Vec<VmAction>, pass: &Pass) -> Healed {
    let mut out = Healed::default();
    let mut planned: BTreeMap<String, Vec<VmAction>> = BTreeMap::new();
    let mut rewritten = Vec::new();
    for a in actions.drain(..) {
        match &a {
            VmAction::Start { .. } | VmAction::Restart { .. } => {
                planned.entry(a.name().to_string()).or_default().push(a)
            }
            _ => rewritten.push(a),
        }
    }
    for v in pass.desired {
        let e = entries.entry(v.name.clone()).or_default();
        let seen = pass.seen.get(&v.name).cloned().unwrap_or_default();
        let mine = planned.remove(&v.name).unwrap_or_default();
        // A restart for a new configuration gets a fresh ladder and is left as planned.
        if mine
            .iter()
            .any(|a| matches!(a, VmAction::Restart { crash: false, .. }))
        {
            e.ladder.reset();
            rewritten.extend(mine);
            continue;
        }
        heal_one(v, e, &seen, mine, pass, &mut rewritten, &mut out);
        e.report(&v.name, None, &mut out);
    }
    // Actions for VMs not in the spec (deletions) pass through.
    rewritten.extend(planned.into_values().flatten());
    *actions = rewritten;
    out
}

/// Why VM `seen` with the planner's actions `mine` counts as failing now, if it does, and
/// whether it crashed.
fn failure(seen: &VmSeen, mine: &[VmAction]) -> Option<(String, bool)> {
    let crashed = mine.iter().find_map(|a| match a {
        VmAction::Start {
            crash: true,
            reason,
            ..
        }
        | VmAction::Restart {
            crash: true,
            reason,
            ..
        } => Some(reason.clone()),
        _ => None,
    });
    let unhealthy = (seen.running && seen.health.as_deref() == Some("unhealthy")).then(|| {
        format!(
            "health check failing ({})",
            seen.probe_error.as_deref().unwrap_or("no answer")
        )
    });
    let not_starting = seen
        .start_failed
        .as_ref()
        .filter(|_| !seen.running)
        .map(|e| format!("it does not start ({e})"));
    match crashed {
        Some(why) => Some((why, true)),
        None => unhealthy.or(not_starting).map(|why| (why, false)),
    }
}

/// One VM of the pass: its planned actions `mine` kept, or replaced by its ladder's step.
fn heal_one(
    v: &VmSpec,
    e: &mut VmEntry,
    seen: &VmSeen,
    mine: Vec<VmAction>,
    pass: &Pass,
    rewritten: &mut Vec<VmAction>,
    out: &mut Healed,
) {
    let (policy, now) = (pass.policy, pass.now);
    let config = Config::of(v, pass.payloads, pass.generation);
    let Some((why, is_crash)) = failure(seen, &mine) else {
        // Not failing: a plain start (first boot, or a start a failed VM does not get).
        if !e.failed() {
            rewritten.extend(mine);
        }
        if seen.running && seen.health.as_deref() != Some("unhealthy") {
            e.on_healthy(config, verdict(seen.health.as_deref()), policy, now);
        }
        return;
    };
    if e.failed() {
        if seen.running {
            rewritten.push(VmAction::Stop {
                name: v.name.clone(),
                reason: "escalation exhausted: left stopped".into(),
            });
        }
        return;
    }
    let dead = !seen.running && mine.iter().any(|a| matches!(a, VmAction::Start { .. }));
    match e.on_failure(&config, &why, policy, now) {
        // The old configuration is applied by the pass the reconciler runs next.
        Step::RollBack { .. } => out.rolled_back_now.push(v.name.clone()),
        Step::Ladder(decision) => {
            if matches!(decision, Decision::Act(_)) {
                out.acted.push(v.name.clone());
            }
            let step = Climb {
                name: &v.name,
                why: &why,
                is_crash,
                dead,
                running: seen.running,
            };
            step.actions(decision, mine, rewritten);
        }
    }
}

/// A failing VM's ladder step, as VM actions.
struct Climb<'a> {
    name: &'a str,
    why: &'a str,
    /// The planner restarts it after a crash (its own start or restart is the first rung).
    is_crash: bool,
    /// QEMU is gone: a reset is a fresh start.
    dead: bool,
    running: bool,
}

impl Climb<'_> {
    fn actions(&self, decision: Decision, mine: Vec<VmAction>, out: &mut Vec<VmAction>) {
        let (name, why) = (self.name.to_string(), self.why);
        match decision {
            // A crash: the planner's own start (or restart of a powered-off guest).
            Decision::Act(Rung::Restart) if self.is_crash => out.extend(mine),
            Decision::Act(Rung::Restart) => out.push(VmAction::Restart {
                name,
                reason: format!("escalation: restart ({why})"),
                crash: true,
            }),
            Decision::Act(Rung::Reset) if self.dead => out.push(VmAction::Start {
                name,
                reason: format!("escalation: reset, QEMU is gone so a fresh start ({why})"),
                crash: true,
            }),
            Decision::Act(Rung::Reset) => out.push(VmAction::Reset {
                name,
                reason: format!("escalation: reset ({why})"),
            }),
            Decision::Act(Rung::Recreate) => {
                out.push(VmAction::Delete {
                    name: name.clone(),
                    reason: format!("escalation: recreate from the base image ({why})"),
                });
                out.push(VmAction::Create { name, start: true });
            }
            Decision::Wait(_) => {}
            Decision::Failed { .. } if self.running => out.push(VmAction::Stop {
                name,
                reason: format!("escalation exhausted ({why}): left stopped"),
            }),
            Decision::Failed { .. } => {}
        }
    }
}

#[cfg(test)]
#[path = "vms_tests.rs"]
mod tests;
