//! Session templates and sessions: thin handlers over the `Sessions` service. A scoped
//! credential writes and uses only templates whose selector stays within its scope; an
//! owner-scoped one sees and acts on its owner's sessions only (the service checks that).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use steward_proto::{Session, SessionCreate, SessionExtend, Template, TemplateWrite};

use super::guard::{sees_selector, within_scope, AuditTarget};
use super::Doc;
use crate::auth::Caller;
use crate::error::{ApiResult, RegistryError};
use crate::sessions::Filter;
use crate::state::AppState;

pub async fn put_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Doc(body): Doc<TemplateWrite>,
) -> ApiResult<Json<Template>> {
    within_scope(&caller, &body.selector, &format!("template {name}"))?;
    if let Ok(old) = state.sessions.template(&name).await {
        within_scope(&caller, &old.body.selector, &format!("template {name}"))?;
    }
    Ok(Json(
        state
            .sessions
            .put_template(&name, body, &caller.actor())
            .await?,
    ))
}

pub async fn list_templates(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<Template>>> {
    let mut v = state.sessions.templates().await?;
    v.retain(|t| sees_selector(&caller, &t.body.selector));
    Ok(Json(v))
}

pub async fn get_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Template>> {
    let t = state.sessions.template(&name).await?;
    if !sees_selector(&caller, &t.body.selector) {
        return Err(RegistryError::NotFound(format!(
            "no template named {name:?}"
        )));
    }
    Ok(Json(t))
}

pub async fn delete_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let t = state.sessions.template(&name).await?;
    within_scope(&caller, &t.body.selector, &format!("template {name}"))?;
    state
        .sessions
        .delete_template(&name, &caller.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Doc(req): Doc<SessionCreate>,
) -> ApiResult<Response> {
    if caller.scope().is_some() {
        let t = state.sessions.template(&req.template).await?;
        within_scope(&caller, &t.body.selector, &format!("template {}", t.name))?;
    }
    let s = state.sessions.create(req, &caller).await?;
    let target = format!("session/{}", s.id);
    let mut resp = (StatusCode::CREATED, Json(s)).into_response();
    resp.extensions_mut().insert(AuditTarget(target));
    Ok(resp)
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Vec<Session>>> {
    if let Some(k) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "owner" | "template" | "state" | "node"))
    {
        return Err(RegistryError::invalid(
            k,
            "not a filter: use owner, template, state or node",
        ));
    }
    let state_filter = q
        .get("state")
        .map(|s| s.parse())
        .transpose()
        .map_err(|e: String| RegistryError::invalid("state", e))?;
    let filter = Filter {
        owner: q.get("owner").cloned(),
        template: q.get("template").cloned(),
        state: state_filter,
        node: q.get("node").cloned(),
    };
    Ok(Json(state.sessions.list(&filter, &caller).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    Ok(Json(state.sessions.get(&id, &caller).await?))
}

pub async fn extend(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Doc(body): Doc<SessionExtend>,
) -> ApiResult<Json<Session>> {
    Ok(Json(state.sessions.extend(&id, &body.by, &caller).await?))
}

pub async fn end(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    Ok(Json(state.sessions.end(&id, &caller).await?))
}
