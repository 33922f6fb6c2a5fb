//! Validation of specs and labels: every problem is reported with its field path and reason.
//!
//! `validate_spec` walks the whole spec and collects every problem (it never stops at the first).
//! The checks live in submodules by area; the typed parsers the agent uses (`parse_port`,
//! `parse_volume`) are re-exported here.

mod container;
mod image;
mod limits;
mod network;
mod payload;
mod ports;
mod vm;
mod volumes;

pub use limits::{SpecLimits, LIMIT_KEYS};
pub use ports::{parse_port, PortMapping, Protocol};
pub use volumes::{parse_volume, VolumeMount, VolumeSource};

use crate::node::Labels;
use crate::spec::NodeSpec;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One validation problem: `field` is a path such as `containers[0].ports[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found in one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<Problem>);

/// Checks a whole spec; returns every problem found. A spec over `limits` gets only the limit
/// problems: its contents are not looked at further.
pub fn validate_spec(spec: &NodeSpec, limits: &SpecLimits) -> Result<(), ValidationErrors> {
    let over = limits.check(spec);
    if !over.is_empty() {
        return Err(ValidationErrors(over));
    }
    let mut out = Problems::default();
    network::check(&spec.networks, &mut out);
    container::check(&spec.containers, &mut out);
    vm::check(&spec.vms, &mut out);
    payload::check(spec, &mut out);
    check_sessions(spec, &mut out);
    if out.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(out.0))
    }
}

/// Checks labels (keys and values); `field` is the path prefix, e.g. `labels`, and each problem
/// is reported on `<field>.<key>`.
/// A heartbeat's numbers: finite and not negative (JSON has no NaN, but a number too large for
/// an `f32` parses as infinity, which would be stored as `null` and could not be read back).
pub fn validate_heartbeat(hb: &crate::Heartbeat) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut check = |field: &str, v: f64| {
        if !v.is_finite() || v < 0.0 {
            out.push(Problem::new(
                field,
                format!("{v} is not a finite number >= 0"),
            ));
        }
    };
    if let Some(rtt) = hb.rtt_ms {
        check("rtt_ms", rtt);
    }
    if let Some(s) = &hb.stats {
        for (field, v) in [
            ("stats.cpu_percent", s.cpu_percent),
            ("stats.load1", s.load1),
            ("stats.load5", s.load5),
            ("stats.load15", s.load15),
        ] {
            check(field, f64::from(v));
        }
    }
    out
}

pub fn validate_labels(labels: &Labels, field: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    for (key, value) in labels {
        let f = format!("{field}.{key}");
        if let Some(reason) = label_key_problem(key) {
            out.push(Problem::new(&f, reason));
        }
        if let Some(reason) = label_value_problem(value) {
            out.push(Problem::new(&f, reason));
        }
    }
    out
}

/// Most bytes in a label key (prefix, '/' and name together).
const LABEL_KEY_MAX: usize = 253;
/// Most characters in a label name (the part after the prefix) and in a label value.
const LABEL_PART_MAX: usize = 63;

fn label_key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("label key is empty".into());
    }
    if key.len() > LABEL_KEY_MAX {
        return Some(format!(
            "label key is {} characters; at most {LABEL_KEY_MAX} are allowed",
            key.len()
        ));
    }
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if name.contains('/') {
            return Some(format!(
                "label key {key:?} has more than one '/'; write it as prefix/name, e.g. example.com/role"
            ));
        }
        if !is_dns_subdomain(prefix) {
            return Some(format!(
                "label key prefix {prefix:?} must be a DNS name such as example.com: lowercase \
                 letters, digits and '-' in dot-separated parts that start and end with a letter \
                 or digit"
            ));
        }
    }
    if name.is_empty() {
        return Some(format!(
            "label key {key:?} has an empty name after the prefix"
        ));
    }
    label_part_problem("label key", name)
}

fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    label_part_problem("label value", value)
}

fn label_part_problem(what: &str, s: &str) -> Option<String> {
    if s.chars().count() > LABEL_PART_MAX {
        return Some(format!(
            "{what} {s:?} is {} characters; at most {LABEL_PART_MAX} are allowed",
            s.chars().count()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "{what} {s:?} contains {c:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        return Some(format!(
            "{what} {s:?} must start and end with a letter or digit"
        ));
    }
    None
}

/// A DNS name of lowercase letters, digits and '-', each dot-separated part 1–63 long and
/// starting and ending with a letter or digit.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= LABEL_KEY_MAX
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Collected problems; the checks in the submodules push into it.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem::new(field, reason));
    }

    /// Pushes `reason` on `field` when there is one; returns whether the value was fine.
    pub(crate) fn check(&mut self, field: impl Into<String>, reason: Option<String>) -> bool {
        match reason {
            Some(r) => {
                self.push(field, r);
                false
            }
            None => true,
        }
    }

    /// Pushes the error of `result` on `field`; returns the value when there was none.
    pub(crate) fn ok<T>(
        &mut self,
        field: impl Into<String>,
        result: Result<T, String>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(field, e);
                None
            }
        }
    }
}

/// Most characters in a resource name (container, VM, payload).
const NAME_MAX: usize = 63;

/// Why `name` is not a valid resource name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, 1–63 characters).
pub(crate) fn resource_name_problem(kind: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(format!("{kind} name is empty"));
    }
    if name.len() > NAME_MAX {
        return Some(format!(
            "{kind} name {name:?} is {} characters; at most {NAME_MAX} are allowed",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!(
            "{kind} name {name:?} must start with a letter or digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some(format!(
            "{kind} name {name:?} contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    None
}

/// Checks the names of one kind of resource (`section` such as `containers`): each must be a
/// valid name, and a repeated name is reported on the later entry, naming the first.
pub(crate) fn check_names<'a>(
    out: &mut Problems,
    section: &str,
    kind: &str,
    names: impl Iterator<Item = &'a str>,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.enumerate() {
        let field = format!("{section}[{i}].name");
        if !out.check(&field, resource_name_problem(kind, name)) {
            continue;
        }
        match seen.get(name) {
            Some(first) => out.push(
                field,
                format!("duplicate {kind} name {name:?}: {section}[{first}] already uses it"),
            ),
            None => {
                seen.insert(name, i);
            }
        }
    }
}

/// Session leases: valid, distinct ids and volume names; every workload's `session` names one
/// of them.
fn check_sessions(spec: &crate::NodeSpec, out: &mut Problems) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, lease) in spec.sessions.iter().enumerate() {
        let field = format!("sessions[{i}].id");
        if !out.check(&field, resource_name_problem("session", &lease.id)) {
            continue;
        }
        if let Some(first) = seen.insert(&lease.id, i) {
            out.push(
                field,
                format!(
                    "duplicate session {:?}: sessions[{first}] already uses it",
                    lease.id
                ),
            );
        }
        for (j, v) in lease.volumes.iter().enumerate() {
            out.check(
                format!("sessions[{i}].volumes[{j}]"),
                resource_name_problem("volume", v),
            );
        }
    }
    let workloads = (spec.containers.iter().map(|c| ("containers", &c.session)))
        .enumerate()
        .chain(spec.vms.iter().map(|v| ("vms", &v.session)).enumerate());
    for (i, (section, session)) in workloads {
        if let Some(id) = session.as_deref().filter(|id| !seen.contains_key(id)) {
            out.push(
                format!("{section}[{i}].session"),
                format!("session {id:?} is not one of the spec's sessions"),
            );
        }
    }
}

/// Most bytes in a Linux interface name (`IFNAMSIZ` - 1).
const IFNAME_MAX: usize = 15;

/// Why `name` is not a valid Linux interface name.
pub(crate) fn iface_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("interface name is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Some(format!(
            "interface name {name:?} is {} bytes; the kernel allows at most {IFNAME_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("interface name {name:?} is not allowed"));
    }
    // The agent's nftables rules and sets name interfaces: there a leading '@' is a set
    // reference and a '*' a wildcard, never a name.
    if name.starts_with('@') || name.contains('*') {
        return Some(format!(
            "interface name {name:?} starts with '@' or contains '*', which nftables reads as a \
             set reference or a wildcard; use letters, digits, '-', '_' and '.'"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| matches!(c, '/' | ':' | '\0') || c.is_whitespace())
    {
        return Some(format!(
            "interface name {name:?} contains {c:?}; '/', ':', whitespace and NUL are not allowed"
        ));
    }
    None
}

/// Why `id` is not a usable 802.1Q VLAN id.
pub(crate) fn vlan_id_problem(id: u16) -> Option<String> {
    (!(1..=4094).contains(&id)).then(|| format!("VLAN id {id} is out of range 1-4094"))
}

/// Why `path` is not an absolute path without `..` components or NUL bytes.
pub(crate) fn abs_path_problem(what: &str, path: &str) -> Option<String> {
    if path.is_empty() {
        return Some(format!("{what} is empty; give an absolute path"));
    }
    if path.contains('\0') {
        return Some(format!("{what} {path:?} contains a NUL byte"));
    }
    if !path.starts_with('/') {
        return Some(format!(
            "{what} {path:?} is not absolute; it must start with '/'"
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Some(format!(
            "{what} {path:?} contains a '..' component; write the path without it"
        ));
    }
    None
}

/// Compiles one of the constant patterns of this module (used once each, through `LazyLock`).
pub(crate) fn static_regex(re: &str) -> Regex {
    // The patterns are constants exercised by the tests; failing here is a programming error.
    #[allow(clippy::expect_used)]
    Regex::new(re).expect("constant regex compiles")
}

/// `path` with empty and `.` components dropped, for comparing paths.
pub(crate) fn normalize_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_support {
    //! Helpers for the table tests of the validation submodules.
    use super::*;
    use crate::parse::{parse_document, Format};

    /// Parses a YAML spec (panicking when it does not parse) and returns its problems.
    pub fn problems(yaml: &str) -> Vec<Problem> {
        let spec: NodeSpec = parse_document(yaml.as_bytes(), Format::Yaml)
            .unwrap_or_else(|p| panic!("test spec does not parse: {p}\n{yaml}"));
        match validate_spec(&spec, &SpecLimits::default()) {
            Ok(()) => Vec::new(),
            Err(e) => e.0,
        }
    }

    /// Each case is (spec, field, part of the reason): the spec must report exactly one problem,
    /// on that field, with that text in its reason. Reports every failing case at once.
    pub fn run_table(cases: &[(&str, &str, &str)]) {
        let mut failures = Vec::new();
        for (yaml, field, reason) in cases {
            let got = problems(yaml);
            let hit = got
                .iter()
                .any(|p| p.field == *field && p.reason.contains(reason));
            if !hit || got.len() != 1 {
                failures.push(format!(
                    "spec:\n{yaml}\nwanted exactly one problem `{field}: ...{reason}...`, got:\n{}",
                    got.iter()
                        .map(|p| format!("  {p}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    /// Every spec must validate clean.
    pub fn run_valid(specs: &[&str]) {
        let mut failures = Vec::new();
        for yaml in specs {
            let got = problems(yaml);
            if !got.is_empty() {
                failures.push(format!("spec:\n{yaml}\nwanted no problems, got {got:#?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
