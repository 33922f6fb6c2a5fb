//! The network planner: `plan(desired, observed, state, policy, node_id) -> NetPlan`. Pure: no
//! I/O, table-tested in `plan_tests.rs`.
//!
//! Ownership: a link is Steward's when its alias is `steward:<node-id>`, or when the agent's
//! store recorded creating that very link (same ifindex: an alias changed by hand is restored).
//! Anything else is never changed or deleted; a wanted name held by it is a conflict. The only
//! unmanaged links the agent touches are the ports a spec names: it enslaves them (and brings
//! them up), and releases only ports it enslaved itself.
//!
//! Order: per desired link, parents before children (a VLAN after its parent, a bridge after
//! the desired links that are its ports): create or change the link, its addresses, then
//! enslave its ports and set their VLANs (`plan/ports.rs`; a port that fails leaves the
//! addresses in place). Deletions of links no longer wanted come separately in `removals`,
//! children before parents.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::types::{
    alias_for, BridgeChange, DesiredLink, DesiredNetworks, LinkChange, LinkKind, NetAction,
    NetObserved, NetPlan, NetState, ObservedKind, ObservedLink,
};
use crate::reconcile::{Policy, Verdict};

/// Hash of a desired link (everything but where in the spec it came from).
pub fn link_hash(d: &DesiredLink) -> String {
    let bytes = serde_json::to_vec(d).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))[..32].to_string()
}

/// IPv6 link-local addresses are the kernel's business, never the spec's.
fn is_link_local(a: &IpNet) -> bool {
    match a {
        IpNet::V6(n) => (n.addr().segments()[0] & 0xffc0) == 0xfe80,
        IpNet::V4(_) => false,
    }
}

/// The links whose change could cut the agent off from its registry: the route's interface
/// and what lies under it (a VLAN's parent, a bridge's ports), recursively.
fn protected_links(observed: &NetObserved) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(route) = &observed.registry_route else {
        return out;
    };
    let mut todo = vec![route.iface.clone()];
    while let Some(name) = todo.pop() {
        if !out.insert(name.clone()) {
            continue;
        }
        if let Some(l) = observed.link(&name) {
            if let ObservedKind::Vlan {
                parent: Some(p), ..
            } = &l.kind
            {
                todo.push(p.clone());
            }
            if matches!(l.kind, ObservedKind::Bridge { .. }) {
                todo.extend(
                    observed
                        .links
                        .iter()
                        .filter(|p| p.master.as_deref() == Some(name.as_str()))
                        .map(|p| p.name.clone()),
                );
            }
        }
    }
    out
}

/// Orders `names` so that every name comes after its dependencies (as given by `deps`, which
/// only returns names from the same set); names on a cycle are returned separately.
fn topo_order<'a>(
    names: &[&'a str],
    deps: impl Fn(&str) -> Vec<&'a str>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        n: &'a str,
        deps: &dyn Fn(&str) -> Vec<&'a str>,
        marks: &mut HashMap<&'a str, Mark>,
        order: &mut Vec<&'a str>,
        cyclic: &mut BTreeSet<&'a str>,
    ) {
        match marks.get(n) {
            Some(Mark::Done) => return,
            Some(Mark::Visiting) => {
                cyclic.insert(n);
                return;
            }
            None => {}
        }
        marks.insert(n, Mark::Visiting);
        for d in deps(n) {
            visit(d, deps, marks, order, cyclic);
            if cyclic.contains(d) {
                cyclic.insert(n);
            }
        }
        marks.insert(n, Mark::Done);
        order.push(n);
    }
    let mut marks = HashMap::new();
    let mut order = Vec::new();
    let mut cyclic = BTreeSet::new();
    for n in names {
        visit(n, &deps, &mut marks, &mut order, &mut cyclic);
    }
    let ok = order.into_iter().filter(|n| !cyclic.contains(n)).collect();
    (ok, cyclic.into_iter().collect())
}

fn kind_mismatch(d: &DesiredLink, o: &ObservedLink) -> Option<String> {
    match (&d.kind, &o.kind) {
        (LinkKind::Bridge { .. }, ObservedKind::Bridge { .. }) => None,
        (LinkKind::Vlan { parent, id }, ObservedKind::Vlan { parent: p, id: i }) => {
            if p.as_deref() != Some(parent.as_str()) || i != id {
                Some(format!(
                    "it is VLAN {i} on {}, spec says VLAN {id} on {parent}",
                    p.as_deref().unwrap_or("?")
                ))
            } else {
                None
            }
        }
        (want, _) => Some(format!("it is not a {}", want.word())),
    }
}

/// Everything the planner looks at, bundled for the per-link helpers.
struct Ctx<'a> {
    observed: &'a NetObserved,
    state: &'a NetState,
    alias: String,
    wanted: HashMap<&'a str, &'a DesiredLink>,
    protected: BTreeSet<String>,
}

impl Ctx<'_> {
    fn owned(&self, o: &ObservedLink) -> bool {
        o.alias.as_deref() == Some(self.alias.as_str())
            || self
                .state
                .links
                .get(&o.name)
                .is_some_and(|r| r.index == o.index)
    }

    /// Owned and recorded in the agent's store: only such links are ever deleted (an alias
    /// alone could be another agent's on the same host using the same node id).
    fn deletable(&self, o: &ObservedLink) -> bool {
        self.owned(o) && self.state.links.contains_key(&o.name)
    }

    fn guard(&self, name: &str, what: &str) -> String {
        let route = self.observed.registry_route.as_ref();
        format!(
            "refusing to {what} {name}: it carries this agent's route to the registry ({} via \
             {}); set policy.allow_registry_interface_changes = true to allow it",
            route.map(|r| r.registry.to_string()).unwrap_or_default(),
            route.map(|r| r.iface.as_str()).unwrap_or("?"),
        )
    }
}

/// What one desired link needs: its actions, how it drifted, and problems.
#[derive(Default)]
struct LinkPlan {
    actions: Vec<NetAction>,
    drift: Vec<String>,
    problems: Vec<String>,
}

/// Actions that change an existing, owned link of the right kind.
fn plan_update(cx: &Ctx, d: &DesiredLink, o: &ObservedLink, lp: &mut LinkPlan) {
    let mut change = LinkChange::default();
    if let Some(m) = d.mtu.filter(|m| *m != o.mtu) {
        lp.drift.push(format!("MTU is {}, spec says {m}", o.mtu));
        change.mtu = Some(m);
    }
    if d.up != o.up {
        let word = |up: bool| if up { "up" } else { "down" };
        lp.drift
            .push(format!("it is {}, spec says {}", word(o.up), word(d.up)));
        change.up = Some(d.up);
    }
    if o.alias.as_deref() != Some(cx.alias.as_str()) {
        lp.drift.push(format!(
            "its alias is {:?}, Steward set {:?}",
            o.alias.as_deref().unwrap_or(""),
            cx.alias
        ));
        change.alias = Some(cx.alias.clone());
    }
    if change != LinkChange::default() {
        lp.actions.push(NetAction::Set {
            name: d.name.clone(),
            change,
        });
    }
    if let (
        LinkKind::Bridge {
            stp,
            vlan_filtering,
            default_pvid,
        },
        ObservedKind::Bridge {
            stp: o_stp,
            vlan_filtering: o_vf,
            default_pvid: o_pvid,
        },
    ) = (&d.kind, &o.kind)
    {
        let mut bc = BridgeChange::default();
        if stp != o_stp {
            lp.drift.push(format!("STP is {o_stp}, spec says {stp}"));
            bc.stp = Some(*stp);
        }
        if vlan_filtering != o_vf {
            lp.drift.push(format!(
                "vlan_filtering is {o_vf}, spec says {vlan_filtering}"
            ));
            bc.vlan_filtering = Some(*vlan_filtering);
        }
        if let Some(p) = default_pvid.filter(|p| Some(*p) != *o_pvid) {
            lp.drift.push(format!(
                "default PVID is {}, spec says {p}",
                o_pvid
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "unset".into())
            ));
            bc.default_pvid = Some(p);
        }
        if bc != BridgeChange::default() {
            lp.actions.push(NetAction::SetBridge {
                name: d.name.clone(),
                change: bc,
            });
        }
    }
}

fn plan_addresses(d: &DesiredLink, o: Option<&ObservedLink>, lp: &mut LinkPlan) {
    let have: Vec<IpNet> = o
        .map(|o| {
            o.addresses
                .iter()
                .filter(|a| !is_link_local(a))
                .copied()
                .collect()
        })
        .unwrap_or_default();
    for a in &have {
        if !d.addresses.contains(a) {
            lp.drift.push(format!("address {a} is not in the spec"));
            lp.actions.push(NetAction::DelAddress {
                name: d.name.clone(),
                addr: *a,
            });
        }
    }
    for a in &d.addresses {
        if !have.contains(a) {
            if o.is_some() {
                lp.drift.push(format!("address {a} is missing"));
            }
            lp.actions.push(NetAction::AddAddress {
                name: d.name.clone(),
                addr: *a,
            });
        }
    }
}

/// True for actions that take a link down, re-address it, delete it or move its ports.
fn disruptive(a: &NetAction) -> bool {
    match a {
        NetAction::Set { change, .. } => change.up == Some(false),
        NetAction::Delete { .. }
        | NetAction::AddAddress { .. }
        | NetAction::DelAddress { .. }
        | NetAction::Release { .. } => true,
        _ => false,
    }
}

/// Plans the netlink writes that make the host's links match `desired`.
pub fn plan(
    desired: &DesiredNetworks,
    observed: &NetObserved,
    state: &NetState,
    policy: &Policy,
    node_id: &str,
) -> NetPlan {
    let cx = Ctx {
        observed,
        state,
        alias: alias_for(node_id),
        wanted: desired.links.iter().map(|d| (d.name.as_str(), d)).collect(),
        protected: if policy.allow_registry_interface_changes {
            BTreeSet::new()
        } else {
            protected_links(observed)
        },
    };
    let mut out = NetPlan::default();
    for (name, why) in &desired.invalid {
        out.verdicts
            .push((name.clone(), Verdict::Refused(why.clone())));
    }
    let (order, cyclic) = creation_order(&cx, desired);
    let mut unusable: HashMap<String, String> = HashMap::new();
    let mut refused_owned: Vec<&ObservedLink> = Vec::new();
    for n in &cyclic {
        let why = format!("{n} is part of a dependency cycle (VLAN parents and bridge ports)");
        unusable.insert(n.to_string(), why.clone());
        out.verdicts.push((n.to_string(), Verdict::Refused(why)));
    }
    for name in order {
        let Some(d) = cx.wanted.get(name).copied() else {
            continue;
        };
        let hash = link_hash(d);
        out.hashes.insert(d.name.clone(), hash.clone());
        let lp = match plan_link(&cx, d, &hash, policy, &mut unusable, &mut refused_owned) {
            Ok(lp) => lp,
            Err(verdict) => {
                out.verdicts.push((d.name.clone(), verdict));
                continue;
            }
        };
        let verdict = if lp.actions.is_empty() {
            Verdict::Converged
        } else if lp.drift.is_empty() {
            Verdict::Pending
        } else {
            Verdict::Drifted(lp.drift.join("; "))
        };
        if !lp.problems.is_empty() {
            out.problems.insert(d.name.clone(), lp.problems);
        }
        out.actions.extend(lp.actions);
        out.verdicts.push((d.name.clone(), verdict));
    }
    plan_removals(&cx, refused_owned, &mut out);
    out
}

/// The desired links in creation order (a VLAN after its parent, a bridge after the desired
/// links that are its ports), and those on a dependency cycle.
fn creation_order<'a>(cx: &Ctx<'a>, desired: &'a DesiredNetworks) -> (Vec<&'a str>, Vec<&'a str>) {
    let names: Vec<&str> = desired.links.iter().map(|d| d.name.as_str()).collect();
    topo_order(&names, |n| {
        let Some(d) = cx.wanted.get(n) else {
            return Vec::new();
        };
        let mut deps: Vec<&str> = Vec::new();
        if let LinkKind::Vlan { parent, .. } = &d.kind {
            deps.extend(cx.wanted.get(parent.as_str()).map(|p| p.name.as_str()));
        }
        for p in &d.ports {
            deps.extend(cx.wanted.get(p.iface.as_str()).map(|p| p.name.as_str()));
        }
        deps
    })
}

/// One desired link's plan, or the verdict that refuses it (an unusable VLAN parent, a
/// conflict with an unmanaged link, a disruptive change of a protected link). Refused links
/// go to `unusable`; refused VLANs Steward owns to `refused_owned`, to be deleted.
fn plan_link<'a>(
    cx: &Ctx<'a>,
    d: &DesiredLink,
    hash: &str,
    policy: &Policy,
    unusable: &mut HashMap<String, String>,
    refused_owned: &mut Vec<&'a ObservedLink>,
) -> Result<LinkPlan, Verdict> {
    let existing = cx.observed.link(&d.name);
    let refuse = |why: String, unusable: &mut HashMap<String, String>| {
        unusable.insert(d.name.clone(), why.clone());
        Verdict::Refused(why)
    };
    if let LinkKind::Vlan { parent, .. } = &d.kind {
        let blocked = unusable.get(parent).cloned();
        let why = blocked
            .map(|w| format!("its parent {parent} is not usable: {w}"))
            .or_else(|| policy.refuses_vlan_parent(parent));
        if let Some(why) = why {
            if let Some(o) = existing.filter(|o| cx.deletable(o)) {
                refused_owned.push(o);
            }
            return Err(refuse(why, unusable));
        }
    }
    let lp = match existing {
        Some(o) if !cx.owned(o) => {
            let why = format!(
                "a link named {} exists that Steward does not manage (its alias is {:?}, \
                 not {:?}); left alone",
                d.name,
                o.alias.as_deref().unwrap_or(""),
                cx.alias
            );
            unusable.insert(d.name.clone(), why.clone());
            return Err(Verdict::Conflict(why));
        }
        Some(o) => plan_existing(cx, d, o, hash, unusable),
        None => plan_missing(cx, d, unusable),
    };
    if cx.protected.contains(&d.name) {
        if let Some(a) = lp.actions.iter().find(|a| disruptive(a)) {
            return Err(refuse(cx.guard(&d.name, a.kind()), unusable));
        }
    }
    Ok(lp)
}

/// An owned link that exists: recreated when of the wrong kind, else updated. Differences
/// count as drift only when the spec did not change since the link was recorded.
fn plan_existing(
    cx: &Ctx,
    d: &DesiredLink,
    o: &ObservedLink,
    hash: &str,
    unusable: &HashMap<String, String>,
) -> LinkPlan {
    let mut lp = LinkPlan::default();
    match kind_mismatch(d, o) {
        Some(why) => {
            lp.actions.push(NetAction::Delete {
                name: d.name.clone(),
                reason: format!("recreating: {why}"),
            });
            lp.actions.push(NetAction::Create {
                link: d.clone(),
                alias: cx.alias.clone(),
            });
            plan_addresses(d, None, &mut lp);
            plan_ports(cx, d, None, unusable, &mut lp);
            lp.drift.clear(); // a kind change comes from the spec
        }
        None => {
            plan_update(cx, d, o, &mut lp);
            plan_addresses(d, Some(o), &mut lp);
            plan_ports(cx, d, Some(o), unusable, &mut lp);
            let record = cx.state.links.get(&d.name);
            if record.map(|r| r.hash.as_str()) != Some(hash) {
                lp.drift.clear(); // differences after a spec change are not drift
            }
        }
    }
    lp
}

/// A link that does not exist: created; drift when the agent had recorded it.
fn plan_missing(cx: &Ctx, d: &DesiredLink, unusable: &HashMap<String, String>) -> LinkPlan {
    let mut lp = LinkPlan::default();
    lp.actions.push(NetAction::Create {
        link: d.clone(),
        alias: cx.alias.clone(),
    });
    plan_addresses(d, None, &mut lp);
    plan_ports(cx, d, None, unusable, &mut lp);
    lp.drift.clear();
    if cx.state.links.contains_key(&d.name) {
        lp.drift.push(format!("{} was deleted by hand", d.name));
    }
    lp
}

/// Deletions of owned links that are not wanted (or refused by policy), children first.
fn plan_removals(cx: &Ctx, refused: Vec<&ObservedLink>, out: &mut NetPlan) {
    let mut doomed: BTreeMap<&str, String> = BTreeMap::new();
    for o in cx.observed.links.iter().filter(|o| cx.deletable(o)) {
        if !cx.wanted.contains_key(o.name.as_str()) {
            doomed.insert(&o.name, "no longer in the spec".into());
        }
    }
    for o in refused {
        doomed.insert(&o.name, "refused by policy".into());
    }
    for name in doomed.keys().copied().collect::<Vec<_>>() {
        if cx.protected.contains(name) {
            doomed.remove(name);
            out.verdicts
                .push((name.to_string(), Verdict::Refused(cx.guard(name, "delete"))));
        }
    }
    let names: Vec<&str> = doomed.keys().copied().collect();
    // Creation order: a VLAN after its parent, a bridge after its ports.
    let (mut order, cyclic) = topo_order(&names, |n| {
        let Some(l) = cx.observed.link(n) else {
            return Vec::new();
        };
        let mut deps = Vec::new();
        if let ObservedKind::Vlan {
            parent: Some(p), ..
        } = &l.kind
        {
            deps.extend(names.iter().copied().filter(|m| m == p));
        }
        deps.extend(names.iter().copied().filter(|m| {
            cx.observed
                .link(m)
                .is_some_and(|ml| ml.master.as_deref() == Some(n))
        }));
        deps
    });
    order.reverse();
    order.extend(cyclic);
    for name in order {
        out.removals.push(NetAction::Delete {
            name: name.to_string(),
            reason: doomed.get(name).cloned().unwrap_or_default(),
        });
    }
}

mod ports;
use ports::plan_ports;
pub use ports::port_flags;

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
