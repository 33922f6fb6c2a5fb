//! Spec history and rollback: the kept versions of a node's own spec and of a fragment, and
//! reverts to one of them (written as a new version, audited like any write).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use steward_proto::{RevertSpec, SpecVersion, SpecWritten};

use super::guard::within_scope;
use super::Doc;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

/// `GET /v1/nodes/{id}/spec/history` (the guard checked the node's scope).
pub async fn node(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<SpecVersion>>> {
    Ok(Json(state.specs.node_history(&id).await?))
}

/// `POST /v1/nodes/{id}/spec/revert`.
pub async fn revert_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Doc(req): Doc<RevertSpec>,
) -> ApiResult<Json<SpecWritten>> {
    let done = state
        .specs
        .revert_node(&id, req.to, &caller.actor())
        .await?;
    Ok(Json(done))
}

/// A scoped caller sees a fragment's history only if every selector it had stays within the
/// scope.
fn check_scope(caller: &Caller, name: &str, versions: &[SpecVersion]) -> ApiResult<()> {
    for v in versions {
        if let Some(sel) = &v.selector {
            within_scope(caller, sel, &format!("fragment {name}"))?;
        }
    }
    Ok(())
}

/// `GET /v1/fragments/{name}/history`.
pub async fn fragment(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<SpecVersion>>> {
    let versions = state.specs.fragment_history(&name).await?;
    check_scope(&caller, &name, &versions)?;
    Ok(Json(versions))
}

/// `POST /v1/fragments/{name}/revert`.
pub async fn revert_fragment(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Doc(req): Doc<RevertSpec>,
) -> ApiResult<axum::response::Response> {
    if caller.scope().is_some() {
        let versions = state.specs.fragment_history(&name).await?;
        check_scope(&caller, &name, &versions)?;
        if let Some(now) = state.store.fragment(&name).await? {
            within_scope(&caller, &now.selector, &format!("fragment {name}"))?;
        }
    }
    let (done, wake) = state
        .specs
        .revert_fragment(&name, req.to, &caller.actor())
        .await?;
    Ok(super::after::then(Json(done), wake))
}
