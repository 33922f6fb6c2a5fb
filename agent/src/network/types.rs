//! The network reconciler's own types: the desired links (after lab expansion), what the driver
//! observed, the actions the planner asks for, and what the agent's store remembers about the
//! links it manages. Nothing here knows about netlink; the driver converts at its border.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::reconcile::Verdict;

/// Prefix of the alias (`IFLA_IFALIAS`) Steward gives every link it creates: `steward:<node-id>`.
pub const ALIAS_PREFIX: &str = "steward:";

/// The alias that marks a link as managed by the agent with identity `node_id`.
pub fn alias_for(node_id: &str) -> String {
    format!("{ALIAS_PREFIX}{node_id}")
}

/// VLAN membership of a bridge port (tagged unless `untagged`; `pvid` marks the native VLAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VlanMembership {
    pub id: u16,
    pub pvid: bool,
    pub untagged: bool,
}

/// What kind of link a desired link is, with the settings that belong to that kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LinkKind {
    Bridge {
        stp: bool,
        vlan_filtering: bool,
        /// PVID for ports without one (VLAN-filtering bridges only); `None` leaves the kernel's.
        default_pvid: Option<u16>,
    },
    Vlan {
        parent: String,
        id: u16,
    },
}

impl LinkKind {
    pub fn word(&self) -> &'static str {
        match self {
            LinkKind::Bridge { .. } => "bridge",
            LinkKind::Vlan { .. } => "VLAN interface",
        }
    }
}

/// An interface enslaved to a desired bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredPort {
    pub iface: String,
    /// Exact VLAN membership wanted (VLAN-filtering bridges); empty leaves the kernel's default.
    pub vlans: Vec<VlanMembership>,
}

/// One link the spec asks for, after lab expansion and parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredLink {
    pub name: String,
    pub kind: LinkKind,
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
    pub up: bool,
    /// Bridges only.
    pub ports: Vec<DesiredPort>,
    /// Bridges only: every port but `ports` (the uplinks) gets the kernel's bridge-port
    /// `isolated` flag, so no two of them can talk through the bridge.
    #[serde(skip_serializing_if = "is_false")]
    pub ports_isolated: bool,
    /// Where in the spec it comes from (`networks.bridges[0]`, `networks.labs[1]`), for messages.
    #[serde(skip)]
    pub source: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Every desired link, in spec order, plus entries that could not be expanded (name, reason).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredNetworks {
    pub links: Vec<DesiredLink>,
    pub invalid: Vec<(String, String)>,
}

/// Kind of an observed link, converted from the kernel's `IFLA_INFO_KIND` and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservedKind {
    Bridge {
        stp: bool,
        vlan_filtering: bool,
        default_pvid: Option<u16>,
    },
    Vlan {
        /// Name of the parent link (`None` when it lives in another namespace).
        parent: Option<String>,
        id: u16,
    },
    /// Anything else: `veth`, `tun`, `vxlan`, ... or `""` for a physical device.
    Other(String),
}

/// One link as the driver observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub index: u32,
    pub name: String,
    pub kind: ObservedKind,
    pub alias: Option<String>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Name of the bridge (or other master) it is enslaved to.
    pub master: Option<String>,
    /// Addresses with their prefix length, both families.
    pub addresses: Vec<IpNet>,
    /// Bridge VLAN entries of a bridge port, when the driver dumped them (`None` otherwise).
    pub vlans: Option<Vec<VlanMembership>>,
    /// A bridge port with the kernel's `isolated` flag (`IFLA_BRPORT_ISOLATED`): it cannot
    /// talk through the bridge to another isolated port.
    pub isolated: bool,
}

/// The interface that carries the agent's own route to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRoute {
    pub registry: IpAddr,
    pub iface: String,
}

/// Everything observed in one pass. `links` is sorted by name (build it with [`NetObserved::new`])
/// so that lookups by name are binary searches: the planner looks up every desired link and
/// port, which with a linear scan cost O(links²) on a host with hundreds of links.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetObserved {
    pub links: Vec<ObservedLink>,
    pub registry_route: Option<RegistryRoute>,
}

impl NetObserved {
    pub fn new(mut links: Vec<ObservedLink>, registry_route: Option<RegistryRoute>) -> Self {
        links.sort_by(|a, b| a.name.cmp(&b.name));
        NetObserved {
            links,
            registry_route,
        }
    }

    pub fn link(&self, name: &str) -> Option<&ObservedLink> {
        self.links
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.links[i])
    }
}

/// What the agent remembers about one link it created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The kernel's ifindex of the link it created (a link recreated by hand gets another).
    pub index: u32,
    /// Hash of the desired link last converged; equal to the current one means any
    /// difference found now was made by hand (drift), not by a spec change.
    pub hash: String,
}

/// The agent's memory of its links (stored in `state/network-links.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Managed links by name.
    pub links: BTreeMap<String, LinkRecord>,
    /// Interfaces the agent enslaved, and to which bridge: only these are ever released.
    pub ports: BTreeMap<String, String>,
    /// Bridges whose isolation rules the agent put in its nftables table (`nft.rs`): a
    /// difference found later in their rules is drift, not a spec change.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub isolated: BTreeSet<String>,
    /// The agent's nftables table as last written or listed, with the kernel's ruleset
    /// generation then (`nft_known.rs`): while both still hold, a pass needs no `nft` at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TableSeen>,
}

/// The table `inet steward` as the agent last knew it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSeen {
    /// The ruleset generation id (`NFTA_GEN_ID`) at which the table was known.
    pub generation: u32,
    /// Where that id was read: `<boot id>/<netns inode>` (`nft_gen.rs`).
    pub at: String,
    /// sha256 (hex) of the batch that makes the table what it was (`nft_known::digest`).
    pub digest: String,
}

/// Changes to a link's generic attributes, made in one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub up: Option<bool>,
    pub alias: Option<String>,
}

/// Changes to a bridge's own options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeChange {
    pub stp: Option<bool>,
    pub vlan_filtering: Option<bool>,
    pub default_pvid: Option<u16>,
}

/// One netlink write for the driver to carry out. `resource()` names the desired link whose
/// status an action's outcome belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetAction {
    /// Create the link (kind, bridge options and up/down in one request), then set its alias
    /// and MTU (a second request: the kernel ignores `IFLA_IFALIAS` on creation, and a
    /// bridge's MTU only sticks when set on the existing device).
    Create {
        link: DesiredLink,
        alias: String,
    },
    /// Delete a managed link.
    Delete {
        name: String,
        reason: String,
    },
    /// Change MTU, up/down and/or alias of an existing link.
    Set {
        name: String,
        change: LinkChange,
    },
    /// Change a bridge's options.
    SetBridge {
        name: String,
        change: BridgeChange,
    },
    AddAddress {
        name: String,
        addr: IpNet,
    },
    DelAddress {
        name: String,
        addr: IpNet,
    },
    /// Make `port` a port of `bridge` (and bring it up when `up`).
    Enslave {
        port: String,
        bridge: String,
        up: bool,
    },
    /// Take `port`, which the agent enslaved, out of `bridge`.
    Release {
        port: String,
        bridge: String,
    },
    /// Add a VLAN to a port of a VLAN-filtering bridge, or change its flags.
    AddPortVlan {
        port: String,
        bridge: String,
        vlan: VlanMembership,
    },
    DelPortVlan {
        port: String,
        bridge: String,
        id: u16,
    },
    /// Set or clear the `isolated` flag of `port`, a port of `bridge` (`ports_isolated`).
    IsolatePort {
        port: String,
        bridge: String,
        on: bool,
    },
}

impl NetAction {
    /// Short kind name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            NetAction::Create { .. } => "create",
            NetAction::Delete { .. } => "delete",
            NetAction::Set { .. } => "set",
            NetAction::SetBridge { .. } => "set-bridge",
            NetAction::AddAddress { .. } => "add-address",
            NetAction::DelAddress { .. } => "del-address",
            NetAction::Enslave { .. } => "enslave",
            NetAction::Release { .. } => "release",
            NetAction::AddPortVlan { .. } => "add-port-vlan",
            NetAction::DelPortVlan { .. } => "del-port-vlan",
            NetAction::IsolatePort { .. } => "isolate-port",
        }
    }

    /// The link whose status this action's outcome belongs to.
    pub fn resource(&self) -> &str {
        match self {
            NetAction::Create { link, .. } => &link.name,
            NetAction::Delete { name, .. }
            | NetAction::Set { name, .. }
            | NetAction::SetBridge { name, .. }
            | NetAction::AddAddress { name, .. }
            | NetAction::DelAddress { name, .. } => name,
            NetAction::Enslave { bridge, .. }
            | NetAction::Release { bridge, .. }
            | NetAction::AddPortVlan { bridge, .. }
            | NetAction::DelPortVlan { bridge, .. }
            | NetAction::IsolatePort { bridge, .. } => bridge,
        }
    }

    /// How many netlink write requests the driver makes for it.
    pub fn writes(&self) -> usize {
        match self {
            NetAction::Create { .. } => 2,
            _ => 1,
        }
    }
}

/// The planner's output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetPlan {
    /// Creations and changes, parents before children and ports after their bridges.
    pub actions: Vec<NetAction>,
    /// Deletions of managed links no longer wanted, children before parents; applied after the
    /// containers (whose Docker networks may sit on them) have been reconciled.
    pub removals: Vec<NetAction>,
    /// One verdict per desired link (and per link that policy kept from being removed).
    pub verdicts: Vec<(String, Verdict)>,
    /// Problems that leave a link failed even when its own actions succeed (a missing port...).
    pub problems: BTreeMap<String, Vec<String>>,
    /// Desired hash per desired link, recorded in the store once it converged.
    pub hashes: BTreeMap<String, String>,
}
