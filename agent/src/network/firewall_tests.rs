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
        .collect();
    format!("{}: {} drop", hook.name(), ms.join(" "))
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
        // Refused by validation; closed rather than open should it get here.
        ("bridges: [{name: bre, isolation: egress-only}]", &["bre"]),
    ];
    for (yaml, want) in cases {
        let got: Vec<String> = isolated(&spec(yaml)).into_iter().collect();
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
                "forward: iifname br1 oifname != br1 drop",
                "forward: oifname br1 iifname != br1 drop",
                "input: iifname br1 drop",
            ],
        ),
        (
            &["brb", "bra"],
            &[
                "forward: iifname bra oifname != bra drop",
                "forward: oifname bra iifname != bra drop",
                "forward: iifname brb oifname != brb drop",
                "forward: oifname brb iifname != brb drop",
                "input: iifname bra drop",
                "input: iifname brb drop",
            ],
        ),
    ];
    for (bridges, want) in cases {
        let set: BTreeSet<String> = bridges.iter().map(|b| b.to_string()).collect();
        let rs = plan(&set);
        assert_eq!(rules(&rs), *want, "{bridges:?}");
        assert_eq!(rs.is_empty(), bridges.is_empty(), "no bridge, no table");
        for c in &rs.chains {
            assert_eq!((c.priority, c.accept), (PRIORITY, true));
            for r in &c.rules {
                let b = r.bridge().unwrap();
                assert_eq!(
                    r.comment.as_deref(),
                    Some(&*format!("steward: {b} isolated"))
                );
                assert!(r.extra.is_empty());
            }
        }
    }
    let hooks: Vec<Hook> = plan(&["x".to_string()].into())
        .chains
        .iter()
        .map(|c| c.hook)
        .collect();
    assert_eq!(hooks, [Hook::Forward, Hook::Input]);
}

/// What `drift` answers.
type Drift = Option<BTreeSet<String>>;

#[test]
fn drift_names_the_bridges_whose_rules_differ() {
    let both: BTreeSet<String> = ["bra".to_string(), "brb".to_string()].into();
    let want = plan(&both);
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
    accept.chains[1].rules[1].extra.push("accept".into());
    let mut policy = want.clone();
    policy.chains[0].accept = false;
    let mut foreign = want.clone();
    foreign.chains[1]
        .rules
        .push(Rule::drop(vec![m(Dir::In, false, "eth0")], "eth0"));
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
            Some(without(Hook::Input, 0)),
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
