//! `PUT /v1/blobs/{sha256}`: a blob copy pushed by another registry replica (`payloads/peers.rs`),
//! stored only if the body hashes to the sha256 in the path.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures_util::TryStreamExt;

use crate::error::{ApiResult, RegistryError};
use crate::payloads::blobs;
use crate::state::AppState;

pub async fn put(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    if !blobs::is_sha256(&sha256) {
        return Err(RegistryError::invalid(
            "sha256",
            "must be 64 lower-case hex characters",
        ));
    }
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let created = state.payloads.receive_copy(&sha256, stream).await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}
