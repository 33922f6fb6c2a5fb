//! The event log: paged reads and a server-sent-events stream.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::{Extension, Json};
use futures_util::Stream;
use steward_proto::Event;
use tokio::sync::broadcast::{self, error::RecvError};

use super::guard::sees_event;
use crate::auth::Caller;
use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;

fn after_param(q: &HashMap<String, String>, headers: &HeaderMap) -> ApiResult<u64> {
    let raw = q
        .get("after")
        .map(String::as_str)
        .or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()));
    raw.map(|s| {
        s.parse::<u64>()
            .map_err(|_| RegistryError::invalid("after", "must be an event sequence number"))
    })
    .transpose()
    .map(|v| v.unwrap_or(0))
}

/// `GET /v1/events?after=SEQ&limit=N&node=ID`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<Event>>> {
    let after = after_param(&q, &headers)?;
    let limit = super::page_limit(&q)?;
    let node = q.get("node");
    let events = match node {
        None if caller.scope().is_none() => state.store.events_after(after, limit).await?,
        _ => {
            // Filtered read: scan forward in pages until `limit` matches are found.
            let mut out = Vec::new();
            let mut cursor = after;
            loop {
                let page = state.store.events_after(cursor, 1000).await?;
                let Some(last) = page.last() else { break };
                cursor = last.seq;
                out.extend(page.into_iter().filter(|e| {
                    node.is_none_or(|n| e.node_id.as_ref() == Some(n))
                        && sees_event(&state, &caller, e)
                }));
                if out.len() >= limit {
                    out.truncate(limit);
                    break;
                }
            }
            out
        }
    };
    Ok(Json(events))
}

/// Whether the stream's named credential (if it is one) is still live.
fn still_valid(state: &AppState, caller: &Caller) -> bool {
    match caller {
        Caller::Principal(p) if p.credential == steward_proto::CredentialKind::Named => {
            state.credentials.is_live(&p.name)
        }
        _ => true,
    }
}

struct Follow {
    state: AppState,
    caller: Caller,
    rx: broadcast::Receiver<Event>,
    backlog: VecDeque<Event>,
    last: u64,
}

/// `GET /v1/events/stream?after=SEQ`: replays stored events, then follows live ones. A slow
/// reader that falls behind the live channel is caught up from the store, so nothing is lost.
pub async fn stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let after = after_param(&q, &headers)?;
    // Subscribe before reading the backlog so no event falls between the two.
    let rx = state.events.subscribe();
    let follow = Follow {
        state,
        caller,
        rx,
        backlog: VecDeque::new(),
        last: after,
    };
    let s = futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(ev) = f.backlog.pop_front() {
                if ev.seq <= f.last {
                    continue;
                }
                f.last = ev.seq;
                if !still_valid(&f.state, &f.caller) {
                    // Revoked or expired while the stream was open.
                    return None;
                }
                if !sees_event(&f.state, &f.caller, &ev) {
                    continue;
                }
                let data = serde_json::to_string(&ev).unwrap_or_default();
                let sse = SseEvent::default()
                    .id(ev.seq.to_string())
                    .event("event")
                    .data(data);
                return Some((Ok(sse), f));
            }
            match f.state.store.events_after(f.last, 500).await {
                Ok(page) if !page.is_empty() => {
                    f.backlog.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "event stream read failed");
                    return None;
                }
            }
            match f.rx.recv().await {
                Ok(ev) => f.backlog.push_back(ev),
                Err(RecvError::Lagged(_)) => {} // caught up from the store on the next turn
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
