//! The netlink driver: together with `events.rs`, the only code of the agent that imports
//! rtnetlink / netlink-packet-route. It observes links, addresses and bridge VLAN entries in
//! one dump each, looks up the route to the registry, and carries out [`NetAction`]s one
//! request at a time, counting every write request it sends. Everything crossing its border
//! is converted to our own types ([`NetObserved`], [`NetworkError`]).

use std::collections::HashMap;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    AfSpecBridge, BridgeStpState, BridgeVlanInfoFlags, LinkAttribute, LinkExtentMask,
};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBridge, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec,
    LinkVlan, RouteMessageBuilder,
};
use tracing::debug;

use super::dump::{self, RawLink};
use super::error::{hint, NetworkError};
use super::types::{
    LinkKind, NetAction, NetObserved, ObservedKind, ObservedLink, RegistryRoute, VlanMembership,
};

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;

/// A netlink connection to the kernel of the agent's network namespace.
pub struct NetlinkDriver {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
    /// Link name -> ifindex, from the last observe plus the links created since.
    index: HashMap<String, u32>,
    /// The highest ifindex seen or handed out: new links get the next one, never an index
    /// this driver saw in use before.
    high: u32,
    writes: usize,
}

impl Drop for NetlinkDriver {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn kernel(op: String, e: rtnetlink::Error) -> NetworkError {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = m.raw_code().abs();
            NetworkError::Kernel {
                hint: hint(errno, &op),
                reason: m.to_io().to_string(),
                op,
                errno,
            }
        }
        other => NetworkError::Kernel {
            op,
            reason: other.to_string(),
            hint: String::new(),
            errno: 0,
        },
    }
}

fn observe_err(what: &str, e: rtnetlink::Error) -> NetworkError {
    NetworkError::Observe {
        what: what.to_string(),
        reason: match e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        },
    }
}

impl NetlinkDriver {
    /// Opens a netlink socket in the agent's current network namespace.
    pub fn connect() -> Result<Self, NetworkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetworkError::Connect {
            reason: e.to_string(),
        })?;
        Ok(NetlinkDriver {
            handle,
            conn: tokio::spawn(conn),
            index: HashMap::new(),
            high: 0,
            writes: 0,
        })
    }

    /// The ifindex of a link, as of the last observe or create.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// Netlink write requests sent since the driver was made.
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// Every link with its addresses, one dump each; with `bridge_vlans`, also the bridge VLAN
    /// entries of every bridge port; with `registry`, the interface routing to it.
    pub async fn observe(
        &mut self,
        bridge_vlans: bool,
        registry: Option<IpAddr>,
    ) -> Result<NetObserved, NetworkError> {
        // The link dump (blocking, on its own socket) and the address dump run concurrently.
        let t0 = std::time::Instant::now();
        let links_task = tokio::task::spawn_blocking(dump::links);
        let addrs: Vec<(u32, IpNet)> = self
            .handle
            .address()
            .get()
            .execute()
            .map_ok(|m| {
                let mut local = None;
                let mut address = None;
                for a in &m.attributes {
                    match a {
                        AddressAttribute::Local(ip) => local = Some(*ip),
                        AddressAttribute::Address(ip) => address = Some(*ip),
                        _ => {}
                    }
                }
                let ip = local.or(address);
                ip.and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok())
                    .map(|n| (m.header.index, n))
            })
            .try_filter_map(|x| async move { Ok(x) })
            .try_collect()
            .await
            .map_err(|e| observe_err("dump addresses", e))?;
        let raw: Vec<RawLink> = links_task.await.map_err(|e| NetworkError::Observe {
            what: "dump links".into(),
            reason: e.to_string(),
        })??;
        tracing::debug!(
            links_us = t0.elapsed().as_micros() as u64,
            "dumped links and addresses"
        );
        let t0 = std::time::Instant::now();
        let names: HashMap<u32, String> = raw
            .iter()
            .map(|r| (r.link.index, r.link.name.clone()))
            .collect();
        let mut links: Vec<ObservedLink> = raw
            .into_iter()
            .map(|mut r| {
                r.link.master = r.master.and_then(|i| names.get(&i).cloned());
                if let ObservedKind::Vlan { parent, .. } = &mut r.link.kind {
                    *parent = r.parent.and_then(|i| names.get(&i).cloned());
                }
                r.link
            })
            .collect();
        let by_index: HashMap<u32, usize> = links
            .iter()
            .enumerate()
            .map(|(i, l)| (l.index, i))
            .collect();

        tracing::debug!(index_us = t0.elapsed().as_micros() as u64, "indexed links");
        for (idx, net) in addrs {
            if let Some(&i) = by_index.get(&idx) {
                links[i].addresses.push(net);
            }
        }

        if bridge_vlans {
            let entries: Vec<(u32, Vec<VlanMembership>)> = self
                .handle
                .link()
                .get()
                .set_filter_mask(AddressFamily::Bridge, vec![LinkExtentMask::Brvlan])
                .execute()
                .map_ok(|m| {
                    let mut vlans = Vec::new();
                    for a in m.attributes {
                        if let LinkAttribute::AfSpecBridge(specs) = a {
                            for s in specs {
                                if let AfSpecBridge::VlanInfo(v) = s {
                                    vlans.push(VlanMembership {
                                        id: v.vid,
                                        pvid: v.flags.contains(BridgeVlanInfoFlags::Pvid),
                                        untagged: v.flags.contains(BridgeVlanInfoFlags::Untagged),
                                    });
                                }
                            }
                        }
                    }
                    (m.header.index, vlans)
                })
                .try_collect()
                .await
                .map_err(|e| observe_err("dump bridge VLANs", e))?;
            for (idx, vlans) in entries {
                if let Some(&i) = by_index.get(&idx) {
                    // The bridge device itself also answers ("self" entries): ports only.
                    if links[i].master.is_some() {
                        links[i].vlans = Some(vlans);
                    }
                }
            }
        }

        self.index = links.iter().map(|l| (l.name.clone(), l.index)).collect();
        let registry_route = self.registry_route(registry).await?;
        Ok(NetObserved::new(links, registry_route))
    }

    /// The interface carrying the route to the registry (names as of the last observe).
    pub async fn registry_route(
        &self,
        registry: Option<IpAddr>,
    ) -> Result<Option<RegistryRoute>, NetworkError> {
        Ok(match registry {
            Some(ip) => self.route_iface(ip).await?.map(|iface| RegistryRoute {
                registry: ip,
                iface,
            }),
            None => None,
        })
    }

    /// The name of the interface the kernel would send packets for `ip` out of (`None` when
    /// there is no route).
    async fn route_iface(&self, ip: IpAddr) -> Result<Option<String>, NetworkError> {
        let msg = match ip {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let answer = self.handle.route().get(msg).execute().try_next().await;
        let route = match answer {
            Ok(r) => r,
            Err(e) => {
                debug!(%ip, error = %e, "no route to the registry");
                return Ok(None);
            }
        };
        let oif = route.and_then(|r| {
            r.attributes.into_iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(i),
                _ => None,
            })
        });
        Ok(oif.and_then(|i| {
            self.index
                .iter()
                .find(|(_, v)| **v == i)
                .map(|(k, _)| k.clone())
        }))
    }

    fn idx(&self, name: &str, op: &str) -> Result<u32, NetworkError> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| NetworkError::NoSuchLink {
                op: op.to_string(),
                link: name.to_string(),
            })
    }

    /// Looks a link's index up by name (after creating it).
    async fn lookup(&mut self, name: &str) -> Result<u32, NetworkError> {
        let m = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .map_err(|e| observe_err(&format!("look up link {name}"), e))?;
        let idx = m
            .map(|m| m.header.index)
            .ok_or_else(|| NetworkError::NoSuchLink {
                op: "look up".into(),
                link: name.to_string(),
            })?;
        self.index.insert(name.to_string(), idx);
        Ok(idx)
    }

    /// Makes `port` (an existing link, e.g. a VM's tap) a port of `bridge`, up, with `alias`;
    /// with `vlan`, its only VLAN on a VLAN-filtering bridge (PVID, untagged; the default
    /// VLAN 1 removed). Used for VM taps, which are recorded by the VM module, not here.
    pub async fn attach_port(
        &mut self,
        port: &str,
        bridge: &str,
        vlan: Option<u16>,
        alias: &str,
    ) -> Result<(), NetworkError> {
        self.lookup(port).await?;
        self.lookup(bridge).await?;
        self.apply(&NetAction::Enslave {
            port: port.to_string(),
            bridge: bridge.to_string(),
            up: true,
        })
        .await?;
        self.apply(&NetAction::Set {
            name: port.to_string(),
            change: super::types::LinkChange {
                alias: Some(alias.to_string()),
                ..Default::default()
            },
        })
        .await?;
        if let Some(id) = vlan {
            self.apply(&NetAction::AddPortVlan {
                port: port.to_string(),
                bridge: bridge.to_string(),
                vlan: VlanMembership {
                    id,
                    pvid: true,
                    untagged: true,
                },
            })
            .await?;
            if id != 1 {
                self.apply(&NetAction::DelPortVlan {
                    port: port.to_string(),
                    bridge: bridge.to_string(),
                    id: 1,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Carries out one action. Idempotent where the kernel allows: deleting a missing link or
    /// address, and adding an address that is there, succeed.
    pub async fn apply(&mut self, action: &NetAction) -> Result<(), NetworkError> {
        let links = self.handle.link();
        match action {
            NetAction::Create { link, alias } => {
                let op = format!("create {} {}", link.kind.word(), link.name);
                let msg = match &link.kind {
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
                        let p = self.idx(parent, &op)?;
                        let mut b = LinkVlan::new(&link.name, p, *id);
                        if link.up {
                            b = b.up();
                        }
                        b.build()
                    }
                };
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
                self.writes += 1;
                let mut b = LinkUnspec::new_with_index(idx).alias(alias.clone());
                if let Some(m) = link.mtu {
                    b = b.mtu(m);
                }
                links
                    .set(b.build())
                    .execute()
                    .await
                    .map_err(|e| kernel(format!("set the alias and MTU of {}", link.name), e))
            }
            NetAction::Delete { name, .. } => {
                let Some(idx) = self.index.get(name).copied() else {
                    return Ok(());
                };
                self.writes += 1;
                match links.del(idx).execute().await {
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
            NetAction::Set { name, change } => {
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
                self.writes += 1;
                links
                    .set(b.build())
                    .execute()
                    .await
                    .map_err(|e| kernel(op, e))
            }
            NetAction::SetBridge { name, change } => {
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
                links
                    .change(b.build())
                    .execute()
                    .await
                    .map_err(|e| kernel(op, e))
            }
            NetAction::AddAddress { name, addr } => {
                let op = format!("add address {addr} to {name}");
                let idx = self.idx(name, &op)?;
                self.writes += 1;
                match self
                    .handle
                    .address()
                    .add(idx, addr.addr(), addr.prefix_len())
                    .execute()
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) => match kernel(op, e) {
                        e if e.errno() == Some(EEXIST) => Ok(()),
                        e => Err(e),
                    },
                }
            }
            NetAction::DelAddress { name, addr } => {
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
                match self.handle.address().del(msg).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) => match kernel(op, e) {
                        e if matches!(e.errno(), Some(EADDRNOTAVAIL | ENODEV)) => Ok(()),
                        e => Err(e),
                    },
                }
            }
            NetAction::Enslave { port, bridge, up } => {
                let op = format!("make {port} a port of {bridge}");
                let mut b = LinkUnspec::new_with_index(self.idx(port, &op)?)
                    .controller(self.idx(bridge, &op)?);
                if *up {
                    b = b.up();
                }
                self.writes += 1;
                links
                    .set(b.build())
                    .execute()
                    .await
                    .map_err(|e| kernel(op, e))
            }
            NetAction::Release { port, bridge } => {
                let op = format!("take {port} out of {bridge}");
                let Some(idx) = self.index.get(port).copied() else {
                    return Ok(());
                };
                self.writes += 1;
                let msg = LinkUnspec::new_with_index(idx).nocontroller().build();
                links.set(msg).execute().await.map_err(|e| kernel(op, e))
            }
            NetAction::AddPortVlan { port, bridge, vlan } => {
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
                self.writes += 1;
                links.set(msg).execute().await.map_err(|e| kernel(op, e))
            }
            NetAction::DelPortVlan { port, bridge, id } => {
                let op = format!("remove VLAN {id} from port {port} of {bridge}");
                let msg = LinkBridgeVlan::new(self.idx(port, &op)?)
                    .vlan(*id, BridgeVlanInfoFlags::empty())
                    .build();
                self.writes += 1;
                match links.del_with_message(msg).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) => match kernel(op, e) {
                        e if matches!(e.errno(), Some(ENOENT)) => Ok(()),
                        e => Err(e),
                    },
                }
            }
        }
    }
}
