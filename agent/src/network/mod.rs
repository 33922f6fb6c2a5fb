//! Host networks through netlink: bridges (STP, MTU, VLAN filtering, default PVID), 802.1Q VLAN
//! interfaces, bridge ports with their VLAN membership, IPv4/IPv6 addresses, up/down; lab
//! networks; drift re-assertion.
//!
//! - `types.rs`, `desired.rs`, `lab.rs`, `plan.rs`, `report.rs` — pure: the spec expanded to
//!   desired links, the planner (table-tested), lab expansion and address leases, the links'
//!   statuses from the plan's verdicts and the failed actions.
//! - `driver.rs`, `dump.rs`, `events.rs` — the only code importing rtnetlink: observe / apply
//!   (the link dump parsed lean in `dump.rs`), and link and address events.
//! - `firewall.rs` (pure: bridges' policies → the agent's nftables table, drift; the rules in
//!   `firewall/rules.rs`), `nft.rs` (the table observed, compared and written, applied after
//!   the links exist; `nft_json.rs` its JSON both ways; `nft_run.rs` the only code running
//!   `nft`), `nft_known.rs` (pure: list, write or nothing, from what the agent knows of its
//!   table) and `nft_gen.rs` (the kernel's nftables ruleset generation id, by netlink).
//! - `plan/ports.rs` also plans `ports_isolated` (the kernel's bridge-port `isolated` flag);
//!   `port_sweep.rs` flags the ports the workloads' phase plugged in, before the pass ends.
//! - `counters.rs` — workloads' byte counters (a container's veths, a VM's taps) from a
//!   statistics dump, for their activity in the status.
//! - this file — the I/O side: observe → plan → apply → record → report, in two phases so the
//!   reconciler can deal with containers (and their Docker networks) before links are deleted.
//!
//! Every pass logs one line `networks reconciled links=N netlink_writes=W nft_writes=F
//! isolation_us=I observed=dump|events took_us=T` (target `steward_agent::network`): the write
//! requests sent to the kernel (a converged host: `netlink_writes=0`), the `nft` transactions,
//! the part of `took_us` spent on isolation; `observed=events`: the pass reused the links an
//! earlier pass dumped, as the netlink event listener (daemon and `apply --watch` only)
//! announced no change since and the agent wrote nothing. Tests and the bench read it.

pub mod counters;
pub mod desired;
pub mod driver;
mod dump;
pub mod error;
pub mod events;
pub mod firewall;
pub mod lab;
mod nft;
mod nft_gen;
mod nft_json;
mod nft_known;
mod nft_run;
pub mod plan;
mod port_sweep;
mod report;

#[cfg(test)]
mod store_tests;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net};
use steward_proto::{
    NodeSpec, ResourceKind, ResourceState, ResourceStatus, WorkloadKind, WorkloadRef,
};
use tracing::{info, info_span, warn, Instrument};

use crate::pass::Pass;
use crate::reconcile::Policy;
use crate::store::{Kept, Record, Store};
pub use driver::NetlinkDriver;
pub use error::NetworkError;
pub use events::EventFeed;
use types::{DesiredNetworks, LinkKind, NetAction, NetObserved, NetState};

/// Lab leases: bridge -> consumer (a workload's `lab::lease_key`: `container:<name>`,
/// `vm:<name>/<nic>`) -> address.
pub type Leases = BTreeMap<String, BTreeMap<String, IpAddr>>;

impl Record for Leases {
    const KEY: &'static str = "network-leases";
}

impl Record for NetState {
    const KEY: &'static str = "network-links";
}

/// A VM NIC's lab lease: its address (with the lab's prefix length) and the lab's gateway
/// (`.1`, the host's or a router VM's), for its cloud-init `network-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicLease {
    pub address: IpNet,
    pub gateway: IpAddr,
    /// The DNS server to give: the gateway when a router VM owns it (`gateway: none`).
    pub dns: Option<IpAddr>,
}

/// The IPv4 subnet and gateway a Docker network on a managed bridge gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNet {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// What the first phase hands to the reconciler.
#[derive(Debug, Default)]
pub struct NetOutcome {
    /// One status per desired link (and per link kept by policy), in spec order.
    pub resources: Vec<ResourceStatus>,
    /// Names of every desired bridge (labs' included).
    pub desired_bridges: BTreeSet<String>,
    /// Desired bridges with an IPv4 address, for Docker networks backed by them.
    pub bridges: BTreeMap<String, BridgeNet>,
    /// Desired bridges that are not Steward's to use (conflict or refused), with the reason.
    pub unusable: BTreeMap<String, String>,
    /// Lab addresses of containers, by container name.
    pub container_ips: BTreeMap<String, IpAddr>,
    /// Containers that cannot get a lab address, with the reason.
    pub container_errors: BTreeMap<String, String>,
    /// Lab leases of VMs' NICs, by VM name and NIC index.
    pub vm_leases: BTreeMap<String, BTreeMap<usize, NicLease>>,
    /// Deletions left for [`Networks::finish`].
    removals: Vec<NetAction>,
    /// The `ports_isolated` bridges that are Steward's, whose new ports (plugged in by the
    /// workloads' phase) [`Networks::finish`] flags.
    ports_isolated: Vec<types::DesiredLink>,
    /// Time spent in the network phases (the containers' phase in between is not counted).
    spent: Option<std::time::Duration>,
    links: usize,
    /// Netlink write requests sent in this pass, and `nft` transactions.
    writes: usize,
    nft_writes: usize,
    /// Time spent on isolation (planning, looking at and writing the nftables table).
    isolation: std::time::Duration,
    /// The links came from the event-fed cache, not from a dump.
    pub observed_from_cache: bool,
}

impl NetOutcome {
    /// Managed bridges that [`Networks::finish`] will delete.
    pub fn bridges_to_delete(&self) -> Vec<String> {
        self.removals
            .iter()
            .filter_map(|a| match a {
                NetAction::Delete { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

/// The network side of the reconciler: owns the netlink driver and the agent's link records.
pub struct Networks {
    driver: Option<NetlinkDriver>,
    lab_template: String,
    registry: Option<String>,
    registry_ip: Option<IpAddr>,
    /// The links (and ports) the agent created, as recorded.
    state: Kept<NetState>,
    leases: Kept<Leases>,
    /// The netlink event listener's feed, when one runs (the daemon): lets a pass reuse the
    /// links observed by an earlier one (see `observe`).
    feed: Option<Arc<EventFeed>>,
    /// Links observed at an epoch of `feed` (with bridge VLAN entries or not), after which
    /// this agent wrote nothing.
    cache: Option<(u64, bool, NetObserved)>,
    /// The next pass dumps the kernel's links whatever the feed says (periodic resync).
    full_observe: bool,
    /// The last isolation plan and its `nft` batch (reused while the plan stays the same),
    /// and the socket the ruleset generation is read by.
    nft: nft::Memo,
}

fn status(name: &str, state: ResourceState, error: Option<String>) -> ResourceStatus {
    ResourceStatus::new(ResourceKind::Network, name, state, error)
}

/// The host part of a registry URL, as an address (resolving a name).
async fn resolve(url: &str) -> Option<IpAddr> {
    let u = reqwest::Url::parse(url).ok()?;
    let port = u.port_or_known_default().unwrap_or(443);
    let host = u
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    let mut addrs = tokio::net::lookup_host((host.as_str(), port)).await.ok()?;
    addrs.next().map(|s| s.ip())
}

impl Networks {
    /// `lab_template` expands labs without a cidr; `store` keeps link records and leases
    /// (without one, they live only as long as this value); `registry` is the registry's URL,
    /// whose route is protected by policy.
    pub fn new(lab_template: String, store: Option<Store>, registry: Option<String>) -> Self {
        Self {
            driver: None,
            lab_template,
            registry,
            registry_ip: None,
            state: Kept::new(store.clone()),
            leases: Kept::new(store),
            feed: None,
            cache: None,
            full_observe: false,
            nft: nft::Memo::default(),
        }
    }

    /// The links as they are: from the cache when the event feed's epoch has not moved since it
    /// was filled (and no full observe is due), otherwise from the kernel. Returns whether the
    /// cache was used.
    async fn observe(
        driver: &mut NetlinkDriver,
        feed: Option<&EventFeed>,
        cache: &mut Option<(u64, bool, NetObserved)>,
        full: bool,
        bridge_vlans: bool,
        registry_ip: Option<IpAddr>,
    ) -> Result<(NetObserved, bool), NetworkError> {
        // Taken before the dump: an event for anything the dump might miss moves it after.
        let epoch = feed.and_then(EventFeed::snapshot);
        if let (Some(now), Some((then, with_vlans, observed)), false) =
            (epoch, cache.as_ref(), full)
        {
            // Bridge VLAN entries are only in the cache when that pass asked for them.
            if now == *then && (*with_vlans || !bridge_vlans) {
                let mut observed = observed.clone();
                // Routes are not among the events followed: looked up every time.
                observed.registry_route = driver.registry_route(registry_ip).await?;
                return Ok((observed, true));
            }
        }
        let observed = driver.observe(bridge_vlans, registry_ip).await?;
        *cache = epoch.map(|e| (e, bridge_vlans, observed.clone()));
        Ok((observed, false))
    }

    fn load_state(&mut self) -> NetState {
        self.state.get().clone()
    }

    async fn save_state(&mut self, s: NetState) {
        self.state.set(s);
        self.state.persist().await;
    }

    /// Lab leases for the spec's attached containers and VMs, kept stable through the store.
    async fn leases(&mut self, spec: &NodeSpec, labs: &[lab::Lab], out: &mut NetOutcome) {
        let before = self.leases.get().clone();
        let mut after = Leases::new();
        for l in labs {
            let consumers = lab::consumers(spec, &l.bridge);
            let empty = BTreeMap::new();
            let (got, errors) = lab::assign(l, &consumers, before.get(&l.bridge).unwrap_or(&empty));
            let container = |key: &str| {
                lab::lease_holder(key)
                    .filter(|w| w.kind == WorkloadKind::Container)
                    .map(|w| w.name)
            };
            for (c, ip) in &got {
                if let Some(name) = container(c) {
                    out.container_ips.insert(name, *ip);
                } else if let (Some(vm), Some(nic)) = (lab::lease_holder(c), lab::lease_nic(c)) {
                    let lease = NicLease {
                        address: IpNet::new(*ip, l.cidr.prefix_len()).unwrap_or(l.gateway),
                        gateway: l.gateway.addr(),
                        dns: (!l.host_gateway).then(|| l.gateway.addr()),
                    };
                    out.vm_leases.entry(vm.name).or_default().insert(nic, lease);
                }
            }
            for (c, why) in errors {
                if let Some(name) = container(&c) {
                    out.container_errors.insert(name, why);
                }
            }
            if !got.is_empty() {
                after.insert(l.bridge.clone(), got);
            }
        }
        self.leases.set(after);
        self.leases.persist().await;
    }

    /// Connects the netlink driver when there is none; resolves the registry's address once.
    async fn connect(&mut self) -> Result<(), NetworkError> {
        if self.driver.is_none() {
            self.driver = Some(NetlinkDriver::connect()?);
        }
        if self.registry_ip.is_none() {
            if let Some(url) = &self.registry {
                self.registry_ip = resolve(url).await;
            }
        }
        Ok(())
    }

    /// This pass's observation through the connected driver (`None` without one) and whether
    /// it came from the cache; a failure drops the driver and the cache.
    async fn observe_links(
        &mut self,
        bridge_vlans: bool,
    ) -> Option<Result<(NetObserved, bool), NetworkError>> {
        let registry_ip = self.registry_ip;
        let driver = self.driver.as_mut()?;
        let full = std::mem::take(&mut self.full_observe);
        let feed = self.feed.as_deref();
        let res = Self::observe(
            driver,
            feed,
            &mut self.cache,
            full,
            bridge_vlans,
            registry_ip,
        )
        .await;
        if let Err(e) = &res {
            warn!(error = %e, "cannot observe links");
            self.driver = None;
            self.cache = None;
        }
        Some(res)
    }

    async fn apply_changes(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        node_id: &str,
        pass: &Pass,
    ) -> NetOutcome {
        let mut out = NetOutcome::default();
        let (desired, labs) = desired::desired(&spec.networks, &self.lab_template);
        self.leases(spec, &labs, &mut out).await;
        note_bridges(&desired, &mut out);
        let mut state = self.load_state();
        if desired.links.is_empty() && desired.invalid.is_empty() && state.links.is_empty() {
            return out; // nothing wanted, nothing of ours to clean up: no netlink at all
        }
        out.links = desired.links.len();
        if let Err(e) = self.connect().await {
            failed_all(&desired, e.to_string(), &mut out);
            return out;
        }
        let t_obs = Instant::now();
        let observed = match self.observe_links(wants_bridge_vlans(&desired)).await {
            None => return out,
            Some(Ok((o, cached))) => {
                out.observed_from_cache = cached;
                o
            }
            Some(Err(e)) => {
                failed_all(&desired, e.to_string(), &mut out);
                return out;
            }
        };
        let Some(driver) = self.driver.as_mut() else {
            return out;
        };
        let t_plan = Instant::now();
        let plan = plan::plan(&desired, &observed, &state, policy, node_id);
        tracing::debug!(
            observe_us = (t_plan - t_obs).as_micros() as u64,
            plan_us = t_plan.elapsed().as_micros() as u64,
            cached = out.observed_from_cache,
            "observed and planned"
        );
        let writes_before = driver.writes();
        let failed = apply_actions(driver, &plan.actions, &mut state, pass).await;
        report::report(&plan, &failed, driver, &mut state, &mut out);
        out.removals = plan.removals;
        out.ports_isolated = (desired.links.iter())
            .filter(|d| d.ports_isolated && !out.unusable.contains_key(&d.name))
            .cloned()
            .collect();
        out.writes += driver.writes() - writes_before;
        if out.writes > 0 {
            // What we observed is no longer what is there.
            self.cache = None;
        }
        self.save_state(state).await;
        out
    }
}

/// Notes the desired bridges, and those with an IPv4 address for Docker networks.
fn note_bridges(desired: &DesiredNetworks, out: &mut NetOutcome) {
    for d in &desired.links {
        if let LinkKind::Bridge { .. } = d.kind {
            out.desired_bridges.insert(d.name.clone());
            if let Some(IpNet::V4(a)) = d.addresses.iter().find(|a| a.addr().is_ipv4()) {
                out.bridges.insert(
                    d.name.clone(),
                    BridgeNet {
                        subnet: a.trunc(),
                        gateway: a.addr(),
                    },
                );
            }
        }
    }
}

/// Bridge VLAN entries are observed only when a desired bridge filters VLANs.
fn wants_bridge_vlans(desired: &DesiredNetworks) -> bool {
    desired.links.iter().any(|d| {
        matches!(
            d.kind,
            LinkKind::Bridge {
                vlan_filtering: true,
                ..
            }
        )
    })
}

/// Every desired link failed for the same reason (no netlink, no observation).
fn failed_all(desired: &DesiredNetworks, why: String, out: &mut NetOutcome) {
    for d in &desired.links {
        out.resources
            .push(status(&d.name, ResourceState::Failed, Some(why.clone())));
    }
}

/// Applies `actions` in order, recording each success in `state`; after a link's first
/// failure its other actions are skipped, and once `pass` is superseded none is applied.
/// Returns the failed links with the reason.
async fn apply_actions(
    driver: &mut NetlinkDriver,
    actions: &[NetAction],
    state: &mut NetState,
    pass: &Pass,
) -> BTreeMap<String, String> {
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    pass.planned(actions.len());
    for action in actions {
        let res = action.resource().to_string();
        if failed.contains_key(&res) {
            continue;
        }
        if let Some(newer) = pass.superseded() {
            // Not applied, so never recorded as converged.
            let why = format!("not applied: generation {newer} took over this pass");
            failed.insert(res, why);
            continue;
        }
        pass.step();
        let span = info_span!("net_action", kind = action.kind(), link = %res);
        match driver.apply(action).instrument(span).await {
            Ok(()) => {
                tracing::debug!(kind = action.kind(), link = %res, "applied");
                report::record(state, action, driver);
            }
            Err(e) => {
                warn!(kind = action.kind(), link = %res, error = %e, "network action failed");
                failed.insert(res, e.to_string());
            }
        }
    }
    failed
}

/// Makes a VM's tap a port of a managed bridge, with its VLAN (see
/// [`NetlinkDriver::attach_port`]); the VM module's way to netlink.
pub async fn attach_port(
    port: &str,
    bridge: &str,
    vlan: Option<u16>,
    alias: &str,
) -> Result<(), NetworkError> {
    NetlinkDriver::connect()?
        .attach_port(port, bridge, vlan, alias)
        .await
}

/// The host networks as the reconcile pass sees them: links created and changed first,
/// deletions last (`finish`). [`Networks`] is the real one; the pass's unit tests fake it.
#[async_trait]
pub trait NetworkPhase: Send + Sync {
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        node_id: &str,
        pass: &Pass,
    ) -> NetOutcome;
    async fn finish(&mut self, out: &mut NetOutcome, pass: &Pass);
    /// The next pass observes everything afresh.
    fn force_full_observe(&mut self);
    /// Passes may reuse what an earlier one observed while this netlink feed sees no change.
    fn set_event_feed(&mut self, _feed: Arc<EventFeed>) {}
    /// The bytes each running workload sent on its interfaces, cumulative
    /// (`counters::read`; a workload none of whose interfaces is found is left out).
    async fn activity(
        &self,
        wanted: Vec<(WorkloadRef, counters::Interfaces)>,
    ) -> Result<BTreeMap<WorkloadRef, u64>, NetworkError>;
}

#[async_trait]
impl NetworkPhase for Networks {
    /// Read off the runtime (a statistics dump and one request per container).
    async fn activity(
        &self,
        wanted: Vec<(WorkloadRef, counters::Interfaces)>,
    ) -> Result<BTreeMap<WorkloadRef, u64>, NetworkError> {
        tokio::task::spawn_blocking(move || counters::read(&wanted))
            .await
            .map_err(|e| NetworkError::Observe {
                what: "read link statistics".into(),
                reason: e.to_string(),
            })?
    }

    /// Lets passes reuse the links observed by an earlier pass while `feed` (the netlink event
    /// listener) announces no change and the agent itself wrote nothing since.
    fn set_event_feed(&mut self, feed: Arc<EventFeed>) {
        self.feed = Some(feed);
    }

    /// Makes the next pass dump the kernel's links even if the event feed says nothing
    /// changed: the periodic resync does, so that a lost event costs at most one interval.
    fn force_full_observe(&mut self) {
        self.full_observe = true;
    }

    /// Phase one: observe, plan, apply creations and changes, report every desired link. Stops
    /// between two actions once `pass` is superseded (the links left are reported failed and
    /// not recorded as converged).
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        node_id: &str,
        pass: &Pass,
    ) -> NetOutcome {
        let started = Instant::now();
        let full = self.full_observe;
        let mut out = self.apply_changes(spec, policy, node_id, pass).await;
        let (keep_route, t) = (!policy.allow_registry_interface_changes, Instant::now());
        self.isolate(&spec.networks, full, keep_route, pass, &mut out)
            .await;
        out.isolation = t.elapsed();
        out.spent = Some(started.elapsed());
        out
    }

    /// Phase two: delete the managed links no longer wanted (until `pass` is superseded: the
    /// newer pass plans the rest), forget links that are gone, log the pass's summary line.
    async fn finish(&mut self, out: &mut NetOutcome, pass: &Pass) {
        let Some(spent) = out.spent else {
            return;
        };
        let started = Instant::now();
        self.isolate_new_ports(out, pass).await;
        let mut state = self.load_state();
        if let Some(driver) = self.driver.as_mut() {
            let writes_before = driver.writes();
            let removals = std::mem::take(&mut out.removals);
            pass.planned(removals.len());
            for action in removals {
                if pass.superseded().is_some() {
                    break;
                }
                pass.step();
                let name = action.resource().to_string();
                let span = info_span!("net_action", kind = action.kind(), link = %name);
                if let NetAction::Delete { reason, .. } = &action {
                    info!(link = %name, %reason, "deleting managed link");
                }
                match driver.apply(&action).instrument(span).await {
                    Ok(()) => report::record(&mut state, &action, driver),
                    Err(e) => {
                        warn!(link = %name, error = %e, "deleting a managed link failed");
                        out.resources.push(status(
                            &name,
                            ResourceState::Failed,
                            Some(format!("no longer in the spec, but {e}")),
                        ));
                    }
                }
            }
            let known: BTreeSet<String> = out.resources.iter().map(|r| r.name.clone()).collect();
            state
                .links
                .retain(|name, _| known.contains(name) || driver.index_of(name).is_some());
            out.writes += driver.writes() - writes_before;
            if driver.writes() > writes_before {
                self.cache = None;
            }
        }
        self.save_state(state).await;
        info!(
            target: "steward_agent::network",
            links = out.links,
            netlink_writes = out.writes,
            nft_writes = out.nft_writes,
            isolation_us = out.isolation.as_micros() as u64,
            observed = %if out.observed_from_cache { "events" } else { "dump" },
            took_us = (spent + started.elapsed()).as_micros() as u64,
            "networks reconciled"
        );
    }
}
