//! `GET /v1/audit`: the audit trail, filtered and paged.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};

use crate::audit::AuditFilter;
use crate::auth::Caller;
use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;

fn time(q: &HashMap<String, String>, field: &str) -> ApiResult<Option<DateTime<Utc>>> {
    q.get(field)
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    RegistryError::invalid(
                        field,
                        format!("not an RFC 3339 time like 2026-12-01T10:00:00Z: {e}"),
                    )
                })
        })
        .transpose()
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    if let Some(scope) = caller.scope() {
        // Records name nodes, fragments and credentials of the whole fleet.
        return Err(RegistryError::Forbidden(format!(
            "the audit trail covers the whole fleet; this credential is narrowed to {}",
            scope.text
        )));
    }
    let limit = super::page_limit(&q)?;
    let filter = AuditFilter {
        actor: q.get("actor").cloned(),
        target: q.get("target").cloned(),
        since: time(&q, "since")?,
        until: time(&q, "until")?,
        after: q.get("after").cloned(),
        limit,
    };
    let page = state.audit.list(&filter).await?;
    let mut resp = Json(page.records).into_response();
    if let Some(next) = page.next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("x-next-after", next);
    }
    Ok(resp)
}
