//! `steward-registry`: the registry server.

use clap::{Parser, Subcommand};
use steward_registry::config::{RegistryConfig, ServeArgs};

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
    Serve(ServeArgs),
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
        Cmd::Serve(args) => match RegistryConfig::resolve(args) {
            Ok(cfg) => steward_registry::server::serve(cfg).await,
            Err(e) => Err(e),
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
