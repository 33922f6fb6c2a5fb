//! Templates, pure: checking a template when it is written, checking a create's parameters,
//! and rendering a template's spec for one session. Placeholders are replaced in string values
//! only, in one pass: a value (a parameter, an owner) is data and is never read again as a
//! placeholder or as spec syntax.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::LazyLock;

use ipnet::IpNet;
use regex::Regex;
use serde_json::Value;
use steward_proto::validate::{validate_spec, SpecLimits};
use steward_proto::{
    Allocations, LabAllocation, NodeSpec, ParamDef, ParamType, Problem, SessionLease, TemplateWrite,
};

/// `{{ name }}` with a dotted name.
static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}").expect("placeholder pattern"));

/// Longest string parameter.
pub const PARAM_MAX_LEN: usize = 256;

/// What one session's placeholders stand for.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub session: &'a str,
    pub owner: &'a str,
    pub params: &'a BTreeMap<String, Value>,
    pub alloc: &'a Allocations,
}

impl Context<'_> {
    /// The value of placeholder `name`, or why there is none.
    fn value(&self, name: &str) -> Result<Value, String> {
        let (head, rest) = name.split_once('.').unwrap_or((name, ""));
        let missing = |what: &str| format!("{{{{{name}}}}}: the template declares no {what}");
        match (head, rest) {
            ("session", "") => Ok(Value::from(self.session)),
            ("owner", "") => Ok(Value::from(self.owner)),
            ("param", p) => (self.params.get(p).cloned()).ok_or_else(|| missing("such parameter")),
            ("port", p) => (self.alloc.ports.get(p))
                .map(|v| Value::from(*v))
                .ok_or_else(|| missing("such port")),
            ("volume", v) => (self.alloc.volumes.get(v))
                .map(|v| Value::from(v.as_str()))
                .ok_or_else(|| missing("such volume")),
            ("lab", field) => {
                let lab = (self.alloc.lab.as_ref()).ok_or_else(|| {
                    format!("{{{{{name}}}}} needs a lab: set `lab: true` on the template")
                })?;
                lab_value(lab, field).ok_or_else(|| {
                    format!(
                        "{{{{{name}}}}}: a lab has vlan, bridge, cidr, gateway and ip.N (N from 1)"
                    )
                })
            }
            _ => Err(format!(
                "{{{{{name}}}}} is not a placeholder: use session, owner, param.NAME, port.NAME, \
                 volume.NAME or lab.*"
            )),
        }
    }
}

fn lab_value(lab: &LabAllocation, field: &str) -> Option<Value> {
    match field {
        "vlan" => Some(Value::from(lab.vlan)),
        "bridge" => Some(Value::from(lab.bridge.as_str())),
        "cidr" => Some(Value::from(lab.cidr.as_str())),
        "gateway" => Some(Value::from(lab.gateway.as_str())),
        _ => {
            let n: u128 = field.strip_prefix("ip.")?.parse().ok()?;
            let net: IpNet = lab.cidr.parse().ok()?;
            host(&net, n).map(|a| Value::from(a.to_string()))
        }
    }
}

/// The address `n` hosts into `net` (`None` for 0, past its end or on the IPv4 broadcast).
fn host(net: &IpNet, n: u128) -> Option<IpAddr> {
    if n == 0 {
        return None;
    }
    match net {
        IpNet::V4(v4) => {
            let size = 1u128 << (32 - u32::from(v4.prefix_len()));
            (n < size - 1).then(|| {
                IpAddr::V4((u32::from(v4.network()) + u32::try_from(n).unwrap_or(0)).into())
            })
        }
        IpNet::V6(v6) => Some(IpAddr::V6((u128::from(v6.network()) + n).into())),
    }
}

/// The lab of `vlan`: bridge `br<vlan>`, the subnet from `cidr_template` (`{vlan}`,
/// `{vlan_hi}`, `{vlan_lo}`), gateway its first host — as the agent expands `networks.labs`.
pub fn lab_for(vlan: u16, cidr_template: &str) -> Result<LabAllocation, String> {
    let cidr = cidr_template
        .replace("{vlan}", &vlan.to_string())
        .replace("{vlan_hi}", &(vlan / 256).to_string())
        .replace("{vlan_lo}", &(vlan % 256).to_string());
    let net: IpNet = cidr
        .parse()
        .map_err(|e| format!("lab subnet {cidr:?} for VLAN {vlan}: {e}"))?;
    let gateway = host(&net.trunc(), 1).ok_or_else(|| format!("lab subnet {cidr} has no hosts"))?;
    Ok(LabAllocation {
        vlan,
        bridge: format!("br{vlan}"),
        cidr: net.trunc().to_string(),
        gateway: gateway.to_string(),
    })
}

/// Fields of a spec that hold a number: there, a string that is exactly one placeholder of a
/// number becomes that number.
const NUMBER_FIELDS: &[&str] = &["vlan", "id", "mtu", "cpus", "default_pvid", "retries"];
/// Fields of a spec that hold a boolean: there, a string that is exactly one placeholder of a
/// boolean becomes that boolean.
const BOOL_FIELDS: &[&str] = &[
    "privileged",
    "host_network",
    "host_pid",
    "rollback",
    "stp",
    "vlan_filtering",
    "up",
    "pvid",
    "untagged",
];

/// Replaces the placeholders of every string in `v` (in a numeric or boolean field, `key`, a
/// string that is exactly one placeholder of such a value becomes that value). Problems name
/// the field (`path`).
fn substitute(v: &mut Value, ctx: &Context, path: &str, key: &str, problems: &mut Vec<Problem>) {
    match v {
        Value::String(s) => {
            if let Some(c) = PLACEHOLDER.captures(s).filter(|c| &c[0] == s.as_str()) {
                match ctx.value(&c[1]) {
                    Ok(val @ Value::Number(_)) if NUMBER_FIELDS.contains(&key) => *v = val,
                    Ok(val @ Value::Bool(_)) if BOOL_FIELDS.contains(&key) => *v = val,
                    Ok(Value::String(t)) => *v = Value::String(t),
                    Ok(other) => *v = Value::String(other.to_string()),
                    Err(e) => problems.push(Problem::new(path, e)),
                }
                return;
            }
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for c in PLACEHOLDER.captures_iter(s) {
                let m = c.get(0).expect("whole match");
                out.push_str(&s[last..m.start()]);
                match ctx.value(&c[1]) {
                    Ok(Value::String(t)) => out.push_str(&t),
                    Ok(other) => out.push_str(&other.to_string()),
                    Err(e) => problems.push(Problem::new(path, e)),
                }
                last = m.end();
            }
            if last > 0 {
                out.push_str(&s[last..]);
                *s = out;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, ctx, &format!("{path}[{i}]"), "", problems);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                substitute(item, ctx, &format!("{path}.{k}"), k, problems);
            }
        }
        _ => {}
    }
}

/// Renders a template's spec for one session: placeholders replaced, every workload marked as
/// the session's, and its lease (deadline, volumes) added. The result is a valid spec piece.
pub fn render(
    t: &TemplateWrite,
    ctx: &Context,
    lease: SessionLease,
    limits: &SpecLimits,
) -> Result<NodeSpec, Vec<Problem>> {
    let mut v = t.spec.clone();
    let mut problems = Vec::new();
    substitute(&mut v, ctx, "spec", "", &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut spec: NodeSpec = serde_path_to_error::deserialize(v).map_err(|e| {
        vec![Problem::new(
            format!("spec.{}", e.path()),
            e.inner().to_string(),
        )]
    })?;
    let mut problems = Vec::new();
    if !spec.sessions.is_empty() {
        problems.push(Problem::new(
            "spec.sessions",
            "set by the registry for each session; leave it out",
        ));
    }
    let marked = (spec
        .containers
        .iter()
        .map(|c| ("containers", &c.session))
        .enumerate())
    .chain(spec.vms.iter().map(|v| ("vms", &v.session)).enumerate());
    for (i, (section, session)) in marked {
        if session.is_some() {
            problems.push(Problem::new(
                format!("spec.{section}[{i}].session"),
                "set by the registry for each session; leave it out",
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    for c in &mut spec.containers {
        c.session = Some(ctx.session.to_string());
    }
    for vm in &mut spec.vms {
        vm.session = Some(ctx.session.to_string());
    }
    spec.sessions.push(lease);
    validate_spec(&spec, limits).map_err(|e| {
        (e.0.into_iter())
            .map(|p| Problem::new(format!("spec.{}", p.field), p.reason))
            .collect::<Vec<_>>()
    })?;
    Ok(spec)
}

/// Checks a create's parameters against the template's declarations; returns every declared
/// parameter's value (defaults filled in).
pub fn resolve_params(
    defs: &BTreeMap<String, ParamDef>,
    given: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, Vec<Problem>> {
    let mut problems = Vec::new();
    for name in given.keys().filter(|n| !defs.contains_key(*n)) {
        let declared: Vec<&str> = defs.keys().map(String::as_str).collect();
        problems.push(Problem::new(
            format!("params.{name}"),
            format!(
                "not a parameter of this template (declared: {})",
                if declared.is_empty() {
                    "none".into()
                } else {
                    declared.join(", ")
                }
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, def) in defs {
        let field = format!("params.{name}");
        match given.get(name).or(def.default.as_ref()) {
            None => problems.push(Problem::new(
                field,
                "required (the parameter has no default)",
            )),
            Some(v) => match check_value(def, v) {
                Ok(()) => {
                    out.insert(name.clone(), v.clone());
                }
                Err(e) => problems.push(Problem::new(field, e)),
            },
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Why `v` is not a value of parameter `def`.
fn check_value(def: &ParamDef, v: &Value) -> Result<(), String> {
    match (def.kind, v) {
        (ParamType::Bool, Value::Bool(_)) => Ok(()),
        (ParamType::Int, Value::Number(n)) => {
            let n = n.as_i64().ok_or_else(|| format!("{n} is not an integer"))?;
            if def.min.is_some_and(|m| n < m) || def.max.is_some_and(|m| n > m) {
                let bound = |b: Option<i64>| b.map_or("-".into(), |b| b.to_string());
                return Err(format!(
                    "{n} is out of range {}..{}",
                    bound(def.min),
                    bound(def.max)
                ));
            }
            Ok(())
        }
        (ParamType::String, Value::String(s)) => {
            if s.chars().count() > PARAM_MAX_LEN {
                return Err(format!("longer than {PARAM_MAX_LEN} characters"));
            }
            if s.chars().any(char::is_control) {
                return Err("contains a control character".into());
            }
            if !def.one_of.is_empty() && !def.one_of.contains(s) {
                return Err(format!("{s:?} is not one of {}", def.one_of.join(", ")));
            }
            Ok(())
        }
        (kind, other) => Err(format!("{other} is not a {}", type_name(kind))),
    }
}

fn type_name(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "string",
        ParamType::Int => "integer",
        ParamType::Bool => "boolean",
    }
}

/// A placeholder-free name: `[a-z0-9_]`, 1-32 characters, starting with a letter.
fn name_problem(what: &str, name: &str) -> Option<String> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    (!ok).then(|| {
        format!("{what} {name:?} must be 1-32 lower-case letters, digits or '_', starting with a letter")
    })
}

/// A value of each declared parameter for checking a template: its default, else one of its
/// allowed values, else the smallest allowed value.
fn sample_params(defs: &BTreeMap<String, ParamDef>) -> BTreeMap<String, Value> {
    (defs.iter())
        .map(|(name, d)| {
            let v = d.default.clone().unwrap_or_else(|| match d.kind {
                ParamType::Bool => Value::Bool(false),
                ParamType::Int => {
                    Value::from(d.min.unwrap_or(0).max(d.max.map_or(0, |m| m.min(0))))
                }
                ParamType::String => Value::from(d.one_of.first().map_or("sample", |s| s.as_str())),
            });
            (name.clone(), v)
        })
        .collect()
}

/// Checks a template: its declarations, then its spec rendered for a sample session (ports
/// from 10000, VLAN 100, each parameter's default) through the normal spec validation.
pub fn check_template(t: &TemplateWrite, limits: &SpecLimits) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    for (name, def) in &t.params {
        let field = format!("params.{name}");
        if let Some(e) = name_problem("parameter", name) {
            problems.push(Problem::new(&field, e));
        }
        if let Some(d) = &def.default {
            if let Err(e) = check_value(def, d) {
                problems.push(Problem::new(format!("{field}.default"), e));
            }
        }
        if def.kind != ParamType::Int && (def.min.is_some() || def.max.is_some()) {
            problems.push(Problem::new(&field, "min and max are for int parameters"));
        }
        if def.kind != ParamType::String && !def.one_of.is_empty() {
            problems.push(Problem::new(&field, "one_of is for string parameters"));
        }
        if def.min.zip(def.max).is_some_and(|(lo, hi)| lo > hi) {
            problems.push(Problem::new(&field, "min is above max"));
        }
    }
    for (section, names) in [("ports", &t.ports), ("volumes", &t.volumes)] {
        let mut seen = BTreeSet::new();
        for (i, n) in names.iter().enumerate() {
            let field = format!("{section}[{i}]");
            if let Some(e) = name_problem(&section[..section.len() - 1], n) {
                problems.push(Problem::new(&field, e));
            } else if !seen.insert(n) {
                problems.push(Problem::new(&field, format!("{n:?} is declared twice")));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let alloc = Allocations {
        ports: (t.ports.iter().zip(10000u16..))
            .map(|(n, p)| (n.clone(), p))
            .collect(),
        volumes: (t.volumes.iter())
            .map(|v| (v.clone(), volume_name("s-sample", v)))
            .collect(),
        lab: t
            .lab
            .then(|| lab_for(100, "192.168.{vlan}.0/24"))
            .transpose()
            .map_err(|e| vec![Problem::new("lab", e)])?,
    };
    let params = sample_params(&t.params);
    let ctx = Context {
        session: "s-sample",
        owner: "sample-owner",
        params: &params,
        alloc: &alloc,
    };
    let lease = SessionLease {
        id: "s-sample".into(),
        expires_at: chrono::DateTime::UNIX_EPOCH,
        volumes: alloc.volumes.values().cloned().collect(),
        keep_volumes: t.keep_volumes,
    };
    render(t, &ctx, lease, limits).map(|_| ())
}

/// The Docker volume of a session's volume `name`.
pub fn volume_name(session: &str, name: &str) -> String {
    format!("steward-{session}-{name}")
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
