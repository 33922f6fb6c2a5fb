//! Quotas, placement and allocation, pure: given the live sessions (read under the spec gate,
//! so nothing changes until the create is stored), decide whether one more fits, on which node,
//! and with which host ports and VLAN.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use steward_proto::{Health, Labels, Session};

/// Fleet-wide session limits (`[sessions]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most live sessions in the fleet.
    pub max_live: Option<u32>,
    /// Most live sessions of one owner, across templates.
    pub per_owner: Option<u32>,
}

/// A template's own limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TemplateLimits {
    pub per_owner: Option<u32>,
    pub max_sessions: Option<u32>,
}

/// Which limit a create reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("the fleet holds {max} live sessions, the most it allows (sessions.max_live)")]
    Fleet { max: u32 },
    #[error(
        "owner {owner:?} has {max} live sessions, the most one owner may have (sessions.per_owner)"
    )]
    Owner { owner: String, max: u32 },
    #[error("owner {owner:?} has {max} live sessions of template {template:?}, the most its per_owner allows")]
    OwnerTemplate {
        owner: String,
        template: String,
        max: u32,
    },
    #[error("template {template:?} has {max} live sessions, the most its max_sessions allows")]
    Template { template: String, max: u32 },
}

impl QuotaError {
    /// The limit's name, for metrics.
    pub fn limit(&self) -> &'static str {
        match self {
            QuotaError::Fleet { .. } => "max_live",
            QuotaError::Owner { .. } => "per_owner",
            QuotaError::OwnerTemplate { .. } => "template_per_owner",
            QuotaError::Template { .. } => "template_max_sessions",
        }
    }
}

/// Whether one more session of `template` for `owner` stays within every limit.
pub fn check_quotas(
    live: &[&Session],
    template: &str,
    owner: &str,
    fleet: &Limits,
    own: TemplateLimits,
) -> Result<(), QuotaError> {
    let count = |f: &dyn Fn(&Session) -> bool| live.iter().filter(|s| f(s)).count() as u64;
    let full = |max: Option<u32>, n: u64| max.filter(|m| n >= u64::from(*m));
    if let Some(max) = full(fleet.max_live, live.len() as u64) {
        return Err(QuotaError::Fleet { max });
    }
    if let Some(max) = full(fleet.per_owner, count(&|s| s.owner == owner)) {
        return Err(QuotaError::Owner {
            owner: owner.into(),
            max,
        });
    }
    if let Some(max) = full(own.max_sessions, count(&|s| s.template == template)) {
        return Err(QuotaError::Template {
            template: template.into(),
            max,
        });
    }
    let mine = count(&|s| s.template == template && s.owner == owner);
    if let Some(max) = full(own.per_owner, mine) {
        return Err(QuotaError::OwnerTemplate {
            owner: owner.into(),
            template: template.into(),
            max,
        });
    }
    Ok(())
}

/// A node a session may be placed on.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub health: Health,
    pub labels: Labels,
    /// CPUs in thousandths, and memory bytes, from its facts.
    pub cpu_milli: u64,
    pub memory: u64,
}

/// What a session reserves on its node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    pub cpu_milli: u64,
    pub memory: u64,
}

/// Why no node takes a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("no node matches the template's selector {selector:?}")]
    NoMatchingNode { selector: String },
    #[error("none of the {count} node(s) matching the template's selector is ready")]
    NotReady { count: usize },
    #[error("all {count} ready node(s) matching the template's selector are full ({detail})")]
    Full { count: usize, detail: String },
}

/// The ready node with room for `reserve` (its capacity minus what the live sessions placed on
/// it reserve) that stays the least loaded once it is placed (memory first, then CPU, then
/// fewest sessions, then id). `matching` are the nodes matching the template's selector.
pub fn place(
    matching: &[Candidate],
    selector: &str,
    reserve: Reserve,
    live: &[&Session],
    reserved: impl Fn(&Session) -> Reserve,
) -> Result<String, PlaceError> {
    if matching.is_empty() {
        return Err(PlaceError::NoMatchingNode {
            selector: selector.into(),
        });
    }
    let ready: Vec<&Candidate> = (matching.iter())
        .filter(|c| c.health == Health::Ready)
        .collect();
    if ready.is_empty() {
        return Err(PlaceError::NotReady {
            count: matching.len(),
        });
    }
    let mut used: BTreeMap<&str, (Reserve, usize)> = BTreeMap::new();
    for s in live {
        let e = used.entry(s.node.as_str()).or_default();
        let r = reserved(s);
        e.0.cpu_milli += r.cpu_milli;
        e.0.memory += r.memory;
        e.1 += 1;
    }
    let mut best: Option<(u128, u128, usize, &str)> = None;
    for c in &ready {
        let (u, n) = used.get(c.id.as_str()).copied().unwrap_or_default();
        let cpu = u.cpu_milli + reserve.cpu_milli;
        let mem = u.memory + reserve.memory;
        if cpu > c.cpu_milli || mem > c.memory {
            continue;
        }
        // Load after placing, in millionths of the capacity (lower is better).
        let load = |used: u64, cap: u64| u128::from(used) * 1_000_000 / u128::from(cap.max(1));
        let key = (
            load(mem, c.memory),
            load(cpu, c.cpu_milli),
            n,
            c.id.as_str(),
        );
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    best.map(|b| b.3.to_string())
        .ok_or_else(|| PlaceError::Full {
            count: ready.len(),
            detail: format!(
                "each session reserves {} mCPU and {} MiB",
                reserve.cpu_milli,
                reserve.memory >> 20
            ),
        })
}

/// Why a session gets no port or VLAN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("node {node} has no free host port left in {from}-{to} ({taken} taken)")]
    Ports {
        node: String,
        from: u16,
        to: u16,
        taken: usize,
    },
    #[error("no free VLAN left in the sessions pool {from}-{to}")]
    Vlans { from: u16, to: u16 },
}

/// The host ports of `node` no session may get: those of the live sessions placed there,
/// those its own spec and the fragments matching it publish (`in_spec`), and those the node
/// reports in use (`in_use`: a host process listens on them or has them bound).
pub fn taken_ports(
    node: &str,
    live: &[&Session],
    in_spec: impl IntoIterator<Item = u16>,
    in_use: &[u16],
) -> BTreeSet<u16> {
    let mut taken: BTreeSet<u16> = (live.iter())
        .filter(|s| s.node == node)
        .flat_map(|s| s.allocations.ports.values().copied())
        .collect();
    taken.extend(in_spec);
    taken.extend(in_use.iter().copied());
    taken
}

/// The lowest free ports of `range` for `names`, none of them in `taken` (the refusal counts
/// the ports of `range` taken).
pub fn alloc_ports(
    node: &str,
    names: &[String],
    range: &RangeInclusive<u16>,
    taken: &BTreeSet<u16>,
) -> Result<BTreeMap<String, u16>, AllocError> {
    let mut free = range.clone().filter(|p| !taken.contains(p));
    let mut out = BTreeMap::new();
    for n in names {
        let port = free.next().ok_or_else(|| AllocError::Ports {
            node: node.into(),
            from: *range.start(),
            to: *range.end(),
            taken: taken.range(range.clone()).count(),
        })?;
        out.insert(n.clone(), port);
    }
    Ok(out)
}

/// The lowest VLAN of `pool` not in `taken`.
pub fn alloc_vlan(pool: &RangeInclusive<u16>, taken: &BTreeSet<u16>) -> Result<u16, AllocError> {
    pool.clone()
        .find(|v| !taken.contains(v))
        .ok_or(AllocError::Vlans {
            from: *pool.start(),
            to: *pool.end(),
        })
}

/// `A-B` (inclusive, A <= B).
pub fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range FROM-TO"))?;
    let num = |t: &str| {
        t.trim()
            .parse::<u16>()
            .map_err(|_| format!("{t:?} in {s:?} is not a number 0-65535"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if a == 0 || a > b {
        return Err(format!("{s:?}: FROM must be 1 or more and not above TO"));
    }
    Ok(a..=b)
}

#[cfg(test)]
#[path = "place_tests.rs"]
mod tests;
