//! The reconcile loop: waits for a reason to run a pass (a new spec, the periodic resync, a due
//! health probe, a session lease running out, a VM's exit, debounced events), takes the resets
//! the heartbeat handed over, runs the pass (stopped between two actions by a newer spec) and
//! publishes its status with the host's ports in use (`host_ports`); a spec over this agent's
//! `[limits]` is refused without being acted on.
//!
//! A lease's deadline wakes the loop by itself, so an expired session is removed on time with
//! nothing else happening — the registry unreachable included: offline expiry is the one
//! destructive act the agent takes without the registry (`reconcile::leases`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_proto::validate::SpecLimits;
use steward_proto::{NodeStatus, ResourceKind, ResourceState, ResourceStatus};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::Control;
use crate::config::AgentConfig;
use crate::pass::{Outcome, Pass};
use crate::reconciler::Reconciler;
use crate::store::{Paths, StoredSpec};
use crate::watchdog::Liveness;

/// Runs a pass whenever there is a reason to (see the module docs), until the spec channel
/// closes.
pub(crate) async fn reconcile_loop(
    cfg: AgentConfig,
    mut rec: Reconciler,
    mut spec: watch::Receiver<Option<StoredSpec>>,
    status: watch::Sender<NodeStatus>,
    wake: Arc<Notify>,
    paths: Paths,
    control: Control,
) {
    let Control {
        live,
        resets,
        urgent,
        progress,
    } = control;
    let mut resync = tokio::time::interval(cfg.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !wait_for_work(&mut rec, &mut spec, &mut resync, &wake, &urgent).await {
            return;
        }
        let current = spec.borrow_and_update().clone();
        let Some(current) = current else {
            continue; // nothing known yet: never act on an empty spec we did not receive
        };
        if let Some(st) = refused_over_limits(&cfg.limits, &current) {
            publish(&paths, &status, st, &current).await;
            continue;
        }
        let asked = std::mem::take(&mut *resets.lock().unwrap_or_else(|p| p.into_inner()));
        for w in asked {
            rec.reset_workload(&w);
        }
        if let Some(st) = run_pass(&mut rec, &current, spec.clone(), &progress, &live).await {
            publish(&paths, &status, st, &current).await;
        }
    }
}

/// Waits for a reason to run a pass: a new spec, the periodic resync, a due health probe, the
/// next session lease's deadline, a VM's exit, or events (debounced). False when the spec
/// channel is closed.
async fn wait_for_work(
    rec: &mut Reconciler,
    spec: &mut watch::Receiver<Option<StoredSpec>>,
    resync: &mut tokio::time::Interval,
    wake: &Notify,
    urgent: &Notify,
) -> bool {
    let probe_in = spec
        .borrow()
        .as_ref()
        .and_then(|s| rec.next_probe_in(&s.spec))
        .unwrap_or(Duration::from_secs(3600));
    let expiry_in = (spec.borrow().as_ref())
        .and_then(|s| crate::reconcile::leases::next_expiry_in(&s.spec, chrono::Utc::now()));
    tokio::select! {
        r = spec.changed() => if r.is_err() { return false },
        // A session's lease runs out: its workloads go, whether the registry answers or not.
        _ = sleep_or_never(expiry_in) => {},
        // The resync looks at everything afresh, whatever the event feeds said.
        _ = resync.tick() => rec.force_full_observe(),
        // An agent-side health probe is due.
        _ = tokio::time::sleep(probe_in) => {},
        // A VM's QEMU exited: one event, nothing to debounce.
        _ = urgent.notified() => {},
        _ = wake.notified() => {
            // Debounce bursts of events (a recreate emits several), but never make a new
            // spec wait for the debounce.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {},
                r = spec.changed() => if r.is_err() { return false },
            }
        },
    }
    true
}

/// Sleeps for `d`, or for ever without one.
async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// One pass over `current`, which stops between two actions once `newest` holds a newer
/// generation: the status to publish, or `None` when a newer spec took over.
async fn run_pass(
    rec: &mut Reconciler,
    current: &StoredSpec,
    newest: watch::Receiver<Option<StoredSpec>>,
    progress: &crate::pass::Board,
    live: &Liveness,
) -> Option<NodeStatus> {
    let started = Instant::now();
    live.pass_started();
    let newest: crate::pass::Newest =
        Arc::new(move || newest.borrow().as_ref().map_or(0, |s| s.generation));
    let pass = Arc::new(Pass::new(current.generation, progress.clone(), newest));
    let outcome = rec.reconcile_pass(pass, &current.spec).await;
    live.pass_finished();
    progress.clear();
    let st = match outcome {
        Outcome::Applied(st) => st,
        Outcome::Superseded { by, progress } => {
            // Nothing of it is reported: the status keeps the last generation applied whole.
            info!(generation = current.generation, newer = by, done = progress.done, planned = progress.total, took = ?started.elapsed(), "pass stopped between two actions: a newer spec takes over");
            return None;
        }
    };
    crate::metrics::get().reconciled(started.elapsed(), &st);
    let failed = st
        .resources
        .iter()
        .filter(|r| r.state != steward_proto::ResourceState::Converged)
        .count();
    info!(generation = current.generation, resources = st.resources.len(), not_converged = failed, took = ?started.elapsed(), "reconciled");
    Some(st)
}

/// Adds the host's ports in use to the status (but those `applied`'s containers publish; its
/// digest made again), writes it to `status.json` (off the runtime) and hands it to the
/// heartbeat.
async fn publish(
    paths: &Paths,
    status: &watch::Sender<NodeStatus>,
    mut st: NodeStatus,
    applied: &StoredSpec,
) {
    st.ports_in_use = crate::host_ports::in_use_under(&applied.spec).await;
    st.digest = crate::reconciler::status_digest(&st);
    if let Err(e) = paths.save_status_off_runtime(&st).await {
        warn!(error = %format!("{e:#}"), "writing status.json failed");
    }
    status.send_replace(st);
}

/// The status for a spec over this agent's `[limits]`, which is not acted on at all (nothing
/// created, nothing removed): one failed `spec` entry naming every limit exceeded.
fn refused_over_limits(limits: &SpecLimits, spec: &StoredSpec) -> Option<NodeStatus> {
    let over = limits.check(&spec.spec);
    if over.is_empty() {
        return None;
    }
    let why: Vec<String> = over.iter().map(|p| p.to_string()).collect();
    let why = format!("refused, nothing done: {}", why.join("; "));
    warn!(generation = spec.generation, reason = %why, "spec over this agent's limits");
    let failed = ResourceStatus::new(ResourceKind::Spec, "spec", ResourceState::Failed, Some(why));
    let mut st = NodeStatus {
        observed_generation: spec.generation,
        resources: vec![failed],
        payloads: Vec::new(),
        ports_in_use: Vec::new(), // `publish` adds them (and makes the digest again)
        digest: String::new(),
    };
    st.digest = crate::reconciler::status_digest(&st);
    Some(st)
}
