//! Latency percentiles and plain-text tables.

use std::time::Duration;

use serde_json::{json, Value};

/// Latency summary in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Lat {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Lat {
    pub fn of(mut v: Vec<Duration>) -> Lat {
        if v.is_empty() {
            return Lat::default();
        }
        v.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let sum: f64 = v.iter().map(|d| ms(*d)).sum();
        Lat {
            n: v.len(),
            p50: ms(percentile(&v, 50.0)),
            p99: ms(percentile(&v, 99.0)),
            max: ms(v[v.len() - 1]),
            mean: sum / v.len() as f64,
        }
    }

    pub fn json(&self) -> Value {
        json!({"n": self.n, "p50_ms": r3(self.p50), "p99_ms": r3(self.p99), "max_ms": r3(self.max), "mean_ms": r3(self.mean)})
    }
}

/// Nearest-rank percentile of a sorted slice.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to 3 decimals (for JSON).
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A plain-text table: first column left-aligned, the others right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<0$}", w[i])
                } else {
                    format!("{c:>0$}", w[i])
                }
            })
            .collect();
        format!("  {}\n", parts.join("  "))
    };
    let mut out = line(headers.to_vec());
    out += &format!(
        "  {}\n",
        "-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1))
    );
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
