//! `ports_isolated: true` on a shared bridge, with the real agent binary, the real kernel and
//! real traffic, in a fresh network namespace (the "host"): guests (namespaces behind veths,
//! standing in for two sessions' containers or VMs) on one managed bridge cannot reach each
//! other through it, while each still reaches the host's address on it and, routed by the
//! host, an "internet" namespace. The agent sets the kernel's bridge-port `isolated` flag on
//! every port but the spec's own; a flag cleared by hand is put back; removing the policy
//! clears the flags. With the daemon (`apply --watch`), a port that appears later (as a
//! container's veth does, made by Docker after the pass) is flagged by the pass its link event
//! starts, with no re-apply.
//!
//! Needs busybox (`ping`, `nc`): without it the test fails under CI and is skipped loudly
//! elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::isolation::{guest, have_nc, listen, ping, require_tools, tcp, Guest};
use common::netns::{data_dir, require_netns, Applied, NetNs};

fn ok(a: &Applied) {
    assert_eq!(a.code, 0, "{}\n{}", a.status, a.log);
}

const SHARED: &str =
    "networks:\n  bridges:\n    - {name: brs, addresses: [10.60.0.1/24], ports_isolated: true}\n";
const PLAIN: &str = "networks:\n  bridges:\n    - {name: brs, addresses: [10.60.0.1/24]}\n";

/// Whether `port` (a bridge port in `host`) has the kernel's `isolated` flag.
fn isolated(host: &NetNs, port: &str) -> bool {
    let l = host.link(port).unwrap_or_else(|| panic!("no link {port}"));
    l["linkinfo"]["info_slave_data"]["isolated"] == true
}

/// The internet: a namespace behind the host's uplink `up0` (10.201.0.1 here, 10.201.0.2
/// there), with a route back to the shared bridge's subnet.
fn internet(host: &NetNs) -> NetNs {
    let net = require_netns().expect("a namespace for the internet");
    host.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &net.name,
    ]);
    host.ip(&["addr", "add", "10.201.0.1/24", "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    net.ip(&["addr", "add", "10.201.0.2/24", "dev", "eth0"]);
    net.ip(&["link", "set", "eth0", "up"]);
    net.ip(&["route", "add", "10.60.0.0/24", "via", "10.201.0.1"]);
    net
}

fn guests(host: &NetNs) -> (Guest, Guest) {
    let a = guest(host, "pa", Some("brs"), "10.60.0.10/24", "10.60.0.1");
    let b = guest(host, "pb", Some("brs"), "10.60.0.11/24", "10.60.0.1");
    (a, b)
}

/// A and B cannot reach each other (ICMP, TCP, both ways); each reaches the host's address on
/// the bridge and the internet.
fn assert_cut_off_from_each_other(host: &NetNs, net: &NetNs, a: &Guest, b: &Guest) {
    assert!(!ping(&a.ns, &b.ip, 2), "A pings B");
    assert!(!ping(&b.ns, &a.ip, 1), "B pings A");
    assert!(!tcp(&a.ns, &b.ip, 7002, 1), "A to B over TCP");
    assert!(!tcp(&b.ns, &a.ip, 7001, 1), "B to A over TCP");
    for (g, who) in [(a, "A"), (b, "B")] {
        assert!(ping(&g.ns, "10.60.0.1", 3), "{who} pings the bridge's .1");
        assert!(tcp(&g.ns, "10.60.0.1", 7003, 3), "{who} to the host's port");
        assert!(tcp(&g.ns, "10.201.0.2", 7100, 3), "{who} to the internet");
    }
    let _ = (host, net);
}

#[test]
fn ports_of_a_shared_bridge_cannot_reach_each_other_but_each_reaches_out() {
    if !require_tools() || !have_nc() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.enable_forwarding();
    let net = internet(&ns);
    ok(&ns.apply(&data, PLAIN, None));
    let (a, b) = guests(&ns);
    let _servers = (
        listen(&a.ns, 7001),
        listen(&b.ns, 7002),
        listen(&ns, 7003),
        listen(&net, 7100),
    );
    // Without the policy they talk: the checks below can tell.
    assert!(ping(&a.ns, &b.ip, 3), "A pings B before ports_isolated");
    assert!(tcp(&a.ns, &b.ip, 7002, 3), "A to B before ports_isolated");

    let applied = ns.apply(&data, SHARED, None);
    ok(&applied);
    assert_eq!(applied.state("brs"), ("converged".into(), String::new()));
    assert!(isolated(&ns, "pa") && isolated(&ns, "pb"));
    assert_cut_off_from_each_other(&ns, &net, &a, &b);
    // Converged: no write.
    let again = ns.apply(&data, SHARED, None);
    ok(&again);
    assert_eq!(again.writes(), 0, "{}", again.log);

    // Cleared by hand on one port: A and B talk again, until the agent puts it back.
    ns.ip(&[
        "link",
        "set",
        "pa",
        "type",
        "bridge_slave",
        "isolated",
        "off",
    ]);
    assert!(
        ping(&a.ns, &b.ip, 3),
        "A pings B with the flag cleared by hand"
    );
    ok(&ns.apply(&data, SHARED, None));
    assert!(isolated(&ns, "pa"), "the flag is restored");
    assert!(!ping(&a.ns, &b.ip, 2), "A pings B after the restore");

    // The policy removed: the flags go, the ports talk again.
    ok(&ns.apply(&data, PLAIN, None));
    assert!(!isolated(&ns, "pa") && !isolated(&ns, "pb"));
    assert!(ping(&a.ns, &b.ip, 3), "A pings B once the policy is gone");
    // No nftables table was needed for any of it.
    assert!(!common::isolation::has_steward_table(&ns));
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 100 ms until it holds; panics with `what` after `secs` (a bound against
/// hangs, not a timing assertion).
fn wait(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_flags_a_port_that_appears_later() {
    if !require_tools() || !have_nc() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let tmp = tempfile::tempdir().unwrap();
    ns.enable_forwarding();
    let net = internet(&ns);
    let spec = tmp.path().join("spec.yaml");
    std::fs::write(&spec, SHARED).unwrap();
    let log = tmp.path().join("agent.log");
    let child = ns
        .command(env!("CARGO_BIN_EXE_steward-agent"))
        .arg("--data-dir")
        .arg(tmp.path().join("agent"))
        .args(["--docker-socket", "/nonexistent/docker.sock"])
        .args(["--resync-interval", "300s", "apply", "--watch", "--file"])
        .arg(&spec)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _agent = Proc(child);
    wait(30, "brs created", || ns.link("brs").is_some());

    // Two workloads arrive after the pass that made the bridge (no SIGHUP, no re-apply).
    let (a, b) = guests(&ns);
    let _servers = (
        listen(&a.ns, 7001),
        listen(&b.ns, 7002),
        listen(&ns, 7003),
        listen(&net, 7100),
    );
    wait(30, "both new ports flagged by the daemon", || {
        isolated(&ns, "pa") && isolated(&ns, "pb")
    });
    assert_cut_off_from_each_other(&ns, &net, &a, &b);
}
