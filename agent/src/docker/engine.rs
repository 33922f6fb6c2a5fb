//! The container engine as the reconcile pass sees it: the [`ContainerEngine`] trait (what the
//! containers' phase observes and does; the Docker driver implements it, the pass's unit tests
//! fake it), how it is reached ([`EngineConnector`], [`DockerConnector`]) and the
//! [`EngineSlot`] holding the engine once reached (connected on first use, and again after a
//! failure).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use steward_proto::ContainerSpec;

use super::{Docker, DockerError};
use crate::reconcile::volumes::{ObservedVolume, SessionVolume};
use crate::reconcile::Observed;

/// A container engine: what the containers' phase observes and does.
#[async_trait]
pub trait ContainerEngine: Send + Sync {
    /// The Docker driver behind it, for the payloads' image loads.
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
    /// Restarts the container `name` if this node manages it: false when there is none.
    async fn restart_managed(&self, name: &str, node_id: &str) -> Result<bool, DockerError>;
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
    /// Every volume, with Steward's labels and whether a container uses it.
    async fn observe_volumes(&self) -> Result<Vec<ObservedVolume>, DockerError>;
    /// Creates a session volume labelled for `node_id` (an error if one of that name exists
    /// without those labels).
    async fn create_volume(&self, v: &SessionVolume, node_id: &str) -> Result<(), DockerError>;
    /// Removes a volume: false when a container still uses it.
    async fn remove_volume(&self, name: &str) -> Result<bool, DockerError>;
}

/// How the reconciler reaches its container engine (again after a failure).
#[async_trait]
pub trait EngineConnector: Send + Sync {
    async fn connect(&self) -> Result<Arc<dyn ContainerEngine>, String>;
}

/// The engine, once reached, and how to reach it.
pub struct EngineSlot {
    connector: Box<dyn EngineConnector>,
    engine: Option<Arc<dyn ContainerEngine>>,
}

impl EngineSlot {
    pub fn new(connector: Box<dyn EngineConnector>) -> Self {
        Self {
            connector,
            engine: None,
        }
    }

    /// The engine, connecting on first use (and again after [`EngineSlot::lost`]).
    pub async fn get(&mut self) -> Result<Arc<dyn ContainerEngine>, String> {
        if let Some(e) = &self.engine {
            return Ok(e.clone());
        }
        let e = self.connector.connect().await?;
        self.engine = Some(e.clone());
        Ok(e)
    }

    /// Connected (without trying to).
    pub fn is_connected(&self) -> bool {
        self.engine.is_some()
    }

    /// The engine failed: the next use connects again.
    pub fn lost(&mut self) {
        self.engine = None;
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

// The driver's own methods stay inherent: its integration tests call them without the trait.
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
    async fn restart_managed(&self, name: &str, node_id: &str) -> Result<bool, DockerError> {
        Docker::restart_managed(self, name, node_id).await
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
    async fn observe_volumes(&self) -> Result<Vec<ObservedVolume>, DockerError> {
        Docker::observe_volumes(self).await
    }
    async fn create_volume(&self, v: &SessionVolume, node_id: &str) -> Result<(), DockerError> {
        Docker::create_volume(self, v, node_id).await
    }
    async fn remove_volume(&self, name: &str) -> Result<bool, DockerError> {
        Docker::remove_volume(self, name).await
    }
}
