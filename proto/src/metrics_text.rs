//! The Prometheus exposition formats both binaries serve on `/metrics`: content negotiation
//! and the conversion of prometheus-client's OpenMetrics output to text format 0.0.4.

/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// OpenMetrics text to the Prometheus text format 0.0.4: counter families are named with
/// their `_total` suffix (as their samples are), `# UNIT` and `# EOF` lines go. (promtool 2.42
/// refuses OpenMetrics-style counter headers in the text format.)
pub fn to_prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 64);
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_headers_and_openmetrics_lines_go() {
        let om = "# HELP x_events Events.\n# TYPE x_events counter\nx_events_total 3\n# HELP g A gauge.\n# TYPE g gauge\n# UNIT g seconds\ng 1\n# EOF\n";
        let want = "# HELP x_events_total Events.\n# TYPE x_events_total counter\nx_events_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n";
        assert_eq!(to_prometheus_text(om), want);
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
