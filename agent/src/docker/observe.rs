//! Bollard's view of a container (its listing, and for a managed one its inspection) turned
//! into the reconciler's [`ObservedContainer`]. Pure.

use std::collections::HashMap;

use bollard::models::{ContainerInspectResponse, ContainerSummary};

use super::{exit_code_from_status, primary_name};
use crate::reconcile::types::{
    ObservedConfig, ObservedContainer, LABEL_MANAGED, LABEL_NAME, LABEL_NODE, LABEL_SPEC_HASH,
};

/// What Steward's labels on a container say.
pub(super) struct OwnLabels {
    pub(super) managed: bool,
    steward_name: Option<String>,
    spec_hash: Option<String>,
    node: Option<String>,
}

impl OwnLabels {
    pub(super) fn of(labels: HashMap<String, String>) -> Self {
        OwnLabels {
            managed: labels.get(LABEL_MANAGED).map(String::as_str) == Some("true"),
            steward_name: labels.get(LABEL_NAME).cloned(),
            spec_hash: labels.get(LABEL_SPEC_HASH).cloned(),
            node: labels.get(LABEL_NODE).cloned(),
        }
    }
}

/// A container Steward does not manage, as far as the list shows it (never inspected).
pub(super) fn unmanaged(id: String, l: OwnLabels, s: ContainerSummary) -> ObservedContainer {
    let state = s.state.map(|st| st.to_string()).unwrap_or_default();
    let exit_code = match state.as_str() {
        "exited" | "dead" => s.status.as_deref().and_then(exit_code_from_status),
        _ => None,
    };
    ObservedContainer {
        name: primary_name(s.names.as_deref().unwrap_or_default()),
        id,
        managed: l.managed,
        steward_name: l.steward_name,
        spec_hash: l.spec_hash,
        node: l.node,
        running: state == "running" || state == "restarting",
        state,
        exit_code,
        restart_count: 0,
        health: None,
        pid: None,
        addresses: Vec::new(),
        config: ObservedConfig {
            image: s.image.unwrap_or_default(),
            ..Default::default()
        },
    }
}

/// A container's addresses on its Docker networks, by network name (stable from pass to pass:
/// the status digest must not move when nothing did).
fn addresses(inspect: &ContainerInspectResponse) -> Vec<std::net::IpAddr> {
    let Some(nets) = (inspect.network_settings.as_ref()).and_then(|n| n.networks.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<&String> = nets.keys().collect();
    names.sort();
    (names.into_iter().filter_map(|n| nets.get(n)))
        .flat_map(|e| [e.ip_address.as_deref(), e.global_ipv6_address.as_deref()])
        .flatten()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// A managed container from its inspection (state, health, restart count, limits).
pub(super) fn managed(
    id: String,
    l: OwnLabels,
    s: ContainerSummary,
    inspect: ContainerInspectResponse,
) -> ObservedContainer {
    let addresses = addresses(&inspect);
    let state = inspect.state.unwrap_or_default();
    let health = state
        .health
        .as_ref()
        .and_then(|h| h.status)
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty() && s != "none");
    let state_word = state.status.map(|st| st.to_string()).unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let exit_code = match state_word.as_str() {
        "created" | "running" | "" => None,
        _ => state.exit_code,
    };
    let host = inspect.host_config.unwrap_or_default();
    let name = match inspect.name {
        Some(n) => n.trim_start_matches('/').to_string(),
        None => primary_name(s.names.as_deref().unwrap_or_default()),
    };
    ObservedContainer {
        id,
        name,
        managed: l.managed,
        steward_name: l.steward_name,
        spec_hash: l.spec_hash,
        node: l.node,
        running,
        state: state_word,
        exit_code,
        restart_count: inspect
            .restart_count
            .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
            .unwrap_or(0),
        health,
        pid: state
            .pid
            .filter(|_| running)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0),
        addresses,
        config: ObservedConfig {
            image: inspect.config.and_then(|c| c.image).unwrap_or_default(),
            memory: host.memory.unwrap_or(0),
            nano_cpus: host.nano_cpus.unwrap_or(0),
            privileged: host.privileged.unwrap_or(false),
        },
    }
}
