//! Rollout endpoints: start, list, status, pause, resume, abort, rollback.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use steward_proto::{Rollout, StartRollout};

use axum::response::{IntoResponse, Response};

use super::guard::{sees_selector, within_scope, AuditTarget};
use super::Doc;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::rollout::Command;
use crate::state::AppState;

pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Doc(req): Doc<StartRollout>,
) -> ApiResult<Response> {
    within_scope(&caller, &req.selector, "the rollout")?;
    let r = state.rollouts.start(req, &caller.actor()).await?;
    let target = AuditTarget(format!("rollout/{}", r.id));
    let mut resp = (StatusCode::CREATED, Json(r)).into_response();
    resp.extensions_mut().insert(target);
    Ok(resp)
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<Rollout>>> {
    let mut v = state.rollouts.list().await?;
    v.retain(|r| sees_selector(&caller, &r.selector));
    Ok(Json(v))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Rollout>> {
    let r = state.rollouts.get(&id).await?;
    within_scope(&caller, &r.selector, &format!("rollout {id}"))?;
    Ok(Json(r))
}

async fn command(
    state: AppState,
    caller: Caller,
    id: String,
    cmd: Command,
) -> ApiResult<Json<Rollout>> {
    if caller.scope().is_some() {
        let r = state.rollouts.get(&id).await?;
        within_scope(&caller, &r.selector, &format!("rollout {id}"))?;
    }
    Ok(Json(
        state.rollouts.command(&id, cmd, &caller.actor()).await?,
    ))
}

pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Rollout>> {
    command(state, caller, id, Command::Pause).await
}

pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Rollout>> {
    command(state, caller, id, Command::Resume).await
}

pub async fn abort(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Rollout>> {
    command(state, caller, id, Command::Abort).await
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Rollout>> {
    command(state, caller, id, Command::Rollback).await
}
