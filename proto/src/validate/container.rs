//! Container checks: names, image, command, env, ports, volumes, labels, network, hostname,
//! resources and health checks. Host port bindings must be unique across the node.

use super::image::image_problem;
use super::ports::port_number;
use super::{check_names, normalize_path, parse_port, parse_volume, PortMapping, Problems};
use crate::quantity::{parse_cpus, parse_memory};
use crate::spec::{ContainerSpec, HealthCheck};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

/// Why `h` is not an RFC 1123 hostname the kernel accepts.
fn hostname_problem(h: &str) -> Option<String> {
    if h.is_empty() {
        return Some("hostname is empty".into());
    }
    if h.len() > 64 {
        return Some(format!(
            "hostname {h:?} is {} characters; the kernel allows at most 64",
            h.len()
        ));
    }
    if let Some(c) = h
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.')))
    {
        return Some(format!(
            "hostname {h:?} contains {c:?}; only letters, digits, '-' and '.' are allowed"
        ));
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Some(format!(
                "hostname {h:?} has an empty label (a leading, trailing or doubled '.')"
            ));
        }
        if label.len() > 63 {
            return Some(format!(
                "hostname label {label:?} is {} characters; at most 63 are allowed",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "hostname label {label:?} must start and end with a letter or digit"
            ));
        }
    }
    None
}

/// Smallest memory limit a container may have (Docker refuses less than about 6 MiB).
const CONTAINER_MIN_MEMORY: u64 = 4 << 20;

/// Label prefix reserved for the labels Steward puts on what it owns.
const RESERVED_LABEL_PREFIX: &str = "io.steward.";

/// Checks every container; host port bindings must be unique across the node.
pub(super) fn check(containers: &[ContainerSpec], out: &mut Problems) {
    check_names(
        out,
        "containers",
        "container",
        containers.iter().map(|c| c.name.as_str()),
    );
    let mut bindings: Vec<(PortMapping, String)> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let f = format!("containers[{i}]");
        out.check(format!("{f}.image"), image_problem(&c.image));
        check_args(c, &f, out);
        check_env(c, &f, out);
        check_ports(c, &f, &mut bindings, out);
        check_volumes(c, &f, out);
        check_labels(c, &f, out);
        check_network(c, &f, out);
        if let Some(h) = &c.hostname {
            out.check(format!("{f}.hostname"), hostname_problem(h));
        }
        check_resources(c, &f, out);
        if let Some(hc) = &c.healthcheck {
            check_healthcheck(hc, &format!("{f}.healthcheck"), out);
        }
    }
}

fn check_args(c: &ContainerSpec, f: &str, out: &mut Problems) {
    for (list, name) in [(&c.command, "command"), (&c.args, "args")] {
        check_no_nul(list, f, name, out);
    }
}

/// Each element of the list `f.name` without a NUL byte.
fn check_no_nul(list: &[String], f: &str, name: &str, out: &mut Problems) {
    for (j, arg) in list.iter().enumerate() {
        if arg.contains('\0') {
            out.push(
                format!("{f}.{name}[{j}]"),
                format!("{name} element {arg:?} contains a NUL byte"),
            );
        }
    }
}

fn check_labels(c: &ContainerSpec, f: &str, out: &mut Problems) {
    for key in c.labels.keys() {
        let field = format!("{f}.labels.{key}");
        if key.is_empty() {
            out.push(field, "label key is empty");
        } else if key.starts_with(RESERVED_LABEL_PREFIX) {
            out.push(
                field,
                format!(
                    "label key {key:?} uses the prefix {RESERVED_LABEL_PREFIX} which is \
                     reserved for Steward's ownership labels; choose another prefix"
                ),
            );
        } else if key.contains('\0') {
            out.push(field, format!("label key {key:?} contains a NUL byte"));
        }
    }
    for (key, value) in &c.labels {
        if value.contains('\0') {
            out.push(
                format!("{f}.labels.{key}"),
                "label value contains a NUL byte",
            );
        }
    }
}

fn check_network(c: &ContainerSpec, f: &str, out: &mut Problems) {
    if let Some(net) = &c.network {
        let field = format!("{f}.network");
        if net.is_empty() {
            out.push(
                field,
                "network is empty; name a Docker network or a managed bridge, or remove it",
            );
        } else if net.chars().any(|c| c.is_whitespace() || c == '\0') {
            out.push(field, format!("network {net:?} contains whitespace or NUL"));
        } else if c.host_network {
            out.push(
                field,
                "network cannot be combined with host_network: true; remove one of them",
            );
        }
    }
}

fn check_resources(c: &ContainerSpec, f: &str, out: &mut Problems) {
    if let Some(q) = &c.resources.cpus {
        out.ok(format!("{f}.resources.cpus"), parse_cpus(q));
    }
    if let Some(q) = &c.resources.memory {
        let field = format!("{f}.resources.memory");
        if let Some(bytes) = out.ok(&field, parse_memory(q)) {
            if bytes < CONTAINER_MIN_MEMORY {
                out.push(
                    field,
                    format!("memory {q} is below the 4Mi minimum for a container"),
                );
            }
        }
    }
}

fn check_env(c: &ContainerSpec, f: &str, out: &mut Problems) {
    for (key, value) in &c.env {
        let field = format!("{f}.env.{key}");
        if key.is_empty() {
            out.push(field, "environment variable name is empty");
            continue;
        }
        if key.contains('=') {
            out.push(
                &field,
                format!("environment variable name {key:?} contains '='"),
            );
        }
        if key.contains('\0') {
            out.push(
                &field,
                format!("environment variable name {key:?} contains a NUL byte"),
            );
        }
        if value.contains('\0') {
            out.push(&field, format!("value of {key:?} contains a NUL byte"));
        }
    }
}

/// True when two host bindings of the same port and protocol would collide.
fn ips_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        _ => true,
    }
}

fn check_ports(
    c: &ContainerSpec,
    f: &str,
    bindings: &mut Vec<(PortMapping, String)>,
    out: &mut Problems,
) {
    for (j, p) in c.ports.iter().enumerate() {
        let field = format!("{f}.ports[{j}]");
        let Some(m) = out.ok(&field, parse_port(p)) else {
            continue;
        };
        let Some(host_port) = m.host_port else {
            continue;
        };
        let clash = bindings.iter().find(|(other, _)| {
            other.host_port == Some(host_port)
                && other.protocol == m.protocol
                && ips_overlap(other.host_ip, m.host_ip)
        });
        if let Some((other, other_field)) = clash {
            let on =
                |ip: Option<IpAddr>| ip.map_or("every address".to_string(), |ip| ip.to_string());
            out.push(
                &field,
                format!(
                    "host port {host_port}/{} on {} is already published by {other_field} ({} on \
                     {}); choose another host port",
                    m.protocol,
                    on(m.host_ip),
                    other,
                    on(other.host_ip)
                ),
            );
        } else {
            bindings.push((m, field));
        }
    }
}

fn check_volumes(c: &ContainerSpec, f: &str, out: &mut Problems) {
    let mut targets: HashMap<String, usize> = HashMap::new();
    for (j, v) in c.volumes.iter().enumerate() {
        let field = format!("{f}.volumes[{j}]");
        let Some(m) = out.ok(&field, parse_volume(v)) else {
            continue;
        };
        let target = normalize_path(&m.target);
        if let Some(first) = targets.get(&target) {
            out.push(
                field,
                format!(
                    "container path {} is already mounted by {f}.volumes[{first}]",
                    m.target
                ),
            );
        } else {
            targets.insert(target, j);
        }
    }
}

pub(super) fn check_healthcheck(hc: &HealthCheck, f: &str, out: &mut Problems) {
    check_one_probe(hc, f, out);
    if let Some(url) = &hc.http {
        out.check(format!("{f}.http"), http_check_problem(url));
    }
    if let Some(target) = &hc.tcp {
        out.check(format!("{f}.tcp"), tcp_target_problem(target));
    }
    if let Some(cmd) = &hc.exec {
        check_exec(cmd, f, out);
    }
    check_timings(hc, f, out);
    if hc.retries == Some(0) {
        out.push(format!("{f}.retries"), "retries must be at least 1");
    }
}

/// Exactly one of http, tcp and exec.
fn check_one_probe(hc: &HealthCheck, f: &str, out: &mut Problems) {
    let given: Vec<&str> = [
        ("http", hc.http.is_some()),
        ("tcp", hc.tcp.is_some()),
        ("exec", hc.exec.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match given.as_slice() {
        [] => out.push(f, "give exactly one of http, tcp or exec"),
        [_] => {}
        many => out.push(
            f,
            format!(
                "{} are {} given; give exactly one of http, tcp or exec",
                many.join(" and "),
                if many.len() == 2 { "both" } else { "all" }
            ),
        ),
    }
}

/// Why `url` is not an http(s) URL with a host.
fn http_check_problem(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        None => Some(format!(
            "http check {url:?} must start with http:// or https://, e.g. http://localhost:80/"
        )),
        Some(r) if r.is_empty() || r.starts_with('/') => Some(format!(
            "http check {url:?} has no host, e.g. http://localhost:80/"
        )),
        Some(_) if url.chars().any(|c| c.is_whitespace() || c.is_control()) => Some(format!(
            "http check {url:?} contains whitespace or control characters"
        )),
        Some(_) => None,
    }
}

fn check_exec(cmd: &[String], f: &str, out: &mut Problems) {
    match cmd.first() {
        None => out.push(
            format!("{f}.exec"),
            "exec is empty; give the command and its arguments, e.g. [pg_isready]",
        ),
        Some(first) if first.is_empty() => {
            out.push(format!("{f}.exec[0]"), "the command to run is empty")
        }
        Some(_) => {}
    }
    check_no_nul(cmd, f, "exec", out);
}

/// interval, timeout and start_period: durations greater than 0.
fn check_timings(hc: &HealthCheck, f: &str, out: &mut Problems) {
    for (name, value) in [
        ("interval", &hc.interval),
        ("timeout", &hc.timeout),
        ("start_period", &hc.start_period),
    ] {
        let Some(text) = value else { continue };
        let reason = match humantime::parse_duration(text) {
            Err(e) => Some(format!(
                "{name} {text:?} is not a duration ({e}); write e.g. 10s or 1m30s"
            )),
            Ok(d) if d.is_zero() => Some(format!("{name} must be greater than 0")),
            Ok(_) => None,
        };
        out.check(format!("{f}.{name}"), reason);
    }
}

/// Why `s` is not a `host:port` to connect to.
fn tcp_target_problem(s: &str) -> Option<String> {
    const HELP: &str = "expected host:port, e.g. localhost:5432 or [::1]:5432";
    let split = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((ip, port)) if ip.parse::<Ipv6Addr>().is_ok() => Some((ip, port)),
            Some((ip, _)) => {
                return Some(format!("{ip:?} in tcp check {s:?} is not an IPv6 address"))
            }
            None => None,
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Some(format!(
                    "tcp check {s:?}: IPv6 hosts go in brackets; {HELP}"
                ))
            }
            other => other,
        }
    };
    let Some((host, port)) = split else {
        return Some(format!("tcp check {s:?} has no port; {HELP}"));
    };
    if host.is_empty() {
        return Some(format!("tcp check {s:?} has no host; {HELP}"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Some(format!(
            "tcp check host {host:?} is not a host name or address; {HELP}"
        ));
    }
    port_number(port, "port", s).err()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::{run_table, run_valid};

    const C: &str = "containers:\n  - name: web\n    image: nginx:1.27\n";

    fn spec(extra: &str) -> String {
        format!("{C}{extra}")
    }

    #[test]
    fn container_rules() {
        let long_name = format!(
            "containers:\n  - {{name: {}, image: nginx}}\n",
            "a".repeat(64)
        );
        let two_http = "containers:\n  - {name: a, image: nginx, ports: [\"8080:80\"]}\n  - {name: b, image: nginx, ports: [\"127.0.0.1:8080:8080/tcp\"]}\n";
        let cases: Vec<(String, &str, &str)> = vec![
            ("containers:\n  - {name: web, image: nginx}\n  - {name: web, image: redis}\n".into(), "containers[1].name", "duplicate container name \"web\": containers[0]"),
            ("containers:\n  - {name: -web, image: nginx}\n".into(), "containers[0].name", "must start with a letter or digit"),
            ("containers:\n  - {name: \"we b\", image: nginx}\n".into(), "containers[0].name", "contains ' '"),
            ("containers:\n  - {name: \"\", image: nginx}\n".into(), "containers[0].name", "container name is empty"),
            (long_name, "containers[0].name", "at most 63"),
            ("containers:\n  - {name: web, image: Nginx}\n".into(), "containers[0].image", "must be lowercase"),
            (spec("    command: [\"a\\0b\"]\n"), "containers[0].command[0]", "NUL"),
            (spec("    args: [x, \"a\\0b\"]\n"), "containers[0].args[1]", "NUL"),
            (spec("    env: {\"A=B\": x}\n"), "containers[0].env.A=B", "contains '='"),
            (spec("    env: {\"\": x}\n"), "containers[0].env.", "name is empty"),
            (spec("    env: {\"A\\0\": x}\n"), "containers[0].env.A\0", "NUL"),
            (spec("    env: {A: \"x\\0\"}\n"), "containers[0].env.A", "value of \"A\" contains a NUL"),
            (spec("    ports: [\"8080:80\", \"70000:80\"]\n"), "containers[0].ports[1]", "port 70000 is out of range 1-65535"),
            (spec("    ports: [\"80/sctp\"]\n"), "containers[0].ports[0]", "use tcp or udp"),
            (spec("    ports: [\"8080:80\", \"8080:81/tcp\"]\n"), "containers[0].ports[1]", "host port 8080/tcp on every address is already published by containers[0].ports[0]"),
            (two_http.into(), "containers[1].ports[0]", "already published by containers[0].ports[0]"),
            (spec("    ports: [\"0.0.0.0:53:53/udp\", \"10.0.0.1:53:53/udp\"]\n"), "containers[0].ports[1]", "53/udp"),
            (spec("    volumes: [\"data\"]\n"), "containers[0].volumes[0]", "no container path"),
            (spec("    volumes: [\"v:/data/../etc\"]\n"), "containers[0].volumes[0]", "'..'"),
            (spec("    volumes: [\"v:/data\", \"/srv:/data/:ro\"]\n"), "containers[0].volumes[1]", "already mounted by containers[0].volumes[0]"),
            (spec("    labels: {io.steward.owner: me}\n"), "containers[0].labels.io.steward.owner", "reserved"),
            (spec("    network: \"\"\n"), "containers[0].network", "network is empty"),
            (spec("    network: br0\n    host_network: true\n"), "containers[0].network", "host_network"),
            (spec("    hostname: -web\n"), "containers[0].hostname", "must start and end with a letter or digit"),
            (spec("    hostname: web_1\n"), "containers[0].hostname", "contains '_'"),
            (spec("    hostname: a..b\n"), "containers[0].hostname", "empty label"),
            (spec(&format!("    hostname: {}\n", "a".repeat(64))), "containers[0].hostname", "at most 63"),
            (spec(&format!("    hostname: {}.{}\n", "a".repeat(40), "b".repeat(40))), "containers[0].hostname", "at most 64"),
            (spec("    resources: {cpus: 0}\n"), "containers[0].resources.cpus", "must be positive"),
            (spec("    resources: {cpus: 2000}\n"), "containers[0].resources.cpus", "maximum of 1024"),
            (spec("    resources: {cpus: lots}\n"), "containers[0].resources.cpus", "not a CPU count"),
            (spec("    resources: {memory: 1Mi}\n"), "containers[0].resources.memory", "below the 4Mi minimum"),
            (spec("    resources: {memory: 512m}\n"), "containers[0].resources.memory", "ambiguous"),
            (spec("    healthcheck: {interval: 10s}\n"), "containers[0].healthcheck", "exactly one of http, tcp or exec"),
            (spec("    healthcheck: {http: \"http://x/\", exec: [\"true\"]}\n"), "containers[0].healthcheck", "http and exec are both given"),
            (spec("    healthcheck: {http: \"localhost:80\"}\n"), "containers[0].healthcheck.http", "must start with http:// or https://"),
            (spec("    healthcheck: {http: \"http:///x\"}\n"), "containers[0].healthcheck.http", "no host"),
            (spec("    healthcheck: {tcp: localhost}\n"), "containers[0].healthcheck.tcp", "no port"),
            (spec("    healthcheck: {tcp: \"localhost:0\"}\n"), "containers[0].healthcheck.tcp", "out of range 1-65535"),
            (spec("    healthcheck: {tcp: \":80\"}\n"), "containers[0].healthcheck.tcp", "no host"),
            (spec("    healthcheck: {tcp: \"::1:80\"}\n"), "containers[0].healthcheck.tcp", "brackets"),
            (spec("    healthcheck: {exec: []}\n"), "containers[0].healthcheck.exec", "exec is empty"),
            (spec("    healthcheck: {exec: [\"\"]}\n"), "containers[0].healthcheck.exec[0]", "empty"),
            (spec("    healthcheck: {exec: [\"true\"], interval: soon}\n"), "containers[0].healthcheck.interval", "not a duration"),
            (spec("    healthcheck: {exec: [\"true\"], timeout: 0s}\n"), "containers[0].healthcheck.timeout", "greater than 0"),
            (spec("    healthcheck: {exec: [\"true\"], start_period: \"5\"}\n"), "containers[0].healthcheck.start_period", "not a duration"),
            (spec("    healthcheck: {exec: [\"true\"], retries: 0}\n"), "containers[0].healthcheck.retries", "at least 1"),
        ];
        let cases: Vec<(&str, &str, &str)> =
            cases.iter().map(|(y, f, r)| (y.as_str(), *f, *r)).collect();
        run_table(&cases);
    }

    #[test]
    fn valid_containers() {
        let specs = [
            spec("    ports: [\"8080:80\", \"8080:80/udp\", \"127.0.0.1:9090:90\", \"127.0.0.2:9090:90\", \"[::1]:7070:70\", \"80\"]\n"),
            spec("    resources: {cpus: \"500m\", memory: 4Mi}\n"),
            spec("    resources: {cpus: 1024, memory: 4194304}\n"),
            spec("    healthcheck: {tcp: \"[::1]:5432\", interval: 1m30s, timeout: 2s, retries: 3, start_period: 1s}\n"),
            spec("    healthcheck: {exec: [pg_isready, -U, postgres]}\n"),
            spec("    healthcheck: {http: \"https://localhost:8443/healthz\"}\n"),
            spec("    hostname: web-01.lab.example\n    network: host\n    env: {EMPTY: \"\"}\n"),
            spec("    labels: {com.example.team: \"any value: with spaces\"}\n"),
            "containers:\n  - {name: a, image: nginx, ports: [\"127.0.0.1:80:80\"]}\n  - {name: b, image: nginx, ports: [\"127.0.0.2:80:80\"]}\n".into(),
        ];
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        run_valid(&specs);
    }
}
