//! The VM side of the escalation ladder, pure: the VM planner's crash restarts (QEMU gone, the
//! guest powered off or panicked under restart policy always) become the ladder's step —
//! restart, reset (for a dead QEMU, a fresh start), recreate (a fresh overlay from the base) —
//! until the top, where the VM is left stopped and reported failed until its spec changes.

use std::collections::{BTreeMap, BTreeSet};

use steward_proto::Escalation;

use super::containers::escalation_of;
use super::ladder::{Decision, Ladder, LadderPolicy, Rung, VM_RUNGS};
use crate::vm::plan::VmAction;

/// What healing concluded for the VMs in one pass.
#[derive(Debug, Default)]
pub struct VmHealed {
    pub failed: BTreeMap<String, String>,
    pub escalation: BTreeMap<String, (u32, Escalation)>,
}

/// Rewrites `actions` with the ladder's step for every VM whose QEMU the planner restarts after
/// a crash; `running` are the VMs QMP reports running (healthy for the cooldown).
pub fn heal_vms(
    ladders: &mut BTreeMap<String, Ladder>,
    actions: &mut Vec<VmAction>,
    wanted: &[String],
    running: &BTreeSet<String>,
    policy: &LadderPolicy,
    now: u64,
) -> VmHealed {
    ladders.retain(|n, _| wanted.contains(n));
    let mut out = VmHealed::default();
    let mut rewritten = Vec::new();
    for a in actions.drain(..) {
        let (name, crash, config) = match &a {
            VmAction::Start { name, crash, .. } => (name.clone(), *crash, false),
            VmAction::Restart { name, crash, .. } => (name.clone(), *crash, !*crash),
            _ => {
                rewritten.push(a);
                continue;
            }
        };
        let l = ladders.entry(name.clone()).or_default();
        if config {
            l.reset(); // a new config gets a fresh ladder
            rewritten.push(a);
            continue;
        }
        if !crash {
            if !l.failed(VM_RUNGS) {
                rewritten.push(a);
            }
            continue;
        }
        match l.on_failure(VM_RUNGS, policy, now) {
            Decision::Act(Rung::Restart) | Decision::Act(Rung::Reset) => rewritten.push(a),
            Decision::Act(Rung::Recreate) => {
                rewritten.push(VmAction::Delete {
                    name: name.clone(),
                    reason: "escalation: recreate from the base image".into(),
                });
                rewritten.push(VmAction::Create {
                    name: name.clone(),
                    start: true,
                });
            }
            Decision::Wait(_) | Decision::Failed { .. } => {}
        }
    }
    *actions = rewritten;
    for (name, l) in ladders.iter_mut() {
        if running.contains(name) {
            l.on_healthy(VM_RUNGS, policy, now);
        }
        if l.failed(VM_RUNGS) {
            out.failed.insert(
                name.clone(),
                "failed: QEMU kept stopping; restarts, a reset and a recreate did not help, so \
                 it is left stopped until its spec changes"
                    .into(),
            );
        }
        if l.level > 0 {
            out.escalation
                .insert(name.clone(), (l.level, escalation_of(l, VM_RUNGS)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(name: &str) -> VmAction {
        VmAction::Start {
            name: name.into(),
            reason: "QEMU exited without being stopped".into(),
            crash: true,
        }
    }

    #[test]
    fn crashes_walk_restart_reset_recreate_then_failed() {
        let p = LadderPolicy {
            attempts_per_rung: 1,
            backoff_initial: 0,
            ..Default::default()
        };
        let mut ladders = BTreeMap::new();
        let wanted = vec!["v".to_string()];
        let none = BTreeSet::new();
        let kinds = |a: &[VmAction]| a.iter().map(VmAction::kind).collect::<Vec<_>>();
        let cases: &[(&[&str], &str)] = &[
            (&["start"], "restart"),
            (&["start"], "reset"),
            (&["delete", "create"], "recreate"),
            (&[], "failed"),
            (&[], "failed"),
        ];
        for (i, (want, pos)) in cases.iter().enumerate() {
            let mut a = vec![crash("v")];
            let h = heal_vms(&mut ladders, &mut a, &wanted, &none, &p, i as u64);
            assert_eq!(kinds(&a), *want, "step {i}");
            assert_eq!(h.escalation["v"].1.position, *pos, "step {i}");
            assert_eq!(h.failed.contains_key("v"), *pos == "failed", "step {i}");
        }
        // A config change (a restart that is not a crash) starts afresh.
        let mut a = vec![VmAction::Restart {
            name: "v".into(),
            reason: "config changed".into(),
            crash: false,
        }];
        let h = heal_vms(&mut ladders, &mut a, &wanted, &none, &p, 10);
        assert_eq!(kinds(&a), ["restart"]);
        assert!(h.escalation.is_empty() && h.failed.is_empty());
    }
}
