//! Client connections of the HTTP(S) server: caps on open connections in total and per client
//! IP address (an axum-server acceptor: a connection over a cap is closed at once, before any
//! TLS handshake), a deadline for a new connection's first byte (hyper's header read timeout,
//! set in `server.rs`, takes over once bytes arrive and between kept-alive requests), and the
//! open-file limit, raised to its hard limit at start-up.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// File descriptors kept for the store, blobs, logs and listeners beyond client connections.
pub const FD_HEADROOM: u64 = 128;

/// Raises the soft open-file limit to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(e) => tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit"),
        }
    }
    Some(soft)
}

/// The total cap that fits `nofile` open files.
pub fn fit_to_nofile(max_connections: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => {
            let fit = usize::try_from(n.saturating_sub(FD_HEADROOM).max(1)).unwrap_or(usize::MAX);
            max_connections.min(fit)
        }
        None => max_connections,
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Shared {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection from `ip`, or `None` over a cap.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut c = self.lock();
        let mine = c.per_address.get(&ip).copied().unwrap_or(0);
        if c.total >= self.max_total || mine >= self.max_per_address {
            return None;
        }
        c.total += 1;
        c.per_address.insert(ip, mine + 1);
        Some(Slot {
            shared: self.clone(),
            ip,
        })
    }
}

/// One open connection's place under the caps, given back when dropped.
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.shared.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&self.ip);
            }
        }
    }
}

/// An acceptor enforcing the caps around `inner` (the plain or the TLS acceptor).
#[derive(Debug, Clone)]
pub struct LimitAcceptor<A> {
    inner: A,
    shared: Arc<Shared>,
    first_byte: Duration,
}

impl<A> LimitAcceptor<A> {
    pub fn new(inner: A, max_total: usize, max_per_address: usize, first_byte: Duration) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                max_total,
                max_per_address,
                counts: Mutex::default(),
            }),
            first_byte,
        }
    }
}

type AcceptFuture<St, Sv> = Pin<Box<dyn Future<Output = io::Result<(St, Sv)>> + Send>>;

impl<A, S> Accept<TcpStream, S> for LimitAcceptor<A>
where
    A: Accept<TcpStream, S> + Clone + Send + 'static,
    A::Future: Send,
    A::Stream: Send + 'static,
    S: Send + 'static,
{
    type Stream = FirstByteDeadline<A::Stream>;
    type Service = Counted<A::Service>;
    type Future = AcceptFuture<Self::Stream, Self::Service>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = match stream.peer_addr() {
            Ok(peer) => self.shared.take(peer.ip()),
            Err(_) => None,
        };
        let Some(slot) = slot else {
            tracing::debug!(peer = ?stream.peer_addr().ok(), "connection cap reached: closed");
            // Dropping the stream closes it now.
            return Box::pin(async { Err(io::Error::other("connection cap reached")) });
        };
        let inner = self.inner.clone();
        let first_byte = self.first_byte;
        Box::pin(async move {
            let (stream, service) = inner.accept(stream, service).await?;
            Ok((
                FirstByteDeadline::new(stream, first_byte),
                Counted {
                    inner: service,
                    _slot: Arc::new(slot),
                },
            ))
        })
    }
}

/// A connection's service, holding its slot: hyper drops it (and each request's clone) when
/// the connection and its last response are done.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    _slot: Arc<Slot>,
}

impl<S, R> tower::Service<R> for Counted<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.inner.call(req)
    }
}

/// A stream whose reads fail when no byte arrived within the deadline of its opening: hyper
/// first reads a few bytes to tell HTTP/1 from HTTP/2, with no timeout of its own.
pub struct FirstByteDeadline<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByteDeadline<S> {
    fn new(inner: S, after: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(after))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = match this.deadline.as_mut() {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn caps_count_per_address_and_in_total_and_slots_come_back() {
        let a = LimitAcceptor::new((), 3, 2, Duration::from_secs(1));
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = a.shared.take(ip1).unwrap();
        let _s2 = a.shared.take(ip1).unwrap();
        assert!(a.shared.take(ip1).is_none(), "per-address cap");
        let _s3 = a.shared.take(ip2).unwrap();
        assert!(a.shared.take(ip2).is_none(), "total cap");
        drop(s1);
        assert!(
            a.shared.take(ip1).is_some(),
            "a closed connection's slot is back"
        );
        assert_eq!(fit_to_nofile(8192, Some(1024)), 1024 - FD_HEADROOM as usize);
        assert_eq!(fit_to_nofile(100, Some(1024)), 100);
    }
}
