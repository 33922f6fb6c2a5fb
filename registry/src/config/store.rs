//! The store settings (`store`, `etcd_*`, `replica_id`, `advertise_url`, `blob_copies`):
//! flags > env > file > defaults, checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use super::{FileConfig, ServeArgs};

/// Where the registry keeps its records.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A sled database in the data dir: one registry process.
    Embedded,
    /// An etcd cluster shared by several registry replicas.
    Etcd {
        /// The `etcd://` or `etcds://` URL as given.
        url: String,
        /// Key prefix (`--etcd-prefix`), over one given in the URL, over `/steward`.
        prefix: Option<String>,
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        lease_ttl: Duration,
        replica_id: String,
        /// Where the other replicas reach this one (blob copies).
        advertise_url: String,
        /// Replicas holding an upload before it is acknowledged.
        blob_copies: usize,
    },
}

/// The store settings: flags > env > file > defaults.
pub(super) fn store_config(
    args: &mut ServeArgs,
    file: &mut FileConfig,
    listen: SocketAddr,
    tls: bool,
) -> anyhow::Result<StoreConfig> {
    let port = listen.port();
    let url = args.store.take().or(file.store.take());
    let url = match url.as_deref().map(str::trim) {
        None | Some("" | "embedded") => return Ok(StoreConfig::Embedded),
        Some(u) if u.starts_with("etcd://") || u.starts_with("etcds://") => u.to_string(),
        Some(u) => bail!(
            "store: {u:?} is not a store: give \"embedded\" or etcd://host1:2379,host2:2379 \
             (etcds:// for TLS)"
        ),
    };
    let prefix = args.etcd_prefix.take().or(file.etcd_prefix.take());
    if let Some(p) = &prefix {
        if !p.starts_with('/') || p.len() < 2 {
            bail!("etcd_prefix: {p:?} must start with '/' and name something (e.g. /steward)");
        }
    }
    let lease_ttl = args
        .etcd_lease_ttl
        .or(file.etcd_lease_ttl)
        .unwrap_or(Duration::from_secs(10));
    if lease_ttl < Duration::from_secs(2) {
        bail!("etcd_lease_ttl must be at least 2s");
    }
    let replica_id = args
        .replica_id
        .take()
        .or(file.replica_id.take())
        .unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "registry".into());
            format!("{host}-{port}")
        });
    if replica_id.is_empty()
        || !replica_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("replica_id: {replica_id:?} must be letters, digits, '-', '_' or '.'");
    }
    let cert_file = args.etcd_cert_file.take().or(file.etcd_cert_file.take());
    let key_file = args.etcd_key_file.take().or(file.etcd_key_file.take());
    if cert_file.is_some() != key_file.is_some() {
        bail!("etcd_cert_file and etcd_key_file must be given together");
    }
    let advertise_url = match args.advertise_url.take().or(file.advertise_url.take()) {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if listen.ip().is_unspecified() => bail!(
            "advertise_url is required with an etcd store when listening on {listen}: give the \
             URL the other replicas reach this one at (e.g. https://registry-1.example:7700)"
        ),
        None => format!("{}://{listen}", if tls { "https" } else { "http" }),
    };
    if !(advertise_url.starts_with("http://") || advertise_url.starts_with("https://")) {
        bail!("advertise_url: {advertise_url:?} must be an http:// or https:// URL");
    }
    let blob_copies = args.blob_copies.or(file.blob_copies).unwrap_or(2);
    if blob_copies == 0 {
        bail!("blob_copies must be at least 1");
    }
    Ok(StoreConfig::Etcd {
        advertise_url,
        blob_copies,
        url,
        prefix,
        ca_file: args.etcd_ca_file.take().or(file.etcd_ca_file.take()),
        cert_file,
        key_file,
        lease_ttl,
        replica_id,
    })
}
