//! Agent configuration: flags > environment > config file > defaults.
//!
//! Every field is documented in `packaging/agent.toml.example`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::reconcile::Policy;

pub const DEFAULT_CONFIG: &str = "/etc/steward/agent.toml";

/// Flags shared by `run`, `enroll`, `apply` and `status`; each also reads its env variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// Config file (TOML) [default: /etc/steward/agent.toml, if it exists].
    #[arg(long, short = 'c', env = "STEWARD_AGENT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Registry URL, e.g. https://registry.example:7700, or several URLs of one registry's
    /// replicas separated by commas (the agent moves to the next on a connection error).
    #[arg(
        long,
        env = "STEWARD_REGISTRY",
        global = true,
        value_name = "URL[,URL...]"
    )]
    pub registry: Option<String>,
    /// Enrollment token, used once when the agent has no node identity yet (or a re-enrolment
    /// grant from `stewardctl nodes reenroll`, for a reinstalled host).
    #[arg(
        long,
        env = "STEWARD_ENROLLMENT_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// State directory (node identity, stored spec, status) [default: /var/lib/steward].
    #[arg(long, env = "STEWARD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// PEM file with the CA that signed the registry's certificate (added to the system roots).
    #[arg(long, env = "STEWARD_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Accept the registry only if its certificate's sha256 (hex) is this.
    #[arg(long, env = "STEWARD_CA_PIN", global = true)]
    pub ca_pin_sha256: Option<String>,
    /// Docker engine socket [default: /var/run/docker.sock].
    #[arg(long, env = "STEWARD_DOCKER_SOCKET", global = true)]
    pub docker_socket: Option<PathBuf>,
    /// Periodic full reconcile even without changes [default: 30s].
    #[arg(long, env = "STEWARD_RESYNC_INTERVAL", value_parser = humantime::parse_duration, global = true)]
    pub resync_interval: Option<Duration>,
    /// Shortest time between two readings of the workloads' network activity [default: 30s].
    #[arg(long, env = "STEWARD_ACTIVITY_INTERVAL", value_parser = humantime::parse_duration, global = true)]
    pub activity_interval: Option<Duration>,
    /// Address of the Prometheus metrics endpoint (GET /metrics), or "off" [default: 127.0.0.1:9475].
    #[arg(long, env = "STEWARD_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<String>,
    /// Directory holding one directory per VM [default: <data dir>/vms].
    #[arg(long, env = "STEWARD_VM_DIR", global = true)]
    pub vm_dir: Option<PathBuf>,
    /// VM accelerator: auto (KVM when it works, else TCG), kvm or tcg [default: auto].
    #[arg(long, env = "STEWARD_VM_ACCEL", global = true)]
    pub vm_accel: Option<String>,
}

/// The config file's shape. Unknown fields are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    registry: Option<UrlList>,
    enrollment_token: Option<String>,
    data_dir: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    ca_pin_sha256: Option<String>,
    docker_socket: Option<PathBuf>,
    resync_interval: Option<String>,
    activity_interval: Option<String>,
    long_poll_wait: Option<String>,
    backoff_max: Option<String>,
    metrics_listen: Option<String>,
    lab_cidr_template: Option<String>,
    watchdog_max_pass: Option<String>,
    vm_dir: Option<PathBuf>,
    vm_accel: Option<String>,
    vm_stop_timeout: Option<String>,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    heal: crate::heal::HealConfig,
    #[serde(default)]
    limits: steward_proto::validate::SpecLimits,
}

/// `registry` in the config file: one URL (or a comma-separated list) or a list of URLs.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UrlList {
    One(String),
    Many(Vec<String>),
}

impl UrlList {
    fn joined(self) -> String {
        match self {
            UrlList::One(s) => s,
            UrlList::Many(v) => steward_proto::endpoints::join_list(&v),
        }
    }
}

/// The resolved configuration.
#[derive(Clone)]
pub struct AgentConfig {
    /// The registry's URL, or its URLs separated by commas (checked by [`check_registry`]).
    pub registry: Option<String>,
    pub enrollment_token: Option<String>,
    pub data_dir: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub ca_pin_sha256: Option<String>,
    pub docker_socket: Option<PathBuf>,
    pub resync_interval: Duration,
    /// Shortest time between two readings of the workloads' network activity (`activity.rs`).
    pub activity_interval: Duration,
    pub long_poll_wait: Duration,
    pub backoff_max: Duration,
    /// Where to serve metrics; `None` when "off".
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Subnet of a lab without `cidr`, e.g. `192.168.{vlan}.0/24` (see `network::lab`).
    pub lab_cidr_template: String,
    /// Longest a reconcile pass may run before the systemd watchdog is no longer fed.
    pub watchdog_max_pass: Duration,
    /// VM directory, accelerator, stop timeout.
    pub vms: crate::vm::VmSettings,
    pub policy: Policy,
    /// The escalation ladder's pace (`[heal]`).
    pub heal: crate::heal::ladder::LadderPolicy,
    /// Upper bounds on a spec (`[limits]`, each also `STEWARD_LIMITS_<KEY>`); a spec file or a
    /// registry spec past them is refused.
    pub limits: steward_proto::validate::SpecLimits,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("registry", &self.registry)
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .field("ca_file", &self.ca_file)
            .field("ca_pin_sha256", &self.ca_pin_sha256)
            .field("docker_socket", &self.docker_socket)
            .field("resync_interval", &self.resync_interval)
            .field("activity_interval", &self.activity_interval)
            .field("long_poll_wait", &self.long_poll_wait)
            .field("backoff_max", &self.backoff_max)
            .field("metrics_listen", &self.metrics_listen)
            .field("lab_cidr_template", &self.lab_cidr_template)
            .field("watchdog_max_pass", &self.watchdog_max_pass)
            .field("vms", &self.vms)
            .field("policy", &self.policy)
            .field("heal", &self.heal)
            .field("limits", &self.limits)
            .finish()
    }
}

fn duration(field: &str, v: Option<String>) -> anyhow::Result<Option<Duration>> {
    v.map(|s| {
        humantime::parse_duration(&s)
            .with_context(|| format!("config field {field}: {s:?} is not a duration like 30s"))
    })
    .transpose()
}

impl AgentConfig {
    /// Resolves flags/env over the config file over defaults.
    pub fn resolve(args: AgentArgs) -> anyhow::Result<Self> {
        let file = file_config(args.config.as_deref())?;
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/steward"));
        let mut cfg = AgentConfig {
            registry: args.registry.or(file.registry.map(UrlList::joined)),
            enrollment_token: args
                .token
                .or(file.enrollment_token)
                .filter(|t| !t.is_empty()),
            data_dir: data_dir.clone(),
            ca_file: args.ca_file.or(file.ca_file),
            ca_pin_sha256: args.ca_pin_sha256.or(file.ca_pin_sha256),
            docker_socket: args.docker_socket.or(file.docker_socket),
            resync_interval: args
                .resync_interval
                .or(duration("resync_interval", file.resync_interval)?)
                .unwrap_or(Duration::from_secs(30)),
            activity_interval: args
                .activity_interval
                .or(duration("activity_interval", file.activity_interval)?)
                .unwrap_or(crate::activity::DEFAULT_INTERVAL),
            long_poll_wait: duration("long_poll_wait", file.long_poll_wait)?
                .unwrap_or(Duration::from_secs(60)),
            backoff_max: duration("backoff_max", file.backoff_max)?
                .unwrap_or(Duration::from_secs(60)),
            metrics_listen: crate::metrics::parse_listen(
                args.metrics_listen
                    .as_deref()
                    .or(file.metrics_listen.as_deref())
                    .unwrap_or(crate::metrics::DEFAULT_LISTEN),
            )
            .context("config field metrics_listen")?,
            lab_cidr_template: file
                .lab_cidr_template
                .unwrap_or_else(|| crate::network::lab::DEFAULT_LAB_TEMPLATE.to_string()),
            watchdog_max_pass: duration("watchdog_max_pass", file.watchdog_max_pass)?
                .unwrap_or(Duration::from_secs(15 * 60)),
            vms: vm_settings(
                args.vm_dir.or(file.vm_dir),
                args.vm_accel.or(file.vm_accel),
                file.vm_stop_timeout,
                &data_dir,
            )?,
            policy: file.policy,
            heal: file.heal.resolve()?,
            limits: file.limits,
        };
        cfg.limits
            .apply_env(|k| std::env::var(k).ok())
            .map_err(anyhow::Error::msg)?;
        cfg.vms.heal = cfg.heal;
        cfg.check()?;
        if let Some(r) = &cfg.registry {
            cfg.registry = Some(check_registry(r)?);
        }
        Ok(cfg)
    }

    /// Refuses values no agent can run with (naming the field).
    fn check(&self) -> anyhow::Result<()> {
        crate::network::lab::check_template(&self.lab_cidr_template)
            .map_err(|e| anyhow::anyhow!("config field {e}"))?;
        for r in &self.policy.payload_roots {
            if !r.is_absolute() || r.components().any(|c| c == std::path::Component::ParentDir) {
                bail!(
                    "policy.payload_roots: {} must be an absolute path without '..'",
                    r.display()
                );
            }
        }
        if self.policy.attest_rehash_secs == Some(0) {
            bail!("policy.attest_rehash_secs must be at least 1");
        }
        if self.resync_interval < Duration::from_secs(1) {
            bail!("resync_interval must be at least 1s");
        }
        if self.activity_interval < Duration::from_secs(1) {
            bail!("activity_interval must be at least 1s");
        }
        if self.long_poll_wait < Duration::from_secs(1)
            || self.long_poll_wait > Duration::from_secs(300)
        {
            bail!("long_poll_wait must be between 1s and 300s");
        }
        Ok(())
    }
}

/// The config file: the one given, else the default one when it exists, else empty.
fn file_config(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    match path {
        Some(p) => load(p),
        None if Path::new(DEFAULT_CONFIG).exists() => load(Path::new(DEFAULT_CONFIG)),
        None => Ok(FileConfig::default()),
    }
}

/// The VM settings from their resolved values (directory default `<data_dir>/vms`).
fn vm_settings(
    dir: Option<PathBuf>,
    accel: Option<String>,
    stop_timeout: Option<String>,
    data_dir: &Path,
) -> anyhow::Result<crate::vm::VmSettings> {
    Ok(crate::vm::VmSettings {
        dir: dir.unwrap_or_else(|| data_dir.join("vms")),
        accel: accel
            .map(|a| a.parse())
            .transpose()
            .map_err(|e| anyhow::anyhow!("config field vm_accel: {e}"))?
            .unwrap_or_default(),
        stop_timeout: duration("vm_stop_timeout", stop_timeout)?.unwrap_or(Duration::from_secs(30)),
        ..Default::default()
    })
}

/// Checks every URL of a registry list (naming the first bad one) and returns the list in
/// its normal form: `URL,URL` without spaces.
pub fn check_registry(raw: &str) -> anyhow::Result<String> {
    crate::client::parse_urls(raw).map_err(|e| anyhow::anyhow!("config field registry: {e}"))?;
    Ok(steward_proto::endpoints::join_list(
        &steward_proto::endpoints::split_list(raw)?,
    ))
}

/// The first URL of a registry list (the one whose route the network driver protects).
pub fn first_registry_url(list: &str) -> Option<String> {
    steward_proto::endpoints::split_list(list)
        .ok()
        .and_then(|v| v.into_iter().next())
}

fn load(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_policy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "registry = \"http://file:1\"\nresync_interval = \"5s\"\n[policy]\nallow_privileged = true\nallowed_bind_roots = [\"/srv\"]\n",
        )
        .unwrap();
        let c = AgentConfig::resolve(AgentArgs {
            config: Some(p),
            registry: Some("http://flag:2".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.registry.as_deref(), Some("http://flag:2"));
        assert_eq!(c.resync_interval, Duration::from_secs(5));
        assert!(c.policy.allow_privileged);
        assert!(!c.policy.allow_host_network);
        assert_eq!(c.policy.allowed_bind_roots, [PathBuf::from("/srv")]);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/steward"));
        assert_eq!(c.metrics_listen, Some(([127, 0, 0, 1], 9475).into()));
        assert_eq!(c.vms.dir, PathBuf::from("/var/lib/steward/vms"));
        assert_eq!(c.vms.accel, crate::vm::Accel::Auto);
    }

    #[test]
    fn registry_is_one_url_or_several() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |body: &str| {
            let p = dir.path().join("r.toml");
            std::fs::write(&p, body).unwrap();
            AgentConfig::resolve(AgentArgs {
                config: Some(p),
                ..Default::default()
            })
        };
        let list = "registry = [\"https://a:7700\", \"https://b:7700\"]\n";
        assert_eq!(
            resolve(list).unwrap().registry.as_deref(),
            Some("https://a:7700,https://b:7700")
        );
        let commas = "registry = \"https://a:7700, https://b:7700\"\n";
        assert_eq!(
            resolve(commas).unwrap().registry.as_deref(),
            Some("https://a:7700,https://b:7700")
        );
        let one = "registry = \"https://a:7700\"\n";
        assert_eq!(
            resolve(one).unwrap().registry.as_deref(),
            Some("https://a:7700")
        );
        let bad = resolve("registry = [\"https://a:7700\", \"a-host:7700\"]\n").unwrap_err();
        assert!(format!("{bad:#}").contains("\"a-host:7700\""), "{bad:#}");
        let twice = resolve("registry = \"http://a:1,http://a:1/\"\n").unwrap_err();
        assert!(format!("{twice:#}").contains("listed twice"), "{twice:#}");
    }

    #[test]
    fn vm_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "vm_dir = \"/srv/vms\"\nvm_accel = \"tcg\"\nvm_stop_timeout = \"5s\"\n",
        )
        .unwrap();
        let c = AgentConfig::resolve(AgentArgs {
            config: Some(p.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.vms.dir, PathBuf::from("/srv/vms"));
        assert_eq!(c.vms.accel, crate::vm::Accel::Tcg);
        assert_eq!(c.vms.stop_timeout, Duration::from_secs(5));
        let e = AgentConfig::resolve(AgentArgs {
            config: Some(p),
            vm_accel: Some("xen".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("vm_accel"), "{e:#}");
    }

    #[test]
    fn lab_template_default_file_and_checked() {
        let c = AgentConfig::resolve(AgentArgs::default()).unwrap();
        assert_eq!(c.lab_cidr_template, "192.168.{vlan}.0/24");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "lab_cidr_template = \"10.{vlan_hi}.{vlan_lo}.0/24\"\n").unwrap();
        let c = AgentConfig::resolve(AgentArgs {
            config: Some(p.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.lab_cidr_template, "10.{vlan_hi}.{vlan_lo}.0/24");
        std::fs::write(&p, "lab_cidr_template = \"10.0.0.0/24\"\n").unwrap();
        let e = AgentConfig::resolve(AgentArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("lab_cidr_template"), "{e:#}");
    }

    #[test]
    fn metrics_listen_file_flag_and_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "metrics_listen = \"127.0.0.1:9999\"\n").unwrap();
        let c = AgentConfig::resolve(AgentArgs {
            config: Some(p.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.metrics_listen, Some(([127, 0, 0, 1], 9999).into()));
        let c = AgentConfig::resolve(AgentArgs {
            config: Some(p.clone()),
            metrics_listen: Some("off".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.metrics_listen, None);
        let e = AgentConfig::resolve(AgentArgs {
            config: Some(p),
            metrics_listen: Some("nine".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("metrics_listen"), "{e:#}");
    }

    #[test]
    fn the_example_config_parses() {
        let f: FileConfig =
            toml::from_str(include_str!("../../packaging/agent.toml.example")).unwrap();
        assert_eq!(f.policy.attest_rehash_secs, Some(3600));
        assert_eq!(f.policy.payload_drift, crate::payload::DriftPolicy::Restore);
        // The example documents the real defaults.
        assert_eq!(f.limits, steward_proto::validate::SpecLimits::default());
        let activity = duration("activity_interval", f.activity_interval).unwrap();
        assert_eq!(activity, Some(crate::activity::DEFAULT_INTERVAL));
    }

    #[test]
    fn activity_interval_default_file_flag_and_floor() {
        let c = AgentConfig::resolve(AgentArgs::default()).unwrap();
        assert_eq!(c.activity_interval, Duration::from_secs(30));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "activity_interval = \"2m\"\n").unwrap();
        let args = |flag: Option<Duration>| AgentArgs {
            config: Some(p.clone()),
            activity_interval: flag,
            ..Default::default()
        };
        let c = AgentConfig::resolve(args(None)).unwrap();
        assert_eq!(c.activity_interval, Duration::from_secs(120));
        let c = AgentConfig::resolve(args(Some(Duration::from_secs(1)))).unwrap();
        assert_eq!(c.activity_interval, Duration::from_secs(1));
        let e = AgentConfig::resolve(args(Some(Duration::from_millis(10)))).unwrap_err();
        assert!(e.to_string().contains("activity_interval"), "{e}");
    }

    #[test]
    fn payload_policy_defaults_file_and_bad_values() {
        let c = AgentConfig::resolve(AgentArgs::default()).unwrap();
        assert!(c.policy.payload_roots.is_empty());
        assert_eq!(c.policy.payload_drift, crate::payload::DriftPolicy::Restore);
        assert_eq!(c.policy.attest_rehash_secs, None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "[policy]\npayload_roots = [\"/opt/p\"]\npayload_drift = \"report\"\nattest_rehash_secs = 60\n",
        )
        .unwrap();
        let c = AgentConfig::resolve(AgentArgs {
            config: Some(p.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.policy.payload_roots, [PathBuf::from("/opt/p")]);
        assert_eq!(c.policy.payload_drift, crate::payload::DriftPolicy::Report);
        assert_eq!(c.policy.attest_rehash_secs, Some(60));
        std::fs::write(&p, "[policy]\npayload_drift = \"fix\"\n").unwrap();
        let e = AgentConfig::resolve(AgentArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("payload_drift"), "{e:#}");
    }

    #[test]
    fn unknown_fields_refused_and_token_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "[policy]\nallow_everything = true\n").unwrap();
        let e = AgentConfig::resolve(AgentArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown field `allow_everything`"),
            "{e:#}"
        );
        let c = AgentConfig::resolve(AgentArgs {
            token: Some("sekrit.123".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
