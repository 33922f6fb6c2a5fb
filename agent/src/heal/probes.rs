//! The agent-side probes of running workloads whose health check is `tcp` or `http`: containers
//! (Docker runs their `exec` checks itself), probed from inside their network namespace
//! (`inside.rs`), and VMs, probed from the host (against the guest's address). Each target
//! is probed at its `interval`, all due ones at once; the results become a health through
//! `probe::Tracker`. For containers the health is written into the observed container, where
//! the ladder and rollback read it like Docker's own verdict; VMs read it from [`Probes::probe`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_proto::{ContainerSpec, HealthCheck};

use super::probe::{self, ProbeHealth, ProbeSettings, Tracker};
use crate::reconcile::Observed;

struct Probed {
    /// The instance probed (container id, QEMU pid): another one starts over.
    instance: String,
    first_seen: Instant,
    last: Option<Instant>,
    tracker: Tracker,
}

/// One running workload to probe.
pub struct Target<'a> {
    pub name: &'a str,
    pub instance: String,
    pub check: &'a HealthCheck,
    /// Probe from the network namespace of this process (a container's init); `None`: from the
    /// agent's own.
    pub netns_of: Option<u32>,
}

/// Probe state per workload name (one `Probes` per kind of workload).
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

/// A container's run: its id and init pid (a restart keeps the id, not the pid).
fn instance(o: &crate::reconcile::ObservedContainer) -> String {
    format!("{}/{}", o.id, o.pid.unwrap_or(0))
}

/// What a health check asks the agent to probe, if anything: (http?, target, settings).
fn target(hc: &HealthCheck) -> Option<(bool, String, ProbeSettings)> {
    let s = ProbeSettings::from_spec(hc);
    match (&hc.tcp, &hc.http) {
        (Some(t), _) => Some((false, t.clone(), s)),
        (None, Some(u)) => Some((true, u.clone(), s)),
        _ => None,
    }
}

impl Probes {
    /// Probes the due ones of `targets` (every running workload with a check) and returns the
    /// health of each, with the last probe error. Workloads not among `targets` are forgotten.
    pub async fn probe(
        &mut self,
        targets: &[Target<'_>],
        now: Instant,
    ) -> HashMap<String, (ProbeHealth, Option<String>)> {
        let mut due = Vec::new();
        for t in targets {
            let Some((http, addr, s)) = target(t.check) else {
                continue;
            };
            let p = self
                .state
                .entry(t.name.to_string())
                .or_insert_with(|| Probed {
                    instance: t.instance.clone(),
                    first_seen: now,
                    last: None,
                    tracker: Tracker::default(),
                });
            if p.instance != t.instance {
                *p = Probed {
                    instance: t.instance.clone(),
                    first_seen: now,
                    last: None,
                    tracker: Tracker::default(),
                };
            }
            if p.last.is_none_or(|l| now.duration_since(l) >= s.interval) {
                due.push((t.name.to_string(), http, addr, s, t.netns_of));
            }
        }
        self.state.retain(|n, _| {
            targets
                .iter()
                .any(|t| t.name == n && target(t.check).is_some())
        });
        let client = &self.client;
        let results = futures_util::future::join_all(due.into_iter().map(
            |(name, http, addr, s, netns_of)| async move {
                let r = match netns_of {
                    Some(pid) => super::inside::probe_in(pid, http, addr, s.timeout).await,
                    None if http => probe::http(client, &addr, s.timeout).await,
                    None => probe::tcp(&addr, s.timeout).await,
                };
                (name, r, s)
            },
        ))
        .await;
        for (name, r, s) in results {
            if let Some(p) = self.state.get_mut(&name) {
                p.last = Some(now);
                let h = p.tracker.record(r, now.duration_since(p.first_seen), &s);
                tracing::debug!(workload = %name, health = h.as_str(), error = ?p.tracker.last_error, "probed");
            }
        }
        self.state
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    (p.tracker.health(), p.tracker.last_error.clone()),
                )
            })
            .collect()
    }

    /// Starts `name`'s probing over (its start period again), e.g. after a reset of the guest
    /// that kept the same process.
    pub fn forget(&mut self, name: &str) {
        self.state.remove(name);
    }

    /// How long until the next probe of `checks` (name, check) is due, if any is probed.
    pub fn next_due_of<'a>(
        &self,
        checks: impl Iterator<Item = (&'a str, &'a HealthCheck)>,
        now: Instant,
    ) -> Option<Duration> {
        checks
            .filter_map(|(name, hc)| {
                let (_, _, s) = target(hc)?;
                let p = self.state.get(name)?;
                Some(match p.last {
                    Some(t) => s.interval.saturating_sub(now.duration_since(t)),
                    None => Duration::ZERO,
                })
            })
            .min()
    }

    /// The last probe error of `name`, if its last probe failed.
    pub fn last_error(&self, name: &str) -> Option<&str> {
        self.state.get(name)?.tracker.last_error.as_deref()
    }

    /// Probes the due containers (each from inside its network namespace) and sets `health` on
    /// every probed one Docker has no verdict for. Containers not running, gone, or started
    /// again (another init process) start over, as Docker's own checks do.
    pub async fn run(&mut self, desired: &[ContainerSpec], observed: &mut Observed, now: Instant) {
        let targets: Vec<Target> = desired
            .iter()
            .filter_map(|c| {
                let check = c.healthcheck.as_ref()?;
                let o = observed
                    .containers
                    .iter()
                    .find(|o| o.name == c.name && o.managed && o.running)?;
                Some(Target {
                    name: &c.name,
                    instance: instance(o),
                    check,
                    // Docker reports the pid of every running container; without it there
                    // is no namespace to probe from (the host's would mean another address).
                    netns_of: Some(o.pid?),
                })
            })
            .collect();
        let _ = self.probe(&targets, now).await;
        for o in observed.containers.iter_mut() {
            if let Some(p) = self
                .state
                .get(&o.name)
                .filter(|p| p.instance == instance(o))
            {
                if o.health.is_none() {
                    o.health = Some(p.tracker.health().as_str().to_string());
                }
            }
        }
    }

    /// How long until the next probe of `desired`'s containers is due, if any is probed.
    pub fn next_due(&self, desired: &[ContainerSpec], now: Instant) -> Option<Duration> {
        self.next_due_of(
            desired
                .iter()
                .filter_map(|c| Some((c.name.as_str(), c.healthcheck.as_ref()?))),
            now,
        )
    }
}
