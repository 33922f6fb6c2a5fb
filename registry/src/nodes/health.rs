//! Node health: transitions recorded in the store and the event log (a node turning down raises
//! an alert), and the health monitor that moves silent nodes to stale or down (run on the
//! replica holding the jobs leadership, `replica.rs`).

use std::time::{Duration, Instant};

use chrono::Utc;
use steward_proto::{CredentialKind, EventKind, Health};

use super::{Nodes, Result};
use crate::fleet::Live;

/// A health change to record, with the live data written along.
pub(super) struct Transition {
    from: Health,
    to: Health,
    last: Option<chrono::DateTime<Utc>>,
    rtt: Option<f64>,
    stats: Option<steward_proto::HostStats>,
    observed: u64,
}

impl Transition {
    pub(super) fn of(from: Health, l: &Live) -> Self {
        Self {
            from,
            to: l.health,
            last: l.last_heartbeat,
            rtt: l.rtt_ms,
            stats: l.stats.clone(),
            observed: l.observed_generation,
        }
    }
}

impl Nodes {
    /// Records a health transition in the store and the event log.
    pub(super) async fn transition(&self, id: &str, t: Transition) -> Result<()> {
        let Transition {
            from,
            to,
            last,
            rtt,
            stats,
            observed,
        } = t;
        self.store
            .update_node(id, |r| {
                if r.health != Health::Decommissioned {
                    r.health = to;
                }
                r.last_heartbeat = last;
                r.heartbeat_rtt_ms = rtt;
                r.stats = stats.clone();
                r.observed_generation = observed;
            })
            .await?;
        self.events
            .record(
                EventKind::HealthChanged,
                Some(id),
                None,
                CredentialKind::System,
                format!("{from} -> {to}"),
            )
            .await?;
        tracing::info!(node = %id, %from, %to, "node health changed");
        if to == Health::Down && from != Health::Down {
            let a = crate::alerts::alert(
                steward_proto::api::AlertKind::NodeDown,
                id,
                None,
                format!(
                    "node {id} is down: no heartbeat for {} intervals (was {from})",
                    self.settings.down_after
                ),
            );
            if let Err(e) = self.alerts.raise(a).await {
                tracing::warn!(node = %id, error = %e, "raising the node-down alert failed");
            }
        }
        Ok(())
    }
}

/// Health a node should have after `silent` without heartbeats.
pub fn health_for(
    silent: Duration,
    interval: Duration,
    stale_after: u32,
    down_after: u32,
) -> Health {
    if silent >= interval * down_after {
        Health::Down
    } else if silent >= interval * stale_after {
        Health::Stale
    } else {
        Health::Ready
    }
}

impl Nodes {
    /// One pass of the health monitor: moves silent nodes to stale or down.
    pub async fn check_health(&self) {
        let s = &self.settings;
        let now = Instant::now();
        for (id, ln) in self.fleet.all_live() {
            let change = {
                let mut l = ln.lock();
                if l.health == Health::Decommissioned {
                    continue;
                }
                let next = health_for(
                    now.duration_since(l.last_seen),
                    s.heartbeat_interval,
                    s.stale_after,
                    s.down_after,
                );
                // Only silence degrades health here; recovery happens on the next heartbeat.
                if next <= l.health {
                    continue;
                }
                let from = l.health;
                l.health = next;
                Transition::of(from, &l)
            };
            if let Err(e) = self.transition(&id, change).await {
                tracing::error!(node = %id, error = %format!("{e:#}"), "recording health change failed");
            }
        }
    }
}

/// Runs the health monitor until the task is dropped.
pub async fn health_monitor(nodes: Nodes) {
    let tick = (nodes.settings.heartbeat_interval / 4).max(Duration::from_millis(50));
    let mut iv = tokio::time::interval(tick);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        nodes.check_health().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_thresholds() {
        let i = Duration::from_secs(10);
        let cases = [
            (0, Health::Ready),
            (29, Health::Ready),
            (30, Health::Stale),
            (99, Health::Stale),
            (100, Health::Down),
            (1000, Health::Down),
        ];
        for (secs, want) in cases {
            assert_eq!(
                health_for(Duration::from_secs(secs), i, 3, 10),
                want,
                "{secs}s"
            );
        }
    }
}
