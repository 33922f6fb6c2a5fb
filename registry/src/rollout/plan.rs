//! Pure rollout logic: batch sizes, splitting nodes into batches, judging one node's progress
//! from its reported status, and a batch's verdict. No I/O; table-tested.

use steward_proto::{NodeStatus, ResourceKind, ResourceState};

/// How many nodes a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Count(usize),
    /// 1–100 percent of the nodes, rounded up (at least one node).
    Percent(u8),
}

impl std::str::FromStr for BatchSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            match p.trim().parse::<u8>() {
                Ok(n) if (1..=100).contains(&n) => Ok(BatchSize::Percent(n)),
                _ => Err(format!(
                    "batch {s:?}: a percentage must be 1% to 100%, e.g. \"25%\""
                )),
            }
        } else {
            match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(BatchSize::Count(n)),
                _ => Err(format!(
                    "batch {s:?} must be a node count of at least 1 (\"2\") or a percentage (\"25%\")"
                )),
            }
        }
    }
}

impl BatchSize {
    /// Nodes per batch for `total` nodes.
    pub fn per_batch(self, total: usize) -> usize {
        match self {
            BatchSize::Count(n) => n,
            BatchSize::Percent(p) => (total * usize::from(p)).div_ceil(100).max(1),
        }
    }
}

/// Splits `nodes` (in the given order) into batches; the batch index of each node.
pub fn assign_batches(total: usize, size: BatchSize) -> Vec<usize> {
    let per = size.per_batch(total).max(1);
    (0..total).map(|i| i / per).collect()
}

/// One node's progress towards having `payload` at `expected_sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Still waiting; why.
    Pending(String),
    Converged,
    Failed(String),
}

/// Judges a node from its last full status: it must have seen `generation` (the spec that
/// carries the new version), report the payload resource not failed, and attest the file at
/// `expected_sha256`.
pub fn node_progress(
    generation: u64,
    status: Option<&NodeStatus>,
    payload: &str,
    expected_sha256: &str,
) -> Progress {
    let Some(st) = status else {
        return Progress::Pending("no status reported yet".into());
    };
    if st.observed_generation < generation {
        return Progress::Pending(format!(
            "observed generation {} < {generation}",
            st.observed_generation
        ));
    }
    // A workload the new version broke was rolled back (payload included): that node failed.
    if let Some((r, rb)) = st.resources.iter().find_map(|r| {
        r.rolled_back
            .as_ref()
            .filter(|rb| rb.from_generation >= generation)
            .map(|rb| (r, rb))
    }) {
        return Progress::Failed(format!(
            "{} {} was rolled back from generation {} to generation {}'s configuration: {}",
            format!("{:?}", r.kind).to_lowercase(),
            r.name,
            rb.from_generation,
            rb.to_generation,
            rb.reason
        ));
    }
    let resource = st
        .resources
        .iter()
        .find(|r| r.kind == ResourceKind::Payload && r.name == payload);
    if let Some(r) = resource {
        if r.state == ResourceState::Failed {
            return Progress::Failed(
                r.error
                    .clone()
                    .unwrap_or_else(|| format!("payload {payload} failed")),
            );
        }
    }
    let Some(att) = st.payloads.iter().find(|p| p.name == payload) else {
        return Progress::Pending(format!("no attestation for payload {payload} yet"));
    };
    if att.expected != expected_sha256 {
        return Progress::Pending(format!(
            "attests sha256 {} not yet {expected_sha256}",
            att.expected
        ));
    }
    match (&att.actual, resource.map(|r| r.state)) {
        (Some(a), None | Some(ResourceState::Converged)) if *a == att.expected => {
            Progress::Converged
        }
        (None, _) => Progress::Pending(format!("{} is missing", att.path)),
        (Some(a), _) if *a != att.expected => {
            Progress::Pending(format!("{} has sha256 {a}", att.path))
        }
        (_, Some(s)) => Progress::Pending(format!("payload {payload} is {s:?}")),
        _ => Progress::Pending("waiting".into()),
    }
}

/// What to do with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every node converged and attested: start the next batch.
    Converged,
    /// Keep waiting.
    Waiting,
    /// Halt, naming these nodes and why.
    Halt(Vec<(String, String)>),
}

/// The verdict for a batch: any failed node halts at once; all converged moves on; past the
/// time-out, the nodes not yet converged halt it.
pub fn verdict(nodes: &[(String, Progress)], timed_out: bool) -> Verdict {
    let failed: Vec<(String, String)> = nodes
        .iter()
        .filter_map(|(id, p)| match p {
            Progress::Failed(e) => Some((id.clone(), e.clone())),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return Verdict::Halt(failed);
    }
    if nodes.iter().all(|(_, p)| *p == Progress::Converged) {
        return Verdict::Converged;
    }
    if timed_out {
        return Verdict::Halt(
            nodes
                .iter()
                .filter_map(|(id, p)| match p {
                    Progress::Pending(why) => Some((id.clone(), format!("timed out: {why}"))),
                    _ => None,
                })
                .collect(),
        );
    }
    Verdict::Waiting
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use steward_proto::{PayloadAttestation, ResourceStatus};

    #[test]
    fn batch_sizes() {
        let cases: &[(&str, Result<BatchSize, &str>)] = &[
            ("1", Ok(BatchSize::Count(1))),
            (" 3 ", Ok(BatchSize::Count(3))),
            ("25%", Ok(BatchSize::Percent(25))),
            ("100%", Ok(BatchSize::Percent(100))),
            ("0", Err("at least 1")),
            ("-1", Err("at least 1")),
            ("0%", Err("1% to 100%")),
            ("101%", Err("1% to 100%")),
            ("half", Err("at least 1")),
        ];
        for (input, want) in cases {
            match (input.parse::<BatchSize>(), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e}"),
                (got, w) => panic!("{input}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn batches() {
        let cases: &[(usize, BatchSize, &[usize])] = &[
            (5, BatchSize::Count(2), &[0, 0, 1, 1, 2]),
            (5, BatchSize::Count(10), &[0, 0, 0, 0, 0]),
            (5, BatchSize::Percent(20), &[0, 1, 2, 3, 4]),
            (5, BatchSize::Percent(50), &[0, 0, 0, 1, 1]),
            (3, BatchSize::Percent(1), &[0, 1, 2]),
            (4, BatchSize::Percent(100), &[0, 0, 0, 0]),
            (0, BatchSize::Count(1), &[]),
        ];
        for (n, size, want) in cases {
            assert_eq!(assign_batches(*n, *size), *want, "{n} nodes, {size:?}");
        }
    }

    fn status(
        gen: u64,
        state: Option<ResourceState>,
        expected: &str,
        actual: Option<&str>,
    ) -> NodeStatus {
        NodeStatus {
            observed_generation: gen,
            resources: state
                .map(|s| {
                    let error = (s == ResourceState::Failed).then(|| "sha256 mismatch".into());
                    ResourceStatus::new(ResourceKind::Payload, "tc", s, error)
                })
                .into_iter()
                .collect(),
            payloads: vec![PayloadAttestation {
                name: "tc".into(),
                version: "2".into(),
                path: "/opt/tc".into(),
                expected: expected.into(),
                actual: actual.map(str::to_string),
            }],
            ports_in_use: Vec::new(),
            digest: String::new(),
        }
    }

    #[test]
    fn node_progress_table() {
        use ResourceState as S;
        let (new, old) = ("n".repeat(64), "o".repeat(64));
        let conv = |p: &Progress| matches!(p, Progress::Converged);
        let pend = |p: &Progress| matches!(p, Progress::Pending(_));
        let fail = |p: &Progress| matches!(p, Progress::Failed(_));
        type Case<'a> = (&'a str, Option<NodeStatus>, fn(&Progress) -> bool);
        let cases: Vec<Case> = vec![
            ("no status", None, pend),
            (
                "old generation",
                Some(status(4, Some(S::Converged), &new, Some(&new))),
                pend,
            ),
            (
                "converged",
                Some(status(5, Some(S::Converged), &new, Some(&new))),
                conv,
            ),
            (
                "newer generation",
                Some(status(6, Some(S::Converged), &new, Some(&new))),
                conv,
            ),
            (
                "attestation only",
                Some(status(5, None, &new, Some(&new))),
                conv,
            ),
            (
                "still the old pin",
                Some(status(5, Some(S::Converged), &old, Some(&old))),
                pend,
            ),
            (
                "failed",
                Some(status(5, Some(S::Failed), &new, Some(&old))),
                fail,
            ),
            (
                "pending",
                Some(status(5, Some(S::Pending), &new, None)),
                pend,
            ),
            (
                "drifted file",
                Some(status(5, Some(S::Drifted), &new, Some(&old))),
                pend,
            ),
        ];
        for (name, st, want) in cases {
            let p = node_progress(5, st.as_ref(), "tc", &new);
            assert!(want(&p), "{name}: {p:?}");
        }
        // A workload rolled back from the rollout's generation (its payload with it).
        let mut st = status(5, Some(S::Converged), &old, Some(&old));
        let mut web = ResourceStatus::new(
            ResourceKind::Container,
            "web",
            S::Failed,
            Some("rolled back".into()),
        );
        web.rolled_back = Some(steward_proto::RolledBack {
            from_generation: 5,
            to_generation: 4,
            reason: "health check failing".into(),
        });
        st.resources.push(web);
        let Progress::Failed(e) = node_progress(5, Some(&st), "tc", &new) else {
            panic!("a rollback fails the node");
        };
        assert!(e.contains("web was rolled back from generation 5"), "{e}");
        // An older rollback (from before the rollout's generation) does not count.
        st.resources[1]
            .rolled_back
            .as_mut()
            .unwrap()
            .from_generation = 3;
        st.payloads[0].expected = new.clone();
        st.payloads[0].actual = Some(new.clone());
        assert_eq!(node_progress(5, Some(&st), "tc", &new), Progress::Converged);
        let Progress::Failed(e) =
            node_progress(5, Some(&status(5, Some(S::Failed), &new, None)), "tc", &new)
        else {
            panic!("failed expected");
        };
        assert_eq!(e, "sha256 mismatch");
    }

    #[test]
    fn verdicts() {
        let c = || Progress::Converged;
        let p = || Progress::Pending("observed generation 1 < 2".into());
        let f = || Progress::Failed("boom".into());
        let n = |id: &str, pr: Progress| (id.to_string(), pr);
        assert_eq!(
            verdict(&[n("a", c()), n("b", c())], false),
            Verdict::Converged
        );
        assert_eq!(
            verdict(&[n("a", c()), n("b", p())], false),
            Verdict::Waiting
        );
        assert_eq!(
            verdict(&[n("a", f()), n("b", p())], false),
            Verdict::Halt(vec![("a".into(), "boom".into())])
        );
        assert_eq!(
            verdict(&[n("a", c()), n("b", p())], true),
            Verdict::Halt(vec![(
                "b".into(),
                "timed out: observed generation 1 < 2".into()
            )])
        );
        assert_eq!(verdict(&[n("a", c())], true), Verdict::Converged);
    }
}
