//! The escalation ladder of one workload: restart → recreate (VMs: restart → reset → recreate)
//! → failed, with exponential backoff between attempts and a cooldown that walks a workload that
//! stayed healthy back to the bottom. Pure and serialisable (the agent stores it, so a restart of
//! the agent does not reset a crash loop's escalation); the reconciler feeds it failures and the
//! time, and carries out the step it returns.

use serde::{Deserialize, Serialize};

/// One step of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rung {
    Restart,
    /// VMs: a hard reset through QMP.
    Reset,
    Recreate,
}

impl Rung {
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Restart => "restart",
            Rung::Reset => "reset",
            Rung::Recreate => "recreate",
        }
    }
}

/// How hard and how fast the ladder climbs (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LadderPolicy {
    /// Attempts on each rung before climbing to the next.
    pub attempts_per_rung: u32,
    /// Wait after the first attempt; doubles with each attempt.
    pub backoff_initial: u64,
    pub backoff_max: u64,
    /// Healthy this long after the last action: back to the bottom.
    pub cooldown: u64,
    /// A spec change that leaves a workload failing this long is rolled back; a workload
    /// running this long without failing (or reported healthy) is its new last healthy
    /// configuration.
    pub rollback_grace: u64,
}

impl Default for LadderPolicy {
    fn default() -> Self {
        LadderPolicy {
            attempts_per_rung: 3,
            backoff_initial: 10,
            backoff_max: 300,
            cooldown: 600,
            rollback_grace: 60,
        }
    }
}

/// Where a workload stands. Level 0: healthy; 1..=rungs: on that rung; rungs + 1: failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ladder {
    pub level: u32,
    /// Attempts made on the current rung.
    pub attempts: u32,
    /// Attempts made since the ladder left the bottom (drives the backoff).
    pub total: u32,
    pub last_action: Option<(Rung, u64)>,
    /// No further step before this time (unix seconds).
    pub next_due: Option<u64>,
}

/// What the reconciler should do about a failing workload now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Carry out this step.
    Act(Rung),
    /// Within the backoff: nothing until then.
    Wait(u64),
    /// The top was reached: leave the workload stopped and report it failed. `newly` is true
    /// only on the failure that reached it (alert once).
    Failed { newly: bool },
}

impl Ladder {
    pub fn failed(&self, rungs: &[Rung]) -> bool {
        self.level as usize > rungs.len()
    }

    /// The name of the current position: `ok`, a rung, or `failed`.
    pub fn position(&self, rungs: &[Rung]) -> &'static str {
        match self.level as usize {
            0 => "ok",
            l if l > rungs.len() => "failed",
            l => rungs[l - 1].as_str(),
        }
    }

    /// The workload failed (crashed, exited, unhealthy) at `now`.
    pub fn on_failure(&mut self, rungs: &[Rung], p: &LadderPolicy, now: u64) -> Decision {
        if self.failed(rungs) {
            return Decision::Failed { newly: false };
        }
        if let Some(due) = self.next_due.filter(|d| *d > now) {
            return Decision::Wait(due);
        }
        if self.level == 0 {
            self.level = 1;
            self.attempts = 0;
        }
        if self.attempts >= p.attempts_per_rung.max(1) {
            self.level += 1;
            self.attempts = 0;
            if self.failed(rungs) {
                self.next_due = None;
                return Decision::Failed { newly: true };
            }
        }
        let rung = rungs[self.level as usize - 1];
        self.attempts += 1;
        self.total += 1;
        self.last_action = Some((rung, now));
        let shift = (self.total - 1).min(20);
        let wait = p
            .backoff_initial
            .saturating_mul(1u64 << shift)
            .min(p.backoff_max);
        self.next_due = Some(now + wait);
        Decision::Act(rung)
    }

    /// The workload is healthy at `now`: after `cooldown` since the last action the ladder goes
    /// back to the bottom (a failed workload stays failed until an operator resets it).
    pub fn on_healthy(&mut self, rungs: &[Rung], p: &LadderPolicy, now: u64) {
        if self.level == 0 || self.failed(rungs) {
            return;
        }
        let since = self.last_action.map(|(_, t)| t).unwrap_or(0);
        if now.saturating_sub(since) >= p.cooldown {
            *self = Ladder::default();
        }
    }

    /// An operator's reset: back to the bottom, whatever the state.
    pub fn reset(&mut self) {
        *self = Ladder::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rungs of a container and of a VM (the kinds' `tracker::Rules`).
    const CONTAINER_RUNGS: &[Rung] = &[Rung::Restart, Rung::Recreate];
    const VM_RUNGS: &[Rung] = &[Rung::Restart, Rung::Reset, Rung::Recreate];

    fn policy() -> LadderPolicy {
        LadderPolicy {
            attempts_per_rung: 2,
            backoff_initial: 10,
            backoff_max: 40,
            cooldown: 100,
            rollback_grace: 30,
        }
    }

    /// Failures at the given times walk a container's ladder through these decisions.
    #[test]
    fn a_crash_loop_climbs_with_backoff_and_ends_failed_once() {
        let p = policy();
        let mut l = Ladder::default();
        let cases: &[(u64, Decision, &str)] = &[
            (0, Decision::Act(Rung::Restart), "restart"),
            (5, Decision::Wait(10), "restart"),
            (10, Decision::Act(Rung::Restart), "restart"),
            (15, Decision::Wait(30), "restart"),
            (30, Decision::Act(Rung::Recreate), "recreate"),
            (70, Decision::Act(Rung::Recreate), "recreate"),
            (109, Decision::Wait(110), "recreate"),
            (110, Decision::Failed { newly: true }, "failed"),
            (500, Decision::Failed { newly: false }, "failed"),
        ];
        for (now, want, pos) in cases {
            assert_eq!(
                l.on_failure(CONTAINER_RUNGS, &p, *now),
                *want,
                "at {now}: {l:?}"
            );
            assert_eq!(l.position(CONTAINER_RUNGS), *pos, "at {now}");
        }
        // Healthy does not undo a failure; an operator's reset does.
        l.on_healthy(CONTAINER_RUNGS, &p, 10_000);
        assert!(l.failed(CONTAINER_RUNGS));
        l.reset();
        assert_eq!(l.position(CONTAINER_RUNGS), "ok");
        assert_eq!(
            l.on_failure(CONTAINER_RUNGS, &p, 20_000),
            Decision::Act(Rung::Restart)
        );
    }

    #[test]
    fn vms_get_a_reset_rung_between_restart_and_recreate() {
        let p = LadderPolicy {
            attempts_per_rung: 1,
            backoff_initial: 0,
            ..policy()
        };
        let mut l = Ladder::default();
        let steps: Vec<Decision> = (0..4).map(|t| l.on_failure(VM_RUNGS, &p, t)).collect();
        assert_eq!(
            steps,
            [
                Decision::Act(Rung::Restart),
                Decision::Act(Rung::Reset),
                Decision::Act(Rung::Recreate),
                Decision::Failed { newly: true },
            ]
        );
    }

    #[test]
    fn staying_healthy_for_the_cooldown_walks_back_to_the_bottom() {
        let p = policy();
        let cases = [(50, "restart"), (99, "restart"), (100, "ok")];
        for (healthy_at, want) in cases {
            let mut l = Ladder::default();
            l.on_failure(CONTAINER_RUNGS, &p, 0);
            l.on_healthy(CONTAINER_RUNGS, &p, healthy_at);
            assert_eq!(l.position(CONTAINER_RUNGS), want, "healthy at {healthy_at}");
        }
    }

    #[test]
    fn the_ladder_survives_a_round_trip_through_json() {
        let mut l = Ladder::default();
        l.on_failure(CONTAINER_RUNGS, &policy(), 7);
        let back: Ladder = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }
}
