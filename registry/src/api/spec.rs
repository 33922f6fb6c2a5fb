//! A node's desired state: read (with long-poll) and write.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use steward_proto::{NodeSpec, SpecWritten};

use super::Doc;
use crate::auth::Caller;
use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;

/// The document as JSON serialised once per merge (thousands of polls one fragment write wakes
/// share it), with its generation as `ETag`.
async fn document(state: &AppState, id: &str) -> ApiResult<Response> {
    let (generation, body) = state.specs.document_json(id).await?;
    let headers = [
        (header::ETAG, etag(generation)),
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
    ];
    Ok((headers, body).into_response())
}

fn etag(generation: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{generation}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// `GET /v1/nodes/{id}/spec[?after=G[&wait=30s]]`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let ln = state
        .live(&id)
        .ok_or_else(|| RegistryError::NotFound(format!("no node with id {id:?}")))?;
    let Some(after) = q.get("after") else {
        return document(&state, &id).await;
    };
    let after: u64 = after
        .parse()
        .map_err(|_| RegistryError::invalid("after", "must be a generation number (0 or more)"))?;
    let wait = match q.get("wait") {
        None => Duration::ZERO,
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| RegistryError::invalid("wait", format!("not a duration like 30s: {e}")))?,
    };
    if wait > state.settings.max_wait {
        return Err(RegistryError::invalid(
            "wait",
            format!(
                "at most {} allowed",
                humantime::format_duration(state.settings.max_wait)
            ),
        ));
    }
    let mut rx = ln.spec.subscribe();
    drop(ln);
    // A sender gone (cannot happen while the node exists) or a time-out: look once more.
    let _ = tokio::time::timeout(wait, rx.wait_for(|g| *g > after)).await;
    let published = *rx.borrow();
    drop(rx);
    if published <= after {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    document(&state, &id).await
}

/// `PUT /v1/nodes/{id}/spec`, JSON or YAML, optional `If-Match: <generation>`.
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Doc(spec): Doc<NodeSpec>,
) -> ApiResult<Json<SpecWritten>> {
    let if_match = headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .ok()
                .map(|s| s.trim().trim_matches('"'))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    RegistryError::invalid(
                        "If-Match",
                        "must be a generation number, e.g. If-Match: 3",
                    )
                })
        })
        .transpose()?;
    let written = state
        .specs
        .write_node_spec(&id, spec, if_match, &caller.actor())
        .await?;
    Ok(Json(written))
}
