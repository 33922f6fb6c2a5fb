//! Fleet-wide spec fragments: list, get, write, delete.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use steward_proto::{Fragment, FragmentWrite, FragmentWritten};

use super::Doc;
use crate::auth::Caller;
use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Fragment>>> {
    let mut v = state.store.fragments().await?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(v))
}

pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Fragment>> {
    state
        .store
        .fragment(&name)
        .await?
        .map(Json)
        .ok_or_else(|| RegistryError::NotFound(format!("no fragment named {name:?}")))
}

pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Doc(body): Doc<FragmentWrite>,
) -> ApiResult<Json<FragmentWritten>> {
    Ok(Json(
        state
            .specs
            .write_fragment(&name, body, caller.kind())
            .await?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<FragmentWritten>> {
    Ok(Json(
        state.specs.delete_fragment(&name, caller.kind()).await?,
    ))
}
