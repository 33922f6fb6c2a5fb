//! `stewardctl nodes`: list, show, label, re-enrolment grants, reset a workload and
//! decommission nodes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use reqwest::Method;
use steward_proto::selector::Selector;
use steward_proto::{Health, Node, NodePatch, NodeStatus, ResourceState, WorkloadKind};

use crate::client::Client;
use crate::error::CliError;
use crate::node_view;
use crate::output::{self, ago, kebab, or_dash};
use crate::{Ctx, Exit};

#[derive(Subcommand)]
pub enum NodesCmd {
    /// List nodes: health, labels, last heartbeat, generation and resource summary.
    #[command(visible_alias = "ls")]
    List {
        /// Only nodes whose labels match this selector: comma-joined `key=value`,
        /// `key!=value`, `key` (exists) and `!key` (absent), e.g. `role=builder,!retired`.
        #[arg(long, short = 'l', value_name = "SELECTOR", value_parser = parse_selector)]
        selector: Option<String>,
        /// Only nodes in these health states, comma-separated: ready, stale, down,
        /// decommissioned.
        #[arg(long, value_name = "HEALTH,...", value_delimiter = ',', value_parser = parse_health)]
        health: Vec<Health>,
        /// Only nodes whose last status shows drift (a payload not as pinned, a resource
        /// changed by hand).
        #[arg(long)]
        drifted: bool,
    },
    /// Show one node: labels, facts, host statistics and the state of each managed resource.
    #[command(visible_alias = "show")]
    Get {
        /// Node id (see `nodes list`).
        id: String,
    },
    /// Set or remove labels: `key=value` sets a label, `key-` removes it.
    #[command(after_help = "Example: stewardctl nodes label 3f2a… role=builder env=lab retired-")]
    Label {
        /// Node id.
        id: String,
        /// Changes to make, applied together.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
    /// Decommission a node: revoke its secret; its record and history are kept.
    #[command(visible_alias = "decommission")]
    Delete {
        /// Node id.
        id: String,
    },
    /// Issue a one-time re-enrolment grant for a node whose host lost its secret (reinstalled).
    /// The grant is printed on stdout, once; the host enrols with it as its token
    /// (`steward-agent --token GRANT enroll`) and keeps the node's id, labels and spec.
    Reenroll {
        /// Node id.
        id: String,
        /// Lifetime of the grant, e.g. `30m`, `1h` (1s to 7d).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::tokens::parse_duration)]
        expires: String,
    },
    /// Reset a workload's escalation ladder (and rollback): a container kept stopped as
    /// failed is started afresh. Takes effect at the node's next heartbeat.
    Reset {
        /// Node id.
        id: String,
        /// Container or VM name, as in the node's spec.
        workload: String,
        /// Only the workload of this kind (a container and a VM may share a name); without
        /// it, every workload of that name.
        #[arg(long, value_name = "container|vm", value_parser = parse_kind)]
        kind: Option<WorkloadKind>,
    },
}

/// A workload kind: `container` or `vm`.
fn parse_kind(s: &str) -> Result<WorkloadKind, String> {
    WorkloadKind::parse(s)
        .ok_or_else(|| format!("{s:?} is not a workload kind: {}", WorkloadKind::choices()))
}

/// Checks a selector locally so that typos fail before any request (exit 2).
pub fn parse_selector(s: &str) -> Result<String, String> {
    s.parse::<Selector>().map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_health(s: &str) -> Result<Health, String> {
    s.trim().parse()
}

pub async fn run(cmd: NodesCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    match cmd {
        NodesCmd::List {
            selector,
            health,
            drifted,
        } => list(&client, ctx, selector, &health, drifted).await,
        NodesCmd::Get { id } => get(&client, ctx, &id).await,
        NodesCmd::Label { id, changes } => label(&client, ctx, &id, &changes).await,
        NodesCmd::Reset { id, workload, kind } => reset(&client, ctx, &id, &workload, kind).await,
        NodesCmd::Reenroll { id, expires } => reenroll(&client, ctx, &id, expires).await,
        NodesCmd::Delete { id } => delete(&client, ctx, &id).await,
    }
}

/// `nodes list`: every page of the (filtered) list.
async fn list(
    client: &Client,
    ctx: &Ctx,
    selector: Option<String>,
    health: &[Health],
    drifted: bool,
) -> Result<Exit, CliError> {
    let health = health
        .iter()
        .map(|h| h.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let query = [
        ("selector", selector.unwrap_or_default()),
        ("health", health),
        (
            "drifted",
            if drifted {
                "true".into()
            } else {
                String::new()
            },
        ),
    ];
    let nodes: Vec<Node> = client.get_pages(&["v1", "nodes"], &query).await?;
    print_list(ctx, &nodes)
}

/// `nodes get`: one node, described (or as JSON).
async fn get(client: &Client, ctx: &Ctx, id: &str) -> Result<Exit, CliError> {
    let node: Node = client.get(&["v1", "nodes", id], &[]).await?;
    if ctx.json() {
        return output::json(&node).map(|()| Exit::Ok);
    }
    output::stdout(&node_view::describe(&node, Utc::now()));
    Ok(Exit::Ok)
}

/// `nodes label`: sets and removes labels.
async fn label(client: &Client, ctx: &Ctx, id: &str, changes: &[String]) -> Result<Exit, CliError> {
    let labels = parse_label_changes(changes).map_err(CliError::Usage)?;
    let patch = NodePatch { labels };
    let node: Node = client
        .send_json(Method::PATCH, &["v1", "nodes", id], &patch)
        .await?;
    ctx.answer(&node, |n| {
        format!("node {}: labels {}", n.id, output::labels(&n.labels))
    })
}

/// `nodes reset`: queues a reset of a workload's escalation ladder.
async fn reset(
    client: &Client,
    ctx: &Ctx,
    id: &str,
    workload: &str,
    kind: Option<WorkloadKind>,
) -> Result<Exit, CliError> {
    let path = ["v1", "nodes", id, "workloads", workload, "reset"];
    let mut rb = client.request(Method::POST, &path);
    if let Some(k) = kind {
        rb = rb.query(&[("kind", k.as_str())]);
    }
    let q: steward_proto::api::ResetQueued = client.json(rb).await?;
    ctx.answer(&q, |q| {
        let what = match q.kind {
            Some(k) => format!("{} {}", k.as_str(), q.workload),
            None => q.workload.clone(),
        };
        format!(
            "reset of {what} on node {} queued for its next heartbeat",
            q.node_id
        )
    })
}

/// `nodes reenroll`: issues a re-enrolment grant.
async fn reenroll(client: &Client, ctx: &Ctx, id: &str, expires: String) -> Result<Exit, CliError> {
    let body = steward_proto::CreateReenrollGrant {
        expires: Some(expires),
    };
    let g: steward_proto::ReenrollGrantCreated = client
        .send_json(Method::POST, &["v1", "nodes", id, "reenroll"], &body)
        .await?;
    if ctx.json() {
        output::json(&g)?;
    } else {
        output::line(&g.grant);
        output::note(
            ctx.quiet,
            format_args!(
                "re-enrolment grant {} for node {}: one use, expires {}. It is shown \
                 only once: on the host, run steward-agent --token GRANT enroll --force",
                g.id,
                g.node_id,
                g.expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
            ),
        );
    }
    Ok(Exit::Ok)
}

/// `nodes delete`: decommissions a node.
async fn delete(client: &Client, ctx: &Ctx, id: &str) -> Result<Exit, CliError> {
    let node: Node = client.call(Method::DELETE, &["v1", "nodes", id]).await?;
    ctx.answer(&node, |n| {
        format!("node {} ({}) decommissioned", n.id, or_dash(&n.hostname))
    })
}

/// Parses `key=value` (set) and `key-` (remove) arguments into a merge patch.
pub fn parse_label_changes(args: &[String]) -> Result<BTreeMap<String, Option<String>>, String> {
    let mut out = BTreeMap::new();
    for a in args {
        let (key, value) = if let Some((k, v)) = a.split_once('=') {
            (k, Some(v.to_string()))
        } else if let Some(k) = a.strip_suffix('-') {
            (k, None)
        } else {
            return Err(format!(
                "label change {a:?} must be KEY=VALUE (set) or KEY- (remove)"
            ));
        };
        if key.is_empty() {
            return Err(format!("label change {a:?} has no key"));
        }
        if out.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key:?} is changed twice"));
        }
    }
    Ok(out)
}

fn print_list(ctx: &Ctx, nodes: &[Node]) -> Result<Exit, CliError> {
    if ctx.json() {
        output::json(nodes)?;
    } else if ctx.quiet {
        for n in nodes {
            output::line(&n.id);
        }
    } else if nodes.is_empty() {
        output::note(false, "no nodes");
    } else {
        let now = Utc::now();
        let rows: Vec<Vec<String>> = nodes.iter().map(|n| list_row(n, now)).collect();
        output::table(
            &[
                "ID",
                "HOSTNAME",
                "HEALTH",
                "KIND",
                "LABELS",
                "LAST HEARTBEAT",
                "GEN",
                "RESOURCES",
                "DRIFT",
                "AGENT",
            ],
            &rows,
        );
    }
    Ok(Exit::Ok)
}

fn list_row(n: &Node, now: DateTime<Utc>) -> Vec<String> {
    vec![
        n.id.clone(),
        or_dash(&n.hostname),
        n.health.to_string(),
        kebab(&n.facts.kind),
        output::labels(&n.labels),
        n.last_heartbeat
            .map_or_else(|| "never".to_string(), |t| ago(now, t)),
        format!("{}/{}", n.generation, n.observed_generation),
        resource_summary(n.status.as_ref()),
        match (n.drifted, n.rolled_back_from) {
            (true, _) => format!("DRIFTED ({})", n.drift.len()),
            (false, Some(g)) => format!("rolled back from generation {g}"),
            _ => "-".into(),
        },
        or_dash(&n.facts.agent_version),
    ]
}

/// `2 converged, 1 failed` from the last status; `-` without resources.
pub fn resource_summary(status: Option<&NodeStatus>) -> String {
    let Some(st) = status else {
        return "-".into();
    };
    let order = [
        ResourceState::Converged,
        ResourceState::Pending,
        ResourceState::Drifted,
        ResourceState::Conflict,
        ResourceState::Failed,
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| {
            let n = st.resources.iter().filter(|r| r.state == *s).count();
            (n > 0).then(|| format!("{n} {}", kebab(s)))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_proto::{ResourceKind, ResourceStatus};

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_changes_set_and_remove() {
        let p = parse_label_changes(&args(&["role=builder", "retired-", "note=a-b-", "x="]))
            .expect("valid changes");
        assert_eq!(p["role"], Some("builder".to_string()));
        assert_eq!(p["retired"], None);
        assert_eq!(p["note"], Some("a-b-".to_string()));
        assert_eq!(p["x"], Some(String::new()));
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn label_changes_refuse_nonsense() {
        assert!(parse_label_changes(&args(&["role"])).is_err());
        assert!(parse_label_changes(&args(&["=v"])).is_err());
        assert!(parse_label_changes(&args(&["-"])).is_err());
        assert!(parse_label_changes(&args(&["a=1", "a-"])).is_err());
    }

    #[test]
    fn resource_summary_counts_states() {
        let r = |state| ResourceStatus::new(ResourceKind::Container, "x", state, None);
        let st = NodeStatus {
            resources: vec![
                r(ResourceState::Failed),
                r(ResourceState::Converged),
                r(ResourceState::Converged),
            ],
            ..Default::default()
        };
        assert_eq!(resource_summary(Some(&st)), "2 converged, 1 failed");
        assert_eq!(resource_summary(None), "-");
    }

    #[test]
    fn selectors_are_checked_locally() {
        assert!(parse_selector("role=builder,!retired").is_ok());
        assert!(parse_selector("role=a b").is_err());
        assert!(parse_selector("a,,b").is_err());
    }
}
