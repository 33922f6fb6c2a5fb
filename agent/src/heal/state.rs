//! The state a workload's status shows (containers and VMs alike), pure: what the pass made of
//! it, corrected by its health and its escalation ladder. A workload that is unhealthy, or on
//! the ladder (being restarted, reset or recreated) and not seen healthy since — without a
//! health check: within the backoff after the ladder's last step — is `failed` whatever the
//! pass converged, with an error naming its health and its rung; one whose health check is
//! still `starting` is `pending`. So the state, the node's counts and the registry's
//! events agree with what the health checks and the ladder see.

use chrono::{DateTime, Utc};
use steward_proto::{Escalation, ResourceState};

use super::ladder::{Ladder, Rung};

/// What is known about one workload besides the pass's own outcome.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// `starting`, `healthy` or `unhealthy`; `None` without a health check.
    pub health: Option<&'a str>,
    /// Why the last probe failed, when the agent probes it.
    pub probe_error: Option<&'a str>,
    /// Its ladder, when it has left the bottom.
    pub escalation: Option<&'a Escalation>,
    pub now: DateTime<Utc>,
}

fn rung(e: &Escalation) -> String {
    let last = e
        .last_action
        .as_deref()
        .map(|a| format!(", last action {a}"))
        .unwrap_or_default();
    format!(
        "escalation at {} (attempt {}{last})",
        e.position, e.attempts
    )
}

/// The state and error to report, from the pass's outcome (`base`) and what was `seen`.
/// Conflicts, failures and drift keep the pass's verdict (with the rung added to a failure that
/// has no text); converged and pending ones answer to health and ladder.
pub fn workload_state(
    base: (ResourceState, Option<String>),
    seen: Seen<'_>,
) -> (ResourceState, Option<String>) {
    let (state, error) = base;
    if !matches!(state, ResourceState::Converged | ResourceState::Pending) {
        let error = error.or_else(|| seen.escalation.map(|e| format!("failing: {}", rung(e))));
        return (state, error);
    }
    let ladder = seen.escalation.map(rung);
    match (seen.health, ladder) {
        (Some("unhealthy"), ladder) => {
            let why = seen.probe_error.unwrap_or("unhealthy");
            let next = ladder.unwrap_or_else(|| "the escalation ladder acts on it next".into());
            (
                ResourceState::Failed,
                Some(format!("health check failing ({why}); {next}")),
            )
        }
        (Some("healthy"), _) => (state, error),
        (Some(h), Some(ladder)) => (
            ResourceState::Failed,
            Some(format!(
                "failing: {ladder}; health {h}, not yet healthy again"
            )),
        ),
        (None, Some(ladder))
            if seen
                .escalation
                .and_then(|e| e.next_step_at)
                .is_some_and(|t| seen.now < t) =>
        {
            (
                ResourceState::Failed,
                Some(format!(
                    "failing: {ladder}; without a health check it counts as failing until it \
                     runs through the backoff without failing again"
                )),
            )
        }
        (Some("starting"), None) if state == ResourceState::Converged => (
            ResourceState::Pending,
            Some("health check starting: not yet healthy".into()),
        ),
        _ => (state, error),
    }
}

fn time(secs: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
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

/// A health state as a verdict for the rollback memory: `healthy` proves the spec, no check
/// leaves it to time, `starting` proves nothing yet.
pub fn verdict(health: Option<&str>) -> Option<bool> {
    match health {
        None => None,
        Some("healthy") => Some(true),
        Some(_) => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResourceState::*;

    fn esc(position: &str, attempts: u32, last: Option<&str>) -> Escalation {
        Escalation {
            position: position.into(),
            attempts,
            last_action: last.map(str::to_string),
            last_action_at: None,
            next_step_at: None,
        }
    }

    #[test]
    fn health_and_the_ladder_decide_what_a_converged_pass_means() {
        let restart = esc("restart", 1, Some("restart"));
        let recreate = esc("recreate", 2, Some("recreate"));
        let now = DateTime::from_timestamp(1_000, 0).unwrap();
        let (mut waiting, mut waited) = (restart.clone(), restart.clone());
        waiting.next_step_at = DateTime::from_timestamp(1_010, 0);
        waited.next_step_at = DateTime::from_timestamp(1_000, 0);
        let refused = Some("tcp 127.0.0.1:8080: Connection refused (os error 111)");
        // (name, pass outcome, health, probe error, escalation, state, error contains)
        #[allow(clippy::type_complexity)]
        let cases: &[(
            &str,
            ResourceState,
            Option<&str>,
            Option<&str>,
            Option<&Escalation>,
            ResourceState,
            &str,
        )] = &[
            (
                "no check, no ladder",
                Converged,
                None,
                None,
                None,
                Converged,
                "",
            ),
            (
                "healthy",
                Converged,
                Some("healthy"),
                None,
                None,
                Converged,
                "",
            ),
            (
                "healthy again, ladder not back down yet",
                Converged,
                Some("healthy"),
                None,
                Some(&restart),
                Converged,
                "",
            ),
            (
                "starting",
                Converged,
                Some("starting"),
                None,
                None,
                Pending,
                "health check starting",
            ),
            (
                "unhealthy, ladder not climbed yet",
                Converged,
                Some("unhealthy"),
                refused,
                None,
                Failed,
                "health check failing (tcp 127.0.0.1:8080: Connection refused",
            ),
            (
                "unhealthy, being recreated",
                Converged,
                Some("unhealthy"),
                refused,
                Some(&recreate),
                Failed,
                "escalation at recreate (attempt 2, last action recreate)",
            ),
            (
                "unhealthy, no probe error (Docker's check)",
                Converged,
                Some("unhealthy"),
                None,
                Some(&restart),
                Failed,
                "health check failing (unhealthy); escalation at restart",
            ),
            (
                "restarted, starting again",
                Converged,
                Some("starting"),
                None,
                Some(&restart),
                Failed,
                "escalation at restart (attempt 1, last action restart); health starting",
            ),
            (
                "restarted, no check, within the backoff",
                Converged,
                None,
                None,
                Some(&waiting),
                Failed,
                "failing: escalation at restart",
            ),
            (
                "restarted, no check, ran through the backoff",
                Converged,
                None,
                None,
                Some(&waited),
                Converged,
                "",
            ),
            (
                "pending stays pending",
                Pending,
                Some("starting"),
                None,
                None,
                Pending,
                "not ready",
            ),
            (
                "a failed pass stays failed",
                Failed,
                Some("healthy"),
                None,
                None,
                Failed,
                "create failed",
            ),
            (
                "a failure without text gets the rung",
                Failed,
                None,
                None,
                Some(&recreate),
                Failed,
                "failing: escalation at recreate",
            ),
            (
                "a conflict stays a conflict",
                Conflict,
                Some("unhealthy"),
                None,
                Some(&restart),
                Conflict,
                "not ours",
            ),
            (
                "drift stays drift",
                Drifted,
                Some("unhealthy"),
                None,
                None,
                Drifted,
                "drifted",
            ),
        ];
        for (name, state, health, probe_error, escalation, want, text) in cases {
            let error = match state {
                Pending => Some("not ready".to_string()),
                Failed if escalation.is_none() => Some("create failed".to_string()),
                Conflict => Some("not ours".to_string()),
                Drifted => Some("drifted".to_string()),
                _ => None,
            };
            let seen = Seen {
                health: *health,
                probe_error: *probe_error,
                escalation: *escalation,
                now,
            };
            let (got, error) = workload_state((*state, error), seen);
            assert_eq!(got, *want, "{name}: {error:?}");
            let error = error.unwrap_or_default();
            assert!(error.contains(text), "{name}: {error:?} lacks {text:?}");
            if *want == Converged {
                assert!(error.is_empty(), "{name}: converged with an error: {error}");
            }
        }
    }
}
