//! `stewardctl spec`: read, write and diff a node's spec; reading spec files (also for fragments).

use std::io::Read;

use clap::Subcommand;
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::Method;
use steward_proto::parse::{parse_document, Format};
use steward_proto::{NodeSpec, SpecDocument, SpecWritten};

use crate::error::CliError;
use crate::history::{self, Of};
use crate::output;
use crate::{Ctx, Exit};

#[derive(Subcommand)]
pub enum SpecCmd {
    /// Print a node's effective spec (its own spec merged with every matching fragment) as
    /// YAML; with --output json, the whole document (generation, effective, own, fragments).
    Get {
        /// Node id.
        id: String,
        /// Print the node's own spec, as last written with `spec apply`, instead of the
        /// effective one. Handy for edit-and-apply: `spec get ID --own > node.yaml`.
        #[arg(long)]
        own: bool,
        /// Print only the generation number of the effective spec.
        #[arg(long, conflicts_with = "own")]
        generation_only: bool,
    },
    /// Write a node's own spec from a YAML or JSON file; prints the new generation.
    Apply {
        /// Node id.
        id: String,
        /// Spec file: YAML for .yaml/.yml, JSON otherwise; `-` reads YAML from stdin.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: String,
        /// Write only if the node's generation is still GEN (optimistic concurrency: fails
        /// with exit code 6 when someone else changed it meanwhile).
        #[arg(long, value_name = "GEN")]
        if_match: Option<u64>,
    },
    /// Show how a spec file differs from the node's own spec in the registry (registry first,
    /// file second), or, with --from, how the own spec at one generation differs from another
    /// in its history (--to, default the latest). A unified diff; exit code 0 when equal, 1
    /// when they differ.
    Diff {
        /// Node id.
        id: String,
        /// Spec file: YAML for .yaml/.yml, JSON otherwise; `-` reads YAML from stdin.
        #[arg(
            short = 'f',
            long = "file",
            value_name = "FILE",
            required_unless_present = "from",
            conflicts_with = "from"
        )]
        file: Option<String>,
        /// Compare the own spec in force at this generation (from the history)...
        #[arg(long, value_name = "GEN")]
        from: Option<u64>,
        /// ... with the one at this generation [default: the latest kept].
        #[arg(long, value_name = "GEN", requires = "from")]
        to: Option<u64>,
    },
    /// List the kept versions of the node's own spec: generation, when, author, note.
    History {
        /// Node id.
        id: String,
    },
    /// Write again the own spec the node had at generation GEN, as a new generation (audited
    /// like any write); prints the new generation.
    Revert {
        /// Node id.
        id: String,
        /// The generation to go back to (see `spec history`).
        #[arg(long, value_name = "GEN")]
        to: u64,
    },
}

/// A document read from a file or stdin.
pub struct Input {
    pub name: String,
    pub bytes: Vec<u8>,
    pub format: Format,
}

impl Input {
    /// The `Content-Type` the registry expects for this document.
    pub fn content_type(&self) -> &'static str {
        match self.format {
            Format::Yaml => "application/yaml",
            Format::Json => "application/json",
        }
    }
}

/// Reads `path` (`-` is stdin, always YAML, which also accepts JSON).
pub fn read_input(path: &str) -> Result<Input, CliError> {
    if path == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::Usage(format!("reading stdin: {e}")))?;
        return Ok(Input {
            name: "(stdin)".into(),
            bytes,
            format: Format::Yaml,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| CliError::Usage(format!("reading {path}: {e}")))?;
    Ok(Input {
        name: path.to_string(),
        bytes,
        format: Format::from_path(path),
    })
}

/// Parses a spec file the way the registry does; a failure names the field (exit 6).
pub fn parse_spec(input: &Input) -> Result<NodeSpec, CliError> {
    parse_document::<NodeSpec>(&input.bytes, input.format).map_err(|p| CliError::Invalid {
        error: format!("{} is not a valid spec", input.name),
        problems: vec![p],
    })
}

pub async fn run(cmd: SpecCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    match cmd {
        SpecCmd::Get {
            id,
            own,
            generation_only,
        } => {
            let doc: SpecDocument = client.get(&["v1", "nodes", &id, "spec"], &[]).await?;
            if generation_only {
                output::line(doc.generation);
            } else if ctx.json() {
                output::json(&doc)?;
            } else {
                if !ctx.quiet {
                    output::line(header_comment(&doc, own));
                }
                output::yaml(if own { &doc.own } else { &doc.spec })?;
            }
            Ok(Exit::Ok)
        }
        SpecCmd::Apply { id, file, if_match } => {
            let input = read_input(&file)?;
            let mut rb = client
                .request(Method::PUT, &["v1", "nodes", &id, "spec"])
                .header(CONTENT_TYPE, input.content_type());
            if let Some(g) = if_match {
                rb = rb.header(IF_MATCH, g.to_string());
            }
            let written: SpecWritten = client.json(rb.body(input.bytes)).await?;
            if ctx.json() {
                output::json(&written)?;
            } else if !ctx.quiet {
                output::line(format!(
                    "node {}: generation {}",
                    written.node_id, written.generation
                ));
            }
            Ok(Exit::Ok)
        }
        SpecCmd::History { id } => history::show(ctx, &client, Of::Node, &id).await,
        SpecCmd::Revert { id, to } => {
            let w: SpecWritten = history::revert(&client, Of::Node, &id, to).await?;
            ctx.answer(&w, |w| {
                format!(
                    "node {}: generation {} (the own spec of generation {to})",
                    w.node_id, w.generation
                )
            })
        }
        SpecCmd::Diff {
            id,
            from: Some(from),
            to,
            ..
        } => history::diff(ctx, &client, Of::Node, &id, from, to).await,
        SpecCmd::Diff { id, file, .. } => {
            let file = file.unwrap_or_else(|| "-".into());
            let input = read_input(&file)?;
            let mut local = parse_spec(&input)?;
            let doc: SpecDocument = client.get(&["v1", "nodes", &id, "spec"], &[]).await?;
            pin_like(&mut local, &doc.own);
            let remote_name = format!("node {id} (own spec, generation {})", doc.generation);
            let diff = spec_diff(&doc.own, &local, &remote_name, &input.name)?;
            if ctx.json() {
                output::json(&serde_json::json!({
                    "node_id": doc.node_id,
                    "generation": doc.generation,
                    "equal": diff.is_none(),
                    "diff": diff.clone().unwrap_or_default(),
                }))?;
            } else if let Some(d) = &diff {
                output::stdout(d);
            } else {
                output::note(
                    ctx.quiet,
                    format_args!("no differences: {} matches node {id}", input.name),
                );
            }
            Ok(if diff.is_some() {
                Exit::Differs
            } else {
                Exit::Ok
            })
        }
    }
}

/// `# effective spec of node ID, generation N (fragments: a, b)`: a YAML comment, so the output
/// can be saved and applied as it is.
fn header_comment(doc: &SpecDocument, own: bool) -> String {
    if own {
        return format!(
            "# own spec of node {}, generation {}",
            doc.node_id, doc.generation
        );
    }
    let frags = if doc.fragments.is_empty() {
        "no fragments".to_string()
    } else {
        format!("fragments: {}", doc.fragments.join(", "))
    };
    format!(
        "# effective spec of node {}, generation {} ({frags})",
        doc.node_id, doc.generation
    )
}

/// Fills in the `sha256` and `size` the registry pinned into `stored` for payloads of `local`
/// that leave them out with the same name and version, so that a file without hashes is not
/// reported as different from what the registry made of it.
pub fn pin_like(local: &mut NodeSpec, stored: &NodeSpec) {
    for p in local.payloads.iter_mut() {
        if let Some(s) = stored
            .payloads
            .iter()
            .find(|s| s.name == p.name && s.version == p.version)
        {
            if p.sha256.is_none() {
                p.sha256 = s.sha256.clone();
            }
            if p.size.is_none() {
                p.size = s.size;
            }
        }
    }
}

/// Both specs rendered as YAML and compared; `None` when they are the same.
pub fn spec_diff(
    old: &NodeSpec,
    new: &NodeSpec,
    old_name: &str,
    new_name: &str,
) -> Result<Option<String>, CliError> {
    let a = output::to_yaml(old)?;
    let b = output::to_yaml(new)?;
    if a == b {
        return Ok(None);
    }
    let diff = similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string();
    Ok(Some(diff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> NodeSpec {
        parse_document(yaml.as_bytes(), Format::Yaml).expect("test spec parses")
    }

    #[test]
    fn equal_specs_have_no_diff_whatever_the_formatting() {
        let a = spec("containers:\n  - {name: web, image: 'nginx:1.27'}\n");
        let b = spec("containers:\n- name: web\n  image: nginx:1.27\n  restart: always\n");
        assert_eq!(spec_diff(&a, &b, "a", "b").expect("renders"), None);
    }

    #[test]
    fn pinned_hashes_are_not_a_difference() {
        let sha = "a".repeat(64);
        let stored = spec(&format!(
            "payloads: [{{name: tc, version: '1', path: /x, sha256: {sha}, size: 3}}]"
        ));
        let mut local = spec("payloads: [{name: tc, version: '1', path: /x}]");
        pin_like(&mut local, &stored);
        assert_eq!(spec_diff(&stored, &local, "a", "b").expect("renders"), None);
        let mut newer = spec("payloads: [{name: tc, version: '2', path: /x}]");
        pin_like(&mut newer, &stored);
        assert!(spec_diff(&stored, &newer, "a", "b")
            .expect("renders")
            .is_some());
    }

    #[test]
    fn differing_specs_give_a_unified_diff() {
        let a = spec("containers:\n  - {name: web, image: 'nginx:1.26'}\n");
        let b = spec("containers:\n  - {name: web, image: 'nginx:1.27'}\n");
        let d = spec_diff(&a, &b, "registry", "file.yaml")
            .expect("renders")
            .expect("differs");
        assert!(d.starts_with("--- registry\n+++ file.yaml\n"), "{d}");
        assert!(d.contains("-  image: nginx:1.26"), "{d}");
        assert!(d.contains("+  image: nginx:1.27"), "{d}");
    }

    #[test]
    fn bad_files_name_the_field() {
        let input = Input {
            name: "x.yaml".into(),
            bytes: b"containers:\n  - {name: web, image: x, colour: red}\n".to_vec(),
            format: Format::Yaml,
        };
        match parse_spec(&input) {
            Err(e @ CliError::Invalid { .. }) => {
                assert_eq!(e.exit_code(), 6);
                assert!(
                    e.lines()[1].starts_with("  containers[0].colour:"),
                    "{:?}",
                    e.lines()
                );
            }
            _ => panic!("accepted an unknown field"),
        }
    }

    #[test]
    fn content_type_follows_the_format() {
        let mk = |format| Input {
            name: String::new(),
            bytes: Vec::new(),
            format,
        };
        assert_eq!(mk(Format::Yaml).content_type(), "application/yaml");
        assert_eq!(mk(Format::Json).content_type(), "application/json");
    }
}
