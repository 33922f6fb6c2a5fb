//! Start-up: resolve secrets, open the store (embedded or etcd), start the store watch, the jobs
//! (health monitor, rollout drivers: on the replica holding the leadership) and the heartbeat
//! batches, serve HTTP(S).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

use std::sync::Arc;

use crate::config::{RegistryConfig, StoreConfig};
use crate::kv::etcd::{EtcdKv, EtcdOptions};
use crate::kv::sled::SledKv;
use crate::kv::Kv;
use crate::state::{AppState, Settings};
use crate::store::Store;

/// Reads a token file (trimmed); refuses an empty one.
fn read_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let t = t.trim().to_string();
    anyhow::ensure!(
        t.len() >= 16,
        "token in {} is shorter than 16 characters",
        path.display()
    );
    Ok(t)
}

/// The admin token: from the configured file, or generated once into DATA_DIR/admin.token.
fn admin_token(cfg: &RegistryConfig) -> anyhow::Result<String> {
    if let Some(p) = &cfg.admin_token_file {
        return read_token(p);
    }
    let path = cfg.data_dir.join("admin.token");
    if path.exists() {
        return read_token(&path);
    }
    let token = crate::auth::new_secret("admin");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    tracing::warn!(path = %path.display(), "no admin token configured: generated one (mode 0600)");
    Ok(token)
}

/// sha256 (hex) of the first certificate in a PEM file: what an agent pins (`ca_pin_sha256`).
fn cert_pin(path: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let cert = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading TLS certificate {}", path.display()))?
        .next()
        .with_context(|| format!("no CERTIFICATE in {}", path.display()))?
        .with_context(|| format!("reading TLS certificate {}", path.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(cert.as_ref())))
}

/// Opens the store and builds the shared state (without serving).
pub async fn build_state(cfg: &RegistryConfig) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let admin = admin_token(cfg)?;
    let read = cfg.read_token_file.as_deref().map(read_token).transpose()?;
    let store = Store::new(open_kv(cfg).await?);
    let settings = Settings {
        heartbeat_interval: cfg.heartbeat_interval,
        stale_after: cfg.stale_after,
        down_after: cfg.down_after,
        max_wait: cfg.max_wait,
        public_status: cfg.public_status,
        tls: cfg.tls.is_some(),
        packages_dir: cfg.packages_dir.clone(),
        public_url: cfg.public_url.clone(),
        tls_pin: cfg
            .tls
            .as_ref()
            .map(|(cert, _)| cert_pin(cert))
            .transpose()?,
        limits: cfg.limits.clone(),
        spec_history_kept: cfg.spec_history_kept as usize,
        sessions: cfg.sessions.clone(),
        replica_id: match &cfg.store {
            StoreConfig::Embedded => None,
            StoreConfig::Etcd { replica_id, .. } => Some(replica_id.clone()),
        },
    };
    let state = AppState::new(settings, store, &cfg.data_dir, &admin, read.as_deref()).await?;
    crate::replica::follow_store(&state, state.loaded_at + 1).await?;
    Ok(state)
}

/// The HTTP client replicas use to copy blobs between them; with TLS it trusts the registry's
/// own certificate (replicas share it, or one CA signs them all: see docs/INSTALL.md).
fn peer_client(cfg: &RegistryConfig) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
    if let Some((cert, _)) = &cfg.tls {
        let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem).context("tls_cert")? {
            b = b.add_root_certificate(c);
        }
    }
    b.build().context("building the replicas' HTTP client")
}

/// Opens the store backend the config names: the embedded sled database in the data dir, or a
/// connection to etcd.
pub async fn open_kv(cfg: &RegistryConfig) -> anyhow::Result<Arc<dyn Kv>> {
    Ok(match &cfg.store {
        StoreConfig::Embedded => Arc::new(
            SledKv::open(&cfg.data_dir, cfg.store_reserve_bytes)
                .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?,
        ),
        StoreConfig::Etcd {
            url,
            prefix,
            ca_file,
            cert_file,
            key_file,
            lease_ttl,
            ..
        } => {
            let mut opts = EtcdOptions::from_url(url).context("store")?;
            if let Some(p) = prefix {
                opts.prefix = p.clone();
            }
            opts.ca_file = ca_file.clone();
            opts.cert_file = cert_file.clone();
            opts.key_file = key_file.clone();
            opts.lease_ttl = *lease_ttl;
            Arc::new(
                EtcdKv::connect(opts)
                    .await
                    .with_context(|| format!("connecting to the store {url}"))?,
            )
        }
    })
}

/// Serves until SIGINT/SIGTERM.
pub async fn serve(cfg: RegistryConfig) -> anyhow::Result<()> {
    tracing::info!(
        listen = %cfg.listen,
        data_dir = %cfg.data_dir.display(),
        admin_token_file = ?cfg.admin_token_file,
        read_token = cfg.read_token_file.is_some(),
        tls = cfg.tls.is_some(),
        heartbeat_interval = ?cfg.heartbeat_interval,
        stale_after = cfg.stale_after,
        down_after = cfg.down_after,
        max_wait = ?cfg.max_wait,
        max_body_bytes = cfg.max_body_bytes,
        store_reserve_bytes = cfg.store_reserve_bytes,
        header_read_timeout = ?cfg.header_read_timeout,
        public_status = cfg.public_status,
        packages_dir = %cfg.packages_dir.display(),
        public_url = ?cfg.public_url,
        webhooks = cfg.alerts.webhooks.len(),
        "starting steward-registry"
    );
    let state = build_state(&cfg).await?;
    state.alerts.start(&cfg.alerts)?;
    if let StoreConfig::Etcd {
        replica_id,
        advertise_url,
        blob_copies,
        ..
    } = &cfg.store
    {
        let peers = crate::payloads::peers::Peers::new(
            replica_id.clone(),
            advertise_url.clone(),
            *blob_copies,
            crate::payloads::peers::PeerToken::new(admin_token(&cfg)?),
            peer_client(&cfg)?,
        );
        let held = peers
            .announce(&state.store, state.blobs())
            .await
            .context("registering this replica in the store")?;
        tracing::info!(replica = %replica_id, url = %advertise_url, blobs = held, "replica registered");
        state.payloads.set_peers(peers);
    }
    let jobs = tokio::spawn(crate::replica::run_jobs(state.clone()));
    let batches = tokio::spawn(crate::replica::publish_heartbeats(state.clone()));
    let health = tokio::spawn(crate::nodes::health_writer(state.nodes.clone()));
    let used = tokio::spawn(crate::replica::store_credential_use(state.clone()));
    state
        .oidc
        .configure(&cfg.oidc)
        .await
        .context("single sign-on ([[oidc]] in the config)")?;
    let jwks = tokio::spawn(state.oidc.clone().refresh());
    let collected = state
        .payloads
        .collect_at_start()
        .await
        .context("cleaning the blob store")?;
    if collected > 0 {
        tracing::info!(
            files = collected,
            "removed interrupted uploads and unreferenced blobs"
        );
    }
    let app = crate::api::router(state.clone(), cfg.max_body_bytes);
    listen(&cfg, app, state.metrics.clone()).await?;
    jobs.abort();
    batches.abort();
    health.abort();
    used.abort();
    jwks.abort();
    if let Err(e) = state.credentials.flush_last_used().await {
        tracing::warn!(error = %e, "storing the credentials' last use failed");
    }
    // Health changes still queued are stored before the process ends.
    if let Err(e) = state.nodes.store_health().await {
        tracing::warn!(error = %format!("{e:#}"), "storing the last health changes failed");
    }
    Ok(())
}

/// Listens on `cfg.listen` (HTTP or HTTPS) and serves `app` until a shutdown signal, with the
/// connection caps fit to the open-file limit.
async fn listen(
    cfg: &RegistryConfig,
    app: axum::Router,
    metrics: Arc<crate::metrics::Metrics>,
) -> anyhow::Result<()> {
    let nofile = crate::connections::raise_nofile_limit();
    let max_total = crate::connections::fit_to_nofile(cfg.max_connections, nofile);
    if max_total < cfg.max_connections {
        tracing::warn!(max_connections = cfg.max_connections, open_file_limit = ?nofile,
            lowered_to = max_total, "max_connections lowered to fit the open-file limit");
    }
    tracing::info!(max_connections = max_total,
        max_connections_per_address = cfg.max_connections_per_address, open_file_limit = ?nofile,
        "connection limits");
    let (per_address, first_byte) = (cfg.max_connections_per_address, cfg.header_read_timeout);
    use crate::connections::LimitAcceptor;
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    timeouts(&mut builder, cfg.header_read_timeout);
    let grace = std::time::Duration::from_secs(5);
    let shutdown = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
    };
    match &cfg.tls {
        Some((cert, key)) => {
            // One crypto provider for the whole process (ring), chosen explicitly.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS cert {} / key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            tracing::info!(addr = %cfg.listen, "listening (https)");
            let acceptor = LimitAcceptor::new(
                axum_server::tls_rustls::RustlsAcceptor::new(tls),
                max_total,
                per_address,
                first_byte,
            );
            let l = listener(cfg.listen)?;
            crate::serve::serve(l, acceptor, builder, app, metrics, shutdown, grace).await?;
        }
        None => {
            tracing::info!(addr = %cfg.listen, "listening (http)");
            let acceptor = LimitAcceptor::new(
                axum_server::accept::DefaultAcceptor::new(),
                max_total,
                per_address,
                first_byte,
            );
            let l = listener(cfg.listen)?;
            crate::serve::serve(l, acceptor, builder, app, metrics, shutdown, grace).await?;
        }
    }
    Ok(())
}

/// hyper's timeouts: HTTP/1's header read timeout runs whenever a connection waits for a
/// request head (after it opens, and between kept-alive requests), so it is also the idle
/// timeout; a request in progress (a long-poll, an event stream) is not bounded by it. HTTP/2
/// connections (TLS only) are pinged at that interval and closed when the ping goes unanswered.
fn timeouts(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_read: std::time::Duration,
) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(header_read)
        .keep_alive_timeout(std::time::Duration::from_secs(20));
}

/// Listen backlog: large enough that a whole fleet reconnecting after a restart is not
/// dropped at the SYN queue (tokio's `bind` uses 128).
const LISTEN_BACKLOG: u32 = 4096;

fn listener(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("creating the listening socket")?;
    sock.set_reuseaddr(true)?;
    sock.bind(addr).with_context(|| format!("binding {addr}"))?;
    let l = sock.listen(LISTEN_BACKLOG)?;
    Ok(l.into_std()?)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
