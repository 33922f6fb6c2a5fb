//! `stewardctl rollout`: start a batched payload rollout, follow its status, and pause,
//! resume, abort or roll it back.

use chrono::Utc;
use clap::Subcommand;
use reqwest::Method;
use steward_proto::{Rollout, StartRollout};

use crate::error::CliError;
use crate::nodes::parse_selector;
use crate::output::{self, ago, kebab, render_kv, render_table};
use crate::{Ctx, Exit};

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Move PAYLOAD to VERSION on the nodes matching the selector, batch by batch; each batch
    /// must report converged and attested before the next starts.
    Start {
        payload: String,
        version: String,
        /// Which nodes (label selector); default: every node whose spec has the payload.
        #[arg(long, short = 'l', value_name = "SELECTOR", value_parser = parse_selector, default_value = "")]
        selector: String,
        /// Nodes per batch: a count (`2`) or a percentage (`25%`).
        #[arg(long, default_value = "1")]
        batch: String,
        /// How long one batch may take, e.g. `5m`.
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
    /// Show a rollout (or list them all without an id).
    #[command(visible_alias = "get")]
    Status { id: Option<String> },
    /// Pause: no new batch starts.
    Pause { id: String },
    /// Resume a paused or halted rollout.
    Resume { id: String },
    /// Abort: stop for good; nodes keep the version they have.
    Abort { id: String },
    /// Put the previous version back on every node the rollout touched.
    Rollback { id: String },
}

/// The readable view of one rollout.
pub fn describe(r: &Rollout) -> String {
    let now = Utc::now();
    let mut out = render_kv(
        &[
            ("ID", r.id.clone()),
            ("Payload", format!("{} -> {}", r.payload, r.version)),
            ("sha256", r.sha256.clone()),
            ("State", kebab(&r.state)),
            (
                "Batch",
                format!(
                    "{}/{} (size {}, time-out {}s)",
                    (r.current_batch + 1).min(r.batch_count),
                    r.batch_count,
                    r.batch,
                    r.timeout_secs
                ),
            ),
            ("Selector", r.selector.clone()),
            ("Updated", ago(now, r.updated_at)),
            ("Message", r.message.clone()),
        ],
        0,
    );
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            vec![
                (n.batch + 1).to_string(),
                n.node_id.clone(),
                n.previous_version.clone(),
                kebab(&n.state),
                n.error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&render_table(
        &["BATCH", "NODE", "FROM", "STATE", "ERROR"],
        &rows,
        0,
    ));
    out
}

fn show(ctx: &Ctx, r: &Rollout) -> Result<(), CliError> {
    if ctx.json() {
        output::json(r)
    } else {
        if !ctx.quiet {
            output::stdout(&describe(r));
        }
        Ok(())
    }
}

pub async fn run(cmd: RolloutCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let action = |id: String, what: &'static str| async move {
        client
            .call::<Rollout>(Method::POST, &["v1", "rollouts", &id, what])
            .await
    };
    match cmd {
        RolloutCmd::Start {
            payload,
            version,
            selector,
            batch,
            timeout,
        } => {
            let body = StartRollout {
                payload,
                version,
                selector,
                batch: Some(batch),
                timeout: Some(timeout),
            };
            let r: Rollout = ctx
                .client()?
                .send_json(Method::POST, &["v1", "rollouts"], &body)
                .await?;
            show(ctx, &r)?;
        }
        RolloutCmd::Status { id: Some(id) } => {
            let r: Rollout = ctx.client()?.get(&["v1", "rollouts", &id], &[]).await?;
            show(ctx, &r)?;
        }
        RolloutCmd::Status { id: None } => {
            let list: Vec<Rollout> = ctx.client()?.get(&["v1", "rollouts"], &[]).await?;
            if ctx.json() {
                output::json(&list)?;
            } else if list.is_empty() {
                output::note(ctx.quiet, "no rollouts");
            } else {
                let now = Utc::now();
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            format!("{}@{}", r.payload, r.version),
                            kebab(&r.state),
                            format!("{}/{}", r.current_batch.min(r.batch_count), r.batch_count),
                            r.nodes.len().to_string(),
                            ago(now, r.updated_at),
                            r.message.clone(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "ID",
                        "PAYLOAD",
                        "STATE",
                        "BATCHES DONE",
                        "NODES",
                        "UPDATED",
                        "MESSAGE",
                    ],
                    &rows,
                );
            }
        }
        RolloutCmd::Pause { id } => show(ctx, &action(id, "pause").await?)?,
        RolloutCmd::Resume { id } => show(ctx, &action(id, "resume").await?)?,
        RolloutCmd::Abort { id } => show(ctx, &action(id, "abort").await?)?,
        RolloutCmd::Rollback { id } => show(ctx, &action(id, "rollback").await?)?,
    }
    Ok(Exit::Ok)
}
