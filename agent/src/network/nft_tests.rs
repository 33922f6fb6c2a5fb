//! The table as JSON for `nft -j -f -`, and the kernel's `nft -j list table inet steward` read
//! back: the listing below is what nft 1.0.6 printed for `plan({bra})` (handles and all):
//! `[2..=4]` its sets, `[5..=7]` its chains, `[8..=16]` its rules (`[9]`: forward's first drop).
#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::{json, Value};

fn plan_of(bridges: &[&str]) -> Ruleset {
    let names = bridges.iter().map(|b| b.to_string()).collect();
    firewall::plan(&firewall::Policies::isolating(&names))
}

fn table_of(name: &str) -> Value {
    json!({"table": {"family": "inet", "name": name}})
}

const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "steward", "handle": 1}}, {"set": {"family": "inet", "name": "isolated_bridges", "table": "steward", "type": "ifname", "handle": 1, "elem": ["bra"]}}, {"set": {"family": "inet", "name": "policy_bridges", "table": "steward", "type": "ifname", "handle": 2, "elem": ["bra"]}}, {"set": {"family": "inet", "name": "policy_pairs", "table": "steward", "type": ["ifname", "ifname"], "handle": 3, "elem": [{"concat": ["bra", "bra"]}]}}, {"chain": {"family": "inet", "table": "steward", "name": "forward", "handle": 4, "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "input", "handle": 5, "type": "filter", "hook": "input", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "output", "handle": 6, "type": "filter", "hook": "output", "prio": -1, "policy": "accept"}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 7, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "@policy_bridges"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 8, "comment": "steward: bridges with a policy", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@policy_pairs"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 9, "comment": "steward: bridges with a policy", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@policy_bridges"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@policy_pairs"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 10, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 12, "comment": "steward: bridges with a policy", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 13, "comment": "steward: bridges with a policy", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 14, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "@isolated_bridges"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 16, "comment": "steward: isolated bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@isolated_bridges"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 17, "comment": "steward: isolated bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@isolated_bridges"}}, {"drop": null}]}}]}"#;

#[test]
fn replacement_is_one_batch_that_recreates_the_table() {
    let v = serde_json::to_value(replace_batch(&plan_of(&["bra"])).unwrap()).unwrap();
    let objects = v["nftables"].as_array().unwrap();
    let table = json!({"table": {"family": "inet", "name": "steward"}});
    assert_eq!(objects[0], json!({ "add": table.clone() }));
    assert_eq!(objects[1], json!({ "delete": table.clone() }));
    assert_eq!(objects[2], json!({ "add": table }));
    assert_eq!(
        objects[3],
        json!({"add": {"set": {"family": "inet", "table": "steward", "name": "isolated_bridges",
            "type": "ifname", "elem": ["bra"]}}})
    );
    assert_eq!(objects[4]["add"]["set"]["name"], "policy_bridges");
    assert_eq!(
        objects[5]["add"]["set"],
        json!({"family": "inet", "table": "steward", "name": "policy_pairs",
            "type": ["ifname", "ifname"], "elem": [{"concat": ["bra", "bra"]}]})
    );
    assert_eq!(
        objects[6],
        json!({"add": {"chain": {"family": "inet", "table": "steward", "name": "forward",
            "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}}})
    );
    assert_eq!(objects[7]["add"]["chain"]["hook"], "input");
    assert_eq!(objects[8]["add"]["chain"]["hook"], "output");
    assert_eq!(objects[9]["add"]["rule"]["comment"], firewall::FAST_PATH);
    assert_eq!(
        objects[10],
        json!({"add": {"rule": {"family": "inet", "table": "steward", "chain": "forward",
            "comment": "steward: bridges with a policy", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}},
                {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}},
                    {"meta": {"key": "oifname"}}]}, "right": "@policy_pairs"}},
                {"drop": null}]}}})
    );
    assert_eq!(
        objects.len(),
        18,
        "3 table commands, 3 sets, 3 chains, 9 rules"
    );
    // Every object names our table and nothing else.
    for o in objects {
        let inner = o.as_object().unwrap().values().next().unwrap();
        let obj = inner.as_object().unwrap().values().next().unwrap();
        let table = obj.get("table").or(obj.get("name")).unwrap();
        assert!(
            table == "steward" || obj.get("table") == Some(&json!("steward")),
            "{o}"
        );
        assert_eq!(obj["family"], "inet");
    }
    let create = serde_json::to_value(create_batch(&plan_of(&["bra"])).unwrap()).unwrap();
    let made = create["nftables"].as_array().unwrap();
    assert_eq!(made[0], json!({ "create": table_of("steward") }));
    assert_eq!(&made[1..], &objects[3..], "the same sets, chains and rules");
    let del = serde_json::to_value(delete_batch()).unwrap();
    assert_eq!(
        del,
        json!({"nftables": [{"delete": {"table": {"family": "inet", "name": "steward"}}}]})
    );
}

#[test]
fn the_kernels_listing_reads_back_as_the_plan() {
    let n: Nftables = serde_json::from_str(LISTED).unwrap();
    let got = parse(&n);
    assert_eq!(got, plan_of(&["bra"]));
    assert_eq!(firewall::drift(&plan_of(&["bra"]), Some(&got)), None);
}

/// `LISTED` with `f` applied to its JSON, read back.
fn edited(f: impl FnOnce(&mut Value)) -> Ruleset {
    let mut v: Value = serde_json::from_str(LISTED).unwrap();
    f(&mut v);
    parse(&serde_json::from_value(v).unwrap())
}

#[test]
fn changes_made_by_hand_are_seen() {
    let want = plan_of(&["bra"]);
    let drifted = |rs: &Ruleset| firewall::drift(&want, Some(rs));
    let bra = Some(BTreeSet::from(["bra".to_string()]));
    let cases: Vec<(&str, Ruleset, Option<BTreeSet<String>>)> = vec![
        (
            "accept instead of drop",
            edited(|v| v["nftables"][9]["rule"]["expr"][2] = json!({"accept": null})),
            bra.clone(),
        ),
        (
            "a counter added",
            edited(|v| {
                let e = v["nftables"][9]["rule"]["expr"].as_array_mut().unwrap();
                e.insert(1, json!({"counter": {"packets": 0, "bytes": 0}}));
            }),
            bra.clone(),
        ),
        (
            "a rule deleted",
            edited(|v| {
                v["nftables"].as_array_mut().unwrap().remove(9);
            }),
            bra.clone(),
        ),
        (
            "another bridge's name in a set",
            edited(|v| v["nftables"][3]["set"]["elem"] = json!(["brz"])),
            bra.clone(),
        ),
        (
            "policy drop",
            edited(|v| v["nftables"][5]["chain"]["policy"] = json!("drop")),
            Some(BTreeSet::new()),
        ),
        (
            "a chain of someone else's in our table",
            edited(|v| {
                let a = v["nftables"].as_array_mut().unwrap();
                a.push(
                    json!({"chain": {"family": "inet", "table": "steward", "name": "mine",
                    "handle": 9}}),
                );
                a.push(
                    json!({"rule": {"family": "inet", "table": "steward", "chain": "mine",
                    "handle": 10, "expr": [{"accept": null}]}}),
                );
            }),
            Some(BTreeSet::new()),
        ),
        (
            "another table's objects are ignored",
            edited(|v| {
                let a = v["nftables"].as_array_mut().unwrap();
                a.push(
                    json!({"rule": {"family": "inet", "table": "other", "chain": "input",
                    "handle": 11, "expr": [{"accept": null}]}}),
                );
            }),
            None,
        ),
    ];
    for (what, rs, expected) in cases {
        assert_eq!(drifted(&rs), expected, "{what}: {rs:?}");
    }
}

#[test]
fn hints() {
    assert!(hint("Error: Operation not permitted (exit status: 1)").contains("CAP_NET_ADMIN"));
    assert!(hint("Error: Could not process rule: Protocol not supported").contains("nf_tables"));
    assert_eq!(hint("syntax error"), "");
    let e = nft_error("list table inet steward", "Error: x".into());
    assert_eq!(
        e.to_string(),
        "nftables: list table inet steward failed: Error: x"
    );
}

/// What nft 1.0.6 printed for the plan of `POLICIES` (egress-only, allows of every kind).
const POLICIES: &str = "bridges:\n  - {name: bre, isolation: egress-only, allow: [{proto: udp, port: 53}]}\n  - {name: bro}\nlabs:\n  - {vlan: 7, isolation: isolated, allow: [{proto: tcp, port: 8080, from: bro}, {proto: icmp, from: 10.1.2.3/16}, {proto: tcp, from: \"fd00::1/128\"}]}";
const LISTED_POLICIES: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "steward", "handle": 1}}, {"set": {"family": "inet", "name": "egress_bridges", "table": "steward", "type": "ifname", "handle": 1, "elem": ["bre"]}}, {"set": {"family": "inet", "name": "isolated_bridges", "table": "steward", "type": "ifname", "handle": 2, "elem": ["br7"]}}, {"set": {"family": "inet", "name": "policy_bridges", "table": "steward", "type": "ifname", "handle": 3, "elem": ["br7", "bre"]}}, {"set": {"family": "inet", "name": "policy_pairs", "table": "steward", "type": ["ifname", "ifname"], "handle": 4, "elem": [{"concat": ["br7", "br7"]}, {"concat": ["bre", "bre"]}]}}, {"chain": {"family": "inet", "table": "steward", "name": "forward", "handle": 5, "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "input", "handle": 6, "type": "filter", "hook": "input", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "output", "handle": 7, "type": "filter", "hook": "output", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "postrouting", "handle": 8, "type": "nat", "hook": "postrouting", "prio": 99, "policy": "accept"}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 9, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "@policy_bridges"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 10, "comment": "steward: egress-only bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@egress_bridges"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 11, "comment": "steward: egress-only bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@egress_bridges"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 12, "comment": "steward: egress-only bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@egress_bridges"}}, {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 13, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 14, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bro"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 16, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.1.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["icmp", "ipv6-icmp"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 17, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "fd00::1"}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 18, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bre"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 19, "comment": "steward: bridges with a policy", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@policy_pairs"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 20, "comment": "steward: bridges with a policy", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@policy_bridges"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@policy_pairs"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 21, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 23, "comment": "steward: bridges with a policy", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 24, "comment": "steward: egress-only bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@egress_bridges"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 26, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.1.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["icmp", "ipv6-icmp"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 27, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "fd00::1"}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 28, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 29, "comment": "steward: bridges with a policy", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@policy_bridges"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 30, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "@isolated_bridges"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 32, "comment": "steward: isolated bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@isolated_bridges"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 33, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 34, "comment": "steward: isolated bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@isolated_bridges"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "postrouting", "handle": 35, "comment": "steward: egress-only bridges", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@egress_bridges"}}, {"match": {"op": "!=", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@policy_pairs"}}, {"masquerade": null}]}}]}"#;

#[test]
fn egress_only_and_allow_rules_read_back_as_planned() {
    let n: steward_proto::NetworksSpec = serde_norway::from_str(POLICIES).unwrap();
    let want = firewall::plan(&firewall::policies(&n));
    assert_eq!(want.chains.len(), 4);
    let got = parse(&serde_json::from_str(LISTED_POLICIES).unwrap());
    assert_eq!(got, want);
    assert_eq!(firewall::drift(&want, Some(&got)), None);
    // The batch carries the nat chain and the conditions as written.
    let v = serde_json::to_value(replace_batch(&want).unwrap()).unwrap();
    let objects = v["nftables"].as_array().unwrap();
    assert!(objects.iter().any(|o| o["add"]["chain"]["type"] == "nat"
        && o["add"]["chain"]["hook"] == "postrouting"
        && o["add"]["chain"]["prio"] == 99));
    assert!(objects
        .iter()
        .any(|o| o["add"]["rule"]["expr"][2] == json!({"masquerade": null})));
    // A verdict changed, a condition changed: drift of that bridge only.
    let mut edited: Value = serde_json::from_str(LISTED_POLICIES).unwrap();
    let rules = edited["nftables"].as_array_mut().unwrap();
    let dnat = (rules.iter_mut())
        .find(|o| o["rule"]["expr"][1]["match"]["right"] == "dnat")
        .unwrap();
    dnat["rule"]["expr"][1]["match"]["right"] = json!("snat");
    let got = parse(&serde_json::from_value(edited).unwrap());
    assert_eq!(
        firewall::drift(&want, Some(&got)),
        Some(BTreeSet::from(["bre".to_string()]))
    );
    let mut edited: Value = serde_json::from_str(LISTED_POLICIES).unwrap();
    let rules = edited["nftables"].as_array_mut().unwrap();
    let masq = (rules.iter_mut())
        .find(|o| o["rule"]["expr"][2] == json!({"masquerade": null}))
        .unwrap();
    masq["rule"]["expr"][2] = json!({"accept": null});
    let got = parse(&serde_json::from_value(edited).unwrap());
    assert_eq!(
        firewall::drift(&want, Some(&got)),
        Some(BTreeSet::from(["bre".to_string()]))
    );
}
