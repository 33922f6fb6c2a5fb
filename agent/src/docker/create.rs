//! ContainerSpec → Docker create body. Pure: no I/O, unit-tested below.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, PortBinding, RestartPolicy as DockerRestart,
    RestartPolicyNameEnum,
};
use steward_proto::validate::{parse_port, parse_volume, VolumeSource};
use steward_proto::{ContainerSpec, HealthCheck, RestartPolicy};

use super::DockerError;
use crate::reconcile::types::{
    limits, LABEL_MANAGED, LABEL_NAME, LABEL_NODE, LABEL_SESSION, LABEL_SPEC_HASH,
};

/// Exposed ports and their host bindings, by `port/protocol`.
type Ports = (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>);

/// The body of `POST /containers/create` for `spec`, labelled as owned by Steward.
pub(super) fn container_body(
    spec: &ContainerSpec,
    hash: &str,
    node_id: &str,
) -> Result<ContainerCreateBody, DockerError> {
    let invalid = |reason: String| DockerError::InvalidSpec {
        container: spec.name.clone(),
        reason,
    };
    let (exposed, bindings) = ports(&spec.ports).map_err(invalid)?;
    let binds = binds(&spec.volumes).map_err(invalid)?;
    let (memory, nano_cpus) = checked_limits(spec).map_err(invalid)?;
    let network_mode = network_mode(spec).map_err(invalid)?;
    let healthcheck = match &spec.healthcheck {
        Some(hc) => health_config(hc).map_err(|e| invalid(format!("healthcheck: {e}")))?,
        None => None,
    };
    let host_config = HostConfig {
        memory: (memory > 0).then_some(memory),
        nano_cpus: (nano_cpus > 0).then_some(nano_cpus),
        binds: (!binds.is_empty()).then_some(binds),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        restart_policy: Some(DockerRestart {
            name: Some(restart_policy(spec.restart)),
            maximum_retry_count: None,
        }),
        network_mode,
        pid_mode: spec.host_pid.then(|| "host".to_string()),
        privileged: Some(spec.privileged),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        // Exactly as given, so the observed Config.Image compares equal to the spec.
        image: Some(spec.image.clone()),
        entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty())
            .then(|| spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        hostname: spec.hostname.clone(),
        labels: Some(labels(spec, hash, node_id)),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck,
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// The spec's labels and Steward's ownership labels.
fn labels(spec: &ContainerSpec, hash: &str, node_id: &str) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Ours last, so a spec label can never fake or hide ownership.
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_NAME.into(), spec.name.clone());
    labels.insert(LABEL_SPEC_HASH.into(), hash.into());
    labels.insert(LABEL_NODE.into(), node_id.into());
    match &spec.session {
        Some(session) => labels.insert(LABEL_SESSION.into(), session.clone()),
        None => labels.remove(LABEL_SESSION),
    };
    labels
}

/// Ports: one exposed port per container port, with every host binding asked for it.
fn ports(ports: &[String]) -> Result<Ports, String> {
    let mut exposed: Vec<String> = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in ports {
        let m = parse_port(p).map_err(|e| format!("ports: {e}"))?;
        let key = format!("{}/{}", m.container_port, m.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                // No address: Docker binds every address.
                host_ip: m.host_ip.map(|ip| ip.to_string()),
                // Empty: Docker picks a free ephemeral port.
                host_port: Some(m.host_port.map(|p| p.to_string()).unwrap_or_default()),
            });
    }
    Ok((exposed, bindings))
}

/// Volumes as binds, exactly like `docker run -v`: `/host:/ctr[:ro]` bind-mounts a host path;
/// `name:/ctr[:ro]` mounts a named volume, which Docker creates on first use (and seeds from the
/// image) and keeps when the container is removed.
fn binds(volumes: &[String]) -> Result<Vec<String>, String> {
    let mut binds = Vec::new();
    for v in volumes {
        let m = parse_volume(v).map_err(|e| format!("volumes: {e}"))?;
        let source = match &m.source {
            VolumeSource::Host(path) => path
                .to_str()
                .ok_or_else(|| format!("volumes: host path {path:?} is not UTF-8"))?
                .to_string(),
            VolumeSource::Named(name) => name.clone(),
        };
        let mode = if m.read_only { ":ro" } else { "" };
        binds.push(format!("{source}:{}{mode}", m.target));
    }
    Ok(binds)
}

/// Limits: the very numbers the planner compares against what it observes. `limits` maps an
/// unparsable quantity to "no limit"; refuse that here rather than run unlimited.
fn checked_limits(spec: &ContainerSpec) -> Result<(i64, i64), String> {
    if let Some(q) = &spec.resources.memory {
        steward_proto::quantity::parse_memory(q).map_err(|e| format!("resources.memory: {e}"))?;
    }
    if let Some(q) = &spec.resources.cpus {
        steward_proto::quantity::parse_cpus(q).map_err(|e| format!("resources.cpus: {e}"))?;
    }
    Ok(limits(spec))
}

fn restart_policy(p: RestartPolicy) -> RestartPolicyNameEnum {
    match p {
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        RestartPolicy::Never => RestartPolicyNameEnum::NO,
    }
}

/// Docker's network mode: `host` for `host_network`, else the spec's network, if any.
fn network_mode(spec: &ContainerSpec) -> Result<Option<String>, String> {
    match (&spec.network, spec.host_network) {
        (Some(net), true) if net != "host" => Err(format!(
            "network {net:?} cannot be combined with host_network: true"
        )),
        (_, true) => Ok(Some("host".to_string())),
        (Some(net), false) => Ok(Some(net.clone())),
        (None, false) => Ok(None),
    }
}

/// Docker's own health check, for `exec` checks only. `http` and `tcp` checks are probed by the
/// agent from the host: the image may have no HTTP client or shell to run them inside, and the
/// address is the one the host sees. So those give no Docker health check (`None`).
fn health_config(hc: &HealthCheck) -> Result<Option<HealthConfig>, String> {
    let Some(exec) = &hc.exec else {
        return Ok(None);
    };
    if exec.is_empty() {
        return Err("exec is empty; give the command and its arguments".into());
    }
    let nanos = |what: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        let Some(s) = v else { return Ok(None) };
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("{what} {s:?} is not a duration such as 10s or 1m30s: {e}"))?;
        if d < Duration::from_millis(1) {
            return Err(format!(
                "{what} {s:?} is shorter than Docker's minimum of 1ms"
            ));
        }
        i64::try_from(d.as_nanos())
            .map(Some)
            .map_err(|_| format!("{what} {s:?} is too long"))
    };
    let mut test = Vec::with_capacity(exec.len() + 1);
    test.push("CMD".to_string());
    test.extend(exec.iter().cloned());
    Ok(Some(HealthConfig {
        test: Some(test),
        interval: nanos("interval", &hc.interval)?,
        timeout: nanos("timeout", &hc.timeout)?,
        retries: hc.retries.map(i64::from),
        start_period: nanos("start_period", &hc.start_period)?,
        start_interval: None,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use steward_proto::{Quantity, Resources};

    fn spec(name: &str) -> ContainerSpec {
        serde_json::from_value(serde_json::json!({"name": name, "image": "busybox:1"})).unwrap()
    }

    #[test]
    fn minimal_spec() {
        let b = container_body(&spec("web"), "h1", "node-1").unwrap();
        assert_eq!(b.image.as_deref(), Some("busybox:1"));
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.cmd, None);
        assert_eq!(b.env, None);
        assert_eq!(b.exposed_ports, None);
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_NAME], "web");
        assert_eq!(labels[LABEL_SPEC_HASH], "h1");
        assert_eq!(labels[LABEL_NODE], "node-1");
        let hc = b.host_config.unwrap();
        assert_eq!(hc.memory, None);
        assert_eq!(hc.nano_cpus, None);
        assert_eq!(hc.network_mode, None);
        assert_eq!(hc.pid_mode, None);
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::ALWAYS)
        );
    }

    /// A spec using every field `container_body` maps.
    fn full() -> ContainerSpec {
        let mut s = spec("web");
        s.command = vec!["httpd".into()];
        s.args = vec!["-f".into(), "-p".into(), "8080".into()];
        s.env.insert("A".into(), "1".into());
        s.env.insert("B".into(), "x=y".into());
        s.labels.insert("team".into(), "web".into());
        s.ports = vec![
            "127.0.0.1::8080".into(),
            "[::1]:9090:8080".into(),
            "53:53/udp".into(),
        ];
        s.volumes = vec!["/srv/www:/www:ro".into(), "data:/data".into()];
        s.hostname = Some("web-1".into());
        s.restart = RestartPolicy::OnFailure;
        s.resources = Resources {
            cpus: Some(Quantity::Text("500m".into())),
            memory: Some(Quantity::Text("64Mi".into())),
        };
        s.privileged = true;
        s.host_pid = true;
        s.network = Some("lab-net".into());
        s.healthcheck = Some(HealthCheck {
            exec: Some(vec!["true".into()]),
            interval: Some("10s".into()),
            timeout: Some("2s".into()),
            retries: Some(3),
            start_period: Some("1m".into()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn full_spec() {
        let s = full();
        let b = container_body(&s, "h", "n").unwrap();
        assert_eq!(b.entrypoint, Some(vec!["httpd".to_string()]));
        assert_eq!(b.cmd.as_ref().unwrap().len(), 3);
        assert_eq!(b.env, Some(vec!["A=1".to_string(), "B=x=y".to_string()]));
        assert_eq!(b.hostname.as_deref(), Some("web-1"));
        assert_eq!(b.labels.as_ref().unwrap()["team"], "web");
        assert_eq!(
            b.exposed_ports,
            Some(vec!["8080/tcp".to_string(), "53/udp".to_string()])
        );
        let health = b.healthcheck.unwrap();
        assert_eq!(
            health.test,
            Some(vec!["CMD".to_string(), "true".to_string()])
        );
        assert_eq!(health.interval, Some(10_000_000_000));
        assert_eq!(health.timeout, Some(2_000_000_000));
        assert_eq!(health.retries, Some(3));
        assert_eq!(health.start_period, Some(60_000_000_000));
        let hc = b.host_config.unwrap();
        let pb = hc.port_bindings.unwrap();
        assert_eq!(
            pb["8080/tcp"],
            Some(vec![
                PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new())
                },
                PortBinding {
                    host_ip: Some("::1".into()),
                    host_port: Some("9090".into())
                },
            ])
        );
        assert_eq!(
            pb["53/udp"],
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some("53".into())
            }])
        );
        assert_eq!(
            hc.binds,
            Some(vec![
                "/srv/www:/www:ro".to_string(),
                "data:/data".to_string()
            ])
        );
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!((hc.memory.unwrap(), hc.nano_cpus.unwrap()), limits(&s));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::ON_FAILURE)
        );
        assert_eq!(hc.network_mode.as_deref(), Some("lab-net"));
        assert_eq!(hc.pid_mode.as_deref(), Some("host"));
        assert_eq!(hc.privileged, Some(true));
    }

    #[test]
    fn host_network_and_never_restart() {
        let mut s = spec("x");
        s.host_network = true;
        s.restart = RestartPolicy::Never;
        let hc = container_body(&s, "h", "n").unwrap().host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
    }

    #[test]
    fn ownership_labels_win_over_spec_labels() {
        let mut s = spec("x");
        s.labels.insert(LABEL_MANAGED.into(), "false".into());
        s.labels.insert(LABEL_NAME.into(), "other".into());
        let labels = container_body(&s, "h", "n").unwrap().labels.unwrap();
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_NAME], "x");
    }

    /// A session's container carries its session's label beside the ownership labels; the
    /// spec that asks for it passes validation (the label comes from `session`, not from the
    /// spec's own labels, where the `io.steward.` prefix is refused).
    #[test]
    fn a_session_container_is_labelled_with_its_session() {
        let node: steward_proto::NodeSpec = serde_norway::from_str(
            "sessions: [{id: s1, expires_at: '2030-01-01T00:00:00Z', volumes: [d]}]\n\
             containers: [{name: x, image: busybox, session: s1, volumes: ['d:/data']}]\n",
        )
        .unwrap();
        let limits = steward_proto::validate::SpecLimits::default();
        steward_proto::validate::validate_spec(&node, &limits).unwrap();
        let labels = container_body(&node.containers[0], "h", "n")
            .unwrap()
            .labels
            .unwrap();
        assert_eq!(labels[LABEL_SESSION], "s1");
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_NODE], "n");
        // No session: no session label, whatever the spec's labels hold.
        let mut plain = spec("y");
        plain.labels.insert(LABEL_SESSION.into(), "fake".into());
        let labels = container_body(&plain, "h", "n").unwrap().labels.unwrap();
        assert!(!labels.contains_key(LABEL_SESSION), "{labels:?}");
    }

    #[test]
    fn http_and_tcp_checks_are_not_docker_checks() {
        let mut s = spec("x");
        s.healthcheck = Some(HealthCheck {
            http: Some("http://localhost:80/".into()),
            ..Default::default()
        });
        assert_eq!(container_body(&s, "h", "n").unwrap().healthcheck, None);
    }

    type Edit = Box<dyn Fn(&mut ContainerSpec)>;

    #[test]
    fn invalid_specs_are_refused_with_the_field() {
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.ports = vec!["http".into()]), "ports:"),
            (Box::new(|s| s.volumes = vec!["./x:/y".into()]), "volumes:"),
            (
                Box::new(|s| s.resources.memory = Some(Quantity::Text("lots".into()))),
                "resources.memory",
            ),
            (
                Box::new(|s| s.resources.cpus = Some(Quantity::Text("-1".into()))),
                "resources.cpus",
            ),
            (
                Box::new(|s| {
                    s.network = Some("lab".into());
                    s.host_network = true;
                }),
                "host_network",
            ),
            (
                Box::new(|s| {
                    s.healthcheck = Some(HealthCheck {
                        exec: Some(vec!["true".into()]),
                        interval: Some("often".into()),
                        ..Default::default()
                    })
                }),
                "interval \"often\"",
            ),
        ];
        for (edit, want) in cases {
            let mut s = spec("bad");
            edit(&mut s);
            let e = container_body(&s, "h", "n").unwrap_err();
            assert!(matches!(e, DockerError::InvalidSpec { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("container bad") && msg.contains(want), "{msg}");
        }
    }
}
