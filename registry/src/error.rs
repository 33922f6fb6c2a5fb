//! The registry's error type and how each error maps to an HTTP answer: the domain services'
//! errors ([`SpecError`], [`NodeError`], [`EnrollError`], [`PayloadError`], [`RolloutError`])
//! become a [`RegistryError`] here, which knows its status code and `code` string.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use steward_proto::{ApiError, Problem};

use crate::kv::KvError;
use crate::nodes::NodeError;
use crate::payloads::PayloadError;
use crate::reenroll::EnrollError;
use crate::rollout::RolloutError;
use crate::specs::SpecError;
use crate::store::StoreError;

/// Everything a request can fail with; each variant knows its status code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("missing or invalid credential: send 'Authorization: Bearer <token>'")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid input: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("{message}")]
    Conflict {
        message: String,
        problems: Vec<Problem>,
    },
    #[error("generation is {current}, If-Match asked for {expected}")]
    PreconditionFailed { current: u64, expected: u64 },
    #[error("enrollment refused: {0}")]
    Enrollment(String),
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed input that refers to something that does not exist or does not match
    /// (a payload version missing from the registry, a sha256 that differs from the pinned one).
    #[error("unprocessable: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Unprocessable(Vec<Problem>),
    #[error("range not satisfiable: {0}")]
    RangeNotSatisfiable(String),
    #[error(transparent)]
    Blob(#[from] crate::payloads::blobs::BlobError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Peer(#[from] crate::payloads::peers::PeerError),
    /// An answer serde cannot write as JSON (a bug).
    #[error("cannot encode the answer as JSON: {0}")]
    Encode(#[source] serde_json::Error),
}

impl RegistryError {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        RegistryError::Invalid(vec![Problem::new(field, reason)])
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RegistryError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            RegistryError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RegistryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            RegistryError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            RegistryError::PreconditionFailed { .. } => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            RegistryError::Enrollment(_) => (StatusCode::FORBIDDEN, "enrollment_refused"),
            RegistryError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            RegistryError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            RegistryError::RangeNotSatisfiable(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            RegistryError::Blob(crate::payloads::blobs::BlobError::Mismatch { .. }) => {
                (StatusCode::BAD_REQUEST, "sha256_mismatch")
            }
            RegistryError::Blob(crate::payloads::blobs::BlobError::Body { .. }) => {
                (StatusCode::BAD_REQUEST, "body")
            }
            RegistryError::Blob(crate::payloads::blobs::BlobError::Full { .. })
            | RegistryError::Store(StoreError::Kv(KvError::Full { .. })) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            RegistryError::Store(StoreError::Kv(
                KvError::Io { .. } | KvError::Unavailable { .. },
            )) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            RegistryError::Store(StoreError::Busy { .. } | StoreError::Stale) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_busy")
            }
            RegistryError::Blob(_) => (StatusCode::INTERNAL_SERVER_ERROR, "blob_store"),
            RegistryError::Peer(crate::payloads::peers::PeerError::Store(_))
            | RegistryError::Peer(crate::payloads::peers::PeerError::TooFewCopies { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "replicas_unavailable")
            }
            RegistryError::Peer(_) => (StatusCode::INTERNAL_SERVER_ERROR, "blob_store"),
            RegistryError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            RegistryError::Encode(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encode"),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %format!("{self:#}"), "request failed");
        }
        let problems = match &self {
            RegistryError::Invalid(p) | RegistryError::Unprocessable(p) => p.clone(),
            RegistryError::Conflict { problems, .. } => problems.clone(),
            _ => Vec::new(),
        };
        let message = self.to_string();
        let reason = AuditReason(message.chars().take(1000).collect());
        let body = ApiError {
            error: message,
            code: code.to_string(),
            problems,
        };
        let mut resp = (status, Json(body)).into_response();
        resp.extensions_mut().insert(reason);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, RegistryError>;

fn conflict(message: String) -> RegistryError {
    RegistryError::Conflict {
        message,
        problems: Vec::new(),
    }
}

impl From<PayloadError> for RegistryError {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::Invalid(p) => RegistryError::Invalid(p),
            e @ (PayloadError::NoPayload { .. } | PayloadError::NoVersion { .. }) => {
                RegistryError::NotFound(e.to_string())
            }
            PayloadError::Immutable(message) => conflict(message),
            PayloadError::InUse { message, problems } => {
                RegistryError::Conflict { message, problems }
            }
            PayloadError::Unresolved(p) => RegistryError::Unprocessable(p),
            PayloadError::Blob(e) => RegistryError::Blob(e),
            PayloadError::Peer(e) => RegistryError::Peer(e),
            PayloadError::Store(e) => RegistryError::Store(e),
        }
    }
}

impl From<SpecError> for RegistryError {
    fn from(e: SpecError) -> Self {
        match e {
            e @ (SpecError::NoNode(_) | SpecError::NoFragment(_) | SpecError::NoVersion { .. }) => {
                RegistryError::NotFound(e.to_string())
            }
            SpecError::Invalid(p) => RegistryError::Invalid(p),
            e @ SpecError::Decommissioned(_) => conflict(e.to_string()),
            SpecError::Conflict { message, problems } => {
                RegistryError::Conflict { message, problems }
            }
            SpecError::PreconditionFailed { current, expected } => {
                RegistryError::PreconditionFailed { current, expected }
            }
            SpecError::Payload(e) => e.into(),
            SpecError::Store(e) => RegistryError::Store(e),
            SpecError::Encode(e) => RegistryError::Encode(e),
        }
    }
}

impl From<crate::credentials::CredentialError> for RegistryError {
    fn from(e: crate::credentials::CredentialError) -> Self {
        use crate::credentials::CredentialError as C;
        match e {
            C::Invalid(p) => RegistryError::Invalid(p),
            e @ C::Exists(_) => conflict(e.to_string()),
            e @ C::NotFound(_) => RegistryError::NotFound(e.to_string()),
            C::Store(e) => RegistryError::Store(e),
        }
    }
}

impl From<crate::sessions::SessionError> for RegistryError {
    fn from(e: crate::sessions::SessionError) -> Self {
        use crate::sessions::SessionError as S;
        match e {
            S::Invalid(p) => RegistryError::Invalid(p),
            e @ (S::NoTemplate(_) | S::NoSession(_)) => RegistryError::NotFound(e.to_string()),
            e @ (S::Quota(_)
            | S::Place(_)
            | S::Alloc(_)
            | S::Ended(_)
            | S::TemplateInUse { .. }) => conflict(e.to_string()),
            e @ S::NotYourOwner { .. } => RegistryError::Forbidden(e.to_string()),
            S::Spec(e) => e.into(),
            S::Store(e) => RegistryError::Store(e),
        }
    }
}

/// Why a request was refused or failed, carried in the answer's extensions for the audit
/// trail (the message of the error body; never a secret: errors do not echo credentials).
#[derive(Debug, Clone)]
pub struct AuditReason(pub String);

impl From<EnrollError> for RegistryError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Refused(why) => RegistryError::Enrollment(why),
            EnrollError::Conflict(message) => conflict(message),
            EnrollError::Invalid(p) => RegistryError::Invalid(p),
            e @ EnrollError::NoNode(_) => RegistryError::NotFound(e.to_string()),
            EnrollError::Store(e) => RegistryError::Store(e),
        }
    }
}

impl From<NodeError> for RegistryError {
    fn from(e: NodeError) -> Self {
        match e {
            e @ NodeError::NoNode(_) => RegistryError::NotFound(e.to_string()),
            NodeError::Invalid(p) => RegistryError::Invalid(p),
            NodeError::Enroll(e) => e.into(),
            NodeError::Store(e) => RegistryError::Store(e),
        }
    }
}

impl From<RolloutError> for RegistryError {
    fn from(e: RolloutError) -> Self {
        match e {
            e @ RolloutError::NoRollout(_) => RegistryError::NotFound(e.to_string()),
            RolloutError::Invalid(p) => RegistryError::Invalid(p),
            RolloutError::Unresolved(p) => RegistryError::Unprocessable(p),
            RolloutError::Conflict(message) => conflict(message),
            RolloutError::Spec(e) => e.into(),
            RolloutError::Store(e) => RegistryError::Store(e),
        }
    }
}
