//! Docker networks backed by Steward-managed bridges: a bridge-driver network named after the
//! bridge (option `com.docker.network.bridge.name=<bridge>`), IPAM subnet and gateway from the
//! bridge's IPv4 address, labelled `io.steward.managed=true` and `io.steward.node=<id>`.
//!
//! The reconciler removes such a network only when it is about to delete the bridge itself
//! (Docker 20.10 leaves a bridge it did not create in place; other versions may not).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig,
};
use ipnet::Ipv4Net;
use steward_proto::ContainerSpec;

use super::error::{describe, status};
use super::{Docker, DockerError};
use crate::reconcile::types::{LABEL_MANAGED, LABEL_NODE};

/// Docker's option naming the Linux bridge a bridge-driver network uses.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

impl Docker {
    /// Makes sure a Docker network named `bridge` exists on the existing Linux bridge `bridge`
    /// with `subnet` and `gateway`. A managed network with other settings is recreated (which
    /// fails while containers are attached); a network of that name Steward did not create is
    /// an error, left alone.
    pub async fn ensure_bridge_network(
        &self,
        bridge: &str,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        node_id: &str,
    ) -> Result<(), DockerError> {
        let op = || format!("create Docker network {bridge} on bridge {bridge}");
        match self.api.inspect_network(bridge, None).await {
            Ok(n) => {
                let labels = n.labels.unwrap_or_default();
                if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
                    return Err(DockerError::Engine {
                        op: op(),
                        reason: format!(
                            "a Docker network named {bridge} exists that Steward did not create \
                             (no {LABEL_MANAGED} label); remove it or name the bridge differently"
                        ),
                    });
                }
                let on_bridge = n
                    .options
                    .unwrap_or_default()
                    .get(BRIDGE_NAME_OPTION)
                    .is_some_and(|b| b == bridge);
                let cfg = n.ipam.and_then(|i| i.config).unwrap_or_default();
                let same_ipam = cfg.iter().any(|c| {
                    c.subnet.as_deref() == Some(subnet.to_string().as_str())
                        && c.gateway.as_deref() == Some(gateway.to_string().as_str())
                });
                if on_bridge && same_ipam {
                    return Ok(());
                }
                tracing::info!(network = bridge, %subnet, %gateway, "recreating the Docker network: its settings changed");
                self.api.remove_network(bridge).await.map_err(|e| {
                    DockerError::engine(format!("remove Docker network {bridge}"), &e)
                })?;
            }
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => {
                return Err(DockerError::engine(
                    format!("inspect Docker network {bridge}"),
                    &e,
                ))
            }
        }
        let req = NetworkCreateRequest {
            name: bridge.to_string(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    gateway: Some(gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(HashMap::from([(
                BRIDGE_NAME_OPTION.to_string(),
                bridge.to_string(),
            )])),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_NODE.to_string(), node_id.to_string()),
            ])),
            ..Default::default()
        };
        self.api
            .create_network(req)
            .await
            .map_err(|e| DockerError::Engine {
                op: op(),
                reason: describe(&e),
            })?;
        tracing::info!(network = bridge, %subnet, %gateway, "created Docker network on managed bridge");
        Ok(())
    }

    /// Removes the Docker network on `bridge` if Steward created it (a missing one is fine).
    pub async fn remove_bridge_network(&self, bridge: &str) -> Result<(), DockerError> {
        match self.api.inspect_network(bridge, None).await {
            Ok(n) => {
                let managed = n
                    .labels
                    .unwrap_or_default()
                    .get(LABEL_MANAGED)
                    .is_some_and(|v| v == "true");
                if !managed {
                    return Ok(());
                }
            }
            Err(e) if status(&e) == Some(404) => return Ok(()),
            Err(e) => {
                return Err(DockerError::engine(
                    format!("inspect Docker network {bridge}"),
                    &e,
                ))
            }
        }
        match self.api.remove_network(bridge).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(DockerError::engine(
                format!("remove Docker network {bridge}"),
                &e,
            )),
        }
    }

    /// Like [`Docker::create_and_start`], with a fixed address on the container's network
    /// (a lab lease).
    pub async fn create_and_start_at(
        &self,
        spec: &ContainerSpec,
        hash: &str,
        node_id: &str,
        ip: IpAddr,
    ) -> Result<String, DockerError> {
        let network = spec.network.clone().unwrap_or_default();
        let endpoint = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: ip.is_ipv4().then(|| ip.to_string()),
                ipv6_address: ip.is_ipv6().then(|| ip.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let networking = NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network, endpoint)])),
        };
        self.create_and_start_with(spec, hash, node_id, Some(networking))
            .await
    }
}
