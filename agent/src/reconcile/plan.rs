//! The planner: `plan(desired, observed, policy) -> Plan`. Pure: no I/O, table-tested.
//!
//! Order of the actions: pulls first, then removals (freeing names and ports), then, in spec
//! order, what each desired container needs.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sha2::{Digest, Sha256};
use steward_proto::{ContainerSpec, RestartPolicy};

use super::policy::Policy;
use super::types::{limits, Action, Observed, ObservedContainer, Plan, Verdict};

/// Hash of a container spec, stored in the `io.steward.spec-hash` label; a different hash means
/// the spec changed and the container is recreated.
pub fn spec_hash(c: &ContainerSpec) -> String {
    // Struct fields serialise in declaration order and maps are BTreeMaps: canonical.
    let bytes = serde_json::to_vec(c).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))[..32].to_string()
}

/// The form Docker lists a reference in (`busybox` → `busybox:latest`,
/// `docker.io/library/nginx:1` → `nginx:1`).
pub fn normalize_image(image: &str) -> String {
    let mut s = image;
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
            break;
        }
    }
    let last = s.rsplit('/').next().unwrap_or(s);
    if s.contains('@') || last.contains(':') {
        s.to_string()
    } else {
        format!("{s}:latest")
    }
}

/// How a managed container differs from its spec beyond the hash (changed by hand).
fn drift(c: &ContainerSpec, o: &ObservedContainer) -> Option<String> {
    let (mem, cpus) = limits(c);
    if o.config.image != c.image {
        return Some(format!(
            "image is {:?}, spec says {:?}",
            o.config.image, c.image
        ));
    }
    if o.config.memory != mem {
        return Some(format!(
            "memory limit is {} bytes, spec says {mem}",
            o.config.memory
        ));
    }
    if o.config.nano_cpus != cpus {
        return Some(format!(
            "CPU limit is {} nano-CPUs, spec says {cpus}",
            o.config.nano_cpus
        ));
    }
    if o.config.privileged != c.privileged {
        return Some(format!(
            "privileged is {}, spec says {}",
            o.config.privileged, c.privileged
        ));
    }
    None
}

/// Whether a stopped container should be started again under its restart policy.
fn wants_start(c: &ContainerSpec, o: &ObservedContainer) -> bool {
    if o.state == "created" {
        return true; // created but never started (e.g. a crash between create and start)
    }
    match c.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => o.exit_code.unwrap_or(1) != 0,
        RestartPolicy::Never => false,
    }
}

/// Whether this node created `o` (managed label and this node's id).
fn owned(o: &ObservedContainer, node_id: &str) -> bool {
    o.managed && o.node.as_deref() == Some(node_id)
}

/// The actions of a plan as they are found, before they are put in order: the images to pull
/// (in first-needed order, with the containers each is for), the removals, the per-container
/// steps.
struct Steps<'a> {
    /// Image references present locally.
    images: &'a BTreeSet<String>,
    pulls: Vec<(String, Vec<String>)>,
    removals: Vec<Action>,
    steps: Vec<Action>,
}

impl Steps<'_> {
    /// Notes that container `name` needs `image`: a pull unless the image is present.
    fn need_image(&mut self, image: &str, name: &str) {
        if self.images.contains(&normalize_image(image)) || self.images.contains(image) {
            return;
        }
        match self.pulls.iter_mut().find(|(i, _)| i == image) {
            Some((_, v)) => v.push(name.to_string()),
            None => self.pulls.push((image.to_string(), vec![name.to_string()])),
        }
    }

    /// Pulls first, then removals (freeing names and ports), then the steps in spec order.
    fn into_actions(self) -> Vec<Action> {
        let pulls = self
            .pulls
            .into_iter()
            .map(|(image, for_containers)| Action::Pull {
                image,
                for_containers,
            });
        pulls.chain(self.removals).chain(self.steps).collect()
    }
}

/// Plans the container actions that make `observed` match `desired` within `policy`, for the
/// agent whose identity is `node_id`. Only containers this node created (managed label and its
/// node id) are ever changed; any other container holding a wanted name is a conflict.
pub fn plan(
    desired: &[ContainerSpec],
    observed: &Observed,
    policy: &Policy,
    node_id: &str,
) -> Plan {
    let by_name: BTreeMap<&str, &ObservedContainer> = observed
        .containers
        .iter()
        .map(|o| (o.name.as_str(), o))
        .collect();
    let mut acts = Steps {
        images: &observed.images,
        pulls: Vec::new(),
        removals: unaccounted(desired, observed, node_id),
        steps: Vec::new(),
    };
    let mut out = Plan::default();
    for c in desired {
        let existing = by_name.get(c.name.as_str()).copied();
        let verdict = match policy.refuses(c) {
            Some(reason) => {
                if let Some(o) = existing.filter(|o| owned(o, node_id)) {
                    acts.removals.push(Action::Remove {
                        name: o.name.clone(),
                        id: o.id.clone(),
                        reason: format!("refused by policy: {reason}"),
                    });
                }
                Verdict::Refused(reason)
            }
            None => plan_one(c, existing, node_id, &mut acts),
        };
        out.verdicts.push((c.name.clone(), verdict));
    }
    out.actions = acts.into_actions();
    out
}

/// Removals of the managed containers that no desired entry accounts for: dropped from the
/// spec, or strays (a managed container whose Docker name is not the name it was created for).
fn unaccounted(desired: &[ContainerSpec], observed: &Observed, node_id: &str) -> Vec<Action> {
    let wanted: HashSet<&str> = desired.iter().map(|c| c.name.as_str()).collect();
    let mut removals = Vec::new();
    for o in observed.containers.iter().filter(|o| owned(o, node_id)) {
        let own_name = o.steward_name.as_deref() == Some(o.name.as_str());
        if !own_name {
            removals.push(Action::Remove {
                name: o.name.clone(),
                id: o.id.clone(),
                reason: format!(
                    "managed container renamed by hand (created as {:?})",
                    o.steward_name.as_deref().unwrap_or("?")
                ),
            });
        } else if !wanted.contains(o.name.as_str()) {
            removals.push(Action::Remove {
                name: o.name.clone(),
                id: o.id.clone(),
                reason: "no longer in the spec".into(),
            });
        }
    }
    removals
}

/// One desired container the policy allows, and what holds its name now: its verdict, its
/// steps and pulls noted in `acts`.
fn plan_one(
    c: &ContainerSpec,
    existing: Option<&ObservedContainer>,
    node_id: &str,
    acts: &mut Steps<'_>,
) -> Verdict {
    let hash = spec_hash(c);
    match existing {
        None => {
            acts.need_image(&c.image, &c.name);
            acts.steps.push(Action::Create {
                spec: c.clone(),
                hash,
            });
            Verdict::Pending
        }
        Some(o) if !owned(o, node_id) => Verdict::Conflict(match (&o.node, o.managed) {
            (Some(other), true) => format!(
                "a container named {:?} belongs to another Steward node ({other}); left alone",
                o.name
            ),
            _ => format!(
                "a container named {:?} exists that Steward does not own (no {} label); left alone",
                o.name,
                super::types::LABEL_MANAGED
            ),
        }),
        Some(o) if o.spec_hash.as_deref() != Some(hash.as_str()) => {
            acts.need_image(&c.image, &c.name);
            acts.steps.push(Action::Recreate {
                spec: c.clone(),
                hash,
                old_id: o.id.clone(),
                reason: "spec changed".into(),
            });
            Verdict::Pending
        }
        Some(o) => plan_current(c, o, hash, acts),
    }
}

/// A container of ours created from the current spec: recreated when changed by hand, started
/// when stopped and its restart policy says so, else converged.
fn plan_current(
    c: &ContainerSpec,
    o: &ObservedContainer,
    hash: String,
    acts: &mut Steps<'_>,
) -> Verdict {
    match drift(c, o) {
        Some(why) => {
            acts.need_image(&c.image, &c.name);
            let reason = format!("changed by hand: {why}");
            acts.steps.push(Action::Recreate {
                spec: c.clone(),
                hash,
                old_id: o.id.clone(),
                reason: reason.clone(),
            });
            Verdict::Drifted(reason)
        }
        None if !o.running && wants_start(c, o) => {
            acts.steps.push(Action::Start {
                name: c.name.clone(),
                id: o.id.clone(),
            });
            Verdict::Drifted(match o.exit_code {
                Some(code) if o.state != "created" => {
                    format!("not running ({}, exit code {code})", o.state)
                }
                _ => format!("not running ({})", o.state),
            })
        }
        None => Verdict::Converged,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
