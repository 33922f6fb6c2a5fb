//! Local policy: what this node lets a spec ask for, whatever the registry says.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use steward_proto::validate::{parse_volume, VolumeSource};
use steward_proto::ContainerSpec;

/// What to do when a deployed payload no longer matches (`policy.payload_drift`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Put the expected content back and report the drift.
    #[default]
    Restore,
    /// Only report the drift; leave the file as it is.
    Report,
}

/// Bounds set in the agent's config file (`[policy]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Allow `privileged: true` containers.
    pub allow_privileged: bool,
    /// Allow `host_network: true` containers.
    pub allow_host_network: bool,
    /// Allow `host_pid: true` containers.
    pub allow_host_pid: bool,
    /// Host paths under which bind mounts are allowed (none by default).
    pub allowed_bind_roots: Vec<PathBuf>,
    /// Interfaces that may carry VLAN interfaces (including labs' VLANs): `[]` (the default)
    /// refuses every VLAN, `["*"]` allows any parent.
    pub allowed_vlan_parents: Vec<String>,
    /// Allow changes that take down, re-address, delete or enslave the interface carrying the
    /// agent's own route to the registry (or a link under it). Off by default.
    pub allow_registry_interface_changes: bool,
    /// Directories under which payloads may be deployed (none by default: every payload is
    /// refused). Paths with `..`, outside these roots or through a symbolic link are refused.
    pub payload_roots: Vec<PathBuf>,
    /// What to do when a deployed payload drifts: `restore` (default) or `report`.
    pub payload_drift: DriftPolicy,
    /// Full re-hash period of deployed payloads in seconds (default 3600); between full
    /// hashes a stat (size, mtime, ctime, inode) decides whether the file changed.
    pub attest_rehash_secs: Option<u64>,
}

fn under(path: &Path, root: &Path) -> bool {
    // Specs are validated (absolute, no `..`), but check components again here: policy is the
    // last line of defence.
    !path.components().any(|c| matches!(c, Component::ParentDir)) && path.starts_with(root)
}

impl Policy {
    /// Why this container is refused, or `None` when it is allowed.
    pub fn refuses(&self, c: &ContainerSpec) -> Option<String> {
        if c.privileged && !self.allow_privileged {
            return Some("privileged containers are not allowed by this node's policy (policy.allow_privileged = false)".into());
        }
        if c.host_network && !self.allow_host_network {
            return Some("host network is not allowed by this node's policy (policy.allow_host_network = false)".into());
        }
        if c.host_pid && !self.allow_host_pid {
            return Some("host PID namespace is not allowed by this node's policy (policy.allow_host_pid = false)".into());
        }
        for v in &c.volumes {
            if let Ok(m) = parse_volume(v) {
                if let VolumeSource::Host(p) = &m.source {
                    if !self.allowed_bind_roots.iter().any(|r| under(p, r)) {
                        return Some(format!(
                            "bind mount of {} is outside the allowed host paths (policy.allowed_bind_roots = {:?})",
                            p.display(),
                            self.allowed_bind_roots
                        ));
                    }
                }
            }
        }
        None
    }

    /// Why a VLAN interface on `parent` is refused, or `None` when it is allowed.
    pub fn refuses_vlan_parent(&self, parent: &str) -> Option<String> {
        if self
            .allowed_vlan_parents
            .iter()
            .any(|p| p == "*" || p == parent)
        {
            return None;
        }
        Some(if self.allowed_vlan_parents.is_empty() {
            format!(
                "VLAN interfaces are not allowed by this node's policy (policy.allowed_vlan_parents \
                 is empty); add {parent:?} (or \"*\" for any parent) to allow VLANs on {parent}"
            )
        } else {
            format!(
                "VLANs on {parent} are not allowed by this node's policy \
                 (policy.allowed_vlan_parents = {:?}); add {parent:?} to allow them",
                self.allowed_vlan_parents
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(yaml: &str) -> ContainerSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn table() {
        let strict = Policy::default();
        let open = Policy {
            allow_privileged: true,
            allow_host_network: true,
            allow_host_pid: true,
            allowed_bind_roots: vec![PathBuf::from("/srv")],
            ..Default::default()
        };
        let cases = [
            ("{name: a, image: x}", None, None),
            (
                "{name: a, image: x, privileged: true}",
                Some("privileged"),
                None,
            ),
            (
                "{name: a, image: x, host_network: true}",
                Some("host network"),
                None,
            ),
            (
                "{name: a, image: x, host_pid: true}",
                Some("host PID"),
                None,
            ),
            ("{name: a, image: x, volumes: ['data:/data']}", None, None),
            (
                "{name: a, image: x, volumes: ['/srv/web:/w:ro']}",
                Some("/srv/web"),
                None,
            ),
            (
                "{name: a, image: x, volumes: ['/etc:/e']}",
                Some("/etc"),
                Some("/etc"),
            ),
            (
                "{name: a, image: x, volumes: ['/srvx:/e']}",
                Some("/srvx"),
                Some("/srvx"),
            ),
        ];
        for (yaml, strict_want, open_want) in cases {
            let spec = c(yaml);
            for (p, want) in [(&strict, strict_want), (&open, open_want)] {
                match (p.refuses(&spec), want) {
                    (None, None) => {}
                    (Some(r), Some(w)) => assert!(r.contains(w), "{yaml}: {r}"),
                    (got, want) => panic!("{yaml}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn vlan_parents() {
        let none = Policy::default();
        let eth1 = Policy {
            allowed_vlan_parents: vec!["eth1".into()],
            ..Default::default()
        };
        let any = Policy {
            allowed_vlan_parents: vec!["*".into()],
            ..Default::default()
        };
        // (policy, parent, refusal fragment or allowed)
        let cases: [(&Policy, &str, Option<&str>); 6] = [
            (
                &none,
                "eth1",
                Some("allowed_vlan_parents is empty); add \"eth1\""),
            ),
            (&none, "eth0", Some("\"*\" for any parent")),
            (&eth1, "eth1", None),
            (&eth1, "eth2", Some("VLANs on eth2 are not allowed")),
            (&any, "eth2", None),
            (&any, "bond0", None),
        ];
        for (p, parent, want) in cases {
            match (p.refuses_vlan_parent(parent), want) {
                (None, None) => {}
                (Some(r), Some(w)) => assert!(r.contains(w), "{parent}: {r}"),
                (got, want) => panic!("{parent}: got {got:?}, want {want:?}"),
            }
        }
        assert!(!none.allow_registry_interface_changes);
    }
}
