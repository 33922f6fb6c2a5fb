//! The reconciler's I/O side: observe through the drivers, plan, apply the plan, and turn the
//! outcome into a `NodeStatus`. Order of a pass: host networks (creations and changes), then
//! payloads (so images loaded from `docker-image` payloads exist), then the restarts payload
//! changes owe, then every registered kind of workload in turn (`workloads`: containers in
//! `containers.rs`, with Docker networks on managed bridges first, then VMs, `vm/`), then the
//! deletion of managed links no longer wanted. Every apply loop asks the pass ([`Pass`])
//! before each action whether a newer generation has arrived, and stops there if one has: the
//! newer spec takes over between two actions, and the stopped pass reports nothing as observed.
//! The drivers are reached through traits (`network::NetworkPhase`, `payload::PayloadPhase`,
//! `docker::engine::ContainerEngine`, `workload::WorkloadPhase`), so the pass is unit-tested
//! with in-memory fakes (`fakes.rs`, `pass_tests.rs`); the self-healing state is in
//! `heal_state.rs`. The workloads each phase saw running get their network activity in the
//! status, read through the network module at most once an interval (`activity.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use steward_proto::{
    NodeSpec, NodeStatus, ResourceState, ResourceStatus, WorkloadKind, WorkloadRef,
};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::activity::Activity;
use crate::docker::engine::{DockerConnector, EngineSlot};
use crate::heal::ladder::LadderPolicy;
use crate::heal::tracker::HealState;
use crate::network::counters::Interfaces;
use crate::network::{EventFeed, NetOutcome, NetworkPhase, Networks};
use crate::pass::{Outcome, Pass};
use crate::payload::PayloadPhase;
use crate::reconcile::Policy;
use crate::store::{Kept, Store};
use crate::workload::{PassCx, WorkloadPhase};

mod containers;
#[cfg(test)]
mod fakes;
mod heal_state;
#[cfg(test)]
mod pass_tests;
mod sessions;
mod volumes;

/// Carries out plans against the host and reports what came of them.
pub struct Reconciler {
    /// The container engine, reached on first use (and again after a failure).
    engine: EngineSlot,
    policy: Policy,
    node_id: String,
    /// The generation of the spec being reconciled (for rollback reports).
    generation: u64,
    networks: Box<dyn NetworkPhase>,
    payloads: Box<dyn PayloadPhase>,
    heal: Heal,
    /// Every kind of workload, in the order a pass reconciles them: containers, then VMs.
    workloads: Vec<Box<dyn WorkloadPhase>>,
    /// The pass under way: asked between actions whether a newer generation took over.
    pass: Arc<Pass>,
    /// The sessions found expired so far (each logged once).
    expired: std::collections::BTreeSet<String>,
    /// The workloads' network activity, read at most once an interval.
    activity: Activity,
    /// The workloads the last pass saw running, with where their traffic is counted.
    running: Vec<(WorkloadRef, Interfaces)>,
}

/// The workloads' escalation ladders and rollbacks, and where they are kept.
#[derive(Default)]
struct Heal {
    policy: LadderPolicy,
    /// Loaded from the store on first use, stored at the end of every pass when changed.
    state: Kept<HealState>,
}

/// Digest of a status (everything but the digest field itself).
pub fn status_digest(s: &NodeStatus) -> String {
    let mut copy = s.clone();
    copy.digest = String::new();
    hex::encode(Sha256::digest(
        serde_json::to_vec(&copy).unwrap_or_default(),
    ))[..32]
        .to_string()
}

impl Reconciler {
    pub fn new(socket: Option<PathBuf>, policy: Policy, node_id: String) -> Self {
        Self {
            engine: EngineSlot::new(Box::new(DockerConnector(socket))),
            policy,
            node_id,
            generation: 0,
            networks: Box::new(Networks::new(
                crate::network::lab::DEFAULT_LAB_TEMPLATE.to_string(),
                None,
                None,
            )),
            payloads: Box::new(crate::payload::Payloads::disabled()),
            heal: Heal::default(),
            workloads: vec![Box::new(containers::Containers::default())],
            pass: Arc::new(Pass::unbounded(0)),
            expired: Default::default(),
            activity: Activity::default(),
            running: Vec::new(),
        }
    }

    /// Workloads' activity is read at most once per `interval` (`activity_interval`).
    pub fn with_activity(mut self, interval: std::time::Duration) -> Self {
        self.activity = Activity::new(interval);
        self
    }

    /// Self-healing: the ladders climb at `policy`'s pace and are kept in `store`.
    pub fn with_heal(mut self, policy: LadderPolicy, store: Option<Store>) -> Self {
        self.heal = Heal {
            policy,
            state: Kept::new(store),
        };
        self
    }

    /// VMs with these settings (without this, a spec's VMs are reported failed).
    pub fn with_vms(mut self, settings: crate::vm::VmSettings) -> Self {
        let vms = crate::vm::Vms::new(settings, self.node_id.clone());
        self.workloads.push(Box::new(vms));
        self
    }

    /// Payloads: blob cache, records and downloads (see `payload`).
    pub fn with_payloads(mut self, payloads: crate::payload::Payloads) -> Self {
        self.payloads = Box::new(payloads);
        self
    }

    /// Host networks: labs expand with `lab_template`; managed links and lab leases are kept
    /// in `store`; the route to `registry` (its URL) is protected by policy.
    pub fn with_networks(
        mut self,
        lab_template: String,
        store: Option<Store>,
        registry: Option<String>,
    ) -> Self {
        self.networks = Box::new(Networks::new(lab_template, store, registry));
        self
    }

    /// Host-network passes may reuse what an earlier pass observed while the netlink event
    /// listener behind `feed` announces no change (see `Networks::with_event_feed`).
    pub fn with_link_events(mut self, feed: Arc<EventFeed>) -> Self {
        self.networks.set_event_feed(feed);
        self
    }

    /// The next pass observes every host resource afresh (the periodic resync).
    pub fn force_full_observe(&mut self) {
        self.networks.force_full_observe();
    }

    /// The drivers a pass goes through, replaced by in-memory fakes (the pass's unit tests).
    #[cfg(test)]
    fn with_drivers(mut self, d: fakes::Drivers) -> Self {
        self.engine = EngineSlot::new(d.connector);
        self.networks = d.networks;
        self.payloads = d.payloads;
        self.workloads.extend(d.vms);
        self
    }

    /// Observe → plan → apply → report, for one generation of the spec, with nothing to
    /// supersede the pass (`apply --file`).
    pub async fn reconcile(&mut self, generation: u64, spec: &NodeSpec) -> NodeStatus {
        match self
            .reconcile_pass(Arc::new(Pass::unbounded(generation)), spec)
            .await
        {
            Outcome::Applied(status) => status,
            // An unbounded pass never asks to stop; should it, nothing is claimed observed.
            Outcome::Superseded { .. } => NodeStatus::default(),
        }
    }

    /// One pass over `pass`'s generation of `spec`: `Applied` with the status when every phase
    /// ran to its end, `Superseded` when a newer generation arrived and the pass stopped
    /// between two actions (its partial status is not reported: it observed nothing whole).
    pub async fn reconcile_pass(&mut self, pass: Arc<Pass>, spec: &NodeSpec) -> Outcome {
        let generation = pass.generation();
        let started = Instant::now();
        self.generation = generation;
        self.pass = pass.clone();
        // Expired sessions' workloads and volumes are not desired any more (offline too).
        let live = self.unexpired(spec, chrono::Utc::now());
        let mut resources = async {
            let effective = self.effective_spec(&live);
            let (mut resources, again) = self.reconcile_all(&effective).await;
            if again && self.pass.stopped_by().is_none() {
                // A workload was rolled back: its old configuration (and payload versions)
                // is converged now rather than a resync later.
                info!("rolled back in this pass; converging the old configuration now");
                let effective = self.effective_spec(&live);
                resources = self.reconcile_all(&effective).await.0;
            }
            self.heal.state.persist().await;
            resources
        }
        .instrument(info_span!("reconcile", generation))
        .await;
        self.pass = Arc::new(Pass::unbounded(generation));
        if let Some(by) = pass.stopped_by() {
            let progress = pass
                .progress()
                .unwrap_or_else(|| steward_proto::PassProgress {
                    generation,
                    done: 0,
                    total: 0,
                    phase: String::new(),
                    started_at: chrono::Utc::now(),
                });
            return Outcome::Superseded { by, progress };
        }
        self.report_activity(&mut resources, started).await;
        let mut status = NodeStatus {
            observed_generation: generation,
            resources,
            payloads: self.payloads.attestations(),
            // The daemon adds the host's ports in use when it publishes the status.
            ports_in_use: Vec::new(),
            digest: String::new(),
        };
        status.digest = status_digest(&status);
        Outcome::Applied(status)
    }

    /// Sets the workloads' activity in `resources`, read again if due at `started` (the
    /// pass's start: see `activity.rs`) through the network module.
    async fn report_activity(&mut self, resources: &mut [ResourceStatus], started: Instant) {
        let wanted = std::mem::take(&mut self.running);
        let running: BTreeSet<WorkloadRef> = wanted.iter().map(|(w, _)| w.clone()).collect();
        // Nothing running: nothing to read (and the first workload to run is read at once).
        if !wanted.is_empty() && self.activity.due(started) {
            let span = info_span!("activity", workloads = wanted.len());
            let read = async {
                let t0 = Instant::now();
                match self.networks.activity(wanted).await {
                    Ok(v) => {
                        debug!(
                            read = v.len(),
                            took_us = t0.elapsed().as_micros() as u64,
                            "workloads' activity read"
                        );
                        Some(v)
                    }
                    Err(e) => {
                        warn!(error = %e, "reading the workloads' activity failed; the last values stay");
                        None
                    }
                }
            };
            let read = read.instrument(span).await;
            self.activity.refreshed(started, read);
        }
        self.activity.fill(resources, &running);
    }

    /// One pass over `spec` (already the effective spec); true when a workload was rolled
    /// back in it.
    async fn reconcile_all(&mut self, spec: &NodeSpec) -> (Vec<ResourceStatus>, bool) {
        let pass = self.pass.clone();
        pass.phase("networks");
        let mut net = self
            .networks
            .reconcile(spec, &self.policy, &self.node_id, &pass)
            .await;
        pass.phase("payloads");
        let mut resources = self.reconcile_payloads(spec).await;
        let (workloads, again) = self.reconcile_workloads(spec, &net, &pass).await;
        // Docker networks go before the bridges under them (and only for bridges going away).
        pass.phase("deletions");
        let doomed = net.bridges_to_delete();
        if !doomed.is_empty() && pass.superseded().is_none() {
            if let Ok(d) = self.engine.get().await {
                for b in doomed {
                    if let Err(e) = d.remove_bridge_network(&b).await {
                        warn!(bridge = %b, error = %e, "removing the Docker network on a bridge failed");
                    }
                }
            }
        }
        self.networks.finish(&mut net, &pass).await;
        let mut all = std::mem::take(&mut net.resources);
        all.append(&mut resources);
        all.extend(workloads.into_iter().map(|mut r| {
            // A VM's addresses are its NICs' lab leases (given to it in its network-config).
            if let Some(nics) = net
                .vm_leases
                .get(&r.name)
                .filter(|_| r.kind == steward_proto::ResourceKind::Vm)
            {
                r.addresses = nics
                    .values()
                    .map(|l| l.address.addr().to_string())
                    .collect();
            }
            r
        }));
        (all, again)
    }

    /// Every registered kind's phase in turn, after the restarts the payloads' phase owes
    /// (those happen even when the pass stops early: the next pass would not know of them).
    /// A kind no phase is registered for is reported failed.
    async fn reconcile_workloads(
        &mut self,
        spec: &NodeSpec,
        net: &NetOutcome,
        pass: &Pass,
    ) -> (Vec<ResourceStatus>, bool) {
        let restarts = self.payloads.take_restarts();
        let mut cx = PassCx {
            spec,
            net,
            heal: self.heal.state.get(),
            ladder: self.heal.policy,
            policy: &self.policy,
            node_id: &self.node_id,
            generation: self.generation,
            pass,
            engine: &mut self.engine,
        };
        for w in restarts {
            let Some(phase) = self.workloads.iter_mut().find(|p| p.kind() == w.kind) else {
                continue;
            };
            if let Err(e) = phase.restart(&w.name, &mut cx).await {
                warn!(workload = %w, error = %e, "restarting a workload after its payload changed failed");
            }
        }
        let (mut out, mut again) = (Vec::new(), false);
        self.running.clear();
        for phase in &mut self.workloads {
            pass.phase(&format!("{}s", phase.kind().as_str()));
            let done = phase.reconcile(&mut cx).await;
            out.extend(done.statuses);
            again |= done.rolled_back;
            self.running.extend(done.interfaces);
        }
        for kind in WorkloadKind::ALL {
            if self.workloads.iter().all(|p| p.kind() != kind) {
                let why = format!("{}s are not enabled in this agent", kind.title());
                out.extend(spec.workload_names(kind).into_iter().map(|name| {
                    let w = WorkloadRef::new(kind, name);
                    ResourceStatus::of_workload(&w, ResourceState::Failed, Some(why.clone()))
                }));
            }
        }
        (out, again)
    }

    async fn reconcile_payloads(&mut self, spec: &NodeSpec) -> Vec<ResourceStatus> {
        // Blobs of the payload versions a rollback may return to stay in the cache (the
        // registry serves a node only the blobs of its current spec).
        let keep = self.heal_state().healthy_blobs();
        self.payloads.retain_blobs(keep);
        let engine = if crate::payload::needs_docker(spec) {
            self.engine.get().await.ok()
        } else {
            None
        };
        self.payloads
            .reconcile(spec, &self.policy, engine.as_deref(), &self.pass)
            .await
    }
}
