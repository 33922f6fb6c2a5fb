//! Session leases (pure, table-tested): the spec a pass converges once the sessions whose lease
//! has run out are dropped, and when the next lease runs out (the reconcile loop wakes then).
//!
//! Offline expiry is the one exception to "offline is never destructive": the agent removes an
//! expired session's containers and VMs (and, through the volume plan, its volumes) at the
//! lease's `expires_at` by its own clock, from the spec it holds, even while the registry cannot
//! be reached. Every other removal waits for a spec from the registry that asks for it.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use steward_proto::{NodeSpec, SessionLease};

/// Whether `lease` has run out at `now` (its deadline itself included).
pub fn is_expired(lease: &SessionLease, now: DateTime<Utc>) -> bool {
    lease.expires_at <= now
}

/// The leases of `spec` that have run out at `now`, in spec order.
pub fn expired(spec: &NodeSpec, now: DateTime<Utc>) -> Vec<&SessionLease> {
    (spec.sessions.iter())
        .filter(|l| is_expired(l, now))
        .collect()
}

/// `spec` as a pass converges it at `now`: without the containers and VMs of the sessions whose
/// lease has run out, and without those leases (so their volumes are no longer desired).
/// Workloads of no session, and of a session the spec does not declare, stay.
pub fn without_expired(spec: &NodeSpec, now: DateTime<Utc>) -> NodeSpec {
    let gone: BTreeSet<&str> = expired(spec, now)
        .into_iter()
        .map(|l| l.id.as_str())
        .collect();
    let mut out = spec.clone();
    if gone.is_empty() {
        return out;
    }
    let live = |s: &Option<String>| s.as_deref().is_none_or(|id| !gone.contains(id));
    out.containers.retain(|c| live(&c.session));
    out.vms.retain(|v| live(&v.session));
    out.sessions.retain(|l| !gone.contains(l.id.as_str()));
    out
}

/// The earliest deadline of `spec`'s leases still running at `now`.
pub fn next_expiry(spec: &NodeSpec, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (spec.sessions.iter())
        .map(|l| l.expires_at)
        .filter(|at| *at > now)
        .min()
}

/// How long the reconcile loop sleeps before the pass that removes the next expired session:
/// until [`next_expiry`], rounded up to the millisecond and one more, so the pass never runs
/// just before the deadline and finds nothing expired.
pub fn next_expiry_in(spec: &NodeSpec, now: DateTime<Utc>) -> Option<Duration> {
    let at = next_expiry(spec, now)?;
    let micros = (at - now).num_microseconds().unwrap_or(i64::MAX).max(0);
    let millis = u64::try_from(micros).unwrap_or(u64::MAX).div_ceil(1000);
    Some(Duration::from_millis(millis.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Noon on a fixed day, and `s` seconds from then.
    fn at(s: i64) -> DateTime<Utc> {
        "2030-01-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::seconds(s)
    }

    /// Sessions `a` (ends at +10 s, volume va) and `b` (ends at +20 s, volume vb); containers
    /// `plain` (no session), `ca` (a), `cb` (b); VMs `va1` (a) and `vplain`.
    fn spec() -> NodeSpec {
        let yaml = format!(
            "sessions:\n\
             \x20 - {{id: a, expires_at: '{}', volumes: [va]}}\n\
             \x20 - {{id: b, expires_at: '{}', volumes: [vb], keep_volumes: true}}\n\
             containers:\n\
             \x20 - {{name: plain, image: x}}\n\
             \x20 - {{name: ca, image: x, session: a}}\n\
             \x20 - {{name: cb, image: x, session: b}}\n\
             vms:\n\
             \x20 - {{name: va1, image: /b.qcow2, memory: 256Mi, session: a}}\n\
             \x20 - {{name: vplain, image: /b.qcow2, memory: 256Mi}}\n",
            at(10).to_rfc3339(),
            at(20).to_rfc3339()
        );
        serde_norway::from_str(&yaml).unwrap()
    }

    fn names(spec: &NodeSpec) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        (
            spec.containers.iter().map(|c| c.name.as_str()).collect(),
            spec.vms.iter().map(|v| v.name.as_str()).collect(),
            spec.sessions.iter().map(|l| l.id.as_str()).collect(),
        )
    }

    #[test]
    fn expired_sessions_lose_their_workloads_and_leases() {
        type Names = (
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
        );
        let rows: [(&str, i64, Names); 5] = [
            (
                "before every deadline: all kept",
                0,
                (&["plain", "ca", "cb"], &["va1", "vplain"], &["a", "b"]),
            ),
            (
                "a millisecond before a's deadline: all kept",
                -1,
                (&["plain", "ca", "cb"], &["va1", "vplain"], &["a", "b"]),
            ),
            (
                "at a's deadline exactly: a's container, VM and lease dropped",
                10_000,
                (&["plain", "cb"], &["vplain"], &["b"]),
            ),
            (
                "between the deadlines: only b left of the sessions",
                15_000,
                (&["plain", "cb"], &["vplain"], &["b"]),
            ),
            (
                "after both: only the workloads of no session",
                60_000,
                (&["plain"], &["vplain"], &[]),
            ),
        ];
        for (what, ms, (containers, vms, sessions)) in rows {
            // -1 means just before a's deadline.
            let now = match ms {
                -1 => at(10) - chrono::Duration::milliseconds(1),
                ms => at(0) + chrono::Duration::milliseconds(ms),
            };
            let out = without_expired(&spec(), now);
            let got = names(&out);
            assert_eq!(
                (got.0.as_slice(), got.1.as_slice(), got.2.as_slice()),
                (containers, vms, sessions),
                "{what}"
            );
            let all = spec();
            let gone: Vec<&str> = expired(&all, now).iter().map(|l| l.id.as_str()).collect();
            let kept = all.sessions.iter().map(|l| l.id.as_str());
            let left: Vec<&str> = kept.filter(|id| !gone.contains(id)).collect();
            assert_eq!(left, sessions, "{what}: expired() agrees");
        }
    }

    #[test]
    fn nothing_else_of_the_spec_changes() {
        let mut s = spec();
        s.payloads = serde_norway::from_str("[{name: p, version: '1', path: /srv/p}]").unwrap();
        let out = without_expired(&s, at(60));
        assert_eq!(out.payloads, s.payloads);
        assert_eq!(out.networks, s.networks);
        // Nothing expired: the very same spec.
        assert_eq!(without_expired(&s, at(0)), s);
        // A session the spec does not declare expires nothing.
        let mut undeclared = spec();
        undeclared.containers[1].session = Some("nope".into());
        assert!(without_expired(&undeclared, at(60))
            .containers
            .iter()
            .any(|c| c.name == "ca"));
    }

    #[test]
    fn the_next_expiry_is_the_earliest_deadline_still_ahead() {
        type Row = (&'static str, DateTime<Utc>, Option<DateTime<Utc>>);
        let rows: [Row; 5] = [
            ("both ahead: a's", at(0), Some(at(10))),
            ("at a's deadline: b's", at(10), Some(at(20))),
            ("between: b's", at(15), Some(at(20))),
            ("at b's deadline: none", at(20), None),
            ("after both: none", at(99), None),
        ];
        for (what, now, want) in rows {
            assert_eq!(next_expiry(&spec(), now), want, "{what}");
        }
        assert_eq!(
            next_expiry(&NodeSpec::default(), at(0)),
            None,
            "no sessions"
        );
    }

    #[test]
    fn the_loop_wakes_just_after_the_deadline() {
        let rows: [(&str, DateTime<Utc>, Option<Duration>); 4] = [
            ("10 s ahead", at(0), Some(Duration::from_millis(10_001))),
            (
                "a part of a millisecond is rounded up",
                at(10) - chrono::Duration::microseconds(1500),
                Some(Duration::from_millis(3)),
            ),
            (
                "at a's deadline: b's in 10 s",
                at(10),
                Some(Duration::from_millis(10_001)),
            ),
            ("none ahead", at(30), None),
        ];
        for (what, now, want) in rows {
            assert_eq!(next_expiry_in(&spec(), now), want, "{what}");
        }
    }
}
