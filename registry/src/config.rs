//! Registry configuration: flags > environment > config file > defaults.
//!
//! Every field is documented in `packaging/registry.toml.example`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use steward_proto::validate::SpecLimits;

mod store;
use store::store_config;
pub use store::StoreConfig;

/// `steward-registry serve` flags; each also reads its environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML). Missing default file is fine; a missing explicit file is an error.
    #[arg(long, env = "STEWARD_REGISTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7700].
    #[arg(long, env = "STEWARD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded store and generated secrets [default: /var/lib/steward-registry].
    #[arg(long, env = "STEWARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the admin token; when no admin token is configured one is generated into
    /// DATA_DIR/admin.token (mode 0600).
    #[arg(long, env = "STEWARD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// File holding the optional read-only token (GETs that are not a node's own).
    #[arg(long, env = "STEWARD_READ_TOKEN_FILE")]
    pub read_token_file: Option<PathBuf>,
    /// PEM certificate chain for TLS.
    #[arg(long, env = "STEWARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "STEWARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address.
    #[arg(long, env = "STEWARD_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Expected interval between a node's heartbeats [default: 10s].
    #[arg(long, env = "STEWARD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Missed intervals before a node is stale [default: 3].
    #[arg(long, env = "STEWARD_STALE_AFTER")]
    pub stale_after: Option<u32>,
    /// Missed intervals before a node is down [default: 10].
    #[arg(long, env = "STEWARD_DOWN_AFTER")]
    pub down_after: Option<u32>,
    /// Longest long-poll wait a client may ask for [default: 300s].
    #[arg(long, env = "STEWARD_MAX_WAIT", value_parser = humantime::parse_duration)]
    pub max_wait: Option<Duration>,
    /// Largest request body accepted, in bytes [default: 1048576].
    #[arg(long, env = "STEWARD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Disk space held in reserve in the data dir, released when the disk fills up so that
    /// payload deletions can still be written [default: 33554432 (32 MiB); 0: none].
    #[arg(long, env = "STEWARD_STORE_RESERVE_BYTES")]
    pub store_reserve_bytes: Option<u64>,
    /// Where the registry keeps its records: `embedded` (a sled database in the data dir, one
    /// registry) or `etcd://host1:2379,host2:2379,...` (`etcds://` for TLS): several identical
    /// registry replicas share the etcd cluster [default: embedded]
    #[arg(long, env = "STEWARD_STORE")]
    pub store: Option<String>,
    /// Key prefix of this registry's records in etcd [default: /steward]
    #[arg(long, env = "STEWARD_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// CA certificate (PEM) that signs the etcd servers' certificates (etcds://)
    #[arg(long, env = "STEWARD_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd client-certificate authentication
    #[arg(long, env = "STEWARD_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert-file
    #[arg(long, env = "STEWARD_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// Lease of this replica in etcd: when a replica dies, another takes over its jobs within
    /// this time (e.g. "10s") [default: 10s]
    #[arg(long, env = "STEWARD_ETCD_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub etcd_lease_ttl: Option<Duration>,
    /// This replica's name among the replicas sharing an etcd store [default: the host name
    /// and the listen port]
    #[arg(long, env = "STEWARD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// The URL the other replicas reach this one at, for copying payload blobs [default:
    /// http(s)://<listen>]
    #[arg(long, env = "STEWARD_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Replicas that must hold an uploaded payload before the upload is acknowledged (fewer
    /// when fewer replicas run) [default: 2]
    #[arg(long, env = "STEWARD_BLOB_COPIES")]
    pub blob_copies: Option<usize>,
    /// Time a connection has to send a complete request head once it waits for one: after it
    /// opens and after each response (so also the keep-alive idle timeout) [default: 30s].
    #[arg(long, env = "STEWARD_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Open connections at most, in total; lowered to fit the open-file limit [default: 8192].
    #[arg(long, env = "STEWARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections at most from one client IP address [default: 256].
    #[arg(long, env = "STEWARD_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// Directory whose files are public downloads at /packages/{file}: the agent's .deb for
    /// /install.sh and `stewardctl cloud-init` [default: /usr/share/steward/packages].
    #[arg(long, env = "STEWARD_PACKAGES_DIR")]
    pub packages_dir: Option<PathBuf>,
    /// URL new agents reach this registry at, written into their config by /install.sh
    /// [default: the scheme and Host of the request for /install.sh].
    #[arg(long, env = "STEWARD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Versions kept of each node's own spec and each fragment (spec history; the oldest
    /// beyond this are deleted as new ones are written) [default: 100].
    #[arg(long, env = "STEWARD_SPEC_HISTORY_KEPT", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub spec_history_kept: Option<u32>,
    /// Serve the status page (/, /nodes/{id}, its event stream) and /metrics read-only
    /// without credentials (env: true/false, 1/0, yes/no, on/off).
    #[arg(long, env = "STEWARD_PUBLIC_STATUS", value_parser = clap::builder::BoolishValueParser::new())]
    pub public_status: bool,
}

/// The config file's shape (every field optional; unknown fields refused).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    read_token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    insecure_http: Option<bool>,
    #[serde(default, with = "humantime_serde_opt")]
    heartbeat_interval: Option<Duration>,
    stale_after: Option<u32>,
    down_after: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    max_wait: Option<Duration>,
    max_body_bytes: Option<usize>,
    store_reserve_bytes: Option<u64>,
    store: Option<String>,
    etcd_prefix: Option<String>,
    etcd_ca_file: Option<PathBuf>,
    etcd_cert_file: Option<PathBuf>,
    etcd_key_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    etcd_lease_ttl: Option<Duration>,
    replica_id: Option<String>,
    advertise_url: Option<String>,
    blob_copies: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    header_read_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    public_status: Option<bool>,
    packages_dir: Option<PathBuf>,
    public_url: Option<String>,
    spec_history_kept: Option<u32>,
    alerts: Option<crate::alerts::AlertsConfig>,
    limits: Option<SpecLimits>,
    #[serde(default)]
    oidc: Vec<crate::oidc::IssuerConfig>,
    sessions: Option<crate::sessions::SessionsConfig>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token_file: Option<PathBuf>,
    pub read_token_file: Option<PathBuf>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub insecure_http: bool,
    pub heartbeat_interval: Duration,
    pub stale_after: u32,
    pub down_after: u32,
    pub max_wait: Duration,
    pub max_body_bytes: usize,
    /// Bytes of the data dir's disk reserve (`disk.rs`); 0: none.
    pub store_reserve_bytes: u64,
    /// Where the records live.
    pub store: StoreConfig,
    /// hyper's header read timeout, which also bounds a kept-alive connection's idle time.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub public_status: bool,
    /// Served at /packages/{file}; see [`DEFAULT_PACKAGES_DIR`].
    pub packages_dir: PathBuf,
    /// Base URL written into agent configs by /install.sh (no trailing slash).
    pub public_url: Option<String>,
    /// Versions kept of each own spec and fragment.
    pub spec_history_kept: u32,
    /// Webhooks and their retry policy (config file only).
    pub alerts: crate::alerts::AlertsConfig,
    /// Upper bounds on specs (`[limits]`, each also `STEWARD_LIMITS_<KEY>`).
    pub limits: SpecLimits,
    /// Trusted single sign-on issuers (`[[oidc]]`, config file only).
    pub oidc: Vec<crate::oidc::IssuerConfig>,
    /// Session limits, port range, VLAN pool (`[sessions]`, config file only).
    pub sessions: crate::sessions::SessionsConfig,
}

/// Where the registry's Debian package puts the agent's package.
pub const DEFAULT_PACKAGES_DIR: &str = "/usr/share/steward/packages";

pub const DEFAULT_CONFIG: &str = "/etc/steward/registry.toml";

impl RegistryConfig {
    /// Resolves flags/env over the config file over defaults, and checks the result.
    pub fn resolve(mut args: ServeArgs) -> anyhow::Result<Self> {
        let mut file = match &args.config {
            Some(p) => load(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => load(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7700)));
        let tls = args.tls_cert.is_some() || file.tls_cert.is_some();
        let store = store_config(&mut args, &mut file, listen, tls)?;
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("tls_cert and tls_key must be given together"),
        };
        let cfg = RegistryConfig {
            listen,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/steward-registry")),
            admin_token_file: args.admin_token_file.or(file.admin_token_file),
            read_token_file: args.read_token_file.or(file.read_token_file),
            tls,
            insecure_http: args.insecure_http || file.insecure_http.unwrap_or(false),
            heartbeat_interval: args
                .heartbeat_interval
                .or(file.heartbeat_interval)
                .unwrap_or(Duration::from_secs(10)),
            stale_after: args.stale_after.or(file.stale_after).unwrap_or(3),
            down_after: args.down_after.or(file.down_after).unwrap_or(10),
            max_wait: args
                .max_wait
                .or(file.max_wait)
                .unwrap_or(Duration::from_secs(300)),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(1024 * 1024),
            store_reserve_bytes: args
                .store_reserve_bytes
                .or(file.store_reserve_bytes)
                .unwrap_or(32 * 1024 * 1024),
            store,
            header_read_timeout: args
                .header_read_timeout
                .or(file.header_read_timeout)
                .unwrap_or(Duration::from_secs(30)),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(8192),
            max_connections_per_address: args
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(256),
            public_status: args.public_status || file.public_status.unwrap_or(false),
            packages_dir: args
                .packages_dir
                .or(file.packages_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PACKAGES_DIR)),
            public_url: args
                .public_url
                .or(file.public_url)
                .map(|u| u.trim_end_matches('/').to_string()),
            spec_history_kept: args
                .spec_history_kept
                .or(file.spec_history_kept)
                .unwrap_or(100),
            alerts: file.alerts.unwrap_or_default(),
            limits: limits(file.limits)?,
            oidc: file.oidc,
            sessions: file.sessions.unwrap_or_default(),
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        if matches!(self.store, StoreConfig::Etcd { .. }) && self.admin_token_file.is_none() {
            bail!(
                "admin_token_file is required with an etcd store: every replica must accept the \
                 same admin token, so give each one the same file (e.g. a 0600 copy of one \
                 generated with `openssl rand -hex 32`)"
            );
        }
        self.sessions.check().map_err(|e| anyhow::anyhow!(e))?;
        if !(1..=100_000).contains(&self.spec_history_kept) {
            bail!("spec_history_kept must be 1-100000");
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            bail!("heartbeat_interval must be at least 100ms");
        }
        if self.stale_after == 0 || self.down_after <= self.stale_after {
            bail!(
                "need 0 < stale_after < down_after (got stale_after={}, down_after={})",
                self.stale_after,
                self.down_after
            );
        }
        if let Some(u) = &self.public_url {
            check_public_url(u)?;
        }
        if self.max_body_bytes < 1024 {
            bail!("max_body_bytes must be at least 1024");
        }
        if self.header_read_timeout < Duration::from_millis(100) {
            bail!("header_read_timeout must be at least 100ms");
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            bail!("max_connections and max_connections_per_address must be at least 1");
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure_http {
            bail!(
                "refusing to serve plain HTTP on non-loopback address {}: give --tls-cert and --tls-key, or --insecure-http",
                self.listen
            );
        }
        Ok(())
    }
}

/// `public_url` ends up in a shell script and in TOML: an http(s) URL without quotes, spaces or
/// other characters that would need escaping there.
fn check_public_url(u: &str) -> anyhow::Result<()> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    let ok_chars = u
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~:/[]%@".contains(c));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && ok_chars => Ok(()),
        _ => bail!(
            "public_url {u:?} must be an http:// or https:// URL such as \
             https://registry.example.net:7700 (letters, digits and -._~:/[]%@ only)"
        ),
    }
}

/// `[limits]` from the file, each overridden by its `STEWARD_LIMITS_<KEY>` variable.
fn limits(file: Option<SpecLimits>) -> anyhow::Result<SpecLimits> {
    let mut limits = file.unwrap_or_default();
    limits
        .apply_env(|k| std::env::var(k).ok())
        .map_err(anyhow::Error::msg)?;
    Ok(limits)
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
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:9000\"\nstale_after = 4\ndown_after = 8\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(p),
            stale_after: Some(5),
            ..Default::default()
        };
        let c = RegistryConfig::resolve(args).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.stale_after, 5);
        assert_eq!(c.down_after, 8);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
    }

    #[test]
    fn public_status_from_file_or_flag_and_the_example_config_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "public_status = true\n").unwrap();
        let c = RegistryConfig::resolve(ServeArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap();
        assert!(c.public_status);
        let c = RegistryConfig::resolve(ServeArgs::default()).unwrap();
        assert!(!c.public_status);
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/registry.toml.example"
        );
        let f = load(Path::new(example)).unwrap();
        assert_eq!(f.public_status, Some(false));
        // The example documents the real defaults.
        assert_eq!(f.limits, Some(SpecLimits::default()));
        assert_eq!(f.spec_history_kept, Some(100));
        let c = RegistryConfig::resolve(ServeArgs::default()).unwrap();
        assert_eq!(c.spec_history_kept, 100);
    }

    #[test]
    fn the_example_oidc_issuer_parses_when_uncommented() {
        let example = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/registry.toml.example"
        ));
        let block = example.split("# [[oidc]]").nth(1).unwrap();
        let mut text = String::from("[[oidc]]\n");
        for line in block.lines().skip(1).take_while(|l| l.starts_with('#')) {
            let l = line.trim_start_matches("# ");
            if l.contains(" = ") && !l.starts_with("jwks_file") {
                text.push_str(l);
                text.push('\n');
            }
        }
        let f: FileConfig = toml::from_str(&text).unwrap();
        let o = &f.oidc[0];
        assert_eq!(o.audience, "steward");
        assert_eq!(o.roles_claim, "groups");
        assert_eq!(o.roles["ops"], steward_proto::Role::Operator);
        assert!(o.jwks_url.is_some());
    }

    #[test]
    fn limits_come_from_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "[limits]\nmax_containers = 900\n").unwrap();
        let c = RegistryConfig::resolve(ServeArgs {
            config: Some(p.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.limits.max_containers, 900);
        assert_eq!(c.limits.max_vms, SpecLimits::default().max_vms);
        std::fs::write(&p, "[limits]\nmax_containers = -1\n").unwrap();
        let e = RegistryConfig::resolve(ServeArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("max_containers"), "{e:#}");
    }

    #[test]
    fn unknown_file_fields_and_plain_http_on_public_address_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let e = RegistryConfig::resolve(ServeArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `lisen`"), "{e:#}");
        let e = RegistryConfig::resolve(ServeArgs {
            listen: Some("0.0.0.0:7700".parse().unwrap()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("refusing to serve plain HTTP"));
    }

    #[test]
    fn connection_limits_and_store_reserve_default_and_are_checked() {
        let c = RegistryConfig::resolve(ServeArgs {
            config: Some("/dev/null".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(30));
        assert_eq!(
            (c.max_connections, c.max_connections_per_address),
            (8192, 256)
        );
        assert_eq!(c.store_reserve_bytes, 32 * 1024 * 1024);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(
            &p,
            "header_read_timeout = \"5s\"\nmax_connections_per_address = 9\n",
        )
        .unwrap();
        let c = RegistryConfig::resolve(ServeArgs {
            config: Some(p.clone()),
            max_connections_per_address: Some(7),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(5));
        assert_eq!(c.max_connections_per_address, 7);
        std::fs::write(&p, "header_read_timeout = \"10ms\"\n").unwrap();
        let e = RegistryConfig::resolve(ServeArgs {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("header_read_timeout"), "{e:#}");
    }

    #[test]
    fn packages_dir_defaults_and_public_url_is_checked() {
        let c = RegistryConfig::resolve(ServeArgs {
            config: Some("/dev/null".into()),
            public_url: Some("https://reg.example:7700/".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.packages_dir, PathBuf::from(DEFAULT_PACKAGES_DIR));
        assert_eq!(c.public_url.as_deref(), Some("https://reg.example:7700"));
        for bad in [
            "reg.example",
            "https://",
            "https://a b",
            "https://x/'$(id)'",
        ] {
            let e = RegistryConfig::resolve(ServeArgs {
                config: Some("/dev/null".into()),
                public_url: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(e.to_string().contains("public_url"), "{bad}: {e:#}");
        }
    }
}
