//! A lab with `gateway: none` and `isolation: isolated` — the shape of a lab whose router is a
//! VM on it (pfSense) — with the real agent binary, real nftables and real traffic in a fresh
//! network namespace (the "host"). The agent makes the lab's bridge `br101` (bridge-only, no
//! parent) and takes no address on it; a "router" namespace plugged into `br101` with a veth
//! stands in for the pfSense VM: it owns the lab's `.1` (192.168.101.1/24) and routes to an
//! "internet" namespace behind it (a second veth pair; the internet has a route back to the
//! lab). A guest on the lab (192.168.101.10, default route via the stand-in) and one on a
//! second lab `{vlan: 102}` (gateway host, open) with a default route via the host.
//!
//! What it shows:
//! - the host holds no address on `br101` and has no route for 192.168.101.0/24: it does not
//!   route for the lab;
//! - the guest reaches its stand-in router (`.1`) and, through it, the internet (ICMP, TCP):
//!   both are bridged on `br101`, which the isolation rules leave alone;
//! - the guest does not reach the host's services (a listener on the host, on an address of its
//!   own and on the other lab's bridge address) nor the other lab's guest, and that guest
//!   does not reach it, in either direction: first on the plain paths (through the stand-in,
//!   which has no route to them), then on the direct ones: a hostile guest that bypasses its
//!   router (on-link routes, the host bridge's MAC as the neighbour of the host's addresses)
//!   and a route to the lab that someone adds on the host by hand;
//! - control: with the lab `open` (the same spec without `isolation`) the direct paths work,
//!   so what stopped them was the isolation rules, not the topology; isolated again, they are
//!   stopped again.
//!
//! Needs `nft` and busybox (`ping`, `nc`): without them the test fails under CI and is skipped
//! loudly elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::isolation::{
    has_steward_table, have_nc, lab_guests, listen, mac, on_bridge, ping, require_tools, tcp,
};
use common::netns::{data_dir, require_netns, Applied, NetNs};
use serde_json::Value;

fn ok(a: &Applied) {
    assert_eq!(a.code, 0, "{}\n{}", a.status, a.log);
}

const ISOLATED: &str = "networks:\n  labs:\n    - {vlan: 101, gateway: none, isolation: isolated}\n    - {vlan: 102}\n";
const OPEN: &str = "networks:\n  labs:\n    - {vlan: 101, gateway: none}\n    - {vlan: 102}\n";

/// The host's address for its services that is on no lab (on a link of its own).
const SERVICE: &str = "10.99.0.1";
/// The internet, behind the stand-in router.
const INTERNET: &str = "10.201.0.2";

/// Every route of `ns` (all tables) whose destination lies in 192.168.101.0/24.
fn lab_routes(ns: &NetNs) -> Vec<Value> {
    let v: Vec<Value> =
        serde_json::from_str(&ns.ip(&["-j", "route", "show", "table", "all"])).unwrap();
    v.into_iter()
        .filter(|r| {
            r["dst"]
                .as_str()
                .is_some_and(|d| d.starts_with("192.168.101."))
        })
        .collect()
}

/// The stand-in router on `br101` (192.168.101.1) and the internet behind it (10.201.0.2,
/// with a route back to the lab): (router, internet).
fn router_and_internet(host: &NetNs) -> (common::isolation::Guest, NetNs) {
    let router = on_bridge(host, "vr", "br101", "192.168.101.1/24");
    let net = require_netns().expect("a namespace for the internet");
    router.ns.ip(&[
        "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", &net.name,
    ]);
    router
        .ns
        .ip(&["addr", "add", "10.201.0.1/30", "dev", "wan0"]);
    router.ns.ip(&["link", "set", "wan0", "up"]);
    router
        .ns
        .ip(&["route", "add", "default", "via", "10.201.0.2"]);
    router.ns.enable_forwarding();
    net.ip(&["addr", "add", "10.201.0.2/30", "dev", "eth0"]);
    net.ip(&["link", "set", "eth0", "up"]);
    net.ip(&["route", "add", "192.168.101.0/24", "via", "10.201.0.1"]);
    (router, net)
}

/// The direct paths between the lab's guest `a` and the host / the other lab's guest `b`, each
/// checked to be `want` (reachable or not), ICMP and TCP.
fn direct(what: &str, host: &NetNs, a: &NetNs, b: &NetNs, want: bool) {
    let tries = if want { 5 } else { 1 };
    let tcp_checks: [(&NetNs, &str, u16, &str); 4] = [
        (
            a,
            SERVICE,
            7003,
            "lab guest to the host's service on no lab",
        ),
        (
            a,
            "192.168.102.1",
            7003,
            "lab guest to the host's service on br102",
        ),
        (
            a,
            "192.168.102.10",
            7002,
            "lab guest to the other lab's guest",
        ),
        (
            b,
            "192.168.101.10",
            7001,
            "the other lab's guest to the lab guest",
        ),
    ];
    for (from, to, port, name) in tcp_checks {
        assert_eq!(
            tcp(from, to, port, tries),
            want,
            "{what}: TCP {name} ({to}:{port})"
        );
    }
    let ping_checks: [(&NetNs, &str, &str); 4] = [
        (a, SERVICE, "lab guest to the host's address on no lab"),
        (a, "192.168.102.10", "lab guest to the other lab's guest"),
        (
            b,
            "192.168.101.10",
            "the other lab's guest to the lab guest",
        ),
        (host, "192.168.101.10", "the host to the lab guest"),
    ];
    for (from, to, name) in ping_checks {
        assert_eq!(ping(from, to, tries), want, "{what}: ping {name} ({to})");
    }
}

#[test]
fn a_gateway_none_lab_reaches_its_router_and_the_internet_behind_it_and_nothing_of_the_host() {
    if !require_tools() || !have_nc() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.enable_forwarding();
    // The host's services: an address on no lab, on a link of its own (a veth pair: this
    // kernel may have no dummy links).
    ns.veth("svc0", "svc1");
    ns.ip(&["addr", "add", &format!("{SERVICE}/24"), "dev", "svc0"]);
    ns.ip(&["link", "set", "svc0", "up"]);
    ns.ip(&["link", "set", "svc1", "up"]);

    let a = ns.apply(&data, ISOLATED, None);
    ok(&a);
    assert_eq!(a.state("br101"), ("converged".into(), String::new()));
    assert_eq!(a.state("br102"), ("converged".into(), String::new()));
    assert!(has_steward_table(&ns));
    // No address on the lab's bridge, no route for its subnet: the host does not route for
    // the lab (the other lab keeps its gateway).
    assert!(ns.addrs("br101").is_empty(), "{:?}", ns.addrs("br101"));
    assert_eq!(ns.addrs("br102"), vec!["192.168.102.1/24".to_string()]);
    assert!(lab_routes(&ns).is_empty(), "{:?}", lab_routes(&ns));

    let (router, net) = router_and_internet(&ns);
    let (ga, gb) = lab_guests(&ns);
    let _servers = (
        listen(&ga.ns, 7001),
        listen(&gb.ns, 7002),
        listen(&ns, 7003),
        listen(&net, 7100),
    );

    // The lab's own: its router and the internet behind it.
    assert!(ping(&ga.ns, &router.ip, 5), "lab guest to its router (.1)");
    assert!(ping(&ga.ns, INTERNET, 5), "lab guest to the internet");
    assert!(
        tcp(&ga.ns, INTERNET, 7100, 5),
        "lab guest to the internet: TCP"
    );
    // The other lab still reaches its gateway, the host.
    assert!(ping(&gb.ns, "192.168.102.1", 5), "lab 102 to its gateway");

    // The plain paths: the lab's guest sends through its router, which has no route to the
    // host or the other lab; the host has none to the lab.
    direct("plain paths", &ns, &ga.ns, &gb.ns, false);

    // The direct paths: the lab's guest bypasses its router and sends to the host's MAC on
    // br101 (on-link routes, permanent neighbours), and the host gets a route to the lab by
    // hand (not the agent's).
    let br_mac = mac(&ns, "br101");
    ga.ns
        .ip(&["route", "add", &format!("{SERVICE}/32"), "dev", "eth0"]);
    ga.ns
        .ip(&["route", "add", "192.168.102.0/24", "dev", "eth0"]);
    for to in [SERVICE, "192.168.102.1", "192.168.102.10"] {
        ga.ns.ip(&[
            "neigh",
            "replace",
            to,
            "lladdr",
            &br_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    ns.ip(&["route", "add", "192.168.101.0/24", "dev", "br101"]);
    direct("isolated, direct paths", &ns, &ga.ns, &gb.ns, false);
    assert!(
        ping(&ga.ns, &router.ip, 5),
        "still: lab guest to its router"
    );
    assert!(
        tcp(&ga.ns, INTERNET, 7100, 5),
        "still: lab guest to the internet"
    );

    // Control: the lab open, the same direct paths work (it was the rules that stopped them).
    let a = ns.apply(&data, OPEN, None);
    ok(&a);
    assert!(!has_steward_table(&ns));
    assert!(ns.addrs("br101").is_empty(), "{:?}", ns.addrs("br101"));
    direct("open, direct paths", &ns, &ga.ns, &gb.ns, true);

    // Isolated again: stopped again; converged on the next run.
    let a = ns.apply(&data, ISOLATED, None);
    ok(&a);
    assert_eq!(a.summary("nft_writes"), 1, "{}", a.log);
    direct("isolated again, direct paths", &ns, &ga.ns, &gb.ns, false);
    assert!(
        tcp(&ga.ns, INTERNET, 7100, 5),
        "again: lab guest to the internet"
    );
    let again = ns.apply(&data, ISOLATED, None);
    ok(&again);
    assert_eq!(again.summary("nft_writes"), 0, "{}", again.log);
    assert!(ns.addrs("br101").is_empty(), "{:?}", ns.addrs("br101"));
}
