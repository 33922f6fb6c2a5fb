//! The VM planner: pure. `plan(desired, observed, node)` decides per VM what to do — create,
//! start, stop, restart (vCPU/memory/NIC/boot change, or a crash per the restart policy),
//! delete, or nothing (a running VM found through its QMP socket is adopted as it is) — and
//! what to report. VM directories the agent did not create (no record, or another node's) are
//! conflicts and never touched.

use steward_proto::{PowerState, RestartPolicy};

/// What the spec wants of one VM, reduced to what the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVm {
    pub name: String,
    /// Hash of everything QEMU's command line depends on (vCPUs, memory, NICs, boot, seed):
    /// a running VM with another hash is restarted with the new config.
    pub launch_hash: String,
    pub state: PowerState,
    pub restart: RestartPolicy,
}

/// The QEMU process of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proc {
    /// No live process (never started, stopped, crashed or killed).
    Absent,
    /// Alive, and QMP `query-status` said this ("running", "paused", "shutdown", ...).
    Alive(String),
    /// Alive but QMP does not answer (starting, or wedged).
    Unresponsive(String),
}

/// A VM directory as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVm {
    pub name: String,
    /// The node id in the directory's record; `None` when it has no (readable) record.
    pub owner: Option<String>,
    /// The launch hash of the running (or last started) process.
    pub launch_hash: String,
    /// The agent started it and has not stopped it since: a missing process is a crash.
    pub started: bool,
    pub proc: Proc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmAction {
    /// Make the directory, overlay and record (then start when `start`).
    Create { name: String, start: bool },
    /// Start QEMU (taps, seed, process). `crash`: counts as a restart.
    Start {
        name: String,
        reason: String,
        crash: bool,
    },
    /// Graceful stop: ACPI power-down, timeout, `quit`, kill.
    Stop { name: String, reason: String },
    /// Stop (when alive) then start with the current config.
    Restart {
        name: String,
        reason: String,
        crash: bool,
    },
    /// Stop, remove taps, overlay, seed and directory.
    Delete { name: String, reason: String },
    /// Hard-reset the guest of a live QEMU (QMP `system_reset`); only the ladder asks for it.
    Reset { name: String, reason: String },
}

impl VmAction {
    pub fn name(&self) -> &str {
        match self {
            VmAction::Create { name, .. }
            | VmAction::Start { name, .. }
            | VmAction::Stop { name, .. }
            | VmAction::Restart { name, .. }
            | VmAction::Delete { name, .. }
            | VmAction::Reset { name, .. } => name,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            VmAction::Create { .. } => "create",
            VmAction::Start { .. } => "start",
            VmAction::Stop { .. } => "stop",
            VmAction::Restart { .. } => "restart",
            VmAction::Delete { .. } => "delete",
            VmAction::Reset { .. } => "reset",
        }
    }
}

/// What to report for a desired VM when its actions (if any) succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmVerdict {
    Converged,
    /// Not there yet, nothing to do now (e.g. QMP not answering yet).
    Pending(String),
    /// Left as it is by policy, with why.
    Failed(String),
    /// Not the agent's to touch.
    Conflict(String),
}

fn crashed(restart: RestartPolicy, what: &str) -> Option<String> {
    match restart {
        RestartPolicy::Always | RestartPolicy::OnFailure => None,
        RestartPolicy::Never => Some(format!("{what}; restart policy is never")),
    }
}

/// Plans every VM. Actions come in spec order, deletions last.
pub fn plan(
    desired: &[DesiredVm],
    observed: &[ObservedVm],
    node: &str,
) -> (Vec<VmAction>, Vec<(String, VmVerdict)>) {
    let mut actions = Vec::new();
    let mut verdicts = Vec::new();
    for d in desired {
        let (action, verdict) = plan_one(d, observed.iter().find(|o| o.name == d.name), node);
        actions.extend(action);
        verdicts.push((d.name.clone(), verdict));
    }
    for o in observed {
        if o.owner.as_deref() == Some(node) && !desired.iter().any(|d| d.name == o.name) {
            actions.push(VmAction::Delete {
                name: o.name.clone(),
                reason: "no longer in the spec".into(),
            });
        }
    }
    (actions, verdicts)
}

/// One desired VM and its directory, if there is one: the action it needs, if any, and what to
/// report.
fn plan_one(d: &DesiredVm, o: Option<&ObservedVm>, node: &str) -> (Option<VmAction>, VmVerdict) {
    let running = d.state == PowerState::Running;
    let Some(o) = o else {
        let create = VmAction::Create {
            name: d.name.clone(),
            start: running,
        };
        return (Some(create), VmVerdict::Converged);
    };
    if let Some(conflict) = not_ours(d, o, node) {
        return (None, VmVerdict::Conflict(conflict));
    }
    let start = |reason: &str, crash: bool| VmAction::Start {
        name: d.name.clone(),
        reason: reason.into(),
        crash,
    };
    match (&o.proc, running) {
        (Proc::Unresponsive(why), _) => (
            None,
            VmVerdict::Pending(format!("QEMU is running but QMP does not answer: {why}")),
        ),
        (Proc::Alive(_), false) => {
            let stop = VmAction::Stop {
                name: d.name.clone(),
                reason: "spec says stopped".into(),
            };
            (Some(stop), VmVerdict::Converged)
        }
        (Proc::Absent, false) => (None, VmVerdict::Converged),
        (Proc::Alive(st), true) => plan_alive(d, o, st),
        (Proc::Absent, true) if !o.started => (
            Some(start("spec says running", false)),
            VmVerdict::Converged,
        ),
        (Proc::Absent, true) => match crashed(d.restart, "QEMU exited without being stopped") {
            Some(why) => (None, VmVerdict::Failed(why)),
            None => (
                Some(start("QEMU exited without being stopped", true)),
                VmVerdict::Converged,
            ),
        },
    }
}

/// Why a VM directory is not this node's to touch (another node's record, or none), if it is not.
fn not_ours(d: &DesiredVm, o: &ObservedVm, node: &str) -> Option<String> {
    match o.owner.as_deref() {
        Some(n) if n == node => None,
        Some(other) => Some(format!(
            "the VM directory {} belongs to node {other}; left alone",
            d.name
        )),
        None => Some(format!(
            "a VM directory named {} exists that Steward did not create (no record); \
             left alone",
            d.name
        )),
    }
}

/// A VM the spec wants running whose QEMU is alive with QMP status `st`.
fn plan_alive(d: &DesiredVm, o: &ObservedVm, st: &str) -> (Option<VmAction>, VmVerdict) {
    let restart = |reason: String, crash: bool| VmAction::Restart {
        name: d.name.clone(),
        reason,
        crash,
    };
    match st {
        "shutdown" => {
            // The guest powered itself off (QEMU runs with -no-shutdown).
            if d.restart == RestartPolicy::Always {
                let reason = "the guest powered off; restart policy always".into();
                (Some(restart(reason, true)), VmVerdict::Converged)
            } else {
                let why = format!(
                    "the guest powered itself off; restart policy {} leaves it off",
                    policy_word(d.restart)
                );
                (None, VmVerdict::Failed(why))
            }
        }
        "internal-error" | "guest-panicked" => {
            match crashed(d.restart, &format!("the VM is in state {st}")) {
                Some(why) => (None, VmVerdict::Failed(why)),
                None => (
                    Some(restart(format!("VM state {st}"), true)),
                    VmVerdict::Converged,
                ),
            }
        }
        _ if o.launch_hash != d.launch_hash => {
            let reason = "config changed (vCPUs, memory, NICs, boot or cloud-init)".into();
            (Some(restart(reason, false)), VmVerdict::Converged)
        }
        _ => (None, VmVerdict::Converged), // running (or paused by hand): adopted as it is
    }
}

fn policy_word(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "n1";

    fn want(state: PowerState, restart: RestartPolicy) -> DesiredVm {
        DesiredVm {
            name: "vm".into(),
            launch_hash: "h1".into(),
            state,
            restart,
        }
    }

    fn seen(owner: Option<&str>, hash: &str, started: bool, proc: Proc) -> ObservedVm {
        ObservedVm {
            name: "vm".into(),
            owner: owner.map(str::to_string),
            launch_hash: hash.into(),
            started,
            proc,
        }
    }

    fn alive(s: &str) -> Proc {
        Proc::Alive(s.into())
    }

    #[test]
    fn table() {
        use PowerState::{Running, Stopped};
        use RestartPolicy::{Always, Never, OnFailure};
        let ours = Some(NODE);
        // (case, desired, observed, expected action kinds, expected verdict prefix)
        type Case<'a> = (
            &'a str,
            Option<DesiredVm>,
            Option<ObservedVm>,
            Vec<&'a str>,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "create and start",
                Some(want(Running, Always)),
                None,
                vec!["create"],
                "converged",
            ),
            (
                "create stopped",
                Some(want(Stopped, Always)),
                None,
                vec!["create"],
                "converged",
            ),
            (
                "adopt running",
                Some(want(Running, Always)),
                Some(seen(ours, "h1", true, alive("running"))),
                vec![],
                "converged",
            ),
            (
                "adopt paused",
                Some(want(Running, Always)),
                Some(seen(ours, "h1", true, alive("paused"))),
                vec![],
                "converged",
            ),
            (
                "start after create",
                Some(want(Running, Never)),
                Some(seen(ours, "h1", false, Proc::Absent)),
                vec!["start"],
                "converged",
            ),
            (
                "stop",
                Some(want(Stopped, Always)),
                Some(seen(ours, "h1", true, alive("running"))),
                vec!["stop"],
                "converged",
            ),
            (
                "stopped stays",
                Some(want(Stopped, Always)),
                Some(seen(ours, "h1", false, Proc::Absent)),
                vec![],
                "converged",
            ),
            (
                "memory change restarts",
                Some(want(Running, Never)),
                Some(seen(ours, "h0", true, alive("running"))),
                vec!["restart"],
                "converged",
            ),
            (
                "config change while stopped: nothing",
                Some(want(Stopped, Always)),
                Some(seen(ours, "h0", false, Proc::Absent)),
                vec![],
                "converged",
            ),
            (
                "crash, always",
                Some(want(Running, Always)),
                Some(seen(ours, "h1", true, Proc::Absent)),
                vec!["start"],
                "converged",
            ),
            (
                "crash, on-failure",
                Some(want(Running, OnFailure)),
                Some(seen(ours, "h1", true, Proc::Absent)),
                vec!["start"],
                "converged",
            ),
            (
                "crash, never",
                Some(want(Running, Never)),
                Some(seen(ours, "h1", true, Proc::Absent)),
                vec![],
                "failed: QEMU exited without being stopped; restart policy is never",
            ),
            (
                "guest off, always",
                Some(want(Running, Always)),
                Some(seen(ours, "h1", true, alive("shutdown"))),
                vec!["restart"],
                "converged",
            ),
            (
                "guest off, on-failure",
                Some(want(Running, OnFailure)),
                Some(seen(ours, "h1", true, alive("shutdown"))),
                vec![],
                "failed: the guest powered itself off; restart policy on-failure",
            ),
            (
                "guest panic, on-failure",
                Some(want(Running, OnFailure)),
                Some(seen(ours, "h1", true, alive("guest-panicked"))),
                vec!["restart"],
                "converged",
            ),
            (
                "guest panic, never",
                Some(want(Running, Never)),
                Some(seen(ours, "h1", true, alive("guest-panicked"))),
                vec![],
                "failed: the VM is in state guest-panicked",
            ),
            (
                "QMP silent",
                Some(want(Running, Always)),
                Some(seen(ours, "h1", true, Proc::Unresponsive("timeout".into()))),
                vec![],
                "pending: QEMU is running but QMP",
            ),
            (
                "unmanaged dir",
                Some(want(Running, Always)),
                Some(seen(None, "", false, alive("running"))),
                vec![],
                "conflict: a VM directory named vm exists that Steward did not create",
            ),
            (
                "other node's dir",
                Some(want(Running, Always)),
                Some(seen(Some("n2"), "h1", true, Proc::Absent)),
                vec![],
                "conflict: the VM directory vm belongs to node n2",
            ),
            (
                "delete",
                None,
                Some(seen(ours, "h1", true, alive("running"))),
                vec!["delete"],
                "",
            ),
            (
                "never delete an unmanaged dir",
                None,
                Some(seen(None, "", false, Proc::Absent)),
                vec![],
                "",
            ),
            (
                "never delete another node's",
                None,
                Some(seen(Some("n2"), "h1", true, alive("running"))),
                vec![],
                "",
            ),
        ];
        for (case, d, o, kinds, verdict) in cases {
            let desired: Vec<DesiredVm> = d.into_iter().collect();
            let observed: Vec<ObservedVm> = o.into_iter().collect();
            let (actions, verdicts) = plan(&desired, &observed, NODE);
            let got: Vec<&str> = actions.iter().map(VmAction::kind).collect();
            assert_eq!(got, kinds, "{case}: {actions:?}");
            let v = verdicts.first().map(|(_, v)| match v {
                VmVerdict::Converged => "converged".to_string(),
                VmVerdict::Pending(w) => format!("pending: {w}"),
                VmVerdict::Failed(w) => format!("failed: {w}"),
                VmVerdict::Conflict(w) => format!("conflict: {w}"),
            });
            match v {
                Some(v) => assert!(v.starts_with(verdict), "{case}: {v}"),
                None => assert_eq!(verdict, "", "{case}: no verdict"),
            }
        }
    }

    #[test]
    fn create_carries_the_power_state_and_deletes_come_last() {
        let mut a = want(PowerState::Stopped, RestartPolicy::Always);
        a.name = "a".into();
        let gone = ObservedVm {
            name: "old".into(),
            owner: Some(NODE.into()),
            launch_hash: "x".into(),
            started: true,
            proc: Proc::Absent,
        };
        let (actions, _) = plan(&[a], &[gone], NODE);
        assert_eq!(
            actions,
            vec![
                VmAction::Create {
                    name: "a".into(),
                    start: false
                },
                VmAction::Delete {
                    name: "old".into(),
                    reason: "no longer in the spec".into()
                }
            ]
        );
    }
}
