//! The heal tracker, pure and the same for every kind of workload: one [`Entry`] per workload
//! (its escalation ladder, the instance and restart count it was last seen with, and its
//! rollback memory, `rollback.rs`), what a failure or a healthy pass does to it ([`Step`]), what
//! it reports ([`Entry::report`] into `Healed`), and the stored [`HealState`] of every kind.
//! What differs between kinds is data: each kind's spec type names its [`Rules`] (the rungs of
//! its ladder, the words of its failure) through [`WorkloadSpec`]; each kind's module turns a
//! [`Step`] into its own actions (`containers.rs`, `vms.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use steward_proto::{PayloadSpec, WorkloadKind, WorkloadRef};

use super::ladder::{Decision, Ladder, LadderPolicy, Rung};
use super::rollback::{config_hash, payloads_of, Healthy, Track};
use super::state::escalation_of;
use super::status::Healed;

/// What a kind's ladder is made of.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub rungs: &'static [Rung],
    /// Why a workload at the top of the ladder is left stopped (the status's error).
    pub gave_up: &'static str,
    /// The failure that reached the top is named in that error.
    pub names_failure: bool,
}

/// A workload spec the tracker can heal: its kind, name, rules and rollback switch.
pub trait WorkloadSpec: Clone + Serialize {
    const KIND: WorkloadKind;
    const RULES: Rules;
    fn name(&self) -> &str;
    /// A failing change may be rolled back (`rollback:` in the spec).
    fn rollback_allowed(&self) -> bool;
}

/// One workload's ladder, instance and rollback memory (stored in `state/heal.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize",
    deserialize = "S: serde::de::DeserializeOwned"
))]
pub struct Entry<S> {
    pub ladder: Ladder,
    /// The spec the ladder is about, where the kind tracks it: another spec starts a fresh
    /// ladder (containers).
    #[serde(default)]
    pub spec_hash: String,
    /// The instance last seen (a container's id): a new instance counts restarts afresh.
    #[serde(default, rename = "container_id")]
    pub instance: String,
    /// The engine's restart count of `instance` at the last pass.
    #[serde(default)]
    pub restart_count: u32,
    /// Last healthy configuration and rollback (stored in the same JSON object).
    #[serde(flatten)]
    pub track: Track<S>,
}

impl<S> Default for Entry<S> {
    fn default() -> Self {
        Entry {
            ladder: Ladder::default(),
            spec_hash: String::new(),
            instance: String::new(),
            restart_count: 0,
            track: Track::default(),
        }
    }
}

/// What the tracker makes of a failing workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<S> {
    /// Rolled back to `to`, after failing for `failing_for` seconds: its ladder starts over.
    RollBack { to: Healthy<S>, failing_for: u64 },
    /// The ladder's decision: a rung to climb, a wait, or the top.
    Ladder(Decision),
}

/// One workload's facts for the tracker: its spec and its configuration in this pass.
pub struct Config<'a, S> {
    pub spec: &'a S,
    /// Its payloads (those whose `on_change` restarts it).
    pub payloads: Vec<PayloadSpec>,
    /// `config_hash` of the spec and those payloads.
    pub hash: String,
    pub generation: u64,
}

impl<'a, S: WorkloadSpec> Config<'a, S> {
    /// `spec` of `generation`, among the pass's `payloads`.
    pub fn of(spec: &'a S, payloads: &[PayloadSpec], generation: u64) -> Self {
        let payloads = payloads_of(payloads, S::KIND, spec.name());
        let hash = config_hash(spec, &payloads);
        Config {
            spec,
            payloads,
            hash,
            generation,
        }
    }
}

impl<S: WorkloadSpec> Entry<S> {
    /// At the top of its ladder: left stopped until its spec changes.
    pub fn failed(&self) -> bool {
        self.ladder.failed(S::RULES.rungs)
    }

    /// The workload failed at `now` for `why` (not at the top of its ladder): a rollback once
    /// the change has failed past the grace period, else the ladder's step.
    pub fn on_failure(
        &mut self,
        c: &Config<'_, S>,
        why: &str,
        policy: &LadderPolicy,
        now: u64,
    ) -> Step<S> {
        let allowed = c.spec.rollback_allowed();
        let grace = policy.rollback_grace;
        if let Some((to, failing_for)) =
            (self.track).failing(&c.hash, allowed, c.generation, why, grace, now)
        {
            self.ladder.reset();
            return Step::RollBack { to, failing_for };
        }
        Step::Ladder(self.ladder.on_failure(S::RULES.rungs, policy, now))
    }

    /// The workload ran without failing at `now`; `verdict` is its health check's (`None`
    /// without one).
    pub fn on_healthy(
        &mut self,
        c: Config<'_, S>,
        verdict: Option<bool>,
        policy: &LadderPolicy,
        now: u64,
    ) {
        self.ladder.on_healthy(S::RULES.rungs, policy, now);
        let grace = policy.rollback_grace;
        (self.track).running(
            c.spec,
            &c.hash,
            c.generation,
            c.payloads,
            verdict,
            grace,
            now,
        );
    }

    /// What the status shows of it: the top of the ladder (naming `why`, the failure that
    /// reached it, where the kind's rules say so), its rung, a rollback in force.
    pub fn report(&self, name: &str, why: Option<&str>, out: &mut Healed) {
        let rules = S::RULES;
        if self.failed() && !out.failed.contains_key(name) {
            let text = match why.filter(|_| rules.names_failure) {
                Some(why) => format!("failed: {why}; {}", rules.gave_up),
                None => format!("failed: {}", rules.gave_up),
            };
            out.failed.insert(name.to_string(), text);
        }
        if self.ladder.level > 0 {
            let e = escalation_of(&self.ladder, rules.rungs);
            out.escalation
                .insert(name.to_string(), (self.ladder.level, e));
        }
        if let Some(rb) = self.track.reported() {
            out.rolled_back.insert(name.to_string(), rb);
        }
    }
}

/// One kind's entries, by workload name.
pub type Entries<S> = BTreeMap<String, Entry<S>>;

/// The workloads of `desired` to converge: rolled-back ones at their last healthy
/// configuration until their spec (or a payload they restart on) changes again (then the
/// rollback is forgotten). `payloads` are the spec's.
pub fn effective<S: WorkloadSpec>(
    entries: &mut Entries<S>,
    desired: &[S],
    payloads: &[PayloadSpec],
) -> Vec<S> {
    desired
        .iter()
        .map(|w| match entries.get_mut(w.name()) {
            Some(e) => e.track.effective(w, &Config::of(w, payloads, 0).hash),
            None => w.clone(),
        })
        .collect()
}

/// A pass that stopped early did not carry out the steps of `skipped`: their entries go back
/// to what they were before the pass (`before`), so a step never taken is neither counted
/// nor waited for.
pub fn restore<'a, S: Clone>(
    entries: &mut Entries<S>,
    before: &Entries<S>,
    skipped: impl IntoIterator<Item = &'a str>,
) {
    for name in skipped {
        match before.get(name) {
            Some(e) => entries.insert(name.to_string(), e.clone()),
            None => entries.remove(name),
        };
    }
}

/// Every workload's heal entry, one map per kind (stored as `state/heal.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealState {
    pub containers: Entries<steward_proto::ContainerSpec>,
    #[serde(default)]
    pub vms: Entries<steward_proto::VmSpec>,
}

impl crate::store::Record for HealState {
    const KEY: &'static str = "heal";
}

/// One workload's rollback memory as payloads: those it last ran healthy with, and those a
/// rollback in force holds.
fn payload_memory<S: Clone>(e: &Entry<S>) -> (&[PayloadSpec], &[PayloadSpec]) {
    let healthy = e
        .track
        .last_healthy
        .as_ref()
        .map_or(&[][..], |h| &h.payloads);
    (healthy, e.track.payloads_in_force())
}

impl HealState {
    /// An operator's reset of one workload: its ladder back to the bottom, its rollback
    /// dropped. False when it had no entry.
    pub fn reset(&mut self, w: &WorkloadRef) -> bool {
        fn one<S: Clone>(e: Option<&mut Entry<S>>) -> bool {
            e.map(|e| {
                e.ladder.reset();
                e.track.reset();
            })
            .is_some()
        }
        match w.kind {
            WorkloadKind::Container => one(self.containers.get_mut(&w.name)),
            WorkloadKind::Vm => one(self.vms.get_mut(&w.name)),
        }
    }

    /// Every workload's rollback memory, whatever its kind (see [`payload_memory`]).
    fn memories(&self) -> impl Iterator<Item = (&[PayloadSpec], &[PayloadSpec])> {
        let containers = self.containers.values().map(payload_memory);
        containers.chain(self.vms.values().map(payload_memory))
    }

    /// The payload versions the rollbacks in force hold their workloads' payloads at.
    pub fn payloads_in_force(&self) -> Vec<PayloadSpec> {
        self.memories().flat_map(|(_, p)| p).cloned().collect()
    }

    /// The sha256 of every payload a workload last ran healthy with: what a rollback may need
    /// again, so the blob cache keeps them.
    pub fn healthy_blobs(&self) -> BTreeSet<String> {
        self.memories()
            .flat_map(|(h, _)| h)
            .filter_map(|p| p.sha256.clone())
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_heal_state_stored_by_the_two_stacks_reads_back() {
        // `state/heal.json` as agents with a container entry and a VM entry type wrote it.
        let old = r#"{
            "containers": {"web": {"ladder": {"level": 1, "attempts": 1, "total": 1,
                "last_action": ["restart", 5], "next_due": 15}, "spec_hash": "h",
                "container_id": "c1", "restart_count": 2, "config": "k",
                "failing_since": 5, "healthy_since": null, "last_healthy": null,
                "rolled_back": null}},
            "vms": {"vm1": {"ladder": {"level": 2, "attempts": 0, "total": 4,
                "last_action": null, "next_due": null}, "config": "v"}}
        }"#;
        let st: HealState = serde_json::from_str(old).unwrap();
        let web = &st.containers["web"];
        assert_eq!((web.instance.as_str(), web.restart_count), ("c1", 2));
        assert_eq!((web.ladder.level, web.track.failing_since), (1, Some(5)));
        assert_eq!(st.vms["vm1"].ladder.level, 2);
        let again: HealState = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(again, st);
        let written = serde_json::to_value(&st).unwrap();
        assert_eq!(written["containers"]["web"]["container_id"], "c1");
    }
}
