//! Network-isolation bench: the real release `steward-agent` programming its nftables table
//! `inet steward` for 100 isolated labs, side by side in the same run with `nft -f` of the
//! same ruleset; the no-op re-apply of the isolated spec; and the throughput of traffic routed
//! between two open labs while 100 other labs are isolated (every forwarded packet goes
//! through the table's forward chain: its fast path) against no table at all. Everything runs in fresh network namespaces,
//! never the host's; they are deleted on drop, also when the bench panics.
//!
//! `cargo bench -p steward-agent --bench isolation [-- --quick]` (root; needs `ip`, `nft`, and
//! `iperf3` for the throughput part, which is skipped with a message without it;
//! `STEWARD_BENCH_AGENT` runs another agent binary).
//!
//! 1. Create: a namespace with 100 bridge-only labs (`{vlan: N}`, N in 101..=200) made once
//!    with isolation open (not timed), then per round, in an order rotating between rounds:
//!    (a) `steward-agent apply --file` of the same labs with `isolation: isolated` (the table
//!    goes from absent to 3 sets of the 100 bridges and 9 rules over them), (b) `nft -f`
//!    of the same ruleset as text (what `nft list table inet steward` printed after (a)), and
//!    for reference `nft -f` of the same isolation written without sets, one rule per bridge
//!    and hook (603 rules: the agent's table before sets, and what one writes by hand),
//!    recreating the table from nothing, and (c) the agent's apply of the open spec with the
//!    links already there (no nft work at all: the baseline an apply costs). The agent is timed
//!    from inside (its `took_us`, the network phases of `apply`) and as the wall time of the
//!    whole process; `nft` only as wall time. All processes run through `ip netns exec`, whose
//!    own cost is shown. Agent minus baseline is the agent's nft part.
//! 2. No-op: right after (a), the isolated spec applied again (the table is right and the
//!    agent knows it from the ruleset generation it kept: neither listed nor written; asserted
//!    `nft_writes=0`, `netlink_writes=0`), against the create of (a).
//! 3. Throughput: labs 101 and 102 open with a guest namespace each (A on 101, B on 102, the
//!    namespace routing between them), labs 103..=202 isolated; `iperf3 -c` from A to B with the
//!    table in place and with no table at all (the spec with every lab open), alternating.
//! 4. Run first: the running agent (`apply --watch`): its create pass of the 100 isolated
//!    labs, then SIGHUP re-applies of the same spec (`isolation/daemon.rs`), each pass's own
//!    `took_us`.
//!
//! Medians are printed, and written to `target/bench-results/isolation.json`. Goals (reported,
//! never asserted): agent's nft part ≤ 1.5× `nft -f`, no-op ≤ 1/20 of the create, throughput
//! with the rules ≥ 0.9× without.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "isolation/create.rs"]
mod create;
#[path = "isolation/daemon.rs"]
mod daemon;

use create::create;

/// A fresh network namespace with `lo` up, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!(
            "steward-bench-{tag}-{:06x}",
            rand::random::<u32>() & 0xffffff
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `program` run inside the namespace.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.0).args(args))
    }

    fn nft(&self, args: &[&str]) -> String {
        run(self.cmd("nft").args(args))
    }

    /// The wall time of `cmd` (run in the namespace), asserting success.
    fn time(&self, program: &str, args: &[&str]) -> Duration {
        let t = Instant::now();
        run(self.cmd(program).args(args));
        t.elapsed()
    }

    fn has_table(&self) -> bool {
        (self.nft(&["list", "tables"]).lines()).any(|l| l.trim() == "table inet steward")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `c`, asserting success; its stdout.
fn run(c: &mut Command) -> String {
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether `program flag` runs (`ip -V`, `nft --version`, ...).
fn have(program: &str, flag: &str) -> bool {
    Command::new(program)
        .arg(flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Bridge-only labs (`br<vlan>`, subnet `192.168.<vlan>.0/24`): `open` ones, then `isolated` ones.
fn labs(open: impl IntoIterator<Item = u16>, isolated: impl IntoIterator<Item = u16>) -> String {
    let mut s = String::from("networks:\n  labs:\n");
    for v in open {
        let _ = writeln!(s, "    - {{vlan: {v}}}");
    }
    for v in isolated {
        let _ = writeln!(s, "    - {{vlan: {v}, isolation: isolated}}");
    }
    s
}

struct AgentRun {
    wall: Duration,
    inside: Duration,
    /// The part of `inside` spent on isolation.
    isolation: Duration,
    netlink_writes: u64,
    nft_writes: u64,
}

/// The agent binary: cargo's release build of this package, or `STEWARD_BENCH_AGENT`.
fn agent_bin() -> std::ffi::OsString {
    std::env::var_os("STEWARD_BENCH_AGENT")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_steward-agent").into())
}

/// `steward-agent apply --file spec` in `ns`: its wall time and its summary line's figures.
fn agent(ns: &Ns, data: &Path, spec: &Path) -> AgentRun {
    let t = Instant::now();
    let out = ns
        .cmd(agent_bin())
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
    let line = (log.lines().rev())
        .find(|l| l.contains("networks reconciled"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    let num = |key: &str| -> u64 {
        let at = line.find(&format!(" {key}=")).unwrap() + key.len() + 2;
        (line[at..].chars())
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    AgentRun {
        wall,
        inside: Duration::from_micros(num("took_us")),
        isolation: Duration::from_micros(num("isolation_us")),
        netlink_writes: num("netlink_writes"),
        nft_writes: num("nft_writes"),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(x: Duration, y: Duration) -> f64 {
    x.as_secs_f64() / y.as_secs_f64()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `iperf3 -c` from `from` to `to` for `secs`: Gbit/s received.
fn iperf(from: &Ns, to: &str, secs: u32) -> f64 {
    let out = run(from
        .cmd("iperf3")
        .args(["-c", to, "-J", "-t", &secs.to_string()]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput in {out}"))
        / 1e9
}

/// A guest namespace behind `port`, a veth in `host` made a port of `bridge`, at `ip`/24 with a
/// default route via `gateway`.
fn guest(host: &Ns, port: &str, bridge: &str, ip: &str, gateway: &str) -> Ns {
    let g = Ns::new("guest");
    host.ip(&[
        "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &g.0,
    ]);
    host.ip(&["link", "set", port, "master", bridge]);
    host.ip(&["link", "set", port, "up"]);
    g.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    g.ip(&["link", "set", "eth0", "up"]);
    g.ip(&["route", "add", "default", "via", gateway]);
    g
}

/// Part 3: Gbit/s with the 100 isolated labs' rules, and with no table; each a list of runs.
fn throughput(dir: &Path, runs: usize, secs: u32) -> (Vec<f64>, Vec<f64>) {
    let ns = Ns::new("fwd");
    run(ns.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    let rules = dir.join("fwd-rules.yaml");
    let none = dir.join("fwd-none.yaml");
    std::fs::write(&rules, labs([101, 102], 103..=202)).unwrap();
    std::fs::write(&none, labs(101..=202, [])).unwrap();
    let data = dir.join("fwd-data");
    agent(&ns, &data, &none);
    let a = guest(&ns, "va", "br101", "192.168.101.10", "192.168.101.1");
    let b = guest(&ns, "vb", "br102", "192.168.102.10", "192.168.102.1");
    let _server = Proc(
        b.cmd("iperf3")
            .arg("-s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait for the server (and the neighbours): a 1 s run that succeeds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a
        .cmd("iperf3")
        .args(["-c", "192.168.102.10", "-t", "1"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "iperf3 from A to B never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut with, mut without) = (vec![], vec![]);
    for i in 0..runs {
        for rules_on in [i % 2 == 0, i % 2 != 0] {
            let spec = if rules_on { &rules } else { &none };
            agent(&ns, &data, spec);
            assert_eq!(ns.has_table(), rules_on);
            let g = iperf(&a, "192.168.102.10", secs);
            if rules_on {
                with.push(g);
            } else {
                without.push(g);
            }
        }
    }
    (with, without)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let rounds = if quick { 3 } else { 7 };
    let secs = if quick { 2 } else { 5 };
    println!(
        "cargo bench -p steward-agent --bench isolation{} (root)",
        if quick { " -- --quick" } else { "" }
    );
    for (tool, flag) in [("ip", "-V"), ("nft", "--version")] {
        if !have(tool, flag) {
            println!("isolation bench: `{tool}` is missing (install iproute2 and nftables)");
            return ExitCode::FAILURE;
        }
    }
    println!("agent: {}", Path::new(&agent_bin()).display());
    let load_before = loadavg();
    let tmp = tempfile::tempdir().unwrap();
    // First: the other parts delete namespaces holding 100 bridges each, and the kernel's
    // cleanup of those (under the rtnl lock) would slow this one's link creation.
    let d = daemon::daemon(tmp.path(), rounds);
    let (c, rules) = create(tmp.path(), rounds);
    let iperf3 = have("iperf3", "--version");
    let tput = iperf3.then(|| throughput(tmp.path(), 3, secs));
    let load_after = loadavg();

    let (aw, ai, nw, ni) = (
        median(c.agent_wall),
        median(c.agent_in),
        median(c.noop_wall),
        median(c.noop_in),
    );
    let (bw, bi, nt, ex) = (
        median(c.base_wall),
        median(c.base_in),
        median(c.nft_text),
        median(c.exec),
    );
    let nj = (!c.nft_json.is_empty()).then(|| median(c.nft_json));
    let npb = median(c.nft_per_bridge);
    let nl = (!c.nft_list.is_empty()).then(|| median(c.nft_list));
    let (dw, di) = (aw.saturating_sub(bw), ai.saturating_sub(bi));
    let mut r = format!(
        "isolation bench: 100 isolated bridge-only labs ({rules} rules over sets of the 100 bridges in table inet steward), \
         median of {rounds} rounds, alternating; load average {load_before} before, {load_after} after\n"
    );
    let _ = writeln!(
        r,
        "{:<58} {:>9} {:>9}",
        "create (table absent -> present)", "wall ms", "inside ms"
    );
    let row = |r: &mut String, name: &str, wall: Duration, inside: Option<Duration>| {
        let inside = inside.map_or("-".to_string(), |d| format!("{:.1}", ms(d)));
        let _ = writeln!(r, "{name:<58} {:>9.1} {inside:>9}", ms(wall));
    };
    row(
        &mut r,
        "(a) steward-agent apply, isolated spec",
        aw,
        Some(ai),
    );
    row(
        &mut r,
        "(c) steward-agent apply, open spec (baseline, no nft)",
        bw,
        Some(bi),
    );
    row(&mut r, "(a) - (c): the agent's nft part", dw, Some(di));
    row(&mut r, "(b) nft -f <the same ruleset as text>", nt, None);
    row(
        &mut r,
        "    nft -f <the same isolation, 603 rules, no sets>",
        npb,
        None,
    );
    if let Some(nj) = nj {
        row(
            &mut r,
            "    nft -j -f <the listed JSON> (for reference)",
            nj,
            None,
        );
    }
    if let Some(nl) = nl {
        row(
            &mut r,
            "    nft -j list table inet steward (all rules)",
            nl,
            None,
        );
    }
    row(
        &mut r,
        "    ip netns exec <ns> true (process start, in every wall)",
        ex,
        None,
    );
    let _ = writeln!(
        r,
        "agent's nft part / nft -f: {:.2}x (wall) {:.2}x (inside)   goal <= 1.5x",
        ratio(dw, nt),
        ratio(di, nt)
    );
    let _ = writeln!(
        r,
        "agent's nft part / nft -f of the 603 rules without sets: {:.2}x (wall) {:.2}x (inside)",
        ratio(dw, npb),
        ratio(di, npb)
    );
    let _ = writeln!(
        r,
        "no-op re-apply of the isolated spec (0 netlink, 0 nft writes): {:.1} ms wall, {:.1} ms inside \
         = 1/{:.1} of create (wall), 1/{:.1} (inside)   goal <= 1/20",
        ms(nw),
        ms(ni),
        ratio(aw, nw),
        ratio(ai, ni)
    );
    let _ = writeln!(
        r,
        "no-op minus baseline (its nft part): {:.1} ms wall, {:.1} ms inside",
        ms(nw.saturating_sub(bw)),
        ms(ni.saturating_sub(bi))
    );
    let d_noop = median(
        (d.noops.iter())
            .map(|(us, _)| Duration::from_micros(*us))
            .collect(),
    );
    let d_create = Duration::from_micros(d.create_us);
    let from_events = d.noops.iter().filter(|(_, o)| o == "events").count();
    let _ = writeln!(
        r,
        "running agent (apply --watch), SIGHUP re-apply of the isolated spec: {:.2} ms inside \
         (median of {}, {from_events} from the event-fed cache) = 1/{:.0} of its create pass \
         ({:.1} ms), 1/{:.0} of (a)'s create inside   goal <= 1/20",
        ms(d_noop),
        d.noops.len(),
        ratio(d_create, d_noop),
        ms(d_create),
        ratio(ai, d_noop)
    );
    // The rules alone: the isolation part of each pass.
    let (a_iso, n_iso) = (median(c.agent_iso.clone()), median(c.noop_iso.clone()));
    let d_iso_create = Duration::from_micros(d.create_isolation_us);
    let d_iso_noop = median(
        (d.noop_isolation_us.iter())
            .map(|us| Duration::from_micros(*us))
            .collect(),
    );
    let _ = writeln!(
        r,
        "the rules alone (each pass's isolation_us): one-shot create {:.2} ms, no-op {:.2} ms = \
         1/{:.0}; running agent: create pass {:.2} ms, no-op {:.3} ms = 1/{:.0}   goal <= 1/20",
        ms(a_iso),
        ms(n_iso),
        ratio(a_iso, n_iso),
        ms(d_iso_create),
        ms(d_iso_noop),
        ratio(d_iso_create, d_iso_noop)
    );
    let mut tput_json = Value::Null;
    match &tput {
        None => {
            let _ = writeln!(
                r,
                "throughput: SKIPPED: `iperf3` is missing (apt-get install iperf3) — part 3 did NOT run"
            );
        }
        Some((with, without)) => {
            let (w, wo) = (median_f(with.clone()), median_f(without.clone()));
            let _ = writeln!(
                r,
                "throughput A (lab 101) -> B (lab 102), routed, iperf3 TCP {secs} s x {} each, alternating:",
                with.len()
            );
            let fmt = |v: &[f64]| {
                v.iter()
                    .map(|g| format!("{g:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                r,
                "  with 100 other labs isolated (forward: the fast path, two set lookups): {w:.2} Gbit/s median (runs: {})",
                fmt(with)
            );
            let _ = writeln!(
                r,
                "  no table inet steward:                                            {wo:.2} Gbit/s median (runs: {})",
                fmt(without)
            );
            let _ = writeln!(r, "  with / without: {:.3}x   goal >= 0.9x", w / wo);
            tput_json = json!({"secs": secs, "with_gbps": with, "without_gbps": without,
                "with_median": w, "without_median": wo, "ratio": w / wo});
        }
    }
    print!("{r}");
    let out = json!({
        "labs": 100,
        "rules": rules,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": load_after,
        "create_ms": {
            "agent_wall": ms(aw), "agent_inside": ms(ai),
            "baseline_wall": ms(bw), "baseline_inside": ms(bi),
            "agent_nft_part_wall": ms(dw), "agent_nft_part_inside": ms(di),
            "nft_f_text": ms(nt), "nft_f_per_bridge_603_rules": ms(npb), "nft_j_f_json": nj.map(ms), "nft_j_list": nl.map(ms), "netns_exec_true": ms(ex),
        },
        "noop_ms": {"agent_wall": ms(nw), "agent_inside": ms(ni)},
        "daemon_ms": {"create_pass": ms(d_create), "noop_pass": ms(d_noop),
            "noops": d.noops.iter().map(|(us, o)| json!({"us": us, "observed": o})).collect::<Vec<_>>(),
            "create_over_noop": ratio(d_create, d_noop),
            "isolation_create": ms(d_iso_create), "isolation_noop": ms(d_iso_noop),
            "isolation_create_over_noop": ratio(d_iso_create, d_iso_noop)},
        "isolation_ms": {"create": ms(a_iso), "noop": ms(n_iso),
            "create_over_noop": ratio(a_iso, n_iso)},
        "ratios": {
            "agent_nft_part_over_nft_f_wall": ratio(dw, nt),
            "agent_nft_part_over_nft_f_inside": ratio(di, nt),
            "agent_nft_part_over_nft_f_per_bridge_wall": ratio(dw, npb),
            "create_over_noop_wall": ratio(aw, nw),
            "create_over_noop_inside": ratio(ai, ni),
        },
        "throughput": tput_json,
    });
    let dir = results_dir();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("isolation.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    );
    ExitCode::SUCCESS
}

/// `<target>/bench-results/`.
fn results_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join("bench-results")
}
