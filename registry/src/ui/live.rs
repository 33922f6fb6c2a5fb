//! Live updates of the status page: `GET /ui/events?after=SEQ[&node=ID]`, server-sent events.
//!
//! For every logged event after `SEQ` (replayed from the store, then followed live) the stream
//! sends the event as a rendered list item (`event`), the node's rendered table row (`row`),
//! on a node page the node's rendered detail section (`detail`), and — at most once a second —
//! the rendered overview cards (`summary`). Each `data:` is JSON `{"id"?, "html"}`; the HTML is
//! rendered by the same escaping templates as the page, so the script only swaps elements.
//! Without `after` (or `Last-Event-ID`) the stream starts at the current event; a client more
//! than 2,000 events behind gets `reload` and the stream ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use steward_proto::Event;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{deny_api, node_page, pages, view};
use crate::state::AppState;
use crate::store::StoreError;

/// Shortest time between two `summary` updates (each one looks at every node of the fleet view).
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// A client further behind than this many events is told to reload instead of replaying.
const MAX_REPLAY: u64 = 2_000;

/// Where to start: `after=` or `Last-Event-ID` (the larger), or now when neither is given.
fn after(q: &HashMap<String, String>, headers: &HeaderMap) -> Option<u64> {
    let from_query = q.get("after").and_then(|s| s.parse::<u64>().ok());
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    from_query.max(from_header)
}

/// `GET /ui/events`.
pub async fn stream(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(d) = super::access::viewer(&state, &headers) {
        return deny_api(d);
    }
    let after = after(&q, &headers);
    let node = q.get("node").cloned().filter(|n| !n.is_empty());
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        if let Err(e) = follow(state, after, node, tx).await {
            tracing::error!(error = %format!("{e:#}"), "status page event stream failed");
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

type Tx = mpsc::Sender<Result<SseEvent, Infallible>>;

/// Sends one SSE message; `false` when the client is gone.
async fn send(tx: &Tx, name: &str, id: Option<u64>, data: serde_json::Value) -> bool {
    let mut ev = SseEvent::default().event(name).data(data.to_string());
    if let Some(id) = id {
        ev = ev.id(id.to_string());
    }
    tx.send(Ok(ev)).await.is_ok()
}

/// Sends what one event changes; `Ok(false)` when the client is gone.
async fn on_event(
    state: &AppState,
    tx: &Tx,
    node: Option<&str>,
    ev: &Event,
) -> Result<bool, StoreError> {
    let now = chrono::Utc::now();
    if node.is_some() && ev.node_id.as_deref() != node {
        // Keep the client's Last-Event-ID current without sending anything it shows.
        return Ok(send(tx, "seen", Some(ev.seq), json!({})).await);
    }
    if let Some(id) = &ev.node_id {
        if let Some(r) = view::row(&state.fleet, id) {
            let html = pages::row(&r, now).into_string();
            if !send(tx, "row", None, json!({"id": id, "html": html})).await {
                return Ok(false);
            }
        }
        if node == Some(id.as_str()) {
            if let Some(rec) = state.store.node(id).await? {
                let n = state.nodes.to_wire(rec);
                let nets = state
                    .specs
                    .document(id)
                    .await
                    .map(|d| d.spec.networks)
                    .unwrap_or_default();
                let html = node_page::detail(&n, &nets, now).into_string();
                if !send(tx, "detail", None, json!({"id": id, "html": html})).await {
                    return Ok(false);
                }
            }
        }
    }
    let html = pages::event_item(ev).into_string();
    Ok(send(
        tx,
        "event",
        Some(ev.seq),
        json!({"seq": ev.seq, "html": html}),
    )
    .await)
}

async fn follow(
    state: AppState,
    after: Option<u64>,
    node: Option<String>,
    tx: Tx,
) -> Result<(), StoreError> {
    // Subscribe before reading the backlog so no event falls between the two.
    let mut rx = state.events.subscribe();
    let now = state.store.last_event_seq().await?;
    let mut last = after.unwrap_or(now);
    if now.saturating_sub(last) > MAX_REPLAY {
        // Cheaper for both sides to render the page afresh than to replay that much.
        send(&tx, "reload", None, json!({"behind": now - last})).await;
        return Ok(());
    }
    let mut dirty = false;
    let mut summary_at: Option<Instant> = None;
    loop {
        let page = state.store.events_after(last, 200).await?;
        if !page.is_empty() {
            for ev in &page {
                if !on_event(&state, &tx, node.as_deref(), ev).await? {
                    return Ok(());
                }
                last = ev.seq;
            }
            dirty = true;
            continue;
        }
        let due = summary_at.map_or(Duration::ZERO, |t| {
            SUMMARY_EVERY.saturating_sub(t.elapsed())
        });
        if dirty && due.is_zero() && node.is_none() {
            let html = pages::summary(&view::Summary::of_fleet(&state.fleet)).into_string();
            if !send(&tx, "summary", None, json!({ "html": html })).await {
                return Ok(());
            }
            dirty = false;
            summary_at = Some(Instant::now());
            continue;
        }
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) if ev.seq > last => {
                    if !on_event(&state, &tx, node.as_deref(), &ev).await? {
                        return Ok(());
                    }
                    last = ev.seq;
                    dirty = true;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {} // caught up from the store next turn
                Err(RecvError::Closed) => return Ok(()),
            },
            _ = tokio::time::sleep(due), if dirty && node.is_none() => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}
