//! The table as JSON for `nft -j -f -`, and the kernel's `nft -j list table inet steward` read
//! back: the listing below is what nft 1.0.6 printed for `plan({bra})` (handles and all).
#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::{json, Value};

fn plan_of(bridges: &[&str]) -> Ruleset {
    firewall::plan(&bridges.iter().map(|b| b.to_string()).collect())
}

const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "steward", "handle": 4}}, {"chain": {"family": "inet", "table": "steward", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": -1, "policy": "accept"}}, {"chain": {"family": "inet", "table": "steward", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": -1, "policy": "accept"}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 3, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "bra"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "forward", "handle": 4, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "bra"}}, {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "steward", "chain": "input", "handle": 5, "comment": "steward: bra isolated", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bra"}}, {"drop": null}]}}]}"#;

#[test]
fn replacement_is_one_batch_that_recreates_the_table() {
    let v = serde_json::to_value(replace_batch(&plan_of(&["bra"]))).unwrap();
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
    assert_eq!(
        objects[5],
        json!({"add": {"rule": {"family": "inet", "table": "steward", "chain": "forward",
            "comment": "steward: bra isolated", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "bra"}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "bra"}},
                {"drop": null}]}}})
    );
    assert_eq!(objects.len(), 8, "3 table commands, 2 chains, 3 rules");
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
            edited(|v| v["nftables"][6]["rule"]["expr"][1] = json!({"accept": null})),
            bra.clone(),
        ),
        (
            "a counter added",
            edited(|v| {
                let e = v["nftables"][6]["rule"]["expr"].as_array_mut().unwrap();
                e.insert(1, json!({"counter": {"packets": 0, "bytes": 0}}));
            }),
            bra.clone(),
        ),
        (
            "a rule deleted",
            edited(|v| {
                v["nftables"].as_array_mut().unwrap().remove(5);
            }),
            bra.clone(),
        ),
        (
            "another bridge's name",
            edited(|v| v["nftables"][6]["rule"]["expr"][0]["match"]["right"] = json!("brz")),
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
