//! What a reconcile pass needs from each driver, as traits: the host networks' phase, the
//! payloads' phase, the container engine (and how to reach it) and the VMs' phase. The real
//! implementations below only delegate to `network`, `payload`, `docker` and `vm`; the pass's
//! orchestration is unit-tested against in-memory fakes of these traits (`pass_tests.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use steward_proto::{ContainerSpec, NodeSpec, PayloadAttestation, ResourceStatus, VmSpec};

use crate::docker::{Docker, DockerError};
use crate::heal::vms::VmEntry;
use crate::network::{EventFeed, NetOutcome, Networks};
use crate::pass::Pass;
use crate::payload::Payloads;
use crate::reconcile::{Observed, Policy};
use crate::vm::{VmPass, Vms};

/// The host networks: links created and changed first, deletions last (`finish`).
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
}

/// The payloads: deployed before the workloads that use them.
#[async_trait]
pub trait PayloadPhase: Send + Sync {
    /// Blobs the cache keeps although the spec no longer names them.
    fn retain_blobs(&mut self, keep: BTreeSet<String>);
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        engine: Option<&dyn ContainerEngine>,
        pass: &Pass,
    ) -> Vec<ResourceStatus>;
    /// The VMs to restart because a payload they restart on changed.
    fn take_vm_restarts(&mut self) -> BTreeSet<String>;
    fn attestations(&self) -> Vec<PayloadAttestation>;
}

/// A container engine: what the containers' phase observes and does.
#[async_trait]
pub trait ContainerEngine: Send + Sync {
    /// The Docker driver behind it, for the payloads' image loads and restarts.
    fn docker(&self) -> Option<&Docker> {
        None
    }
    async fn observe(&self) -> Result<Observed, DockerError>;
    async fn pull(&self, image: &str) -> Result<(), DockerError>;
    /// Creates and starts a container, at its lab address when it has one.
    async fn create_and_start(
        &self,
        spec: &ContainerSpec,
        hash: &str,
        node_id: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), DockerError>;
    async fn start(&self, id: &str) -> Result<(), DockerError>;
    async fn restart(&self, id: &str) -> Result<(), DockerError>;
    async fn stop(&self, id: &str) -> Result<(), DockerError>;
    async fn remove(&self, id: &str) -> Result<(), DockerError>;
    async fn ensure_bridge_network(
        &self,
        bridge: &str,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        node_id: &str,
    ) -> Result<(), DockerError>;
    async fn remove_bridge_network(&self, bridge: &str) -> Result<(), DockerError>;
}

/// How the reconciler reaches its container engine (again after a failure).
#[async_trait]
pub trait EngineConnector: Send + Sync {
    async fn connect(&self) -> Result<Arc<dyn ContainerEngine>, String>;
}

/// The VMs.
#[async_trait]
pub trait VmPhase: Send + Sync {
    /// Restarts a running VM (a payload it restarts on changed).
    async fn restart(&mut self, name: &str) -> Result<(), String>;
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        unusable: &BTreeMap<String, String>,
        heal: &mut BTreeMap<String, VmEntry>,
        generation: u64,
        pass: &Pass,
    ) -> VmPass;
    fn next_probe_in(&self, vms: &[VmSpec]) -> Option<Duration>;
}

#[async_trait]
impl NetworkPhase for Networks {
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        node_id: &str,
        pass: &Pass,
    ) -> NetOutcome {
        Networks::reconcile(self, spec, policy, node_id, pass).await
    }
    async fn finish(&mut self, out: &mut NetOutcome, pass: &Pass) {
        Networks::finish(self, out, pass).await
    }
    fn force_full_observe(&mut self) {
        Networks::force_full_observe(self)
    }
    fn set_event_feed(&mut self, feed: Arc<EventFeed>) {
        Networks::set_event_feed(self, feed)
    }
}

#[async_trait]
impl PayloadPhase for Payloads {
    fn retain_blobs(&mut self, keep: BTreeSet<String>) {
        Payloads::retain_blobs(self, keep)
    }
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        engine: Option<&dyn ContainerEngine>,
        pass: &Pass,
    ) -> Vec<ResourceStatus> {
        let docker = engine.and_then(|e| e.docker());
        Payloads::reconcile(self, spec, policy, docker, pass).await
    }
    fn take_vm_restarts(&mut self) -> BTreeSet<String> {
        Payloads::take_vm_restarts(self)
    }
    fn attestations(&self) -> Vec<PayloadAttestation> {
        Payloads::attestations(self)
    }
}

#[async_trait]
impl ContainerEngine for Docker {
    fn docker(&self) -> Option<&Docker> {
        Some(self)
    }
    async fn observe(&self) -> Result<Observed, DockerError> {
        Docker::observe(self).await
    }
    async fn pull(&self, image: &str) -> Result<(), DockerError> {
        Docker::pull(self, image).await
    }
    async fn create_and_start(
        &self,
        spec: &ContainerSpec,
        hash: &str,
        node_id: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), DockerError> {
        match ip {
            Some(ip) => self.create_and_start_at(spec, hash, node_id, ip).await,
            None => Docker::create_and_start(self, spec, hash, node_id).await,
        }
        .map(|_| ())
    }
    async fn start(&self, id: &str) -> Result<(), DockerError> {
        Docker::start(self, id).await
    }
    async fn restart(&self, id: &str) -> Result<(), DockerError> {
        Docker::restart(self, id).await
    }
    async fn stop(&self, id: &str) -> Result<(), DockerError> {
        Docker::stop(self, id).await
    }
    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        Docker::remove(self, id).await
    }
    async fn ensure_bridge_network(
        &self,
        bridge: &str,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        node_id: &str,
    ) -> Result<(), DockerError> {
        Docker::ensure_bridge_network(self, bridge, subnet, gateway, node_id).await
    }
    async fn remove_bridge_network(&self, bridge: &str) -> Result<(), DockerError> {
        Docker::remove_bridge_network(self, bridge).await
    }
}

/// The Docker engine at a socket (the default one when `None`).
pub struct DockerConnector(pub Option<PathBuf>);

#[async_trait]
impl EngineConnector for DockerConnector {
    async fn connect(&self) -> Result<Arc<dyn ContainerEngine>, String> {
        let d = Docker::connect(self.0.as_deref())
            .await
            .map_err(|e| format!("Docker engine unreachable: {e:#}"))?;
        Ok(Arc::new(d))
    }
}

#[async_trait]
impl VmPhase for Vms {
    async fn restart(&mut self, name: &str) -> Result<(), String> {
        Vms::restart(self, name)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        unusable: &BTreeMap<String, String>,
        heal: &mut BTreeMap<String, VmEntry>,
        generation: u64,
        pass: &Pass,
    ) -> VmPass {
        Vms::reconcile(self, spec, unusable, heal, generation, pass).await
    }
    fn next_probe_in(&self, vms: &[VmSpec]) -> Option<Duration> {
        Vms::next_probe_in(self, vms)
    }
}
