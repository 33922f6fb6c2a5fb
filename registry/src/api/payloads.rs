//! Payload endpoints: upload (streamed), list, metadata, delete, and blob download with Range.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::TryStreamExt;
use steward_proto::{PayloadSummary, PayloadVersion};
use tower::ServiceExt;

use crate::auth::Caller;
use crate::error::{ApiResult, RegistryError};
use crate::payloads::blobs;
use crate::state::AppState;

/// Optional request header carrying the sha256 the uploader expects.
pub const SHA256_HEADER: &str = "x-steward-sha256";

/// `PUT /v1/payloads/{name}/{version}`: the raw body, streamed (no body-size limit applies).
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let expected = headers
        .get(SHA256_HEADER)
        .map(|v| {
            v.to_str().map(|s| s.trim().to_string()).map_err(|_| {
                RegistryError::invalid(SHA256_HEADER, "must be 64 lower-case hex characters")
            })
        })
        .transpose()?;
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let up = state
        .payloads
        .upload(
            &name,
            &version,
            expected.as_deref(),
            stream,
            &caller.actor(),
        )
        .await?;
    let status = if up.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(up.version)).into_response())
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<PayloadSummary>>> {
    Ok(Json(state.payloads.list().await?))
}

pub async fn versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<PayloadVersion>>> {
    Ok(Json(state.payloads.versions(&name).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<PayloadVersion>> {
    Ok(Json(state.payloads.get(&name, &version).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<PayloadVersion>> {
    if let Some(scope) = caller.scope() {
        return Err(RegistryError::Forbidden(format!(
            "payloads serve the whole fleet; a credential narrowed to {} cannot delete one",
            scope.text
        )));
    }
    Ok(Json(
        state
            .payloads
            .delete(&name, &version, &caller.actor())
            .await?,
    ))
}

/// `GET /v1/blobs/{sha256}`: the file as it is on disk (not re-hashed: the agent verifies),
/// with `Range` (206 + `Content-Range`), `Accept-Ranges`, `Content-Length` and
/// `ETag: "<sha256>"`. A node may read only blobs its effective spec references.
pub async fn blob(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(sha256): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    if !blobs::is_sha256(&sha256) {
        return Err(RegistryError::invalid(
            "sha256",
            "must be 64 lower-case hex characters",
        ));
    }
    if let Caller::Node(id) = &caller {
        let doc = state.specs.document(id).await?;
        let referenced = doc
            .spec
            .payloads
            .iter()
            .any(|p| p.sha256.as_deref() == Some(sha256.as_str()));
        if !referenced {
            return Err(RegistryError::Forbidden(format!(
                "node {id} may download only blobs its spec references; {sha256} is not one"
            )));
        }
    }
    // With replicas, another one may hold it: fetch it (sha256 checked), then serve it.
    if !state.blobs().exists(&sha256).await && !state.payloads.fetch_blob(&sha256).await? {
        return Err(RegistryError::NotFound(format!("no blob {sha256}")));
    }
    let path = state.blobs().path(&sha256);
    // ServeFile's error type is Infallible: I/O failures come back as 500 responses.
    let Ok(resp) = tower_http::services::ServeFile::new(&path)
        .oneshot(req)
        .await;
    let mut resp = resp.map(Body::new);
    if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        return Err(RegistryError::RangeNotSatisfiable(format!(
            "the blob's size does not contain the requested range ({})",
            resp.headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
        )));
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{sha256}\"")) {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    Ok(resp)
}
