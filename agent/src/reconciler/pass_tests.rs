//! The reconcile pass's orchestration against in-memory fakes of its drivers (`fakes.rs`): one
//! table row per rule, each a sequence of passes with what the fakes must have been asked in
//! each, in order, and what the status must say.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use steward_proto::{NodeSpec, NodeStatus, ResourceKind, ResourceState, ResourceStatus};

use super::fakes::{Drivers, FakeEngine, FakeNetworks, FakePayloads, FakeVms, Journal};
use super::Reconciler;
use crate::heal::ladder::LadderPolicy;
use crate::pass::{Board, Outcome, Pass};
use crate::reconcile::Policy;

/// One pass of a row.
struct Step {
    spec: &'static str,
    /// Plays Docker (or its absence) before the pass.
    before: fn(&FakeEngine),
    /// A newer generation has arrived before the pass starts.
    newer_arrived: bool,
    /// What the fakes were asked in this pass, in order.
    journal: &'static [&'static str],
    /// What the status must say (`None`: the pass was superseded).
    check: fn(Option<&NodeStatus>) -> Result<(), String>,
}

fn nothing(_: &FakeEngine) {}

/// What a row's pass has unless it says otherwise: nothing played before it, no newer
/// generation, nothing asked, everything converged.
fn plain() -> Step {
    Step {
        spec: "",
        before: nothing,
        newer_arrived: false,
        journal: &[],
        check: all_converged,
    }
}

fn state_of(st: Option<&NodeStatus>, kind: ResourceKind, name: &str) -> Option<ResourceState> {
    st?.resources
        .iter()
        .find(|r| r.kind == kind && r.name == name)
        .map(|r| r.state)
}

fn web_status(st: Option<&NodeStatus>) -> Result<&ResourceStatus, String> {
    st.ok_or("superseded")?
        .resources
        .iter()
        .find(|r| r.kind == ResourceKind::Container && r.name == "web")
        .ok_or_else(|| "no status for web".to_string())
}

fn all_converged(st: Option<&NodeStatus>) -> Result<(), String> {
    let st = st.ok_or("superseded")?;
    match st
        .resources
        .iter()
        .find(|r| r.state != ResourceState::Converged)
    {
        Some(r) => Err(format!(
            "{:?} {} is {:?}: {:?}",
            r.kind, r.name, r.state, r.error
        )),
        None => Ok(()),
    }
}

const FULL: &str = "
networks: {bridges: [{name: br0}]}
payloads: [{name: cfg, version: '1', path: /srv/cfg, on_change: {restart_vms: [vm1]}}]
containers: [{name: web, image: 'busybox:1'}]
vms: [{name: vm1, image: /base.qcow2, cpus: 1, memory: 256Mi}]
";

const FULL_CFG2: &str = "
networks: {bridges: [{name: br0}]}
payloads: [{name: cfg, version: '2', path: /srv/cfg, on_change: {restart_vms: [vm1]}}]
containers: [{name: web, image: 'busybox:1'}]
vms: [{name: vm1, image: /base.qcow2, cpus: 1, memory: 256Mi}]
";

const WEB_CFG: &str = "
payloads: [{name: cfg, version: '1', path: /srv/cfg, on_change: {restart_containers: [web]}}]
containers: [{name: web, image: 'busybox:1'}]
";

const WEB_CFG2: &str = "
payloads: [{name: cfg, version: '2', path: /srv/cfg, on_change: {restart_containers: [web]}}]
containers: [{name: web, image: 'busybox:1'}]
";

const WEB_GOOD: &str = "containers: [{name: web, image: 'good:1'}]";
const WEB_BAD: &str = "containers: [{name: web, image: 'bad:2'}]";

/// `web`, and `lab` of session `s1` on its volume `d1`, with `s1`'s lease as `lease` says.
macro_rules! session_spec {
    ($lease:literal) => {
        concat!(
            "sessions: [{id: s1, ",
            $lease,
            ", volumes: [d1]}]\n",
            "containers: [{name: web, image: 'busybox:1'}, ",
            "{name: lab, image: 'busybox:1', session: s1, volumes: ['d1:/data']}]\n",
        )
    };
}

const SESSION_LIVE: &str = session_spec!("expires_at: '2999-01-01T00:00:00Z'");
const SESSION_EXTENDED: &str = session_spec!("expires_at: '3000-01-01T00:00:00Z'");
const SESSION_EXPIRED: &str = session_spec!("expires_at: '2000-01-01T00:00:00Z'");
const SESSION_KEPT_LIVE: &str =
    session_spec!("expires_at: '2999-01-01T00:00:00Z', keep_volumes: true");
const SESSION_KEPT_EXPIRED: &str =
    session_spec!("expires_at: '2000-01-01T00:00:00Z', keep_volumes: true");

/// The first pass over a live [`session_spec`]: its volume, then the containers.
fn session_first(spec: &'static str) -> Step {
    Step {
        spec,
        journal: &[
            "networks",
            "create volume d1 s1",
            "pull busybox:1",
            "create web busybox:1",
            "create lab busybox:1",
            "network deletions",
        ],
        ..plain()
    }
}

/// Everything converged, and no status for the expired session's `lab`.
fn lab_gone(st: Option<&NodeStatus>) -> Result<(), String> {
    all_converged(st)?;
    match state_of(st, ResourceKind::Container, "lab") {
        None => Ok(()),
        Some(s) => Err(format!("the expired lab is still reported: {s:?}")),
    }
}

/// A volume named `d1` that Steward did not create.
fn foreign_d1(e: &FakeEngine) {
    let d1 = crate::reconcile::volumes::ObservedVolume {
        name: "d1".into(),
        ..Default::default()
    };
    e.state.lock().unwrap().volumes.insert("d1".into(), d1);
}

fn session_rows() -> Vec<(&'static str, Vec<Step>)> {
    vec![
        (
            "a session's volume before its containers; an extended lease changes nothing; \
             once expired, its container goes, then its volume",
            vec![
                session_first(SESSION_LIVE),
                Step {
                    spec: SESSION_EXTENDED,
                    journal: &["networks", "network deletions"],
                    ..plain()
                },
                Step {
                    spec: SESSION_EXPIRED,
                    journal: &[
                        "networks",
                        "remove lab",
                        "remove volume d1",
                        "network deletions",
                    ],
                    check: lab_gone,
                    ..plain()
                },
            ],
        ),
        (
            "an expired session's kept volume stays",
            vec![
                session_first(SESSION_KEPT_LIVE),
                Step {
                    spec: SESSION_KEPT_EXPIRED,
                    journal: &["networks", "remove lab", "network deletions"],
                    check: lab_gone,
                    ..plain()
                },
            ],
        ),
        (
            "a volume not the session's is not taken over: its containers fail, never removed",
            vec![
                Step {
                    spec: SESSION_LIVE,
                    before: foreign_d1,
                    journal: &[
                        "networks",
                        "pull busybox:1",
                        "create web busybox:1",
                        "network deletions",
                    ],
                    check: |st| {
                        let lab = (st.ok_or("superseded")?.resources.iter())
                            .find(|r| r.name == "lab")
                            .ok_or("no status for lab")?;
                        let err = lab.error.as_deref().unwrap_or("");
                        match lab.state == ResourceState::Failed && err.contains("not taken over") {
                            true => Ok(()),
                            false => Err(format!("lab: {lab:?}")),
                        }
                    },
                    ..plain()
                },
                Step {
                    spec: SESSION_EXPIRED,
                    journal: &["networks", "network deletions"],
                    check: lab_gone,
                    ..plain()
                },
            ],
        ),
    ]
}

/// The first pass over [`FULL`]: everything is made, in order.
fn full_first() -> Step {
    Step {
        spec: FULL,
        journal: &[
            "networks",
            "deploy payload cfg@1",
            "pull busybox:1",
            "create web busybox:1",
            "vm vm1",
            "network deletions",
        ],
        ..plain()
    }
}

/// The first pass over [`WEB_GOOD`]: `web` is made.
fn web_good_first(before: fn(&FakeEngine)) -> Step {
    Step {
        spec: WEB_GOOD,
        before,
        journal: &[
            "networks",
            "pull good:1",
            "create web good:1",
            "network deletions",
        ],
        ..plain()
    }
}

/// Another pass over [`WEB_GOOD`] with nothing to do.
fn web_good_again() -> Step {
    Step {
        spec: WEB_GOOD,
        journal: &["networks", "network deletions"],
        ..plain()
    }
}

fn rows() -> Vec<(&'static str, Vec<Step>)> {
    vec![
        (
            "networks, then payloads, then the workloads that use them, deletions last",
            vec![full_first()],
        ),
        (
            "a payload change restarts the VMs that restart on it, before the VM pass",
            vec![
                full_first(),
                Step {
                    spec: FULL_CFG2,
                    journal: &[
                        "networks",
                        "deploy payload cfg@2",
                        "restart vm vm1",
                        "vm vm1",
                        "network deletions",
                    ],
                    ..plain()
                },
            ],
        ),
        (
            "a payload change restarts the containers that restart on it, before their pass",
            vec![
                Step {
                    spec: WEB_CFG,
                    journal: &[
                        "networks",
                        "deploy payload cfg@1",
                        "pull busybox:1",
                        "create web busybox:1",
                        "network deletions",
                    ],
                    ..plain()
                },
                Step {
                    spec: WEB_CFG2,
                    journal: &[
                        "networks",
                        "deploy payload cfg@2",
                        "restart web",
                        "network deletions",
                    ],
                    ..plain()
                },
            ],
        ),
        (
            "a container Docker restarted climbs the ladder's first rung: restart",
            vec![
                web_good_first(nothing),
                web_good_again(),
                Step {
                    spec: WEB_GOOD,
                    before: |e| crash(e, "web"),
                    journal: &["networks", "restart web", "network deletions"],
                    check: |st| {
                        let web = web_status(st)?;
                        // On the first rung after one attempt; Docker's restart and the
                        // agent's both counted. Healthy again, so converged.
                        match &web.escalation {
                            Some(e)
                                if web.escalation_level == 1
                                    && e.position == "restart"
                                    && e.attempts == 1
                                    && web.restarts == 2 =>
                            {
                                Ok(())
                            }
                            _ => Err(format!("web: {web:?}")),
                        }
                    },
                    ..plain()
                },
            ],
        ),
        (
            "an update left failing past the grace is rolled back in the same pass",
            vec![
                web_good_first(|e| bad_image(e, "bad:2")),
                web_good_again(),
                Step {
                    spec: WEB_BAD,
                    journal: &[
                        "networks",
                        "pull bad:2",
                        "remove web",
                        "create web bad:2",
                        "network deletions",
                    ],
                    check: |_| Ok(()),
                    ..plain()
                },
                Step {
                    spec: WEB_BAD,
                    journal: &[
                        "networks",
                        "remove web",
                        "create web good:1",
                        "network deletions",
                        "networks",
                        "network deletions",
                    ],
                    check: |st| {
                        let web = web_status(st)?;
                        match &web.rolled_back {
                            Some(rb) if rb.from_generation == 4 && rb.to_generation == 2 => Ok(()),
                            _ => Err(format!("web not rolled back: {web:?}")),
                        }
                    },
                    ..plain()
                },
            ],
        ),
        (
            "with the engine down, containers are failed and nothing else is held up",
            vec![
                full_first(),
                Step {
                    spec: FULL,
                    before: |e| e.offline.store(true, Ordering::SeqCst),
                    journal: &["networks", "vm vm1", "network deletions"],
                    check: |st| {
                        match state_of(st, ResourceKind::Container, "web") {
                            Some(ResourceState::Failed) => {}
                            s => return Err(format!("web is {s:?}")),
                        }
                        match state_of(st, ResourceKind::Vm, "vm1") {
                            Some(ResourceState::Converged) => Ok(()),
                            s => Err(format!("vm1 is {s:?}")),
                        }
                    },
                    ..plain()
                },
                Step {
                    spec: FULL,
                    before: |e| e.offline.store(false, Ordering::SeqCst),
                    // The container was never removed: back online, nothing to do.
                    journal: &["networks", "vm vm1", "network deletions"],
                    check: all_converged,
                    ..plain()
                },
            ],
        ),
        (
            "a pass a newer spec has overtaken stops before its next action and reports nothing",
            vec![Step {
                spec: FULL,
                newer_arrived: true,
                journal: &["networks", "network deletions"],
                check: |st| match st {
                    None => Ok(()),
                    Some(_) => Err("a superseded pass reported a status".into()),
                },
                ..plain()
            }],
        ),
    ]
}

/// `web`'s activity is `want` (and everything converged).
fn web_activity(st: Option<&NodeStatus>, want: Option<u64>) -> Result<(), String> {
    all_converged(st)?;
    match web_status(st)?.activity {
        got if got == want => Ok(()),
        got => Err(format!("web's activity is {got:?}, expected {want:?}")),
    }
}

/// Docker shows `web`'s init process (a running container the agent counts traffic of).
fn web_has_pid(e: &FakeEngine) {
    let mut st = e.state.lock().unwrap();
    if let Some(c) = st.containers.get_mut("web") {
        c.pid = Some(4242);
    }
}

fn activity_rows() -> Vec<(&'static str, Vec<Step>)> {
    let web = "containers: [{name: web, image: 'busybox:1'}]";
    vec![(
        "a running container's activity: read through the network phase once an interval, \
         held in between (the digest stays); none before it is seen running",
        vec![
            Step {
                spec: web,
                journal: &[
                    "networks",
                    "pull busybox:1",
                    "create web busybox:1",
                    "network deletions",
                ],
                check: |st| web_activity(st, None),
                ..plain()
            },
            Step {
                spec: web,
                before: web_has_pid,
                journal: &["networks", "network deletions", "activity of container web"],
                check: |st| web_activity(st, Some(1)),
                ..plain()
            },
            Step {
                spec: web,
                journal: &["networks", "network deletions"],
                check: |st| web_activity(st, Some(1)),
                ..plain()
            },
        ],
    )]
}

/// Docker restarted the container (it crashed).
fn crash(e: &FakeEngine, name: &str) {
    let mut st = e.state.lock().unwrap();
    if let Some(c) = st.containers.get_mut(name) {
        c.restart_count += 1;
    }
}

fn bad_image(e: &FakeEngine, image: &str) {
    let mut st = e.state.lock().unwrap();
    st.unhealthy_images.insert(image.to_string());
}

fn reconciler(journal: &Journal, engine: &FakeEngine) -> Reconciler {
    let ladder = LadderPolicy {
        attempts_per_rung: 3,
        backoff_initial: 0,
        backoff_max: 0,
        cooldown: 600,
        rollback_grace: 0,
    };
    Reconciler::new(None, Policy::default(), "n1".into())
        .with_heal(ladder, None)
        .with_drivers(Drivers {
            connector: Box::new(engine.clone()),
            networks: Box::new(FakeNetworks(journal.clone(), Default::default())),
            payloads: Box::new(FakePayloads::new(journal.clone())),
            vms: Some(Box::new(FakeVms(journal.clone()))),
        })
}

#[tokio::test]
async fn the_pass_table() {
    let mut failures = Vec::new();
    let all = rows()
        .into_iter()
        .chain(session_rows())
        .chain(activity_rows());
    for (name, steps) in all {
        let journal = Journal::default();
        let engine = FakeEngine {
            journal: journal.clone(),
            ..FakeEngine::default()
        };
        let mut rec = reconciler(&journal, &engine);
        for (i, step) in steps.iter().enumerate() {
            let generation = i as u64 + 1;
            let spec: NodeSpec = serde_norway::from_str(step.spec).unwrap();
            (step.before)(&engine);
            let newest = generation + u64::from(step.newer_arrived);
            let pass = Arc::new(Pass::new(
                generation,
                Board::default(),
                Arc::new(move || newest),
            ));
            let status = match rec.reconcile_pass(pass, &spec).await {
                Outcome::Applied(st) => Some(st),
                Outcome::Superseded { .. } => None,
            };
            let got = journal.take();
            if got != step.journal {
                failures.push(format!(
                    "{name}, pass {generation}: asked\n    {got:?}\n  expected\n    {:?}",
                    step.journal
                ));
            }
            if let Err(e) = (step.check)(status.as_ref()) {
                failures.push(format!("{name}, pass {generation}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
