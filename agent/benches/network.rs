//! Host-network bench: the real release `steward-agent` converging 100 bridges (each with a
//! veth port, an address and the Steward alias) in a fresh network namespace, side by side in
//! the same run with the same changes made by one `ip` process per change and by one
//! `ip -batch`; then a no-op re-apply of the converged spec.
//!
//! `cargo bench -p steward-agent --bench network [-- --quick]` (root; `STEWARD_BENCH_BRIDGES`
//! changes the count, `STEWARD_BENCH_AGENT` runs another agent binary). Each round builds a fresh
//! namespace per method with the veth pairs made beforehand (not timed). The agent is timed from
//! inside (its `took_us`, the network phases of `apply`) and as the wall time of the whole process;
//! `ip` only as wall time. Medians over the rounds are printed, and written to
//! `target/bench-results/network.json`. Goals (reported, not asserted): agent ≥ 10× faster than
//! ip-per-change, ≤ 1.5× `ip -batch`, no-op re-apply ≤ 1/20 of the create. A run where the agent
//! does not converge, or writes on the no-op, fails.
//! The running agent (`apply --watch`, netlink event listener on) is measured too: its create,
//! and re-applies (SIGHUP) of the converged spec, from a dump and from the event-fed cache.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!(
            "steward-bench-{tag}-{:06x}",
            rand::random::<u32>() & 0xffffff
        );
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }

    /// `ip -n <ns> -batch <file>` of `lines`.
    fn batch(&self, lines: &[String], dir: &Path) -> Duration {
        let f = dir.join(format!("{}.batch", self.0));
        std::fs::write(&f, lines.join("\n") + "\n").unwrap();
        let t = Instant::now();
        run("ip", &["-n", &self.0, "-batch", f.to_str().unwrap()]);
        t.elapsed()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn veths(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("link add vb{i} type veth peer name vbp{i}"))
        .collect()
}

/// The changes the spec asks for, as `ip` commands: the same four writes per bridge the agent
/// makes (create up; alias; address; enslave).
fn changes(n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(format!("link add bn{i} up type bridge"));
        out.push(format!("link set dev bn{i} alias steward:local"));
        out.push(format!(
            "addr add 10.{}.{}.1/24 dev bn{i}",
            100 + i / 256,
            i % 256
        ));
        out.push(format!("link set dev vb{i} master bn{i}"));
    }
    out
}

fn spec(n: usize) -> String {
    let mut s = String::from("networks:\n  bridges:\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "    - {{name: bn{i}, addresses: [10.{}.{}.1/24], ports: [{{iface: vb{i}}}]}}",
            100 + i / 256,
            i % 256
        );
    }
    s
}

struct AgentRun {
    wall: Duration,
    inside: Duration,
    writes: u64,
}

/// The agent binary: cargo's release build of this package, or `STEWARD_BENCH_AGENT` (to
/// compare another build in the same way).
fn agent_bin() -> std::ffi::OsString {
    std::env::var_os("STEWARD_BENCH_AGENT")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_steward-agent").into())
}

fn agent(ns: &Ns, data: &Path, spec: &Path) -> AgentRun {
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(agent_bin())
        .arg("--data-dir")
        .arg(data)
        .args([
            "--docker-socket",
            "/nonexistent/docker.sock",
            "apply",
            "--json",
            "--file",
        ])
        .arg(spec)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let wall = t.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the agent did not converge:\n{log}");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("networks reconciled"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    let num = |key: &str| -> u64 {
        let at = line.find(&format!("{key}=")).unwrap() + key.len() + 1;
        line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    AgentRun {
        wall,
        inside: Duration::from_micros(num("took_us")),
        writes: num("netlink_writes"),
    }
}

/// The `networks reconciled` lines of a log.
fn passes(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("networks reconciled"))
        .map(str::to_string)
        .collect()
}

fn field(line: &str, key: &str) -> String {
    let at = line.find(&format!(" {key}=")).unwrap() + key.len() + 2;
    line[at..].split_whitespace().next().unwrap().to_string()
}

fn wait_pass(log: &Path, index: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = passes(log).get(index) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no pass {index} in the agent's log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The running agent (`apply --watch`, event listener on): the create pass, then re-applies
/// (SIGHUP) of the converged spec until one reuses the observed links (`observed=events`;
/// kernel events of the new links, IPv6 DAD among them, rightly force dumps for a moment).
/// Returns (create, first no-op pass (dump), no-op from the event-fed cache), inside times.
fn watch_agent(ns: &Ns, data: &Path, spec: &Path) -> (Duration, Duration, Duration) {
    let log = data.with_extension("log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(agent_bin())
        .arg("--data-dir")
        .arg(data)
        .args([
            "--docker-socket",
            "/nonexistent/docker.sock",
            "--resync-interval",
            "300s",
            "apply",
            "--watch",
            "--file",
        ])
        .arg(spec)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let us = |l: &str| Duration::from_micros(field(l, "took_us").parse().unwrap());
    let create = wait_pass(&log, 0);
    assert_ne!(field(&create, "netlink_writes"), "0", "{create}");
    let mut i = 1;
    let mut first_noop = None;
    let cached = loop {
        let l = wait_pass(&log, i);
        i += 1;
        assert_eq!(field(&l, "netlink_writes"), "0", "a no-op wrote: {l}");
        if field(&l, "observed") == "events" {
            break us(&l);
        }
        first_noop.get_or_insert(us(&l));
        assert!(i < 60, "no re-apply reused the observed links");
        std::thread::sleep(Duration::from_millis(200));
        // `ip netns exec` execs the agent: the child's pid is the agent's.
        run("kill", &["-HUP", &child.id().to_string()]);
    };
    let _ = child.kill();
    let _ = child.wait();
    (us(&create), first_noop.unwrap_or(cached), cached)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let n: usize = std::env::var("STEWARD_BENCH_BRIDGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rounds = if quick { 3 } else { 7 };
    if Command::new("ip").args(["netns", "list"]).output().is_err() {
        println!("network bench: `ip` (iproute2) is missing");
        return ExitCode::FAILURE;
    }
    println!("agent: {}", std::path::Path::new(&agent_bin()).display());
    let tmp = tempfile::tempdir().unwrap();
    let spec_file = tmp.path().join("spec.yaml");
    std::fs::write(&spec_file, spec(n)).unwrap();
    let (mut a_wall, mut a_in, mut noop_wall, mut noop_in) = (vec![], vec![], vec![], vec![]);
    let (mut per_change, mut batch) = (vec![], vec![]);
    let (mut w_create, mut w_dump, mut w_cached) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        // The agent.
        let ns = Ns::new("agent");
        ns.batch(&veths(n), tmp.path());
        let data = tmp.path().join(format!("data-{round}"));
        let first = agent(&ns, &data, &spec_file);
        assert_eq!(first.writes, 4 * n as u64, "writes on create");
        let again = agent(&ns, &data, &spec_file);
        assert_eq!(again.writes, 0, "a no-op re-apply must not write");
        a_wall.push(first.wall);
        a_in.push(first.inside);
        noop_wall.push(again.wall);
        noop_in.push(again.inside);
        drop(ns);
        // The running agent.
        let ns = Ns::new("watch");
        ns.batch(&veths(n), tmp.path());
        let (c, d, e) = watch_agent(&ns, &tmp.path().join(format!("watch-{round}")), &spec_file);
        w_create.push(c);
        w_dump.push(d);
        w_cached.push(e);
        drop(ns);
        // One `ip` process per change.
        let ns = Ns::new("ip");
        ns.batch(&veths(n), tmp.path());
        let t = Instant::now();
        for c in changes(n) {
            let mut args = vec!["-n", ns.0.as_str()];
            args.extend(c.split_whitespace());
            run("ip", &args);
        }
        per_change.push(t.elapsed());
        drop(ns);
        // One `ip -batch`.
        let ns = Ns::new("batch");
        ns.batch(&veths(n), tmp.path());
        batch.push(ns.batch(&changes(n), tmp.path()));
    }
    let (aw, ai, nw, ni) = (
        median(a_wall),
        median(a_in),
        median(noop_wall),
        median(noop_in),
    );
    let (pc, b) = (median(per_change), median(batch));
    let (wc, wd, we) = (median(w_create), median(w_dump), median(w_cached));
    let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
    let mut report = format!(
        "network bench: {n} bridges, each with a veth port and an address ({} changes), median of {rounds} rounds\n",
        4 * n
    );
    let _ = writeln!(report, "{:<44} {:>10}", "method", "create ms");
    for (name, d) in [
        ("steward-agent apply, inside (took_us)", ai),
        ("steward-agent apply, process wall time", aw),
        ("ip, one process per change", pc),
        ("ip -batch, one process", b),
    ] {
        let _ = writeln!(report, "{name:<44} {:>10.1}", ms(d));
    }
    let _ = writeln!(
        report,
        "ip-per-change / agent: {:.1}x (inside) {:.1}x (wall)   goal >= 10x",
        ratio(pc, ai),
        ratio(pc, aw)
    );
    let _ = writeln!(
        report,
        "agent / ip -batch: {:.2}x (inside) {:.2}x (wall)   goal <= 1.5x",
        ratio(ai, b),
        ratio(aw, b)
    );
    let _ = writeln!(
        report,
        "no-op re-apply (0 netlink writes): {:.1} ms inside, {:.1} ms wall = 1/{:.0} of create (inside), 1/{:.0} (wall)   goal <= 1/20",
        ms(ni),
        ms(nw),
        ratio(ai, ni),
        ratio(aw, nw)
    );
    let _ = writeln!(
        report,
        "running agent (apply --watch): create {:.1} ms; no-op re-apply {:.2} ms from a dump (1/{:.0}), {:.2} ms from the event-fed cache = 1/{:.0} of create   goal <= 1/20",
        ms(wc),
        ms(wd),
        ratio(wc, wd),
        ms(we),
        ratio(wc, we)
    );
    print!("{report}");
    let out = json!({
        "bridges": n,
        "rounds": rounds,
        "create_ms": {"agent_inside": ms(ai), "agent_wall": ms(aw), "ip_per_change": ms(pc), "ip_batch": ms(b)},
        "noop_ms": {"agent_inside": ms(ni), "agent_wall": ms(nw)},
        "running_agent_ms": {"create": ms(wc), "noop_dump": ms(wd), "noop_event_cache": ms(we)},
        "ratios": {
            "ip_per_change_over_agent_inside": ratio(pc, ai),
            "ip_per_change_over_agent_wall": ratio(pc, aw),
            "agent_inside_over_ip_batch": ratio(ai, b),
            "agent_wall_over_ip_batch": ratio(aw, b),
            "create_over_noop_inside": ratio(ai, ni),
            "create_over_noop_wall": ratio(aw, nw),
            "running_create_over_noop_dump": ratio(wc, wd),
            "running_create_over_noop_event_cache": ratio(wc, we),
        },
    });
    let dir = results_dir();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("network.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    );
    let _: Value = out;
    ExitCode::SUCCESS
}

/// `<target>/bench-results/`.
fn results_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join("bench-results")
}
