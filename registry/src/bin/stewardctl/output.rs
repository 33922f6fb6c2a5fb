//! Everything stewardctl prints: stdout writing, JSON/YAML, aligned tables, key/value listings,
//! and the small formatters (ages, sizes, labels) they use.

use std::fmt::Display;
use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use steward_proto::Labels;

use crate::error::CliError;
use crate::Ctx;

/// Writes `text` to stdout. A closed pipe (`stewardctl ... | head`) ends the process quietly.
pub fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let res = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    if let Err(e) = res {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(i32::from(crate::error::code::USAGE));
    }
}

/// Writes one line to stdout.
pub fn line(text: impl Display) {
    stdout(&format!("{text}\n"));
}

/// A note for the human on stderr (left out with `--quiet`).
pub fn note(quiet: bool, text: impl Display) {
    if !quiet {
        eprintln!("{text}");
    }
}

/// Pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Unexpected(format!("rendering JSON: {e}")))?;
    line(s);
    Ok(())
}

/// One compact JSON object per line on stdout.
pub fn json_line<T: Serialize + ?Sized>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string(v)
        .map_err(|e| CliError::Unexpected(format!("rendering JSON: {e}")))?;
    line(s);
    Ok(())
}

/// Renders a value as YAML.
pub fn to_yaml<T: Serialize + ?Sized>(v: &T) -> Result<String, CliError> {
    serde_norway::to_string(v).map_err(|e| CliError::Unexpected(format!("rendering YAML: {e}")))
}

/// YAML on stdout.
pub fn yaml<T: Serialize + ?Sized>(v: &T) -> Result<(), CliError> {
    stdout(&to_yaml(v)?);
    Ok(())
}

/// Prints an aligned table (header row, then rows) on stdout.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    stdout(&render_table(headers, rows, 0));
}

/// How a `list` command shows its items as a table.
pub struct ListView<'a, T> {
    /// What the items are, plural, for `no {what}` when there are none.
    pub what: &'a str,
    /// The column headers.
    pub headers: &'a [&'a str],
    /// The item's key, the one line printed per item with `--quiet`.
    pub key: fn(&T) -> String,
    /// The item's cells, one per header.
    pub row: &'a dyn Fn(&T) -> Vec<String>,
}

/// Prints a list the way every `list` command does: the JSON array with `--output json`, one
/// key per line with `--quiet`, `no {what}` on stderr when it is empty, else a table.
pub fn list<T: Serialize>(ctx: &Ctx, items: &[T], view: ListView<'_, T>) -> Result<(), CliError> {
    if ctx.json() {
        return json(items);
    }
    if ctx.quiet {
        items.iter().for_each(|i| line((view.key)(i)));
        return Ok(());
    }
    if items.is_empty() {
        note(false, format_args!("no {}", view.what));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items.iter().map(view.row).collect();
    table(view.headers, &rows);
    Ok(())
}

/// Aligns columns with three spaces between them; the last column is not padded.
pub fn render_table(headers: &[&str], rows: &[Vec<String>], indent: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&head).chain(rows) {
        let mut l = " ".repeat(indent);
        for (i, cell) in row.iter().enumerate() {
            l.push_str(cell);
            if i + 1 < row.len() {
                let w = widths.get(i).copied().unwrap_or(0);
                let pad = w.saturating_sub(cell.chars().count());
                l.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    }
    out
}

/// A `Key:  value` listing with aligned values; rows with an empty key continue the previous one.
pub fn render_kv(rows: &[(&str, String)], indent: usize) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let key = if k.is_empty() {
            String::new()
        } else {
            format!("{k}:")
        };
        let l = format!("{}{key:<width$}  {v}", " ".repeat(indent));
        out.push_str(l.trim_end());
        out.push('\n');
    }
    out
}

/// `4s`, `5m12s`, `3h`, `2d5h`: the largest unit, plus the next one while the first is small.
pub fn compact_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 60 {
        format!("{secs}s")
    } else if m < 10 && secs % 60 != 0 {
        format!("{m}m{}s", secs % 60)
    } else if h < 1 {
        format!("{m}m")
    } else if h < 10 && m % 60 != 0 {
        format!("{h}h{}m", m % 60)
    } else if d < 1 {
        format!("{h}h")
    } else if d < 10 && h % 24 != 0 {
        format!("{d}d{}h", h % 24)
    } else {
        format!("{d}d")
    }
}

/// How long ago `t` was, e.g. `4s ago`; times slightly in the future (clock skew) read `0s ago`.
pub fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds().max(0);
    format!("{} ago", compact_duration(secs.unsigned_abs()))
}

/// `in 23h` for a future time, `5m ago` for a past one.
pub fn relative(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    if secs > 0 {
        format!("in {}", compact_duration(secs.unsigned_abs()))
    } else {
        format!("{} ago", compact_duration(secs.unsigned_abs()))
    }
}

/// A timestamp with its relative form: `2024-05-01 12:00:00 UTC (4s ago)`.
pub fn when(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    format!(
        "{} ({})",
        t.format("%Y-%m-%d %H:%M:%S UTC"),
        relative(now, t)
    )
}

/// Binary sizes: `512 B`, `1.5 KiB`, `15.6 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `k=v,k2=v2`, or `-` when there are none.
pub fn labels(l: &Labels) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The wire name of a unit enum (`bare-metal`, `spec-written`, ...).
pub fn kebab<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// `-` for an empty string.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("valid test time")
    }

    #[test]
    fn ages_are_compact() {
        assert_eq!(ago(t(4), t(0)), "4s ago");
        assert_eq!(ago(t(0), t(0)), "0s ago");
        assert_eq!(ago(t(0), t(3)), "0s ago"); // clock skew
        assert_eq!(ago(t(65), t(0)), "1m5s ago");
        assert_eq!(ago(t(600), t(0)), "10m ago");
        assert_eq!(ago(t(3600 + 120), t(0)), "1h2m ago");
        assert_eq!(ago(t(5 * 3600), t(0)), "5h ago");
        assert_eq!(ago(t(11 * 3600 + 60), t(0)), "11h ago");
        assert_eq!(ago(t(2 * 86400 + 3 * 3600), t(0)), "2d3h ago");
        assert_eq!(ago(t(40 * 86400), t(0)), "40d ago");
    }

    #[test]
    fn relative_times_point_both_ways() {
        assert_eq!(relative(t(0), t(24 * 3600)), "in 1d");
        assert_eq!(relative(t(0), t(23 * 3600 + 59 * 60)), "in 23h");
        assert_eq!(relative(t(30), t(0)), "30s ago");
    }

    #[test]
    fn sizes_are_binary() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(16 * 1024 * 1024 * 1024), "16.0 GiB");
    }

    #[test]
    fn tables_align_and_trim() {
        let rows = vec![
            vec!["a".to_string(), "long-value".to_string(), "x".to_string()],
            vec!["bbbb".to_string(), "v".to_string(), String::new()],
        ];
        let s = render_table(&["ID", "NAME", "LAST"], &rows, 0);
        assert_eq!(
            s,
            "ID     NAME         LAST\na      long-value   x\nbbbb   v\n"
        );
    }

    #[test]
    fn kv_listing_aligns_values() {
        let s = render_kv(
            &[
                ("ID", "x".into()),
                ("Hostname", "h".into()),
                ("", "more".into()),
            ],
            2,
        );
        assert_eq!(s, "  ID:        x\n  Hostname:  h\n             more\n");
    }

    #[test]
    fn labels_and_enums_render_like_the_wire() {
        let mut l = Labels::new();
        assert_eq!(labels(&l), "-");
        l.insert("role".into(), "builder".into());
        l.insert("env".into(), "lab".into());
        assert_eq!(labels(&l), "env=lab,role=builder");
        assert_eq!(kebab(&steward_proto::NodeKind::BareMetal), "bare-metal");
    }
}
