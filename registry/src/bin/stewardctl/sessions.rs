//! `stewardctl sessions`: create a session from a template (optionally waiting until it runs),
//! list, show, extend and end sessions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;
use steward_proto::{Session, SessionCreate, SessionExtend, SessionState};

use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, compact_duration, relative, ListView};
use crate::tokens::parse_duration;
use crate::{Ctx, Exit};

/// How often `sessions create --wait` asks for the session's state.
const POLL: Duration = Duration::from_secs(1);
/// How often `--wait` says it is still waiting while nothing changes.
const STILL_WAITING: Duration = Duration::from_secs(15);

#[derive(Subcommand)]
pub enum SessionsCmd {
    /// Create a session from a template; prints its id on stdout (details on stderr).
    ///
    /// The registry checks the quotas, places the session on the least loaded ready node
    /// matching the template's selector, and allocates its host ports, VLAN and volumes. A
    /// refused create names the limit reached, why no node fits, or the bad field (exit 6).
    /// With --wait, waits until the session's workloads run on its node.
    #[command(visible_alias = "new")]
    Create(CreateArgs),
    /// List sessions (live, and recently ended), oldest first, with the time each has left.
    #[command(visible_alias = "ls")]
    List {
        /// Only this owner's sessions.
        #[arg(long, value_name = "OWNER")]
        owner: Option<String>,
        /// Only sessions of this template.
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
        /// Only sessions in this state: pending, running, failed or ended.
        #[arg(long, value_name = "STATE", value_parser = parse_state)]
        state: Option<SessionState>,
        /// Only sessions placed on this node (id).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Show one session as YAML: node, parameters, allocations, state, deadline, endpoints.
    #[command(visible_alias = "show")]
    Get {
        /// Session id.
        id: String,
    },
    /// Push a live session's deadline back, up to its template's max_ttl from its creation
    /// (past it, the error says how much is left).
    Extend {
        /// Session id.
        id: String,
        /// How much longer, e.g. `30m`, `1h`.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        by: String,
    },
    /// End a session now: its workloads and volumes leave its node, its allocations are free.
    #[command(visible_aliases = ["delete", "rm"])]
    End {
        /// Session id.
        id: String,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// Template name (see `stewardctl templates list`).
    template: String,
    /// Who the session is for [default: the caller's credential name].
    #[arg(long, value_name = "OWNER")]
    owner: Option<String>,
    /// A template parameter; repeat for more. A VALUE that reads as a JSON number or boolean
    /// (`2`, `true`) is sent as one, anything else as a string.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE", value_parser = parse_param)]
    params: Vec<(String, Value)>,
    /// A template parameter always sent as a string, even `123` or `true`; repeat for more.
    #[arg(long = "param-string", value_name = "KEY=VALUE", value_parser = parse_string_param)]
    string_params: Vec<(String, Value)>,
    /// Lifetime, e.g. `2h` [default: the template's ttl; at most its max_ttl].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ttl: Option<String>,
    /// Wait until the session runs (every workload up on its node) or fails, reporting
    /// progress on stderr; exit 7 if it fails or is still pending after --timeout.
    #[arg(long)]
    wait: bool,
    /// With --wait: how long to wait, e.g. `90s`, `10m`.
    #[arg(long, value_name = "DURATION", default_value = "5m", requires = "wait",
          value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// `--state`: one of the session states.
fn parse_state(s: &str) -> Result<SessionState, String> {
    s.parse()
}

/// `KEY=VALUE` for `--param`: the value as a JSON number or boolean when it reads as one
/// (exactly, without surrounding spaces), else as a string.
pub fn parse_param(s: &str) -> Result<(String, Value), String> {
    let (k, v) = split_param(s)?;
    let value = match serde_json::from_str::<Value>(v) {
        Ok(n @ (Value::Number(_) | Value::Bool(_))) if v.trim() == v => n,
        _ => Value::String(v.to_string()),
    };
    Ok((k.to_string(), value))
}

/// `KEY=VALUE` for `--param-string`: the value always a string.
pub fn parse_string_param(s: &str) -> Result<(String, Value), String> {
    let (k, v) = split_param(s)?;
    Ok((k.to_string(), Value::String(v.to_string())))
}

fn split_param(s: &str) -> Result<(&str, &str), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(format!("parameter {s:?} must be KEY=VALUE")),
    }
}

/// The parameters of a create, each named once.
fn params_map(pairs: Vec<(String, Value)>) -> Result<BTreeMap<String, Value>, CliError> {
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if out.insert(k.clone(), v).is_some() {
            return Err(CliError::Usage(format!("parameter {k:?} is given twice")));
        }
    }
    Ok(out)
}

/// What the EXPIRES IN column shows: `ended`, or the time left until the deadline (`0s` once
/// it has passed and the registry has not ended the session yet).
pub fn time_left(now: DateTime<Utc>, s: &Session) -> String {
    if s.state == SessionState::Ended {
        return "ended".into();
    }
    let secs = (s.expires_at - now).num_seconds().max(0);
    compact_duration(secs.unsigned_abs())
}

/// `http=host:10000,ssh=host:10001`, or `-`.
pub fn endpoints(s: &Session) -> String {
    if s.endpoints.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = (s.endpoints.iter())
        .map(|e| format!("{}={}", e.name, e.address))
        .collect();
    parts.join(",")
}

/// `pending`, or `failed (web: exited 1)` with the registry's reason.
fn state_text(s: &Session) -> String {
    match &s.reason {
        Some(r) => format!("{} ({r})", s.state.as_str()),
        None => s.state.as_str().to_string(),
    }
}

pub async fn run(cmd: SessionsCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    match cmd {
        SessionsCmd::Create(args) => create(ctx, &client, args).await?,
        SessionsCmd::List {
            owner,
            template,
            state,
            node,
        } => {
            let query = [
                ("owner", owner.unwrap_or_default()),
                ("template", template.unwrap_or_default()),
                (
                    "state",
                    state.map(|s| s.as_str().to_string()).unwrap_or_default(),
                ),
                ("node", node.unwrap_or_default()),
            ];
            let list: Vec<Session> = client.get(&["v1", "sessions"], &query).await?;
            print_list(ctx, &list)?;
        }
        SessionsCmd::Get { id } => {
            let s: Session = client.get(&["v1", "sessions", &id], &[]).await?;
            if ctx.json() {
                output::json(&s)?;
            } else {
                output::yaml(&s)?;
            }
        }
        SessionsCmd::Extend { id, by } => {
            let s: Session = client
                .send_json(
                    Method::POST,
                    &["v1", "sessions", &id, "extend"],
                    &SessionExtend { by },
                )
                .await?;
            ctx.answer(&s, |s| {
                format!(
                    "session {} extended: expires {}",
                    s.id,
                    output::when(Utc::now(), s.expires_at)
                )
            })?;
        }
        SessionsCmd::End { id } => {
            let s: Session = client
                .call(Method::DELETE, &["v1", "sessions", &id])
                .await?;
            ctx.answer(&s, |s| format!("session {} ended", s.id))?;
        }
    }
    Ok(Exit::Ok)
}

/// `sessions create`: the id on stdout at once (so that a script has it even when waiting
/// fails), the details on stderr; with --output json, the session (once up with --wait).
async fn create(ctx: &Ctx, client: &Client, args: CreateArgs) -> Result<(), CliError> {
    let mut pairs = args.params;
    pairs.extend(args.string_params);
    let body = SessionCreate {
        template: args.template,
        owner: args.owner,
        params: params_map(pairs)?,
        ttl: args.ttl,
    };
    let s: Session = client
        .send_json(Method::POST, &["v1", "sessions"], &body)
        .await?;
    if !ctx.json() {
        output::line(&s.id);
    }
    output::note(
        ctx.quiet,
        format_args!(
            "session {} created for {} from template {} (revision {}) on node {}: {}, expires {}",
            s.id,
            s.owner,
            s.template,
            s.template_revision,
            s.node,
            s.state.as_str(),
            relative(Utc::now(), s.expires_at),
        ),
    );
    let s = if args.wait {
        wait_until_up(ctx, client, s, args.timeout).await?
    } else {
        s
    };
    if ctx.json() {
        output::json(&s)?;
    }
    if !s.endpoints.is_empty() {
        output::note(ctx.quiet, format_args!("endpoints: {}", endpoints(&s)));
    }
    Ok(())
}

/// Polls the session until it runs (returned), fails or ends (an error naming why), or
/// `timeout` passes (an error naming its state); progress goes to stderr.
async fn wait_until_up(
    ctx: &Ctx,
    client: &Client,
    mut s: Session,
    timeout: Duration,
) -> Result<Session, CliError> {
    let start = Instant::now();
    let mut said = Instant::now();
    output::note(
        ctx.quiet,
        format_args!(
            "waiting up to {} for session {} to run...",
            compact_duration(timeout.as_secs()),
            s.id
        ),
    );
    loop {
        match s.state {
            SessionState::Running => {
                let took = start.elapsed().as_secs();
                output::note(
                    ctx.quiet,
                    format_args!(
                        "session {} running (after {})",
                        s.id,
                        compact_duration(took)
                    ),
                );
                return Ok(s);
            }
            SessionState::Failed | SessionState::Ended => {
                return Err(CliError::Unexpected(format!(
                    "session {} {}; see `stewardctl sessions get {}`",
                    s.id,
                    state_text(&s),
                    s.id
                )));
            }
            SessionState::Pending => {}
        }
        if start.elapsed() >= timeout {
            return Err(CliError::Unexpected(format!(
                "session {} is still {} after {}; see `stewardctl sessions get {}`",
                s.id,
                state_text(&s),
                compact_duration(timeout.as_secs()),
                s.id
            )));
        }
        tokio::time::sleep(POLL.min(timeout.saturating_sub(start.elapsed()))).await;
        let before = s.state;
        s = client.get(&["v1", "sessions", &s.id], &[]).await?;
        if s.state == before && said.elapsed() >= STILL_WAITING {
            said = Instant::now();
            output::note(
                ctx.quiet,
                format_args!(
                    "session {} still {} after {}",
                    s.id,
                    state_text(&s),
                    compact_duration(start.elapsed().as_secs())
                ),
            );
        }
    }
}

fn print_list(ctx: &Ctx, list: &[Session]) -> Result<(), CliError> {
    let now = Utc::now();
    let row = |s: &Session| {
        vec![
            s.id.clone(),
            if s.spare {
                "(spare)".to_string()
            } else {
                s.owner.clone()
            },
            s.template.clone(),
            output::or_dash(&s.node),
            s.state.as_str().to_string(),
            time_left(now, s),
            endpoints(s),
        ]
    };
    let headers = [
        "ID",
        "OWNER",
        "TEMPLATE",
        "NODE",
        "STATE",
        "EXPIRES IN",
        "ENDPOINTS",
    ];
    output::list(
        ctx,
        list,
        ListView {
            what: "sessions",
            headers: &headers,
            key: |s| s.id.clone(),
            row: &row,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use steward_proto::{Allocations, Endpoint};

    #[test]
    fn params_read_numbers_and_booleans_as_json_and_the_rest_as_strings() {
        assert_eq!(parse_param("n=2"), Ok(("n".into(), json!(2))));
        assert_eq!(parse_param("x=-1.5"), Ok(("x".into(), json!(-1.5))));
        assert_eq!(parse_param("debug=true"), Ok(("debug".into(), json!(true))));
        assert_eq!(
            parse_param("flavor=small"),
            Ok(("flavor".into(), json!("small")))
        );
        // Only numbers and booleans: null, quoted strings, arrays and objects stay text.
        assert_eq!(parse_param("a=null"), Ok(("a".into(), json!("null"))));
        assert_eq!(parse_param("a=\"q\""), Ok(("a".into(), json!("\"q\""))));
        assert_eq!(parse_param("a=[1]"), Ok(("a".into(), json!("[1]"))));
        assert_eq!(parse_param("a= 2"), Ok(("a".into(), json!(" 2"))));
        // The first `=` splits; the value may be empty or hold more.
        assert_eq!(parse_param("q=a=b"), Ok(("q".into(), json!("a=b"))));
        assert_eq!(parse_param("e="), Ok(("e".into(), json!(""))));
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=1").is_err());
        assert_eq!(parse_string_param("n=123"), Ok(("n".into(), json!("123"))));
        assert!(parse_string_param("n").is_err());
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        let twice = vec![("n".to_string(), json!(1)), ("n".to_string(), json!("1"))];
        assert!(matches!(params_map(twice), Err(CliError::Usage(m)) if m.contains("\"n\"")));
        let ok = params_map(vec![("a".into(), json!(1)), ("b".into(), json!("x"))]);
        assert_eq!(ok.expect("distinct names").len(), 2);
    }

    fn session(now: DateTime<Utc>, state: SessionState, left_secs: i64) -> Session {
        Session {
            id: "s-1".into(),
            template: "web".into(),
            template_revision: 1,
            owner: "alice".into(),
            spare: false,
            node: "n1".into(),
            params: BTreeMap::new(),
            allocations: Allocations::default(),
            reserve: Default::default(),
            state,
            reason: None,
            created_at: now,
            created_by: "admin".into(),
            expires_at: now + chrono::Duration::seconds(left_secs),
            running_at: None,
            ended_at: None,
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn time_left_is_humanized_or_ended() {
        let now = Utc::now();
        assert_eq!(
            time_left(now, &session(now, SessionState::Running, 3600 + 120)),
            "1h2m"
        );
        assert_eq!(
            time_left(now, &session(now, SessionState::Pending, 45)),
            "45s"
        );
        assert_eq!(
            time_left(now, &session(now, SessionState::Pending, 600)),
            "10m"
        );
        assert_eq!(
            time_left(now, &session(now, SessionState::Running, 2 * 86400)),
            "2d"
        );
        // Past its deadline but not ended yet, and ended (whatever its deadline).
        assert_eq!(
            time_left(now, &session(now, SessionState::Running, -5)),
            "0s"
        );
        assert_eq!(
            time_left(now, &session(now, SessionState::Ended, 600)),
            "ended"
        );
    }

    #[test]
    fn endpoints_and_states_render_compactly() {
        let now = Utc::now();
        let mut s = session(now, SessionState::Failed, 60);
        assert_eq!(endpoints(&s), "-");
        s.endpoints = vec![
            Endpoint {
                name: "http".into(),
                address: "h:10000".into(),
            },
            Endpoint {
                name: "ssh".into(),
                address: "h:10001".into(),
            },
        ];
        assert_eq!(endpoints(&s), "http=h:10000,ssh=h:10001");
        assert_eq!(state_text(&s), "failed");
        s.reason = Some("web: exited 1".into());
        assert_eq!(state_text(&s), "failed (web: exited 1)");
    }

    #[test]
    fn states_parse_for_the_filter() {
        assert_eq!(parse_state("running"), Ok(SessionState::Running));
        assert!(parse_state("up").is_err());
    }
}
