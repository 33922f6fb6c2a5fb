//! The netlink driver: together with `events.rs`, the only code of the agent that imports
//! rtnetlink / netlink-packet-route. It observes links, addresses and bridge VLAN entries in
//! one dump each, looks up the route to the registry, and carries out [`NetAction`]s one
//! request at a time (`driver/apply.rs`), counting every write request it sends. Everything
//! crossing its border is converted to our own types ([`NetObserved`], [`NetworkError`]).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    AfSpecBridge, BridgeVlanInfoFlags, LinkAttribute, LinkExtentMask,
};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::debug;

/// Public addresses (Cloudflare's resolvers) whose route lookups say where the internet is.
const INTERNET_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(1, 1, 1, 1));
const INTERNET_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(
    0x2606, 0x4700, 0x4700, 0, 0, 0, 0, 0x1111,
));

use super::dump::{self, RawLink};
use super::error::{hint, NetworkError};
use super::types::{
    NetAction, NetObserved, ObservedKind, ObservedLink, RegistryRoute, VlanMembership,
};

mod apply;

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

/// The dumped links with their master's and VLAN parent's ifindex turned into names.
fn resolve_names(raw: Vec<RawLink>) -> Vec<ObservedLink> {
    let names: HashMap<u32, String> = raw
        .iter()
        .map(|r| (r.link.index, r.link.name.clone()))
        .collect();
    raw.into_iter()
        .map(|mut r| {
            r.link.master = r.master.and_then(|i| names.get(&i).cloned());
            if let ObservedKind::Vlan { parent, .. } = &mut r.link.kind {
                *parent = r.parent.and_then(|i| names.get(&i).cloned());
            }
            r.link
        })
        .collect()
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
        let addrs = self.dump_addresses().await?;
        let raw: Vec<RawLink> = links_task.await.map_err(|e| NetworkError::Observe {
            what: "dump links".into(),
            reason: e.to_string(),
        })??;
        tracing::debug!(
            links_us = t0.elapsed().as_micros() as u64,
            "dumped links and addresses"
        );
        let t0 = std::time::Instant::now();
        let mut links = resolve_names(raw);
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
            for (idx, vlans) in self.dump_bridge_vlans().await? {
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

    /// Every address, with the ifindex of its link.
    async fn dump_addresses(&self) -> Result<Vec<(u32, IpNet)>, NetworkError> {
        self.handle
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
            .map_err(|e| observe_err("dump addresses", e))
    }

    /// The bridge VLAN entries of every link that has some, by ifindex.
    async fn dump_bridge_vlans(&self) -> Result<Vec<(u32, Vec<VlanMembership>)>, NetworkError> {
        self.handle
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
            .map_err(|e| observe_err("dump bridge VLANs", e))
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

    /// The host's uplinks: the interfaces the kernel would send IPv4 and IPv6 traffic for the
    /// internet by (a route lookup of a public address of each family: the default route it
    /// picks, policy routing and metrics included), by name. Two lookups, not a route dump.
    pub async fn uplinks(&self) -> Result<BTreeSet<String>, NetworkError> {
        let mut out = BTreeSet::new();
        for ip in [INTERNET_V4, INTERNET_V6] {
            if let Some(name) = self.route_iface(ip).await? {
                out.insert(name);
            }
        }
        Ok(out)
    }

    /// The name of the link with ifindex `i`, as last observed.
    fn name_of(&self, i: u32) -> Option<String> {
        (self.index.iter())
            .find(|(_, v)| **v == i)
            .map(|(k, _)| k.clone())
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
                debug!(%ip, error = %e, "no route");
                return Ok(None);
            }
        };
        let oif = route.and_then(|r| {
            r.attributes.into_iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(i),
                _ => None,
            })
        });
        Ok(oif.and_then(|i| self.name_of(i)))
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
}
