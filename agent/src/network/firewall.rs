//! Network isolation, pure: the bridges the spec isolates (`isolation: isolated` on a managed
//! bridge or a lab) → the ruleset of the agent's own nftables table `inet steward`, and which
//! bridges' rules differ between two rulesets (drift). `nft.rs` applies and observes it.
//!
//! The table has two base chains, both `policy accept`, at priority `filter - 1` (before the
//! `filter` chains of Docker's and the operator's tables; a drop in any base chain is final):
//! - `forward` (hook forward): per isolated bridge `B`, `iifname B oifname != B drop` (nothing
//!   from `B` routed anywhere else) and `oifname B iifname != B drop` (nothing routed into
//!   `B`). Traffic between two ports of `B` is bridged, not routed, so it never reaches this
//!   hook — unless `br_netfilter` is loaded, and then `!= B` lets it through.
//! - `input` (hook input): per isolated bridge `B`, `iifname B drop` (nothing from `B` to the
//!   host itself, its own address on `B` included; replies to what the host sends into `B`
//!   are dropped too, so nothing flows either way).
//!
//! No isolated bridge: an empty ruleset, which means no table at all. Rules are in bridge
//! name order (then chain, direction), so reordering the spec changes nothing.

use std::collections::BTreeSet;

use steward_proto::{Isolation, NetworksSpec};

/// The agent's table: family and name. The agent never touches any other table.
pub const FAMILY: &str = "inet";
pub const TABLE: &str = "steward";
/// `filter - 1`.
pub const PRIORITY: i32 = -1;

/// A base chain's hook; the chain is named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Forward,
    Input,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Input => "input",
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

/// One rule: its interface matches, then `drop`. `extra` holds what a rule observed in the
/// kernel has besides (another verdict, counters, other matches, or no `drop`), as text: the
/// planned rules have none, so such a rule never equals a planned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<IfMatch>,
    pub extra: Vec<String>,
    pub comment: Option<String>,
}

impl Rule {
    fn drop(matches: Vec<IfMatch>, bridge: &str) -> Self {
        Rule {
            matches,
            extra: Vec::new(),
            comment: Some(format!("steward: {bridge} isolated")),
        }
    }

    /// The bridge this rule is about: its first positive match.
    pub fn bridge(&self) -> Option<&str> {
        (self.matches.iter().find(|m| !m.negate)).map(|m| m.name.as_str())
    }
}

/// A base chain of the table (`type filter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub hook: Hook,
    pub priority: i32,
    /// `policy accept` (ours always is).
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

/// The bridges `n` isolates (managed bridges and labs' bridges), by name. `egress-only` is
/// refused by validation; should it get here anyway it is isolated (closed rather than open).
pub fn isolated(n: &NetworksSpec) -> BTreeSet<String> {
    let closed = |i: Isolation| i != Isolation::Open;
    let bridges = (n.bridges.iter())
        .filter(|b| closed(b.isolation))
        .map(|b| b.name.clone());
    let labs = (n.labs.iter())
        .filter(|l| closed(l.isolation))
        .map(|l| l.bridge.clone().unwrap_or_else(|| format!("br{}", l.vlan)));
    bridges.chain(labs).collect()
}

fn m(dir: Dir, negate: bool, name: &str) -> IfMatch {
    IfMatch {
        dir,
        negate,
        name: name.to_string(),
    }
}

/// The table for `isolated` bridges (see the module's documentation); empty for none.
pub fn plan(isolated: &BTreeSet<String>) -> Ruleset {
    if isolated.is_empty() {
        return Ruleset::default();
    }
    let forward = (isolated.iter())
        .flat_map(|b| {
            [
                Rule::drop(vec![m(Dir::In, false, b), m(Dir::Out, true, b)], b),
                Rule::drop(vec![m(Dir::Out, false, b), m(Dir::In, true, b)], b),
            ]
        })
        .collect();
    let input = (isolated.iter())
        .map(|b| Rule::drop(vec![m(Dir::In, false, b)], b))
        .collect();
    let chain = |hook, rules| Chain {
        hook,
        priority: PRIORITY,
        accept: true,
        rules,
    };
    Ruleset {
        chains: vec![chain(Hook::Forward, forward), chain(Hook::Input, input)],
        other: Vec::new(),
    }
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
