//! The printed report: one table of heartbeat figures per phase (with the bare handler's run
//! and the ratios), then each phase's own figures, from the JSON results.

use serde_json::Value;

use crate::stats::table;
use crate::Config;

fn ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.1} ms"))
}

fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.1} MiB", x / 1024.0))
}

fn bytes(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.1} MiB", x / 1048576.0))
}

fn num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.0}"))
}

fn cores(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |c| format!("{c:.2}"))
}

fn hb_row(name: &str, h: &Value, reg: &Value) -> Vec<String> {
    let l = &h["latency_from_schedule"];
    vec![
        name.to_string(),
        format!("{}", h["answered"]),
        format!("{:.0}", h["answers_per_sec"].as_f64().unwrap_or(0.0)),
        ms(&l["p50_ms"]),
        ms(&l["p99_ms"]),
        ms(&l["max_ms"]),
        ms(&h["longest_gap_ms"]),
        format!("{}/{}", h["non_2xx"], h["transport_errors"]),
        cores(&reg["registry_cores"]),
        cores(&reg["other_processes_cores"]),
        bytes(&reg["write_bytes"]),
    ]
}

fn bare_row(name: &str, b: &Value) -> Vec<String> {
    let cpu = serde_json::json!({"registry_cores": b["server_cores"],
        "other_processes_cores": b["other_processes_cores"]});
    hb_row(name, &b["heartbeats"], &cpu)
}

fn ratio(r: &Value, b: &Value, key: &str) -> String {
    let (x, y) = (
        r["latency_from_schedule"][key].as_f64(),
        b["latency_from_schedule"][key].as_f64(),
    );
    match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.1}x", x / y),
        _ => "-".into(),
    }
}

/// The heartbeat table and the ratios to the bare handler.
fn heartbeats(r: &Value) -> String {
    let keys = ["a", "b", "c", "d", "", "e"];
    let mut rows = vec![bare_row("bare axum handler, first", &r["bare"])];
    let phases = r["heartbeats"].as_array().cloned().unwrap_or_default();
    for (p, k) in phases.iter().zip(keys) {
        let reg = if k.is_empty() {
            &Value::Null
        } else {
            &r[k]["registry"]
        };
        rows.push(hb_row(
            p["phase"].as_str().unwrap_or("?"),
            &p["figures"],
            reg,
        ));
    }
    rows.push(bare_row("bare axum handler, last", &r["bare_end"]));
    let mut out = table(
        &[
            "heartbeats due in",
            "answered",
            "per s",
            "p50",
            "p99",
            "max",
            "longest gap",
            "non2xx/err",
            "server cores",
            "other cores",
            "written",
        ],
        &rows,
    );
    out += "  (server cores: CPU of the registry or the bare server; other cores: CPU of every other process but\n   this load generator, i.e. the machine's other users; written: the registry's /proc/pid/io write_bytes)\n";
    for (i, name) in [(0, "a"), (1, "b")] {
        let Some(p) = phases.get(i) else { continue };
        for (which, b) in [("first", &r["bare"]), ("last", &r["bare_end"])] {
            let b = &b["heartbeats"];
            out += &format!(
                "  registry phase {name} / bare {which}: p50 {}, p99 {}, max {}\n",
                ratio(&p["figures"], b, "p50_ms"),
                ratio(&p["figures"], b, "p99_ms"),
                ratio(&p["figures"], b, "max_ms")
            );
        }
    }
    out
}

/// Timed requests as `12.3 ms (200), ...`.
fn timed_list(v: &Value) -> String {
    v.as_array()
        .map(|v| {
            v.iter()
                .map(|s| format!("{} ({})", ms(&s["ms"]), s["status"]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn phase_b(b: &Value) -> String {
    let i = &b["interference"];
    let mut out = format!(
        "  b: GET / first view {} ({}); /metrics scrapes: {}\n",
        ms(&i["first_view"]["ms"]),
        bytes(&i["first_view"]["bytes"]),
        timed_list(&i["metrics_scrapes"])
    );
    let views = &i["first_views_under_load"];
    let mut sorted: Vec<f64> = (views.as_array().into_iter().flatten())
        .filter_map(|s| s["ms"].as_f64())
        .collect();
    sorted.sort_by(f64::total_cmp);
    out += &format!(
        "  b: GET / first view every 5 s under the load above: median {}, max {}: {}\n",
        ms(&sorted.get(sorted.len() / 2).copied().into()),
        ms(&sorted.last().copied().into()),
        timed_list(views)
    );
    let n = &i["nodes_read"];
    out += &if n["paged"].as_bool() == Some(true) {
        format!(
            "  b: GET /v1/nodes paged: {} pages of {}, {} nodes, page p50 {}, max {}, total {}, {}\n",
            n["pages"],
            n["limit"],
            n["nodes"],
            ms(&n["page_ms_p50"]),
            ms(&n["page_ms_max"]),
            ms(&n["total_ms"]),
            bytes(&n["bytes"])
        )
    } else {
        format!(
            "  b: GET /v1/nodes unpaged (no cursor in the answer): {} ({}), status {}\n",
            ms(&n["ms"]),
            bytes(&n["bytes"]),
            n["status"]
        )
    };
    for p in i["live_pages"].as_array().into_iter().flatten() {
        out += &format!(
            "  b: live status page (GET /ui/events): status {}, {} events, {} received\n",
            p["status"],
            p["events"],
            bytes(&p["bytes"])
        );
    }
    let s = &i["status_changes"];
    out += &format!(
        "  b: status changes every {} ms (events flow): PUT p50 {}, p99 {}, max {}, non-2xx {}\n",
        s["every_ms"],
        ms(&s["put_latency"]["p50_ms"]),
        ms(&s["put_latency"]["p99_ms"]),
        ms(&s["put_latency"]["max_ms"]),
        s["non_2xx"]
    );
    out
}

fn phase_cdef(r: &Value) -> String {
    let c = &r["c"];
    let mut out = format!(
        "  c: {} nodes silent; after the phase: ready {} stale {} down {}; health-changed events {} -> {}; written {}, data dir +{}\n",
        c["silent_nodes"],
        num(&c["after"]["ready"]),
        num(&c["after"]["stale"]),
        num(&c["after"]["down"]),
        num(&c["before"]["health_changed_events"]),
        num(&c["after"]["health_changed_events"]),
        bytes(&c["registry"]["write_bytes"]),
        bytes(&c["registry"]["data_dir_growth_bytes"])
    );
    let f = &r["d"]["fanout"];
    out += &format!(
        "  d: {} watchers parked in {:.1} s; PUT fragment (selector: all nodes) answered in {} (status {}, {} affected, answer {});\n     \
         watchers woken after the PUT's answer (negative: before it): p50 {}, p99 {}, max {} (from the PUT sent: p99 {}); all answered {}; wrong {}\n",
        f["watchers"],
        f["park_seconds"].as_f64().unwrap_or(0.0),
        ms(&f["put_ms"]),
        f["put_status"],
        f["affected"],
        bytes(&f["put_answer_bytes"]),
        ms(&f["woken_after_put_answer_ms"]["p50"]),
        ms(&f["woken_after_put_answer_ms"]["p99"]),
        ms(&f["woken_after_put_answer_ms"]["max"]),
        ms(&f["woken_from_put_sent"]["p99_ms"]),
        ms(&f["all_answered_ms"]),
        f["wrong_answers"]
    );
    let m = &r["m"];
    out += &format!(
        "  m: {} nodes silent: after {} s ready {} stale {} down {} (written {}); after 89% came back: ready {} stale {} down {} (written {}); health-changed events {} -> {}\n",
        m["silent_nodes"],
        crate::phases::C_SECS,
        num(&m["after_down"]["ready"]),
        num(&m["after_down"]["stale"]),
        num(&m["after_down"]["down"]),
        bytes(&m["down"]["write_bytes"]),
        num(&m["after_back"]["ready"]),
        num(&m["after_back"]["stale"]),
        num(&m["after_back"]["down"]),
        bytes(&m["back"]["write_bytes"]),
        num(&m["before"]["health_changed_events"]),
        num(&m["after_back"]["health_changed_events"])
    );
    let e = &r["e"];
    out += &format!(
        "  e: kill -9 -> listening {:.2} s, /readyz 200 after {:.2} s; then every node heartbeats: written since start {}, data dir +{} since the kill; \
         health-changed events {}; health after: ready {} stale {} down {}\n",
        e["listening_seconds"].as_f64().unwrap_or(0.0),
        e["ready_seconds"].as_f64().unwrap_or(0.0),
        bytes(&e["write_bytes_since_start"]),
        bytes(&e["data_dir_growth_bytes_since_kill"]),
        num(&e["after"]["health_changed_events"]),
        num(&e["after"]["ready"]),
        num(&e["after"]["stale"]),
        num(&e["after"]["down"])
    );
    let f = &r["f"]["registry"];
    out += &format!(
        "  f: idle {:.0} s (no requests): written {}, data dir +{}, registry cores {}\n",
        f["seconds"].as_f64().unwrap_or(0.0),
        bytes(&f["write_bytes"]),
        bytes(&f["data_dir_growth_bytes"]),
        f["registry_cores"]
    );
    out
}

/// The whole report.
pub fn text(cfg: &Config, r: &Value) -> String {
    let mut out = format!(
        "\n== fleet scale: {} nodes with full statuses, heartbeats paced at {}/s over {} connections (latency from the scheduled send) ==\n",
        cfg.nodes, r["load"]["rate_per_sec"], r["load"]["connections"]
    );
    let s = &r["seed"];
    out += &format!(
        "  seed: {} (cached: {}); seeding took {} s (enrol {} s, statuses {} s), status {}-{} B, data dir {}; copy {} s, registry ready in {} s\n\n",
        r["seed_cache"].as_str().unwrap_or("?"),
        s["cached"],
        s["total_seconds"].as_f64().or(s["when_seeded"]["total_seconds"].as_f64()).unwrap_or(0.0),
        s["enrol_seconds"].as_f64().or(s["when_seeded"]["enrol_seconds"].as_f64()).unwrap_or(0.0),
        s["status_seconds"].as_f64().or(s["when_seeded"]["status_seconds"].as_f64()).unwrap_or(0.0),
        s["status_bytes_min"].as_u64().or(s["when_seeded"]["status_bytes_min"].as_u64()).unwrap_or(0),
        s["status_bytes_max"].as_u64().or(s["when_seeded"]["status_bytes_max"].as_u64()).unwrap_or(0),
        bytes(&s["data_dir_bytes"].as_u64().or(s["when_seeded"]["data_dir_bytes"].as_u64()).into()),
        r["start"]["copy_seconds"],
        r["start"]["ready_seconds"],
    );
    out += &heartbeats(r);
    out += "\n";
    out += &phase_b(&r["b"]);
    out += &phase_cdef(r);
    out += &format!(
        "  registry RSS: {} after phase a (seed loaded), {} after the node reads of b, {} before the kill, {} at the end\n",
        mib(&r["a"]["registry"]["rss_kib"]),
        mib(&r["b"]["interference"]["rss_kib_after_reads"]),
        mib(&r["e"]["rss_kib_before_kill"]),
        mib(&r["f"]["registry"]["rss_kib"])
    );
    out += &format!(
        "  load average: {} at start, {} at end ({} CPUs shared by registry, load generator, bare server)\n",
        r["loadavg_start"].as_str().unwrap_or("?"),
        r["loadavg_end"].as_str().unwrap_or("?"),
        r["cpus"]
    );
    out
}
