//! A node's brief: what the fleet-wide views (status page rows and summary, `/metrics`, the
//! filters of `GET /v1/nodes`) need of its stored record, computed once when the record is
//! stored or arrives from the store watch, so those views never read or decode the store.

use steward_proto::{NodeFacts, NodeKind, NodeStatus, ResourceKind, ResourceState};

use crate::store::NodeRecord;

/// Payload attestation state of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attest {
    pub total: usize,
    pub mismatched: usize,
    pub missing: usize,
}

impl Attest {
    pub fn label(&self) -> String {
        match (self.total, self.mismatched, self.missing) {
            (0, _, _) => "none".into(),
            (t, 0, 0) => format!("{t} ok"),
            (_, m, 0) => format!("{m} mismatch"),
            (_, 0, x) => format!("{x} missing"),
            (_, m, x) => format!("{m} mismatch, {x} missing"),
        }
    }
    pub fn ok(&self) -> bool {
        self.mismatched == 0 && self.missing == 0
    }
}

/// The stored facts and status of a node, summed up (a few hundred bytes instead of the record's
/// kilobytes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Brief {
    pub hostname: String,
    pub kind: NodeKind,
    /// Capacity from the facts (session placement reads it here, not from the store).
    pub cpus: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    pub containers: usize,
    pub vms: usize,
    pub payloads: usize,
    /// Resources in state failed.
    pub failed: usize,
    /// A payload differs from what it should be, or a resource is drifted (the same rule as
    /// [`NodeStatus::drift`] being non-empty).
    pub drifted: bool,
    pub attest: Attest,
    /// Host ports the node reports in use (`NodeStatus::ports_in_use`): session port
    /// allocation never hands one out.
    pub ports_in_use: Vec<u16>,
}

impl Brief {
    pub fn of(rec: &NodeRecord) -> Brief {
        Brief::of_parts(&rec.facts, rec.status.as_ref())
    }

    pub fn of_parts(facts: &NodeFacts, status: Option<&NodeStatus>) -> Brief {
        let mut b = Brief {
            hostname: facts.hostname.clone(),
            kind: facts.kind,
            cpus: facts.cpus,
            memory_bytes: facts.memory_bytes,
            agent_version: facts.agent_version.clone(),
            ..Brief::default()
        };
        if let Some(st) = status {
            b.count(st);
        }
        b
    }

    fn count(&mut self, st: &NodeStatus) {
        for r in &st.resources {
            match r.kind {
                ResourceKind::Container => self.containers += 1,
                ResourceKind::Vm => self.vms += 1,
                ResourceKind::Payload => self.payloads += 1,
                ResourceKind::Network | ResourceKind::Spec => {}
            }
            self.failed += usize::from(r.state == ResourceState::Failed);
            self.drifted |= r.state == ResourceState::Drifted;
        }
        for p in &st.payloads {
            self.attest.total += 1;
            match &p.actual {
                None => self.attest.missing += 1,
                Some(a) if *a != p.expected => self.attest.mismatched += 1,
                Some(_) => {}
            }
        }
        self.payloads = self.payloads.max(st.payloads.len());
        self.drifted |= !self.attest.ok();
        self.ports_in_use = st.ports_in_use.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_proto::{PayloadAttestation, ResourceStatus};

    fn res(kind: ResourceKind, name: &str, state: ResourceState) -> ResourceStatus {
        ResourceStatus::new(kind, name, state, None)
    }

    fn attestation(expected: &str, actual: Option<&str>) -> PayloadAttestation {
        PayloadAttestation {
            name: "p".into(),
            version: "1".into(),
            path: "/srv/p".into(),
            expected: expected.into(),
            actual: actual.map(Into::into),
        }
    }

    /// name, resources, payloads, [containers, vms, payloads, failed], drifted
    type Case = (
        &'static str,
        Vec<ResourceStatus>,
        Vec<PayloadAttestation>,
        [usize; 4],
        bool,
    );

    /// The brief agrees with the wire rule (`NodeStatus::drift` non-empty) on every case.
    #[test]
    fn brief_counts_and_drift_agree_with_the_status() {
        use ResourceKind::*;
        use ResourceState::*;
        let cases: Vec<Case> = vec![
            ("empty", vec![], vec![], [0, 0, 0, 0], false),
            (
                "kinds and a failure",
                vec![
                    res(Container, "c", Converged),
                    res(Vm, "v", Failed),
                    res(Network, "n", Converged),
                ],
                vec![],
                [1, 1, 0, 1],
                false,
            ),
            (
                "drifted resource",
                vec![res(Payload, "p", Drifted)],
                vec![],
                [0, 0, 1, 0],
                true,
            ),
            (
                "attested ok",
                vec![],
                vec![attestation("a", Some("a"))],
                [0, 0, 1, 0],
                false,
            ),
            (
                "mismatch",
                vec![],
                vec![attestation("a", Some("b"))],
                [0, 0, 1, 0],
                true,
            ),
            (
                "missing",
                vec![],
                vec![attestation("a", None)],
                [0, 0, 1, 0],
                true,
            ),
        ];
        for (name, resources, payloads, [c, v, p, f], drifted) in cases {
            let st = NodeStatus {
                resources,
                payloads,
                ..NodeStatus::default()
            };
            let mut b = Brief::default();
            b.count(&st);
            assert_eq!(
                (b.containers, b.vms, b.payloads, b.failed),
                (c, v, p, f),
                "{name}"
            );
            assert_eq!(b.drifted, drifted, "{name}");
            assert_eq!(b.drifted, !st.drift().is_empty(), "{name}: wire rule");
        }
    }

    /// The ports the node reports in use are kept for session allocation; without a status,
    /// none.
    #[test]
    fn brief_keeps_the_ports_in_use() {
        let st = NodeStatus {
            ports_in_use: vec![22, 30000],
            ..NodeStatus::default()
        };
        let facts = NodeFacts::default();
        assert_eq!(Brief::of_parts(&facts, Some(&st)).ports_in_use, [22, 30000]);
        assert!(Brief::of_parts(&facts, None).ports_in_use.is_empty());
    }
}
