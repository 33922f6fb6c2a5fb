//! HTML of one node's page: facts, stats, resources with their errors, payload hashes,
//! networks and the node's recent events. Nothing secret is shown (no spec environment, no
//! credentials, no machine id — with an enrollment token it was enough to take a node over):
//! the page is the same for every viewer.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use steward_proto::{AuditOutcome, AuditRecord, NetworksSpec, Node, ResourceState};

use super::pages::{age_cell, events, health_badge, short};
use super::view::{kind_str, Row};

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn state_str(s: ResourceState) -> &'static str {
    match s {
        ResourceState::Pending => "pending",
        ResourceState::Converged => "converged",
        ResourceState::Failed => "failed",
        ResourceState::Drifted => "drifted",
        ResourceState::Conflict => "conflict",
    }
}

fn kv(k: &str, v: Markup) -> Markup {
    html! { tr { th { (k) } td { @if v.0.is_empty() { "–" } @else { (v) } } } }
}

fn facts(n: &Node) -> Markup {
    let f = &n.facts;
    html! {
        table.kv {
            (kv("Id", html! { code { (n.id) } }))
            (kv("Kind", html! { (kind_str(f.kind)) }))
            (kv("OS", html! { (f.os) }))
            (kv("Kernel", html! { (f.kernel) }))
            (kv("Arch", html! { (f.arch) }))
            (kv("CPU", html! { (f.cpus) @if !f.cpu_model.is_empty() { " × " (f.cpu_model) } }))
            (kv("Memory", html! { (bytes(f.memory_bytes)) }))
            (kv("Docker", html! { @if f.docker { "yes" @if let Some(v) = &f.docker_version { " (" (v) ")" } } @else { "no" } }))
            (kv("KVM", html! { @if f.kvm { "yes" } @else { "no" } }))
            (kv("Agent", html! { (f.agent_version) }))
            (kv("Enrolled", html! { (n.enrolled_at.to_rfc3339()) }))
            (kv("Disks", html! {
                @for d in &f.disks { div { (d.mount_point) ": " (bytes(d.available_bytes)) " free of " (bytes(d.total_bytes)) } }
            }))
        }
    }
}

fn stats(n: &Node, now: DateTime<Utc>) -> Markup {
    html! {
        table.kv {
            (kv("Last heartbeat", age_cell(n.last_heartbeat, now)))
            (kv("Heartbeat round-trip", html! { @match n.heartbeat_rtt_ms { Some(ms) => { (format!("{ms:.1}")) " ms" }, None => "–" } }))
            (kv("Generation", html! { "observed " (n.observed_generation) " / desired " (n.generation) }))
            @if let Some(s) = &n.stats {
                (kv("CPU", html! { (format!("{:.1}", s.cpu_percent)) " %" }))
                (kv("Load", html! { (format!("{:.2} {:.2} {:.2}", s.load1, s.load5, s.load15)) }))
                (kv("Memory used", html! { (bytes(s.memory_used_bytes)) " of " (bytes(s.memory_total_bytes)) }))
                (kv("Data dir used", html! { (bytes(s.data_dir_used_bytes)) " of " (bytes(s.data_dir_total_bytes)) }))
                (kv("Uptime", html! { (humantime::format_duration(std::time::Duration::from_secs(s.uptime_secs))) }))
            } @else {
                (kv("Stats", html! { "none reported yet" }))
            }
        }
    }
}

fn resources(n: &Node) -> Markup {
    let Some(st) = &n.status else {
        return html! { p.muted { "The agent has not reported a status yet." } };
    };
    html! {
        @if st.resources.is_empty() { p.muted { "No resources." } } @else {
            table #resources.list {
                thead { tr { th { "Kind" } th { "Name" } th { "State" } th { "Restarts" } th { "Health" } th { "Escalation" } th { "Error" } } }
                tbody {
                    @for r in &st.resources {
                        @let state = state_str(r.state);
                        tr data-state=(state) {
                            td { (serde_json::to_value(r.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                            td { (r.name) }
                            td { span class={"badge s-" (state)} { (state) } }
                            td.num { (r.restarts) }
                            td { (r.health.as_deref().unwrap_or("-")) }
                            td {
                                @if let Some(e) = &r.escalation {
                                    (e.position) " (attempt " (e.attempts) ")"
                                    @if let Some(a) = &e.last_action { " · last " (a) }
                                    @if let Some(t) = e.next_step_at { " · next step " (t.format("%H:%M:%S UTC")) }
                                } @else if let Some(b) = &r.rolled_back {
                                    "rolled back from generation " (b.from_generation)
                                } @else { "-" }
                            }
                            td.err { @if let Some(e) = &r.error { (e) } }
                        }
                    }
                }
            }
        }
        @if !st.payloads.is_empty() {
            h3 { "Payloads" }
            table #payloads.list {
                thead { tr { th { "Name" } th { "Version" } th { "Path" } th { "Expected sha256" } th { "Actual sha256" } th { "" } } }
                tbody {
                    @for p in &st.payloads {
                        @let ok = p.actual.as_deref() == Some(p.expected.as_str());
                        tr data-ok=(ok) {
                            td { (p.name) } td { (p.version) } td { code { (p.path) } }
                            td { code.hash { (p.expected) } }
                            td { @match &p.actual { Some(a) => code.hash { (a) }, None => em { "missing" } } }
                            td { @if ok { span.badge.s-converged { "ok" } } @else { span.badge.drifted { "mismatch" } } }
                        }
                    }
                }
            }
        }
    }
}

fn networks(spec: &NetworksSpec, n: &Node) -> Markup {
    let observed: Vec<_> = n
        .status
        .iter()
        .flat_map(|s| &s.resources)
        .filter(|r| r.kind == steward_proto::ResourceKind::Network)
        .collect();
    let state_of = |name: &str| {
        observed
            .iter()
            .find(|r| r.name == name)
            .map(|r| state_str(r.state))
            .unwrap_or("not reported")
    };
    html! {
        @if spec.is_empty() { p.muted { "No host networks in the desired spec." } } @else {
            table #networks.list {
                thead { tr { th { "Kind" } th { "Name" } th { "Details" } th { "Addresses" } th { "State" } } }
                tbody {
                    @for b in &spec.bridges {
                        tr { td { "bridge" } td { (b.name) }
                            td { "ports: " @for p in &b.ports { (p.iface) " " } @if b.vlan_filtering { "(VLAN filtering)" } }
                            td { @for a in &b.addresses { (a) " " } } td { (state_of(&b.name)) } }
                    }
                    @for v in &spec.vlans {
                        tr { td { "vlan" } td { (v.name) } td { (v.parent) "." (v.id) }
                            td { @for a in &v.addresses { (a) " " } } td { (state_of(&v.name)) } }
                    }
                    @for l in &spec.labs {
                        @let name = format!("lab-{}", l.vlan);
                        tr { td { "lab" } td { (name) }
                            td { "VLAN " (l.vlan) @if let Some(p) = &l.parent { " on " (p) } @else { " (bridge only)" } @if let Some(b) = &l.bridge { " → " (b) } }
                            td { @if let Some(c) = &l.cidr { (c) } } td { (state_of(&name)) } }
                    }
                }
            }
        }
    }
}

/// The part of the node page that live updates replace.
pub fn detail(n: &Node, spec: &NetworksSpec, now: DateTime<Utc>) -> Markup {
    let row = Row::from_node(n);
    html! {
        section #detail data-health=(n.health.as_str()) data-drifted=(row.drifted) data-failed=(row.failed) {
            h1 {
                (n.hostname) " " (health_badge(n.health))
                @if row.drifted { " " span.badge.drifted { "drifted" } }
                @if row.failed > 0 { " " span.badge.failed { (row.failed) " failed" } }
            }
            p.labels { @for (k, v) in &n.labels { span.label { (k) "=" (v) } " " } }
            div.grid {
                div { h2 { "Facts" } (facts(n)) }
                div { h2 { "Heartbeat and stats" } (stats(n, now)) }
            }
            h2 { "Resources" }
            (resources(n))
            h2 { "Networks" }
            (networks(spec, n))
        }
    }
}

/// The writes made to the node, newest first (who, when, from where, what, how it ended).
fn audit(records: &[AuditRecord]) -> Markup {
    html! {
        section.audit {
            h2 { "Changes (audit trail)" }
            @if records.is_empty() {
                p.muted { "No writes to this node in the last 30 days." }
            } @else {
                table.audit {
                    thead { tr { th { "When" } th { "Who" } th { "From" } th { "What" } th { "Outcome" } } }
                    tbody {
                        @for r in records.iter().rev() {
                            tr {
                                td { time datetime=(r.time.to_rfc3339()) { (r.time.format("%Y-%m-%d %H:%M:%S")) } }
                                td { (r.actor) @if let Some(role) = r.role { " (" (role) ")" } }
                                td { (r.address.as_deref().unwrap_or("-")) }
                                td { (r.method) " " (r.route) }
                                td {
                                    @match r.outcome {
                                        AuditOutcome::Done => span.badge.ready { "done" },
                                        AuditOutcome::Refused => span.badge.stale { "refused" },
                                        AuditOutcome::Failed => span.badge.down { "failed" },
                                    }
                                    @if let Some(why) = &r.reason { " " span.msg { (why) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The node page; `changes` (the node's audit records) only for signed-in viewers.
pub fn page(
    n: &Node,
    spec: &NetworksSpec,
    recent: &[steward_proto::Event],
    changes: Option<&[AuditRecord]>,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        p.crumbs { a href="/" { "← Fleet" } " / " (short(&n.id)) }
        (detail(n, spec, now))
        section.recent {
            h2 { "Recent events" }
            (events(recent))
        }
        @if let Some(c) = changes { (audit(c)) }
    }
}
