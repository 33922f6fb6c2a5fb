//! Session volumes in the containers' phase of a pass (planned by `reconcile::volumes`, pure).
//! Before the containers: the live sessions' volumes are created; a session whose volumes
//! cannot be used (a name held by a volume that is not its own, a failed creation, volumes
//! that could not be observed) has its containers failed with the reason, and not created,
//! since Docker would otherwise make an unlabelled volume of that name for them or mount one
//! that is not theirs. After the containers: the volumes this node made for sessions that are
//! no longer live are removed, unless labelled keep, once no container uses them.

use std::collections::BTreeMap;

use steward_proto::{ContainerSpec, NodeSpec};
use tracing::{debug, info, warn};

use crate::docker::engine::ContainerEngine;
use crate::pass::Pass;
use crate::reconcile::volumes::plan_volumes;

/// What the volumes' step before the containers found.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    /// Why a session's volumes cannot be used, by session id.
    problems: BTreeMap<String, String>,
    /// Volumes of ended sessions were seen: look again once the containers are reconciled.
    pub(super) sweep: bool,
}

impl Prepared {
    /// Why each of `containers` that belongs to a session with a volume problem cannot run, by
    /// container name.
    pub(super) fn blocked(&self, containers: &[ContainerSpec]) -> BTreeMap<String, String> {
        (containers.iter())
            .filter_map(|c| {
                let session = c.session.as_deref()?;
                let why = self.problems.get(session)?;
                Some((c.name.clone(), format!("session {session}: {why}")))
            })
            .collect()
    }
}

/// Observes the volumes and creates the live sessions' missing ones (each creation one action
/// of the pass, none once it is superseded).
pub(super) async fn prepare(
    engine: &dyn ContainerEngine,
    spec: &NodeSpec,
    node_id: &str,
    pass: &Pass,
) -> Prepared {
    let observed = match engine.observe_volumes().await {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "cannot observe Docker volumes");
            let why = format!("observing Docker volumes failed: {e}");
            let problems = (spec.sessions.iter())
                .filter(|l| !l.volumes.is_empty())
                .map(|l| (l.id.clone(), why.clone()))
                .collect();
            return Prepared {
                problems,
                sweep: false,
            };
        }
    };
    let plan = plan_volumes(&spec.sessions, &observed, node_id);
    let sweep = plan.has_removals();
    let mut problems: BTreeMap<String, String> = (plan.problems.into_iter())
        .map(|(session, why)| (session, why.join("; ")))
        .collect();
    for (session, why) in &problems {
        warn!(%session, problem = %why, "session volumes cannot be used; its containers wait");
    }
    pass.planned(plan.create.len());
    for v in &plan.create {
        if pass.superseded().is_some() {
            break;
        }
        if let Err(e) = engine.create_volume(v, node_id).await {
            warn!(volume = %v.name, session = %v.session, error = %e, "creating a session volume failed");
            let why = problems.entry(v.session.clone()).or_default();
            if !why.is_empty() {
                why.push_str("; ");
            }
            why.push_str(&e.to_string());
        }
        pass.step();
    }
    Prepared { problems, sweep }
}

/// Removes the volumes of sessions `spec` no longer holds live (looked at afresh: the
/// containers' pass may just have removed the containers that used them).
pub(super) async fn sweep(
    engine: &dyn ContainerEngine,
    spec: &NodeSpec,
    node_id: &str,
    pass: &Pass,
) {
    let observed = match engine.observe_volumes().await {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "cannot observe Docker volumes; ended sessions' volumes stay until a later pass");
            return;
        }
    };
    let plan = plan_volumes(&spec.sessions, &observed, node_id);
    for v in &plan.in_use {
        debug!(volume = %v.name, session = %v.session, "an ended session's volume is still in use; left for a later pass");
    }
    pass.planned(plan.remove.len());
    for v in &plan.remove {
        if pass.superseded().is_some() {
            return;
        }
        match engine.remove_volume(&v.name).await {
            Ok(true) => {
                info!(volume = %v.name, session = %v.session, "removed the volume of an ended session")
            }
            Ok(false) => debug!(volume = %v.name, "volume in use; left for a later pass"),
            Err(e) => {
                warn!(volume = %v.name, session = %v.session, error = %e, "removing an ended session's volume failed")
            }
        }
        pass.step();
    }
}
