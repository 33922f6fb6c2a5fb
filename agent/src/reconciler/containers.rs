//! The containers' phase of a pass: Docker networks on managed bridges, observe, plan, heal
//! (the ladder's step or a rollback rewrites the plan), apply action by action until the pass
//! is superseded, and one `ResourceStatus` per desired container.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use steward_proto::{NodeSpec, ResourceKind, ResourceState, ResourceStatus};
use tracing::{info, info_span, warn, Instrument};

use super::drivers::ContainerEngine;
use super::{resource, Reconciler};
use crate::docker::DockerError;
use crate::heal::status::{workload_status, Healed, Outcome};
use crate::network::NetOutcome;
use crate::reconcile::{plan, Action, Observed, Verdict};

impl Reconciler {
    /// Docker networks for containers on managed bridges; returns why a container cannot be
    /// created, by name.
    async fn container_networks(
        &self,
        engine: &dyn ContainerEngine,
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
                        let r = engine
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
    pub(super) async fn reconcile_containers(
        &mut self,
        spec: &NodeSpec,
        net: &NetOutcome,
    ) -> (Vec<ResourceStatus>, bool) {
        let failed_all = |why: String| {
            spec.containers
                .iter()
                .map(|c| {
                    let why = Some(why.clone());
                    resource(ResourceKind::Container, &c.name, ResourceState::Failed, why)
                })
                .collect::<Vec<_>>()
        };
        if spec.containers.is_empty() && self.engine.is_none() && self.engine().await.is_err() {
            return (Vec::new(), false); // nothing wanted, and no engine to clean up on
        }
        let observed = match self.observe_containers(spec).await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "cannot observe containers");
                self.engine = None;
                return (failed_all(e), false);
            }
        };
        let seen = Seen::of(&observed);
        let mut plan = plan(&spec.containers, &observed, &self.policy, &self.node_id);
        let unhealed = self.heal_state().containers.clone();
        let healed = self.heal_containers(spec, &observed, &mut plan);
        let rolled_back_now = !healed.rolled_back_now.is_empty();
        let Ok(engine) = self.engine().await else {
            return (
                failed_all("Docker engine unreachable".into()),
                rolled_back_now,
            );
        };
        let unplaceable = self.container_networks(engine.as_ref(), spec, net).await;
        let mut failed = BTreeMap::new();
        let skipped = self
            .apply_containers(
                engine.as_ref(),
                plan.actions,
                net,
                &unplaceable,
                &mut failed,
            )
            .await;
        self.unheal(&skipped, &unhealed);
        let statuses = plan
            .verdicts
            .into_iter()
            .map(|(name, verdict)| self.container_status(&name, verdict, &failed, &seen, &healed))
            .collect();
        (statuses, rolled_back_now)
    }

    /// The engine's containers, with the verdicts of the agent's own probes that are due.
    async fn observe_containers(&mut self, spec: &NodeSpec) -> Result<Observed, String> {
        let mut observed = self
            .engine()
            .await?
            .observe()
            .await
            .map_err(|e| format!("observing Docker failed: {e:#}"))?;
        self.probes
            .run(&spec.containers, &mut observed, std::time::Instant::now())
            .await;
        Ok(observed)
    }

    /// Carries out `actions` one by one until the pass is superseded; returns the actions not
    /// carried out. A container in `unplaceable` (why it cannot be created) is not created;
    /// `failed` gets why a container failed, and its further actions are not tried.
    async fn apply_containers(
        &mut self,
        engine: &dyn ContainerEngine,
        actions: Vec<Action>,
        net: &NetOutcome,
        unplaceable: &BTreeMap<String, String>,
        failed: &mut BTreeMap<String, String>,
    ) -> Vec<Action> {
        let pass = self.pass.clone();
        pass.planned(actions.len());
        let mut actions = actions.into_iter();
        for action in actions.by_ref() {
            let kind = action.kind();
            let name = action.container().unwrap_or("").to_string();
            // Between two actions: a newer generation takes over from here.
            if let Some(newer) = pass.superseded() {
                info!(
                    generation = self.generation,
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
            let ip = net.container_ips.get(&name).copied();
            let span = info_span!("action", kind, container = %name);
            let res = self
                .apply_container(engine, &action, ip, failed)
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
    async fn apply_container(
        &mut self,
        engine: &dyn ContainerEngine,
        action: &Action,
        ip: Option<IpAddr>,
        failed: &mut BTreeMap<String, String>,
    ) -> Result<(), DockerError> {
        let node_id = &self.node_id;
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
    fn container_status(
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
            kind: ResourceKind::Container,
            name,
            pass,
            health: seen.health.get(name).map(String::as_str),
            probe_error: self.probes.last_error(name),
            restarts: seen.restarts.get(name).copied().unwrap_or(0)
                + self.starts.get(name).copied().unwrap_or(0),
            detail: None,
        };
        workload_status(outcome, healed, chrono::Utc::now())
    }
}

/// What the engine showed of each container at the start of the pass.
struct Seen {
    /// Docker's restart count of each managed container.
    restarts: HashMap<String, u32>,
    health: HashMap<String, String>,
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
                .filter_map(|o| Some((o.name.clone(), o.health.clone()?)))
                .collect(),
        }
    }
}
