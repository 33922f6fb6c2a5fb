//! The guard every non-public route goes through: who the caller is (admin or read token, a
//! named credential, a node secret), whether the route's [`Access`] and the caller's scope let
//! it through, and — for writes — one audit record of the outcome, stored before the answer.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use steward_proto::AuditRecord;

use crate::auth::{self, Access, Caller};
use crate::error::{AuditReason, RegistryError};
use crate::state::AppState;

/// What a handler that creates something names as the audit record's target (the id is only
/// known once created), put in its answer's extensions.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// Resolves the caller from `Authorization: Bearer`, checks it against the route's access and
/// scope, runs the handler, and audits writes. A write and its record run in a task of their
/// own: a client that hangs up after the change was made does not cancel the record.
pub async fn authorize(
    State((state, access)): State<(AppState, Access)>,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Response {
    let audited = access.audited(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let caller = identify(&state, &req);
    let checked = caller
        .clone()
        .ok_or(RegistryError::Unauthorized)
        .and_then(|c| check(&state, access, &route, &params, &c).map(|()| c));
    if !audited {
        return match checked {
            Ok(c) => {
                req.extensions_mut().insert(c);
                next.run(req).await
            }
            Err(e) => e.into_response(),
        };
    }
    let seen = Seen {
        method: req.method().to_string(),
        address: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip().to_string()),
        route,
        params,
        caller,
    };
    let task = tokio::spawn(async move {
        let resp = match checked {
            Ok(c) => {
                req.extensions_mut().insert(c);
                next.run(req).await
            }
            Err(e) => e.into_response(),
        };
        let answer = Answer {
            status: resp.status().as_u16(),
            target: resp.extensions().get::<AuditTarget>().map(|t| t.0.clone()),
            reason: resp.extensions().get::<AuditReason>().map(|r| r.0.clone()),
        };
        audit(&state, seen, answer).await;
        resp
    });
    task.await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// What the guard saw of an audited request.
struct Seen {
    method: String,
    address: Option<String>,
    route: String,
    params: Vec<(String, String)>,
    caller: Option<Caller>,
}

/// What the audit record takes from the answer.
struct Answer {
    status: u16,
    target: Option<String>,
    reason: Option<String>,
}

/// Stores the audit record of a write's answer. Refusals of callers that are not people
/// (no valid credential, or a node's secret) are rate-limited.
async fn audit(state: &AppState, seen: Seen, answer: Answer) {
    let status = answer.status;
    let person = matches!(seen.caller, Some(Caller::Principal(_)));
    if !person && status >= 400 && !state.audit.admit_anonymous() {
        state.metrics.audit_dropped();
        return;
    }
    let target = answer.target.or_else(|| target(&seen.route, &seen.params));
    let caller = seen.caller.as_ref();
    let rec = AuditRecord {
        id: String::new(),
        time: chrono::Utc::now(),
        actor: caller
            .and_then(|c| c.actor().name)
            .unwrap_or_else(|| "-".into()),
        role: caller.and_then(Caller::role),
        credential: caller.map(Caller::kind),
        address: seen.address,
        method: seen.method,
        route: seen.route,
        target,
        outcome: crate::audit::outcome(status),
        status,
        reason: answer.reason,
    };
    if let Err(e) = state.audit.record(rec).await {
        // The write itself is done (or refused); its record could not be stored.
        state.metrics.audit_failed();
        tracing::error!(error = %e, "cannot store the audit record of a write");
    }
}

/// Whether `caller` may call this route: the access table, then the caller's scope for a
/// route about one node.
fn check(
    state: &AppState,
    access: Access,
    route: &str,
    params: &[(String, String)],
    caller: &Caller,
) -> Result<(), RegistryError> {
    let path_id = params
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.as_str());
    if !access.allows(caller, path_id) {
        return Err(RegistryError::Forbidden(format!(
            "this endpoint needs {}",
            access.describe()
        )));
    }
    if let (Some(scope), Some(id)) = (caller.scope(), path_id) {
        if route.starts_with("/v1/nodes/{id}") {
            // A node this replica does not know yet is not shown to be inside the scope.
            let Some(ln) = state.live(id) else {
                return Err(RegistryError::NotFound(format!("no node with id {id:?}")));
            };
            let outside = !scope.sees(&ln.lock().labels);
            if outside {
                return Err(RegistryError::Forbidden(format!(
                    "node {id} is outside this credential's scope ({})",
                    scope.text
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a selector a scoped caller could reach outside its scope with (`what` names the
/// object). A selector that does not parse is left to the handler's validation.
pub fn within_scope(caller: &Caller, selector: &str, what: &str) -> Result<(), RegistryError> {
    let (Some(scope), Ok(sel)) = (caller.scope(), selector.parse()) else {
        return Ok(());
    };
    if scope.covers(&sel) {
        return Ok(());
    }
    Err(RegistryError::Forbidden(format!(
        "{what} selects {selector:?}, which can reach nodes outside this credential's scope ({}); its selector must include {}",
        scope.text, scope.text
    )))
}

/// Whether a scoped caller may see `selector`'s object (an unscoped one sees everything).
pub fn sees_selector(caller: &Caller, selector: &str) -> bool {
    within_scope(caller, selector, "").is_ok()
}

/// Whether the caller may see an event: a scoped caller sees only events about the nodes in
/// its scope.
pub fn sees_event(state: &AppState, caller: &Caller, e: &steward_proto::Event) -> bool {
    let Some(scope) = caller.scope() else {
        return true;
    };
    e.node_id
        .as_deref()
        .and_then(|id| state.live(id))
        .is_some_and(|ln| scope.sees(&ln.lock().labels))
}

/// What a route's parameters name: `node/<id>`, `fragment/<name>`, ...
fn target(route: &str, params: &[(String, String)]) -> Option<String> {
    let kind = match route.split('/').nth(2)? {
        "nodes" => "node",
        "fragments" => "fragment",
        "payloads" => "payload",
        "rollouts" => "rollout",
        "enrollment-tokens" => "enrollment-token",
        "credentials" => "credential",
        "blobs" => "blob",
        other => other,
    };
    if params.is_empty() {
        return None;
    }
    let ids: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k != "name" || kind != "node")
        .map(|(_, v)| v.as_str())
        .collect();
    Some(format!("{kind}/{}", ids.join("/")))
}

/// Which credential the request's bearer token is, if any. Every comparison is constant-time
/// on hashes; nothing is read from the store.
pub fn identify(state: &AppState, req: &Request) -> Option<Caller> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)?;
    state.identify(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_the_object() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let cases = [
            ("/v1/nodes/{id}/spec", p(&[("id", "n1")]), Some("node/n1")),
            (
                "/v1/nodes/{id}/workloads/{name}/reset",
                p(&[("id", "n1"), ("name", "web")]),
                Some("node/n1"),
            ),
            (
                "/v1/fragments/{name}",
                p(&[("name", "f")]),
                Some("fragment/f"),
            ),
            (
                "/v1/payloads/{name}/{version}",
                p(&[("name", "app"), ("version", "2")]),
                Some("payload/app/2"),
            ),
            ("/v1/rollouts", p(&[]), None),
            (
                "/v1/credentials/{name}",
                p(&[("name", "ci")]),
                Some("credential/ci"),
            ),
        ];
        for (route, params, want) in cases {
            assert_eq!(target(route, &params).as_deref(), want, "{route}");
        }
    }
}
