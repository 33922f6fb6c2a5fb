//! Automatic rollback, pure and the same for every kind of workload: remembers the
//! configuration a workload last ran healthy with (and the payload versions it had), decides
//! when a spec change has been failing long enough to go back to it, and keeps the old
//! configuration in force until the spec changes again. Every workload's heal entry
//! (`tracker.rs`) holds one [`Track`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steward_proto::{PayloadSpec, RolledBack, WorkloadKind};

/// A configuration that ran healthy, and the generation it came with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Healthy<S> {
    pub spec: S,
    pub hash: String,
    pub generation: u64,
    /// The payloads whose `on_change` names the workload, as they were then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payloads: Vec<PayloadSpec>,
}

/// A rollback in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    /// The hash of the spec rolled back from.
    pub from_hash: String,
    pub from_generation: u64,
    pub to_generation: u64,
    pub reason: String,
}

/// One workload's rollback memory (stored flattened into its heal entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize",
    deserialize = "S: serde::de::DeserializeOwned"
))]
pub struct Track<S> {
    /// The configuration (spec and payload versions) the clocks are about.
    #[serde(default)]
    pub config: String,
    /// When the current spec was first seen failing (cleared once it proves healthy).
    #[serde(default)]
    pub failing_since: Option<u64>,
    /// Since when the current spec has run without failing.
    #[serde(default)]
    pub healthy_since: Option<u64>,
    /// The configuration that last ran healthy (kept across spec changes).
    #[serde(default)]
    pub last_healthy: Option<Healthy<S>>,
    /// In force while the spec is still the one rolled back from.
    #[serde(default)]
    pub rolled_back: Option<Rollback>,
}

impl<S> Default for Track<S> {
    fn default() -> Self {
        Track {
            config: String::new(),
            failing_since: None,
            healthy_since: None,
            last_healthy: None,
            rolled_back: None,
        }
    }
}

impl<S: Clone> Track<S> {
    /// A new spec (or a new instance of it): the failing and healthy clocks start over; the
    /// last healthy configuration and a rollback in force are kept.
    pub fn restart_clocks(&mut self) {
        self.failing_since = None;
        self.healthy_since = None;
    }

    /// The configuration to run for `spec` (whose hash is `hash`): the last healthy one while
    /// a rollback from exactly this spec is in force. A different spec ends the rollback.
    pub fn effective(&mut self, spec: &S, hash: &str) -> S {
        match (&self.rolled_back, &self.last_healthy) {
            (Some(rb), Some(h)) if rb.from_hash == hash => h.spec.clone(),
            (Some(_), _) => {
                self.rolled_back = None; // a new spec: a new chance
                spec.clone()
            }
            _ => spec.clone(),
        }
    }

    /// Another configuration than the clocks are about starts them over.
    fn at(&mut self, hash: &str) {
        if self.config != hash {
            self.config = hash.to_string();
            self.restart_clocks();
        }
    }

    /// The running spec (`hash`, of `generation`, rollback allowed or not) failed at `now`:
    /// when it has been failing for `grace` seconds and a different healthy configuration is
    /// known, the rollback is put in force and that configuration returned.
    pub fn failing(
        &mut self,
        hash: &str,
        allowed: bool,
        generation: u64,
        reason: &str,
        grace: u64,
        now: u64,
    ) -> Option<(Healthy<S>, u64)> {
        self.at(hash);
        self.healthy_since = None;
        let since = *self.failing_since.get_or_insert(now);
        let h = self.last_healthy.as_ref()?;
        if h.hash == hash || !allowed || self.rolled_back.is_some() {
            return None;
        }
        let failing_for = now.saturating_sub(since);
        if failing_for < grace {
            return None;
        }
        let h = h.clone();
        self.rolled_back = Some(Rollback {
            from_hash: hash.to_string(),
            from_generation: generation,
            to_generation: h.generation,
            reason: reason.to_string(),
        });
        self.failing_since = None;
        Some((h, failing_for))
    }

    /// The running spec did not fail at `now`. `verdict` is its health check's verdict when it
    /// has one: `Some(true)` proves it healthy at once; without a check it is proven after
    /// `grace` seconds without failing. A proven spec becomes the last healthy configuration
    /// (unless it is itself a rollback).
    #[allow(clippy::too_many_arguments)]
    pub fn running(
        &mut self,
        spec: &S,
        hash: &str,
        generation: u64,
        payloads: Vec<PayloadSpec>,
        verdict: Option<bool>,
        grace: u64,
        now: u64,
    ) {
        self.at(hash);
        let since = *self.healthy_since.get_or_insert(now);
        let proven = match verdict {
            Some(v) => v,
            None => now.saturating_sub(since) >= grace,
        };
        if proven && self.rolled_back.is_none() {
            self.failing_since = None;
            self.last_healthy = Some(Healthy {
                spec: spec.clone(),
                hash: hash.to_string(),
                generation,
                payloads,
            });
        }
    }

    /// An operator's reset: the rollback dropped and the clocks started over.
    pub fn reset(&mut self) {
        self.rolled_back = None;
        self.restart_clocks();
    }

    /// The rollback in force, as the status reports it.
    pub fn reported(&self) -> Option<RolledBack> {
        self.rolled_back.as_ref().map(|r| RolledBack {
            from_generation: r.from_generation,
            to_generation: r.to_generation,
            reason: r.reason.clone(),
        })
    }

    /// The payloads to put back with the rollback in force, if any.
    pub fn payloads_in_force(&self) -> &[PayloadSpec] {
        match (&self.rolled_back, &self.last_healthy) {
            (Some(_), Some(h)) => &h.payloads,
            _ => &[],
        }
    }
}

/// The hash a rollback compares: a workload's spec with the payload versions that go with it
/// (a payload-only update that breaks the workload is rolled back like a spec change).
pub fn config_hash<S: Serialize>(spec: &S, payloads: &[PayloadSpec]) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(spec).unwrap_or_default());
    for p in payloads {
        for part in [&p.name, &p.version, p.sha256.as_deref().unwrap_or("")].map(|s| s.as_bytes()) {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The payloads whose `on_change` restarts the workload of `kind` named `name`:
/// they are part of its configuration for a rollback.
pub fn payloads_of(payloads: &[PayloadSpec], kind: WorkloadKind, name: &str) -> Vec<PayloadSpec> {
    payloads
        .iter()
        .filter(|p| {
            p.on_change
                .as_ref()
                .is_some_and(|o| o.restarts(kind).iter().any(|n| n == name))
        })
        .cloned()
        .collect()
}

/// Puts `back` (payloads of rolled-back workloads, as they were when those ran healthy) in
/// place of the spec's payloads of the same name. Returns the names replaced with another
/// version, with the version rolled back from.
pub fn restore_payloads(
    payloads: &mut [PayloadSpec],
    back: &[PayloadSpec],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in payloads.iter_mut() {
        if let Some(old) = back.iter().find(|b| b.name == p.name) {
            if old != p {
                out.push((p.name.clone(), p.version.clone()));
                *p = old.clone();
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn payload(name: &str, version: &str, restarts: &[&str]) -> PayloadSpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "version": version, "path": format!("/srv/{name}"),
            "sha256": format!("{:0>64}", version),
            "on_change": {"restart_containers": restarts},
        }))
        .unwrap()
    }

    #[test]
    fn rollback_table() {
        // (step, event, expected effective spec, rolled back?)
        let mut t: Track<&str> = Track::default();
        let grace = 10;
        // v1 proves healthy by its check.
        t.running(&"v1", "h1", 1, vec![], Some(true), grace, 0);
        assert_eq!(t.last_healthy.as_ref().unwrap().spec, "v1");
        // v2 fails; within grace nothing happens.
        t.restart_clocks();
        assert_eq!(t.failing("h2", true, 2, "down", grace, 100), None);
        assert_eq!(t.failing("h2", true, 2, "down", grace, 105), None);
        // Past grace: back to v1.
        let (h, after) = t.failing("h2", true, 2, "down", grace, 110).unwrap();
        assert_eq!((h.spec, h.generation, after), ("v1", 1, 10));
        assert_eq!(t.effective(&"v2", "h2"), "v1");
        let r = t.reported().unwrap();
        assert_eq!((r.from_generation, r.to_generation), (2, 1));
        // The rolled-back config running healthy does not become "last healthy" over v1's
        // record, and no second rollback happens while one is in force.
        t.running(&"v1", "h1", 2, vec![], Some(true), grace, 120);
        assert_eq!(t.last_healthy.as_ref().unwrap().generation, 1);
        assert_eq!(t.failing("h1", true, 2, "down", grace, 200), None);
        // A new spec ends the rollback.
        assert_eq!(t.effective(&"v3", "h3"), "v3");
        assert!(t.reported().is_none());
    }

    #[test]
    fn no_rollback_when_switched_off_without_history_or_to_itself() {
        let mut t: Track<&str> = Track::default();
        assert_eq!(t.failing("h1", true, 1, "x", 0, 5), None, "no history");
        t.running(&"v1", "h1", 1, vec![], Some(true), 0, 6);
        assert_eq!(t.failing("h1", true, 1, "x", 0, 7), None, "same config");
        assert_eq!(t.failing("h2", false, 2, "x", 0, 8), None, "switched off");
        assert!(t.rolled_back.is_none());
    }

    #[test]
    fn without_a_check_healthy_means_running_for_the_grace_period() {
        let mut t: Track<&str> = Track::default();
        t.running(&"v1", "h1", 1, vec![], None, 10, 0);
        assert!(t.last_healthy.is_none());
        t.running(&"v1", "h1", 1, vec![], None, 10, 9);
        assert!(t.last_healthy.is_none());
        t.running(&"v1", "h1", 1, vec![], None, 10, 10);
        assert!(t.last_healthy.is_some());
        // A failure restarts the healthy clock.
        let _ = t.failing("h1", true, 1, "x", 10, 11);
        assert_eq!(t.healthy_since, None);
    }

    #[test]
    fn payloads_follow_their_workload() {
        let spec = vec![
            payload("conf", "1", &["web"]),
            payload("other", "1", &["db"]),
        ];
        let mine = payloads_of(&spec, WorkloadKind::Container, "web");
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].name, "conf");
        assert!(
            payloads_of(&spec, WorkloadKind::Vm, "web").is_empty(),
            "VM names differ"
        );
        let mut now = vec![
            payload("conf", "2", &["web"]),
            payload("other", "2", &["db"]),
        ];
        let changed = restore_payloads(&mut now, &mine);
        assert_eq!(changed, [("conf".to_string(), "2".to_string())]);
        assert_eq!(now[0].version, "1");
        assert_eq!(now[1].version, "2", "not the workload's");
        assert!(restore_payloads(&mut now, &mine).is_empty(), "already back");
    }
}
