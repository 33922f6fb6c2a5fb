//! Rollout endpoints: start, list, status, pause, resume, abort, rollback.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use steward_proto::{Rollout, StartRollout};

use super::Doc;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::rollout::Command;
use crate::state::AppState;

pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Doc(req): Doc<StartRollout>,
) -> ApiResult<(StatusCode, Json<Rollout>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.rollouts.start(req, caller.kind()).await?),
    ))
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Rollout>>> {
    Ok(Json(state.rollouts.list().await?))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Rollout>> {
    Ok(Json(state.rollouts.get(&id).await?))
}

async fn command(
    state: AppState,
    caller: Caller,
    id: String,
    cmd: Command,
) -> ApiResult<Json<Rollout>> {
    Ok(Json(state.rollouts.command(&id, cmd, caller.kind()).await?))
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
