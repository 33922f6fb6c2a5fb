//! Network isolation, pure: each bridge's policy in the spec (`isolation` and `allow` on a
//! managed bridge or a lab) → the ruleset of the agent's own nftables table `inet steward`, and
//! which bridges' rules differ between two rulesets (drift). `nft.rs` applies and observes it.
//!
//! The table has up to four base chains, all `policy accept`: `forward`, `input` and, with an
//! isolated bridge, `output` (`type filter`, priority `filter - 1`: before the `filter` chains
//! of Docker's and the operator's tables; a drop in any base chain is final) and, with an
//! egress-only bridge, `postrouting` (`type nat`, priority `srcnat - 1`). What every bridge of
//! a kind gets is one rule over a named set of those bridges, so the table's size hardly grows
//! with the bridges (100 isolated labs: 9 rules and 3 sets, not 600 rules): `policy_bridges`
//! (`P`: every bridge with a policy), `policy_pairs` (each of `P` paired with itself, `ifname .
//! ifname`), `isolated_bridges` (`I`) and `egress_bridges` (`E`), each only when not empty;
//! such a rule is commented `steward: bridges with a policy` (`isolated bridges`, `egress-only
//! bridges`):
//! - every chain starts with a fast path, commented `steward: not a bridge with a policy`:
//!   `iifname != @P oifname != @P accept` in `forward`, `iifname != @P accept` in `input`,
//!   `oifname != @I accept` in `output`: traffic touching none of them costs a set lookup or
//!   two, whatever comes after.
//! - forward drops, last: `iifname @P iifname . oifname != @policy_pairs drop` (nothing from
//!   a bridge with a policy routed anywhere else) and `oifname @P iifname . oifname !=
//!   @policy_pairs drop` (nothing routed into one). Traffic between two ports of a bridge is
//!   bridged, not routed, so it never reaches these hooks (with `br_netfilter` loaded, the
//!   pair `B . B` lets it through; `ports_isolated` is the bridge's own business, see
//!   `plan/ports.rs`).
//! - input: `iifname @P icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept` (IPv6
//!   neighbour discovery, which these hooks see and ARP they do not, gets through as ARP
//!   does), then the accepts below, then `iifname @P drop`: nothing from such a bridge to the
//!   host itself, its own address on the bridge included.
//! - output (isolated): `oifname @I` neighbour discovery accept, the accepts below, `oifname
//!   @I drop`: nothing from the host into an isolated bridge, not even a one-way datagram.
//! - egress-only: forward `oifname @E ct state established,related accept` (replies),
//!   `iifname @E ct state established,related accept`, `oifname @E ct status dnat accept`
//!   (Docker's published ports, DNAT'd to the bridge), `iifname @E oifname U accept` with `U`
//!   the uplinks (the interfaces the host's internet routes leave by, [`Policies::uplinks`];
//!   one name or an anonymous set): nothing from `E` reaches any other interface (another
//!   bridge of the spec, `docker0`, a VPN, ...) but an uplink. Input: `iifname @E ct state
//!   established,related accept` (replies to the host's own connections). Postrouting:
//!   `iifname @E iifname . oifname != @policy_pairs masquerade` (leaves with the outgoing
//!   interface's address). No default route: no egress either.
//! - `allow`, per bridge `B` (on `isolated` or `egress-only`; validation refuses it on `open`),
//!   each `{proto, port?, from?}`, commented `steward: B <isolation>`: forward `oifname B
//!   [iifname C | ip(6) saddr N] <proto> [dport P] accept` — matching traffic may be routed
//!   into `B` from the bridge `C`, from the network `N`, or (no `from`) from anywhere; with
//!   `from` not naming a bridge, also input `iifname B [ip(6) saddr N] <proto> [dport P]
//!   accept` — from `B` to the host's own port. `icmp` means ICMP and ICMPv6. An isolated
//!   `B` with allows also gets forward `iifname B ct state established,related accept` and
//!   output `oifname B ct state established,related accept`, so the allowed ports answer.
//!
//! Order: in each chain every accept comes before every drop (an `allow` on `B` naming `from:
//! C` lets `C`'s traffic in even when `C` is isolated or egress-only: the explicit exception
//! wins; an `allow` without `from` does too — name a `from` to keep an isolated bridge's
//! traffic out — and so does a port the host DNATs to an egress-only bridge). Per-bridge rules
//! come in the bridges' name order and sets are sorted, so reordering the spec changes
//! nothing. A rule over a set is about every bridge in the set: drift of a bridge is a rule
//! about it, or its membership of a set, differing from the plan. No bridge with a policy: an
//! empty ruleset, which means no table at all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;
use steward_proto::{AllowRule, Isolation, NetworksSpec};

mod rules;
pub use rules::{
    ct_dnat, ct_replies, neighbour_discovery, not_within, plan, EGRESS_SET, FAST_PATH,
    ISOLATED_SET, PAIRS_SET, POLICY_SET,
};

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

/// `iifname == name`, `oifname != name`, `iifname @set` (`name` is `@set`: a lookup in that
/// named set of the table; no interface name has an `@`: validation allows none), ...
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
    /// The bridge this rule is about (`@name`: every bridge of that set): its first positive
    /// match.
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

/// A named set of the table: bridges' names (`type ifname`) or, `pairs`, each bridge paired
/// with itself (`type ifname . ifname`, what `iifname . oifname` is looked up in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub pairs: bool,
    pub bridges: BTreeSet<String>,
    /// What a set observed in the kernel has that no plan makes (another type, flags, an
    /// element that is not a bridge's name or pair), as text.
    pub other: Vec<String>,
}

/// The whole table; no chain means no table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// By name.
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
    /// What a table observed in the kernel has that no plan makes (other chains and their
    /// rules, by chain name): a plan's is empty, so such a table never equals a plan.
    pub other: Vec<String>,
}

impl Ruleset {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Whether `rule` is about `bridge`: names it, or a set holding it.
    fn about(&self, rule: &Rule, bridge: &str) -> bool {
        match rule.bridge().map(|b| (b, b.strip_prefix('@'))) {
            Some((_, Some(set))) => {
                (self.sets.iter()).any(|s| s.name == set && !s.pairs && s.bridges.contains(bridge))
            }
            Some((b, None)) => b == bridge,
            None => false,
        }
    }

    /// Every rule about `bridge`, with its chain's hook, in order, and the sets holding it.
    fn of(&self, bridge: &str) -> (Vec<(Hook, &Rule)>, Vec<&str>) {
        let rules = (self.chains.iter())
            .flat_map(|c| c.rules.iter().map(move |r| (c.hook, r)))
            .filter(|(_, r)| self.about(r, bridge))
            .collect();
        let sets = (self.sets.iter())
            .filter(|s| s.bridges.contains(bridge))
            .map(|s| s.name.as_str())
            .collect();
        (rules, sets)
    }

    /// Every bridge a rule or a set is about.
    fn bridges(&self) -> BTreeSet<&str> {
        let named = (self.chains.iter())
            .flat_map(|c| c.rules.iter().filter_map(Rule::bridge))
            .filter(|b| !b.starts_with('@'));
        let sets = self.sets.iter().flat_map(|s| s.bridges.iter());
        named.chain(sets.map(String::as_str)).collect()
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
    let bridges = (want.bridges().into_iter())
        .filter(|b| want.of(b) != have.of(b))
        .map(str::to_string)
        .collect();
    Some(bridges)
}

#[cfg(test)]
#[path = "firewall_tests.rs"]
mod tests;
