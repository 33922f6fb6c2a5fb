//! `steward-agent`: the on-host agent. This is a stub until the agent issue lands: it answers
//! `--help` and `--version` and says what is coming.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "steward-agent",
    version,
    about = "Steward's on-host agent: pulls this node's desired state from the registry and makes the host match it",
    long_about = "Steward's on-host agent. Not implemented yet in this build: `run`, `enroll`, \
`apply --file` and `status` arrive with the agent issue. See README.md."
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("steward-agent is not implemented in this build yet; see --help")
}
