//! Local policy: what this node lets a spec ask for, whatever the registry says.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use steward_proto::validate::{parse_volume, VolumeSource};
use steward_proto::ContainerSpec;

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
}
