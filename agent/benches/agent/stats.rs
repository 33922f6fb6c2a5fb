//! Summaries, /proc counters and plain-text tables.

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

/// Summary of a sample in milliseconds (or any unit).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(v: &[f64]) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Summary {
            n,
            median,
            p90: percentile(&s, 90.0),
            min: s[0],
            max: s[n - 1],
            mean: s.iter().sum::<f64>() / n as f64,
        }
    }

    pub fn json(&self) -> Value {
        json!({"n": self.n, "median": r3(self.median), "p90": r3(self.p90), "min": r3(self.min),
               "max": r3(self.max), "mean": r3(self.mean)})
    }
}

/// Nearest-rank percentile of a sorted slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A plain-text table: first column left-aligned, the others right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(w[i] - c.chars().count());
                if i == 0 {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = String::new();
    let h: Vec<String> = headers.iter().map(|s| s.to_string()).collect();
    out.push_str(&line(&h));
    out.push('\n');
    out.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1)));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// Clock ticks per second (the unit of utime/stime in /proc/<pid>/stat): sysconf(CLK_TCK),
/// as `getconf CLK_TCK` prints it.
pub fn clk_tck() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as f64,
        _ => std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0),
    }
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &s[s
        .rfind(')')
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?
        + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Busy ticks of the whole machine (all CPUs): user+nice+system+irq+softirq+steal.
pub fn machine_busy_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum()
}

/// Memory and thread counters of /proc/<pid>/status.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub threads: u64,
}

pub fn mem(pid: u32) -> Result<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let mut m = Mem::default();
    for l in s.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let n = || {
            v.split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match k {
            "VmRSS" => m.rss_kib = n(),
            "VmHWM" => m.hwm_kib = n(),
            "RssAnon" => m.anon_kib = n(),
            "RssFile" => m.file_kib = n(),
            "Threads" => m.threads = n(),
            _ => {}
        }
    }
    Ok(m)
}

/// The names of a process's threads with their counts, e.g. "tokio-rt-worker ×2, sled-io-0".
pub fn thread_names(pid: u32) -> String {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out: Vec<(String, usize)> = Vec::new();
    for n in names {
        // Numbered pools (sled-io-0, sled-io-1, ...) count as one kind.
        let kind = n.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
        let kind = if kind.ends_with('-') && kind != n {
            format!("{kind}N")
        } else {
            n
        };
        match out.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, c)) => *c += 1,
            None => out.push((kind, 1)),
        }
    }
    out.iter()
        .map(|(k, c)| {
            if *c > 1 {
                format!("{k} ×{c}")
            } else {
                k.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resident KiB of the file-backed mappings of a process: (its own executable, everything
/// else, i.e. shared libraries), from /proc/<pid>/smaps.
pub fn file_rss_split(pid: u32) -> (u64, u64) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut own, mut other) = (0, 0);
    let mut path = String::new();
    for l in smaps.lines() {
        let mut f = l.split_whitespace();
        let first = f.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path]
            path = f.nth(4).unwrap_or_default().to_string();
        } else if first == "Rss:" && path.starts_with('/') {
            let kib: u64 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            if path == exe {
                own += kib;
            } else {
                other += kib;
            }
        }
    }
    (own, other)
}

pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
