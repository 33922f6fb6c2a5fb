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
    let ing = state.blobs.ingest(stream, Some(&sha256)).await?;
    let created = state.blobs.commit(ing).await?;
    if let Some(p) = state.peers.get() {
        state
            .store
            .record_blob_copies(&p.me, std::slice::from_ref(&sha256))
            .await?;
    }
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}
