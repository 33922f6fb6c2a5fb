//! `stewardctl templates`: write (from a YAML or JSON file), list, show and delete session
//! templates, the spec pieces with placeholders that `stewardctl sessions create` instantiates.

use std::time::Duration;

use chrono::Utc;
use clap::Subcommand;
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use steward_proto::parse::parse_document;
use steward_proto::{Template, TemplateWrite};

use crate::error::CliError;
use crate::output::{self, ago, compact_duration, ListView};
use crate::spec::{read_input, Input};
use crate::{Ctx, Exit};

/// A session's lifetime when neither its create nor its template names one (capped by the
/// template's `max_ttl`), and the cap when the template names none: the registry's defaults.
const DEFAULT_TTL: Duration = Duration::from_secs(3_600);
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(86_400);

#[derive(Subcommand)]
pub enum TemplatesCmd {
    /// List session templates: selector, ports, lab, lifetimes and limits.
    #[command(visible_alias = "ls")]
    List,
    /// Show one template as YAML, ready to edit and `templates put` again (with --output json,
    /// the stored template with its revision).
    #[command(visible_alias = "show")]
    Get {
        /// Template name.
        name: String,
    },
    /// Create or replace a template from a YAML or JSON file.
    ///
    /// The file holds `spec` (a node spec whose strings may hold placeholders such as
    /// {{session}}, {{owner}}, {{param.NAME}}, {{port.NAME}}, {{volume.NAME}}, {{lab.vlan}},
    /// {{lab.bridge}}, {{lab.cidr}}, {{lab.gateway}}, {{lab.ip.N}}), and optionally params,
    /// ports, volumes, keep_volumes, lab, selector, ttl, max_ttl, idle_timeout, per_owner,
    /// max_sessions, reserve and spares. The registry checks it by rendering it for a
    /// sample session; a problem names its field (exit 6). Sessions already made keep what
    /// they were rendered with.
    #[command(visible_alias = "apply")]
    Put {
        /// Template name.
        name: String,
        /// Template file: YAML for .yaml/.yml, JSON otherwise; `-` reads YAML from stdin.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: String,
    },
    /// Delete a template (refused with exit 6 while live sessions use it).
    #[command(visible_alias = "rm")]
    Delete {
        /// Template name.
        name: String,
    },
}

pub async fn run(cmd: TemplatesCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    match cmd {
        TemplatesCmd::List => {
            let list: Vec<Template> = client.get(&["v1", "templates"], &[]).await?;
            print_list(ctx, &list)?;
        }
        TemplatesCmd::Get { name } => {
            let t: Template = client.get(&["v1", "templates", &name], &[]).await?;
            if ctx.json() {
                output::json(&t)?;
            } else {
                if !ctx.quiet {
                    output::line(format!(
                        "# template {}, revision {}, updated {} by {}",
                        t.name,
                        t.revision,
                        t.updated_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        t.updated_by
                    ));
                }
                output::yaml(&t.body)?;
            }
        }
        TemplatesCmd::Put { name, file } => {
            let input = read_input(&file)?;
            parse_template(&input)?;
            let rb = client
                .request(Method::PUT, &["v1", "templates", &name])
                .header(CONTENT_TYPE, input.content_type())
                .body(input.bytes);
            let t: Template = client.json(rb).await?;
            ctx.answer(&t, |t| {
                format!("template {} written (revision {})", t.name, t.revision)
            })?;
        }
        TemplatesCmd::Delete { name } => {
            client
                .send(client.request(Method::DELETE, &["v1", "templates", &name]))
                .await?;
            let done = serde_json::json!({ "name": name, "deleted": true });
            ctx.answer(&done, |_| format!("template {name} deleted"))?;
        }
    }
    Ok(Exit::Ok)
}

/// Parses a template file the way the registry does, so that a file that does not even parse
/// is refused here, naming the field (exit 6); the registry checks the rest.
fn parse_template(input: &Input) -> Result<TemplateWrite, CliError> {
    parse_document::<TemplateWrite>(&input.bytes, input.format).map_err(|p| CliError::Invalid {
        error: format!("{} is not a valid template", input.name),
        problems: vec![p],
    })
}

fn print_list(ctx: &Ctx, list: &[Template]) -> Result<(), CliError> {
    let now = Utc::now();
    let row = |t: &Template| {
        let b = &t.body;
        let (ttl, max_ttl) = lifetimes(b);
        vec![
            t.name.clone(),
            t.revision.to_string(),
            if b.selector.is_empty() {
                "(all nodes)".to_string()
            } else {
                b.selector.clone()
            },
            if b.ports.is_empty() {
                "-".to_string()
            } else {
                b.ports.join(",")
            },
            if b.lab { "yes" } else { "no" }.to_string(),
            ttl,
            max_ttl,
            limits(b),
            ago(now, t.updated_at),
        ]
    };
    let headers = [
        "NAME", "REVISION", "SELECTOR", "PORTS", "LAB", "TTL", "MAX_TTL", "LIMITS", "UPDATED",
    ];
    output::list(
        ctx,
        list,
        ListView {
            what: "session templates",
            headers: &headers,
            key: |t| t.name.clone(),
            row: &row,
        },
    )
}

/// The lifetimes a template gives its sessions, `(ttl, max_ttl)`, with the registry's defaults
/// filled in (ttl: 1h, at most max_ttl; max_ttl: 24h). A value that does not parse is shown
/// as written.
pub fn lifetimes(t: &TemplateWrite) -> (String, String) {
    let parse = |s: &str| humantime::parse_duration(s.trim()).ok();
    let max = match &t.max_ttl {
        Some(m) => parse(m).ok_or_else(|| m.clone()),
        None => Ok(DEFAULT_MAX_TTL),
    };
    let ttl = match (&t.ttl, &max) {
        (Some(s), _) => parse(s).ok_or_else(|| s.clone()),
        (None, Ok(m)) => Ok(DEFAULT_TTL.min(*m)),
        (None, Err(_)) => Ok(DEFAULT_TTL),
    };
    let show =
        |d: Result<Duration, String>| d.map_or_else(|s| s, |d| compact_duration(d.as_secs()));
    (show(ttl), show(max))
}

/// `per_owner=2,max_sessions=10,cpus=0.5,memory=1Gi`: the template's quotas and what each
/// session reserves, or `-`.
pub fn limits(t: &TemplateWrite) -> String {
    let mut parts = Vec::new();
    if let Some(n) = t.per_owner {
        parts.push(format!("per_owner={n}"));
    }
    if let Some(n) = t.max_sessions {
        parts.push(format!("max_sessions={n}"));
    }
    if let Some(c) = &t.reserve.cpus {
        parts.push(format!("cpus={c}"));
    }
    if let Some(m) = &t.reserve.memory {
        parts.push(format!("memory={m}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_proto::parse::Format;

    fn template(yaml: &str) -> TemplateWrite {
        parse_document(yaml.as_bytes(), Format::Yaml).expect("test template parses")
    }

    #[test]
    fn lifetimes_fill_in_the_registry_defaults() {
        assert_eq!(lifetimes(&template("spec: {}")), ("1h".into(), "1d".into()));
        let t = template("spec: {}\nttl: 90m\nmax_ttl: 3h");
        assert_eq!(lifetimes(&t), ("1h30m".into(), "3h".into()));
        // Without a ttl, a max_ttl below the default caps it.
        let t = template("spec: {}\nmax_ttl: 20m");
        assert_eq!(lifetimes(&t), ("20m".into(), "20m".into()));
        let t = template("spec: {}\nttl: soon");
        assert_eq!(lifetimes(&t), ("soon".into(), "1d".into()));
    }

    #[test]
    fn limits_name_quotas_and_reservations() {
        assert_eq!(limits(&template("spec: {}")), "-");
        let t = template("spec: {}\nper_owner: 2\nmax_sessions: 10\nreserve: {memory: 1Gi}");
        assert_eq!(limits(&t), "per_owner=2,max_sessions=10,memory=1Gi");
    }

    #[test]
    fn a_file_that_does_not_parse_names_the_field() {
        let input = Input {
            name: "t.yaml".into(),
            bytes: b"spec: {}\nper_owner: lots\n".to_vec(),
            format: Format::Yaml,
        };
        match parse_template(&input) {
            Err(e @ CliError::Invalid { .. }) => {
                let lines = e.lines().join("\n");
                assert!(
                    lines.contains("t.yaml") && lines.contains("per_owner"),
                    "{lines}"
                );
                assert_eq!(e.exit_code(), 6);
            }
            _ => panic!("a bad per_owner was accepted"),
        }
    }
}
