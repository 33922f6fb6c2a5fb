//! `isolation: egress-only`, `allow:` and the registry route guard with the real agent binary,
//! real nftables and real traffic, each test in a fresh network namespace (the "host") with a
//! guest per bridge (`common::isolation`) and, for egress, an "internet" namespace behind a
//! veth that is the host's uplink (its default route). The internet has a route back to the
//! labs, so a connection from a guest would work without NAT too: only the internet's own
//! counters tell that it was masqueraded. The host's own namespace and nftables are never
//! touched.
//!
//! Needs `nft` and busybox (`ping`, `nc`): without them the test fails under CI and is skipped
//! loudly elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::isolation::{guest, have_nc, lab_guests, listen, nft, ping, require_tools, tcp};
use common::netns::{data_dir, require_netns, Applied, NetNs};

fn ok(a: &Applied) {
    assert_eq!(a.code, 0, "{}\n{}", a.status, a.log);
}

/// The internet: a namespace behind the host's uplink `up0` (10.200.0.1 on the host,
/// 10.200.0.2 there), the host's default route, with a route back to the labs.
fn internet(host: &NetNs) -> NetNs {
    let net = require_netns().expect("a namespace for the internet");
    host.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &net.name,
    ]);
    host.ip(&["addr", "add", "10.200.0.1/24", "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    host.ip(&["route", "add", "default", "via", "10.200.0.2"]);
    net.ip(&["addr", "add", "10.200.0.2/24", "dev", "eth0"]);
    net.ip(&["link", "set", "eth0", "up"]);
    net.ip(&["route", "add", "192.168.0.0/16", "via", "10.200.0.1"]);
    // Counters of who connects to port 7100 here: the host's uplink address or a lab's guest.
    let rules = "table inet seen {\n chain input {\n  type filter hook input priority 0;\n  \
                 ip saddr 10.200.0.1 tcp dport 7100 counter\n  \
                 ip saddr 192.168.0.0/16 tcp dport 7100 counter\n }\n}\n";
    let file = std::env::temp_dir().join(format!("{}.nft", net.name));
    std::fs::write(&file, rules).unwrap();
    nft(&net, &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
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

const EGRESS: &str =
    "networks:\n  labs:\n    - {vlan: 101, isolation: egress-only}\n    - {vlan: 102}\n";

#[test]
fn egress_only_reaches_out_masqueraded_and_nothing_reaches_in_but_published_ports() {
    if !require_tools() || !have_nc() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.enable_forwarding();
    let net = internet(&ns);
    let a = ns.apply(&data, EGRESS, None);
    ok(&a);
    assert_eq!(a.state("br101"), ("converged".into(), String::new()));
    assert_eq!(a.summary("nft_writes"), 1, "{}", a.log);
    let (ga, gb) = lab_guests(&ns);
    let _servers = (
        listen(&net, 7100),
        listen(&ga.ns, 7001),
        listen(&gb.ns, 7002),
        listen(&ns, 7003),
    );

    // Out through the uplink, masqueraded: the internet sees the uplink's address.
    assert!(
        tcp(&ga.ns, "10.200.0.2", 7100, 5),
        "egress: A to the internet"
    );
    let (uplink, lab) = seen(&net);
    assert!(uplink > 0, "the internet saw the uplink's address");
    assert_eq!(lab, 0, "the internet never saw the guest's own address");
    // The open lab is not masqueraded (no rules for it): its address arrives as it is.
    assert!(
        tcp(&gb.ns, "10.200.0.2", 7100, 5),
        "open: B to the internet"
    );
    assert!(seen(&net).1 > 0, "B's own address seen");

    // Nothing in: not from the internet, not from the other lab.
    assert!(!tcp(&net, &ga.ip, 7001, 1), "internet to A");
    assert!(!tcp(&gb.ns, &ga.ip, 7001, 1), "B to A");
    // Nothing to the other lab, nor to the host's own services (on any of its addresses).
    assert!(!tcp(&ga.ns, &gb.ip, 7002, 1), "A to B");
    assert!(
        !tcp(&ga.ns, "192.168.101.1", 7003, 1),
        "A to the host on br101"
    );
    assert!(
        !tcp(&ga.ns, "10.200.0.1", 7003, 1),
        "A to the host on the uplink"
    );
    // Nor to a bridge the spec does not know (Docker's `docker0`, say): only the uplink is a
    // way out. The open lab's guest reaches it (the test's setup can tell).
    ns.ip(&["link", "add", "dk0", "type", "bridge"]);
    ns.ip(&["addr", "add", "172.31.0.1/24", "dev", "dk0"]);
    ns.ip(&["link", "set", "dk0", "up"]);
    let gc = guest(&ns, "vc", Some("dk0"), "172.31.0.10/24", "172.31.0.1");
    let _c = listen(&gc.ns, 7004);
    assert!(
        tcp(&gb.ns, &gc.ip, 7004, 5),
        "open B to docker0's container"
    );
    assert!(!tcp(&ga.ns, &gc.ip, 7004, 1), "A to docker0's container");
    assert!(!ping(&ga.ns, &gc.ip, 1), "A pings docker0's container");
    assert!(!tcp(&gc.ns, &ga.ip, 7001, 1), "docker0's container to A");
    // The host's own probes into the lab get their replies.
    assert!(ping(&ns, &ga.ip, 3), "host to A");

    // A published port: a DNAT of the host's port 8080 to A:7001 (Docker's way) is let in.
    let dnat = "table ip testnat {\n chain pre {\n  type nat hook prerouting priority dstnat;\n  \
                tcp dport 8080 dnat to 192.168.101.10:7001\n }\n}\n";
    let file = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&file, dnat).unwrap();
    nft(&ns, &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(
        tcp(&net, "10.200.0.1", 8080, 5),
        "internet to A's published port"
    );
    assert!(!tcp(&net, &ga.ip, 7001, 1), "still not to A directly");

    // Converged: read back as planned, not written again (the test's table left alone).
    let again = ns.apply(&data, EGRESS, None);
    ok(&again);
    assert_eq!(again.summary("nft_writes"), 0, "{}", again.log);
    assert!(nft(&ns, &["list", "tables"]).contains("table ip testnat"));
}

const ALLOW: &str = "networks:\n  labs:\n    - {vlan: 101, isolation: isolated, allow: [{proto: tcp, port: 7001, from: br102}, {proto: tcp, port: 7003}]}\n    - {vlan: 102}\n";

#[test]
fn allow_lets_the_named_traffic_into_an_isolated_lab_and_nothing_else() {
    if !require_tools() || !have_nc() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.enable_forwarding();
    let a = ns.apply(&data, ALLOW, None);
    ok(&a);
    assert_eq!(a.state("br101"), ("converged".into(), String::new()));
    let (ga, gb) = lab_guests(&ns);
    let _servers = (
        listen(&ga.ns, 7001),
        listen(&ga.ns, 7005),
        listen(&gb.ns, 7002),
        listen(&ns, 7003),
        listen(&ns, 7004),
    );
    assert!(tcp(&gb.ns, &ga.ip, 7001, 5), "B to A's allowed port");
    assert!(!tcp(&gb.ns, &ga.ip, 7005, 1), "B to another port of A");
    assert!(!tcp(&ga.ns, &gb.ip, 7002, 1), "A to B: allow is one way");
    assert!(!ping(&gb.ns, &ga.ip, 1), "B to A: ICMP not allowed");
    // No `from`: the host's port 7003 is open to A too, 7004 is not.
    assert!(
        tcp(&ga.ns, "192.168.101.1", 7003, 5),
        "A to the host's allowed port"
    );
    assert!(
        !tcp(&ga.ns, "192.168.101.1", 7004, 1),
        "A to another port of the host"
    );
    let again = ns.apply(&data, ALLOW, None);
    ok(&again);
    assert_eq!(again.summary("nft_writes"), 0, "{}", again.log);
}

#[test]
fn isolating_the_bridge_that_carries_the_route_to_the_registry_is_refused() {
    if !require_tools() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (tmp, data) = data_dir();
    // The registry's address is on lab 101's subnet: its route goes through br101.
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "registry = \"http://192.168.101.50:7443\"\n").unwrap();
    let spec = "networks:\n  labs:\n    - {vlan: 101, isolation: isolated}\n    - {vlan: 102, isolation: isolated}\n";
    let a = ns.apply(&data, spec, Some(&config));
    let (state, error) = a.state("br101");
    assert_eq!(state, "failed", "{}", a.status);
    assert!(
        error.contains("route to the registry (192.168.101.50 via br101)"),
        "{error}"
    );
    // No rules for br101; the other lab is isolated as asked.
    assert_eq!(a.state("br102"), ("converged".into(), String::new()));
    let table = nft(&ns, &["list", "table", "inet", "steward"]);
    assert!(!table.contains("br101"), "{table}");
    assert!(table.contains("br102"), "{table}");
    // Egress-only keeps the replies: accepted on that bridge.
    let spec = "networks:\n  labs:\n    - {vlan: 101, isolation: egress-only}\n";
    let a = ns.apply(&data, spec, Some(&config));
    ok(&a);
    assert_eq!(a.state("br101"), ("converged".into(), String::new()));
}
