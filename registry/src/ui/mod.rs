//! The status page served by the registry: the fleet overview and node table at `/`, one
//! node at `/nodes/{id}`, live updates at `/ui/events`, sign-in at `/login`, and Prometheus
//! metrics at `/metrics`. HTML is rendered on the server (maud, escaped); the embedded
//! `assets/app.js` only adds live updates. See docs/API.md, "Status page and metrics".

pub mod access;
mod live;
mod node_page;
mod pages;
pub mod sessions;
mod sessions_page;
#[cfg(test)]
mod tests;
pub mod view;

use std::collections::HashMap;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;

use crate::state::AppState;
use crate::store::StoreError;
use access::{Denied, Viewer};

pub use pages::LAST_EVENTS;

/// Recent events of a node are looked for among this many last events of the fleet.
const NODE_EVENTS_WINDOW: u64 = 5_000;
/// Events shown on a node page.
const NODE_EVENTS: usize = 20;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Errors of the status page.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("{0}")]
    Denied(#[from] Denied),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            UiError::Denied(Denied::NodeCredential) => (StatusCode::FORBIDDEN, "Forbidden"),
            UiError::Denied(_) => (StatusCode::UNAUTHORIZED, "Not signed in"),
            UiError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            UiError::Store(e) => {
                tracing::error!(error = %format!("{e:#}"), "status page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Storage error")
            }
        };
        let body = pages::layout(
            title,
            None,
            None,
            pages::error_page(title, &self.to_string()),
        );
        let mut resp = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The status page's routes (merged into the API router, which adds the state).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(fleet))
        .route("/nodes/{id}", get(node))
        .route("/sessions", get(sessions_view))
        .route("/ui/events", get(live::stream))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/metrics", get(metrics))
        .route("/assets/{file}", get(asset))
        .layer(map_response(security_headers))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// A 303 to `to`.
fn see_other(to: &str) -> Response {
    let loc = HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, loc)]).into_response()
}

/// Answer for a denied API-like request (metrics, event stream): no redirect.
fn deny_api(d: Denied) -> Response {
    let status = match d {
        Denied::NodeCredential => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut resp = (status, format!("{d}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Why an HTML page is not shown.
enum Refused {
    /// No credential: off to the login form (`303` to this location).
    Login(String),
    Denied(Denied),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Login(to) => see_other(&to),
            Refused::Denied(d) => UiError::Denied(d).into_response(),
        }
    }
}

/// The viewer of an HTML page; a browser without credential is sent to the login form.
fn page_viewer(
    state: &AppState,
    headers: &HeaderMap,
    uri: &OriginalUri,
) -> Result<Viewer, Refused> {
    match access::viewer(state, headers) {
        Ok(v) => Ok(v),
        Err(Denied::NoCredential) => {
            let next = uri.0.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut to = String::from("/login");
            if next != "/" {
                to.push_str("?next=");
                to.push_str(&url_component(next));
            }
            Err(Refused::Login(to))
        }
        Err(d) => Err(Refused::Denied(d)),
    }
}

fn url_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn html(title: &str, viewer: Viewer, stream: Option<&str>, body: Markup) -> Response {
    pages::layout(title, Some(viewer), stream, body).into_response()
}

/// `GET /`: overview, filters, one page of the node table, last events.
async fn fleet(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let viewer = match page_viewer(&state, &headers, &uri) {
        Ok(v) => v,
        Err(r) => return Ok(r.into_response()),
    };
    // Before reading the nodes: the live stream replays anything that happens after this.
    let seq = state.store.last_event_seq().await?;
    let q = view::TableQuery::from_params(&params);
    // Rows of the whole fleet, sorted: CPU work kept off the async workers (heartbeats).
    let (fleet, query) = (state.fleet.clone(), q.clone());
    let (summary, table) = tokio::task::spawn_blocking(move || view::fleet_table(&fleet, &query))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let (page, error, status) = match table {
        Ok(p) => (p, None, StatusCode::OK),
        Err(e) => (
            view::Page {
                rows: Vec::new(),
                matching: 0,
                page: 1,
                pages: 1,
            },
            Some(e.to_string()),
            StatusCode::BAD_REQUEST,
        ),
    };
    let n = LAST_EVENTS as u64;
    let last = state
        .store
        .events_after(seq.saturating_sub(n), LAST_EVENTS)
        .await?;
    let now = chrono::Utc::now();
    let body = pages::fleet(&summary, &q, &page, error.as_deref(), &last, now);
    let stream = format!("/ui/events?after={seq}");
    Ok((status, html("Fleet", viewer, Some(&stream), body)).into_response())
}

/// The node's audit records of the last 30 days, the newest [`NODE_EVENTS`].
async fn node_changes(
    state: &AppState,
    id: &str,
) -> Result<Vec<steward_proto::AuditRecord>, UiError> {
    let filter = crate::audit::AuditFilter {
        target: Some(format!("node/{id}")),
        since: Some(chrono::Utc::now() - chrono::Duration::days(30)),
        limit: 1000,
        ..Default::default()
    };
    let mut records = state.audit.list(&filter).await?.records;
    let skip = records.len().saturating_sub(NODE_EVENTS);
    records.drain(..skip);
    Ok(records)
}

/// `GET /nodes/{id}`.
async fn node(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let viewer = match page_viewer(&state, &headers, &uri) {
        Ok(v) => v,
        Err(r) => return Ok(r.into_response()),
    };
    let seq = state.store.last_event_seq().await?;
    let rec = state
        .store
        .node(&id)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("no node with id {id:?}")))?;
    let n = state.nodes.to_wire(rec);
    let nets = state
        .specs
        .document(&id)
        .await
        .map(|d| d.spec.networks)
        .unwrap_or_default();
    let window = seq.saturating_sub(NODE_EVENTS_WINDOW);
    let mut recent: Vec<_> = state
        .store
        .events_after(window, NODE_EVENTS_WINDOW as usize)
        .await?
        .into_iter()
        .filter(|e| e.node_id.as_deref() == Some(id.as_str()))
        .collect();
    let skip = recent.len().saturating_sub(NODE_EVENTS);
    recent.drain(..skip);
    let changes = match viewer {
        Viewer::Public => None,
        Viewer::Admin | Viewer::Read => Some(node_changes(&state, &id).await?),
    };
    let body = node_page::page(&n, &nets, &recent, changes.as_deref(), chrono::Utc::now());
    let stream = format!("/ui/events?after={seq}&node={}", url_component(&n.id));
    Ok(html(&n.hostname, viewer, Some(&stream), body))
}

/// `GET /sessions`: every session (live first), for signed-in viewers.
async fn sessions_view(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: OriginalUri,
) -> Result<Response, UiError> {
    let viewer = match page_viewer(&state, &headers, &uri) {
        Ok(v) => v,
        Err(r) => return Ok(r.into_response()),
    };
    let body = match viewer {
        Viewer::Public => sessions_page::sign_in(),
        Viewer::Admin | Viewer::Read => {
            let all = state
                .sessions
                .list(&Default::default(), &crate::auth::Caller::read_token())
                .await
                .map_err(|e| match e {
                    crate::sessions::SessionError::Store(e) => UiError::Store(e),
                    other => UiError::NotFound(other.to_string()),
                })?;
            sessions_page::page(&all, chrono::Utc::now())
        }
    };
    Ok(html("Sessions", viewer, None, body))
}

async fn login_form(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = access::safe_next(q.get("next").map(String::as_str));
    let body = pages::login(&next, None, state.settings.public_status);
    pages::layout("Sign in", None, None, body).into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /login`: checks the token once and sets a session cookie.
async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let next = access::safe_next(f.next.as_deref());
    match access::sign_in(&state, f.token.trim()) {
        Ok(who) => {
            let viewer = who.viewer;
            let id = match state.logins.create(&state.store, who).await {
                Ok(id) => id,
                Err(e) => return UiError::from(e).into_response(),
            };
            state.metrics.ui_sessions.set(gauge(state.logins.alive()));
            tracing::info!(viewer = viewer.as_str(), "status page sign-in");
            let mut resp = see_other(&next);
            if let Ok(v) = HeaderValue::from_str(&access::set_cookie(&id, state.settings.tls)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(denied) => {
            tracing::warn!(reason = %denied, "status page sign-in refused");
            let why = match denied {
                access::Denied::BadCredential => {
                    "That is neither the admin nor the read token, nor a named credential."
                        .to_string()
                }
                other => format!("{}.", capitalise(&other.to_string())),
            };
            let body = pages::login(&next, Some(&why), state.settings.public_status);
            (
                StatusCode::UNAUTHORIZED,
                pages::layout("Sign in", None, None, body),
            )
                .into_response()
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// `POST /logout`: forgets the session and clears the cookie.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = access::session_cookie(&headers) {
        if let Err(e) = state.logins.remove(&state.store, id).await {
            return UiError::from(e).into_response();
        }
    }
    state.metrics.ui_sessions.set(gauge(state.logins.alive()));
    let mut resp = see_other("/login");
    if let Ok(v) = HeaderValue::from_str(&access::clear_cookie(state.settings.tls)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `GET /metrics`: Prometheus text (or OpenMetrics when the scraper asks for it).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, UiError> {
    if let Err(d) = access::viewer(&state, &headers) {
        return Ok(deny_api(d));
    }
    let (by_health, drifted) = view::fleet_gauges(&view::Summary::of_fleet(&state.fleet));
    state.metrics.ui_sessions.set(gauge(state.logins.alive()));
    let om = crate::metrics::wants_openmetrics(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let ct = if om {
        crate::metrics::CONTENT_TYPE
    } else {
        crate::metrics::TEXT_CONTENT_TYPE
    };
    let body = state.metrics.render(&by_health, drifted, om);
    Ok(([(header::CONTENT_TYPE, ct)], body).into_response())
}

const APP_CSS: &str = include_str!("../../assets/app.css");
const APP_JS: &str = include_str!("../../assets/app.js");

/// `GET /assets/{file}`: the embedded stylesheet and script (no credential needed: no data).
async fn asset(Path(file): Path<String>) -> Response {
    let (ct, body) = match file.as_str() {
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}
