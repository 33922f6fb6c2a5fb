//! Part 4 of the isolation bench: the running agent (`apply --watch --file`, the daemon's
//! reconcile loop) with the 100 isolated labs: the pass that creates them (links and table),
//! then re-applies of the same spec on SIGHUP, as a running agent re-applies an unchanged
//! spec. Each figure is the pass's own `took_us` (the network phases) and its `isolation_us`
//! (the part spent on the nftables table); a re-apply counts only
//! when it wrote nothing (0 netlink, 0 nft) — the first ones after the create may still be
//! woken by the kernel's events for the new links and dump them.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{agent_bin, labs, Ns, Proc};

/// The passes' figures, in µs: the create, and each no-op re-apply (with how it observed
/// the links: `events` or `dump`).
pub struct Daemon {
    pub create_us: u64,
    pub noops: Vec<(u64, String)>,
    /// The isolation part (`isolation_us`) of the create pass and of each no-op.
    pub create_isolation_us: u64,
    pub noop_isolation_us: Vec<u64>,
}

/// The `networks reconciled` lines of `log` so far.
fn passes(log: &Path) -> Vec<String> {
    (std::fs::read_to_string(log).unwrap_or_default().lines())
        .filter(|l| l.contains("networks reconciled"))
        .map(str::to_string)
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line.find(&format!(" {key}=")).unwrap() + key.len() + 2;
    line[at..].split_whitespace().next().unwrap()
}

fn wait_line(log: &Path, index: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = passes(log).get(index) {
            return l.clone();
        }
        assert!(Instant::now() < deadline, "no pass {index} in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn daemon(dir: &Path, rounds: usize) -> Daemon {
    let ns = Ns::new("daemon");
    let spec = dir.join("daemon.yaml");
    std::fs::write(&spec, labs([], 101..=200)).unwrap();
    let log = dir.join("daemon.log");
    let child = ns
        .cmd(agent_bin())
        .arg("--data-dir")
        .arg(dir.join("daemon-data"))
        .args(["--docker-socket", "/nonexistent/docker.sock"])
        .args(["--resync-interval", "3600s", "apply", "--watch", "--file"])
        .arg(&spec)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _agent = Proc(child);
    let first = wait_line(&log, 0);
    assert_eq!(field(&first, "nft_writes"), "1", "{first}");
    let create_us = field(&first, "took_us").parse().unwrap();
    let create_isolation_us = field(&first, "isolation_us").parse().unwrap();
    let mut noop_isolation_us = Vec::new();
    // Let the new links' own events (IPv6 DAD, ...) settle.
    std::thread::sleep(Duration::from_secs(3));
    let mut noops = Vec::new();
    for _ in 0..rounds * 4 {
        if noops.len() == rounds {
            break;
        }
        let n = passes(&log).len();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let line = wait_line(&log, n);
        if field(&line, "netlink_writes") == "0" && field(&line, "nft_writes") == "0" {
            let us = field(&line, "took_us").parse().unwrap();
            noops.push((us, field(&line, "observed").to_string()));
            noop_isolation_us.push(field(&line, "isolation_us").parse().unwrap());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Daemon {
        create_us,
        noops,
        create_isolation_us,
        noop_isolation_us,
    }
}
