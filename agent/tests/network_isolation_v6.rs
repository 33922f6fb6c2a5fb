//! Network isolation over IPv6, with the real agent binary, real nftables and real traffic in a
//! fresh network namespace (the "host", IPv6 forwarding on, duplicate address detection off):
//! the rules of the agent's table `inet steward` match interfaces, so they hold for IPv6 as for
//! IPv4, and an `allow` may name an IPv6 network (`ip6 saddr`).
//!
//! Where the IPv6 addresses come from: the agent removes from its bridges every address the
//! spec does not give them (link-local ones excepted: `plan::plan_addresses` reports "address
//! X is not in the spec" and deletes it), so addresses the test put on a lab's bridge by hand
//! would go at the next apply. Instead the labs are IPv6 labs: `cidr: fd00:10N::/64`, which
//! makes the agent itself hold the lab's gateway `fd00:10N::1/64` on `br10N`, re-applied as
//! often as the test likes. Each guest (`common::isolation::guest6`) is a namespace behind a
//! veth on its lab's bridge at `fd00:10N::10/64` with a default IPv6 route via the gateway.
//!
//! - isolated lab A (`br101`) next to open lab B (`br102`): open first (everything reaches
//!   everything: the control), then isolated: A reaches neither B nor the host (its gateway
//!   on `br101`, the host's address on `br102`), B and the host reach not A, by ICMPv6 and
//!   TCP; B still reaches the host; open again, all of it works again;
//! - an isolated lab C (`br103`) with `allow: [{proto: tcp, port: 7001, from:
//!   fd00:102::/64}]`: B reaches C's port 7001 and nothing else of C, A (isolated, not in that
//!   network) does not reach even that port, C does not reach B;
//! - egress-only lab A over IPv6: out through the host's uplink to an "internet" namespace,
//!   masqueraded (the internet sees the uplink's address, never the guest's), nothing in.
//!
//! The last two need IPv6 neighbour discovery between the guests and the host on the
//! isolated/egress-only bridge (the host resolving the guest, the guest its gateway): the
//! agent accepts neighbour solicitations and advertisements before its input and output drops,
//! as ARP (not in the `inet` family) passes for IPv4. These tests found that it did not; when
//! they fail, the message shows the neighbour entries.
//!
//! Needs `nft` and busybox (`ping -6`, `nc`): without them the test fails under CI and is
//! skipped loudly elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::isolation::{
    enable_forwarding_v6, guest6, has_steward_table, have_nc, listen, nft, nft_load, ping6,
    require_tools, tcp, Guest,
};
use common::netns::{data_dir, require_netns, Applied, NetNs};

fn ok(a: &Applied) {
    assert_eq!(a.code, 0, "{}\n{}", a.status, a.log);
}

/// A guest on lab `vlan`'s bridge, at `fd00:<vlan>::10` via the lab's gateway `::1`.
fn lab_guest(host: &NetNs, vlan: u16) -> Guest {
    guest6(
        host,
        &format!("v{vlan}"),
        &format!("br{vlan}"),
        &format!("fd00:{vlan}::10/64"),
        &format!("fd00:{vlan}::1"),
    )
}

/// The host's neighbour entries on `bridge`, for the failure messages.
fn neighbours(ns: &NetNs, bridge: &str) -> String {
    ns.ip(&["-6", "neigh", "show", "dev", bridge])
}

fn lab(vlan: u16, rest: &str) -> String {
    format!("    - {{vlan: {vlan}, cidr: \"fd00:{vlan}::/64\"{rest}}}\n")
}

fn spec(labs: &[String]) -> String {
    format!("networks:\n  labs:\n{}", labs.concat())
}

/// Asserts that every (from, to, port) reaches (`want`) or not, by ICMPv6 and TCP.
fn reach(what: &str, checks: &[(&NetNs, &str, u16)], want: bool) {
    let tries = if want { 5 } else { 1 };
    for (from, to, port) in checks {
        assert_eq!(
            ping6(from, to, tries),
            want,
            "{what}: ping -6 from {} to {to}",
            from.name
        );
        assert_eq!(
            tcp(from, to, *port, tries),
            want,
            "{what}: TCP from {} to [{to}]:{port}",
            from.name
        );
    }
}

#[test]
fn an_isolated_ipv6_lab_reaches_nothing_and_open_restores_it() {
    if !require_tools() || !have_nc() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    enable_forwarding_v6(&ns);
    let open = spec(&[lab(101, ""), lab(102, "")]);
    let isolated = spec(&[lab(101, ", isolation: isolated"), lab(102, "")]);
    let a = ns.apply(&data, &open, None);
    ok(&a);
    assert!(!has_steward_table(&ns));
    assert_eq!(ns.addrs("br101"), vec!["fd00:101::1/64".to_string()]);
    assert_eq!(ns.addrs("br102"), vec!["fd00:102::1/64".to_string()]);
    let (ga, gb) = (lab_guest(&ns, 101), lab_guest(&ns, 102));
    let _servers = (
        listen(&ga.ns, 7001),
        listen(&gb.ns, 7002),
        listen(&ns, 7003),
    );
    let everything: &[(&NetNs, &str, u16)] = &[
        (&ga.ns, &gb.ip, 7002),
        (&gb.ns, &ga.ip, 7001),
        (&ga.ns, "fd00:101::1", 7003),
        (&ga.ns, "fd00:102::1", 7003),
        (&ns, &ga.ip, 7001),
    ];
    reach("both open", everything, true);

    let a = ns.apply(&data, &isolated, None);
    ok(&a);
    assert_eq!(a.state("br101"), ("converged".into(), String::new()));
    assert_eq!(a.summary("nft_writes"), 1, "{}", a.log);
    reach("lab 101 isolated", everything, false);
    // The open lab still reaches the host; the agent's addresses stay as they were.
    reach("lab 102 open", &[(&gb.ns, "fd00:102::1", 7003)], true);
    let again = ns.apply(&data, &isolated, None);
    ok(&again);
    assert_eq!(again.summary("nft_writes"), 0, "{}", again.log);
    assert_eq!(again.writes(), 0, "{}", again.log);
    assert_eq!(ns.addrs("br101"), vec!["fd00:101::1/64".to_string()]);

    let a = ns.apply(&data, &open, None);
    ok(&a);
    assert!(!has_steward_table(&ns), "{}", nft(&ns, &["list", "tables"]));
    reach("open again", everything, true);
}

#[test]
fn an_ipv6_allow_lets_exactly_its_port_in_from_its_network() {
    if !require_tools() || !have_nc() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    enable_forwarding_v6(&ns);
    let allow = ", isolation: isolated, allow: [{proto: tcp, port: 7001, from: \"fd00:102::/64\"}]";
    let spec = spec(&[
        lab(101, ", isolation: isolated"),
        lab(102, ""),
        lab(103, allow),
    ]);
    let a = ns.apply(&data, &spec, None);
    ok(&a);
    assert_eq!(a.state("br103"), ("converged".into(), String::new()));
    let table = nft(&ns, &["list", "table", "inet", "steward"]);
    assert!(
        table.contains("oifname \"br103\" ip6 saddr fd00:102::/64 tcp dport 7001 accept"),
        "{table}"
    );
    let (ga, gb, gc) = (
        lab_guest(&ns, 101),
        lab_guest(&ns, 102),
        lab_guest(&ns, 103),
    );
    let _servers = (
        listen(&ga.ns, 7001),
        listen(&gb.ns, 7002),
        listen(&gc.ns, 7001),
        listen(&gc.ns, 7005),
    );
    assert!(ping6(&gb.ns, "fd00:102::1", 5), "B to its gateway");
    // Nothing but the allowed port.
    assert!(!tcp(&gb.ns, &gc.ip, 7005, 1), "B to another port of C");
    assert!(!ping6(&gb.ns, &gc.ip, 1), "B to C: ICMPv6 not allowed");
    assert!(
        !tcp(&ga.ns, &gc.ip, 7001, 1),
        "A (not in fd00:102::/64) to C"
    );
    assert!(!tcp(&gc.ns, &gb.ip, 7002, 1), "C to B: allow is one way");
    assert!(!tcp(&gc.ns, &ga.ip, 7001, 1), "C to A");
    // The allowed port, from the allowed network: the host must resolve C's guest (its
    // neighbour advertisement comes in on br103) and C's guest its gateway (its neighbour
    // solicitation to the host comes in on br103): both are ICMPv6 to the host, which the
    // agent lets through as ARP is.
    assert!(
        tcp(&gb.ns, &gc.ip, 7001, 5),
        "B (fd00:102::/64) to C's allowed port 7001; the host's neighbours on br103:\n{}\n{table}",
        neighbours(&ns, "br103")
    );
    let again = ns.apply(&data, &spec, None);
    ok(&again);
    assert_eq!(again.summary("nft_writes"), 0, "{}", again.log);
}

/// The internet: a namespace behind the host's uplink `up0` (fd00:200::1 on the host,
/// fd00:200::2 there), the host's default IPv6 route, with a route back to the labs, and
/// counters of who connects to its port 7100: (the uplink's address, a lab).
fn internet(host: &NetNs) -> NetNs {
    let net = require_netns().expect("a namespace for the internet");
    host.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &net.name,
    ]);
    host.ip(&["addr", "add", "fd00:200::1/64", "dev", "up0", "nodad"]);
    host.ip(&["link", "set", "up0", "up"]);
    host.ip(&["-6", "route", "add", "default", "via", "fd00:200::2"]);
    net.ip(&["addr", "add", "fd00:200::2/64", "dev", "eth0", "nodad"]);
    net.ip(&["link", "set", "eth0", "up"]);
    net.ip(&["-6", "route", "add", "fd00::/16", "via", "fd00:200::1"]);
    nft_load(
        &net,
        "table inet seen {\n chain input {\n  type filter hook input priority 0;\n  \
         ip6 saddr fd00:200::1 tcp dport 7100 counter\n  \
         ip6 saddr fd00:100::/23 tcp dport 7100 counter\n }\n}\n",
    );
    net
}

/// Packets counted by the internet's rules: (from the uplink's address, from a lab).
fn seen(net: &NetNs) -> (u64, u64) {
    let v: serde_json::Value =
        serde_json::from_str(&nft(net, &["-j", "list", "table", "inet", "seen"])).unwrap();
    let counts: Vec<u64> = (v["nftables"].as_array().unwrap().iter())
        .filter_map(|o| o["rule"]["expr"].as_array())
        .filter_map(|e| e.iter().find_map(|s| s["counter"]["packets"].as_u64()))
        .collect();
    (counts[0], counts[1])
}

#[test]
fn an_egress_only_ipv6_lab_reaches_out_masqueraded_and_nothing_reaches_in() {
    if !require_tools() || !have_nc() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    enable_forwarding_v6(&ns);
    let net = internet(&ns);
    let spec = spec(&[lab(101, ", isolation: egress-only"), lab(102, "")]);
    let a = ns.apply(&data, &spec, None);
    ok(&a);
    assert_eq!(a.state("br101"), ("converged".into(), String::new()));
    let (ga, gb) = (lab_guest(&ns, 101), lab_guest(&ns, 102));
    let _servers = (
        listen(&net, 7100),
        listen(&ga.ns, 7001),
        listen(&gb.ns, 7002),
        listen(&ns, 7003),
    );
    // The open lab goes out as it is (no rules for it): its own address arrives.
    assert!(
        tcp(&gb.ns, "fd00:200::2", 7100, 5),
        "open: B to the internet"
    );
    assert!(seen(&net).1 > 0, "B's own address seen");
    // Nothing in, nothing to the other lab or the host.
    assert!(!tcp(&net, &ga.ip, 7001, 1), "internet to A");
    assert!(!tcp(&gb.ns, &ga.ip, 7001, 1), "B to A");
    assert!(!tcp(&ga.ns, &gb.ip, 7002, 1), "A to B");
    assert!(
        !tcp(&ga.ns, "fd00:101::1", 7003, 1),
        "A to the host on br101"
    );
    assert!(
        !tcp(&ga.ns, "fd00:200::1", 7003, 1),
        "A to the host's uplink"
    );
    // Out through the uplink, masqueraded: the internet sees the uplink's address only. The
    // guest must first resolve its gateway: its neighbour solicitation comes in on br101.
    let before = seen(&net);
    assert!(
        tcp(&ga.ns, "fd00:200::2", 7100, 5),
        "egress-only: A to the internet over IPv6; the guest's neighbours:\n{}\nthe host's on br101:\n{}",
        ga.ns.ip(&["-6", "neigh"]),
        neighbours(&ns, "br101")
    );
    let after = seen(&net);
    assert!(after.0 > before.0, "the internet saw the uplink's address");
    assert_eq!(
        after.1, before.1,
        "the internet never saw the guest's own address"
    );
    let again = ns.apply(&data, &spec, None);
    ok(&again);
    assert_eq!(again.summary("nft_writes"), 0, "{}", again.log);
}
