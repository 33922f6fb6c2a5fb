//! Upper bounds on what one spec may hold (`SpecLimits`): resources per kind, entries per
//! container, env size and the serialized size, each named by the config key that raises it.
//!
//! The defaults fit a big real host; a spec beyond them is far more likely a mistake or an
//! attack than a plan, and acting on it would keep an agent busy for hours. Both the registry
//! (`[limits]` in registry.toml) and the agent (`[limits]` in agent.toml) can raise them.

use serde::{Deserialize, Serialize};

use super::Problem;
use crate::spec::{ContainerSpec, NodeSpec};

/// Upper bounds on one spec. Every field is a config key under `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpecLimits {
    /// Bytes of the spec serialized as compact JSON (the form it is stored and sent in).
    pub max_spec_bytes: usize,
    pub max_containers: usize,
    pub max_vms: usize,
    pub max_vlans: usize,
    pub max_bridges: usize,
    pub max_labs: usize,
    pub max_payloads: usize,
    pub max_ports_per_container: usize,
    pub max_volumes_per_container: usize,
    pub max_env_per_container: usize,
    /// Bytes of one container's environment, counted as `KEY=VALUE` plus a NUL per entry (as
    /// the kernel counts it).
    pub max_env_bytes_per_container: usize,
}

impl Default for SpecLimits {
    fn default() -> Self {
        Self {
            max_spec_bytes: 4 * 1024 * 1024,
            max_containers: 500,
            max_vms: 200,
            max_vlans: 1000,
            max_bridges: 1000,
            max_labs: 1000,
            max_payloads: 1000,
            max_ports_per_container: 256,
            max_volumes_per_container: 128,
            max_env_per_container: 1000,
            max_env_bytes_per_container: 256 * 1024,
        }
    }
}

/// The config keys of [`SpecLimits`], in the order of its fields (env var: `STEWARD_LIMITS_`
/// and the key upper-cased, e.g. `STEWARD_LIMITS_MAX_CONTAINERS`).
pub const LIMIT_KEYS: [&str; 11] = [
    "max_spec_bytes",
    "max_containers",
    "max_vms",
    "max_vlans",
    "max_bridges",
    "max_labs",
    "max_payloads",
    "max_ports_per_container",
    "max_volumes_per_container",
    "max_env_per_container",
    "max_env_bytes_per_container",
];

impl SpecLimits {
    /// The limit behind a config key (one of [`LIMIT_KEYS`]).
    fn slot(&mut self, key: &str) -> Option<&mut usize> {
        Some(match key {
            "max_spec_bytes" => &mut self.max_spec_bytes,
            "max_containers" => &mut self.max_containers,
            "max_vms" => &mut self.max_vms,
            "max_vlans" => &mut self.max_vlans,
            "max_bridges" => &mut self.max_bridges,
            "max_labs" => &mut self.max_labs,
            "max_payloads" => &mut self.max_payloads,
            "max_ports_per_container" => &mut self.max_ports_per_container,
            "max_volumes_per_container" => &mut self.max_volumes_per_container,
            "max_env_per_container" => &mut self.max_env_per_container,
            "max_env_bytes_per_container" => &mut self.max_env_bytes_per_container,
            _ => return None,
        })
    }

    /// Overrides limits from `STEWARD_LIMITS_<KEY>` variables as given by `var` (the process
    /// environment in the binaries); a value that is not a whole number is an error naming it.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for key in LIMIT_KEYS {
            let name = format!("STEWARD_LIMITS_{}", key.to_ascii_uppercase());
            let Some(text) = var(&name) else { continue };
            let value: usize = text.trim().parse().map_err(|_| {
                format!("{name}={text:?}: limits.{key} must be a whole number such as 500")
            })?;
            if let Some(slot) = self.slot(key) {
                *slot = value;
            }
        }
        Ok(())
    }

    /// Every limit `spec` exceeds, each on its field with the count, the limit and the key.
    pub fn check(&self, spec: &NodeSpec) -> Vec<Problem> {
        let mut out = Vec::new();
        let bytes = json_len(spec);
        over(
            &mut out,
            "spec",
            bytes,
            "bytes (as JSON)",
            self.max_spec_bytes,
            "max_spec_bytes",
        );
        let n = &spec.networks;
        let sections = [
            (
                "containers",
                spec.containers.len(),
                self.max_containers,
                "max_containers",
            ),
            ("vms", spec.vms.len(), self.max_vms, "max_vms"),
            ("networks.vlans", n.vlans.len(), self.max_vlans, "max_vlans"),
            (
                "networks.bridges",
                n.bridges.len(),
                self.max_bridges,
                "max_bridges",
            ),
            ("networks.labs", n.labs.len(), self.max_labs, "max_labs"),
            (
                "payloads",
                spec.payloads.len(),
                self.max_payloads,
                "max_payloads",
            ),
        ];
        for (field, count, limit, key) in sections {
            let what = field.rsplit('.').next().unwrap_or(field);
            over(&mut out, field, count, what, limit, key);
        }
        for (i, c) in spec.containers.iter().enumerate() {
            self.check_container(&mut out, &format!("containers[{i}]"), c);
        }
        out
    }

    fn check_container(&self, out: &mut Vec<Problem>, at: &str, c: &ContainerSpec) {
        let ports = (c.ports.len(), self.max_ports_per_container);
        over(
            out,
            &format!("{at}.ports"),
            ports.0,
            "ports",
            ports.1,
            "max_ports_per_container",
        );
        let vols = (c.volumes.len(), self.max_volumes_per_container);
        over(
            out,
            &format!("{at}.volumes"),
            vols.0,
            "volumes",
            vols.1,
            "max_volumes_per_container",
        );
        let env = format!("{at}.env");
        let (entries, limit) = (c.env.len(), self.max_env_per_container);
        over(
            out,
            &env,
            entries,
            "entries",
            limit,
            "max_env_per_container",
        );
        // KEY=VALUE\0 per entry, as execve counts the environment.
        let bytes: usize = c.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let limit = self.max_env_bytes_per_container;
        over(
            out,
            &env,
            bytes,
            "bytes",
            limit,
            "max_env_bytes_per_container",
        );
    }
}

/// Pushes `<count> <what> exceed the limit of <limit> (limits.<key>)` when `count > limit`.
fn over(out: &mut Vec<Problem>, field: &str, count: usize, what: &str, limit: usize, key: &str) {
    if count > limit {
        out.push(Problem::new(
            field,
            format!("{count} {what} exceed the limit of {limit} (limits.{key})"),
        ));
    }
}

/// Length of `spec` as compact JSON, without building the string.
fn json_len(spec: &NodeSpec) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing plain data into a counter cannot fail; a failure would count as 0 bytes.
    let _ = serde_json::to_writer(&mut count, spec);
    count.0
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
