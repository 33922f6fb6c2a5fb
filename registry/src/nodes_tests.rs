//! Unit tests of `nodes.rs`' pure parts.
#![allow(clippy::unwrap_used)]

use super::*;
use steward_proto::{ResourceKind, ResourceState, ResourceStatus};

fn status(activity: Option<u64>, state: ResourceState) -> NodeStatus {
    let mut r = ResourceStatus::new(ResourceKind::Container, "web", state, None);
    r.activity = activity;
    NodeStatus {
        observed_generation: 3,
        resources: vec![r],
        digest: format!("d{activity:?}{state:?}"),
        ..Default::default()
    }
}

#[test]
fn a_status_whose_counters_alone_moved_logs_no_event() {
    use ResourceState::{Converged, Failed};
    let base = status(Some(10), Converged);
    let mut ports = base.clone();
    (ports.ports_in_use, ports.digest) = (vec![8080], "other".into());
    let mut generation = base.clone();
    generation.observed_generation = 4;
    // (before, after, only counters moved)
    let cases = [
        (None, base.clone(), false),
        (Some(base.clone()), status(Some(99), Converged), true),
        (Some(base.clone()), status(None, Converged), true),
        (Some(base.clone()), ports, true),
        (Some(base.clone()), status(Some(99), Failed), false),
        (Some(base.clone()), generation, false),
    ];
    for (before, after, want) in cases {
        assert_eq!(
            only_counters_moved(before.as_ref(), &after),
            want,
            "{after:?}"
        );
    }
}
