//! The comparison server: a bare axum handler for `POST /v1/nodes/{id}/heartbeat` that reads
//! the body and answers 200, run by re-executing this bench binary with
//! `STEWARD_BENCH_BARE_PORT=<port>`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use anyhow::Result;
use hyper::body::Bytes;

use crate::util::{free_port, wait_listening, ChildGuard};

/// The bare server's answer: about the size of the registry's `HeartbeatResponse`.
pub const BARE_ANSWER: &str = r#"{"generation":0,"server_time":"2025-01-01T00:00:00.000000000Z","status_wanted":false,"heartbeat_interval_secs":10}"#;

/// Runs the bare axum server of `STEWARD_BENCH_BARE_PORT` (in the re-executed bench binary).
pub fn serve(port: &str) -> ! {
    use axum::extract::Path as AxPath;
    use axum::routing::post;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res: Result<()> = rt.block_on(async move {
        async fn hb(
            AxPath(_id): AxPath<String>,
            _body: Bytes,
        ) -> impl axum::response::IntoResponse {
            (
                [(hyper::header::CONTENT_TYPE, "application/json")],
                BARE_ANSWER,
            )
        }
        let app = axum::Router::new().route("/v1/nodes/{id}/heartbeat", post(hb));
        let l = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
        axum::serve(l, app).await?;
        Ok(())
    });
    eprintln!("bare server stopped: {res:?}");
    std::process::exit(1)
}

/// The bench binary re-executed as the bare server.
pub struct Bare {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
}

impl Bare {
    pub async fn start() -> Result<Bare> {
        let port = free_port()?;
        let child = Command::new(std::env::current_exe()?)
            .env("STEWARD_BENCH_BARE_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let mut guard = ChildGuard::new("bare axum server", child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        wait_listening(addr, &mut guard).await?;
        Ok(Bare { guard, addr })
    }
}
