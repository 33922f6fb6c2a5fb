//! The isolation planner, one table row per rule: which bridges a spec isolates, which rules
//! they get and in which order, and what counts as drift.
#![allow(clippy::unwrap_used)]

use super::*;

fn spec(yaml: &str) -> NetworksSpec {
    serde_norway::from_str(yaml).unwrap()
}

/// A rule as `nft list` would show it, without the comment.
fn text(hook: Hook, r: &Rule) -> String {
    let ms: Vec<String> = (r.matches.iter())
        .map(|m| {
            let key = if m.dir == Dir::In {
                "iifname"
            } else {
                "oifname"
            };
            let op = if m.negate { "!= " } else { "" };
            format!("{key} {op}{}", m.name)
        })
        .chain(r.conds.iter().map(cond))
        .collect();
    let v = format!("{:?}", r.verdict).to_lowercase();
    format!("{}: {} {v}", hook.name(), ms.join(" "))
}

/// A condition in nft's words (the shapes the planner makes).
fn cond(c: &serde_json::Value) -> String {
    let m = &c["match"];
    let left = &m["left"];
    let l = if let Some(k) = left["ct"]["key"].as_str() {
        format!("ct {k}")
    } else if let Some(k) = left["meta"]["key"].as_str() {
        format!("meta {k}")
    } else {
        let p = &left["payload"];
        format!(
            "{} {}",
            p["protocol"].as_str().unwrap(),
            p["field"].as_str().unwrap()
        )
    };
    let r = &m["right"];
    let r = if let Some(p) = r.get("prefix") {
        format!("{}/{}", p["addr"].as_str().unwrap(), p["len"])
    } else if let Some(set) = r.get("set") {
        let items: Vec<&str> = set
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        format!("{{ {} }}", items.join(", "))
    } else if let Some(a) = r.as_array() {
        let items: Vec<&str> = a.iter().map(|v| v.as_str().unwrap()).collect();
        items.join(",")
    } else {
        r.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| r.to_string())
    };
    let op = if m["op"] == "!=" { "!= " } else { "" };
    format!("{l} {op}{r}")
}

fn rules(rs: &Ruleset) -> Vec<String> {
    (rs.chains.iter())
        .flat_map(|c| c.rules.iter().map(move |r| text(c.hook, r)))
        .collect()
}

#[test]
fn isolated_bridges_from_the_spec() {
    let cases: &[(&str, &[&str])] = &[
        ("{}", &[]),
        ("bridges: [{name: bra}, {name: brb, isolation: open}]", &[]),
        ("bridges: [{name: brb, isolation: isolated}, {name: bra}]", &["brb"]),
        ("labs: [{vlan: 102, isolation: isolated}, {vlan: 101}]", &["br102"]),
        (
            "labs: [{vlan: 7, bridge: lab7, isolation: isolated}]\nbridges: [{name: zz, isolation: isolated}, {name: aa, isolation: isolated}]",
            &["aa", "lab7", "zz"],
        ),
        ("bridges: [{name: bre, isolation: egress-only}]", &["bre"]),
    ];
    for (yaml, want) in cases {
        let got: Vec<String> = policies(&spec(yaml)).names().into_iter().collect();
        assert_eq!(got, *want, "{yaml}");
    }
}

#[test]
fn rules_per_isolated_bridge_in_a_stable_order() {
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &[]),
        (
            &["br1"],
            &[
                "forward: iifname != br1 oifname != br1 accept",
                "forward: iifname br1 oifname != br1 drop",
                "forward: oifname br1 iifname != br1 drop",
                "input: iifname != br1 accept",
                "input: iifname br1 icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
                "input: iifname br1 drop",
                "output: oifname != br1 accept",
                "output: oifname br1 icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
                "output: oifname br1 drop",
            ],
        ),
        (
            &["brb", "bra"],
            &[
                "forward: meta iifname != { bra, brb } meta oifname != { bra, brb } accept",
                "forward: iifname bra oifname != bra drop",
                "forward: oifname bra iifname != bra drop",
                "forward: iifname brb oifname != brb drop",
                "forward: oifname brb iifname != brb drop",
                "input: meta iifname != { bra, brb } accept",
                "input: iifname bra icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
                "input: iifname bra drop",
                "input: iifname brb icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
                "input: iifname brb drop",
                "output: meta oifname != { bra, brb } accept",
                "output: oifname bra icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
                "output: oifname bra drop",
                "output: oifname brb icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
                "output: oifname brb drop",
            ],
        ),
    ];
    for (bridges, want) in cases {
        let set: BTreeSet<String> = bridges.iter().map(|b| b.to_string()).collect();
        let rs = plan(&Policies::isolating(&set));
        assert_eq!(rules(&rs), *want, "{bridges:?}");
        assert_eq!(rs.is_empty(), bridges.is_empty(), "no bridge, no table");
        for c in &rs.chains {
            assert_eq!((c.priority, c.accept), (PRIORITY, true));
            for r in &c.rules {
                let Some(b) = r.bridge() else {
                    assert_eq!(r.comment.as_deref(), Some(FAST_PATH));
                    continue;
                };
                assert_eq!(
                    r.comment.as_deref(),
                    Some(&*format!("steward: {b} isolated"))
                );
                assert!(r.extra.is_empty());
            }
        }
    }
    let hooks: Vec<Hook> = plan(&Policies::isolating(&["x".to_string()].into()))
        .chains
        .iter()
        .map(|c| c.hook)
        .collect();
    assert_eq!(hooks, [Hook::Forward, Hook::Input, Hook::Output]);
}

/// What `drift` answers.
type Drift = Option<BTreeSet<String>>;

#[test]
fn drift_names_the_bridges_whose_rules_differ() {
    let both: BTreeSet<String> = ["bra".to_string(), "brb".to_string()].into();
    let want = plan(&Policies::isolating(&both));
    let without = |hook: Hook, i: usize| {
        let mut rs = want.clone();
        let c = rs.chains.iter_mut().find(|c| c.hook == hook).unwrap();
        c.rules.remove(i);
        rs
    };
    let flushed = Ruleset {
        chains: want
            .chains
            .iter()
            .map(|c| Chain {
                rules: Vec::new(),
                ..c.clone()
            })
            .collect(),
        other: Vec::new(),
    };
    let mut accept = want.clone();
    accept.chains[1].rules[3].extra.push("accept".into());
    let mut policy = want.clone();
    policy.chains[0].accept = false;
    let mut foreign = want.clone();
    foreign.chains[1].rules.push(Rule::new(
        "eth0",
        Isolation::Isolated,
        vec![m(Dir::In, false, "eth0")],
        Vec::new(),
        Verdict::Drop,
    ));
    let mut chain = want.clone();
    chain.other.push("mine".into());
    let set = |names: &[&str]| Some(names.iter().map(|n| n.to_string()).collect());
    let none = Ruleset::default;
    let w = || want.clone();
    let cases: Vec<(&str, Ruleset, Option<Ruleset>, Drift)> = vec![
        ("as planned", w(), Some(w()), None),
        ("no table wanted, none there", none(), None, None),
        ("no table wanted, one there", none(), Some(w()), set(&[])),
        ("empty table left", none(), Some(none()), set(&[])),
        ("table gone", w(), None, set(&["bra", "brb"])),
        ("table flushed", w(), Some(flushed), set(&["bra", "brb"])),
        (
            "a forward rule of brb deleted",
            w(),
            Some(without(Hook::Forward, 3)),
            set(&["brb"]),
        ),
        (
            "bra's input rule deleted",
            w(),
            Some(without(Hook::Input, 1)),
            set(&["bra"]),
        ),
        ("brb's input rule accepts", w(), Some(accept), set(&["brb"])),
        ("policy changed", w(), Some(policy), set(&[])),
        ("a foreign rule added", w(), Some(foreign), set(&[])),
        ("a foreign chain added", w(), Some(chain), set(&[])),
    ];
    for (what, want, have, expected) in cases {
        assert_eq!(drift(&want, have.as_ref()), expected, "{what}");
    }
}

#[test]
fn egress_only_and_allow_rules() {
    let yaml = "bridges:\n  - {name: bre, isolation: egress-only, allow: [{proto: udp, port: 53}]}\n  - {name: bro}\nlabs:\n  - {vlan: 7, isolation: isolated, allow: [{proto: tcp, port: 8080, from: bro}, {proto: icmp, from: 10.1.2.3/16}, {proto: tcp, from: \"fd00::1/128\"}]}";
    let rs = plan(&policies(&spec(yaml)));
    let want = [
        // The fast path for everything else, every accept (bridges in name order), every drop.
        "forward: meta iifname != { br7, bre } meta oifname != { br7, bre } accept",
        "forward: iifname br7 ct state established,related accept",
        "forward: oifname br7 iifname bro tcp dport 8080 accept",
        "forward: oifname br7 ip saddr 10.1.0.0/16 meta l4proto { icmp, ipv6-icmp } accept",
        "forward: oifname br7 ip6 saddr fd00::1 meta l4proto tcp accept",
        "forward: oifname bre ct state established,related accept",
        "forward: iifname bre ct state established,related accept",
        "forward: oifname bre ct status dnat accept",
        "forward: oifname bre udp dport 53 accept",
        "forward: iifname br7 oifname != br7 drop",
        "forward: oifname br7 iifname != br7 drop",
        "forward: iifname bre oifname != bre drop",
        "forward: oifname bre iifname != bre drop",
        // A `from` bridge is about routed traffic only; a network also opens the host's port.
        // IPv6 neighbour discovery with the host first, as ARP.
        "input: meta iifname != { br7, bre } accept",
        "input: iifname br7 icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
        "input: iifname br7 ip saddr 10.1.0.0/16 meta l4proto { icmp, ipv6-icmp } accept",
        "input: iifname br7 ip6 saddr fd00::1 meta l4proto tcp accept",
        "input: iifname br7 drop",
        "input: iifname bre icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
        "input: iifname bre ct state established,related accept",
        "input: iifname bre udp dport 53 accept",
        "input: iifname bre drop",
        // Nothing from the host into an isolated bridge but replies (it has allows).
        "output: oifname != br7 accept",
        "output: oifname br7 icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
        "output: oifname br7 ct state established,related accept",
        "output: oifname br7 drop",
        "postrouting: iifname bre oifname != bre masquerade",
    ];
    let got = rules(&rs);
    assert_eq!(got, want, "{}", got.join("\n"));
    let chains: Vec<(Hook, i32)> = rs.chains.iter().map(|c| (c.hook, c.priority)).collect();
    assert_eq!(
        chains,
        [
            (Hook::Forward, -1),
            (Hook::Input, -1),
            (Hook::Output, -1),
            (Hook::Postrouting, 99)
        ]
    );
    for c in &rs.chains {
        for r in &c.rules {
            let Some(b) = r.bridge() else {
                assert_eq!(r.comment.as_deref(), Some(FAST_PATH));
                continue;
            };
            let what = if b == "bre" {
                "egress-only"
            } else {
                "isolated"
            };
            assert_eq!(r.comment.as_deref(), Some(&*format!("steward: {b} {what}")));
        }
    }
    // With uplinks: out by them only (never by a bridge with a policy, itself included).
    let mut p = policies(&spec(yaml));
    p.uplinks = ["eth0", "wg0", "bre", "br7"].map(String::from).into();
    let got = rules(&plan(&p));
    let at = got
        .iter()
        .position(|r| r == "forward: oifname bre ct status dnat accept");
    assert_eq!(
        got[at.unwrap() + 1..at.unwrap() + 4],
        [
            "forward: iifname bre oifname eth0 accept",
            "forward: iifname bre oifname wg0 accept",
            "forward: oifname bre udp dport 53 accept",
        ]
    );
    assert_eq!(got.iter().filter(|r| r.contains("oifname eth0")).count(), 1);
    // Only isolated bridges: no nat chain.
    let iso = plan(&policies(&spec("labs: [{vlan: 7, isolation: isolated}]")));
    assert_eq!(iso.chains.len(), 3);
}

#[test]
fn a_policy_cutting_the_route_to_the_registry_is_named() {
    let p = policies(&spec(
        "bridges: [{name: bri, isolation: isolated}, {name: bre, isolation: egress-only}, {name: bro}]",
    ));
    let ip: IpAddr = "10.9.0.1".parse().unwrap();
    let (bridge, why) = cutting_registry(&p, Some((ip, "bri"))).unwrap();
    assert_eq!(bridge, "bri");
    assert!(
        why.contains("route to the registry (10.9.0.1 via bri)"),
        "{why}"
    );
    assert!(why.contains("no rules were applied for bri"), "{why}");
    // Egress-only accepts the replies; open has no rules; not a bridge of ours; no route.
    for iface in ["bre", "bro", "eth0"] {
        assert_eq!(cutting_registry(&p, Some((ip, iface))), None, "{iface}");
    }
    assert_eq!(cutting_registry(&p, None), None);
}
