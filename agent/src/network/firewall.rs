//! Network isolation, pure: each bridge's policy in the spec (`isolation` and `allow` on a
//! managed bridge or a lab) → the ruleset of the agent's own nftables table `inet steward`, and
//! which bridges' rules differ between two rulesets (drift). `nft.rs` applies and observes it.
//!
//! The table has up to four base chains, all `policy accept`: `forward`, `input` and, with an
//! isolated bridge, `output` (`type filter`, priority `filter - 1`: before the `filter` chains
//! of Docker's and the operator's tables; a drop in any base chain is final) and, with an
//! egress-only bridge, `postrouting` (`type nat`, priority `srcnat - 1`). Per bridge `B`, every
//! rule commented `steward: B <isolation>`:
//! - `isolated`: forward `iifname B oifname != B drop` (nothing from `B` routed anywhere
//!   else), `oifname B iifname != B drop` (nothing routed into `B`); input `iifname B drop`
//!   (nothing from `B` to the host itself, its own address on `B` included); output `oifname B
//!   drop` (nothing from the host into `B`, not even a one-way datagram; with `allow`s, `oifname
//!   B ct state established,related accept` first, so the allowed ports answer). In input and
//!   output, `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept` comes first, for
//!   every bridge with a policy: IPv6 neighbour discovery, which these hooks see (ARP they do
//!   not), as ARP gets through. Traffic
//!   between two ports of `B` is bridged, not routed, so it never reaches these hooks (with
//!   `br_netfilter` loaded, `!= B` lets it through; `ports_isolated` is the bridge's own
//!   business, see `plan/ports.rs`).
//! - `egress-only`: forward `oifname B ct state established,related accept` (replies),
//!   `iifname B ct state established,related accept`, `oifname B ct status dnat accept`
//!   (Docker's published ports, DNAT'd to `B`), per uplink `U` (the interfaces the host's
//!   internet routes leave by, [`Policies::uplinks`]) `iifname B oifname U accept`, then the
//!   same two drops as `isolated`: nothing from `B` reaches any other interface (another
//!   bridge of the spec, `docker0`, a VPN, ...) but an uplink. Input: `iifname B ct state
//!   established,related accept` (replies to the host's own connections), `iifname B drop`.
//!   Postrouting: `iifname B oifname != B masquerade` (leaves with the outgoing interface's
//!   address). No default route: no egress either.
//! - `allow` (on `isolated` or `egress-only` `B`; validation refuses it on `open`), each
//!   `{proto, port?, from?}`: forward `oifname B [iifname C | ip(6) saddr N] <proto> [dport P]
//!   accept` — matching traffic may be routed into `B` from the bridge `C`, from the network
//!   `N`, or (no `from`) from anywhere; with `from` not naming a bridge, also input `iifname B
//!   [ip(6) saddr N] <proto> [dport P] accept` — from `B` to the host's own port. `icmp`
//!   means ICMP and ICMPv6. An isolated `B` with allows also gets forward `iifname B ct state
//!   established,related accept`, so replies leave `B`.
//!
//! Each base chain starts with a fast path, commented `steward: not a bridge with a policy`:
//! `iifname != P oifname != P accept` in `forward`, `iifname != P accept` in `input`, `oifname
//! != I accept` in `output` (`P` the bridges with a policy, `I` the isolated ones; one name or
//! an anonymous set): every rule after it names one of them, so traffic between bridges
//! without a policy (or the host's own) costs two set lookups, not a walk through every
//! bridge's rules.
//!
//! Order: in `forward`, every bridge's accepts come first, then every bridge's drops (an
//! `allow` on `B` naming `from: C` lets `C`'s traffic in even when `C` is isolated or
//! egress-only: the explicit exception wins; an `allow` without `from` does too — name a
//! `from` to keep an isolated bridge's traffic out — and so does a port the host DNATs to an
//! egress-only bridge); in `input`, per bridge, accepts then the
//! drop. Within each part, bridges in name order, so reordering the spec changes nothing. No
//! bridge with a policy: an empty ruleset, which means no table at all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Value};
use steward_proto::{AllowProto, AllowRule, Isolation, NetworksSpec};

/// The agent's table: family and name. The agent never touches any other table.
pub const FAMILY: &str = "inet";
pub const TABLE: &str = "steward";
/// `filter - 1`.
pub const PRIORITY: i32 = -1;
/// `srcnat - 1`.
pub const NAT_PRIORITY: i32 = 99;

/// A base chain's hook; the chain is named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Forward,
    Input,
    /// What the host itself sends: into isolated bridges, nothing but replies.
    Output,
    /// `type nat`: the egress-only bridges' masquerading.
    Postrouting,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Input => "input",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    pub fn priority(self) -> i32 {
        match self {
            Hook::Postrouting => NAT_PRIORITY,
            _ => PRIORITY,
        }
    }
}

/// Which interface a match looks at: the one a packet came in on, or the one it leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// `iifname`
    In,
    /// `oifname`
    Out,
}

/// `iifname == name`, `oifname != name`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfMatch {
    pub dir: Dir,
    pub negate: bool,
    pub name: String,
}

/// What a rule does with what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Masquerade,
}

/// One rule: its interface matches, its other matches (`conds`: nft JSON statements exactly
/// as `nft -j list` prints them back, e.g. `ct state`, `tcp dport`), then its verdict.
/// `extra` holds what a rule observed in the kernel has besides (another verdict, counters,
/// or no verdict), as text: the planned rules have none, so such a rule never equals a
/// planned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<IfMatch>,
    pub conds: Vec<Value>,
    pub verdict: Verdict,
    pub extra: Vec<String>,
    pub comment: Option<String>,
}

impl Rule {
    fn new(b: &str, p: Isolation, matches: Vec<IfMatch>, conds: Vec<Value>, v: Verdict) -> Self {
        let what = match p {
            Isolation::EgressOnly => "egress-only",
            _ => "isolated",
        };
        Rule {
            matches,
            conds,
            verdict: v,
            extra: Vec::new(),
            comment: Some(format!("steward: {b} {what}")),
        }
    }

    /// The bridge this rule is about: its first positive match.
    pub fn bridge(&self) -> Option<&str> {
        (self.matches.iter().find(|m| !m.negate)).map(|m| m.name.as_str())
    }
}

/// A base chain of the table (`type filter`, or `type nat` for `postrouting`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub hook: Hook,
    pub priority: i32,
    /// `policy accept` (ours always is) and the hook's type.
    pub accept: bool,
    pub rules: Vec<Rule>,
}

/// The whole table; no chain means no table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
    /// What a table observed in the kernel has that no plan makes (other chains and their
    /// rules, by chain name): a plan's is empty, so such a table never equals a plan.
    pub other: Vec<String>,
}

impl Ruleset {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Every rule about `bridge`, with its chain's hook, in order.
    fn rules_of(&self, bridge: &str) -> Vec<(Hook, &Rule)> {
        (self.chains.iter())
            .flat_map(|c| c.rules.iter().map(move |r| (c.hook, r)))
            .filter(|(_, r)| r.bridge() == Some(bridge))
            .collect()
    }
}

/// A bridge's policy: its isolation (never `open` here) and the exceptions to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub isolation: Isolation,
    pub allow: Vec<AllowRule>,
}

/// The spec's policies: every bridge with one (not `open`), and the host's uplinks: the
/// interfaces the kernel routes the internet by (IPv4 and IPv6), the only ones an
/// egress-only bridge's traffic may leave by. Observed by the caller; empty in `policies`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    pub bridges: BTreeMap<String, Policy>,
    pub uplinks: BTreeSet<String>,
}

impl Policies {
    /// The bridges with a policy, by name.
    pub fn names(&self) -> BTreeSet<String> {
        self.bridges.keys().cloned().collect()
    }

    /// `isolated` for each of `names`, no allow (tests).
    #[cfg(test)]
    pub fn isolating(names: &BTreeSet<String>) -> Self {
        let p = Policy {
            isolation: Isolation::Isolated,
            allow: Vec::new(),
        };
        Policies {
            bridges: names.iter().map(|n| (n.clone(), p.clone())).collect(),
            uplinks: BTreeSet::new(),
        }
    }
}

/// The policies of `n`'s bridges (managed bridges and labs' bridges).
pub fn policies(n: &NetworksSpec) -> Policies {
    let bridges = (n.bridges.iter()).map(|b| (b.name.clone(), b.isolation, &b.allow));
    let labs = (n.labs.iter()).map(|l| {
        let name = l.bridge.clone().unwrap_or_else(|| format!("br{}", l.vlan));
        (name, l.isolation, &l.allow)
    });
    let mut out = Policies::default();
    for (name, isolation, allow) in bridges.chain(labs) {
        if isolation != Isolation::Open {
            let allow = allow.clone();
            out.bridges.insert(name, Policy { isolation, allow });
        }
    }
    out
}

fn m(dir: Dir, negate: bool, name: &str) -> IfMatch {
    IfMatch {
        dir,
        negate,
        name: name.to_string(),
    }
}

fn is(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
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

/// `iifname != X` (or `oifname`), `X` one name or an anonymous set of them, sorted (nft lists
/// a set's elements in an order of its own: `nft.rs` sorts them back); `names` not empty.
fn none_of(dir: Dir, names: &[&str]) -> (Vec<IfMatch>, Vec<Value>) {
    if let [one] = names {
        return (vec![m(dir, true, one)], Vec::new());
    }
    let key = if dir == Dir::In { "iifname" } else { "oifname" };
    let set = json!({"set": names});
    (
        Vec::new(),
        vec![is(json!({"meta": {"key": key}}), "!=", set)],
    )
}

/// The fast path at the head of a base chain: traffic touching none of `names` (the bridges
/// with rules in that chain, in `dirs`) is accepted at once — one set lookup per direction
/// instead of every bridge's rules.
fn fast_path(names: &[&str], dirs: &[Dir]) -> Rule {
    let (mut matches, mut conds) = (Vec::new(), Vec::new());
    for d in dirs {
        let (ms, cs) = none_of(*d, names);
        matches.extend(ms);
        conds.extend(cs);
    }
    Rule {
        matches,
        conds,
        verdict: Verdict::Accept,
        extra: Vec::new(),
        comment: Some(FAST_PATH.to_string()),
    }
}

/// The comment of the fast-path rules.
pub const FAST_PATH: &str = "steward: not a bridge with a policy";

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

/// `B`'s accepts in `forward` (see the module's documentation); `uplinks`: where an
/// egress-only `B`'s traffic may go.
fn forward_accepts(b: &str, p: &Policy, uplinks: &[&String]) -> Vec<Rule> {
    let rule = |ms, cs| Rule::new(b, p.isolation, ms, cs, Verdict::Accept);
    let mut out = Vec::new();
    if p.isolation == Isolation::EgressOnly {
        out.push(rule(vec![m(Dir::Out, false, b)], vec![ct_replies()]));
    }
    if p.isolation == Isolation::EgressOnly || !p.allow.is_empty() {
        out.push(rule(vec![m(Dir::In, false, b)], vec![ct_replies()]));
    }
    if p.isolation == Isolation::EgressOnly {
        out.push(rule(vec![m(Dir::Out, false, b)], vec![ct_dnat()]));
        for u in uplinks.iter().filter(|u| u.as_str() != b) {
            out.push(rule(
                vec![m(Dir::In, false, b), m(Dir::Out, false, u)],
                vec![],
            ));
        }
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

/// `B`'s drops in `forward`: nothing routed out of `B` or into it (past the accepts).
fn forward_drops(b: &str, p: &Policy) -> Vec<Rule> {
    let drop = |ms| Rule::new(b, p.isolation, ms, Vec::new(), Verdict::Drop);
    vec![
        drop(vec![m(Dir::In, false, b), m(Dir::Out, true, b)]),
        drop(vec![m(Dir::Out, false, b), m(Dir::In, true, b)]),
    ]
}

/// `B`'s rules in `input`.
fn input(b: &str, p: &Policy) -> Vec<Rule> {
    let rule = |cs, v| Rule::new(b, p.isolation, vec![m(Dir::In, false, b)], cs, v);
    let mut out = vec![rule(vec![neighbour_discovery()], Verdict::Accept)];
    if p.isolation == Isolation::EgressOnly {
        out.push(rule(vec![ct_replies()], Verdict::Accept));
    }
    for a in p
        .allow
        .iter()
        .filter(|a| a.from.is_none() || from_net(a).is_some())
    {
        let mut cs: Vec<Value> = from_net(a).map(saddr).into_iter().collect();
        cs.push(proto(a.proto, a.port));
        out.push(rule(cs, Verdict::Accept));
    }
    out.push(rule(Vec::new(), Verdict::Drop));
    out
}

/// `B`'s rules in `output` (isolated bridges only).
fn output(b: &str, p: &Policy) -> Vec<Rule> {
    let rule = |cs, v| Rule::new(b, p.isolation, vec![m(Dir::Out, false, b)], cs, v);
    if p.isolation != Isolation::Isolated {
        return Vec::new();
    }
    let mut out = vec![rule(vec![neighbour_discovery()], Verdict::Accept)];
    if !p.allow.is_empty() {
        out.push(rule(vec![ct_replies()], Verdict::Accept));
    }
    out.push(rule(Vec::new(), Verdict::Drop));
    out
}

/// The table for `p` (see the module's documentation); empty when no bridge has a policy.
pub fn plan(p: &Policies) -> Ruleset {
    if p.bridges.is_empty() {
        return Ruleset::default();
    }
    let bridges = || p.bridges.iter();
    // A bridge with a policy is nobody's way out, even when a default route says so.
    let uplinks: Vec<&String> = (p.uplinks.iter())
        .filter(|u| !p.bridges.contains_key(*u))
        .collect();
    let all: Vec<&str> = p.bridges.keys().map(String::as_str).collect();
    let isolated: Vec<&str> = (bridges())
        .filter(|(_, pol)| pol.isolation == Isolation::Isolated)
        .map(|(b, _)| b.as_str())
        .collect();
    let fast = std::iter::once(fast_path(&all, &[Dir::In, Dir::Out]));
    let accepts = bridges().flat_map(|(b, pol)| forward_accepts(b, pol, &uplinks));
    let drops = bridges().flat_map(|(b, pol)| forward_drops(b, pol));
    let input = std::iter::once(fast_path(&all, &[Dir::In]))
        .chain(bridges().flat_map(|(b, pol)| input(b, pol)))
        .collect();
    let mut output: Vec<Rule> = bridges().flat_map(|(b, pol)| output(b, pol)).collect();
    if !output.is_empty() {
        output.insert(0, fast_path(&isolated, &[Dir::Out]));
    }
    let masquerade: Vec<Rule> = (bridges())
        .filter(|(_, pol)| pol.isolation == Isolation::EgressOnly)
        .map(|(b, pol)| {
            let ms = vec![m(Dir::In, false, b), m(Dir::Out, true, b)];
            Rule::new(b, pol.isolation, ms, Vec::new(), Verdict::Masquerade)
        })
        .collect();
    let chain = |hook: Hook, rules| Chain {
        hook,
        priority: hook.priority(),
        accept: true,
        rules,
    };
    let mut chains = vec![
        chain(Hook::Forward, fast.chain(accepts).chain(drops).collect()),
        chain(Hook::Input, input),
    ];
    if !output.is_empty() {
        chains.push(chain(Hook::Output, output));
    }
    if !masquerade.is_empty() {
        chains.push(chain(Hook::Postrouting, masquerade));
    }
    Ruleset {
        chains,
        other: Vec::new(),
    }
}

/// The bridge among `p`'s whose policy would cut the agent's own route to the registry
/// (`route`: the registry's address and the interface the kernel sends to it by), with the
/// reason: an isolated bridge carrying the route drops, in `input`, the replies the host gets
/// through it. Egress-only does not cut it (replies are accepted) and neither does an open
/// bridge.
pub fn cutting_registry(p: &Policies, route: Option<(IpAddr, &str)>) -> Option<(String, String)> {
    let (ip, iface) = route?;
    let policy = p.bridges.get(iface)?;
    if policy.isolation != Isolation::Isolated {
        return None;
    }
    let why = format!(
        "refusing isolation: isolated on {iface} would cut this agent's route to the registry \
         ({ip} via {iface}): the host's replies from it would be dropped; no rules were applied \
         for {iface} (use egress-only, route the registry elsewhere, or set \
         policy.allow_registry_interface_changes = true)"
    );
    Some((iface.to_string(), why))
}

/// How the table in the kernel (`None`: no table) differs from `want` (empty: no table
/// wanted): `None` when it does not; else the wanted bridges whose rules are not exactly as
/// planned (empty when only something else differs: a chain, a policy, a rule about no wanted
/// bridge, a table that should not be there).
pub fn drift(want: &Ruleset, have: Option<&Ruleset>) -> Option<BTreeSet<String>> {
    match have {
        None if want.is_empty() => return None,
        Some(have) if have == want && !want.is_empty() => return None,
        _ => {}
    }
    let empty = Ruleset::default();
    let have = have.unwrap_or(&empty);
    let bridges = (want.chains.iter())
        .flat_map(|c| c.rules.iter().filter_map(Rule::bridge))
        .filter(|b| want.rules_of(b) != have.rules_of(b))
        .map(str::to_string)
        .collect();
    Some(bridges)
}

#[cfg(test)]
#[path = "firewall_tests.rs"]
mod tests;
