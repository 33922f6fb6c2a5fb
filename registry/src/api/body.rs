//! Request bodies in JSON or YAML (by Content-Type), with errors that name the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use steward_proto::parse::{parse_document, Format};

use crate::error::RegistryError;

/// A parsed request body; YAML when the Content-Type says so, JSON otherwise.
pub struct Doc<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Doc<T> {
    type Rejection = RegistryError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let format = Format::from_content_type(
            req.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                RegistryError::TooLarge(format!(
                    "request body too large: {e} (the limit is max_body_bytes, env \
                     STEWARD_MAX_BODY_BYTES)"
                ))
            } else {
                RegistryError::invalid("(body)", format!("could not read the body: {e}"))
            }
        })?;
        parse_document(&bytes, format)
            .map(Doc)
            .map_err(|p| RegistryError::Invalid(vec![p]))
    }
}
