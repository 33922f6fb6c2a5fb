//! One workload's `ResourceStatus`, whatever its kind, pure and table-tested: the pass's outcome,
//! overlaid with what healing concluded (the top of the ladder, a rollback) and with the health
//! it was seen with (`state.rs`), carrying its ladder, rollback, health, restarts and detail.
//! [`Healed`] is what the heal tracker of every kind concludes in one pass.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use steward_proto::{Escalation, ResourceState, ResourceStatus, RolledBack, WorkloadRef};

use super::state::{workload_state, Seen};

/// What healing concluded in one pass, by workload name (one kind's workloads).
#[derive(Debug, Default)]
pub struct Healed {
    /// At the top of the ladder: why, for the status.
    pub failed: BTreeMap<String, String>,
    pub escalation: BTreeMap<String, (u32, Escalation)>,
    /// Rolled back to their last healthy configuration.
    pub rolled_back: BTreeMap<String, RolledBack>,
    /// Rolled back in this pass: the reconciler runs the pass again with the old configuration.
    pub rolled_back_now: Vec<String>,
    /// Acted on by the ladder in this pass: their agent-side probes start over.
    pub acted: Vec<String>,
}

/// What is known of one workload at the end of a pass, besides what healing concluded.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub workload: WorkloadRef,
    /// What the pass made of it: the planner's verdict, or why an action failed.
    pub pass: (ResourceState, Option<String>),
    /// `starting`, `healthy` or `unhealthy`; `None` without a health check.
    pub health: Option<&'a str>,
    /// Why the agent's last probe failed, when the agent probes it.
    pub probe_error: Option<&'a str>,
    pub restarts: u32,
    pub detail: Option<String>,
}

/// The status of one workload (see the module docs). A conflict is never overlaid: the
/// workload is not the agent's to heal.
pub fn workload_status(o: Outcome<'_>, healed: &Healed, now: DateTime<Utc>) -> ResourceStatus {
    let (state, error) = o.pass;
    let name = o.workload.name.as_str();
    let rolled_back = healed.rolled_back.get(name);
    let (state, error) = match (healed.failed.get(name), rolled_back) {
        _ if state == ResourceState::Conflict => (state, error),
        (Some(why), _) => (ResourceState::Failed, Some(why.clone())),
        (None, Some(rb)) => (
            ResourceState::Failed,
            Some(format!(
                "rolled back from generation {} to the configuration of generation {}: {}",
                rb.from_generation, rb.to_generation, rb.reason
            )),
        ),
        (None, None) => (state, error),
    };
    let escalation = healed.escalation.get(name);
    let seen = Seen {
        health: o.health,
        probe_error: o.probe_error,
        escalation: escalation.map(|(_, e)| e),
        now,
    };
    let (state, error) = workload_state((state, error), seen);
    let mut r = ResourceStatus::of_workload(&o.workload, state, error);
    if let Some((level, e)) = escalation {
        r.escalation_level = *level;
        r.escalation = Some(e.clone());
    }
    r.rolled_back = rolled_back.cloned();
    r.health = o.health.map(str::to_string);
    r.restarts = o.restarts;
    r.detail = o.detail;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResourceState::*;

    fn esc(level: u32, position: &str) -> (u32, Escalation) {
        let e = Escalation {
            position: position.into(),
            attempts: 1,
            last_action: Some(position.into()),
            last_action_at: None,
            next_step_at: None,
        };
        (level, e)
    }

    fn rb() -> RolledBack {
        RolledBack {
            from_generation: 4,
            to_generation: 2,
            reason: "health check failing".into(),
        }
    }

    /// Healing's conclusions about workload `w`.
    fn healed(failed: Option<&str>, escalation: Option<(u32, &str)>, back: bool) -> Healed {
        let mut h = Healed::default();
        if let Some(why) = failed {
            h.failed.insert("w".into(), why.into());
        }
        if let Some((level, at)) = escalation {
            h.escalation.insert("w".into(), esc(level, at));
        }
        if back {
            h.rolled_back.insert("w".into(), rb());
        }
        h
    }

    /// A state and its error text.
    type Shown = (ResourceState, Option<&'static str>);

    #[test]
    fn table() {
        let rolled = "rolled back from generation 4 to the configuration of generation 2: \
                      health check failing";
        #[rustfmt::skip]
        let cases: Vec<(&str, Shown, Option<&str>, Healed, Shown)> = vec![
            ("converged stays", (Converged, None), None, healed(None, None, false), (Converged, None)),
            ("a failed action stays", (Failed, Some("create failed")), None, healed(None, None, false), (Failed, Some("create failed"))),
            ("pending stays", (Pending, Some("waiting")), None, healed(None, None, false), (Pending, Some("waiting"))),
            ("top of the ladder: failed, why", (Converged, None), None, healed(Some("left stopped"), Some((4, "failed")), false), (Failed, Some("left stopped"))),
            ("a conflict is never overlaid", (Conflict, Some("not ours")), None, healed(Some("left stopped"), None, true), (Conflict, Some("not ours"))),
            ("a rollback in force: failed, naming it", (Converged, None), Some("healthy"), healed(None, None, true), (Failed, Some(rolled))),
            ("the top of the ladder wins over a rollback", (Converged, None), None, healed(Some("left stopped"), None, true), (Failed, Some("left stopped"))),
            ("unhealthy: failed", (Converged, None), Some("unhealthy"), healed(None, None, false), (Failed, Some("health check failing (unhealthy); the escalation ladder acts on it next"))),
            ("starting: pending", (Converged, None), Some("starting"), healed(None, None, false), (Pending, Some("health check starting: not yet healthy"))),
            ("healthy on a rung: converged", (Converged, None), Some("healthy"), healed(None, Some((1, "restart")), false), (Converged, None)),
        ];
        for (name, pass, health, h, want) in cases {
            let o = Outcome {
                workload: WorkloadRef::new(steward_proto::WorkloadKind::Container, "w"),
                pass: (pass.0, pass.1.map(str::to_string)),
                health,
                probe_error: None,
                restarts: 3,
                detail: Some("d".into()),
            };
            let r = workload_status(o, &h, DateTime::from_timestamp(100, 0).unwrap());
            assert_eq!((r.state, r.error.as_deref()), want, "{name}");
            assert_eq!(
                r.escalation_level,
                h.escalation.get("w").map_or(0, |e| e.0),
                "{name}"
            );
            assert_eq!(
                r.rolled_back.is_some(),
                h.rolled_back.contains_key("w"),
                "{name}"
            );
            assert_eq!(r.health.as_deref(), health, "{name}");
            assert_eq!((r.restarts, r.detail.as_deref()), (3, Some("d")), "{name}");
        }
    }
}
