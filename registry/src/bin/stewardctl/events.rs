//! `stewardctl events`: read the event log, or follow its server-sent-event stream live.

use std::time::Duration;

use chrono::SecondsFormat;
use futures_util::StreamExt;
use reqwest::header::ACCEPT;
use reqwest::{Method, Response};
use steward_proto::Event;

use crate::error::{chain, CliError};
use crate::output::{self, kebab};
use crate::sse::SseParser;
use crate::{Ctx, Exit};

/// The registry sends a keep-alive every 15 s; this much silence means a dead connection.
const IDLE: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `stewardctl events` options.
#[derive(clap::Args)]
#[command(after_help = "Table columns: SEQ TIME KIND NODE MESSAGE (one event per line).")]
pub struct EventsArgs {
    /// Only events after this sequence number [default: 0, the start of the log].
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// Only events about this node.
    #[arg(long, value_name = "ID")]
    node: Option<String>,
    /// At most N events, oldest first (1-1000) [registry default: 100]. To page on, pass the
    /// last SEQ shown as --after.
    #[arg(long, value_name = "N", conflicts_with = "follow",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
    /// Keep the connection open and print events as they happen, after replaying those after
    /// --after. Reconnects (without losing events) when the connection drops. Stop with Ctrl-C.
    #[arg(long, short = 'f')]
    follow: bool,
}

pub async fn run(args: EventsArgs, ctx: &Ctx) -> Result<Exit, CliError> {
    if args.follow {
        return follow(&args, ctx).await;
    }
    let client = ctx.client()?;
    let query = [
        (
            "after",
            args.after.map(|a| a.to_string()).unwrap_or_default(),
        ),
        ("node", args.node.clone().unwrap_or_default()),
        (
            "limit",
            args.limit.map(|l| l.to_string()).unwrap_or_default(),
        ),
    ];
    let events: Vec<Event> = client.get(&["v1", "events"], &query).await?;
    if ctx.json() {
        output::json(&events)?;
        return Ok(Exit::Ok);
    }
    if events.is_empty() {
        output::note(ctx.quiet, "no events");
        return Ok(Exit::Ok);
    }
    if !ctx.quiet {
        output::line(header());
    }
    for e in &events {
        output::line(event_line(e));
    }
    Ok(Exit::Ok)
}

/// The header matching `event_line`'s columns.
pub fn header() -> String {
    format!(
        "{:>6}  {:<20}  {:<19}  {:<36}  {:<16}  MESSAGE",
        "SEQ", "TIME", "KIND", "NODE", "BY"
    )
}

/// `SEQ TIME KIND NODE BY MESSAGE` with aligned columns; BY is who did it (`-`: the registry
/// itself, or an event of an older registry).
pub fn event_line(e: &Event) -> String {
    format!(
        "{:>6}  {:<20}  {:<19}  {:<36}  {:<16}  {}",
        e.seq,
        e.time.to_rfc3339_opts(SecondsFormat::Secs, true),
        kebab(&e.kind),
        e.node_id.as_deref().unwrap_or("-"),
        e.actor.as_deref().unwrap_or("-"),
        e.message
    )
    .trim_end()
    .to_string()
}

fn print_event(ctx: &Ctx, e: &Event) -> Result<(), CliError> {
    if ctx.json() {
        output::json_line(e)
    } else {
        output::line(event_line(e));
        Ok(())
    }
}

/// Streams `/v1/events/stream`, resuming after the last event seen whenever it reconnects.
async fn follow(args: &EventsArgs, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.streaming_client()?;
    let mut last = args.after.unwrap_or(0);
    let mut connected_once = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        let rb = client
            .request(Method::GET, &["v1", "events", "stream"])
            .query(&[("after", last.to_string())])
            .header(ACCEPT, "text/event-stream");
        match client.send(rb).await {
            Ok(resp) => {
                if !connected_once && !ctx.json() && !ctx.quiet {
                    output::line(header());
                } else if connected_once {
                    output::note(ctx.quiet, "event stream reconnected");
                }
                connected_once = true;
                backoff = Duration::from_secs(1);
                let why = read_stream(resp, &mut last, args.node.as_deref(), ctx).await?;
                output::note(
                    ctx.quiet,
                    format_args!("event stream interrupted ({why}); reconnecting after seq {last}"),
                );
            }
            Err(e) if connected_once && retryable(&e) => {
                let first = e.lines().into_iter().next().unwrap_or_default();
                output::note(
                    ctx.quiet,
                    format_args!("{first}; retrying in {}s", backoff.as_secs()),
                );
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Worth retrying while following: the registry is restarting or briefly unreachable.
fn retryable(e: &CliError) -> bool {
    match e {
        CliError::Unreachable(_) => true,
        CliError::Api { status, .. } => *status >= 500,
        _ => false,
    }
}

/// Prints events until the stream ends; returns why it ended.
async fn read_stream(
    resp: Response,
    last: &mut u64,
    node: Option<&str>,
    ctx: &Ctx,
) -> Result<String, CliError> {
    let mut stream = resp.bytes_stream();
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(IDLE, stream.next()).await {
            Err(_) => return Ok(format!("nothing received for {}s", IDLE.as_secs())),
            Ok(None) => return Ok("closed by the registry".into()),
            Ok(Some(Err(e))) => return Ok(chain(&e)),
            Ok(Some(Ok(c))) => c,
        };
        for msg in parser.push(&chunk) {
            let ev: Event = match serde_json::from_str(&msg.data) {
                Ok(ev) => ev,
                Err(e) => {
                    let id = msg.id.as_deref().unwrap_or("?");
                    output::note(ctx.quiet, format_args!("skipping event {id}: {e}"));
                    continue;
                }
            };
            if ev.seq <= *last {
                continue;
            }
            *last = ev.seq;
            if node.is_some_and(|n| ev.node_id.as_deref() != Some(n)) {
                continue;
            }
            print_event(ctx, &ev)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseParser;
    use steward_proto::{CredentialKind, EventKind};

    fn sample() -> Event {
        Event {
            seq: 42,
            time: chrono::DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
                .expect("valid time")
                .with_timezone(&chrono::Utc),
            kind: EventKind::SpecWritten,
            node_id: Some("0123456789abcdef".into()),
            generation: Some(3),
            workload: None,
            credential: CredentialKind::Named,
            actor: Some("alice".into()),
            message: "spec written".into(),
        }
    }

    #[test]
    fn event_lines_have_the_documented_columns() {
        assert_eq!(
            event_line(&sample()),
            "    42  2024-05-01T12:00:00Z  spec-written         0123456789abcdef                      alice             spec written"
        );
        assert!(header().starts_with("   SEQ  TIME"));
    }

    #[test]
    fn stream_data_decodes_to_events() {
        let json = serde_json::to_string(&sample()).expect("serialises");
        let mut p = SseParser::default();
        let msgs = p.push(format!("id: 42\nevent: event\ndata: {json}\n\n").as_bytes());
        let ev: Event = serde_json::from_str(&msgs[0].data).expect("decodes");
        assert_eq!(ev, sample());
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(retryable(&CliError::Unreachable("x".into())));
        let api = |status| CliError::Api {
            status,
            error: String::new(),
            problems: vec![],
            hint: None,
        };
        assert!(retryable(&api(503)));
        assert!(!retryable(&api(401)));
    }
}
