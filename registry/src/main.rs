//! `steward-registry`: the registry server.

use clap::{Parser, Subcommand};
use std::io::Write;

use steward_registry::config::{RegistryConfig, ServeArgs};

/// mimalloc instead of glibc's malloc: it gives freed memory back to the system (a page of 1,000
/// nodes builds megabytes that glibc kept after the answer: RSS grew by 0.4 GB reading 100,000
/// nodes and never came down).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use steward_registry::migrate::MigrateArgs;

#[derive(Parser)]
#[command(
    name = "steward-registry",
    version,
    about = "Steward's central registry: desired state, enrolment, heartbeats and events for a fleet of hosts"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (see docs/API.md). Log filter: RUST_LOG (default info).
    Serve(Box<ServeArgs>),
    /// Copy an embedded registry (stopped) into an etcd store for registry replicas, then read
    /// every key back and compare (see docs/INSTALL.md, "Several registry replicas on etcd").
    Migrate(MigrateArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Serve(args) => match RegistryConfig::resolve(*args) {
            Ok(cfg) => steward_registry::server::serve(cfg).await,
            Err(e) => Err(e),
        },
        Cmd::Migrate(args) => match steward_registry::migrate::migrate(args).await {
            Ok(summary) => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{summary}")
                    .and_then(|()| out.flush())
                    .map_err(anyhow::Error::from)
            }
            Err(e) => Err(e.into()),
        },
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
