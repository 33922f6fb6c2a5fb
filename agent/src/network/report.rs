//! The status of each desired link after a pass's first phase: the planner's verdict, the
//! problems it found and the failures of applying, merged into one [`ResourceStatus`] each;
//! converged links are recorded with their hash, and every successful action in the agent's
//! link records (`record`).

use std::collections::BTreeMap;

use steward_proto::ResourceState;
use tracing::warn;

use super::types::{LinkRecord, NetAction, NetPlan, NetState};
use super::{status, NetOutcome, NetlinkDriver};
use crate::reconcile::Verdict;

/// One status per verdict of `plan` into `out` (and the unusable bridges); links that ended
/// converged or restored are recorded in `state` with their desired hash.
pub(super) fn report(
    plan: &NetPlan,
    failed: &BTreeMap<String, String>,
    driver: &NetlinkDriver,
    state: &mut NetState,
    out: &mut NetOutcome,
) {
    for (name, verdict) in &plan.verdicts {
        let problems = plan.problems.get(name).map(|p| p.join("; "));
        let (st, error) = verdict_state(name, verdict, failed.get(name), &mut out.unusable);
        let (st, error) = match problems {
            Some(p) => (
                ResourceState::Failed,
                Some(match error {
                    Some(e) => format!("{e}; {p}"),
                    None => p,
                }),
            ),
            None => (st, error),
        };
        if st == ResourceState::Converged || st == ResourceState::Drifted {
            if let (Some(hash), Some(idx)) = (plan.hashes.get(name), driver.index_of(name)) {
                state.links.insert(
                    name.clone(),
                    LinkRecord {
                        index: idx,
                        hash: hash.clone(),
                    },
                );
            }
        }
        out.resources.push(status(name, st, error));
    }
}

/// A link's state and error from its verdict and the failure of its actions, if any; links
/// refused or in conflict go to `unusable`.
fn verdict_state(
    name: &str,
    verdict: &Verdict,
    fail: Option<&String>,
    unusable: &mut BTreeMap<String, String>,
) -> (ResourceState, Option<String>) {
    match verdict {
        Verdict::Conflict(why) => {
            unusable.insert(name.to_string(), why.clone());
            (ResourceState::Conflict, Some(why.clone()))
        }
        Verdict::Refused(why) => {
            unusable.insert(name.to_string(), why.clone());
            (ResourceState::Failed, Some(why.clone()))
        }
        Verdict::Drifted(why) => match fail {
            Some(e) => (
                ResourceState::Failed,
                Some(format!("drifted ({why}); restoring failed: {e}")),
            ),
            None => {
                warn!(link = %name, drift = %why, "restored a managed link after drift");
                (
                    ResourceState::Drifted,
                    Some(format!("restored after drift: {why}")),
                )
            }
        },
        Verdict::Converged | Verdict::Pending => match fail {
            Some(e) => (ResourceState::Failed, Some(e.clone())),
            None => (ResourceState::Converged, None),
        },
    }
}

/// Updates the agent's record after a successful action.
pub(super) fn record(state: &mut NetState, action: &NetAction, driver: &NetlinkDriver) {
    match action {
        NetAction::Create { link, .. } => {
            if let Some(idx) = driver.index_of(&link.name) {
                state.links.insert(
                    link.name.clone(),
                    LinkRecord {
                        index: idx,
                        hash: String::new(),
                    },
                );
            }
        }
        NetAction::Delete { name, .. } => {
            state.links.remove(name);
            state.ports.retain(|p, b| p != name && b != name);
        }
        NetAction::Enslave { port, bridge, .. } => {
            state.ports.insert(port.clone(), bridge.clone());
        }
        NetAction::Release { port, .. } => {
            state.ports.remove(port);
        }
        _ => {}
    }
}
