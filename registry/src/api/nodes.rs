//! Node endpoints: enrol, re-enrolment grants, list, get, label, decommission, heartbeat,
//! status.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Extension, Json};
use steward_proto::parse::{parse_document, Format};
use steward_proto::selector::Selector;
use steward_proto::{
    CreateReenrollGrant, EnrollRequest, EnrollResponse, Health, Heartbeat, HeartbeatResponse, Node,
    NodePatch, NodeStatus, ReenrollGrantCreated,
};

use super::Doc;
use crate::auth::Caller;
use crate::error::{ApiResult, RegistryError};
use crate::nodes::{NodeQuery, MAX_PAGE};
use crate::state::AppState;

pub async fn enroll(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Doc(req): Doc<EnrollRequest>,
) -> ApiResult<Json<EnrollResponse>> {
    let client = peer.map(|Extension(ConnectInfo(a))| a);
    Ok(Json(state.nodes.enroll(req, client).await?))
}

/// `POST /v1/nodes/{id}/reenroll`; the body is optional (an empty one takes the defaults).
pub async fn reenroll(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ReenrollGrantCreated>)> {
    let req: CreateReenrollGrant = if body.iter().all(u8::is_ascii_whitespace) {
        CreateReenrollGrant::default()
    } else {
        let format = Format::from_content_type(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        parse_document(&body, format).map_err(|p| RegistryError::Invalid(vec![p]))?
    };
    let created = state
        .enrolments
        .create_grant(&id, req, &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The machine id is not a secret, but with an enrollment token it used to be enough to take
/// a node over: only the admin and the node itself see it.
fn redact(caller: &Caller, mut node: Node) -> Node {
    let own = matches!(caller, Caller::Node(id) if *id == node.id);
    if !(own || caller.role() == Some(steward_proto::Role::Admin)) {
        node.facts.machine_id = String::new();
    }
    node
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<axum::response::Response> {
    let mut query = node_query(&q)?;
    if let Some(scope) = caller.scope() {
        query.selector.0.extend(scope.selector.0.iter().cloned());
    }
    let page = state.nodes.list(query).await?;
    let out: Vec<Node> = page.nodes.into_iter().map(|n| redact(&caller, n)).collect();
    // Megabytes of JSON for a large page: encoded off the async workers (heartbeats).
    let mut resp =
        tokio::task::spawn_blocking(move || axum::response::IntoResponse::into_response(Json(out)))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    if let Some(next) = &page.next {
        // The cursor is a node id: a header value as it is.
        if let Ok(v) = header::HeaderValue::from_str(next) {
            resp.headers_mut().insert("x-next-after", v);
        }
    }
    Ok(resp)
}

/// `GET /v1/nodes`'s query: `selector`, `health`, `drifted`, `limit`, `after`.
fn node_query(q: &HashMap<String, String>) -> Result<NodeQuery, RegistryError> {
    let selector: Selector = q
        .get("selector")
        .map(|s| s.parse())
        .transpose()
        .map_err(|e: steward_proto::selector::SelectorError| {
            RegistryError::invalid("selector", e.to_string())
        })?
        .unwrap_or_default();
    let health: Option<Vec<Health>> = q
        .get("health")
        .map(|h| h.split(',').map(|x| x.trim().parse::<Health>()).collect())
        .transpose()
        .map_err(|e| RegistryError::invalid("health", e))?;
    let drifted: Option<bool> = match q.get("drifted").map(String::as_str) {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(RegistryError::invalid("drifted", "must be true or false")),
    };
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<usize>().map_err(|_| {
            RegistryError::invalid("limit", format!("{s:?} is not a number: give 1-{MAX_PAGE}"))
        })?),
    };
    Ok(NodeQuery {
        selector,
        health,
        drifted,
        limit,
        after: q.get("after").filter(|a| !a.is_empty()).cloned(),
    })
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    let rec = state
        .store
        .node(&id)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("no node with id {id:?}")))?;
    Ok(Json(redact(&caller, state.nodes.to_wire(rec))))
}

pub async fn patch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Doc(p): Doc<NodePatch>,
) -> ApiResult<Json<Node>> {
    if let (Some(scope), Some(ln)) = (caller.scope(), state.live(&id)) {
        // A scoped caller may not move a node out of its scope.
        let mut labels = (*ln.lock().labels).clone();
        for (k, v) in &p.labels {
            match v {
                Some(v) => labels.insert(k.clone(), v.clone()),
                None => labels.remove(k),
            };
        }
        if !scope.sees(&labels) {
            return Err(RegistryError::Forbidden(format!(
                "these labels would take node {id} out of this credential's scope ({})",
                scope.text
            )));
        }
    }
    let rec = state.specs.patch_node(&id, p, &caller.actor()).await?;
    Ok(Json(state.nodes.to_wire(rec)))
}

pub async fn decommission(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    Ok(Json(state.nodes.decommission(&id, &caller.actor()).await?))
}

pub async fn reset(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<steward_proto::api::ResetQueued>> {
    let kind = q.get("kind").map(String::as_str);
    Ok(Json(
        state
            .nodes
            .reset_workload(&id, &name, kind, &caller.actor())
            .await?,
    ))
}

pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Doc(hb): Doc<Heartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
    Ok(Json(state.nodes.heartbeat(&id, hb).await?))
}

pub async fn put_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Doc(status): Doc<NodeStatus>,
) -> ApiResult<StatusCode> {
    state.nodes.put_status(&id, status).await?;
    Ok(StatusCode::NO_CONTENT)
}
