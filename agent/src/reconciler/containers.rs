//! The containers' phase of a pass, one registered kind of workload: Docker networks on
//! managed bridges, observe, plan (`reconcile::plan`, pure), heal (the tracker's step or a
//! rollback rewrites the plan), the live sessions' volumes (`volumes.rs`), apply action by
//! action until the pass is superseded, the ended sessions' volumes, and one `ResourceStatus`
//! per desired container.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use steward_proto::{NodeSpec, ResourceState, ResourceStatus, WorkloadKind, WorkloadRef};
use tracing::{info, info_span, warn, Instrument};

use crate::docker::engine::ContainerEngine;
use crate::docker::DockerError;
use crate::heal::containers::heal;
use crate::heal::probes::Probes;
use crate::heal::status::{workload_status, Healed, Outcome};
use crate::heal::tracker::restore;
use crate::network::counters::Interfaces;
use crate::network::NetOutcome;
use crate::reconcile::{plan, Action, Observed, Verdict};
use crate::workload::{PassCx, WorkloadPass, WorkloadPhase};

/// The containers: their agent-side probes and the starts the agent made.
#[derive(Default)]
pub struct Containers {
    probes: Probes,
    /// Starts the agent made per container since it started (added to Docker's own count).
    starts: HashMap<String, u32>,
}

impl Containers {
    /// Docker networks for containers on managed bridges; returns why a container cannot be
    /// created, by name.
    async fn container_networks(
        engine: &dyn ContainerEngine,
        spec: &NodeSpec,
        net: &NetOutcome,
        node_id: &str,
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
                        let r = engine
                            .ensure_bridge_network(br, bn.subnet, bn.gateway, node_id)
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

    /// The containers' pass (see the module docs).
    async fn pass(&mut self, cx: &mut PassCx<'_>) -> WorkloadPass {
        let spec = cx.spec;
        let failed_all = |why: String| WorkloadPass {
            statuses: (spec.containers.iter())
                .map(|c| {
                    let why = Some(why.clone());
                    let w = WorkloadRef::new(WorkloadKind::Container, &c.name);
                    ResourceStatus::of_workload(&w, ResourceState::Failed, why)
                })
                .collect(),
            rolled_back: false,
            interfaces: Vec::new(),
        };
        if spec.containers.is_empty() && !cx.engine.is_connected() && cx.engine.get().await.is_err()
        {
            return WorkloadPass::default(); // nothing wanted, and no engine to clean up on
        }
        let observed = match self.observe(cx).await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "cannot observe containers");
                cx.engine.lost();
                return failed_all(e);
            }
        };
        let seen = Seen::of(&observed);
        let interfaces = interfaces(spec, &observed, cx.node_id);
        let mut plan = plan(&spec.containers, &observed, cx.policy, cx.node_id);
        let unhealed = cx.heal.containers.clone();
        let healed = heal_containers(cx, &observed, &mut plan);
        let rolled_back = !healed.rolled_back_now.is_empty();
        let Ok(engine) = cx.engine.get().await else {
            return WorkloadPass {
                rolled_back,
                ..failed_all("Docker engine unreachable".into())
            };
        };
        let volumes = super::volumes::prepare(engine.as_ref(), spec, cx.node_id, cx.pass).await;
        let blocked = volumes.blocked(&spec.containers);
        let mut unplaceable =
            Self::container_networks(engine.as_ref(), spec, cx.net, cx.node_id).await;
        for (name, why) in &blocked {
            unplaceable
                .entry(name.clone())
                .or_insert_with(|| why.clone());
        }
        let mut failed = BTreeMap::new();
        let skipped = self
            .apply(cx, engine.as_ref(), plan.actions, &unplaceable, &mut failed)
            .await;
        for (name, why) in blocked {
            failed.entry(name).or_insert(why); // also when it already runs
        }
        if volumes.sweep {
            super::volumes::sweep(engine.as_ref(), spec, cx.node_id, cx.pass).await;
        }
        // Steps not taken are neither counted on the ladders nor waited for.
        let names = skipped.iter().filter_map(Action::container);
        restore(&mut cx.heal.containers, &unhealed, names);
        let statuses = plan
            .verdicts
            .into_iter()
            .map(|(name, verdict)| self.status(&name, verdict, &failed, &seen, &healed))
            .collect();
        WorkloadPass {
            statuses,
            rolled_back,
            interfaces,
        }
    }

    /// The engine's containers, with the verdicts of the agent's own probes that are due.
    async fn observe(&mut self, cx: &mut PassCx<'_>) -> Result<Observed, String> {
        let mut observed = (cx.engine.get().await?.observe().await)
            .map_err(|e| format!("observing Docker failed: {e:#}"))?;
        (self.probes)
            .run(
                &cx.spec.containers,
                &mut observed,
                std::time::Instant::now(),
            )
            .await;
        Ok(observed)
    }

    /// Carries out `actions` one by one until the pass is superseded; returns the actions not
    /// carried out. A container in `unplaceable` (why it cannot be created) is not created;
    /// `failed` gets why a container failed, and its further actions are not tried.
    async fn apply(
        &mut self,
        cx: &PassCx<'_>,
        engine: &dyn ContainerEngine,
        actions: Vec<Action>,
        unplaceable: &BTreeMap<String, String>,
        failed: &mut BTreeMap<String, String>,
    ) -> Vec<Action> {
        let pass = cx.pass;
        pass.planned(actions.len());
        let mut actions = actions.into_iter();
        for action in actions.by_ref() {
            let kind = action.kind();
            let name = action.container().unwrap_or("").to_string();
            // Between two actions: a newer generation takes over from here.
            if let Some(newer) = pass.superseded() {
                info!(
                    generation = cx.generation,
                    newer, "a newer spec arrived; the containers' pass stops here"
                );
                return std::iter::once(action).chain(actions).collect();
            }
            if failed.contains_key(&name) {
                pass.step();
                continue;
            }
            if let (Action::Create { .. } | Action::Recreate { .. }, Some(e)) =
                (&action, unplaceable.get(&name))
            {
                failed.insert(name, e.clone());
                pass.step();
                continue;
            }
            let ip = cx.net.container_ips.get(&name).copied();
            let span = info_span!("action", kind, container = %name);
            let res = self
                .apply_one(engine, &action, ip, cx.node_id, failed)
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
        Vec::new()
    }

    /// One action; a failed pull fails the containers waiting for its image.
    async fn apply_one(
        &mut self,
        engine: &dyn ContainerEngine,
        action: &Action,
        ip: Option<IpAddr>,
        node_id: &str,
        failed: &mut BTreeMap<String, String>,
    ) -> Result<(), DockerError> {
        match action {
            Action::Pull {
                image,
                for_containers,
            } => {
                if let Err(e) = engine.pull(image).await {
                    for c in for_containers {
                        failed.insert(c.clone(), format!("{e:#}"));
                    }
                }
                Ok(())
            }
            Action::Create { spec, hash } => engine.create_and_start(spec, hash, node_id, ip).await,
            Action::Recreate {
                spec,
                hash,
                old_id,
                reason,
            } => {
                info!(%reason, "recreating");
                engine.remove(old_id).await?;
                engine.create_and_start(spec, hash, node_id, ip).await
            }
            Action::Start { name, id } => {
                *self.starts.entry(name.clone()).or_default() += 1;
                engine.start(id).await
            }
            Action::Restart { name, id } => {
                *self.starts.entry(name.clone()).or_default() += 1;
                info!("restarting (escalation)");
                engine.restart(id).await
            }
            Action::Stop { id, .. } => {
                warn!("stopping: escalation exhausted, the container stays stopped");
                engine.stop(id).await
            }
            Action::Remove { id, reason, .. } => {
                info!(%reason, "removing");
                engine.remove(id).await
            }
        }
    }

    /// One container's status from its planner verdict, the pass's failures, what was seen of
    /// it and what healing concluded.
    fn status(
        &self,
        name: &str,
        verdict: Verdict,
        failed: &BTreeMap<String, String>,
        seen: &Seen,
        healed: &Healed,
    ) -> ResourceStatus {
        let pass = match verdict {
            Verdict::Conflict(why) => (ResourceState::Conflict, Some(why)),
            Verdict::Refused(why) => (ResourceState::Failed, Some(why)),
            Verdict::Converged | Verdict::Pending | Verdict::Drifted(_) => match failed.get(name) {
                Some(e) => (ResourceState::Failed, Some(e.clone())),
                None => (ResourceState::Converged, None),
            },
        };
        let outcome = Outcome {
            workload: WorkloadRef::new(WorkloadKind::Container, name),
            pass,
            health: seen.health.get(name).map(String::as_str),
            probe_error: self.probes.last_error(name),
            restarts: seen.restarts.get(name).copied().unwrap_or(0)
                + self.starts.get(name).copied().unwrap_or(0),
            detail: None,
        };
        let mut status = workload_status(outcome, healed, chrono::Utc::now());
        if let Some(a) = seen.addresses.get(name) {
            status.addresses = a.iter().map(ToString::to_string).collect();
        }
        status
    }
}

/// The spec's containers this node runs, each with its network namespace (through its init
/// process), where its traffic is counted; a container on the host's network has no traffic
/// of its own and is left out.
fn interfaces(
    spec: &NodeSpec,
    observed: &Observed,
    node_id: &str,
) -> Vec<(WorkloadRef, Interfaces)> {
    (spec.containers.iter())
        .filter(|c| !c.host_network)
        .filter_map(|c| {
            let o = (observed.containers.iter()).find(|o| {
                o.name == c.name && o.managed && o.node.as_deref() == Some(node_id) && o.running
            })?;
            let w = WorkloadRef::new(WorkloadKind::Container, &c.name);
            Some((w, Interfaces::NetnsOf(o.pid?)))
        })
        .collect()
}

/// Walks the failing containers' ladders, rewriting `plan`.
fn heal_containers(
    cx: &mut PassCx<'_>,
    observed: &Observed,
    plan: &mut crate::reconcile::Plan,
) -> Healed {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let spec = cx.spec;
    heal(
        &mut *cx.heal,
        &spec.containers,
        &spec.payloads,
        observed,
        plan,
        &cx.ladder,
        cx.node_id,
        cx.generation,
        now,
    )
}

#[async_trait]
impl WorkloadPhase for Containers {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Container
    }

    async fn restart(&mut self, name: &str, cx: &mut PassCx<'_>) -> Result<(), String> {
        let engine = cx.engine.get().await?;
        match engine.restart_managed(name, cx.node_id).await {
            Ok(true) => info!(container = %name, "restarted after a payload changed"),
            Ok(false) => {}
            Err(e) => return Err(format!("{e:#}")),
        }
        Ok(())
    }

    async fn reconcile(&mut self, cx: &mut PassCx<'_>) -> WorkloadPass {
        self.pass(cx).await
    }

    fn next_probe_in(&self, spec: &NodeSpec) -> Option<Duration> {
        self.probes
            .next_due(&spec.containers, std::time::Instant::now())
    }
}

/// What the engine showed of each container at the start of the pass.
struct Seen {
    /// Docker's restart count of each managed container.
    restarts: HashMap<String, u32>,
    health: HashMap<String, String>,
    /// Each running container's addresses on its Docker networks.
    addresses: HashMap<String, Vec<std::net::IpAddr>>,
}

impl Seen {
    fn of(observed: &Observed) -> Self {
        let containers = observed.containers.iter();
        Seen {
            restarts: containers
                .clone()
                .filter(|o| o.managed)
                .map(|o| (o.name.clone(), o.restart_count))
                .collect(),
            health: containers
                .clone()
                .filter_map(|o| Some((o.name.clone(), o.health.clone()?)))
                .collect(),
            addresses: containers
                .filter(|o| o.running && !o.addresses.is_empty())
                .map(|o| (o.name.clone(), o.addresses.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{ObservedConfig, ObservedContainer};

    fn seen(name: &str, node: &str, running: bool, pid: Option<u32>) -> ObservedContainer {
        ObservedContainer {
            id: format!("id-{name}"),
            name: name.into(),
            managed: true,
            steward_name: Some(name.into()),
            spec_hash: None,
            node: Some(node.into()),
            running,
            state: if running { "running" } else { "exited" }.into(),
            exit_code: None,
            restart_count: 0,
            health: None,
            pid,
            addresses: Vec::new(),
            config: ObservedConfig::default(),
        }
    }

    #[test]
    fn traffic_is_counted_for_this_nodes_running_containers_off_the_host_network() {
        let spec: NodeSpec = serde_norway::from_str(
            "containers: [{name: web, image: i}, {name: host, image: i, host_network: true}, \
             {name: stopped, image: i}, {name: theirs, image: i}, {name: nopid, image: i}]",
        )
        .unwrap();
        let observed = Observed {
            containers: vec![
                seen("web", "n1", true, Some(10)),
                seen("host", "n1", true, Some(11)),
                seen("stopped", "n1", false, None),
                seen("theirs", "n2", true, Some(12)),
                seen("nopid", "n1", true, None),
                seen("unwanted", "n1", true, Some(13)),
            ],
            images: Default::default(),
        };
        let w = WorkloadRef::new(WorkloadKind::Container, "web");
        assert_eq!(
            interfaces(&spec, &observed, "n1"),
            vec![(w, Interfaces::NetnsOf(10))]
        );
    }
}
