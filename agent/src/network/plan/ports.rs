//! The bridge ports' part of the network planner, pure: enslave the ports a bridge's spec
//! lists (only links that exist or that the spec makes, never one another bridge holds unless
//! the agent put it there, never the link carrying the route to the registry), set their VLANs
//! on a VLAN-filtering bridge, release the ports the agent enslaved that the spec no longer
//! lists, and, on a `ports_isolated` bridge, set the kernel's `isolated` flag on every other
//! port (a container's veth, a VM's tap: whoever put it there) and clear it from the listed ones
//! (the uplinks). The flag is cleared again from every port of a managed bridge that no longer
//! asks for it.

use std::collections::HashMap;

use super::{Ctx, LinkPlan};
use crate::network::types::VlanMembership;
use crate::network::types::{
    DesiredLink, DesiredPort, LinkKind, NetAction, NetObserved, ObservedLink,
};

/// Actions for the ports of bridge `d` (observed as `o`, `None` when created in this pass).
pub(super) fn plan_ports(
    cx: &Ctx,
    d: &DesiredLink,
    o: Option<&ObservedLink>,
    unusable: &HashMap<String, String>,
    lp: &mut LinkPlan,
) {
    let LinkKind::Bridge {
        vlan_filtering,
        default_pvid,
        ..
    } = d.kind
    else {
        return;
    };
    for p in &d.ports {
        let Some(enslaved) = enslave(cx, d, o, p, unusable, lp) else {
            continue;
        };
        if vlan_filtering && !p.vlans.is_empty() {
            port_vlans(cx, d, p, enslaved, default_pvid, lp);
        }
    }
    release(cx, d, lp);
    if o.is_some() {
        isolate_ports(cx, d, lp);
    }
}

/// The `isolated` flag of each port of bridge `d`: on for all but the spec's own ports when
/// `d` is `ports_isolated`, off otherwise. (A port that appears after this pass, such as a
/// container's veth, gets it in the pass its link event starts.)
fn isolate_ports(cx: &Ctx, d: &DesiredLink, lp: &mut LinkPlan) {
    lp.actions.extend(port_flags(d, cx.observed));
}

/// The `IsolatePort` actions that make the flags of bridge `d`'s ports (as `observed`) what
/// `d` asks for; also run after the workloads started, for the ports they plugged in.
pub fn port_flags(d: &DesiredLink, observed: &NetObserved) -> Vec<NetAction> {
    let on_bridge = |l: &&ObservedLink| l.master.as_deref() == Some(d.name.as_str());
    (observed.links.iter().filter(on_bridge))
        .filter_map(|port| {
            let want = d.ports_isolated && !d.ports.iter().any(|p| p.iface == port.name);
            (port.isolated != want).then(|| NetAction::IsolatePort {
                port: port.name.clone(),
                bridge: d.name.clone(),
                on: want,
            })
        })
        .collect()
}

/// Enslaves port `p` of bridge `d` unless it already is: whether it already was, or `None`
/// when it cannot be used (the problem is in `lp`).
fn enslave(
    cx: &Ctx,
    d: &DesiredLink,
    o: Option<&ObservedLink>,
    p: &DesiredPort,
    unusable: &HashMap<String, String>,
    lp: &mut LinkPlan,
) -> Option<bool> {
    if let Some(why) = unusable.get(&p.iface) {
        lp.problems
            .push(format!("port {} is not usable: {why}", p.iface));
        return None;
    }
    let managed_port = cx.wanted.contains_key(p.iface.as_str());
    let po = cx.observed.link(&p.iface);
    if po.is_some_and(|po| po.master.as_deref() == Some(d.name.as_str())) {
        return Some(true);
    }
    if let Some(po) = po {
        if let Some(m) = &po.master {
            if cx.state.ports.get(&p.iface) != Some(m) {
                lp.problems.push(format!(
                    "{} is already a port of {m}, where Steward did not put it; left alone",
                    p.iface
                ));
                return None;
            }
        }
    } else if !managed_port {
        lp.problems
            .push(format!("port {} does not exist on this host", p.iface));
        return None;
    }
    if cx.protected.contains(&p.iface) {
        lp.problems.push(cx.guard(&p.iface, "enslave"));
        return None;
    }
    if o.is_some() && cx.state.ports.get(&p.iface) == Some(&d.name) {
        lp.drift.push(format!(
            "port {} was taken out of {} by hand",
            p.iface, d.name
        ));
    }
    lp.actions.push(NetAction::Enslave {
        port: p.iface.clone(),
        bridge: d.name.clone(),
        up: !managed_port && po.is_some_and(|po| !po.up),
    });
    Some(false)
}

/// The VLANs of port `p` on VLAN-filtering bridge `d` as its spec lists them.
fn port_vlans(
    cx: &Ctx,
    d: &DesiredLink,
    p: &DesiredPort,
    enslaved: bool,
    default_pvid: Option<u16>,
    lp: &mut LinkPlan,
) {
    // A fresh port gets the bridge's default PVID from the kernel.
    let current: Vec<VlanMembership> = match cx.observed.link(&p.iface) {
        Some(po) if enslaved => po.vlans.clone().unwrap_or_default(),
        _ => vec![VlanMembership {
            id: default_pvid.unwrap_or(1),
            pvid: true,
            untagged: true,
        }],
    };
    let mut changed = false;
    for v in &p.vlans {
        if !current.contains(v) {
            changed = true;
            lp.actions.push(NetAction::AddPortVlan {
                port: p.iface.clone(),
                bridge: d.name.clone(),
                vlan: *v,
            });
        }
    }
    for c in &current {
        if !p.vlans.iter().any(|v| v.id == c.id) {
            changed = true;
            lp.actions.push(NetAction::DelPortVlan {
                port: p.iface.clone(),
                bridge: d.name.clone(),
                id: c.id,
            });
        }
    }
    if changed && enslaved {
        lp.drift.push(format!(
            "VLANs of port {} are {}, spec says {}",
            p.iface,
            show(&current),
            show(&p.vlans)
        ));
    }
}

/// Ports the agent enslaved to `d` that the spec no longer lists.
fn release(cx: &Ctx, d: &DesiredLink, lp: &mut LinkPlan) {
    for (port, bridge) in &cx.state.ports {
        if bridge != &d.name || d.ports.iter().any(|p| &p.iface == port) {
            continue;
        }
        if cx
            .observed
            .link(port)
            .is_some_and(|po| po.master.as_deref() == Some(d.name.as_str()))
        {
            if cx.protected.contains(port) {
                lp.problems.push(cx.guard(port, "release"));
                continue;
            }
            lp.actions.push(NetAction::Release {
                port: port.clone(),
                bridge: d.name.clone(),
            });
        }
    }
}

fn show(vlans: &[VlanMembership]) -> String {
    let items: Vec<String> = vlans
        .iter()
        .map(|v| {
            let mut s = v.id.to_string();
            if v.pvid {
                s.push_str(" pvid");
            }
            if v.untagged {
                s.push_str(" untagged");
            }
            s
        })
        .collect();
    format!("[{}]", items.join(", "))
}
