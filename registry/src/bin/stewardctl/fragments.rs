//! `stewardctl fragments`: list, show, write and delete fleet-wide spec fragments.

use chrono::Utc;
use clap::Subcommand;
use reqwest::Method;
use steward_proto::{Fragment, FragmentWrite, FragmentWritten, NodeSpec};

use crate::error::CliError;
use crate::history::{self, Of};
use crate::nodes::parse_selector;
use crate::output::{self, ago};
use crate::spec::{parse_spec, read_input};
use crate::{Ctx, Exit};

#[derive(Subcommand)]
pub enum FragmentsCmd {
    /// List fragments with their selector, revision and contents.
    #[command(visible_alias = "ls")]
    List,
    /// Show one fragment (selector, revision and spec) as YAML.
    #[command(visible_alias = "show")]
    Get {
        /// Fragment name.
        name: String,
    },
    /// Create or replace a fragment; prints the nodes whose generation moved (the first 1,000,
    /// and how many more).
    Apply {
        /// Fragment name.
        name: String,
        /// Nodes the fragment applies to: comma-joined `key=value`, `key!=value`, `key`
        /// (exists) and `!key` (absent), e.g. `role=builder,env!=dev`.
        #[arg(long, short = 'l', value_name = "SELECTOR", value_parser = parse_selector)]
        selector: String,
        /// Spec file: YAML for .yaml/.yml, JSON otherwise; `-` reads YAML from stdin.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: String,
    },
    /// Delete a fragment; prints the nodes whose generation moved.
    #[command(visible_alias = "rm")]
    Delete {
        /// Fragment name.
        name: String,
    },
    /// List the kept versions of a fragment (deletions too): revision, when, author, note.
    History {
        /// Fragment name.
        name: String,
    },
    /// Show how revision --from of a fragment differs from revision --to (default: its latest
    /// kept version), as a unified diff. Exit code 0 when equal, 1 when they differ.
    Diff {
        /// Fragment name.
        name: String,
        #[arg(long, value_name = "REV")]
        from: u64,
        #[arg(long, value_name = "REV")]
        to: Option<u64>,
    },
    /// Write again revision REV of a fragment (selector and spec), as a new revision (audited
    /// like any write); prints the nodes whose generation moved.
    Revert {
        /// Fragment name.
        name: String,
        /// The revision to go back to (see `fragments history`).
        #[arg(long, value_name = "REV")]
        to: u64,
    },
}

pub async fn run(cmd: FragmentsCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    match cmd {
        FragmentsCmd::List => {
            let frags: Vec<Fragment> = client.get(&["v1", "fragments"], &[]).await?;
            print_list(ctx, &frags)?;
        }
        FragmentsCmd::Get { name } => {
            let frag: Fragment = client.get(&["v1", "fragments", &name], &[]).await?;
            if ctx.json() {
                output::json(&frag)?;
            } else {
                output::yaml(&frag)?;
            }
        }
        FragmentsCmd::Apply {
            name,
            selector,
            file,
        } => {
            let spec = parse_spec(&read_input(&file)?)?;
            let body = FragmentWrite { selector, spec };
            let written: FragmentWritten = client
                .send_json(Method::PUT, &["v1", "fragments", &name], &body)
                .await?;
            print_written(ctx, &written, "written")?;
        }
        FragmentsCmd::Delete { name } => {
            let written: FragmentWritten = client
                .call(Method::DELETE, &["v1", "fragments", &name])
                .await?;
            print_written(ctx, &written, "deleted")?;
        }
        FragmentsCmd::History { name } => {
            return history::show(ctx, &client, Of::Fragment, &name).await;
        }
        FragmentsCmd::Diff { name, from, to } => {
            return history::diff(ctx, &client, Of::Fragment, &name, from, to).await;
        }
        FragmentsCmd::Revert { name, to } => {
            let written: FragmentWritten =
                history::revert(&client, Of::Fragment, &name, to).await?;
            print_written(ctx, &written, &format!("reverted to revision {to}"))?;
        }
    }
    Ok(Exit::Ok)
}

fn print_list(ctx: &Ctx, frags: &[Fragment]) -> Result<(), CliError> {
    if ctx.json() {
        return output::json(frags);
    }
    if ctx.quiet {
        for f in frags {
            output::line(&f.name);
        }
        return Ok(());
    }
    if frags.is_empty() {
        output::note(false, "no fragments");
        return Ok(());
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = frags
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                if f.selector.is_empty() {
                    "(all nodes)".to_string()
                } else {
                    f.selector.clone()
                },
                f.revision.to_string(),
                ago(now, f.updated_at),
                contents(&f.spec),
            ]
        })
        .collect();
    output::table(
        &["NAME", "SELECTOR", "REVISION", "UPDATED", "CONTENTS"],
        &rows,
    );
    Ok(())
}

/// `2 containers, 1 vm`: what a spec asks for, counted.
pub fn contents(s: &NodeSpec) -> String {
    let n = &s.networks;
    let counts = [
        (s.containers.len(), "container"),
        (s.vms.len(), "vm"),
        (s.payloads.len(), "payload"),
        (n.vlans.len(), "vlan"),
        (n.bridges.len(), "bridge"),
        (n.labs.len(), "lab"),
    ];
    let parts: Vec<String> = counts
        .iter()
        .filter(|(c, _)| *c > 0)
        .map(|(c, what)| format!("{c} {what}{}", if *c == 1 { "" } else { "s" }))
        .collect();
    if parts.is_empty() {
        "(empty)".into()
    } else {
        parts.join(", ")
    }
}

fn print_written(ctx: &Ctx, w: &FragmentWritten, verb: &str) -> Result<(), CliError> {
    if ctx.json() {
        return output::json(w);
    }
    if ctx.quiet {
        return Ok(());
    }
    output::line(format!(
        "fragment {} {verb} (revision {})",
        w.name, w.revision
    ));
    if w.affected.is_empty() {
        output::line("no node's effective spec changed");
    }
    for a in &w.affected {
        output::line(format!("  node {}: generation {}", a.node_id, a.generation));
    }
    let more = w.count().saturating_sub(w.affected.len() as u64);
    if more > 0 {
        output::line(format!("  ... and {more} more nodes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_proto::parse::{parse_document, Format};

    #[test]
    fn contents_are_counted() {
        let s: NodeSpec = parse_document(
            b"containers:\n  - {name: a, image: x}\n  - {name: b, image: y}\nvms:\n  - {name: v, image: /i, memory: 1Gi}\n",
            Format::Yaml,
        )
        .expect("test spec parses");
        assert_eq!(contents(&s), "2 containers, 1 vm");
        assert_eq!(contents(&NodeSpec::default()), "(empty)");
    }
}
