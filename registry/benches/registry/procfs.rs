//! Counters of processes and of the machine, read from /proc.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

/// Linux USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on every mainstream arch).
pub const CLK_TCK: f64 = 100.0;

/// A sample of a process's counters from /proc.
#[derive(Clone, Copy, Debug)]
pub struct Snap {
    pub at: Instant,
    /// utime + stime of the process, in clock ticks.
    pub cpu_ticks: u64,
    /// utime + stime of this (load-generating) process.
    pub self_ticks: u64,
    pub rss_kib: u64,
    /// /proc/<pid>/io write_bytes: bytes the process caused to be written to storage.
    pub write_bytes: u64,
    /// Busy ticks of the whole machine (all CPUs) from /proc/stat.
    pub machine_ticks: u64,
}

impl Snap {
    pub fn take(pid: u32) -> Snap {
        Snap {
            at: Instant::now(),
            cpu_ticks: cpu_ticks(&pid.to_string()).unwrap_or(0),
            self_ticks: cpu_ticks("self").unwrap_or(0),
            rss_kib: rss_kib(pid).unwrap_or(0),
            write_bytes: io_write_bytes(pid).unwrap_or(0),
            machine_ticks: machine_busy_ticks().unwrap_or(0),
        }
    }

    /// CPU seconds used on the machine since `earlier` by everything except the target and
    /// this process (other processes; noise when it is not about 0).
    pub fn others_since(&self, earlier: &Snap) -> f64 {
        let all = self.machine_ticks.saturating_sub(earlier.machine_ticks);
        let ours = self.cpu_ticks.saturating_sub(earlier.cpu_ticks)
            + self.self_ticks.saturating_sub(earlier.self_ticks);
        all.saturating_sub(ours) as f64 / CLK_TCK
    }

    /// (cpu seconds of the target, cpu seconds of this process, wall seconds) since `earlier`.
    pub fn cpu_since(&self, earlier: &Snap) -> (f64, f64, f64) {
        (
            self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / CLK_TCK,
            self.self_ticks.saturating_sub(earlier.self_ticks) as f64 / CLK_TCK,
            self.at.duration_since(earlier.at).as_secs_f64(),
        )
    }
}

fn cpu_ticks(pid: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &s[s.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime field 15 (1-based); rest starts at field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// user + nice + system + irq + softirq + steal of the `cpu` line of /proc/stat.
fn machine_busy_ticks() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let line = s
        .lines()
        .next()
        .ok_or_else(|| anyhow!("empty /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Ok([0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum())
}

/// Waits (at most `max`) until the process has written nothing to storage and used at most
/// 5 ticks of CPU during one second. Returns the time waited and the bytes it wrote meanwhile.
pub async fn settle(pid: u32, max: Duration) -> (Duration, u64) {
    let start = Instant::now();
    let first = Snap::take(pid);
    loop {
        let a = Snap::take(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = Snap::take(pid);
        let quiet = b.write_bytes == a.write_bytes && b.cpu_ticks.saturating_sub(a.cpu_ticks) <= 5;
        if quiet || start.elapsed() >= max {
            return (
                start.elapsed(),
                b.write_bytes.saturating_sub(first.write_bytes),
            );
        }
    }
}

pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn io_write_bytes(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .ok_or_else(|| anyhow!("no write_bytes"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Total size of the files under `p` (apparent size).
pub fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// System-wide TcpExt ListenOverflows (accept queue full: the SYN is dropped and the client
/// retries after 1 s). Only this benchmark's traffic should be on the machine.
pub fn listen_overflows() -> u64 {
    let s = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = s.lines();
    while let (Some(h), Some(v)) = (lines.next(), lines.next()) {
        if !h.starts_with("TcpExt:") {
            continue;
        }
        let pos = h.split_whitespace().position(|k| k == "ListenOverflows");
        if let Some(v) = pos.and_then(|p| v.split_whitespace().nth(p)) {
            return v.parse().unwrap_or(0);
        }
    }
    0
}
