//! The driver carrying out [`NetAction`]s: one netlink request per action (a creation takes
//! two: the link, then its alias and MTU), each counted in the driver's `writes`.

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_route::link::{BridgeStpState, BridgeVlanInfoFlags, LinkMessage};
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkBridgePort, LinkBridgeVlan, LinkMessageBuilder,
    LinkUnspec, LinkVlan,
};

use super::{kernel, NetlinkDriver};
use crate::network::error::NetworkError;
use crate::network::types::{
    BridgeChange, DesiredLink, LinkChange, LinkKind, NetAction, VlanMembership,
};

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;

impl NetlinkDriver {
    /// Carries out one action. Idempotent where the kernel allows: deleting a missing link or
    /// address, and adding an address that is there, succeed.
    pub async fn apply(&mut self, action: &NetAction) -> Result<(), NetworkError> {
        match action {
            NetAction::Create { link, alias } => self.create(link, alias).await,
            NetAction::Delete { name, .. } => self.delete(name).await,
            NetAction::Set { name, change } => self.set(name, change).await,
            NetAction::SetBridge { name, change } => self.set_bridge(name, change).await,
            NetAction::AddAddress { name, addr } => self.add_address(name, addr).await,
            NetAction::DelAddress { name, addr } => self.del_address(name, addr).await,
            NetAction::Enslave { port, bridge, up } => self.enslave(port, bridge, *up).await,
            NetAction::Release { port, bridge } => self.release(port, bridge).await,
            NetAction::AddPortVlan { port, bridge, vlan } => {
                self.add_port_vlan(port, bridge, vlan).await
            }
            NetAction::DelPortVlan { port, bridge, id } => {
                self.del_port_vlan(port, bridge, *id).await
            }
            NetAction::IsolatePort { port, bridge, on } => {
                self.isolate_port(port, bridge, *on).await
            }
        }
    }

    /// The creation request of `link`, without an ifindex.
    fn create_message(&self, link: &DesiredLink, op: &str) -> Result<LinkMessage, NetworkError> {
        Ok(match &link.kind {
            LinkKind::Bridge {
                stp,
                vlan_filtering,
                default_pvid,
            } => {
                let mut b = LinkMessageBuilder::<LinkBridge>::new(&link.name);
                if *stp {
                    b = b.stp_state(BridgeStpState::KernelStp);
                }
                if *vlan_filtering {
                    b = b.vlan_filtering(true);
                }
                if let Some(p) = default_pvid {
                    b = b.vlan_default_pvid(*p);
                }
                if link.up {
                    b = b.up();
                }
                b.build()
            }
            LinkKind::Vlan { parent, id } => {
                let p = self.idx(parent, op)?;
                let mut b = LinkVlan::new(&link.name, p, *id);
                if link.up {
                    b = b.up();
                }
                b.build()
            }
        })
    }

    async fn create(&mut self, link: &DesiredLink, alias: &str) -> Result<(), NetworkError> {
        let links = self.handle.link();
        let op = format!("create {} {}", link.kind.word(), link.name);
        let msg = self.create_message(link, &op)?;
        // Ask for the next free ifindex, so no lookup is needed afterwards; if another
        // link took it meanwhile (EEXIST), create without one and look the link up.
        let want = self
            .index
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.high)
            + 1;
        self.high = want;
        let mut with_index = msg.clone();
        with_index.header.index = want;
        self.writes += 1;
        let idx = match links.add(with_index).execute().await {
            Ok(()) => want,
            Err(e) => match kernel(op.clone(), e) {
                e if e.errno() == Some(EEXIST) => {
                    self.writes += 1;
                    links.add(msg).execute().await.map_err(|e| kernel(op, e))?;
                    self.lookup(&link.name).await?
                }
                e => return Err(e),
            },
        };
        self.index.insert(link.name.clone(), idx);
        // The alias, and the MTU: set on a bridge at creation, the kernel would still
        // adjust it to its ports' as if it had not been set explicitly.
        let mut b = LinkUnspec::new_with_index(idx).alias(alias.to_string());
        if let Some(m) = link.mtu {
            b = b.mtu(m);
        }
        let op = format!("set the alias and MTU of {}", link.name);
        self.send_set(b.build(), op).await
    }

    async fn delete(&mut self, name: &str) -> Result<(), NetworkError> {
        let Some(idx) = self.index.get(name).copied() else {
            return Ok(());
        };
        self.writes += 1;
        match self.handle.link().del(idx).execute().await {
            Ok(()) => {}
            Err(e) => {
                let e = kernel(format!("delete {name}"), e);
                if e.errno() != Some(ENODEV) {
                    return Err(e);
                }
            }
        }
        self.index.remove(name);
        Ok(())
    }

    async fn set(&mut self, name: &str, change: &LinkChange) -> Result<(), NetworkError> {
        let op = format!("change {name} (MTU/up/alias)");
        let mut b = LinkUnspec::new_with_index(self.idx(name, &op)?);
        if let Some(m) = change.mtu {
            b = b.mtu(m);
        }
        match change.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        if let Some(a) = &change.alias {
            b = b.alias(a.clone());
        }
        self.send_set(b.build(), op).await
    }

    async fn set_bridge(&mut self, name: &str, change: &BridgeChange) -> Result<(), NetworkError> {
        let op = format!("change bridge {name} (stp/vlan_filtering/default_pvid)");
        let mut b = LinkMessageBuilder::<LinkBridge>::new(name).index(self.idx(name, &op)?);
        if let Some(s) = change.stp {
            b = b.stp_state(if s {
                BridgeStpState::KernelStp
            } else {
                BridgeStpState::Disabled
            });
        }
        if let Some(v) = change.vlan_filtering {
            b = b.vlan_filtering(v);
        }
        if let Some(p) = change.default_pvid {
            b = b.vlan_default_pvid(p);
        }
        self.writes += 1;
        self.handle
            .link()
            .change(b.build())
            .execute()
            .await
            .map_err(|e| kernel(op, e))
    }

    async fn add_address(&mut self, name: &str, addr: &IpNet) -> Result<(), NetworkError> {
        let op = format!("add address {addr} to {name}");
        let idx = self.idx(name, &op)?;
        self.writes += 1;
        let res = self
            .handle
            .address()
            .add(idx, addr.addr(), addr.prefix_len())
            .execute()
            .await;
        tolerating(res, op, &[EEXIST])
    }

    async fn del_address(&mut self, name: &str, addr: &IpNet) -> Result<(), NetworkError> {
        let op = format!("remove address {addr} from {name}");
        let idx = self.idx(name, &op)?;
        let msg = match addr.addr() {
            IpAddr::V4(a) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                .index(idx)
                .address(a, addr.prefix_len())
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(idx)
                .address(a, addr.prefix_len())
                .build(),
        };
        self.writes += 1;
        let res = self.handle.address().del(msg).execute().await;
        tolerating(res, op, &[EADDRNOTAVAIL, ENODEV])
    }

    async fn enslave(&mut self, port: &str, bridge: &str, up: bool) -> Result<(), NetworkError> {
        let op = format!("make {port} a port of {bridge}");
        let mut b =
            LinkUnspec::new_with_index(self.idx(port, &op)?).controller(self.idx(bridge, &op)?);
        if up {
            b = b.up();
        }
        self.send_set(b.build(), op).await
    }

    async fn release(&mut self, port: &str, bridge: &str) -> Result<(), NetworkError> {
        let op = format!("take {port} out of {bridge}");
        let Some(idx) = self.index.get(port).copied() else {
            return Ok(());
        };
        let msg = LinkUnspec::new_with_index(idx).nocontroller().build();
        self.send_set(msg, op).await
    }

    /// Sets port `port`'s `isolated` flag (`IFLA_BRPORT_ISOLATED`, as `bridge link set dev P
    /// isolated on`).
    async fn isolate_port(
        &mut self,
        port: &str,
        bridge: &str,
        on: bool,
    ) -> Result<(), NetworkError> {
        let op = format!(
            "turn isolation {} on port {port} of {bridge}",
            if on { "on" } else { "off" }
        );
        let msg = LinkBridgePort::new(self.idx(port, &op)?)
            .isolated(on)
            .build();
        // Port options go in `IFLA_LINKINFO`, which only RTM_NEWLINK reads.
        self.writes += 1;
        (self.handle.link().set_port(msg).execute().await).map_err(|e| kernel(op, e))
    }

    async fn add_port_vlan(
        &mut self,
        port: &str,
        bridge: &str,
        vlan: &VlanMembership,
    ) -> Result<(), NetworkError> {
        let op = format!("add VLAN {} to port {port} of {bridge}", vlan.id);
        let mut flags = BridgeVlanInfoFlags::empty();
        if vlan.pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if vlan.untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        let msg = LinkBridgeVlan::new(self.idx(port, &op)?)
            .vlan(vlan.id, flags)
            .build();
        self.send_set(msg, op).await
    }

    async fn del_port_vlan(
        &mut self,
        port: &str,
        bridge: &str,
        id: u16,
    ) -> Result<(), NetworkError> {
        let op = format!("remove VLAN {id} from port {port} of {bridge}");
        let msg = LinkBridgeVlan::new(self.idx(port, &op)?)
            .vlan(id, BridgeVlanInfoFlags::empty())
            .build();
        self.writes += 1;
        let res = self.handle.link().del_with_message(msg).execute().await;
        tolerating(res, op, &[ENOENT])
    }

    /// Sends one link "set" request (counted), `op` naming it in the error.
    async fn send_set(&mut self, msg: LinkMessage, op: String) -> Result<(), NetworkError> {
        self.writes += 1;
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| kernel(op, e))
    }
}

/// `res` as our error, with the kernel's answers in `ok` (e.g. "already there") counted as
/// success.
fn tolerating(
    res: Result<(), rtnetlink::Error>,
    op: String,
    ok: &[i32],
) -> Result<(), NetworkError> {
    match res {
        Ok(()) => Ok(()),
        Err(e) => match kernel(op, e) {
            e if e.errno().is_some_and(|n| ok.contains(&n)) => Ok(()),
            e => Err(e),
        },
    }
}
