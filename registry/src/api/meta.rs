//! Health probes and the API document.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use crate::state::AppState;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store can read and write (503 naming the reason otherwise: a full disk, an
/// I/O error); a failed store is recovered here when it can be.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ready = match state.store.last_event_seq().await {
        Ok(_) => state.store.readiness().await,
        Err(e) => Err(e),
    };
    match ready {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
    }
}

pub async fn openapi() -> impl IntoResponse {
    Json(super::openapi::document())
}
