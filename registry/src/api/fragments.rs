//! Fleet-wide spec fragments: list, get, write, delete.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use steward_proto::{Fragment, FragmentWrite};

use super::guard::{sees_selector, within_scope};
use super::Doc;
use crate::auth::Caller;
use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<Fragment>>> {
    let mut v = state.store.fragments().await?;
    v.retain(|f| sees_selector(&caller, &f.selector));
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(v))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Fragment>> {
    let f = state
        .store
        .fragment(&name)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("no fragment named {name:?}")))?;
    within_scope(&caller, &f.selector, &format!("fragment {name}"))?;
    Ok(Json(f))
}

/// A scoped caller may change a fragment only if both its stored selector and the new one
/// stay within the scope.
async fn check_scope(
    state: &AppState,
    caller: &Caller,
    name: &str,
    new: Option<&str>,
) -> ApiResult<()> {
    if caller.scope().is_none() {
        return Ok(());
    }
    if let Some(sel) = new {
        within_scope(caller, sel, &format!("fragment {name}"))?;
    }
    if let Some(old) = state.store.fragment(name).await? {
        within_scope(
            caller,
            &old.selector,
            &format!("the stored fragment {name}"),
        )?;
    }
    Ok(())
}

pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Doc(body): Doc<FragmentWrite>,
) -> ApiResult<Response> {
    check_scope(&state, &caller, &name, Some(&body.selector)).await?;
    let (written, wake) = state
        .specs
        .write_fragment(&name, body, &caller.actor())
        .await?;
    Ok(super::after::then(Json(written), wake))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    check_scope(&state, &caller, &name, None).await?;
    let (written, wake) = state.specs.delete_fragment(&name, &caller.actor()).await?;
    Ok(super::after::then(Json(written), wake))
}
