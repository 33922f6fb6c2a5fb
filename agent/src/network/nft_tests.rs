//! The table as JSON for `nft -j -f -`, and the kernel's `nft -j list table inet steward` read
//! back: the listing below is what nft 1.0.6 printed for `plan({bra})` (handles and all).
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

const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "steward", "handle": 1}}, {"chain": {"family": "inet", "table": "steward", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "output", "handle": 3, "type": "filter", "hook": "output", "prio": -1, "policy": "accept"}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 4, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "bra"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 5, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "bra"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 6, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bra"}}, {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 7, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 9, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 10, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 11, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "bra"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 13, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bra"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 14, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bra"}}, {"drop": null}]}}]}"#;

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
        json!({"add": {"chain": {"family": "inet", "table": "steward", "name": "forward",
            "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}}})
    );
    assert_eq!(objects[4]["add"]["chain"]["hook"], "input");
    assert_eq!(objects[5]["add"]["chain"]["hook"], "output");
    assert_eq!(objects[6]["add"]["rule"]["comment"], firewall::FAST_PATH);
    assert_eq!(
        objects[7],
        json!({"add": {"rule": {"family": "inet", "table": "steward", "chain": "forward",
            "comment": "steward: bra isolated", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bra"}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "bra"}},
                {"drop": null}]}}})
    );
    assert_eq!(objects.len(), 15, "3 table commands, 3 chains, 9 rules");
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
    assert_eq!(&made[1..], &objects[3..], "the same chains and rules");
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
            edited(|v| v["nftables"][7]["rule"]["expr"][1] = json!({"accept": null})),
            bra.clone(),
        ),
        (
            "a counter added",
            edited(|v| {
                let e = v["nftables"][7]["rule"]["expr"].as_array_mut().unwrap();
                e.insert(1, json!({"counter": {"packets": 0, "bytes": 0}}));
            }),
            bra.clone(),
        ),
        (
            "a rule deleted",
            edited(|v| {
                v["nftables"].as_array_mut().unwrap().remove(6);
            }),
            bra.clone(),
        ),
        (
            "another bridge's name",
            edited(|v| v["nftables"][7]["rule"]["expr"][0]["match"]["right"] = json!("brz")),
            bra.clone(),
        ),
        (
            "policy drop",
            edited(|v| v["nftables"][2]["chain"]["policy"] = json!("drop")),
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
const LISTED_POLICIES: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "steward", "handle": 1}}, {"chain": {"family": "inet", "table": "steward", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "output", "handle": 3, "type": "filter", "hook": "output", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "postrouting", "handle": 4, "type": "nat", "hook": "postrouting", "prio": 99, "policy": "accept"}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 7, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["br7", "bre"]}}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["br7", "bre"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 8, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 9, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bro"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 11, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.1.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["icmp", "ipv6-icmp"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 12, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "fd00::1"}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 13, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bre"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 14, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 15, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bre"}}, {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 16, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bre"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 17, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 18, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 19, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "bre"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 20, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bre"}}, {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 22, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["br7", "bre"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 24, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 26, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.1.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["icmp", "ipv6-icmp"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 27, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "fd00::1"}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 28, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br7"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 30, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 31, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 32, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 33, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 34, "comment": "steward: not a bridge with a policy", "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 36, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"set": ["nd-neighbor-solicit", "nd-neighbor-advert"]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 37, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "output", "handle": 38, "comment": "steward: br7 isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br7"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "postrouting", "handle": 39, "comment": "steward: bre egress-only", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bre"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "bre"}}, {"masquerade": null}]}}]}"#;

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
