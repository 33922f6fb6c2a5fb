//! Byte counters of workloads' interfaces, for their network activity (`activity.rs`): the bytes
//! a workload sent, i.e. those received on the host side of a container's veths and on a VM's
//! taps. What the host sends into them is left out on purpose: the host's own IPv6 router
//! solicitations and its neighbours' broadcasts reach an idle workload too, and would keep
//! its session from ever being idle; a workload in use answers, so what it sends moves.
//!
//! Source: netlink link statistics (`IFLA_STATS64`) of the host's own links, read in one
//! statistics dump (`dump::counters`). A container's interfaces are the host-side veths whose
//! peer lies in the container's network namespace: the namespace is opened as
//! `/proc/<container pid>/ns/net` and the kernel asked (`RTM_GETNSID`, `dump::nsid_of`) which
//! id it has here, which is the peer namespace id (`IFLA_LINK_NETNSID`) its veths carry. This
//! reads nothing inside the container (neither its `/sys` nor its `/proc`), counts every
//! network it is attached to (a Docker bridge, a managed bridge, several), and never counts a
//! host link it merely sits on: a macvlan's parent is no veth of its namespace. Docker's
//! one-shot stats would cost one API call per container (and, without `one-shot`, a second of
//! sampling each) for the same kernel counters. A veth's rx is its peer's tx, so the sum over
//! a container's veths is what it sent.
//!
//! Blocking (a dump and one request per container, a few milliseconds): run off the runtime.

use std::collections::BTreeMap;

use steward_proto::WorkloadRef;

use super::dump::{self, LinkCounters};
use super::error::NetworkError;

/// Where a running workload's traffic is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interfaces {
    /// The network namespace of this process (a container's init): the host-side veths
    /// peering into it.
    NetnsOf(u32),
    /// These host links (a VM's taps).
    Named(Vec<String>),
}

/// A workload's interfaces with its namespace resolved to the id this namespace gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolved {
    /// The peer namespace id of the workload's veths.
    Peer(i32),
    Named(Vec<String>),
}

/// The bytes each workload of `wanted` sent, cumulative; a workload none of
/// whose interfaces is found (its process gone, a container without a veth, taps not made
/// yet) is left out. Blocking.
pub fn read(
    wanted: &[(WorkloadRef, Interfaces)],
) -> Result<BTreeMap<WorkloadRef, u64>, NetworkError> {
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    // The dump first: it gives an id to every namespace a veth here peers into.
    let links = dump::counters()?;
    let (mut in_netns, mut files) = (Vec::new(), Vec::new());
    let mut resolved = Vec::new();
    for (w, i) in wanted {
        match i {
            Interfaces::NetnsOf(pid) => {
                // A process gone since it was observed has no namespace to count.
                if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/ns/net")) {
                    in_netns.push(w.clone());
                    files.push(f);
                }
            }
            Interfaces::Named(names) => resolved.push((w.clone(), Resolved::Named(names.clone()))),
        }
    }
    let ids = dump::nsid_of(&files)?;
    let peers =
        (in_netns.into_iter().zip(ids)).filter_map(|(w, id)| Some((w, Resolved::Peer(id?))));
    resolved.extend(peers);
    Ok(tally(&links, &resolved))
}

/// Each workload's bytes over its interfaces among `links` (pure); left out when it has none.
fn tally(links: &[LinkCounters], wanted: &[(WorkloadRef, Resolved)]) -> BTreeMap<WorkloadRef, u64> {
    let mut out = BTreeMap::new();
    for (w, r) in wanted {
        let mine = links.iter().filter(|l| match r {
            Resolved::Peer(id) => l.kind == "veth" && l.peer_netns == Some(*id),
            Resolved::Named(names) => names.contains(&l.name),
        });
        let mut found = false;
        let mut bytes = 0u64;
        for l in mine {
            found = true;
            bytes = bytes.saturating_add(l.bytes);
        }
        if found {
            out.insert(w.clone(), bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_proto::WorkloadKind;

    fn link(index: u32, name: &str, kind: &str, peer: Option<i32>, bytes: u64) -> LinkCounters {
        LinkCounters {
            index,
            name: name.into(),
            kind: kind.into(),
            peer_netns: peer,
            bytes,
        }
    }

    #[test]
    fn tally_counts_a_namespaces_veths_and_named_taps() {
        let links = vec![
            link(1, "lo", "", None, 5),
            link(2, "eth0", "", None, 1 << 40),
            link(7, "veth-a1", "veth", Some(0), 100),
            link(8, "veth-a2", "veth", Some(0), 20),
            link(9, "veth-b", "veth", Some(1), 3),
            // A macvlan of another namespace on a host link: not a veth of namespace 2.
            link(10, "mv", "macvlan", Some(2), 9999),
            link(11, "tap-vm-0", "tun", None, 40),
            link(12, "tap-vm-1", "tun", None, 2),
        ];
        let c = |n: &str| WorkloadRef::new(WorkloadKind::Container, n);
        let vm = WorkloadRef::new(WorkloadKind::Vm, "vm");
        let wanted = vec![
            (c("a"), Resolved::Peer(0)),
            (c("b"), Resolved::Peer(1)),
            (c("macvlan-only"), Resolved::Peer(2)),
            (c("gone"), Resolved::Peer(5)),
            (
                vm.clone(),
                Resolved::Named(vec!["tap-vm-0".into(), "tap-vm-1".into()]),
            ),
            (
                WorkloadRef::new(WorkloadKind::Vm, "no-taps"),
                Resolved::Named(vec!["x".into()]),
            ),
        ];
        let got = tally(&links, &wanted);
        let want: BTreeMap<WorkloadRef, u64> =
            [(c("a"), 120), (c("b"), 3), (vm, 42)].into_iter().collect();
        assert_eq!(got, want);
    }
}
