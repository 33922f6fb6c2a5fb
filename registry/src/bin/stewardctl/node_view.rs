//! The readable listing of `stewardctl nodes get`: identity, facts, host statistics, resources
//! and payloads of one node.

use chrono::{DateTime, Utc};
use steward_proto::{HostStats, Node, NodeFacts, NodeStatus};

use crate::output::{bytes, kebab, labels, or_dash, render_kv, render_table, when};

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// The readable listing of `nodes get`.
pub fn describe(n: &Node, now: DateTime<Utc>) -> String {
    let mut out = describe_head(n, now);
    out.push_str("\nFacts:\n");
    out.push_str(&render_kv(&facts(&n.facts), 2));
    if let Some(s) = &n.stats {
        out.push_str("\nStats:\n");
        out.push_str(&render_kv(&stats(s), 2));
    }
    match &n.status {
        None => out.push_str("\nResources: no status reported yet\n"),
        Some(st) => describe_status(st, &mut out),
    }
    if !n.drift.is_empty() {
        out.push_str("\nDrift:\n");
        let rows: Vec<Vec<String>> = n
            .drift
            .iter()
            .map(|d| vec![kebab(&d.kind), d.name.clone(), d.detail.clone()])
            .collect();
        out.push_str(&render_table(&["KIND", "NAME", "DETAIL"], &rows, 2));
    }
    out
}

/// Identity, health, heartbeat, generation, drift and progress.
fn describe_head(n: &Node, now: DateTime<Utc>) -> String {
    let sync = if n.generation == n.observed_generation {
        "in sync"
    } else {
        "not yet applied"
    };
    let heartbeat = match (n.last_heartbeat, n.heartbeat_rtt_ms) {
        (None, _) => "never".to_string(),
        (Some(t), None) => when(now, t),
        (Some(t), Some(rtt)) => format!("{}, rtt {rtt:.1} ms", when(now, t)),
    };
    let mut head = vec![
        ("ID", n.id.clone()),
        ("Hostname", or_dash(&n.hostname)),
        ("Health", n.health.to_string()),
        ("Labels", labels(&n.labels)),
        ("Enrolled", when(now, n.enrolled_at)),
        ("Last heartbeat", heartbeat),
        (
            "Generation",
            format!(
                "{} (observed {}, {sync})",
                n.generation, n.observed_generation
            ),
        ),
        (
            "Drift",
            if n.drifted {
                format!("DRIFTED ({} resource(s), listed below)", n.drift.len())
            } else {
                "none".into()
            },
        ),
    ];
    if let Some(p) = &n.progress {
        let row = format!(
            "generation {}: {} of {} actions done so far ({}), started {}",
            p.generation,
            p.done,
            p.total,
            p.phase,
            when(now, p.started_at)
        );
        head.insert(7, ("Applying", row));
    }
    render_kv(&head, 0)
}

/// The facts the agent reported.
fn facts(f: &NodeFacts) -> Vec<(&'static str, String)> {
    let disks: Vec<String> = f
        .disks
        .iter()
        .map(|d| {
            format!(
                "{}: {} free of {}",
                d.mount_point,
                bytes(d.available_bytes),
                bytes(d.total_bytes)
            )
        })
        .collect();
    let mut facts = vec![
        ("Machine ID", or_dash(&f.machine_id)),
        ("Kind", kebab(&f.kind)),
        ("OS", or_dash(&f.os)),
        ("Kernel", or_dash(&f.kernel)),
        ("Arch", or_dash(&f.arch)),
        ("CPU", format!("{} x {}", f.cpus, or_dash(&f.cpu_model))),
        ("Memory", bytes(f.memory_bytes)),
    ];
    for (i, d) in disks.into_iter().enumerate() {
        facts.push((if i == 0 { "Disks" } else { "" }, d));
    }
    facts.extend([
        (
            "Docker",
            match &f.docker_version {
                Some(v) if f.docker => format!("yes ({v})"),
                _ => yes_no(f.docker),
            },
        ),
        ("KVM", yes_no(f.kvm)),
        ("Agent", or_dash(&f.agent_version)),
    ]);
    facts
}

/// The host statistics of the last heartbeat.
fn stats(s: &HostStats) -> Vec<(&'static str, String)> {
    let used = |u: u64, t: u64| format!("{} of {}", bytes(u), bytes(t));
    vec![
        ("CPU", format!("{:.1}%", s.cpu_percent)),
        (
            "Load",
            format!("{:.2} {:.2} {:.2}", s.load1, s.load5, s.load15),
        ),
        ("Memory", used(s.memory_used_bytes, s.memory_total_bytes)),
        (
            "Data dir",
            used(s.data_dir_used_bytes, s.data_dir_total_bytes),
        ),
        (
            "Uptime",
            humantime::format_duration(std::time::Duration::from_secs(s.uptime_secs)).to_string(),
        ),
    ]
}

fn describe_status(st: &NodeStatus, out: &mut String) {
    if st.resources.is_empty() {
        out.push_str(&format!(
            "\nResources (observed generation {}): none\n",
            st.observed_generation
        ));
    } else {
        out.push_str(&format!(
            "\nResources (observed generation {}):\n",
            st.observed_generation
        ));
        let rows: Vec<Vec<String>> = st
            .resources
            .iter()
            .map(|r| {
                vec![
                    kebab(&r.kind),
                    r.name.clone(),
                    kebab(&r.state),
                    r.restarts.to_string(),
                    r.health.clone().unwrap_or_else(|| "-".into()),
                    match (&r.escalation, &r.rolled_back) {
                        (Some(e), _) => format!(
                            "{} ({}){}",
                            e.position,
                            e.attempts,
                            e.next_step_at
                                .map(|t| format!(", next {}", t.format("%H:%M:%S")))
                                .unwrap_or_default()
                        ),
                        (None, Some(b)) => format!("rolled back from gen {}", b.from_generation),
                        _ => "-".into(),
                    },
                    r.error.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &[
                "KIND",
                "NAME",
                "STATE",
                "RESTARTS",
                "HEALTH",
                "ESCALATION",
                "ERROR",
            ],
            &rows,
            2,
        ));
    }
    if !st.payloads.is_empty() {
        out.push_str("\nPayloads:\n");
        let rows: Vec<Vec<String>> = st
            .payloads
            .iter()
            .map(|p| {
                let state = match &p.actual {
                    None => "missing",
                    Some(a) if *a == p.expected => "ok",
                    Some(_) => "mismatch",
                };
                vec![
                    p.name.clone(),
                    p.version.clone(),
                    p.path.clone(),
                    state.to_string(),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["NAME", "VERSION", "PATH", "STATE"],
            &rows,
            2,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(extra: serde_json::Value) -> Node {
        let mut v = serde_json::json!({
            "id": "n1", "hostname": "h1", "labels": {"role": "builder"},
            "facts": {"hostname": "h1", "kind": "bare-metal", "cpus": 8,
                      "disks": [{"mount_point": "/", "total_bytes": 2048, "available_bytes": 1024},
                                {"mount_point": "/data", "total_bytes": 4096, "available_bytes": 0}]},
            "health": "stale", "enrolled_at": "2024-05-01T12:00:00Z",
            "generation": 3, "observed_generation": 2
        });
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        serde_json::from_value(v).expect("test node decodes")
    }

    #[test]
    fn describes_a_node_without_status() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:10Z")
            .expect("valid time")
            .with_timezone(&Utc);
        let s = describe(&node(serde_json::json!({})), now);
        assert!(s.contains("Last heartbeat:  never\n"), "{s}");
        assert!(
            s.contains("Generation:      3 (observed 2, not yet applied)\n"),
            "{s}"
        );
        assert!(
            s.contains("Enrolled:        2024-05-01 12:00:00 UTC (10s ago)\n"),
            "{s}"
        );
        assert!(
            s.contains("  Disks:       /: 1.0 KiB free of 2.0 KiB\n"),
            "{s}"
        );
        assert!(
            s.contains("               /data: 0 B free of 4.0 KiB\n"),
            "{s}"
        );
        assert!(s.contains("Resources: no status reported yet"), "{s}");
        assert!(s.contains("Drift:           none\n"), "{s}");
    }

    #[test]
    fn describes_the_pass_in_progress() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:10Z")
            .expect("valid time")
            .with_timezone(&Utc);
        let p = serde_json::json!({"progress": {"generation": 3, "done": 12, "total": 40,
            "phase": "containers", "started_at": "2024-05-01T12:00:04Z"}});
        let s = describe(&node(p), now);
        assert!(
            s.contains(
                "Applying:        generation 3: 12 of 40 actions done so far (containers), \
                 started 2024-05-01 12:00:04 UTC (6s ago)\n"
            ),
            "{s}"
        );
        let s = describe(&node(serde_json::json!({})), now);
        assert!(!s.contains("Applying"), "no pass, no line: {s}");
    }

    #[test]
    fn describes_payload_drift() {
        let e = "a".repeat(64);
        let st = serde_json::json!({"drifted": true, "drift": [
            {"kind": "payload", "name": "tc", "path": "/opt/tc", "expected": e,
             "detail": "/opt/tc: file missing"}
        ]});
        let s = describe(&node(st), Utc::now());
        assert!(s.contains("Drift:           DRIFTED (1 resource(s)"), "{s}");
        assert!(
            s.contains("  payload   tc     /opt/tc: file missing"),
            "{s}"
        );
    }

    #[test]
    fn describes_resources_with_their_errors() {
        let st = serde_json::json!({"status": {"observed_generation": 2, "resources": [
            {"kind": "vm", "name": "v1", "state": "failed", "error": "qemu exited 1", "restarts": 3,
             "health": "unhealthy"},
            {"kind": "container", "name": "c1", "state": "failed", "error": "failed: stopped",
             "escalation": {"position": "failed", "attempts": 0}}
        ]}});
        let s = describe(&node(st), Utc::now());
        assert!(s.contains("Resources (observed generation 2):"), "{s}");
        let line = |name: &str| {
            s.lines()
                .find(|l| l.contains(&format!(" {name} ")))
                .unwrap_or_else(|| panic!("{name}: {s}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("v1"), "vm v1 failed 3 unhealthy - qemu exited 1");
        assert_eq!(
            line("c1"),
            "container c1 failed 0 - failed (0) failed: stopped"
        );
    }
}
