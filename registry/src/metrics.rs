//! Prometheus metrics of the registry (`GET /metrics`, OpenMetrics text): counters and the
//! heartbeat latency histogram are updated by hooks in the handlers; the fleet gauges (nodes by
//! health, drifted nodes) are computed when scraped.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use steward_proto::{EventKind, Health};

/// Content type of the exposition.
pub use steward_proto::metrics_text::OPENMETRICS_CONTENT_TYPE as CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    pub health: &'static str,
}

/// A session count's template.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateLabel {
    pub template: String,
}

/// Why a session create was refused or a session ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// What a spec write changed: `node` (its own spec) or `fragment`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: &'static str,
}

/// Every metric of the registry, with the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub nodes: Family<HealthLabel, Gauge>,
    pub drifted_nodes: Gauge,
    pub heartbeats: Counter,
    pub heartbeat_seconds: Histogram,
    pub longpoll_watchers: Gauge,
    pub spec_writes: Family<TargetLabel, Counter>,
    pub events: Family<KindLabel, Counter>,
    pub ui_sessions: Gauge,
    pub accept_errors: Counter,
    pub audit_failures: Counter,
    pub audit_dropped: Counter,
    pub sessions_created: Family<TemplateLabel, Counter>,
    pub session_refusals: Family<ReasonLabel, Counter>,
    pub sessions_ended: Family<ReasonLabel, Counter>,
    pub sessions_live: Family<TemplateLabel, Gauge>,
    pub session_start_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("steward_registry");
        let nodes = Family::<HealthLabel, Gauge>::default();
        registry.register(
            "nodes",
            "Nodes by health (ready, stale, down, decommissioned)",
            nodes.clone(),
        );
        let drifted_nodes = Gauge::default();
        registry.register(
            "drifted_nodes",
            "Nodes whose last status has a drifted resource or a payload that does not match",
            drifted_nodes.clone(),
        );
        let heartbeats = Counter::default();
        registry.register(
            "heartbeats",
            "Heartbeats received (any answer)",
            heartbeats.clone(),
        );
        // 50 µs .. ~0.4 s
        let heartbeat_seconds = Histogram::new(exponential_buckets(0.000_05, 2.5, 10));
        registry.register(
            "heartbeat_handling_seconds",
            "Time to handle one heartbeat request, body parsing included",
            heartbeat_seconds.clone(),
        );
        let longpoll_watchers = Gauge::default();
        registry.register(
            "longpoll_watchers",
            "Spec long-polls (GET spec with wait=) in flight",
            longpoll_watchers.clone(),
        );
        let spec_writes = Family::<TargetLabel, Counter>::default();
        registry.register(
            "spec_writes",
            "Accepted spec writes: a node's own spec, or a fragment (write or delete)",
            spec_writes.clone(),
        );
        let events = Family::<KindLabel, Counter>::default();
        registry.register("events", "Events logged, by kind", events.clone());
        let ui_sessions = Gauge::default();
        registry.register(
            "ui_sessions",
            "Status page login sessions alive",
            ui_sessions.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Failed accepts of new TCP connections (out of file descriptors, ...); each is logged",
            accept_errors.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Writes whose audit record could not be stored (each is logged)",
            audit_failures.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Refused writes without a valid credential or by a node secret left out of the audit trail (over 1/s)",
            audit_dropped.clone(),
        );
        let sessions_created = Family::<TemplateLabel, Counter>::default();
        registry.register(
            "sessions_created",
            "Sessions created, by template",
            sessions_created.clone(),
        );
        let session_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "session_refusals",
            "Session creates refused, by reason (the limit reached, placement, allocation, ...)",
            session_refusals.clone(),
        );
        let sessions_ended = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "sessions_ended",
            "Sessions ended, by reason (expired, deleted)",
            sessions_ended.clone(),
        );
        let sessions_live = Family::<TemplateLabel, Gauge>::default();
        registry.register(
            "sessions_live",
            "Live sessions by template (set by the jobs leader every few seconds)",
            sessions_live.clone(),
        );
        // 0.1 s .. ~2 h
        let session_start_seconds = Histogram::new(exponential_buckets(0.1, 3.0, 10));
        registry.register(
            "session_start_seconds",
            "Time from a session's create to all its workloads running",
            session_start_seconds.clone(),
        );
        Self {
            sessions_created,
            session_refusals,
            sessions_ended,
            sessions_live,
            session_start_seconds,
            registry,
            nodes,
            drifted_nodes,
            heartbeats,
            heartbeat_seconds,
            longpoll_watchers,
            spec_writes,
            events,
            ui_sessions,
            accept_errors,
            audit_failures,
            audit_dropped,
        }
    }

    /// Counts one anonymous refused write left out of the audit trail.
    pub fn audit_dropped(&self) {
        self.audit_dropped.inc();
    }

    /// Counts one audit record that could not be stored.
    pub fn audit_failed(&self) {
        self.audit_failures.inc();
    }

    pub fn session_created(&self, template: &str) {
        let template = template.to_string();
        self.sessions_created
            .get_or_create(&TemplateLabel { template })
            .inc();
    }

    pub fn session_refused(&self, reason: &'static str) {
        self.session_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn session_ended(&self, reason: &'static str) {
        self.sessions_ended
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one logged event.
    pub fn event(&self, kind: EventKind) {
        let kind = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.events.get_or_create(&KindLabel { kind }).inc();
    }

    /// Records one handled heartbeat.
    pub fn heartbeat(&self, took: Duration) {
        self.heartbeats.inc();
        self.heartbeat_seconds.observe(took.as_secs_f64());
    }

    /// Counts one accepted spec write; `target` is `node` or `fragment`.
    pub fn spec_write(&self, target: &'static str) {
        self.spec_writes
            .get_or_create(&TargetLabel { target })
            .inc();
    }

    /// Sets the fleet gauges and encodes everything as OpenMetrics text (`openmetrics`) or
    /// as the Prometheus text format 0.0.4 (what `promtool check metrics` reads).
    pub fn render(&self, by_health: &[(Health, i64)], drifted: i64, openmetrics: bool) -> String {
        for (h, n) in by_health {
            self.nodes
                .get_or_create(&HealthLabel { health: h.as_str() })
                .set(*n);
        }
        self.drifted_nodes.set(drifted);
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

use steward_proto::metrics_text::to_prometheus_text;
pub use steward_proto::metrics_text::{wants_openmetrics, TEXT_CONTENT_TYPE};

/// Counts a long-poll watcher while alive (decrements when dropped, even when the request is
/// cancelled).
pub struct WatcherGuard(Gauge);

impl WatcherGuard {
    pub fn new(g: &Gauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.heartbeat(Duration::from_micros(300));
        m.event(EventKind::StatusChanged);
        m.spec_write("node");
        let text = m.render(&[(Health::Ready, 3), (Health::Stale, 1)], 1, false);
        assert!(text.contains("# TYPE steward_registry_heartbeats_total counter"));
        assert!(!text.contains("# EOF"));
        let om = m.render(&[], 1, true);
        assert!(
            om.contains("# TYPE steward_registry_heartbeats counter") && om.ends_with("# EOF\n")
        );
        for want in [
            "steward_registry_nodes{health=\"ready\"} 3",
            "steward_registry_drifted_nodes 1",
            "steward_registry_heartbeats_total 1",
            "steward_registry_heartbeat_handling_seconds_count 1",
            "steward_registry_events_total{kind=\"status-changed\"} 1",
            "steward_registry_spec_writes_total{target=\"node\"} 1",
            "steward_registry_longpoll_watchers 0",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
    }
}
