//! Named API credentials: create (token shown once), list, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use steward_proto::{CreateCredential, CredentialInfo, EventKind};

use super::guard::AuditTarget;
use super::Doc;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Doc(req): Doc<CreateCredential>,
) -> ApiResult<Response> {
    let by = caller.actor();
    let name = req.name.clone();
    let made = state.credentials.create(req, &by).await?;
    let i = &made.info;
    let msg = format!(
        "credential {} created: role {}{}{}",
        i.name,
        i.role,
        i.selector
            .as_ref()
            .map(|s| format!(", scope {s}"))
            .unwrap_or_default(),
        i.expires_at
            .map(|t| format!(", expires {t}"))
            .unwrap_or_default(),
    );
    state
        .event_log
        .record(EventKind::CredentialCreated, None, None, &by, msg)
        .await?;
    let mut resp = (StatusCode::CREATED, Json(made)).into_response();
    resp.extensions_mut()
        .insert(AuditTarget(format!("credential/{name}")));
    Ok(resp)
}

pub async fn list(State(state): State<AppState>) -> Json<Vec<CredentialInfo>> {
    Json(state.credentials.list())
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<CredentialInfo>> {
    let (info, changed) = state.credentials.revoke(&name).await?;
    if changed {
        state
            .event_log
            .record(
                EventKind::CredentialRevoked,
                None,
                None,
                &caller.actor(),
                format!("credential {name} revoked"),
            )
            .await?;
    }
    Ok(Json(info))
}
