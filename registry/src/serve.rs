//! The HTTP(S) accept loop: accepts TCP connections, hands each to the acceptor (connection
//! caps, first-byte deadline, TLS: `connections.rs`) and serves it with hyper (HTTP/1.1 and
//! HTTP/2, so an agent's long-poll and heartbeats can share one connection), with the peer
//! address as axum's `ConnectInfo`. A failed accept (out of file descriptors, ...) is counted
//! in `steward_registry_accept_errors_total` and logged (at most once a second, with the count
//! since), and accepting resumes after a short pause instead of silently. On shutdown it stops
//! accepting and lets open connections finish their requests for up to a grace period.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use axum_server::accept::Accept;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::connections::Counted;
use crate::metrics::Metrics;

/// Pause after a failed accept: short, but long enough not to spin while out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(20);

/// Serves `router` on `listener` through `acceptor` until `shutdown` completes, then waits up
/// to `grace` for open connections to finish.
pub async fn serve<A>(
    listener: std::net::TcpListener,
    acceptor: A,
    builder: Builder<TokioExecutor>,
    router: Router,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()>
where
    A: Accept<TcpStream, Router, Service = Counted<Router>> + Clone + Send + Sync + 'static,
    A::Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A::Future: Send,
{
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(());
    let mut errors = ErrorLog::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    metrics.accept_errors.inc();
                    errors.failed(&e);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        // Called here, not in the connection's task: a connection over a cap is closed before
        // the next accept, so a burst cannot hold descriptors beyond the caps.
        let accepted = acceptor.accept(tcp, router.clone());
        let conn = Conn {
            builder: builder.clone(),
            stop: stop_rx.clone(),
            _open: open.clone(),
        };
        tokio::spawn(conn.run(accepted, peer));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + grace;
    while Arc::strong_count(&open) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// What serving one accepted connection needs.
struct Conn {
    builder: Arc<Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    /// Counts open connections for the graceful shutdown.
    _open: Arc<()>,
}

impl Conn {
    async fn run<S>(
        mut self,
        accepted: impl Future<Output = io::Result<(S, Counted<Router>)>>,
        peer: SocketAddr,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Refused by a cap, timed out before its first byte, or a failed TLS handshake:
        // the acceptor has dealt with it.
        let Ok((stream, router)) = accepted.await else {
            return;
        };
        let svc =
            tower::ServiceExt::map_request(router, move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc));
        tokio::pin!(conn);
        tokio::select! {
            _ = &mut conn => return,
            _ = self.stop.wait_for(|s| *s) => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// Logs accept errors at most once a second, with how many happened since the last line.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl ErrorLog {
    fn failed(&mut self, e: &io::Error) {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let hint = match e.raw_os_error() {
            Some(nix::libc::EMFILE) | Some(nix::libc::ENFILE) => {
                "out of file descriptors: raise LimitNOFILE (the registry fits max_connections \
                 under the soft limit) or lower max_connections"
            }
            _ => "accepting resumes after a short pause",
        };
        tracing::warn!(error = %e, failed = self.unlogged, hint, "accepting a connection failed");
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }
}
