//! Alerts: JSON POSTed to the configured webhooks on node down, workload failed, payload drift
//! and rollback, retried with exponential backoff. Raising an alert stores one pending delivery
//! per webhook that takes it (`store/alerts.rs`); the dispatcher (`alerts/dispatch.rs`) runs on
//! the leader replica only, sends them and records each outcome, so retries survive the replica
//! that raised them. Every delivery and every failed attempt goes to the event log
//! (`alert-delivered`, `alert-failed`). [`Alerts`] is the service the rest of the registry raises
//! alerts through.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod dispatch;

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use steward_proto::api::{Alert, AlertKind};
use steward_proto::{NodeStatus, ResourceKind, WorkloadRef};
use tokio::sync::Notify;
use tracing::info;

use crate::events::EventLog;
use crate::store::{DeliveryRecord, Store, StoreError};

/// A configuration the alerts cannot start with, or an alert that could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("{0}")]
    Config(String),
    #[error("building the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("storing the alert's deliveries failed (the alert is not sent): {0}")]
    Store(#[source] StoreError),
}

/// `[alerts]` in the registry's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub webhooks: Vec<WebhookConfig>,
    /// Attempts per alert and webhook before giving up.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Per request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            max_attempts: 8,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }
}

/// One `[[alerts.webhooks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Alert kinds sent to this webhook; all when empty.
    #[serde(default)]
    pub kinds: Vec<AlertKind>,
    /// File holding the HMAC-SHA256 key of `X-Steward-Signature` (should be 0600).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

mod humantime_serde {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// A webhook ready to use: its secret read, its URL checked.
struct Webhook {
    /// Hex sha256 of the configured URL: how stored deliveries name it.
    id: String,
    url: reqwest::Url,
    /// `scheme://host[:port]/path`: what logs and events show (no query, no credentials).
    shown: String,
    kinds: Vec<AlertKind>,
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.shown)
            .field("kinds", &self.kinds)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn shown(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Checks the config and reads the secrets: an error names the field and the reason.
fn webhooks(cfg: &AlertsConfig) -> Result<Vec<Webhook>, AlertsError> {
    if cfg.max_attempts == 0 {
        return Err(AlertsError::Config(
            "alerts.max_attempts must be at least 1".into(),
        ));
    }
    cfg.webhooks
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let url = reqwest::Url::parse(&w.url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    AlertsError::Config(format!(
                        "alerts.webhooks[{i}].url: not an http(s) URL with a host"
                    ))
                })?;
            let secret = match &w.secret_file {
                Some(p) => {
                    let s = std::fs::read_to_string(p).map_err(|e| {
                        AlertsError::Config(format!(
                            "alerts.webhooks[{i}].secret_file {}: {e}",
                            p.display()
                        ))
                    })?;
                    Some(s.trim().as_bytes().to_vec())
                }
                None => None,
            };
            Ok(Webhook {
                id: hex::encode(<Sha256 as sha2::Digest>::digest(w.url.as_bytes())),
                shown: shown(&url),
                url,
                kinds: w.kinds.clone(),
                secret,
            })
        })
        .collect()
}

/// `sha256=<hex>` of the body under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Where the rest of the registry raises alerts: stored as deliveries to the webhooks that take
/// their kind once [`Alerts::start`] found some configured, dropped otherwise.
#[derive(Clone)]
pub struct Alerts {
    store: Store,
    events: EventLog,
    /// The registry's URL, written into each alert.
    public_url: Option<String>,
    active: Arc<OnceLock<Arc<Active>>>,
    /// Wakes the dispatcher when deliveries were stored.
    wake: Arc<Notify>,
}

/// The checked configuration, set by [`Alerts::start`].
struct Active {
    client: reqwest::Client,
    hooks: Vec<Webhook>,
    cfg: AlertsConfig,
}

impl Alerts {
    pub fn new(store: Store, events: EventLog, public_url: Option<String>) -> Self {
        Self {
            store,
            events,
            public_url,
            active: Default::default(),
            wake: Default::default(),
        }
    }

    /// Raises an alert: stores one pending delivery (with a new delivery id) per webhook that
    /// takes its kind, durably, for the leader's dispatcher to send. Nothing is stored when no
    /// webhook takes it; an error when it could not be stored.
    pub async fn raise(&self, mut a: Alert) -> Result<(), AlertsError> {
        let Some(active) = self.active.get() else {
            return Ok(());
        };
        let hooks: Vec<&Webhook> = active
            .hooks
            .iter()
            .filter(|h| h.kinds.is_empty() || h.kinds.contains(&a.kind))
            .collect();
        if hooks.is_empty() {
            return Ok(());
        }
        a.registry = self.public_url.clone();
        if a.hostname.is_none() {
            a.hostname = self
                .store
                .node(&a.node_id)
                .await
                .ok()
                .flatten()
                .map(|n| n.facts.hostname);
        }
        let body = serde_json::to_string(&a).unwrap_or_default();
        let now = Utc::now();
        let ds: Vec<DeliveryRecord> = hooks
            .iter()
            .map(|h| DeliveryRecord {
                id: uuid::Uuid::new_v4().to_string(),
                alert_id: a.id.clone(),
                kind: a.kind.as_str().to_string(),
                node_id: a.node_id.clone(),
                webhook: h.id.clone(),
                shown: h.shown.clone(),
                body: body.clone(),
                attempts: 0,
                next_attempt: now,
            })
            .collect();
        self.store
            .add_deliveries(&ds)
            .await
            .map_err(AlertsError::Store)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Wakes the dispatcher (deliveries were stored, by this replica or another).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The dispatcher: sends the stored deliveries and records their outcome, until aborted.
    /// Run on the leader only (`replica::run_jobs`). Returns at once without webhooks.
    pub async fn dispatch(self) {
        dispatch::run(self).await
    }
}

/// Builds an alert about `node_id` (the id is unique per alert).
pub fn alert(kind: AlertKind, node_id: &str, resource: Option<&str>, message: String) -> Alert {
    Alert {
        id: uuid::Uuid::new_v4().to_string(),
        kind,
        node_id: node_id.to_string(),
        hostname: None,
        resource: resource.map(str::to_string),
        workload: None,
        time: Utc::now(),
        message,
        registry: None,
    }
}

/// The alerts a new status raises against the one before it: a payload that turned drifted
/// (wrong hash or missing), a workload that reached the top of its escalation ladder. Only
/// transitions raise, so a state reported in every status alerts once.
pub fn from_status(node_id: &str, before: Option<&NodeStatus>, now: &NodeStatus) -> Vec<Alert> {
    let drifted = |s: &NodeStatus| -> Vec<(String, String)> {
        s.drift()
            .into_iter()
            .filter(|d| d.kind == ResourceKind::Payload)
            .map(|d| (d.name, d.detail))
            .collect()
    };
    let was: Vec<String> = before
        .map(|b| drifted(b).into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    let mut out: Vec<Alert> = drifted(now)
        .into_iter()
        .filter(|(name, _)| !was.contains(name))
        .map(|(name, detail)| {
            alert(
                AlertKind::PayloadDrift,
                node_id,
                Some(&name),
                format!("payload {name} on node {node_id} drifted: {detail}"),
            )
        })
        .collect();
    out.extend(workload_alerts(node_id, before, now));
    out
}

/// The alerts about workloads in a new status against the one before it: rolled back, or at
/// the top of the escalation ladder. Keyed by kind and name (a container and a VM may share one).
fn workload_alerts(node_id: &str, before: Option<&NodeStatus>, now: &NodeStatus) -> Vec<Alert> {
    let failed = |s: &NodeStatus| -> Vec<(WorkloadRef, String)> {
        s.resources
            .iter()
            .filter(|r| {
                r.escalation
                    .as_ref()
                    .is_some_and(|e| e.position == "failed")
            })
            .filter_map(|r| Some((r.workload()?, r.error.clone().unwrap_or_default())))
            .collect()
    };
    let was_failed: Vec<WorkloadRef> = before
        .map(|b| failed(b).into_iter().map(|(w, _)| w).collect())
        .unwrap_or_default();
    // Rolled back since the last status (or rolled back from another generation).
    let rolled = |s: &NodeStatus| -> Vec<(WorkloadRef, steward_proto::RolledBack)> {
        s.resources
            .iter()
            .filter_map(|r| Some((r.workload()?, r.rolled_back.clone()?)))
            .collect()
    };
    let was_rolled = before.map(rolled).unwrap_or_default();
    let about = |kind, w: WorkloadRef, message| Alert {
        workload: Some(w.clone()),
        ..alert(kind, node_id, Some(&w.name), message)
    };
    let mut out: Vec<Alert> = rolled(now)
        .into_iter()
        .filter(|x| !was_rolled.contains(x))
        .map(|(w, b)| {
            let message = format!(
                "{w} on node {node_id} rolled back from generation {} to the configuration of generation {}: {}",
                b.from_generation, b.to_generation, b.reason
            );
            about(AlertKind::Rollback, w, message)
        })
        .collect();
    out.extend(
        failed(now)
            .into_iter()
            .filter(|(w, _)| !was_failed.contains(w))
            .map(|(w, why)| {
                let message = format!("{w} on node {node_id} {why}");
                about(AlertKind::WorkloadFailed, w, message)
            }),
    );
    out
}

impl Alerts {
    /// Checks the config; false when no webhook is configured (alerts raised are then
    /// dropped). The deliveries are sent by [`Alerts::dispatch`] on the leader.
    pub fn start(&self, cfg: &AlertsConfig) -> Result<bool, AlertsError> {
        let hooks = webhooks(cfg)?;
        if hooks.is_empty() {
            return Ok(false);
        }
        info!(webhooks = ?hooks, "alerts enabled");
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(cfg.timeout)
            .build()
            .map_err(AlertsError::Client)?;
        let _ = self.active.set(Arc::new(Active {
            client,
            hooks,
            cfg: cfg.clone(),
        }));
        Ok(true)
    }
}

/// Delay before attempt `n + 1` (n ≥ 1): `initial · 2^(n-1)`, capped.
fn backoff(cfg: &AlertsConfig, n: u32) -> Duration {
    cfg.retry_initial
        .saturating_mul(1u32 << (n - 1).min(20))
        .min(cfg.retry_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_drift_alerts_on_the_transition_only() {
        use steward_proto::PayloadAttestation;
        let status = |actual: Option<&str>| NodeStatus {
            payloads: vec![PayloadAttestation {
                name: "tool".into(),
                version: "1".into(),
                path: "/opt/tool".into(),
                expected: "aa".into(),
                actual: actual.map(str::to_string),
            }],
            ..Default::default()
        };
        let cases = [
            (None, status(Some("aa")), 0),
            (None, status(Some("bb")), 1),
            (Some(status(Some("aa"))), status(Some("bb")), 1),
            (Some(status(Some("aa"))), status(None), 1),
            (Some(status(Some("bb"))), status(Some("bb")), 0),
            (Some(status(Some("bb"))), status(None), 0),
            (Some(status(Some("bb"))), status(Some("aa")), 0),
        ];
        for (i, (before, now, n)) in cases.iter().enumerate() {
            let got = from_status("n1", before.as_ref(), now);
            assert_eq!(got.len(), *n, "case {i}: {got:?}");
            if let Some(a) = got.first() {
                assert_eq!(a.kind, AlertKind::PayloadDrift);
                assert_eq!(a.resource.as_deref(), Some("tool"));
                assert!(a.message.contains("/opt/tool"), "{}", a.message);
            }
        }
    }

    #[test]
    fn workload_alerts_name_the_kind_so_a_vm_and_a_container_of_one_name_stay_apart() {
        use steward_proto::{Escalation, ResourceState, ResourceStatus, WorkloadKind};
        let failed = |kind: WorkloadKind| ResourceStatus {
            escalation: Some(Escalation {
                position: "failed".into(),
                attempts: 1,
                last_action: None,
                last_action_at: None,
                next_step_at: None,
            }),
            ..ResourceStatus::of_workload(
                &WorkloadRef::new(kind, "web"),
                ResourceState::Failed,
                Some("exited 1".into()),
            )
        };
        let status = |rs: Vec<ResourceStatus>| NodeStatus {
            resources: rs,
            ..Default::default()
        };
        let vm = WorkloadRef::new(WorkloadKind::Vm, "web");
        let ct = WorkloadRef::new(WorkloadKind::Container, "web");
        let cases = [
            (None, vec![failed(WorkloadKind::Vm)], vec![vm.clone()]),
            (
                Some(vec![failed(WorkloadKind::Vm)]),
                vec![failed(WorkloadKind::Vm)],
                vec![],
            ),
            (
                Some(vec![failed(WorkloadKind::Vm)]),
                vec![failed(WorkloadKind::Vm), failed(WorkloadKind::Container)],
                vec![ct.clone()],
            ),
            (
                Some(vec![failed(WorkloadKind::Container)]),
                vec![failed(WorkloadKind::Vm)],
                vec![vm],
            ),
        ];
        for (i, (before, now, want)) in cases.into_iter().enumerate() {
            let before = before.map(status);
            let got = from_status("n1", before.as_ref(), &status(now));
            let named: Vec<WorkloadRef> = got.iter().filter_map(|a| a.workload.clone()).collect();
            assert_eq!(named, want, "case {i}: {got:?}");
            for a in &got {
                let w = a.workload.as_ref().unwrap();
                assert_eq!(a.kind, AlertKind::WorkloadFailed);
                assert_eq!(a.resource.as_deref(), Some("web"));
                assert!(
                    a.message.starts_with(&format!("{w} on node n1")),
                    "{}",
                    a.message
                );
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = AlertsConfig {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_millis(500),
            ..Default::default()
        };
        let got: Vec<u128> = (1..=5).map(|n| backoff(&cfg, n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn shown_url_drops_query_and_credentials() {
        let u =
            reqwest::Url::parse("https://user:pw@hooks.example:8443/x/y?token=s3cret#f").unwrap();
        assert_eq!(shown(&u), "https://hooks.example:8443/x/y");
    }

    #[test]
    fn bad_webhooks_are_refused_naming_the_field() {
        let mut cfg = AlertsConfig::default();
        cfg.webhooks.push(WebhookConfig {
            url: "ftp://x".into(),
            kinds: vec![],
            secret_file: None,
        });
        let e = webhooks(&cfg).unwrap_err().to_string();
        assert!(e.contains("alerts.webhooks[0].url"), "{e}");
        cfg.webhooks[0].url = "http://x/hook".into();
        cfg.webhooks[0].secret_file = Some("/nonexistent/secret".into());
        let e = webhooks(&cfg).unwrap_err().to_string();
        assert!(e.contains("alerts.webhooks[0].secret_file"), "{e}");
        cfg.max_attempts = 0;
        assert!(webhooks(&cfg)
            .unwrap_err()
            .to_string()
            .contains("max_attempts"));
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
