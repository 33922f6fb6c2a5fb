//! The isolation planner proper: the spec's policies → the table's sets and rules, as the
//! parent module's documentation lays them out. Pure.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde_json::{json, Value};
use steward_proto::{AllowProto, AllowRule, Isolation};

use super::{Chain, Dir, Hook, IfMatch, Policies, Policy, Rule, Ruleset, Set, Verdict};

/// The sets' names (never an nft keyword: `nft -f` of the listing reads them back).
pub const POLICY_SET: &str = "policy_bridges";
pub const PAIRS_SET: &str = "policy_pairs";
pub const ISOLATED_SET: &str = "isolated_bridges";
pub const EGRESS_SET: &str = "egress_bridges";

/// The comment of the fast-path rules.
pub const FAST_PATH: &str = "steward: not a bridge with a policy";

fn m(dir: Dir, negate: bool, name: &str) -> IfMatch {
    IfMatch {
        dir,
        negate,
        name: name.to_string(),
    }
}

/// `iifname @set` / `oifname != @set`, ...
fn in_set(dir: Dir, negate: bool, set: &str) -> IfMatch {
    m(dir, negate, &format!("@{set}"))
}

fn is(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

/// A rule about one bridge `b`, commented `steward: b <isolation>`.
pub(super) fn per_bridge(
    b: &str,
    p: Isolation,
    matches: Vec<IfMatch>,
    conds: Vec<Value>,
    v: Verdict,
) -> Rule {
    let what = match p {
        Isolation::EgressOnly => "egress-only",
        _ => "isolated",
    };
    rule(matches, conds, v, format!("steward: {b} {what}"))
}

fn rule(matches: Vec<IfMatch>, conds: Vec<Value>, verdict: Verdict, comment: String) -> Rule {
    Rule {
        matches,
        conds,
        verdict,
        extra: Vec::new(),
        comment: Some(comment),
    }
}

/// A rule about every bridge of a set, commented after the set.
fn shared(matches: Vec<IfMatch>, conds: Vec<Value>, v: Verdict) -> Rule {
    let set = (matches.iter().find(|m| !m.negate)).map_or("", |m| &m.name[1..]);
    let whose = match set {
        ISOLATED_SET => "isolated bridges",
        EGRESS_SET => "egress-only bridges",
        _ => "bridges with a policy",
    };
    rule(matches, conds, v, format!("steward: {whose}"))
}

/// `ct state established,related`
pub fn ct_replies() -> Value {
    is(
        json!({"ct": {"key": "state"}}),
        "in",
        json!(["established", "related"]),
    )
}

/// `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }`: IPv6 neighbour discovery, the
/// ARP of IPv6 (which nftables' `inet` hooks see, unlike ARP): always let through between a
/// bridge and the host, as ARP is, or nothing on the bridge could reach its gateway or an
/// allowed port over IPv6.
pub fn neighbour_discovery() -> Value {
    is(
        json!({"payload": {"protocol": "icmpv6", "field": "type"}}),
        "==",
        json!({"set": ["nd-neighbor-advert", "nd-neighbor-solicit"]}),
    )
}

/// `iifname . oifname != @policy_pairs`: between two interfaces, not both the same bridge.
pub fn not_within() -> Value {
    let key = |k| json!({"meta": {"key": k}});
    is(
        json!({"concat": [key("iifname"), key("oifname")]}),
        "!=",
        json!(format!("@{PAIRS_SET}")),
    )
}

/// `oifname U`: one name, or an anonymous set of them, sorted (nft lists a set's elements
/// in an order of its own: `nft.rs` sorts them back); `names` not empty.
fn out_by(names: &[&str]) -> (Vec<IfMatch>, Vec<Value>) {
    if let [one] = names {
        return (vec![m(Dir::Out, false, one)], Vec::new());
    }
    let cond = is(
        json!({"meta": {"key": "oifname"}}),
        "==",
        json!({"set": names}),
    );
    (Vec::new(), vec![cond])
}

/// `ct status dnat`
pub fn ct_dnat() -> Value {
    is(json!({"ct": {"key": "status"}}), "in", json!("dnat"))
}

/// `ip saddr N` / `ip6 saddr N` (a host address without its prefix length, as nft prints it).
fn saddr(n: IpNet) -> Value {
    let n = n.trunc();
    let family = if matches!(n, IpNet::V4(_)) {
        "ip"
    } else {
        "ip6"
    };
    let right = if n.prefix_len() == n.max_prefix_len() {
        json!(n.addr().to_string())
    } else {
        json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}})
    };
    is(
        json!({"payload": {"protocol": family, "field": "saddr"}}),
        "==",
        right,
    )
}

/// `tcp dport P`, `meta l4proto tcp`, `meta l4proto { icmp, ipv6-icmp }`, ...
fn proto(p: AllowProto, port: Option<u16>) -> Value {
    let name = match p {
        AllowProto::Tcp => "tcp",
        AllowProto::Udp => "udp",
        AllowProto::Icmp => {
            let set = json!({"set": ["icmp", "ipv6-icmp"]});
            return is(json!({"meta": {"key": "l4proto"}}), "==", set);
        }
    };
    match port {
        Some(port) => {
            let field = json!({"payload": {"protocol": name, "field": "dport"}});
            is(field, "==", json!(port))
        }
        None => is(json!({"meta": {"key": "l4proto"}}), "==", json!(name)),
    }
}

/// `from` as a network, when it is one (else it names a bridge).
fn from_net(a: &AllowRule) -> Option<IpNet> {
    a.from.as_deref().and_then(|f| f.parse().ok())
}

/// `B`'s own accepts in `forward`: its allows, and replies out of an isolated `B` that has
/// some.
fn forward_accepts(b: &str, p: &Policy) -> Vec<Rule> {
    let rule = |ms, cs| per_bridge(b, p.isolation, ms, cs, Verdict::Accept);
    let mut out = Vec::new();
    if p.isolation == Isolation::Isolated && !p.allow.is_empty() {
        out.push(rule(vec![m(Dir::In, false, b)], vec![ct_replies()]));
    }
    for a in &p.allow {
        let mut ms = vec![m(Dir::Out, false, b)];
        let mut cs = Vec::new();
        match (from_net(a), &a.from) {
            (Some(n), _) => cs.push(saddr(n)),
            (None, Some(bridge)) => ms.push(m(Dir::In, false, bridge)),
            (None, None) => {}
        }
        cs.push(proto(a.proto, a.port));
        out.push(rule(ms, cs));
    }
    out
}

/// `B`'s own accepts in `input`: the allows from a network or from anywhere.
fn input_accepts(b: &str, p: &Policy) -> Vec<Rule> {
    let allows = (p.allow.iter()).filter(|a| a.from.is_none() || from_net(a).is_some());
    allows
        .map(|a| {
            let mut cs: Vec<Value> = from_net(a).map(saddr).into_iter().collect();
            cs.push(proto(a.proto, a.port));
            let ms = vec![m(Dir::In, false, b)];
            per_bridge(b, p.isolation, ms, cs, Verdict::Accept)
        })
        .collect()
}

/// The sets: every bridge with a policy (as names and as pairs), the isolated and the
/// egress-only ones, each only when not empty; by name.
fn sets(p: &Policies) -> Vec<Set> {
    let of = |want: Option<Isolation>| -> BTreeSet<String> {
        (p.bridges.iter())
            .filter(|(_, pol)| want.is_none_or(|w| pol.isolation == w))
            .map(|(b, _)| b.clone())
            .collect()
    };
    let set = |name: &str, pairs, bridges| Set {
        name: name.to_string(),
        pairs,
        bridges,
        other: Vec::new(),
    };
    let mut out = vec![
        set(POLICY_SET, false, of(None)),
        set(PAIRS_SET, true, of(None)),
        set(ISOLATED_SET, false, of(Some(Isolation::Isolated))),
        set(EGRESS_SET, false, of(Some(Isolation::EgressOnly))),
    ];
    out.retain(|s| !s.bridges.is_empty());
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `forward`: the fast path, the egress-only bridges' accepts, each bridge's own, the drops.
fn forward(p: &Policies, egress: bool, uplinks: &[&str]) -> Vec<Rule> {
    let (all, e) = (POLICY_SET, EGRESS_SET);
    let mut out = vec![fast_path(vec![
        in_set(Dir::In, true, all),
        in_set(Dir::Out, true, all),
    ])];
    if egress {
        let accept = |ms, cs| shared(ms, cs, Verdict::Accept);
        out.push(accept(vec![in_set(Dir::Out, false, e)], vec![ct_replies()]));
        out.push(accept(vec![in_set(Dir::In, false, e)], vec![ct_replies()]));
        out.push(accept(vec![in_set(Dir::Out, false, e)], vec![ct_dnat()]));
        if !uplinks.is_empty() {
            let (mut ms, cs) = out_by(uplinks);
            ms.insert(0, in_set(Dir::In, false, e));
            out.push(accept(ms, cs));
        }
    }
    out.extend((p.bridges.iter()).flat_map(|(b, pol)| forward_accepts(b, pol)));
    for dir in [Dir::In, Dir::Out] {
        let ms = vec![in_set(dir, false, all)];
        out.push(shared(ms, vec![not_within()], Verdict::Drop));
    }
    out
}

/// `input`: the fast path, neighbour discovery, replies to egress-only bridges, each bridge's
/// own accepts, the drop.
fn input(p: &Policies, egress: bool) -> Vec<Rule> {
    let from_all = || vec![in_set(Dir::In, false, POLICY_SET)];
    let mut out = vec![
        fast_path(vec![in_set(Dir::In, true, POLICY_SET)]),
        shared(from_all(), vec![neighbour_discovery()], Verdict::Accept),
    ];
    if egress {
        let ms = vec![in_set(Dir::In, false, EGRESS_SET)];
        out.push(shared(ms, vec![ct_replies()], Verdict::Accept));
    }
    out.extend((p.bridges.iter()).flat_map(|(b, pol)| input_accepts(b, pol)));
    out.push(shared(from_all(), Vec::new(), Verdict::Drop));
    out
}

/// `output` (with isolated bridges): the fast path, neighbour discovery, replies from isolated
/// bridges with allows, the drop.
fn output(p: &Policies) -> Vec<Rule> {
    let into = || vec![in_set(Dir::Out, false, ISOLATED_SET)];
    let mut out = vec![
        fast_path(vec![in_set(Dir::Out, true, ISOLATED_SET)]),
        shared(into(), vec![neighbour_discovery()], Verdict::Accept),
    ];
    for (b, pol) in &p.bridges {
        if pol.isolation == Isolation::Isolated && !pol.allow.is_empty() {
            let ms = vec![m(Dir::Out, false, b)];
            out.push(per_bridge(
                b,
                pol.isolation,
                ms,
                vec![ct_replies()],
                Verdict::Accept,
            ));
        }
    }
    out.push(shared(into(), Vec::new(), Verdict::Drop));
    out
}

fn fast_path(matches: Vec<IfMatch>) -> Rule {
    rule(matches, Vec::new(), Verdict::Accept, FAST_PATH.to_string())
}

/// The table for `p` (see the parent module's documentation); empty when no bridge has a
/// policy.
pub fn plan(p: &Policies) -> Ruleset {
    if p.bridges.is_empty() {
        return Ruleset::default();
    }
    let sets = sets(p);
    let has = |name| sets.iter().any(|s| s.name == name);
    let (isolated, egress) = (has(ISOLATED_SET), has(EGRESS_SET));
    // A bridge with a policy is nobody's way out, even when a default route says so.
    let uplinks: Vec<&str> = (p.uplinks.iter())
        .filter(|u| !p.bridges.contains_key(*u))
        .map(String::as_str)
        .collect();
    let chain = |hook: Hook, rules| Chain {
        hook,
        priority: hook.priority(),
        accept: true,
        rules,
    };
    let mut chains = vec![
        chain(Hook::Forward, forward(p, egress, &uplinks)),
        chain(Hook::Input, input(p, egress)),
    ];
    if isolated {
        chains.push(chain(Hook::Output, output(p)));
    }
    if egress {
        let ms = vec![in_set(Dir::In, false, EGRESS_SET)];
        let masquerade = shared(ms, vec![not_within()], Verdict::Masquerade);
        chains.push(chain(Hook::Postrouting, vec![masquerade]));
    }
    Ruleset {
        sets,
        chains,
        other: Vec::new(),
    }
}
