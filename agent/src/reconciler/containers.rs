//! The containers' phase of a pass: Docker networks on managed bridges, observe, plan, heal
//! (the ladder's step or a rollback rewrites the plan), apply action by action until the pass
//! is superseded, and one `ResourceStatus` per desired container.

use std::collections::{BTreeMap, HashMap};

use steward_proto::{NodeSpec, ResourceKind, ResourceState, ResourceStatus};
use tracing::{info, info_span, warn, Instrument};

use super::drivers::ContainerEngine;
use super::{resource, Reconciler};
use crate::network::NetOutcome;
use crate::reconcile::{plan, Action, Verdict};

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
                    resource(
                        ResourceKind::Container,
                        &c.name,
                        ResourceState::Failed,
                        Some(why.clone()),
                    )
                })
                .collect::<Vec<_>>()
        };
        if spec.containers.is_empty() && self.engine.is_none() && self.engine().await.is_err() {
            return (Vec::new(), false); // nothing wanted, and no engine to clean up on
        }
        let observed = match self.engine().await {
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
                self.engine = None;
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
        let Ok(docker) = self.engine().await else {
            return (
                failed_all("Docker engine unreachable".into()),
                rolled_back_now,
            );
        };
        let net_errors = self.container_networks(docker.as_ref(), spec, net).await;
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
                        docker.create_and_start(spec, hash, &node_id, ip).await
                    }
                    Action::Recreate {
                        spec,
                        hash,
                        old_id,
                        reason,
                    } => {
                        info!(%reason, "recreating");
                        docker.remove(old_id).await?;
                        docker.create_and_start(spec, hash, &node_id, ip).await
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
