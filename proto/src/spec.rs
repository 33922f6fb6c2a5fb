//! NodeSpec: the desired state of one node (containers, VMs, networks, payloads).
//!
//! Free-form values that need checking (ports, volumes, CIDRs, quantities, durations) are kept
//! as strings here so that `validate` can report every problem with its field path; typed
//! parsers for them live in `validate` and `quantity` and are used by the agent's drivers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Desired state of one node. Unknown fields are refused everywhere.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSpec {
    #[serde(skip_serializing_if = "NetworksSpec::is_empty")]
    pub networks: NetworksSpec,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<VmSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub payloads: Vec<PayloadSpec>,
    /// The sessions whose workloads this spec holds (written by the registry's sessions
    /// service): the agent removes a session's workloads and volumes at its `expires_at`,
    /// even when it cannot reach the registry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<SessionLease>,
}

/// A session's lease on a node: its id, its deadline and the Docker volumes it owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionLease {
    #[schemars(regex(pattern = crate::patterns::RESOURCE_NAME))]
    pub id: String,
    /// When the agent removes the session's workloads (and volumes, unless `keep_volumes`).
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Docker volumes created for the session (labelled with its id) and removed when it ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_volumes: bool,
}

impl NodeSpec {
    /// True when the spec asks for nothing at all.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
            && self.containers.is_empty()
            && self.vms.is_empty()
            && self.payloads.is_empty()
            && self.sessions.is_empty()
    }

    /// The names of the spec's workloads of `kind`.
    pub fn workload_names(&self, kind: crate::node::WorkloadKind) -> Vec<&str> {
        match kind {
            crate::node::WorkloadKind::Container => {
                self.containers.iter().map(|c| c.name.as_str()).collect()
            }
            crate::node::WorkloadKind::Vm => self.vms.iter().map(|v| v.name.as_str()).collect(),
        }
    }

    /// Appends `from`'s workload of `kind` at index `i` (by [`NodeSpec::workload_names`]).
    pub fn push_workload(&mut self, from: &NodeSpec, kind: crate::node::WorkloadKind, i: usize) {
        match kind {
            crate::node::WorkloadKind::Container => {
                self.containers.push(from.containers[i].clone())
            }
            crate::node::WorkloadKind::Vm => self.vms.push(from.vms[i].clone()),
        }
    }
}

/// Host networks: VLAN interfaces, bridges (with ports and VLAN membership) and lab shorthands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NetworksSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<VlanSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<BridgeSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labs: Vec<LabSpec>,
}

impl NetworksSpec {
    pub fn is_empty(&self) -> bool {
        self.vlans.is_empty() && self.bridges.is_empty() && self.labs.is_empty()
    }
}

/// An 802.1Q VLAN interface on a parent link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VlanSpec {
    pub name: String,
    pub parent: String,
    pub id: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Addresses in CIDR form, e.g. `10.0.0.1/24` or `fd00::1/64`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default = "default_true")]
    pub up: bool,
}

fn default_true() -> bool {
    true
}

/// A Linux bridge, optionally VLAN-aware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub stp: bool,
    #[serde(default)]
    pub vlan_filtering: bool,
    /// PVID given to ports without an explicit one (VLAN-filtering bridges only; kernel default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pvid: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<BridgePort>,
    #[serde(default = "default_true")]
    pub up: bool,
    /// Who may talk to what is on this bridge (see [`Isolation`]); default `open`.
    #[serde(default, skip_serializing_if = "Isolation::is_open")]
    pub isolation: Isolation,
    /// Exceptions to `isolation` (see [`AllowRule`]); nothing without isolation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
    /// The bridge's ports cannot talk to each other through it (containers or VMs sharing it,
    /// one per session or user), while each still reaches the host's address on it, so its
    /// egress, and the spec's own `ports` (the uplinks). Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ports_isolated: bool,
}

/// Network isolation of a managed bridge or a lab, enforced by the agent in its own nftables
/// table (`inet steward`), never in anyone else's.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// No rules: the host routes between this bridge and others as it would anyway.
    #[default]
    Open,
    /// No traffic between this bridge and any other interface (other bridges, the uplink), and
    /// none from the bridge to the host itself (not even to its own address on the bridge):
    /// what is on the bridge reaches only what is on the same bridge.
    Isolated,
    /// What is on the bridge reaches the outside through the host's uplink, masqueraded
    /// (source-NATed to the host's address); nothing reaches it but replies and Docker's
    /// published (DNAT'd) ports; no traffic to the spec's other bridges, none to the host itself.
    EgressOnly,
}

impl Isolation {
    pub fn is_open(&self) -> bool {
        *self == Isolation::Open
    }
}

/// An exception to a bridge's isolation: traffic matching it may enter the bridge (routed
/// from another interface) and, unless `from` names a bridge, reach the host itself from the
/// bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub proto: AllowProto,
    /// Destination port (`tcp` and `udp` only); none: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Source: a network in CIDR form, or the name of another bridge of the spec (a managed
    /// bridge or a lab's bridge); none: any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The protocol of an [`AllowRule`]; `icmp` covers ICMPv6 too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AllowProto {
    Tcp,
    Udp,
    Icmp,
}

/// An interface enslaved to a bridge, with its VLAN membership on VLAN-filtering bridges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgePort {
    pub iface: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<PortVlan>,
}

/// VLAN membership of a bridge port: tagged unless `untagged`; `pvid` marks the native VLAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortVlan {
    pub id: u16,
    #[serde(default, skip_serializing_if = "is_false")]
    pub pvid: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub untagged: bool,
}

/// Lab shorthand: expands to a VLAN interface on `parent`, a bridge and a /24 (see the network
/// issue for the expansion rules). Without `parent` the lab is bridge-only: a bridge and its
/// subnet on this host and no VLAN interface (the VLAN id still names the bridge and the subnet);
/// what is on the bridge reaches nothing outside the host through it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    pub vlan: u16,
    /// The interface carrying the lab's VLAN (its trunk); none: a bridge-only lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Bridge name; defaults to `br<vlan>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Subnet; defaults to the agent's lab template (`192.168.<vlan>.0/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Who is the lab's gateway (`.1`): the host (its address on the bridge, the default), or
    /// `none`: the host takes no address on the bridge and routes nothing for it (a router VM
    /// on the lab, such as pfSense, owns `.1`).
    #[serde(default, skip_serializing_if = "LabGateway::is_host")]
    pub gateway: LabGateway,
    /// Who may talk to what is on the lab's bridge (see [`Isolation`]); default `open`.
    #[serde(default, skip_serializing_if = "Isolation::is_open")]
    pub isolation: Isolation,
    /// Exceptions to `isolation` (see [`AllowRule`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
    /// The lab's ports cannot talk to each other through its bridge, while each still reaches
    /// the gateway (the host's `.1`) and the lab's VLAN interface; needs `gateway: host`.
    /// Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ports_isolated: bool,
}

/// A lab's gateway (see [`LabSpec::gateway`]).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LabGateway {
    /// The host holds `.1` on the lab's bridge.
    #[default]
    Host,
    /// The host holds no address on the bridge: something on the lab owns `.1`.
    None,
}

impl LabGateway {
    pub fn is_host(&self) -> bool {
        *self == LabGateway::Host
    }
}

/// Restart policy of a container or VM.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// A number or a string such as `0.5`, `500m`, `256Mi`, `2Gi`; checked by `validate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Quantity {
    Number(f64),
    Text(String),
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantity::Number(n) => write!(f, "{n}"),
            Quantity::Text(s) => f.write_str(s),
        }
    }
}

/// CPU and memory limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// A health check: exactly one of `http`, `tcp` or `exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// `host:port` to connect to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Duration such as `10s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
}

/// A Docker container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    #[schemars(regex(pattern = crate::patterns::RESOURCE_NAME))]
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint when given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `[host_ip:][host_port:]container_port[/tcp|udp]`, e.g. `8080:80/tcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `volume:/path[:ro]` or `/host/path:/path[:ro]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A Docker network or a managed bridge name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "is_default_resources")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_network: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_pid: bool,
    /// Return to the last healthy configuration when a spec change leaves the container
    /// failing past the agent's rollback grace period (default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub rollback: bool,
    /// The session this container belongs to (one of the spec's `sessions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_default_resources(r: &Resources) -> bool {
    *r == Resources::default()
}

/// Desired power state of a VM.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    #[default]
    Running,
    Stopped,
}

/// A VM NIC on a managed bridge, optionally in a VLAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNic {
    pub bridge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// `aa:bb:cc:dd:ee:ff`; derived stably from node, VM and NIC index when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// cloud-init NoCloud seed contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CloudInit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
}

/// A QEMU/KVM virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    #[schemars(regex(pattern = crate::patterns::RESOURCE_NAME))]
    pub name: String,
    /// Base image: an absolute path on the node.
    pub image: String,
    #[serde(default = "default_vm_cpus")]
    pub cpus: u32,
    pub memory: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<VmNic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
    #[serde(default)]
    pub state: PowerState,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Direct kernel boot: an absolute path to a kernel on the node (the disk is still
    /// attached). Without it the VM boots from its disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Initramfs for direct kernel boot (needs `kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line for direct kernel boot (needs `kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Probed by the agent: `tcp` or `http` against the guest's address (on a managed bridge);
    /// `exec` is for containers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    /// Return to the last healthy configuration (and its payload versions) when a spec change
    /// leaves the VM failing past the agent's rollback grace period (default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub rollback: bool,
    /// The session this VM belongs to (one of the spec's `sessions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

fn default_vm_cpus() -> u32 {
    1
}

/// What a payload is: a plain file, or a `docker save` tarball loaded into the engine.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadKind {
    #[default]
    File,
    DockerImage,
}

/// What to restart when a payload's content changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OnChange {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_containers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_vms: Vec<String>,
}

impl OnChange {
    /// The workloads of `kind` this payload restarts when it changes.
    pub fn restarts(&self, kind: crate::node::WorkloadKind) -> &[String] {
        match kind {
            crate::node::WorkloadKind::Container => &self.restart_containers,
            crate::node::WorkloadKind::Vm => &self.restart_vms,
        }
    }

    /// Every workload this payload restarts when it changes, whatever its kind.
    pub fn workloads(&self) -> impl Iterator<Item = crate::node::WorkloadRef> + '_ {
        crate::node::WorkloadKind::ALL
            .into_iter()
            .flat_map(move |kind| {
                (self.restarts(kind).iter()).map(move |n| crate::node::WorkloadRef::new(kind, n))
            })
    }
}

/// A versioned artifact deployed to a path, verified by sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PayloadSpec {
    #[schemars(regex(pattern = crate::patterns::RESOURCE_NAME))]
    pub name: String,
    #[schemars(regex(pattern = crate::patterns::PAYLOAD_VERSION))]
    pub version: String,
    pub path: String,
    #[serde(default)]
    pub kind: PayloadKind,
    /// Octal file mode, e.g. `"0644"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `user` or `user:group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Lower-case hex sha256; pinned by the registry when the spec is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::patterns::SHA256))]
    pub sha256: Option<String>,
    /// Size in bytes; pinned by the registry with `sha256` when the spec is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_change: Option<OnChange>,
}
