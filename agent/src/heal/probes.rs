//! The agent-side probes of running containers whose health check is `tcp` or `http` (Docker
//! runs `exec` checks itself): each probed at its `interval`, all due ones at once, the results
//! turned into a health by `probe::Tracker` and written into the observed container, where the
//! ladder and rollback read it like Docker's own verdict.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_proto::ContainerSpec;

use super::probe::{self, ProbeSettings, Tracker};
use crate::reconcile::Observed;

struct Probed {
    container_id: String,
    first_seen: Instant,
    last: Option<Instant>,
    tracker: Tracker,
}

/// Probe state per container name.
pub struct Probes {
    client: reqwest::Client,
    state: HashMap<String, Probed>,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            client: probe::http_client(),
            state: HashMap::new(),
        }
    }
}

/// What a container's health check asks the agent to probe, if anything.
fn target(c: &ContainerSpec) -> Option<(bool, String, ProbeSettings)> {
    let hc = c.healthcheck.as_ref()?;
    let s = ProbeSettings::from_spec(hc);
    match (&hc.tcp, &hc.http) {
        (Some(t), _) => Some((false, t.clone(), s)),
        (None, Some(u)) => Some((true, u.clone(), s)),
        _ => None,
    }
}

impl Probes {
    /// Probes the due containers and sets `health` on every probed one Docker has no verdict
    /// for. Containers not running or gone start over.
    pub async fn run(&mut self, desired: &[ContainerSpec], observed: &mut Observed, now: Instant) {
        let mut due = Vec::new();
        let mut keep = Vec::new();
        for c in desired {
            let Some((http, target, s)) = target(c) else {
                continue;
            };
            let Some(o) = observed
                .containers
                .iter()
                .find(|o| o.name == c.name && o.managed && o.running)
            else {
                continue;
            };
            keep.push(c.name.clone());
            let p = self.state.entry(c.name.clone()).or_insert_with(|| Probed {
                container_id: o.id.clone(),
                first_seen: now,
                last: None,
                tracker: Tracker::default(),
            });
            if p.container_id != o.id {
                *p = Probed {
                    container_id: o.id.clone(),
                    first_seen: now,
                    last: None,
                    tracker: Tracker::default(),
                };
            }
            if p.last.is_none_or(|t| now.duration_since(t) >= s.interval) {
                due.push((c.name.clone(), http, target, s));
            }
        }
        self.state.retain(|n, _| keep.contains(n));
        let client = &self.client;
        let results = futures_util::future::join_all(due.into_iter().map(
            |(name, http, target, s)| async move {
                let r = if http {
                    probe::http(client, &target, s.timeout).await
                } else {
                    probe::tcp(&target, s.timeout).await
                };
                (name, r, s)
            },
        ))
        .await;
        for (name, r, s) in results {
            if let Some(p) = self.state.get_mut(&name) {
                p.last = Some(now);
                let h = p.tracker.record(r, now.duration_since(p.first_seen), &s);
                tracing::debug!(container = %name, health = h.as_str(), error = ?p.tracker.last_error, "probed");
            }
        }
        for o in observed.containers.iter_mut() {
            if let Some(p) = self.state.get(&o.name).filter(|p| p.container_id == o.id) {
                if o.health.is_none() {
                    o.health = Some(p.tracker.health().as_str().to_string());
                }
            }
        }
    }

    /// How long until the next probe is due, when any container is probed.
    pub fn next_due(&self, desired: &[ContainerSpec], now: Instant) -> Option<Duration> {
        desired
            .iter()
            .filter_map(|c| {
                let (_, _, s) = target(c)?;
                let p = self.state.get(&c.name)?;
                Some(match p.last {
                    Some(t) => s.interval.saturating_sub(now.duration_since(t)),
                    None => Duration::ZERO,
                })
            })
            .min()
    }
}
