//! The HTTP API: one table of routes (method, path, who may call it, handler) from which both
//! the router and the OpenAPI document are built, so the two cannot drift apart.

mod after;
mod audit;
#[cfg(test)]
mod auth_matrix_tests;
mod blobs;
mod body;
mod credentials;
mod events;
#[cfg(test)]
mod fleet_view_tests;
#[cfg(test)]
mod fragment_tests;
mod fragments;
pub mod guard;
mod history;
#[cfg(test)]
mod history_tests;
pub mod install;
mod meta;
mod nodes;
pub mod openapi;
mod payloads;
mod rollouts;
#[cfg(test)]
mod scope_tests;
mod sessions;
mod spec;
#[cfg(test)]
mod tests;
mod tokens;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use crate::auth::Access;
use crate::state::AppState;

pub use body::Doc;

/// One route of the API.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// Request body schema name (from the shared crate), if any.
    pub request: Option<&'static str>,
    /// Success response schema name, if any.
    pub response: Option<&'static str>,
    /// Every status the handler itself can answer (successes and the errors of its domain
    /// code); the OpenAPI generator adds the ones every route of a kind shares (see
    /// `openapi::statuses`).
    pub statuses: &'static [u16],
    pub handler: fn() -> MethodRouter<AppState>,
}

/// `route!(METHOD "/path", Access, "summary", request, response, handler; statuses...)`; without
/// statuses the route answers only 200 (plus the shared ones).
macro_rules! route {
    ($m:ident $path:literal, $access:ident, $summary:literal, $req:expr, $resp:expr, $h:path) => {
        route!($m $path, $access, $summary, $req, $resp, $h; 200)
    };
    ($m:ident $path:literal, $access:ident, $summary:literal, $req:expr, $resp:expr, $h:path; $($st:literal),+) => {
        Route {
            method: Method::$m,
            path: $path,
            access: Access::$access,
            summary: $summary,
            request: $req,
            response: $resp,
            statuses: &[$($st),+],
            handler: || on(MethodFilter::$m, $h),
        }
    };
}

/// Every route of the registry.
pub fn routes() -> Vec<Route> {
    vec![
        route!(GET "/healthz", Public, "Liveness: the process answers.", None, None, meta::healthz; 200),
        route!(GET "/readyz", Public, "Readiness: the store answers.", None, None, meta::readyz; 200, 503),
        route!(GET "/v1/openapi.json", Public, "This document.", None, None, meta::openapi; 200),
        route!(GET "/install.sh", Public, "The agent install script for `curl -fsSL URL/install.sh | sh -s -- --token TOKEN`, filled in with this registry's URL, certificate pin and packages (see docs/INSTALL.md).", None, None, install::install_sh; 200, 400),
        route!(GET "/v1/packages", Public, "The Debian packages in packages_dir (the agent's), with size and sha256.", None, Some("PackageInfo[]"), install::list; 200),
        route!(GET "/packages/{file}", Public, "Download a file from packages_dir (public: packages hold no secret).", None, None, install::download; 200, 404),
        route!(POST "/v1/enrollment-tokens", Admin, "Create an enrollment token; the token is shown only in this answer.", Some("CreateEnrollmentToken"), Some("EnrollmentTokenCreated"), tokens::create; 201, 400),
        route!(GET "/v1/enrollment-tokens", Read, "List enrollment tokens (never the tokens themselves).", None, Some("EnrollmentTokenInfo[]"), tokens::list; 200),
        route!(DELETE "/v1/enrollment-tokens/{id}", Admin, "Revoke an enrollment token.", None, Some("EnrollmentTokenInfo"), tokens::revoke; 200, 404),
        route!(POST "/v1/enroll", Public, "Trade an enrollment token (in the body) for a new node's id and secret. An enrolled node enrols again (secret rotated) only with proof: its current secret as node_secret, or a re-enrolment grant as token. 200 enrolled; 400 invalid facts; 403 token, grant or node_secret refused; 409 the machine id belongs to an enrolled node and no proof was given (nothing is spent).", Some("EnrollRequest"), Some("EnrollResponse"), nodes::enroll; 200, 400, 403, 409),
        route!(GET "/v1/nodes", Read, "List nodes, sorted by hostname then id; filter with ?selector=, ?health= and ?drifted=true|false (payload or resource drift in the last status). Pages: ?limit=N (1-1000) and ?after=<the x-next-after header of the previous page, absent on the last>. Without limit at most 10,000 nodes are listed (more: 400 naming limit).", None, Some("Node[]"), nodes::list; 200, 400),
        route!(GET "/v1/nodes/{id}", ReadOrOwnNode, "One node.", None, Some("Node"), nodes::get; 200, 404),
        route!(PATCH "/v1/nodes/{id}", Operate, "Change labels (JSON merge patch; null removes a key).", Some("NodePatch"), Some("Node"), nodes::patch; 200, 400, 404, 409, 422),
        route!(DELETE "/v1/nodes/{id}", Admin, "Decommission: revoke the node's secret, keep its record and history.", None, Some("Node"), nodes::decommission; 200, 404),
        route!(GET "/v1/nodes/{id}/spec", ReadOrOwnNode, "The node's effective spec, merged when read from its own spec and the fragments matching its labels (409 when they do not merge); long-poll with ?after=GENERATION&wait=30s (304 when nothing newer arrived).", None, Some("SpecDocument"), spec::get; 200, 304, 400, 404, 409),
        route!(PUT "/v1/nodes/{id}/spec", Operate, "Write the node's own spec (JSON or YAML by Content-Type); If-Match: GENERATION for optimistic concurrency.", Some("NodeSpec"), Some("SpecWritten"), spec::put; 200, 400, 404, 409, 412, 422),
        route!(GET "/v1/nodes/{id}/spec/history", Read, "The kept versions of the node's own spec, oldest first: seq, the generation it was written at, time, author, note (written, reverted to …) and the spec. The last spec_history_kept (default 100) are kept.", None, Some("SpecVersion[]"), history::node; 200, 404),
        route!(POST "/v1/nodes/{id}/spec/revert", Operate, "Write again the own spec the node had at generation `to` (the last version written at or before it), as a new generation. 404 when no kept version is that old.", Some("RevertSpec"), Some("SpecWritten"), history::revert_node; 200, 400, 404, 409, 422),
        route!(POST "/v1/nodes/{id}/reenroll", Admin, "Issue a one-time re-enrolment grant for a node whose host lost its secret (reinstalled); body optional {\"expires\": \"1h\"} (1s-7d, default 1h). 201 with the grant, shown only here; 400 bad expires; 404 no such node; 409 node decommissioned.", Some("CreateReenrollGrant"), Some("ReenrollGrantCreated"), nodes::reenroll; 201, 400, 404, 409),
        route!(POST "/v1/nodes/{id}/heartbeat", OwnNode, "Heartbeat: small, frequent; kept in memory.", Some("Heartbeat"), Some("HeartbeatResponse"), nodes::heartbeat; 200, 404),
        route!(POST "/v1/nodes/{id}/workloads/{name}/reset", Operate, "Reset a workload's escalation ladder (and rollback): a container kept stopped as failed is started afresh; `?kind=container|vm` resets only the workload of that kind (default: every workload of that name). Queued (durably: it survives a registry restart) for the node's next heartbeat.", None, Some("ResetQueued"), nodes::reset; 200, 400, 404),
        route!(PUT "/v1/nodes/{id}/status", OwnNode, "Full observed status, sent when it changed.", Some("NodeStatus"), None, nodes::put_status; 204, 404),
        route!(GET "/v1/fragments", Read, "List fleet-wide spec fragments.", None, Some("Fragment[]"), fragments::list; 200),
        route!(GET "/v1/fragments/{name}", Read, "One fragment.", None, Some("Fragment"), fragments::get; 200, 404),
        route!(PUT "/v1/fragments/{name}", Operate, "Write a fragment (selector + spec): one record however many nodes it matches; bumps the generation of every node it matches now or matched before (writing the same selector and spec again changes nothing).", Some("FragmentWrite"), Some("FragmentWritten"), fragments::put; 200, 400, 409, 422),
        route!(DELETE "/v1/fragments/{name}", Operate, "Delete a fragment.", None, Some("FragmentWritten"), fragments::delete; 200, 404, 409, 422),
        route!(GET "/v1/fragments/{name}/history", Read, "The kept versions of a fragment (deletions too, without spec), oldest first; `generation` is the fragment's revision.", None, Some("SpecVersion[]"), history::fragment; 200, 404),
        route!(POST "/v1/fragments/{name}/revert", Operate, "Write again revision `to` of a fragment (selector and spec), as a new revision. 404 when that revision is not kept.", Some("RevertSpec"), Some("FragmentWritten"), history::revert_fragment; 200, 400, 404, 409, 422),
        route!(GET "/v1/events", Read, "Events after ?after=SEQ (oldest first, ?limit= up to 1000, ?node= to filter).", None, Some("Event[]"), events::list; 200, 400),
        route!(PUT "/v1/payloads/{name}/{version}", Operate, "Upload a payload version: the raw body is streamed to disk and hashed (no body-size limit; optional x-steward-sha256 header checked). 201 new, 200 same content again, 409 other content (versions are immutable).", Some(openapi::RAW_BODY), Some("PayloadVersion"), payloads::put; 200, 201, 400, 409),
        route!(GET "/v1/payloads", Read, "List payloads and their versions.", None, Some("PayloadSummary[]"), payloads::list; 200),
        route!(GET "/v1/payloads/{name}", Read, "The versions of one payload, oldest first.", None, Some("PayloadVersion[]"), payloads::versions; 200, 404),
        route!(GET "/v1/payloads/{name}/{version}", Read, "One payload version's metadata.", None, Some("PayloadVersion"), payloads::get; 200, 404),
        route!(DELETE "/v1/payloads/{name}/{version}", Operate, "Delete a payload version; 409 naming the nodes and fragments that still reference it. Its blob is removed when no other version has the same content.", None, Some("PayloadVersion"), payloads::delete; 200, 404, 409),
        route!(PUT "/v1/blobs/{sha256}", Admin, "Store a copy of a blob, pushed by another registry replica sharing an etcd store (the raw body must hash to sha256; 201 new, 200 already held).", Some(openapi::RAW_BODY), None, blobs::put; 200, 201, 400),
        route!(GET "/v1/blobs/{sha256}", ReadOrAnyNode, "Download a blob by sha256, as stored on disk; Range (bytes=N-, bytes=N-M) answers 206 with Content-Range; ETag is the quoted sha256. A node secret may read only blobs its effective spec references.", None, None, payloads::blob; 200, 206, 400, 404, 409, 416),
        route!(POST "/v1/rollouts", Operate, "Start a rollout: move a payload to a version across the nodes matching a selector, in batches (count or percent); each batch must report converged and attested before the next starts.", Some("StartRollout"), Some("Rollout"), rollouts::start; 201, 400, 409, 422),
        route!(GET "/v1/rollouts", Read, "List rollouts, oldest first.", None, Some("Rollout[]"), rollouts::list; 200),
        route!(GET "/v1/rollouts/{rollout}", Read, "One rollout: state, batches, per-node outcome, last message.", None, Some("Rollout"), rollouts::get; 200, 404),
        route!(POST "/v1/rollouts/{rollout}/pause", Operate, "Pause a running rollout: no new batch starts.", None, Some("Rollout"), rollouts::pause; 200, 404, 409),
        route!(POST "/v1/rollouts/{rollout}/resume", Operate, "Resume a paused or halted rollout (the current batch gets a fresh time-out).", None, Some("Rollout"), rollouts::resume; 200, 404, 409),
        route!(POST "/v1/rollouts/{rollout}/abort", Operate, "Abort: stop for good; nodes keep the version they have.", None, Some("Rollout"), rollouts::abort; 200, 404, 409),
        route!(POST "/v1/rollouts/{rollout}/rollback", Operate, "Roll back: put the previous version back on every node the rollout touched.", None, Some("Rollout"), rollouts::rollback; 200, 404, 409),
        route!(POST "/v1/credentials", Admin, "Create a named API credential with a role (admin, operator, viewer, sessions), optionally narrowed to the nodes matching a label selector and expiring; 201 with the token, shown only in this answer; 400 names the field; 409 the name is taken.", Some("CreateCredential"), Some("CredentialCreated"), credentials::create; 201, 400, 409),
        route!(GET "/v1/credentials", Admin, "List named credentials: role, scope, created (by whom), expires, last used (to the minute), revoked; never the secrets.", None, Some("CredentialInfo[]"), credentials::list; 200),
        route!(DELETE "/v1/credentials/{name}", Admin, "Revoke a named credential at once (it stays listed, revoked; its name is not reused).", None, Some("CredentialInfo"), credentials::revoke; 200, 404),
        route!(GET "/v1/audit", Audit, "The audit trail: every write (who, when, from which address, route, target, outcome, why refused), oldest first. Filters ?actor=, ?target= (`node/ID`, or `node` for every node), ?since= and ?until= (RFC 3339); pages ?limit=N (1-1000, default 100) and ?after=<the x-next-after header of the previous page>. Unscoped admin or viewer credentials only.", None, Some("AuditRecord[]"), audit::list; 200, 400, 403),
        route!(PUT "/v1/templates/{name}", Operate, "Create or replace a session template (JSON or YAML): a spec piece whose strings hold placeholders ({{session}}, {{owner}}, {{param.NAME}}, {{port.NAME}}, {{volume.NAME}}, {{lab.vlan|bridge|cidr|gateway|ip.N}}), its typed parameters, the ports, volumes and lab each session is allocated, and its limits (ttl, max_ttl, per_owner, max_sessions, selector, reserve). Checked by rendering it for a sample session through the spec validation; 400 names the field. Sessions already made keep what they were rendered with.", Some("TemplateWrite"), Some("Template"), sessions::put_template; 200, 400),
        route!(GET "/v1/templates", SessionsRead, "List session templates.", None, Some("Template[]"), sessions::list_templates; 200),
        route!(GET "/v1/templates/{name}", SessionsRead, "One session template.", None, Some("Template"), sessions::get_template; 200, 404),
        route!(DELETE "/v1/templates/{name}", Operate, "Delete a session template; 409 while live sessions use it.", None, None, sessions::delete_template; 204, 404, 409),
        route!(POST "/v1/sessions", Sessions, "Create a session from a template for an owner (default: the caller; an owner-scoped credential only for its owner): quotas checked (sessions.max_live, sessions.per_owner, the template's per_owner and max_sessions), placed on the least loaded ready node with room for its reservation, allocated host ports, a VLAN and volumes, its piece merged into the node's spec, all in one transaction. 201 pending (see GET for running and endpoints); 400 names the field; 403 another owner; 404 no such template; 409 names the limit reached, why no node fits, or the spec conflict.", Some("SessionCreate"), Some("Session"), sessions::create; 201, 400, 403, 404, 409, 422),
        route!(GET "/v1/sessions", SessionsRead, "List sessions (live, and ended in the last sessions.ended_kept), oldest first; filters ?owner=, ?template=, ?state=pending|running|failed|ended, ?node=. An owner-scoped credential sees only its owner's.", None, Some("Session[]"), sessions::list; 200, 400),
        route!(GET "/v1/sessions/{id}", SessionsRead, "One session: node, allocations, state, expires_at, endpoints.", None, Some("Session"), sessions::get; 200, 404),
        route!(POST "/v1/sessions/{id}/extend", Sessions, "Extend a live session by `by` (e.g. 1h), up to its template's max_ttl from its creation; only the deadline changes on the node. 400 names how much is left.", Some("SessionExtend"), Some("Session"), sessions::extend; 200, 400, 404, 409),
        route!(DELETE "/v1/sessions/{id}", Sessions, "End a session: its piece leaves the node's spec (the agent removes its workloads and volumes), its allocations are free again.", None, Some("Session"), sessions::end; 200, 404, 409),
        route!(GET "/v1/events/stream", Read, "Server-sent events: replays from ?after=SEQ (or Last-Event-ID), then follows live.", None, None, events::stream; 200, 400),
    ]
}

/// The `?limit=` of a paged list: 1-1000, default 100.
fn page_limit(
    q: &std::collections::HashMap<String, String>,
) -> Result<usize, crate::error::RegistryError> {
    match q.get("limit") {
        None => Ok(100),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| crate::error::RegistryError::invalid("limit", "must be 1-1000")),
    }
}

/// Builds the router with authorisation, body-size limits and tracing.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut r: Router<AppState> = Router::new();
    for route in routes() {
        let mut mr = (route.handler)();
        if route.access != Access::Public {
            mr = mr.route_layer(from_fn_with_state(
                (state.clone(), route.access),
                guard::authorize,
            ));
        }
        r = r.route(route.path, mr);
    }
    r.merge(crate::ui::router())
        .layer(from_fn_with_state(state.clone(), instrument))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Metric hooks around the handlers: heartbeat count and latency, long-polls in flight, and
/// accepted spec writes.
async fn instrument(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let m = &state.metrics;
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/v1/nodes/{id}/heartbeat") => {
            let started = std::time::Instant::now();
            let resp = next.run(req).await;
            if resp.status().is_success() {
                m.heartbeat(started.elapsed());
            }
            resp
        }
        (Method::GET, "/v1/nodes/{id}/spec")
            if req.uri().query().is_some_and(|q| q.contains("wait=")) =>
        {
            let _watching = crate::metrics::WatcherGuard::new(&m.longpoll_watchers);
            next.run(req).await
        }
        (method, "/v1/nodes/{id}/spec" | "/v1/fragments/{name}")
            if method == Method::PUT || method == Method::DELETE =>
        {
            spec_write(&state, next.run(req).await, &path)
        }
        (Method::POST, "/v1/nodes/{id}/spec/revert" | "/v1/fragments/{name}/revert") => {
            spec_write(&state, next.run(req).await, &path)
        }
        _ => next.run(req).await,
    }
}

/// Counts an accepted spec write (a node's own spec or a fragment).
fn spec_write(state: &AppState, resp: Response, path: &str) -> Response {
    if resp.status().is_success() {
        state
            .metrics
            .spec_write(if path.starts_with("/v1/fragments") {
                "fragment"
            } else {
                "node"
            });
    }
    resp
}
