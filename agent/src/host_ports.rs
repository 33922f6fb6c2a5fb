//! The host ports in use in the agent's network namespace — TCP ports listened on and UDP
//! ports bound by an unconnected socket, IPv4 and IPv6 — read from `/proc/net/{tcp,tcp6,udp,
//! udp6}` (the `procfs` crate) for the node status's `ports_in_use`, so that the registry
//! never gives a session a port a host process holds.
//!
//! The ports the containers of the applied spec publish are left out ([`published`]): they
//! are Steward's, and the registry accounts for them from the specs and the sessions' own
//! allocations — so a session's port is free for the next session as soon as the registry
//! ends it, not only once a status without it arrives. Connections (TCP in any state but
//! listen, connected UDP sockets) are left out too: their local ports are the kernel's
//! ephemeral ones and come and go between two passes, where a port reported would change the
//! status's digest and make the agent send it again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use procfs::net::{TcpState, UdpState};
use procfs::{ProcError, ProcResult};
use steward_proto::validate::parse_port;
use steward_proto::NodeSpec;
use tracing::{debug, warn};

/// The ports in use, sorted, without duplicates. An IPv6 table that does not exist (IPv6
/// disabled) reads as empty.
pub fn read() -> ProcResult<Vec<u16>> {
    let mut ports = BTreeSet::new();
    for table in [procfs::net::tcp()?, absent_is_empty(procfs::net::tcp6())?] {
        let listening = table.iter().filter(|e| e.state == TcpState::Listen);
        ports.extend(listening.map(|e| e.local_address.port()));
    }
    for table in [procfs::net::udp()?, absent_is_empty(procfs::net::udp6())?] {
        let bound = table.iter().filter(|e| e.state == UdpState::Close);
        ports.extend(bound.map(|e| e.local_address.port()));
    }
    ports.remove(&0);
    Ok(ports.into_iter().collect())
}

/// A table the kernel does not have as no entries.
fn absent_is_empty<T>(r: ProcResult<Vec<T>>) -> ProcResult<Vec<T>> {
    match r {
        Err(ProcError::NotFound(_)) => Ok(Vec::new()),
        r => r,
    }
}

/// [`read`], or no ports when they cannot be read (a warning the first time, then debug
/// lines): the status is reported all the same.
pub fn in_use() -> Vec<u16> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    match read() {
        Ok(ports) => ports,
        Err(e) => {
            if WARNED.swap(true, Ordering::Relaxed) {
                debug!(error = %e, "reading the host's ports in use failed; none reported");
            } else {
                warn!(error = %e, "reading the host's ports in use failed; none reported (logged once, then at debug)");
            }
            Vec::new()
        }
    }
}

/// The host ports the containers of `spec` publish (those given in the spec: a port Docker
/// picks is not Steward's to know and stays in the report).
pub fn published(spec: &NodeSpec) -> BTreeSet<u16> {
    (spec.containers.iter())
        .flat_map(|c| c.ports.iter())
        .filter_map(|p| parse_port(p).ok()?.host_port)
        .collect()
}

/// The status's `ports_in_use` under `spec`: [`in_use`] (read off the async runtime) but the
/// ports `spec` [`published`].
pub async fn in_use_under(spec: &NodeSpec) -> Vec<u16> {
    let ours = published(spec);
    let all = tokio::task::spawn_blocking(in_use)
        .await
        .unwrap_or_default();
    all.into_iter().filter(|p| !ours.contains(p)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The agent's own namespace always has a table to read; the reading is sorted and
    /// holds each port once.
    #[test]
    fn the_reading_is_sorted_and_deduplicated() {
        let ports = read().expect("reading /proc/net");
        assert!(ports.windows(2).all(|w| w[0] < w[1]), "{ports:?}");
        assert!(!ports.contains(&0));
    }

    /// A change of the ports changes the digest the heartbeat carries, so the registry asks
    /// for the status again.
    #[test]
    fn the_ports_are_part_of_the_status_digest() {
        let mut st = steward_proto::NodeStatus::default();
        let before = crate::reconciler::status_digest(&st);
        st.ports_in_use = vec![8080];
        assert_ne!(crate::reconciler::status_digest(&st), before);
    }

    /// Fixed host ports of the spec's containers are Steward's; a port Docker picks is not
    /// known, and nothing else publishes.
    #[test]
    fn the_spec_s_published_ports_are_steward_s() {
        let spec: NodeSpec = serde_json::from_value(serde_json::json!({"containers": [
            {"name": "a", "image": "i", "ports": ["8080:80", "127.0.0.1:5353:53/udp", "9000"]},
            {"name": "b", "image": "i", "ports": ["[::1]:8443:443"]}
        ]}))
        .unwrap();
        assert_eq!(published(&spec), [5353, 8080, 8443].into());
        assert!(published(&NodeSpec::default()).is_empty());
    }

    #[test]
    fn a_missing_table_reads_as_empty_and_other_errors_stay() {
        let missing: ProcResult<Vec<u8>> = Err(ProcError::NotFound(None));
        assert!(absent_is_empty(missing).unwrap().is_empty());
        let denied: ProcResult<Vec<u8>> = Err(ProcError::PermissionDenied(None));
        assert!(absent_is_empty(denied).is_err());
    }
}
