//! Alerts: JSON POSTed to the configured webhooks on node down, workload failed, payload drift
//! and rollback, retried with exponential backoff. Every delivery and every failed attempt goes
//! to the event log (`alert-delivered`, `alert-failed`). Alerts in flight are kept in memory
//! only: a registry restart drops the retries still pending (documented in docs/API.md).
//! [`Alerts`] is the service the rest of the registry raises alerts through.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use steward_proto::api::{Alert, AlertKind, CredentialKind, EventKind};
use steward_proto::{NodeStatus, ResourceKind};
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use crate::events::EventLog;
use crate::store::Store;

/// A configuration the alerts cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("{0}")]
    Config(String),
    #[error("building the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
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

/// Where the rest of the registry raises alerts: sent to the webhooks that take their kind once
/// [`Alerts::start`] found some configured, dropped otherwise.
#[derive(Clone)]
pub struct Alerts {
    store: Store,
    events: EventLog,
    /// The registry's URL, written into each alert.
    public_url: Option<String>,
    sender: Arc<OnceLock<mpsc::UnboundedSender<Alert>>>,
}

impl Alerts {
    pub fn new(store: Store, events: EventLog, public_url: Option<String>) -> Self {
        Self {
            store,
            events,
            public_url,
            sender: Default::default(),
        }
    }

    /// Raises an alert (sent to the webhooks that take its kind, if any are configured).
    pub fn raise(&self, alert: Alert) {
        if let Some(s) = self.sender.get() {
            let _ = s.send(alert);
        }
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
    // Workloads that reached the top of their escalation ladder since the last status.
    let failed = |s: &NodeStatus| -> Vec<(String, String)> {
        s.resources
            .iter()
            .filter(|r| {
                r.escalation
                    .as_ref()
                    .is_some_and(|e| e.position == "failed")
            })
            .map(|r| (r.name.clone(), r.error.clone().unwrap_or_default()))
            .collect()
    };
    let was_failed: Vec<String> = before
        .map(|b| failed(b).into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    // Workloads rolled back since the last status (or rolled back from another generation).
    let rolled = |s: &NodeStatus| -> Vec<(String, steward_proto::RolledBack)> {
        s.resources
            .iter()
            .filter_map(|r| r.rolled_back.clone().map(|b| (r.name.clone(), b)))
            .collect()
    };
    let was_rolled = before.map(rolled).unwrap_or_default();
    out.extend(rolled(now).into_iter().filter(|x| !was_rolled.contains(x)).map(|(name, b)| {
        alert(
            AlertKind::Rollback,
            node_id,
            Some(&name),
            format!(
                "workload {name} on node {node_id} rolled back from generation {} to the configuration of generation {}: {}",
                b.from_generation, b.to_generation, b.reason
            ),
        )
    }));
    out.extend(
        failed(now)
            .into_iter()
            .filter(|(name, _)| !was_failed.contains(name))
            .map(|(name, why)| {
                alert(
                    AlertKind::WorkloadFailed,
                    node_id,
                    Some(&name),
                    format!("workload {name} on node {node_id} {why}"),
                )
            }),
    );
    out
}

impl Alerts {
    /// Checks the config and starts the dispatcher; false when no webhook is configured (alerts
    /// raised are then dropped).
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
        let (tx, rx) = mpsc::unbounded_channel::<Alert>();
        let hooks: Vec<Arc<Webhook>> = hooks.into_iter().map(Arc::new).collect();
        let d = Dispatcher {
            store: self.store.clone(),
            events: self.events.clone(),
            public_url: self.public_url.clone(),
            client,
            hooks,
            cfg: cfg.clone(),
        };
        tokio::spawn(d.run(rx));
        let _ = self.sender.set(tx);
        Ok(true)
    }
}

/// The dispatcher task: fills in each alert and starts a delivery per webhook that takes it;
/// ends when every [`Alerts`] handle is gone.
struct Dispatcher {
    store: Store,
    events: EventLog,
    public_url: Option<String>,
    client: reqwest::Client,
    hooks: Vec<Arc<Webhook>>,
    cfg: AlertsConfig,
}

impl Dispatcher {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Alert>) {
        let Dispatcher {
            client, hooks, cfg, ..
        } = &self;
        while let Some(mut a) = rx.recv().await {
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
            let Ok(body) = serde_json::to_vec(&a) else {
                continue;
            };
            for hook in hooks
                .iter()
                .filter(|h| h.kinds.is_empty() || h.kinds.contains(&a.kind))
            {
                let span = tracing::info_span!("alert", id = %a.id, kind = a.kind.as_str(), webhook = %hook.shown);
                tokio::spawn(
                    deliver(
                        self.events.clone(),
                        client.clone(),
                        hook.clone(),
                        cfg.clone(),
                        a.clone(),
                        body.clone(),
                    )
                    .instrument(span),
                );
            }
        }
    }
}

/// Delay before attempt `n + 1` (n ≥ 1): `initial · 2^(n-1)`, capped.
fn backoff(cfg: &AlertsConfig, n: u32) -> Duration {
    cfg.retry_initial
        .saturating_mul(1u32 << (n - 1).min(20))
        .min(cfg.retry_max)
}

async fn deliver(
    events: EventLog,
    client: reqwest::Client,
    hook: Arc<Webhook>,
    cfg: AlertsConfig,
    a: Alert,
    body: Vec<u8>,
) {
    let what = format!("{} alert {} for node {}", a.kind.as_str(), a.id, a.node_id);
    for n in 1..=cfg.max_attempts {
        let mut req = client
            .post(hook.url.clone())
            .header("content-type", "application/json")
            .header("x-steward-alert", a.kind.as_str())
            .body(body.clone());
        if let Some(key) = &hook.secret {
            req = req.header("x-steward-signature", signature(key, &body));
        }
        let why = match req.send().await {
            Ok(r) if r.status().is_success() => {
                info!(attempt = n, "alert delivered");
                record(
                    &events,
                    EventKind::AlertDelivered,
                    &a.node_id,
                    format!("{what} delivered to {} (attempt {n})", hook.shown),
                )
                .await;
                return;
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{:#}", anyhow::Error::from(e.without_url())),
        };
        let next = (n < cfg.max_attempts).then(|| backoff(&cfg, n));
        let msg = match next {
            Some(d) => format!(
                "{what} to {}: attempt {n}/{} failed ({why}); retrying in {}",
                hook.shown,
                cfg.max_attempts,
                humantime::format_duration(d)
            ),
            None => format!(
                "{what} to {}: attempt {n}/{} failed ({why}); giving up",
                hook.shown, cfg.max_attempts
            ),
        };
        warn!("{msg}");
        record(&events, EventKind::AlertFailed, &a.node_id, msg).await;
        match next {
            Some(d) => tokio::time::sleep(d).await,
            None => return,
        }
    }
}

async fn record(events: &EventLog, kind: EventKind, node: &str, msg: String) {
    if let Err(e) = events
        .record(kind, Some(node), None, CredentialKind::System, msg)
        .await
    {
        warn!(error = %e, "recording an alert event failed");
    }
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
