//! The VM side of self-healing, pure. A VM fails when the VM planner restarts its QEMU after a
//! crash (QEMU gone, the guest powered off or panicked under restart policy always), when its
//! health check says unhealthy while QEMU runs, or when its start failed in the last pass. A failure becomes the ladder's step — restart,
//! reset (QMP `system_reset` of a live guest; a fresh start of a dead QEMU), recreate (a fresh
//! overlay from the base) — until the top, where the VM is left stopped and reported failed
//! until its spec changes. A spec change failing past the grace period is rolled back to the
//! VM's last healthy configuration (`rollback.rs`). The reconciler stores the entries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_proto::{PayloadSpec, VmSpec, WorkloadKind};

use super::ladder::{Decision, Ladder, LadderPolicy, Rung, VM_RUNGS};
use super::rollback::{config_hash, payloads_of, Track};
use super::state::{escalation_of, verdict};
use super::status::Healed;
use crate::vm::plan::VmAction;

/// One VM's ladder and rollback memory (stored in `state/heal.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmEntry {
    pub ladder: Ladder,
    #[serde(flatten)]
    pub track: Track<VmSpec>,
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

/// The VMs to converge: the spec's, with rolled-back ones at their last healthy configuration
/// (`payloads` are the spec's).
pub fn effective(
    entries: &mut BTreeMap<String, VmEntry>,
    desired: &[VmSpec],
    payloads: &[PayloadSpec],
) -> Vec<VmSpec> {
    desired
        .iter()
        .map(|v| match entries.get_mut(&v.name) {
            Some(e) => {
                let config = config_hash(v, &payloads_of(payloads, WorkloadKind::Vm, &v.name));
                e.track.effective(v, &config)
            }
            None => v.clone(),
        })
        .collect()
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
pub fn heal_vms(
    entries: &mut BTreeMap<String, VmEntry>,
    actions: &mut Vec<VmAction>,
    pass: &Pass,
) -> Healed {
    let (policy, now) = (pass.policy, pass.now);
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
        let its_payloads = payloads_of(pass.payloads, WorkloadKind::Vm, &v.name);
        let hash = config_hash(v, &its_payloads);
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
        let is_crash = crashed.is_some();
        let not_starting = seen
            .start_failed
            .as_ref()
            .filter(|_| !seen.running)
            .map(|e| format!("it does not start ({e})"));
        let Some(why) = crashed.or(unhealthy).or(not_starting) else {
            // Not failing: a plain start (first boot, or a start a failed VM does not get).
            if !e.ladder.failed(VM_RUNGS) {
                rewritten.extend(mine);
            }
            if seen.running && seen.health.as_deref() != Some("unhealthy") {
                e.ladder.on_healthy(VM_RUNGS, policy, now);
                e.track.running(
                    v,
                    &hash,
                    pass.generation,
                    its_payloads,
                    verdict(seen.health.as_deref()),
                    policy.rollback_grace,
                    now,
                );
            }
            report(&v.name, e, &mut out);
            continue;
        };
        if e.ladder.failed(VM_RUNGS) {
            if seen.running {
                rewritten.push(VmAction::Stop {
                    name: v.name.clone(),
                    reason: "escalation exhausted: left stopped".into(),
                });
            }
            report(&v.name, e, &mut out);
            continue;
        }
        let back = e.track.failing(
            &hash,
            v.rollback,
            pass.generation,
            &why,
            policy.rollback_grace,
            now,
        );
        if back.is_some() {
            // The old configuration is applied by the pass the reconciler runs next.
            e.ladder.reset();
            out.rolled_back_now.push(v.name.clone());
            report(&v.name, e, &mut out);
            continue;
        }
        let dead = !seen.running && mine.iter().any(|a| matches!(a, VmAction::Start { .. }));
        let decision = e.ladder.on_failure(VM_RUNGS, policy, now);
        if matches!(decision, Decision::Act(_)) {
            out.acted.push(v.name.clone());
        }
        match decision {
            // A crash: the planner's own start (or restart of a powered-off guest).
            Decision::Act(Rung::Restart) if is_crash => rewritten.extend(mine),
            Decision::Act(Rung::Restart) => rewritten.push(VmAction::Restart {
                name: v.name.clone(),
                reason: format!("escalation: restart ({why})"),
                crash: true,
            }),
            Decision::Act(Rung::Reset) if dead => rewritten.push(VmAction::Start {
                name: v.name.clone(),
                reason: format!("escalation: reset, QEMU is gone so a fresh start ({why})"),
                crash: true,
            }),
            Decision::Act(Rung::Reset) => rewritten.push(VmAction::Reset {
                name: v.name.clone(),
                reason: format!("escalation: reset ({why})"),
            }),
            Decision::Act(Rung::Recreate) => {
                rewritten.push(VmAction::Delete {
                    name: v.name.clone(),
                    reason: format!("escalation: recreate from the base image ({why})"),
                });
                rewritten.push(VmAction::Create {
                    name: v.name.clone(),
                    start: true,
                });
            }
            Decision::Wait(_) => {}
            Decision::Failed { .. } => {
                if seen.running {
                    rewritten.push(VmAction::Stop {
                        name: v.name.clone(),
                        reason: format!("escalation exhausted ({why}): left stopped"),
                    });
                }
            }
        }
        report(&v.name, e, &mut out);
    }
    // Actions for VMs not in the spec (deletions) pass through.
    rewritten.extend(planned.into_values().flatten());
    *actions = rewritten;
    out
}

fn report(name: &str, e: &VmEntry, out: &mut Healed) {
    if e.ladder.failed(VM_RUNGS) {
        out.failed.insert(
            name.to_string(),
            "failed: restarts, a reset and a recreate did not help, so it is left stopped \
             until its spec changes"
                .into(),
        );
    }
    if e.ladder.level > 0 {
        out.escalation.insert(
            name.to_string(),
            (e.ladder.level, escalation_of(&e.ladder, VM_RUNGS)),
        );
    }
    if let Some(rb) = e.track.reported() {
        out.rolled_back.insert(name.to_string(), rb);
    }
}

#[cfg(test)]
#[path = "vms_tests.rs"]
mod tests;
