//! Self-healing. Pure: the escalation ladder (`ladder.rs`), the rollback memory
//! (`rollback.rs`), the one heal tracker every kind of workload goes through, with the stored
//! `HealState` (`tracker.rs`: a workload's ladder and rollback, what a failure or a healthy
//! pass does to them; each kind's rungs are data), each kind's own part — what counts as a
//! failure, and the tracker's step as that kind's actions (`containers.rs`, `vms.rs`) — the
//! state a workload's status shows from its health and ladder (`state.rs`), and one workload's
//! `ResourceStatus` whatever its kind (`status.rs`). I/O: the TCP and HTTP probes with their
//! pure result tracker (`probe.rs`), the due probes of containers and VMs (`probes.rs`), and
//! probes from a container's network namespace (`inside.rs`). The reconciler drives them and
//! the drivers carry out their steps.

pub mod containers;
pub mod inside;
pub mod ladder;
pub mod probe;
pub mod probes;
pub mod rollback;
pub mod state;
pub mod status;
pub mod tracker;
pub mod vms;

use serde::Deserialize;

/// `[heal]` in the agent's config file: the escalation ladder's pace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealConfig {
    /// Attempts on each rung before climbing.                       default 3
    pub attempts_per_rung: Option<u32>,
    /// Wait after the first attempt; doubles per attempt.            default "10s"
    pub backoff_initial: Option<String>,
    /// Longest wait between attempts.                                default "5m"
    pub backoff_max: Option<String>,
    /// Healthy this long after the last action: back to the bottom. default "10m"
    pub cooldown: Option<String>,
    /// A spec change failing this long is rolled back to the last healthy config. default "60s"
    pub rollback_grace: Option<String>,
}

impl HealConfig {
    pub fn resolve(&self) -> anyhow::Result<ladder::LadderPolicy> {
        let d = ladder::LadderPolicy::default();
        let secs = |field: &str, v: &Option<String>, default: u64| -> anyhow::Result<u64> {
            match v {
                None => Ok(default),
                Some(s) => humantime::parse_duration(s)
                    .map(|d| d.as_secs())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "config field heal.{field}: {s:?} is not a duration like 10s ({e})"
                        )
                    }),
            }
        };
        let p = ladder::LadderPolicy {
            attempts_per_rung: self.attempts_per_rung.unwrap_or(d.attempts_per_rung),
            backoff_initial: secs("backoff_initial", &self.backoff_initial, d.backoff_initial)?,
            backoff_max: secs("backoff_max", &self.backoff_max, d.backoff_max)?,
            cooldown: secs("cooldown", &self.cooldown, d.cooldown)?,
            rollback_grace: secs("rollback_grace", &self.rollback_grace, d.rollback_grace)?,
        };
        if p.attempts_per_rung == 0 {
            anyhow::bail!("config field heal.attempts_per_rung must be at least 1");
        }
        Ok(p)
    }
}
