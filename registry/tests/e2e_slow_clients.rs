//! Slow and idle clients against the real registry binary with many real sockets: with a
//! 1,024 open-file limit, thousands of idle or half-sent connections neither exhaust its file
//! descriptors nor keep /healthz from others (caps per client address and in total); idle and
//! stalled connections are closed after the header read timeout, while a long-poll and an
//! event stream outlive it; with almost no file descriptors left, failed accepts are counted and
//! logged and accepting goes on.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Registry};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Hang guard for one socket read.
const GUARD: Duration = Duration::from_secs(60);

/// Raises this test process's own open-file limit (it holds thousands of sockets).
fn raise_own_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 8192,
        "the test needs an open-file hard limit of 8192, not {hard}"
    );
}

/// Starts the registry with its open-file limit (soft and hard) at `nofile`.
async fn start_with_nofile(nofile: u64, extra: &[&str]) -> Registry {
    let mut r = Registry {
        child: None,
        port: free_port(),
        dir: tempfile::tempdir().unwrap(),
        admin: String::new(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        scheme: "http",
        client: reqwest::Client::builder().timeout(GUARD).build().unwrap(),
    };
    let log = std::fs::File::create(r.log_path()).unwrap();
    // prlimit (util-linux) sets the limits and execs the registry: same process.
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_steward-registry"))
        .arg("serve")
        .arg("--data-dir")
        .arg(r.dir.path().join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", r.port))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    r.child = Some(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthz_from(&r, "127.0.0.1").await {
        assert!(Instant::now() < deadline, "no /healthz; log:\n{}", r.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.admin = std::fs::read_to_string(r.dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    r
}

/// A TCP connection to the registry from the source address `from` (any 127/8 address).
async fn connect_from(r: &Registry, from: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    sock.connect(SocketAddr::from(([127, 0, 0, 1], r.port)))
        .await
        .unwrap()
}

/// Whether a fresh connection from `from` gets `200` for `GET /healthz`.
async fn healthz_from(r: &Registry, from: &str) -> bool {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let Ok(s) = sock
        .connect(SocketAddr::from(([127, 0, 0, 1], r.port)))
        .await
    else {
        return false;
    };
    served(s, "").await
}

/// Sends (the rest of) a `GET /healthz` on `s` and reads the answer: true for a 200, false
/// when the server closed the connection without answering.
async fn served(mut s: TcpStream, already_sent: &str) -> bool {
    let full = "GET /healthz HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n";
    let rest = full.strip_prefix(already_sent).unwrap();
    if s.write_all(rest.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    match tokio::time::timeout(GUARD, s.read_to_end(&mut buf)).await {
        Err(_) => panic!("no answer nor close within {GUARD:?}"),
        Ok(_) => buf.starts_with(b"HTTP/1.1 200"),
    }
}

/// Opens `n` connections from `from`; every tenth sends half a request head and stalls.
async fn open_many(r: &Registry, from: &str, n: usize) -> Vec<(TcpStream, &'static str)> {
    let half = "GET /healthz HTTP/1.1\r\nHost: regi";
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = connect_from(r, from).await;
        let sent = if i % 10 == 0 {
            s.write_all(half.as_bytes()).await.unwrap();
            half
        } else {
            ""
        };
        conns.push((s, sent));
    }
    conns
}

/// Sends (the rest of) a kept-alive `GET /healthz` on `s`: true when answered `200` (the
/// connection stays open, keeping its place under the caps), false when closed unanswered.
async fn answered(s: &mut TcpStream, already_sent: &str) -> bool {
    let full = "GET /healthz HTTP/1.1\r\nHost: registry\r\n\r\n";
    let rest = full.strip_prefix(already_sent).unwrap();
    if s.write_all(rest.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"\r\n\r\nok\n") {
        match tokio::time::timeout(GUARD, s.read(&mut chunk)).await {
            Err(_) => panic!("no answer nor close within {GUARD:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.starts_with(b"HTTP/1.1 200")
}

/// How many of `conns` the registry serves (the others it closed unanswered); the served ones
/// stay open.
async fn count_served(conns: &mut [(TcpStream, &'static str)]) -> usize {
    let answers =
        futures_util::future::join_all(conns.iter_mut().map(|(s, sent)| answered(s, sent))).await;
    answers.into_iter().filter(|ok| *ok).count()
}

#[tokio::test]
async fn thousands_of_idle_connections_neither_exhaust_fds_nor_block_healthz() {
    raise_own_nofile();
    let per_address = 400;
    let r = start_with_nofile(
        1024,
        &[
            "--header-read-timeout",
            "120s",
            "--max-connections-per-address",
            "400",
        ],
    )
    .await;
    let total = 1024 - steward_registry::connections::FD_HEADROOM as usize;

    // 1,100 idle connections from one address: /healthz from another still answers.
    let a = open_many(&r, "127.0.0.2", 1100).await;
    assert!(healthz_from(&r, "127.0.0.1").await, "log:\n{}", r.log());
    // Two more addresses: the total cap (fit to the 1,024 open files) holds. Which address
    // gets the last places depends on the order the registry accepts in; the sum does not.
    let mut a = a;
    let mut b = open_many(&r, "127.0.0.3", 1100).await;
    let mut c = open_many(&r, "127.0.0.4", 1100).await;
    let served = [
        count_served(&mut a).await,
        count_served(&mut b).await,
        count_served(&mut c).await,
    ];
    assert!(
        served.iter().all(|n| *n <= per_address),
        "per-address cap: {served:?}"
    );
    assert_eq!(served.iter().sum::<usize>(), total, "total cap: {served:?}");
    drop((a, b, c));
    // Everything closed: the registry serves again (it never ran out of descriptors).
    let deadline = Instant::now() + GUARD;
    while !healthz_from(&r, "127.0.0.2").await {
        assert!(
            Instant::now() < deadline,
            "no /healthz after the flood; log:\n{}",
            r.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !r.log().contains("Too many open files"),
        "log:\n{}",
        r.log()
    );
}

#[tokio::test]
async fn idle_connections_are_closed_but_long_polls_and_event_streams_outlive_the_timeout() {
    let r = Registry::start(&["--header-read-timeout", "2s"]).await;
    let (id, secret) = r.enroll("m-slow", json!({})).await;

    // An event stream and a long-poll longer than the timeout, opened first.
    let resp = r
        .client
        .get(r.url("/v1/events/stream"))
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut sse = resp.bytes_stream();
    let poll = tokio::spawn({
        let client = r.client.clone();
        let url = r.url(&format!("/v1/nodes/{id}/spec?after=1&wait=6s"));
        async move {
            let resp = client.get(url).bearer_auth(secret).send().await.unwrap();
            resp.status().as_u16()
        }
    });

    // Idle, stalled, and kept-alive-then-idle connections are all closed by the registry.
    let mut conns = open_many(&r, "127.0.0.1", 40).await;
    for _ in 0..5 {
        let mut s = connect_from(&r, "127.0.0.1").await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: registry\r\n\r\n")
            .await
            .unwrap();
        conns.push((s, "kept-alive"));
    }
    for (mut s, what) in conns {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(GUARD, s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "a {what:?} connection was not closed by the registry"
        );
        if what == "kept-alive" {
            assert!(
                buf.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf)
            );
        }
    }

    // The long-poll ends normally (no newer spec: 304), past the timeout.
    let st = tokio::time::timeout(GUARD, poll).await.unwrap().unwrap();
    assert_eq!(st, 304);
    // The event stream is still open: a new event arrives on it.
    let yaml = "containers:\n  - {name: late, image: busybox}\n";
    let (st, _) = r
        .put_yaml(&format!("/v1/nodes/{id}/spec"), &r.admin, yaml)
        .await;
    assert_eq!(st, 200);
    let mut seen = String::new();
    let deadline = Instant::now() + GUARD;
    while !seen.contains("spec-written") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, sse.next())
            .await
            .expect("no event on the stream")
            .expect("the event stream was closed")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn tls_connections_idle_after_the_handshake_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let r = Registry::start_with(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--header-read-timeout",
            "2s",
        ],
        "https",
        Some(ck.cert.pem()),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let mut conns = Vec::new();
    for _ in 0..10 {
        let tcp = connect_from(&r, "127.0.0.1").await;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        conns.push(tls.connect(name, tcp).await.unwrap());
    }
    // Handshake done, no request: the registry closes them (an error or EOF ends the read).
    for mut c in conns {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(GUARD, c.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "an idle TLS connection was not closed by the registry"
        );
        assert!(buf.is_empty());
    }
    // The registry still serves TLS.
    assert_eq!(r.get("/v1/nodes", &r.admin).await.0, 200);
}

/// `steward_registry_accept_errors_total` from `/metrics`.
async fn accept_errors(r: &Registry) -> f64 {
    let text = r
        .client
        .get(r.url("/metrics"))
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("steward_registry_accept_errors_total "))
        .unwrap_or_else(|| panic!("no accept_errors_total in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Sets the running registry's soft open-file limit with prlimit (the hard limit stays 1,024:
/// raising a hard limit needs CAP_SYS_RESOURCE).
fn set_nofile(r: &Registry, n: usize) {
    let pid = r.child.as_ref().unwrap().id();
    let st = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:1024"))
        .status()
        .unwrap();
    assert!(st.success(), "prlimit --pid {pid} failed");
}

#[tokio::test]
async fn failed_accepts_are_counted_and_logged_and_accepting_goes_on() {
    raise_own_nofile();
    let r = start_with_nofile(1024, &[]).await;
    assert_eq!(accept_errors(&r).await, 0.0);
    // Leave the registry one free descriptor: one connection takes it, the next cannot be
    // accepted (EMFILE) while the first stays open.
    let pid = r.child.as_ref().unwrap().id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    set_nofile(&r, open + 1);
    let held = TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Descriptors back: the waiting connection is accepted and everything answers again.
    set_nofile(&r, 1024);
    drop((held, refused));
    let deadline = Instant::now() + GUARD;
    while !healthz_from(&r, "127.0.0.1").await {
        assert!(Instant::now() < deadline, "no /healthz; log:\n{}", r.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = accept_errors(&r).await;
    assert!(failed > 0.0, "no accept error counted; log:\n{}", r.log());
    let log = r.log();
    assert!(
        log.contains("accepting a connection failed") && log.contains("Too many open files"),
        "{log}"
    );
}
