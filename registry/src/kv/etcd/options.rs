//! Connection options of the etcd store ([`EtcdOptions`]): endpoints, key prefix, TLS files,
//! lease TTL and request timeout, and the `etcd://h1:2379,h2:2379[/prefix]` URL parser
//! (`etcds://` = TLS).

use std::path::PathBuf;
use std::time::Duration;

/// How to reach the etcd cluster and how the registry uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs (`http://h1:2379`, `https://h2:2379`); several for failover.
    pub endpoints: Vec<String>,
    /// Every key the registry writes is stored under `{prefix}/` (default `/steward`).
    pub prefix: String,
    /// CA certificate (PEM) that signed the etcd servers' certificates; needed for `https://`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) when etcd requires client certificates (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// TTL of this process's lease (session keys, leadership); default 10 s.
    pub lease_ttl: Duration,
    /// Every request to etcd gives up after this long (`KvError::Unavailable`); default 5 s.
    pub request_timeout: Duration,
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/steward";

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: DEFAULT_PREFIX.to_string(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            lease_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A store URL or an etcd option that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdConfigError {
    #[error("store URL {url:?} must start with etcd:// (plain) or etcds:// (TLS)")]
    Scheme { url: String },
    #[error("store URL {url:?} names no etcd endpoint (expected etcd://host:port[,host:port...])")]
    NoEndpoints { url: String },
    #[error("endpoint {endpoint:?} in store URL {url:?}: {reason}")]
    Endpoint {
        url: String,
        endpoint: String,
        reason: String,
    },
    #[error("etcd prefix {prefix:?}: {reason}")]
    Prefix { prefix: String, reason: String },
    #[error("cannot read etcd {what} {}: {source}", .path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd {0}")]
    Tls(String),
}

impl EtcdOptions {
    /// Options for `etcd://h1:2379,h2:2379[/prefix]` (`etcds://` for TLS: set `ca_file` too).
    /// Everything not in the URL keeps its default.
    pub fn from_url(url: &str) -> Result<EtcdOptions, EtcdConfigError> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("etcd://") {
            ("http", r)
        } else if let Some(r) = url.strip_prefix("etcds://") {
            ("https", r)
        } else {
            return Err(EtcdConfigError::Scheme { url: url.into() });
        };
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                continue;
            }
            check_host_port(host).map_err(|reason| EtcdConfigError::Endpoint {
                url: url.into(),
                endpoint: host.into(),
                reason,
            })?;
            endpoints.push(format!("{scheme}://{host}"));
        }
        if endpoints.is_empty() {
            return Err(EtcdConfigError::NoEndpoints { url: url.into() });
        }
        let mut opts = EtcdOptions {
            endpoints,
            ..EtcdOptions::default()
        };
        if let Some(p) = prefix.filter(|p| *p != "/") {
            opts.prefix = p.trim_end_matches('/').to_string();
        }
        opts.check_prefix()?;
        Ok(opts)
    }

    /// The prefix without a trailing `/` (`""` for the root).
    pub(super) fn check_prefix(&self) -> Result<(), EtcdConfigError> {
        let bad = |reason: &str| EtcdConfigError::Prefix {
            prefix: self.prefix.clone(),
            reason: reason.into(),
        };
        if self.prefix.contains(['\0', ' ', ',']) {
            return Err(bad("must not contain spaces, commas or NUL"));
        }
        if !self.prefix.is_empty() && !self.prefix.starts_with('/') {
            return Err(bad("must start with '/'"));
        }
        Ok(())
    }

    /// `etcd://h1:2379,h2:2379/steward` (`etcds://` when TLS).
    pub fn describe(&self) -> String {
        let tls = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| {
                e.trim_start_matches("http://")
                    .trim_start_matches("https://")
            })
            .collect();
        let scheme = if tls { "etcds" } else { "etcd" };
        format!(
            "{scheme}://{}{}",
            hosts.join(","),
            self.prefix.trim_end_matches('/')
        )
    }

    /// The TLS configuration, when an endpoint is `https://` or a TLS file is given.
    pub(super) fn tls(&self) -> Result<Option<etcd_client::TlsOptions>, EtcdConfigError> {
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        if !https && self.ca_file.is_none() && self.cert_file.is_none() {
            return Ok(None);
        }
        let read = |what: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| EtcdConfigError::File {
                what,
                path: path.clone(),
                source,
            })
        };
        let mut tls = etcd_client::TlsOptions::new();
        match &self.ca_file {
            Some(ca) => {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("CA file", ca)?));
            }
            None => {
                return Err(EtcdConfigError::Tls(
                    "TLS needs a CA file (etcd ca_file) to check the servers' certificates".into(),
                ))
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("client certificate", cert)?,
                    read("client key", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(EtcdConfigError::Tls(
                    "client certificate and key must be given together (cert_file and key_file)"
                        .into(),
                ))
            }
        }
        Ok(Some(tls))
    }
}

fn check_host_port(host: &str) -> Result<(), String> {
    let Some((name, port)) = host.rsplit_once(':') else {
        return Err("missing :port (etcd's client port is usually 2379)".into());
    };
    if name.is_empty() {
        return Err("missing host name before the port".into());
    }
    if name.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("{name:?} is not a host name"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port number")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_tls_urls_with_prefix() {
        let o = EtcdOptions::from_url("etcd://h1:2379,h2:2379").unwrap();
        assert_eq!(o.endpoints, ["http://h1:2379", "http://h2:2379"]);
        assert_eq!(o.prefix, "/steward");
        assert_eq!(o.describe(), "etcd://h1:2379,h2:2379/steward");
        let o = EtcdOptions::from_url("etcds://[::1]:2379/fleet/a/").unwrap();
        assert_eq!(o.endpoints, ["https://[::1]:2379"]);
        assert_eq!(o.prefix, "/fleet/a");
        assert_eq!(o.describe(), "etcds://[::1]:2379/fleet/a");
    }

    #[test]
    fn errors_name_the_bad_part() {
        let e = EtcdOptions::from_url("http://h1:2379").unwrap_err();
        assert!(e.to_string().contains("etcd://"), "{e}");
        let e = EtcdOptions::from_url("etcd://").unwrap_err();
        assert!(matches!(e, EtcdConfigError::NoEndpoints { .. }), "{e}");
        let e = EtcdOptions::from_url("etcd://h1:2379,h2").unwrap_err();
        assert!(
            e.to_string().contains("\"h2\"") && e.to_string().contains("port"),
            "{e}"
        );
        let e = EtcdOptions::from_url("etcd://h1:99999").unwrap_err();
        assert!(e.to_string().contains("\"99999\""), "{e}");
    }

    #[test]
    fn tls_needs_a_ca_and_a_complete_client_identity() {
        let mut o = EtcdOptions::from_url("etcds://h1:2379").unwrap();
        assert!(o.tls().unwrap_err().to_string().contains("ca_file"));
        o.ca_file = Some("/nonexistent/ca.pem".into());
        let e = o.tls().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
