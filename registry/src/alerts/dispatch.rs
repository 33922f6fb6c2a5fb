//! The alert dispatcher, run on the leader replica only (`replica::run_jobs`): scans the stored
//! pending deliveries (at start, when woken, and every second), runs one task per delivery that
//! sends it with its stable delivery id and records each outcome in the store, compared on the
//! record's revision so that a replica that lost the leadership cannot record twice. Aborting
//! the dispatcher aborts its delivery tasks. At least once: a delivery in flight when the leader
//! dies is sent again by the next one, with the same delivery id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use steward_proto::api::EventKind;
use tokio::task::{Id, JoinSet};
use tracing::{info, warn, Instrument};

use super::{backoff, signature, Active, Alerts, Webhook};
use crate::events::EventLog;
use crate::kv::Revision;
use crate::store::{DeliveryRecord, Store};

/// How often the stored deliveries are scanned (besides being woken).
const SCAN: Duration = Duration::from_secs(1);

pub(super) async fn run(alerts: Alerts) {
    let Some(active) = alerts.active.get().cloned() else {
        return;
    };
    info!("alert dispatcher running");
    let mut running: HashMap<Id, String> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut iv = tokio::time::interval(SCAN);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                running.remove(&id);
                continue;
            }
            _ = alerts.wake.notified() => {}
            _ = iv.tick() => {}
        }
        let pending = match alerts.store.deliveries().await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read the pending alert deliveries; retrying");
                continue;
            }
        };
        for (d, rev) in pending {
            if running.values().any(|id| *id == d.id) {
                continue;
            }
            let Some(hook) = active.hooks.iter().position(|h| h.id == d.webhook) else {
                forget(&alerts, d, rev).await;
                continue;
            };
            let span = tracing::info_span!("alert", delivery = %d.id, id = %d.alert_id,
                kind = %d.kind, webhook = %d.shown);
            let id = d.id.clone();
            let job = Delivery {
                store: alerts.store.clone(),
                events: alerts.events.clone(),
                active: active.clone(),
                hook,
            };
            let h = tasks.spawn(job.run(d, rev).instrument(span));
            running.insert(h.id(), id);
        }
    }
}

/// Drops a delivery to a webhook no longer configured.
async fn forget(alerts: &Alerts, d: DeliveryRecord, rev: Revision) {
    if let Ok(true) = alerts.store.finish_delivery(&d.id, rev).await {
        let msg = format!(
            "{} alert {} for node {} to {} (delivery {}): the webhook is no longer configured; giving up",
            d.kind, d.alert_id, d.node_id, d.shown, d.id
        );
        warn!("{msg}");
        record(&alerts.events, EventKind::AlertFailed, &d.node_id, msg).await;
    }
}

/// One delivery's attempts.
struct Delivery {
    store: Store,
    events: EventLog,
    active: Arc<Active>,
    hook: usize,
}

impl Delivery {
    async fn run(self, mut d: DeliveryRecord, mut rev: Revision) {
        let hook = &self.active.hooks[self.hook];
        let cfg = &self.active.cfg;
        let what = format!("{} alert {} for node {}", d.kind, d.alert_id, d.node_id);
        loop {
            let wait = (d.next_attempt - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            let n = d.attempts + 1;
            let why = match send(&self.active.client, hook, &d).await {
                Ok(()) => {
                    self.delivered(&d, rev, &what, n).await;
                    return;
                }
                Err(why) => why,
            };
            d.attempts = n;
            let next = (n < cfg.max_attempts).then(|| backoff(cfg, n));
            let msg = match next {
                Some(delay) => format!(
                    "{what} to {} (delivery {}): attempt {n}/{} failed ({why}); retrying in {}",
                    hook.shown,
                    d.id,
                    cfg.max_attempts,
                    humantime::format_duration(delay)
                ),
                None => format!(
                    "{what} to {} (delivery {}): attempt {n}/{} failed ({why}); giving up",
                    hook.shown, d.id, cfg.max_attempts
                ),
            };
            let saved = match next {
                Some(delay) => {
                    d.next_attempt = Utc::now() + delay;
                    self.store.save_delivery(&d, rev).await.map(|r| {
                        r.map(|r| {
                            rev = r;
                        })
                    })
                }
                None => self
                    .store
                    .finish_delivery(&d.id, rev)
                    .await
                    .map(|done| done.then_some(())),
            };
            match saved {
                Ok(Some(())) => {}
                Ok(None) => {
                    warn!("the delivery was changed by another replica meanwhile; leaving it");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot record a failed attempt; the next scan sends it again");
                    return;
                }
            }
            warn!("{msg}");
            record(&self.events, EventKind::AlertFailed, &d.node_id, msg).await;
            if next.is_none() {
                return;
            }
        }
    }

    /// Removes the delivered record and logs the delivery.
    async fn delivered(&self, d: &DeliveryRecord, rev: Revision, what: &str, n: u32) {
        match self.store.finish_delivery(&d.id, rev).await {
            Ok(true) => {
                info!(attempt = n, "alert delivered");
                let msg = format!(
                    "{what} delivered to {} (attempt {n}, delivery {})",
                    d.shown, d.id
                );
                record(&self.events, EventKind::AlertDelivered, &d.node_id, msg).await;
            }
            Ok(false) => info!("alert delivered; already recorded by another replica"),
            Err(e) => warn!(
                error = %e,
                "alert delivered but not recorded: it is sent again with the same delivery id"
            ),
        }
    }
}

/// One attempt: `Err(why)` on a transport error or a non-2xx answer.
async fn send(client: &reqwest::Client, hook: &Webhook, d: &DeliveryRecord) -> Result<(), String> {
    let mut req = client
        .post(hook.url.clone())
        .header("content-type", "application/json")
        .header("x-steward-alert", d.kind.as_str())
        .header("x-steward-delivery", d.id.as_str())
        .body(d.body.clone());
    if let Some(key) = &hook.secret {
        req = req.header("x-steward-signature", signature(key, d.body.as_bytes()));
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("answered {}", r.status())),
        Err(e) => Err(format!("{:#}", anyhow::Error::from(e.without_url()))),
    }
}

async fn record(events: &EventLog, kind: EventKind, node: &str, msg: String) {
    if let Err(e) = events
        .record(kind, Some(node), None, &steward_proto::Actor::SYSTEM, msg)
        .await
    {
        warn!(error = %e, "recording an alert event failed");
    }
}
