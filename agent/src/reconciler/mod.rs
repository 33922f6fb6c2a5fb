//! The reconciler's I/O side: observe through the drivers, plan, apply the plan, and turn the
//! outcome into a `NodeStatus`. Order of a pass: host networks (creations and changes), then
//! payloads (so images loaded from `docker-image` payloads exist), then containers (Docker
//! networks on managed bridges first), then VMs (`vm/`), then the deletion of managed links no
//! longer wanted. Every apply loop asks the pass ([`Pass`]) before each action whether a newer
//! generation has arrived, and stops there if one has: the newer spec takes over between two
//! actions, and the stopped pass reports nothing as observed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use steward_proto::{NodeSpec, NodeStatus, ResourceKind, ResourceState, ResourceStatus};
use tracing::{info, info_span, warn, Instrument};

use crate::docker::Docker;
use crate::heal::containers::HealState;
use crate::heal::ladder::LadderPolicy;
use crate::network::{EventFeed, NetOutcome, Networks};
use crate::pass::{Outcome, Pass};
use crate::reconcile::{plan, Action, Policy, Verdict};
use crate::store::{Kept, Store};

mod heal_state;

/// Carries out plans against the host and reports what came of them.
pub struct Reconciler {
    docker: Option<Docker>,
    socket: Option<PathBuf>,
    policy: Policy,
    node_id: String,
    /// Starts the agent made per container since it started (added to Docker's own count).
    starts: HashMap<String, u32>,
    /// The generation of the spec being reconciled (for rollback reports).
    generation: u64,
    networks: Networks,
    payloads: crate::payload::Payloads,
    heal: Heal,
    probes: crate::heal::probes::Probes,
    vms: Option<crate::vm::Vms>,
    /// The pass under way: asked between actions whether a newer generation took over.
    pass: Arc<Pass>,
}

/// The escalation ladders of the containers and where they are kept.
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

fn resource(
    kind: ResourceKind,
    name: &str,
    state: ResourceState,
    error: Option<String>,
) -> ResourceStatus {
    ResourceStatus::new(kind, name, state, error)
}

impl Reconciler {
    pub fn new(socket: Option<PathBuf>, policy: Policy, node_id: String) -> Self {
        Self {
            docker: None,
            socket,
            policy,
            node_id,
            starts: HashMap::new(),
            generation: 0,
            networks: Networks::new(
                crate::network::lab::DEFAULT_LAB_TEMPLATE.to_string(),
                None,
                None,
            ),
            payloads: crate::payload::Payloads::disabled(),
            heal: Heal::default(),
            probes: Default::default(),
            vms: None,
            pass: Arc::new(Pass::unbounded(0)),
        }
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
        self.vms = Some(crate::vm::Vms::new(settings, self.node_id.clone()));
        self
    }

    /// Payloads: blob cache, records and downloads (see `payload`).
    pub fn with_payloads(mut self, payloads: crate::payload::Payloads) -> Self {
        self.payloads = payloads;
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
        self.networks = Networks::new(lab_template, store, registry);
        self
    }

    /// Host-network passes may reuse what an earlier pass observed while the netlink event
    /// listener behind `feed` announces no change (see `Networks::with_event_feed`).
    pub fn with_link_events(mut self, feed: Arc<EventFeed>) -> Self {
        self.networks = self.networks.with_event_feed(feed);
        self
    }

    /// The next pass observes every host resource afresh (the periodic resync).
    pub fn force_full_observe(&mut self) {
        self.networks.force_full_observe();
    }

    /// The Docker driver, connecting on first use (and again after a failure).
    pub async fn docker(&mut self) -> Result<&Docker, String> {
        if self.docker.is_none() {
            let d = Docker::connect(self.socket.as_deref())
                .await
                .map_err(|e| format!("Docker engine unreachable: {e:#}"))?;
            self.docker = Some(d);
        }
        self.docker
            .as_ref()
            .ok_or_else(|| "Docker engine unreachable".to_string())
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
        self.generation = generation;
        self.pass = pass.clone();
        let resources = async {
            let effective = self.effective_spec(spec);
            let (mut resources, again) = self.reconcile_all(&effective).await;
            if again && self.pass.stopped_by().is_none() {
                // A workload was rolled back: its old configuration (and payload versions)
                // is converged now rather than a resync later.
                info!("rolled back in this pass; converging the old configuration now");
                let effective = self.effective_spec(spec);
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
        let mut status = NodeStatus {
            observed_generation: generation,
            resources,
            payloads: self.payloads.attestations(),
            digest: String::new(),
        };
        status.digest = status_digest(&status);
        Outcome::Applied(status)
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
        let payloads = self.reconcile_payloads(spec).await;
        let vm_restarts = self.payloads.take_vm_restarts();
        pass.phase("containers");
        let (containers, containers_rolled_back) = self.reconcile_containers(spec, &net).await;
        pass.phase("vms");
        if let Some(v) = self.vms.as_mut() {
            // Restarts owed to payloads deployed in this pass happen even when it stops early
            // (the next pass would not know of them).
            for name in vm_restarts {
                if let Err(e) = v.restart(&name).await {
                    warn!(vm = %name, error = %e, "restarting a VM after its payload changed failed");
                }
            }
        }
        let generation = self.generation;
        let state = self.heal.state.get();
        let (vms, vms_rolled_back) = match self.vms.as_mut() {
            Some(v) => {
                let out = v
                    .reconcile(spec, &net.unusable, &mut state.vms, generation, &pass)
                    .await;
                (out.statuses, !out.rolled_back_now.is_empty())
            }
            None => (
                spec.vms
                    .iter()
                    .map(|v| {
                        let why = "VMs are not enabled in this agent".to_string();
                        resource(ResourceKind::Vm, &v.name, ResourceState::Failed, Some(why))
                    })
                    .collect(),
                false,
            ),
        };
        // Docker networks go before the bridges under them (and only for bridges going away).
        pass.phase("deletions");
        let doomed = net.bridges_to_delete();
        if !doomed.is_empty() && pass.superseded().is_none() {
            if let Ok(d) = self.docker().await.cloned() {
                for b in doomed {
                    if let Err(e) = d.remove_bridge_network(&b).await {
                        warn!(bridge = %b, error = %e, "removing the Docker network on a bridge failed");
                    }
                }
            }
        }
        self.networks.finish(&mut net, &pass).await;
        let mut resources = std::mem::take(&mut net.resources);
        resources.extend(payloads);
        resources.extend(containers);
        resources.extend(vms);
        (resources, containers_rolled_back || vms_rolled_back)
    }

    async fn reconcile_payloads(&mut self, spec: &NodeSpec) -> Vec<ResourceStatus> {
        // Blobs of the payload versions a rollback may return to stay in the cache (the
        // registry serves a node only the blobs of its current spec).
        let keep = self.heal_state().healthy_blobs();
        self.payloads.retain_blobs(keep);
        let docker = if crate::payload::needs_docker(spec) {
            self.docker().await.ok().cloned()
        } else {
            None
        };
        self.payloads
            .reconcile(spec, &self.policy, docker.as_ref(), &self.pass)
            .await
    }

    /// Docker networks for containers on managed bridges; returns why a container cannot be
    /// created, by name.
    async fn container_networks(
        &self,
        docker: &Docker,
        spec: &NodeSpec,
        net: &NetOutcome,
    ) -> BTreeMap<String, String> {
        let mut errors = net.container_errors.clone();
        let mut ensured: BTreeMap<&str, Result<(), String>> = BTreeMap::new();
        for c in &spec.containers {
            let Some(br) = c.network.as_deref() else {
                continue;
            };
            if !net.desired_bridges.contains(br) {
                continue; // a plain Docker network
            }
            let res = if let Some(why) = net.unusable.get(br) {
                Err(format!("bridge {br} cannot be used: {why}"))
            } else if let Some(bn) = net.bridges.get(br) {
                match ensured.get(br) {
                    Some(r) => r.clone(),
                    None => {
                        let r = docker
                            .ensure_bridge_network(br, bn.subnet, bn.gateway, &self.node_id)
                            .await
                            .map_err(|e| e.to_string());
                        ensured.insert(br, r.clone());
                        r
                    }
                }
            } else {
                Err(format!(
                    "bridge {br} has no IPv4 address, so Docker cannot address containers on \
                     it; give it one under networks.bridges[].addresses"
                ))
            };
            if let Err(e) = res {
                errors.entry(c.name.clone()).or_insert(e);
            }
        }
        errors
    }

    /// The containers' pass; true when one was rolled back in it.
    async fn reconcile_containers(
        &mut self,
        spec: &NodeSpec,
        net: &NetOutcome,
    ) -> (Vec<ResourceStatus>, bool) {
        let failed_all = |why: String| {
            spec.containers
                .iter()
                .map(|c| {
                    resource(
                        ResourceKind::Container,
                        &c.name,
                        ResourceState::Failed,
                        Some(why.clone()),
                    )
                })
                .collect::<Vec<_>>()
        };
        if spec.containers.is_empty() && self.docker.is_none() && self.docker().await.is_err() {
            return (Vec::new(), false); // nothing wanted, and no engine to clean up on
        }
        let observed = match self.docker().await {
            Ok(d) => d
                .observe()
                .await
                .map_err(|e| format!("observing Docker failed: {e:#}")),
            Err(e) => Err(e),
        };
        let mut observed = match observed {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "cannot observe containers");
                self.docker = None;
                return (failed_all(e), false);
            }
        };
        let restart_counts: HashMap<String, u32> = observed
            .containers
            .iter()
            .filter(|o| o.managed)
            .map(|o| (o.name.clone(), o.restart_count))
            .collect();
        let desired = spec.containers.clone();
        self.probes
            .run(&desired, &mut observed, std::time::Instant::now())
            .await;
        let health: HashMap<String, String> = observed
            .containers
            .iter()
            .filter_map(|o| Some((o.name.clone(), o.health.clone()?)))
            .collect();
        let mut plan = plan(&desired, &observed, &self.policy, &self.node_id);
        let unhealed = self.heal_state().containers.clone();
        let healed = self.heal_containers(spec, &observed, &mut plan);
        let rolled_back_now = !healed.rolled_back_now.is_empty();
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        let node_id = self.node_id.clone();
        let Ok(docker) = self.docker().await.cloned() else {
            return (
                failed_all("Docker engine unreachable".into()),
                rolled_back_now,
            );
        };
        let net_errors = self.container_networks(&docker, spec, net).await;
        let pass = self.pass.clone();
        pass.planned(plan.actions.len());
        let mut actions = plan.actions.into_iter();
        let mut skipped: Vec<Action> = Vec::new();
        for action in actions.by_ref() {
            let kind = action.kind();
            let name = action.container().unwrap_or("").to_string();
            // Between two actions: a newer generation takes over from here.
            if let Some(newer) = pass.superseded() {
                info!(
                    generation = self.generation,
                    newer, "a newer spec arrived; the containers' pass stops here"
                );
                skipped.push(action);
                break;
            }
            if failed.contains_key(&name) {
                pass.step();
                continue;
            }
            if let (Action::Create { .. } | Action::Recreate { .. }, Some(e)) =
                (&action, net_errors.get(&name))
            {
                failed.insert(name, e.clone());
                pass.step();
                continue;
            }
            let ip = net.container_ips.get(&name).copied();
            let span = info_span!("action", kind, container = %name);
            let res = async {
                match &action {
                    Action::Pull {
                        image,
                        for_containers,
                    } => {
                        if let Err(e) = docker.pull(image).await {
                            for c in for_containers {
                                failed.insert(c.clone(), format!("{e:#}"));
                            }
                        }
                        Ok(())
                    }
                    Action::Create { spec, hash } => {
                        create(&docker, spec, hash, &node_id, ip).await
                    }
                    Action::Recreate {
                        spec,
                        hash,
                        old_id,
                        reason,
                    } => {
                        info!(%reason, "recreating");
                        docker.remove(old_id).await?;
                        create(&docker, spec, hash, &node_id, ip).await
                    }
                    Action::Start { id, .. } => {
                        *self.starts.entry(name.clone()).or_default() += 1;
                        docker.start(id).await
                    }
                    Action::Restart { id, .. } => {
                        *self.starts.entry(name.clone()).or_default() += 1;
                        info!("restarting (escalation)");
                        docker.restart(id).await
                    }
                    Action::Stop { id, .. } => {
                        warn!("stopping: escalation exhausted, the container stays stopped");
                        docker.stop(id).await
                    }
                    Action::Remove { id, reason, .. } => {
                        info!(%reason, "removing");
                        docker.remove(id).await
                    }
                }
            }
            .instrument(span)
            .await;
            crate::metrics::get().action(kind, res.is_ok());
            pass.step();
            match res {
                Ok(()) => info!(kind, container = %name, "applied"),
                Err(e) => {
                    warn!(kind, container = %name, error = %format!("{e:#}"), "action failed");
                    if !name.is_empty() {
                        failed.insert(name, format!("{kind} failed: {e:#}"));
                    }
                }
            }
        }
        skipped.extend(actions);
        self.unheal(&skipped, &unhealed);
        let statuses = plan
            .verdicts
            .into_iter()
            .map(|(name, verdict)| {
                let (state, error) = match verdict {
                    Verdict::Conflict(why) => (ResourceState::Conflict, Some(why)),
                    Verdict::Refused(why) => (ResourceState::Failed, Some(why)),
                    Verdict::Converged | Verdict::Pending | Verdict::Drifted(_) => {
                        match failed.get(&name) {
                            Some(e) => (ResourceState::Failed, Some(e.clone())),
                            None => (ResourceState::Converged, None),
                        }
                    }
                };
                let (state, error) = match (healed.failed.get(&name), healed.rolled_back.get(&name)) {
                    (Some(why), _) if state != ResourceState::Conflict => {
                        (ResourceState::Failed, Some(why.clone()))
                    }
                    (None, Some(rb)) if state != ResourceState::Conflict => (
                        ResourceState::Failed,
                        Some(format!(
                            "rolled back from generation {} to the configuration of generation {}: {}",
                            rb.from_generation, rb.to_generation, rb.reason
                        )),
                    ),
                    _ => (state, error),
                };
                let seen = crate::heal::state::Seen {
                    health: health.get(&name).map(String::as_str),
                    probe_error: self.probes.last_error(&name),
                    escalation: healed.escalation.get(&name).map(|(_, e)| e),
                    now: chrono::Utc::now(),
                };
                let (state, error) = crate::heal::state::workload_state((state, error), seen);
                let mut r = resource(ResourceKind::Container, &name, state, error);
                if let Some((level, e)) = healed.escalation.get(&name) {
                    r.escalation_level = *level;
                    r.escalation = Some(e.clone());
                }
                r.rolled_back = healed.rolled_back.get(&name).cloned();
                r.health = health.get(&name).cloned();
                r.restarts = restart_counts.get(&name).copied().unwrap_or(0)
                    + self.starts.get(&name).copied().unwrap_or(0);
                r
            })
            .collect();
        (statuses, rolled_back_now)
    }
}

/// Creates and starts a container, at its lab address when it has one.
async fn create(
    docker: &Docker,
    spec: &steward_proto::ContainerSpec,
    hash: &str,
    node_id: &str,
    ip: Option<std::net::IpAddr>,
) -> Result<(), crate::docker::DockerError> {
    match ip {
        Some(ip) => docker.create_and_start_at(spec, hash, node_id, ip).await,
        None => docker.create_and_start(spec, hash, node_id).await,
    }
    .map(|_| ())
}
