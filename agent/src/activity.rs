//! Workloads' network activity in the status (`ResourceStatus.activity`): bytes a running
//! container or VM sent on its interfaces (not what it received: see `network::counters`),
//! cumulative, which the registry only compares for change (to end idle sessions). The counters come from the network module
//! (`network::counters`: netlink statistics of a container's host-side veths and a VM's taps).
//!
//! Quantised, pure, unit-tested: the status is sent again whenever its digest changes, and
//! counters that move every second would make every heartbeat send the full status. So the
//! values are read at most once per `interval` (`activity_interval`, default 30 s) and the
//! same values are reported in between, keeping the digest still. The time of a refresh is
//! that of the pass's start, so passes started by the resync ticker (`resync_interval`, also
//! 30 s by default) each refresh; a twentieth of the interval is allowed as slack, so a tick
//! landing a hair early does not wait a whole interval more. Between refreshes a workload seen
//! running keeps its last value; one not running (or not yet read) reports none; one started
//! since the last refresh reports none until the next.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use steward_proto::{ResourceStatus, WorkloadRef};

/// How often activity is read by default (`activity_interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The last values read and when (see the module docs).
#[derive(Debug)]
pub struct Activity {
    interval: Duration,
    /// When the values were last refreshed (tried, even if the read failed).
    last: Option<Instant>,
    values: BTreeMap<WorkloadRef, u64>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

impl Activity {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            values: BTreeMap::new(),
        }
    }

    /// Whether the values are due to be read again at `now`: never read yet, or an interval
    /// (less the slack) has passed since the last refresh.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|t| now.saturating_duration_since(t) + self.interval / 20 >= self.interval)
    }

    /// The values read at `now`; `None` when reading failed: the last values stay (and the
    /// next try waits an interval, like a refresh).
    pub fn refreshed(&mut self, now: Instant, read: Option<BTreeMap<WorkloadRef, u64>>) {
        self.last = Some(now);
        if let Some(values) = read {
            self.values = values;
        }
    }

    /// Sets the activity of every workload status in `resources`: its last value if it is
    /// one of `running`, else none.
    pub fn fill(&self, resources: &mut [ResourceStatus], running: &BTreeSet<WorkloadRef>) {
        for r in resources {
            let Some(w) = r.workload() else {
                continue;
            };
            r.activity = running
                .contains(&w)
                .then(|| self.values.get(&w).copied())
                .flatten();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_proto::{ResourceKind, ResourceState, WorkloadKind};

    fn c(name: &str) -> WorkloadRef {
        WorkloadRef::new(WorkloadKind::Container, name)
    }

    fn vm(name: &str) -> WorkloadRef {
        WorkloadRef::new(WorkloadKind::Vm, name)
    }

    fn values(v: &[(WorkloadRef, u64)]) -> Option<BTreeMap<WorkloadRef, u64>> {
        Some(v.iter().cloned().collect())
    }

    /// What `fill` reports for the container and the VM called `name`, with `running`; a
    /// network of that name keeps what it had.
    fn shown(a: &Activity, running: &[WorkloadRef], name: &str) -> [Option<u64>; 2] {
        let mut rs = vec![
            ResourceStatus::of_workload(&c(name), ResourceState::Converged, None),
            ResourceStatus::of_workload(&vm(name), ResourceState::Converged, None),
            ResourceStatus::new(ResourceKind::Network, name, ResourceState::Converged, None),
        ];
        for r in &mut rs {
            r.activity = Some(999); // a workload's stale value is always overwritten
        }
        let running: BTreeSet<WorkloadRef> = running.iter().cloned().collect();
        a.fill(&mut rs, &running);
        assert_eq!(rs[2].activity, Some(999), "not a workload: left alone");
        [rs[0].activity, rs[1].activity]
    }

    #[test]
    fn refreshes_at_most_once_an_interval_and_holds_values_between() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut a = Activity::new(s(30));
        assert!(a.due(t0), "never read: due at once");
        a.refreshed(t0, values(&[(c("web"), 100), (vm("web"), 7)]));
        for after in [s(0), s(1), s(10), s(28)] {
            assert!(!a.due(t0 + after), "{after:?} after a refresh");
        }
        // A resync tick a hair early still refreshes (slack of a twentieth).
        assert!(a.due(t0 + Duration::from_millis(29_990)));
        assert!(a.due(t0 + s(30)));
        assert!(a.due(t0 + s(300)));

        let running = [c("web"), vm("web")];
        assert_eq!(shown(&a, &running, "web"), [Some(100), Some(7)]);
        // Not running any more: none (its value is not carried over to a later start).
        assert_eq!(shown(&a, &[c("web")], "web"), [Some(100), None]);
        // Started since the refresh: none until the next.
        assert_eq!(shown(&a, &[c("new")], "new"), [None, None]);

        // The next refresh replaces every value; a workload not read (no interface found) has
        // none.
        let t1 = t0 + s(30);
        a.refreshed(t1, values(&[(c("web"), 5000)]));
        assert!(!a.due(t1 + s(20)));
        assert_eq!(shown(&a, &running, "web"), [Some(5000), None]);
    }

    #[test]
    fn a_failed_read_keeps_the_values_and_waits_an_interval() {
        let t0 = Instant::now();
        let mut a = Activity::new(Duration::from_secs(30));
        a.refreshed(t0, values(&[(c("web"), 100)]));
        let t1 = t0 + Duration::from_secs(31);
        assert!(a.due(t1));
        a.refreshed(t1, None);
        assert!(
            !a.due(t1 + Duration::from_secs(5)),
            "no retry on every pass"
        );
        assert_eq!(shown(&a, &[c("web")], "web")[0], Some(100));
    }

    #[test]
    fn a_short_interval_is_honoured() {
        let t0 = Instant::now();
        let mut a = Activity::new(Duration::from_secs(1));
        a.refreshed(t0, values(&[]));
        assert!(!a.due(t0 + Duration::from_millis(900)));
        assert!(a.due(t0 + Duration::from_millis(960)));
    }
}
