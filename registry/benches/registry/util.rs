//! Shared helpers: child processes (with a kill-on-drop guard), a bare HTTP/1.1 keep-alive
//! client, enrolment, /proc probes and latency percentiles.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// A child process that is killed (SIGKILL) and reaped when dropped, also on panic.
pub struct ChildGuard {
    pub name: &'static str,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM, then waits at most `max` for the child to exit (SIGKILL after that).
    #[allow(dead_code)] // the scale bench's
    pub fn terminate(&mut self, max: Duration) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + max;
        while c.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("{} did not exit within {max:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Fails when the child already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("{} exited early with {st}", self.name);
            }
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr, guard: &mut ChildGuard) -> Result<()> {
    wait_listening_for(addr, guard, Duration::from_secs(30)).await
}

/// Waits at most `max` until something accepts TCP connections on `addr`.
pub async fn wait_listening_for(
    addr: SocketAddr,
    guard: &mut ChildGuard,
    max: Duration,
) -> Result<()> {
    let deadline = Instant::now() + max;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        guard.check_alive()?;
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr} within {max:?}", guard.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The registry binary the benches run: `STEWARD_BENCH_REGISTRY` when set (to measure another
/// build, e.g. an older one, with the same bench), else the one cargo built.
pub fn registry_bin() -> PathBuf {
    std::env::var_os("STEWARD_BENCH_REGISTRY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_steward-registry")))
}

/// The real `steward-registry` binary on a free port with a temporary data dir.
pub struct Registry {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub admin: String,
    pub data: PathBuf,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Registry {
    /// Starts the registry; `extra` are additional `serve` flags.
    pub async fn start(extra: &[&str]) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let (data, log) = (dir.path().join("data"), dir.path().join("registry.log"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut reg = Self::start_on(&data, &log, addr, extra, Duration::from_secs(30)).await?;
        reg._dir = Some(dir);
        Ok(reg)
    }

    /// Starts the registry on the data dir `data` (kept when the registry stops), listening on
    /// `addr`, logging to `log` (appended); waits at most `max` for it to listen.
    pub async fn start_on(
        data: &std::path::Path,
        log: &std::path::Path,
        addr: SocketAddr,
        extra: &[&str],
        max: Duration,
    ) -> Result<Registry> {
        let (data, log) = (data.to_path_buf(), log.to_path_buf());
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(registry_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, _) in std::env::vars() {
            if k.starts_with("STEWARD_") {
                cmd.env_remove(k);
            }
        }
        let mut guard = ChildGuard::new("steward-registry", cmd.spawn()?);
        wait_listening_for(addr, &mut guard, max).await?;
        let token_file = extra
            .iter()
            .position(|a| *a == "--admin-token-file")
            .and_then(|i| extra.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| data.join("admin.token"));
        let admin = std::fs::read_to_string(&token_file)
            .context("reading admin.token")?
            .trim()
            .to_string();
        Ok(Registry {
            guard,
            addr,
            admin,
            data,
            log,
            _dir: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
}

/// One keep-alive HTTP/1.1 connection (hyper's low-level client).
pub struct Conn {
    tx: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            tx,
            host: HeaderValue::from_str(&addr.to_string())?,
        })
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a.clone());
        }
        if body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        Ok(b.body(Full::new(body.unwrap_or_default()))?)
    }

    /// Sends and reads the whole answer; `sent` (if any) is bumped once the request is queued
    /// on the connection, before the answer is awaited.
    pub async fn send_counted(
        &mut self,
        req: Request<Full<Bytes>>,
        sent: Option<&AtomicUsize>,
    ) -> Result<(StatusCode, Bytes)> {
        self.tx.ready().await?;
        let fut = self.tx.send_request(req);
        if let Some(s) = sent {
            s.fetch_add(1, Ordering::SeqCst);
        }
        let resp = fut.await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends and returns the answer with its body unread (for streams).
    #[allow(dead_code)] // the scale bench's
    pub async fn send_streaming(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        self.tx.ready().await?;
        Ok(self.tx.send_request(req).await?)
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        self.send_counted(req, None).await
    }

    /// JSON convenience call; returns the status and the parsed body (Null when not JSON).
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let auth = bearer(token)?;
        let body = body.map(|b| Bytes::from(b.to_string()));
        let req = self.request(method, path, Some(&auth), body)?;
        let (st, bytes) = self.send(req).await?;
        Ok((st, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

/// Connects `n` connections, at most `parallel` handshakes at a time (keeps the listen backlog
/// from overflowing).
pub async fn connect_many(addr: SocketAddr, n: usize, parallel: usize) -> Result<Vec<Conn>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = parallel.min(n - out.len());
        let futs: Vec<_> = (0..batch).map(|_| Conn::connect(addr)).collect();
        for c in futures_util::future::join_all(futs).await {
            out.push(c?);
        }
    }
    Ok(out)
}

/// A node's credentials.
#[derive(Clone, Debug)]
pub struct NodeCred {
    pub id: String,
    pub secret: String,
}

/// Creates one enrollment token with `n` uses and `labels`, then enrols `n` nodes with machine
/// ids `<prefix>-<i>` over `parallel` connections. Returns the nodes and the elapsed time.
pub async fn enroll_many(
    reg: &Registry,
    n: usize,
    prefix: &str,
    labels: Value,
    parallel: usize,
) -> Result<(Vec<NodeCred>, Duration)> {
    let mut admin = Conn::connect(reg.addr).await?;
    let body = json!({"uses": n, "labels": labels, "description": format!("bench {prefix}")});
    let (st, tok) = admin
        .call(
            Method::POST,
            "/v1/enrollment-tokens",
            &reg.admin,
            Some(&body),
        )
        .await?;
    if st != StatusCode::CREATED {
        bail!("creating an enrollment token: {st} {tok}");
    }
    let token = tok["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token in {tok}"))?
        .to_string();
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (next, token, prefix) = (next.clone(), token.clone(), prefix.to_string());
        let addr = reg.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return Ok::<_, anyhow::Error>(got);
                }
                let machine = format!("{prefix}-{i:06}");
                let body =
                    json!({"token": token, "facts": {"machine_id": machine, "hostname": machine}});
                let req = conn.request(
                    Method::POST,
                    "/v1/enroll",
                    None,
                    Some(Bytes::from(body.to_string())),
                )?;
                let (st, bytes) = conn.send(req).await?;
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if st != StatusCode::OK {
                    bail!("enrolling {machine}: {st} {v}");
                }
                let field = |k: &str| {
                    v[k].as_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow!("no {k} in {v}"))
                };
                got.push((
                    i,
                    NodeCred {
                        id: field("node_id")?,
                        secret: field("node_secret")?,
                    },
                ));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort_by_key(|(i, _)| *i);
    Ok((all.into_iter().map(|(_, c)| c).collect(), elapsed))
}

/// Sequence number of the newest event (pages forward from `from`).
pub async fn last_event_seq(conn: &mut Conn, admin: &str, from: u64) -> Result<u64> {
    let mut cursor = from;
    loop {
        let path = format!("/v1/events?after={cursor}&limit=1000");
        let (st, v) = conn.call(Method::GET, &path, admin, None).await?;
        if st != StatusCode::OK {
            bail!("GET {path}: {st} {v}");
        }
        let page = v
            .as_array()
            .ok_or_else(|| anyhow!("events: not an array: {v}"))?;
        if let Some(seq) = page.last().and_then(|e| e["seq"].as_u64()) {
            cursor = seq;
        }
        if page.len() < 1000 {
            return Ok(cursor);
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (children inherit it).
#[allow(dead_code)] // not every bench
pub fn raise_nofile() -> String {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => format!("{hard} (was {soft})"),
            Err(e) => format!("{soft} (raising to {hard} failed: {e})"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

/// `<target>/bench-results/<file>` (the target dir: CARGO_TARGET_DIR, or the ancestor of this
/// executable holding cargo's CACHEDIR.TAG).
#[allow(dead_code)] // not every bench
pub fn results_path(file: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            exe.ancestors()
                .find(|a| a.join("CACHEDIR.TAG").exists())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("bench-results").join(file)
}
