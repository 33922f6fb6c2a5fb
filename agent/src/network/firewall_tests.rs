//! The isolation planner, one table row per rule: which bridges a spec isolates, which sets
//! and rules they get and in which order, and what counts as drift.
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

/// The left side of a condition in nft's words.
fn left(left: &serde_json::Value) -> String {
    if let Some(k) = left["ct"]["key"].as_str() {
        format!("ct {k}")
    } else if let Some(k) = left["meta"]["key"].as_str() {
        format!("meta {k}")
    } else if let Some(parts) = left["concat"].as_array() {
        let keys: Vec<&str> = parts
            .iter()
            .map(|p| p["meta"]["key"].as_str().unwrap())
            .collect();
        keys.join(" . ")
    } else {
        let p = &left["payload"];
        format!(
            "{} {}",
            p["protocol"].as_str().unwrap(),
            p["field"].as_str().unwrap()
        )
    }
}

/// A condition in nft's words (the shapes the planner makes).
fn cond(c: &serde_json::Value) -> String {
    let m = &c["match"];
    let l = left(&m["left"]);
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

/// The sets as `name: a b` (`name: a.a b.b` for pairs).
fn sets(rs: &Ruleset) -> Vec<String> {
    (rs.sets.iter())
        .map(|s| {
            let items: Vec<String> = (s.bridges.iter())
                .map(|b| {
                    if s.pairs {
                        format!("{b}.{b}")
                    } else {
                        b.clone()
                    }
                })
                .collect();
            format!("{}: {}", s.name, items.join(" "))
        })
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

/// Isolated bridges without allows: the same nine rules however many, over sets.
const ISOLATED_RULES: &[&str] = &[
    "forward: iifname != @policy_bridges oifname != @policy_bridges accept",
    "forward: iifname @policy_bridges iifname . oifname != @policy_pairs drop",
    "forward: oifname @policy_bridges iifname . oifname != @policy_pairs drop",
    "input: iifname != @policy_bridges accept",
    "input: iifname @policy_bridges icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
    "input: iifname @policy_bridges drop",
    "output: oifname != @isolated_bridges accept",
    "output: oifname @isolated_bridges icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
    "output: oifname @isolated_bridges drop",
];

#[test]
fn isolated_bridges_share_their_rules_through_sets() {
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &[]),
        (
            &["br1"],
            &[
                "isolated_bridges: br1",
                "policy_bridges: br1",
                "policy_pairs: br1.br1",
            ],
        ),
        (
            &["brb", "bra"],
            &[
                "isolated_bridges: bra brb",
                "policy_bridges: bra brb",
                "policy_pairs: bra.bra brb.brb",
            ],
        ),
    ];
    for (bridges, want) in cases {
        let names: BTreeSet<String> = bridges.iter().map(|b| b.to_string()).collect();
        let rs = plan(&Policies::isolating(&names));
        assert_eq!(sets(&rs), *want, "{bridges:?}");
        let want_rules: &[&str] = if bridges.is_empty() {
            &[]
        } else {
            ISOLATED_RULES
        };
        assert_eq!(rules(&rs), want_rules, "{bridges:?}");
        assert_eq!(rs.is_empty(), bridges.is_empty(), "no bridge, no table");
        for c in &rs.chains {
            assert_eq!((c.priority, c.accept), (PRIORITY, true));
            for r in &c.rules {
                let comment = match r.bridge() {
                    None => FAST_PATH,
                    Some("@isolated_bridges") => "steward: isolated bridges",
                    Some(_) => "steward: bridges with a policy",
                };
                assert_eq!(r.comment.as_deref(), Some(comment));
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
    let yaml = "bridges: [{name: bra, isolation: isolated, allow: [{proto: tcp, port: 22}]}, {name: brb, isolation: isolated}]";
    let want = plan(&policies(&spec(yaml)));
    let rule_at = |rs: &Ruleset, hook: Hook, what: &str| {
        let c = rs.chains.iter().find(|c| c.hook == hook).unwrap();
        c.rules
            .iter()
            .position(|r| text(hook, r) == what)
            .unwrap_or_else(|| panic!("{what}"))
    };
    let without = |hook: Hook, what: &str| {
        let mut rs = want.clone();
        let i = rule_at(&rs, hook, what);
        let c = rs.chains.iter_mut().find(|c| c.hook == hook).unwrap();
        c.rules.remove(i);
        rs
    };
    let flushed = Ruleset {
        chains: (want.chains.iter())
            .map(|c| Chain {
                rules: Vec::new(),
                ..c.clone()
            })
            .collect(),
        ..want.clone()
    };
    let out_of = |set: &str, b: &str| {
        let mut rs = want.clone();
        rs.sets
            .iter_mut()
            .find(|s| s.name == set)
            .unwrap()
            .bridges
            .remove(b);
        rs
    };
    let mut accept = want.clone();
    let i = rule_at(
        &accept,
        Hook::Input,
        "input: iifname bra tcp dport 22 accept",
    );
    accept.chains[1].rules[i].verdict = Verdict::Drop;
    let mut policy = want.clone();
    policy.chains[0].accept = false;
    let mut foreign = want.clone();
    foreign.chains[1].rules.push(rules::per_bridge(
        "eth0",
        Isolation::Isolated,
        vec![IfMatch {
            dir: Dir::In,
            negate: false,
            name: "eth0".into(),
        }],
        Vec::new(),
        Verdict::Drop,
    ));
    let mut chain = want.clone();
    chain.other.push("mine".into());
    let mut flagged = want.clone();
    flagged.sets[0].other.push("flags".into());
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
            "a shared drop deleted: every bridge of its set",
            w(),
            Some(without(Hook::Input, "input: iifname @policy_bridges drop")),
            set(&["bra", "brb"]),
        ),
        (
            "the isolated bridges' output drop deleted",
            w(),
            Some(without(
                Hook::Output,
                "output: oifname @isolated_bridges drop",
            )),
            set(&["bra", "brb"]),
        ),
        (
            "bra's own input rule deleted",
            w(),
            Some(without(
                Hook::Input,
                "input: iifname bra tcp dport 22 accept",
            )),
            set(&["bra"]),
        ),
        (
            "bra's own input rule drops",
            w(),
            Some(accept),
            set(&["bra"]),
        ),
        (
            "brb taken out of a set",
            w(),
            Some(out_of(POLICY_SET, "brb")),
            set(&["brb"]),
        ),
        (
            "bra's pair taken out",
            w(),
            Some(out_of(PAIRS_SET, "bra")),
            set(&["bra"]),
        ),
        ("policy changed", w(), Some(policy), set(&[])),
        ("a foreign rule added", w(), Some(foreign), set(&[])),
        ("a foreign chain added", w(), Some(chain), set(&[])),
        ("a set's flags", w(), Some(flagged), set(&[])),
    ];
    for (what, want, have, expected) in cases {
        assert_eq!(drift(&want, have.as_ref()), expected, "{what}");
    }
}

#[test]
fn egress_only_and_allow_rules() {
    let yaml = "bridges:\n  - {name: bre, isolation: egress-only, allow: [{proto: udp, port: 53}]}\n  - {name: bro}\nlabs:\n  - {vlan: 7, isolation: isolated, allow: [{proto: tcp, port: 8080, from: bro}, {proto: icmp, from: 10.1.2.3/16}, {proto: tcp, from: \"fd00::1/128\"}]}";
    let rs = plan(&policies(&spec(yaml)));
    assert_eq!(
        sets(&rs),
        [
            "egress_bridges: bre",
            "isolated_bridges: br7",
            "policy_bridges: br7 bre",
            "policy_pairs: br7.br7 bre.bre",
        ]
    );
    let want = [
        // The fast path for everything else, the shared accepts, each bridge's own (in name
        // order), the drops.
        "forward: iifname != @policy_bridges oifname != @policy_bridges accept",
        "forward: oifname @egress_bridges ct state established,related accept",
        "forward: iifname @egress_bridges ct state established,related accept",
        "forward: oifname @egress_bridges ct status dnat accept",
        "forward: iifname br7 ct state established,related accept",
        "forward: oifname br7 iifname bro tcp dport 8080 accept",
        "forward: oifname br7 ip saddr 10.1.0.0/16 meta l4proto { icmp, ipv6-icmp } accept",
        "forward: oifname br7 ip6 saddr fd00::1 meta l4proto tcp accept",
        "forward: oifname bre udp dport 53 accept",
        "forward: iifname @policy_bridges iifname . oifname != @policy_pairs drop",
        "forward: oifname @policy_bridges iifname . oifname != @policy_pairs drop",
        // A `from` bridge is about routed traffic only; a network also opens the host's port.
        // IPv6 neighbour discovery with the host first, as ARP.
        "input: iifname != @policy_bridges accept",
        "input: iifname @policy_bridges icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
        "input: iifname @egress_bridges ct state established,related accept",
        "input: iifname br7 ip saddr 10.1.0.0/16 meta l4proto { icmp, ipv6-icmp } accept",
        "input: iifname br7 ip6 saddr fd00::1 meta l4proto tcp accept",
        "input: iifname bre udp dport 53 accept",
        "input: iifname @policy_bridges drop",
        // Nothing from the host into an isolated bridge but replies (it has allows).
        "output: oifname != @isolated_bridges accept",
        "output: oifname @isolated_bridges icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit } accept",
        "output: oifname br7 ct state established,related accept",
        "output: oifname @isolated_bridges drop",
        "postrouting: iifname @egress_bridges iifname . oifname != @policy_pairs masquerade",
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
            let comment = match r.bridge() {
                None => FAST_PATH.to_string(),
                Some("@egress_bridges") => "steward: egress-only bridges".into(),
                Some("@isolated_bridges") => "steward: isolated bridges".into(),
                Some("@policy_bridges") => "steward: bridges with a policy".into(),
                Some("bre") => "steward: bre egress-only".into(),
                Some(b) => format!("steward: {b} isolated"),
            };
            assert_eq!(r.comment.as_deref(), Some(&*comment));
        }
    }
    // With uplinks: out by them only (never by a bridge with a policy, itself included).
    let mut p = policies(&spec(yaml));
    p.uplinks = ["eth0", "wg0", "bre", "br7"].map(String::from).into();
    let got = rules(&plan(&p));
    let at = got
        .iter()
        .position(|r| r == "forward: oifname @egress_bridges ct status dnat accept");
    assert_eq!(
        got[at.unwrap() + 1],
        "forward: iifname @egress_bridges meta oifname { eth0, wg0 } accept",
    );
    p.uplinks = ["eth0"].map(String::from).into();
    let got = rules(&plan(&p));
    assert_eq!(
        got[at.unwrap() + 1],
        "forward: iifname @egress_bridges oifname eth0 accept"
    );
    assert_eq!(got.iter().filter(|r| r.contains("eth0")).count(), 1);
    // Only isolated bridges: no nat chain, no egress set.
    let iso = plan(&policies(&spec("labs: [{vlan: 7, isolation: isolated}]")));
    assert_eq!(iso.chains.len(), 3);
    assert_eq!(iso.sets.len(), 3);
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
