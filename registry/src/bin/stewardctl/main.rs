//! `stewardctl`, the admin CLI of the Steward registry: the command tree, global options and dispatch.

mod audit;
mod client;
mod cloud_init;
mod config;
mod credentials;
mod error;
mod events;
mod fragments;
mod history;
mod node_view;
mod nodes;
mod output;
mod payloads;
mod rollout;
mod sessions;
mod spec;
mod sse;
mod templates;
mod tokens;

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::client::Client;
use crate::config::{GlobalArgs, OutputFormat, Settings};
use crate::error::CliError;

const AFTER_HELP: &str = "\
Configuration:
  Every global option can also come from its environment variable or from the config file
  (TOML with the fields registry, token, token_file and ca_file; unknown fields are refused;
  relative paths are relative to the file). Precedence: flags > environment > config file >
  defaults. The default config file is $XDG_CONFIG_HOME/steward/stewardctl.toml, i.e.
  ~/.config/steward/stewardctl.toml, and is read only if it exists.

Several registry URLs:
  --registry, STEWARD_REGISTRY and the file's registry take one URL or several replicas of one
  registry separated by commas (the file also takes a list: registry = [\"https://a:7700\",
  \"https://b:7700\"]). Each URL is checked first. A request goes to the next URL when one
  cannot be reached (connection refused, DNS, TLS handshake) or answers 503, and for GET, PUT
  and DELETE also on a time-out, a reset connection or 502/504 (a POST that may have arrived
  is not sent twice). If every URL fails, the error names each URL with its failure (exit 3).

Exit codes:
  0  success
  1  `spec diff`: the file differs from the node's spec
  2  usage or configuration error
  3  could not reach the registry (connection refused, DNS, TLS, time-out)
  4  unauthorized or forbidden (HTTP 401/403)
  5  not found (HTTP 404)
  6  invalid input or conflict (HTTP 400/409/412/413, or a local file that does not parse)
  7  other error from the registry (5xx, unexpected answer)";

/// Admin CLI for the Steward registry.
#[derive(Parser)]
#[command(
    name = "stewardctl",
    version,
    about = "Admin CLI for the Steward registry: nodes, specs, fragments, session templates and sessions, enrollment tokens and events",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List, show, label and decommission nodes.
    Nodes {
        #[command(subcommand)]
        cmd: nodes::NodesCmd,
    },
    /// Read, write and diff a node's desired spec.
    Spec {
        #[command(subcommand)]
        cmd: spec::SpecCmd,
    },
    /// Manage fleet-wide spec fragments (merged into every node matching their selector).
    #[command(visible_alias = "fragment")]
    Fragments {
        #[command(subcommand)]
        cmd: fragments::FragmentsCmd,
    },
    /// Session templates: spec pieces with placeholders, instantiated per session. Write from
    /// a file, list, show, delete.
    #[command(visible_alias = "template")]
    Templates {
        #[command(subcommand)]
        cmd: templates::TemplatesCmd,
    },
    /// Sessions: owned, expiring instances of a template placed on a node. Create (and wait
    /// until running), list, show, extend, end.
    #[command(visible_alias = "session")]
    Sessions {
        #[command(subcommand)]
        cmd: sessions::SessionsCmd,
    },
    /// Create, list and revoke enrollment tokens.
    #[command(visible_alias = "token")]
    Tokens {
        #[command(subcommand)]
        cmd: tokens::TokensCmd,
    },
    /// Named API credentials with a role and an optional scope: create, list, revoke.
    #[command(visible_alias = "credential")]
    Credentials {
        #[command(subcommand)]
        cmd: credentials::CredentialsCmd,
    },
    /// The audit trail: every write, who made it, from where, and how it ended.
    Audit(audit::AuditArgs),
    /// Versioned, content-addressed artifacts: upload, list, show, delete.
    #[command(visible_alias = "payload")]
    Payloads {
        #[command(subcommand)]
        cmd: payloads::PayloadsCmd,
    },
    /// Batched payload rollouts: start, status, pause, resume, abort, rollback.
    #[command(visible_alias = "rollouts")]
    Rollout {
        #[command(subcommand)]
        cmd: rollout::RolloutCmd,
    },
    /// Show the registry's event log, or follow it live with --follow.
    Events(events::EventsArgs),
    /// Print cloud-init user-data that installs, configures and starts the agent on a new host
    /// (with a fresh enrolment token; see docs/INSTALL.md).
    CloudInit(cloud_init::CloudInitArgs),
    /// Check that the registry is up and its store answers (GET /readyz); prints `ok`.
    Health,
}

/// What a successful command tells the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit code 0.
    Ok,
    /// Exit code 1: `spec diff` found differences.
    Differs,
}

/// Everything a command needs: resolved settings and the output choices.
pub struct Ctx {
    settings: Settings,
    pub output: OutputFormat,
    pub quiet: bool,
}

impl Ctx {
    /// True for `--output json`.
    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// Prints a command's answer: the JSON of `v` with `--output json`, else the line `line`
    /// makes of it (nothing with `--quiet`).
    pub fn answer<T: serde::Serialize>(
        &self,
        v: &T,
        line: impl FnOnce(&T) -> String,
    ) -> Result<Exit, CliError> {
        if self.json() {
            output::json(v)?;
        } else if !self.quiet {
            output::line(line(v));
        }
        Ok(Exit::Ok)
    }

    /// A client for ordinary requests (30 s time-out).
    pub fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.settings, Some(client::TIMEOUT), self.quiet)
    }

    /// A client without an overall time-out, for streams that last as long as the user wants.
    pub fn streaming_client(&self) -> Result<Client, CliError> {
        Client::new(&self.settings, None, self.quiet)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let code = match run(cli, &matches).await {
        Ok(Exit::Ok) => error::code::OK,
        Ok(Exit::Differs) => error::code::DIFFERS,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    };
    ExitCode::from(code)
}

async fn run(cli: Cli, matches: &ArgMatches) -> Result<Exit, CliError> {
    let settings = config::resolve(&cli.global, matches)?;
    let ctx = Ctx {
        settings,
        output: cli.global.output,
        quiet: cli.global.quiet,
    };
    match cli.cmd {
        Cmd::Nodes { cmd } => nodes::run(cmd, &ctx).await,
        Cmd::Spec { cmd } => spec::run(cmd, &ctx).await,
        Cmd::Fragments { cmd } => fragments::run(cmd, &ctx).await,
        Cmd::Templates { cmd } => templates::run(cmd, &ctx).await,
        Cmd::Sessions { cmd } => sessions::run(cmd, &ctx).await,
        Cmd::Tokens { cmd } => tokens::run(cmd, &ctx).await,
        Cmd::Credentials { cmd } => credentials::run(cmd, &ctx).await,
        Cmd::Audit(args) => audit::run(args, &ctx).await,
        Cmd::Payloads { cmd } => payloads::run(cmd, &ctx).await,
        Cmd::Rollout { cmd } => rollout::run(cmd, &ctx).await,
        Cmd::Events(args) => events::run(args, &ctx).await,
        Cmd::CloudInit(args) => cloud_init::run(args, &ctx).await,
        Cmd::Health => health(&ctx).await,
    }
}

/// `stewardctl health`: GET /readyz.
async fn health(ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    client.get_text(&["readyz"]).await?;
    if ctx.json() {
        output::json(&serde_json::json!({ "status": "ok" }))?;
    } else if !ctx.quiet {
        output::line("ok");
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_from_the_environment_is_never_shown_in_help() {
        let cmd = Cli::command();
        let token = cmd
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .expect("--token exists");
        assert!(token.is_hide_env_values_set());
    }

    fn resolve_args(args: &[&str]) -> Result<Settings, CliError> {
        let m = Cli::command()
            .try_get_matches_from(args)
            .expect("arguments parse");
        let cli = Cli::from_arg_matches(&m).expect("arguments derive");
        config::resolve(&cli.global, &m)
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let s = resolve_args(&[
            "stewardctl",
            "--config",
            "/dev/null",
            "nodes",
            "list",
            "--registry",
            "https://r.example:7700",
            "--token",
            "abc.def",
        ])
        .expect("resolves");
        assert_eq!(s.registries[0].as_str(), "https://r.example:7700/");
        assert_eq!(s.token.as_deref(), Some("abc.def"));
    }

    #[test]
    fn token_and_token_file_flags_conflict() {
        let args = [
            "stewardctl",
            "--config",
            "/dev/null",
            "--token",
            "a",
            "--token-file",
            "/nonexistent",
            "health",
        ];
        match resolve_args(&args) {
            Err(CliError::Usage(m)) => assert!(m.contains("only one"), "{m}"),
            _ => panic!("both token flags were accepted"),
        }
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("4  unauthorized"), "{help}");
        assert!(help.contains("Several registry URLs:"), "{help}");
    }
}
