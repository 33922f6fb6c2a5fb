//! Prometheus metrics of the agent, served on their own listener (`metrics_listen`, loopback
//! `127.0.0.1:9475` by default, `off` to disable) at `GET /metrics`: reconcile duration, actions
//! by kind and result, container restarts, payload checks and heartbeat round-trips.
//!
//! One process-wide set of metrics ([`get`]) so the hooks in the daemon and the reconciler are
//! one line each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use steward_proto::{NodeStatus, ResourceKind};

/// Default listen address of the metrics endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9475";

use steward_proto::metrics_text::{
    to_prometheus_text, wants_openmetrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE,
};

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics_listen {0:?} is neither \"off\" nor an address like 127.0.0.1:9475")]
    BadListen(String),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Parses `metrics_listen`: `off` (also `none`, `disabled`, empty) or `host:port`.
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, MetricsError> {
    match s.trim() {
        "" | "off" | "none" | "disabled" => Ok(None),
        a => a
            .parse()
            .map(Some)
            .map_err(|_| MetricsError::BadListen(s.to_string())),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: &'static str,
    result: &'static str,
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconcile_seconds: Histogram,
    actions: Family<ActionLabels, Counter>,
    container_restarts: Counter,
    /// Full payload hash checks (attestation re-hashes and first looks).
    pub payload_checks: Counter,
    heartbeat_rtt: Gauge<f64, AtomicU64>,
    heartbeat_rtt_seconds: Histogram,
    heartbeat_failures: Counter,
    /// Last restart count seen per container, to count increases only.
    restarts_seen: Mutex<HashMap<String, u32>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("steward_agent");
        // 1 ms .. ~65 s
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass (observe, plan, apply, report)",
            reconcile_seconds.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "actions",
            "Actions applied to the host, by kind (pull, create, recreate, start, remove) and result (ok, error)",
            actions.clone(),
        );
        let container_restarts = Counter::default();
        registry.register(
            "container_restarts",
            "Container restarts seen since the agent started (Docker's restart count going up, or the agent starting an exited container)",
            container_restarts.clone(),
        );
        let payload_checks = Counter::default();
        registry.register(
            "payload_checks",
            "Payload hash checks made",
            payload_checks.clone(),
        );
        let heartbeat_rtt = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "heartbeat_last_round_trip_seconds",
            "Round-trip of the last successful heartbeat",
            heartbeat_rtt.clone(),
        );
        // 1 ms .. ~16 s
        let heartbeat_rtt_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "heartbeat_round_trip_seconds",
            "Round-trips of successful heartbeats",
            heartbeat_rtt_seconds.clone(),
        );
        let heartbeat_failures = Counter::default();
        registry.register(
            "heartbeat_failures",
            "Heartbeats that got no answer from the registry",
            heartbeat_failures.clone(),
        );
        Self {
            registry,
            reconcile_seconds,
            actions,
            container_restarts,
            payload_checks,
            heartbeat_rtt,
            heartbeat_rtt_seconds,
            heartbeat_failures,
            restarts_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one applied action.
    pub fn action(&self, kind: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.actions
            .get_or_create(&ActionLabels { kind, result })
            .inc();
    }

    /// Records a reconcile pass and counts container restarts that went up since the last one.
    pub fn reconciled(&self, took: Duration, status: &NodeStatus) {
        self.reconcile_seconds.observe(took.as_secs_f64());
        let mut seen = self.restarts_seen.lock().unwrap_or_else(|p| p.into_inner());
        for r in status
            .resources
            .iter()
            .filter(|r| r.kind == ResourceKind::Container)
        {
            if let Some(prev) = seen.insert(r.name.clone(), r.restarts) {
                if r.restarts > prev {
                    self.container_restarts.inc_by(u64::from(r.restarts - prev));
                }
            }
        }
    }

    /// Records a heartbeat's round-trip, or a failed heartbeat.
    pub fn heartbeat(&self, rtt: Option<Duration>) {
        match rtt {
            Some(d) => {
                self.heartbeat_rtt.set(d.as_secs_f64());
                self.heartbeat_rtt_seconds.observe(d.as_secs_f64());
            }
            None => {
                self.heartbeat_failures.inc();
            }
        }
    }

    /// The exposition: OpenMetrics, or the Prometheus text format 0.0.4 (what
    /// `promtool check metrics` reads).
    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if openmetrics {
            out
        } else {
            to_prometheus_text(&out)
        }
    }
}

async fn handler(headers: HeaderMap) -> impl IntoResponse {
    let om = wants_openmetrics(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let ct = if om {
        OPENMETRICS_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    ([(header::CONTENT_TYPE, ct)], get().render(om))
}

/// Binds `addr` and serves `GET /metrics` on it until the task is dropped.
pub async fn serve(addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(handler));
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values() {
        assert_eq!(parse_listen("off").unwrap(), None);
        assert_eq!(
            parse_listen("127.0.0.1:9475").unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 9475)))
        );
        assert!(parse_listen("localhost")
            .unwrap_err()
            .to_string()
            .contains("neither"));
    }

    #[test]
    fn renders_counters_with_total_names() {
        let m = Metrics::new();
        m.action("create", true);
        m.heartbeat(Some(Duration::from_millis(3)));
        let mut st = NodeStatus::default();
        let mut r = steward_proto::ResourceStatus::new(
            ResourceKind::Container,
            "web",
            steward_proto::ResourceState::Converged,
            None,
        );
        r.restarts = 1;
        st.resources.push(r);
        m.reconciled(Duration::from_millis(20), &st);
        st.resources[0].restarts = 3;
        m.reconciled(Duration::from_millis(20), &st);
        let text = m.render(false);
        for want in [
            "# TYPE steward_agent_actions_total counter",
            "steward_agent_actions_total{kind=\"create\",result=\"ok\"} 1",
            "steward_agent_container_restarts_total 2",
            "steward_agent_payload_checks_total 0",
            "steward_agent_reconcile_duration_seconds_count 2",
            "steward_agent_heartbeat_last_round_trip_seconds 0.003",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
        assert!(!text.contains("# EOF"));
        assert!(m.render(true).ends_with("# EOF\n"));
    }
}
