//! `steward-agent`: the on-host agent's command line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use steward_agent::cli;
use steward_agent::config::{AgentArgs, AgentConfig};

#[derive(Parser)]
#[command(
    name = "steward-agent",
    version,
    about = "Steward's on-host agent: pulls this node's desired state from the registry and makes the host match it",
    after_help = "Configuration: flags > environment > config file (/etc/steward/agent.toml) > defaults; \
see packaging/agent.toml.example for every field. Log filter: RUST_LOG (default info).\n\
Exit codes: 0 ok; 1 apply left resources not converged; 2 usage or configuration error; 3 runtime failure."
)]
struct Cli {
    #[command(flatten)]
    args: AgentArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: enrol if needed, then heartbeat, watch the spec and reconcile until stopped.
    Run,
    /// Enrol with the registry using an enrollment token (or a re-enrolment grant for a
    /// reinstalled host) and store the node identity (0600).
    Enroll {
        /// Enrol again even if an identity is stored: the stored secret proves this host is
        /// that node and the registry rotates it.
        #[arg(long)]
        force: bool,
    },
    /// Apply a local spec file without a registry (same reconciler): once, printing the result,
    /// or with --watch until stopped.
    Apply {
        /// Spec file, YAML or JSON by extension; `-` reads YAML from stdin.
        #[arg(long, short = 'f')]
        file: String,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        /// Keep running: re-apply when the file changes or on SIGHUP, restore drift on Docker and
        /// netlink events and every resync interval; the status goes to the data dir
        /// (`steward-agent status`). SIGTERM stops it; workloads keep running.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Show every resource and its state as of the last reconcile on this host.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

// One thread is plenty for an agent that mostly waits; it keeps the footprint small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = match AgentConfig::resolve(cli.args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let res = match cli.cmd {
        Cmd::Run => run(cfg).await,
        Cmd::Enroll { force } => cli::ensure_identity(&cfg, force).await.map(|(id, _)| {
            tracing::info!(node = %id.node_id, "enrolled");
            ExitCode::SUCCESS
        }),
        Cmd::Apply {
            file, watch: true, ..
        } => steward_agent::standalone::apply_watch(cfg, file)
            .await
            .map(|()| ExitCode::SUCCESS),
        Cmd::Apply { file, json, .. } => match cli::apply(&cfg, &file).await {
            Ok(st) => cli::print_status(&st, json, None).map(|_| {
                if cli::all_converged(&st) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }),
            Err(e) => Err(e),
        },
        Cmd::Status { json } => status(&cfg, json),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(3)
        }
    }
}

async fn run(cfg: AgentConfig) -> anyhow::Result<ExitCode> {
    tracing::info!(config = ?cfg, version = cli::VERSION, "starting steward-agent");
    let (identity, client) = cli::ensure_identity(&cfg, false).await?;
    tracing::info!(node = %identity.node_id, registry = %identity.registry, "node identity loaded");
    steward_agent::daemon::run(cfg, identity, client).await?;
    Ok(ExitCode::SUCCESS)
}

fn status(cfg: &AgentConfig, json: bool) -> anyhow::Result<ExitCode> {
    let paths = steward_agent::store::Paths::new(&cfg.data_dir);
    let id = paths.load_identity()?;
    let Some(st) = paths.load_status()? else {
        anyhow::bail!(
            "no status in {} yet: the agent has not reconciled on this host",
            cfg.data_dir.display()
        );
    };
    let header = Some(format!(
        "node {} (registry {}), generation {}",
        id.as_ref()
            .map(|i| i.node_id.as_str())
            .unwrap_or("not enrolled"),
        id.as_ref().map(|i| i.registry.as_str()).unwrap_or("-"),
        st.observed_generation
    ));
    cli::print_status(&st, json, header)?;
    Ok(ExitCode::SUCCESS)
}
