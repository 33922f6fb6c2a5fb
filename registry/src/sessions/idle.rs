//! Idle sessions, pure: a session's activity is the sum of its workloads' network counters
//! (reported by its agent); a clock per session restarts whenever that sum moves. Past the
//! template's `idle_timeout` without a move the session ends; `idle_warning` before that one
//! event warns of it. Clocks live in the leader's memory: a new leader starts them afresh, so
//! a failover delays an end, never hastens one.

use chrono::{DateTime, Utc};
use steward_proto::{NodeSpec, ResourceKind, ResourceStatus};

/// One session's idle clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    /// The activity last seen, and since when it has not moved.
    pub sum: u64,
    pub since: DateTime<Utc>,
    /// The warning was given for this stretch.
    pub warned: bool,
}

/// What to do about a session this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Idle for `timeout - warning`: warn once.
    Warn,
    /// Idle for `timeout`: end it.
    End,
}

/// The sum of the activity of the piece's workloads, or `None` when none reports any.
pub fn activity(piece: &NodeSpec, status: &[ResourceStatus]) -> Option<u64> {
    let wanted = (piece
        .containers
        .iter()
        .map(|c| (ResourceKind::Container, &c.name)))
    .chain(piece.vms.iter().map(|v| (ResourceKind::Vm, &v.name)));
    wanted
        .filter_map(|(kind, name)| {
            (status.iter())
                .find(|r| r.kind == kind && &r.name == name)
                .and_then(|r| r.activity)
        })
        .fold(None, |acc, a| Some(acc.unwrap_or(0).wrapping_add(a)))
}

/// One pass of a session's clock: the new clock (`None`: no activity known, no clock) and
/// the verdict.
pub fn step(
    prev: Option<Idle>,
    sum: Option<u64>,
    now: DateTime<Utc>,
    timeout: chrono::Duration,
    warning: chrono::Duration,
) -> (Option<Idle>, Verdict) {
    let Some(sum) = sum else {
        return (None, Verdict::Keep);
    };
    let Some(mut clock) = prev.filter(|p| p.sum == sum) else {
        let fresh = Idle {
            sum,
            since: now,
            warned: false,
        };
        return (Some(fresh), Verdict::Keep);
    };
    let idle_for = now - clock.since;
    if idle_for >= timeout {
        return (Some(clock), Verdict::End);
    }
    if idle_for >= timeout - warning && !clock.warned {
        clock.warned = true;
        return (Some(clock), Verdict::Warn);
    }
    (Some(clock), Verdict::Keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_restarts_on_every_move_and_ends_after_the_timeout() {
        let t0 = Utc::now();
        let s = |n: i64| t0 + chrono::Duration::seconds(n);
        let (timeout, warning) = (chrono::Duration::seconds(60), chrono::Duration::seconds(10));
        // (seconds, activity, expected verdict, expected clock start)
        let steps: [(i64, Option<u64>, Verdict, Option<i64>); 9] = [
            (0, Some(5), Verdict::Keep, Some(0)),
            (30, Some(5), Verdict::Keep, Some(0)),
            (40, Some(9), Verdict::Keep, Some(40)),
            (89, Some(9), Verdict::Keep, Some(40)),
            (90, Some(9), Verdict::Warn, Some(40)),
            (95, Some(9), Verdict::Keep, Some(40)),
            (99, Some(9), Verdict::Keep, Some(40)),
            (100, Some(9), Verdict::End, Some(40)),
            (101, None, Verdict::Keep, None),
        ];
        let mut clock = None;
        for (at, sum, want, since) in steps {
            let (next, verdict) = step(clock, sum, s(at), timeout, warning);
            assert_eq!(verdict, want, "at {at}s");
            assert_eq!(
                next.map(|c| (c.since - t0).num_seconds()),
                since,
                "at {at}s"
            );
            clock = next;
        }
        // A move after the warning starts a new stretch, warned again later.
        let (c, _) = step(None, Some(1), s(0), timeout, warning);
        let (c, v) = step(c, Some(1), s(55), timeout, warning);
        assert_eq!(v, Verdict::Warn);
        let (c, _) = step(c, Some(2), s(56), timeout, warning);
        assert!(!c.unwrap().warned);
    }

    #[test]
    fn activity_sums_the_sessions_workloads_only() {
        let piece: NodeSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]
        }))
        .unwrap_or_default();
        let st = |name: &str, a: Option<u64>| {
            let mut r = ResourceStatus::new(
                ResourceKind::Container,
                name,
                steward_proto::ResourceState::Converged,
                None,
            );
            r.activity = a;
            r
        };
        assert_eq!(activity(&piece, &[]), None);
        assert_eq!(
            activity(&piece, &[st("a", Some(3)), st("b", None)]),
            Some(3)
        );
        assert_eq!(
            activity(
                &piece,
                &[st("a", Some(3)), st("b", Some(4)), st("c", Some(9))]
            ),
            Some(7)
        );
    }
}
