//! Network isolation (`isolation: isolated` on labs and managed bridges) with the real agent
//! binary, real nftables and real traffic, each test in a fresh network namespace
//! (`common::netns`) with a "guest" per bridge: a veth pair, one end a port of the bridge, the
//! other in a small namespace of its own, addressed in the bridge's subnet with a default
//! route via the bridge's address. The test namespace forwards IPv4, so with `open` the
//! guests reach each other through it. The host's own namespace and nftables are never
//! touched.
//!
//! Needs `nft` and busybox (`ping`; `nc` for the TCP checks): without them the test fails
//! under CI and is skipped loudly elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::isolation::{
    has_steward_table, have_nc, lab_guests, listen, nft, ping, require_tools, tcp,
};
use common::netns::{data_dir, require_netns, Applied, NetNs};
use common::udp::{count_udp, udp};
use common::vm::Proc;
use serde_json::Value;

/// Asserts that every (from, to) pair reaches (`want`) or not.
fn reach(what: &str, pairs: &[(&NetNs, &str)], want: bool) {
    for (from, to) in pairs {
        // A positive check may wait for ARP; a negative one needs one try.
        let got = ping(from, to, if want { 5 } else { 1 });
        assert_eq!(got, want, "{what}: ping from {} to {to}", from.name);
    }
}

fn ok(a: &Applied) {
    assert_eq!(a.code, 0, "{}\n{}", a.status, a.log);
}

const OPEN: &str = "networks:\n  labs:\n    - {vlan: 101}\n    - {vlan: 102}\n";
const ISOLATED: &str =
    "networks:\n  labs:\n    - {vlan: 101, isolation: isolated}\n    - {vlan: 102}\n";

#[test]
fn an_isolated_lab_reaches_nothing_and_open_restores_it() {
    if !require_tools() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.enable_forwarding();
    let a = ns.apply(&data, OPEN, None);
    ok(&a);
    assert_eq!(a.summary("nft_writes"), 0, "{}", a.log);
    assert!(!has_steward_table(&ns), "nothing isolated: no table");
    let (ga, gb) = lab_guests(&ns);
    let (a_ns, b_ns) = (&ga.ns, &gb.ns);
    let nc = have_nc();
    let _servers = nc.then(|| (listen(a_ns, 7001), listen(b_ns, 7002), listen(&ns, 7003)));
    let everything: &[(&NetNs, &str)] = &[
        (a_ns, &gb.ip),
        (b_ns, &ga.ip),
        (a_ns, "192.168.101.1"),
        (&ns, &ga.ip),
    ];
    reach("both open", everything, true);
    for (n, p) in [(a_ns, 7011), (b_ns, 7012), (&ns, 7013)] {
        count_udp(n, p);
    }
    // (from, to's namespace, to's address, port)
    let datagrams: &[(&NetNs, &NetNs, &str, u16)] = &[
        (a_ns, b_ns, &gb.ip, 7012),
        (b_ns, a_ns, &ga.ip, 7011),
        (a_ns, &ns, "192.168.101.1", 7013),
        (&ns, a_ns, &ga.ip, 7011),
    ];
    for (from, to_ns, to, port) in datagrams {
        assert!(
            udp(from, to_ns, to, *port, 5),
            "open: UDP {} to {to}",
            from.name
        );
    }
    if nc {
        assert!(tcp(a_ns, &gb.ip, 7002, 3), "open: TCP from A to B");
        assert!(
            tcp(a_ns, "192.168.101.1", 7003, 3),
            "open: TCP from A to the host"
        );
    }

    let a = ns.apply(&data, ISOLATED, None);
    ok(&a);
    assert_eq!(a.state("br101"), ("converged".into(), String::new()));
    assert_eq!(a.summary("nft_writes"), 1, "{}", a.log);
    assert!(has_steward_table(&ns));
    reach("lab 101 isolated", everything, false);
    for (from, to_ns, to, port) in datagrams {
        assert!(
            !udp(from, to_ns, to, *port, 2),
            "isolated: UDP {} to {to}",
            from.name
        );
    }
    if nc {
        assert!(!tcp(a_ns, &gb.ip, 7002, 1), "isolated: TCP from A to B");
        assert!(!tcp(b_ns, &ga.ip, 7001, 1), "isolated: TCP from B to A");
        assert!(
            !tcp(a_ns, "192.168.101.1", 7003, 1),
            "isolated: TCP from A to the host"
        );
        assert!(
            !tcp(&ns, &ga.ip, 7001, 1),
            "isolated: TCP from the host to A"
        );
    }
    // The open lab still reaches the host.
    reach("lab 102 open", &[(b_ns, "192.168.102.1")], true);

    // Converged: the agent kept the ruleset generation after its write, nothing committed
    // since, so it runs no nft at all (here there is none on its PATH) and writes nothing.
    let again = ns.apply_in(without_nft(&ns), &data, ISOLATED, None);
    ok(&again);
    assert_eq!(again.summary("nft_writes"), 0, "{}", again.log);
    assert_eq!(again.writes(), 0, "{}", again.log);
    assert_eq!(again.state("br101"), ("converged".into(), String::new()));

    // Back to open: the table goes, the guests reach each other again.
    let a = ns.apply(&data, OPEN, None);
    ok(&a);
    assert_eq!(a.summary("nft_writes"), 1, "{}", a.log);
    assert!(!has_steward_table(&ns), "{}", nft(&ns, &["list", "tables"]));
    reach("open again", everything, true);
    if nc {
        assert!(tcp(a_ns, &gb.ip, 7002, 3), "open again: TCP from A to B");
    }
    let a = ns.apply(&data, OPEN, None);
    ok(&a);
    assert_eq!(
        a.summary("nft_writes"),
        0,
        "no table, none wanted: {}",
        a.log
    );
}

/// The handle of the first drop rule of `chain` in our table.
fn first_drop_handle(ns: &NetNs, chain: &str) -> String {
    let v: Value =
        serde_json::from_str(&nft(ns, &["-j", "list", "chain", "inet", "steward", chain])).unwrap();
    let rule = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .find(|r| {
            r["expr"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s.get("drop").is_some())
        })
        .unwrap_or_else(|| panic!("no drop rule in {chain}: {v}"));
    rule["handle"].to_string()
}

/// After a change by hand, the next apply puts the table back as it was, reports the bridge
/// drifted (exit 1), and leaves `inet other` as it is.
fn restored(ns: &NetNs, data: &std::path::Path, spec: &str, table: &str, other: &str) {
    let a = ns.apply(data, spec, None);
    assert_eq!(
        a.code, 1,
        "drift restored: not converged this time\n{}",
        a.log
    );
    let (state, error) = a.state("bra");
    assert_eq!(state, "drifted", "{error}");
    assert!(error.contains("restored after drift"), "{error}");
    assert!(error.contains("isolation rules"), "{error}");
    assert_eq!(a.state("brb"), ("converged".into(), String::new()));
    assert!(
        a.log.contains("restored isolation rules after drift"),
        "{}",
        a.log
    );
    assert_eq!(nft(ns, &["list", "table", "inet", "steward"]), table);
    assert_eq!(nft(ns, &["list", "table", "inet", "other"]), other);
    ok(&ns.apply(data, spec, None));
}

#[test]
fn drift_is_restored_and_other_tables_are_left_alone() {
    if !require_tools() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    ns.enable_forwarding();
    // Someone else's table, with a base chain on the same hooks.
    nft(&ns, &["add", "table", "inet", "other"]);
    nft(&ns, &["add chain inet other passthrough { type filter hook forward priority 0; policy accept; }"]);
    nft(
        &ns,
        &["add rule inet other passthrough tcp dport 9999 counter accept"],
    );
    let other = nft(&ns, &["list", "table", "inet", "other"]);
    // Managed bridges this time, with the guests' ports in the spec.
    ns.veth("va", "va-peer");
    ns.veth("vb", "vb-peer");
    let spec = "networks:\n  bridges:\n    - {name: bra, addresses: [10.61.0.1/24], ports: [{iface: va}], isolation: isolated}\n    - {name: brb, addresses: [10.62.0.1/24], ports: [{iface: vb}]}\n";
    let a = ns.apply(&data, spec, None);
    ok(&a);
    let table = nft(&ns, &["list", "table", "inet", "steward"]);
    // bra's rules are those of the sets holding it.
    for set in ["policy_bridges", "isolated_bridges"] {
        let listed = nft(&ns, &["list", "set", "inet", "steward", set]);
        assert!(listed.contains("elements = { \"bra\" }"), "{listed}");
    }
    let pairs = nft(&ns, &["list", "set", "inet", "steward", "policy_pairs"]);
    assert!(
        pairs.contains("elements = { \"bra\" . \"bra\" }"),
        "{pairs}"
    );
    for dir in ["iifname", "oifname"] {
        let drop = format!("{dir} @policy_bridges iifname . oifname != @policy_pairs drop");
        assert!(table.contains(&drop), "{table}");
    }
    assert!(table.contains("chain input"), "{table}");
    assert!(!table.contains("brb"), "{table}");
    assert_eq!(nft(&ns, &["list", "table", "inet", "other"]), other);
    // The guests: their ends of va and vb, moved into namespaces of their own.
    let ga = require_netns().unwrap();
    let gb = require_netns().unwrap();
    for (g, peer, cidr, gw) in [
        (&ga, "va-peer", "10.61.0.10/24", "10.61.0.1"),
        (&gb, "vb-peer", "10.62.0.10/24", "10.62.0.1"),
    ] {
        ns.ip(&["link", "set", peer, "netns", &g.name]);
        g.ip(&["addr", "add", cidr, "dev", peer]);
        g.ip(&["link", "set", peer, "up"]);
        g.ip(&["route", "add", "default", "via", gw]);
    }
    ns.ip(&["link", "set", "va", "up"]);
    ns.ip(&["link", "set", "vb", "up"]);
    reach(
        "bra isolated",
        &[(&ga, "10.62.0.10"), (&gb, "10.61.0.10")],
        false,
    );
    reach("brb open", &[(&gb, "10.62.0.1")], true);

    nft(&ns, &["flush", "table", "inet", "steward"]);
    reach("rules flushed by hand", &[(&ga, "10.62.0.10")], true);
    restored(&ns, &data, spec, &table, &other);
    reach("restored after the flush", &[(&ga, "10.62.0.10")], false);

    // Its input drop (bra to the host) and output drop (the host into bra: the replies).
    for chain in ["input", "output"] {
        let handle = first_drop_handle(&ns, chain);
        nft(
            &ns,
            &[
                "delete", "rule", "inet", "steward", chain, "handle", &handle,
            ],
        );
    }
    assert!(
        ping(&ga, "10.61.0.1", 5),
        "bra reaches the host without its input and output rules"
    );
    restored(&ns, &data, spec, &table, &other);
    reach(
        "input and output rules restored",
        &[(&ga, "10.61.0.1")],
        false,
    );

    // bra taken out of the set its forward and input drops look it up in.
    nft(
        &ns,
        &["delete element inet steward policy_bridges { \"bra\" }"],
    );
    reach("bra out of its set", &[(&ga, "10.62.0.10")], true);
    restored(&ns, &data, spec, &table, &other);
    reach("bra back in its set", &[(&ga, "10.62.0.10")], false);

    nft(&ns, &["delete", "table", "inet", "steward"]);
    restored(&ns, &data, spec, &table, &other);

    // The agent's memory of its table lost, the table in place: believed absent, it is
    // created, which fails as the table exists, and replaced; known again afterwards.
    let state = data.join("state/network-links.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    assert!(
        o.remove("isolated").is_some() && o.remove("table").is_some(),
        "{v}"
    );
    std::fs::write(&state, v.to_string()).unwrap();
    let a = ns.apply(&data, spec, None);
    ok(&a);
    assert_eq!(a.summary("nft_writes"), 1, "{}", a.log);
    assert_eq!(nft(&ns, &["list", "table", "inet", "steward"]), table);
    let again = ns.apply_in(without_nft(&ns), &data, spec, None);
    ok(&again);
    assert_eq!(again.summary("nft_writes"), 0, "{}", again.log);

    // Policy removed: exactly our table goes.
    let open = spec.replace(", isolation: isolated", "");
    ok(&ns.apply(&data, &open, None));
    assert!(!has_steward_table(&ns));
    assert_eq!(nft(&ns, &["list", "table", "inet", "other"]), other);
    reach(
        "bra open again",
        &[(&ga, "10.62.0.10"), (&gb, "10.61.0.10")],
        true,
    );
}

/// `program` as found on this process's PATH.
fn which(program: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// The agent run in `ns` with a PATH where there is no `nft`.
fn without_nft(ns: &NetNs) -> Command {
    let mut c = Command::new(which("ip"));
    c.args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_steward-agent"))
        .env("PATH", "/nonexistent");
    c
}

#[test]
fn without_nft_an_isolated_bridge_fails_with_the_reason() {
    // Needs no nft: the agent runs with a PATH where there is none.
    let Some(ns) = require_netns() else { return };
    let (_tmp, data) = data_dir();
    let no_nft = || without_nft(&ns);
    // Nothing isolated: nft is never needed.
    ok(&ns.apply_in(no_nft(), &data, OPEN, None));
    let a = ns.apply_in(no_nft(), &data, ISOLATED, None);
    assert_eq!(a.code, 1, "{}", a.log);
    let (state, error) = a.state("br101");
    assert_eq!(state, "failed");
    assert!(error.contains("isolation: nftables"), "{error}");
    assert!(error.contains("install the nftables package"), "{error}");
    assert_eq!(a.state("br102"), ("converged".into(), String::new()));
    assert!(
        ns.link("br101").is_some(),
        "the links are made all the same"
    );
}

#[test]
fn the_watching_agent_restores_a_flushed_table_at_its_resync() {
    if !require_tools() {
        return;
    }
    let Some(ns) = require_netns() else { return };
    let (tmp, data) = data_dir();
    let spec = tmp.path().join("spec.yaml");
    std::fs::write(&spec, ISOLATED).unwrap();
    let log_path = tmp.path().join("agent.log");
    // Nothing about nftables makes a netlink event: the periodic resync (1 s) restores it.
    let _agent = Proc(
        ns.command(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--docker-socket", "/nonexistent/docker.sock"])
            .args(["--resync-interval", "1s", "apply", "--watch", "--file"])
            .arg(&spec)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || common::netns::strip_ansi(&std::fs::read_to_string(&log_path).unwrap());
    let rules = |ns: &NetNs| {
        has_steward_table(ns) && nft(ns, &["list", "table", "inet", "steward"]).contains("drop")
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        common::vm::wait(30, &|| format!("{what}\n{}", log()), || f().then_some(()))
    };
    wait("the table made", &|| rules(&ns));
    let table = nft(&ns, &["list", "table", "inet", "steward"]);
    nft(&ns, &["flush", "table", "inet", "steward"]);
    wait("the drift restored", &|| {
        log().contains("restored isolation rules after drift") && rules(&ns)
    });
    assert_eq!(nft(&ns, &["list", "table", "inet", "steward"]), table);
    // The spec edited back to open: the table goes.
    std::fs::write(&spec, OPEN).unwrap();
    wait("the table removed", &|| !has_steward_table(&ns));
}
