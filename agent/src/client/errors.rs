//! Turning a failed request into a [`ClientError`] a user can act on: transport failures
//! (unreachable, timeout, TLS, pin mismatch) and error answers (the registry's `ApiError`).

use std::time::Duration;

use reqwest::{StatusCode, Url};
use rustls::{CertificateError, OtherError};
use steward_proto::ApiError;

use super::tls::{find_rustls_error, PinMismatchError};
use super::{display_url, ClientError};

/// `err` and its causes, joined by `: ` (repeated messages once).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Maps a failure to get an answer at all.
pub(super) fn transport_error(
    url: &Url,
    err: &reqwest::Error,
    timeout: Duration,
    pin: Option<&str>,
) -> ClientError {
    let url_s = display_url(url);
    // Without the URL (already in our message) reqwest's text is just its causes.
    let detail = std::error::Error::source(err)
        .map(error_chain)
        .unwrap_or_else(|| err.to_string());
    if let Some(tls) = find_rustls_error(err) {
        return match tls {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                match inner.downcast_ref::<PinMismatchError>() {
                    Some(pm) => ClientError::PinMismatch {
                        url: url_s,
                        expected: pin.unwrap_or_default().to_string(),
                        actual: pm.actual.clone(),
                    },
                    None => ClientError::UntrustedCertificate {
                        url: url_s,
                        detail: tls.to_string(),
                    },
                }
            }
            rustls::Error::InvalidCertificate(_) => ClientError::UntrustedCertificate {
                url: url_s,
                detail: tls.to_string(),
            },
            _ => ClientError::Tls {
                url: url_s,
                detail: tls.to_string(),
            },
        };
    }
    if err.is_connect() {
        ClientError::Unreachable { url: url_s, detail }
    } else if err.is_timeout() {
        ClientError::Timeout {
            url: url_s,
            after: timeout,
        }
    } else if err.is_decode() {
        ClientError::Protocol { url: url_s, detail }
    } else {
        ClientError::Unreachable { url: url_s, detail }
    }
}

/// Maps an answer with an error status.
pub(super) async fn status_error(url: &Url, resp: reqwest::Response) -> ClientError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let api: Option<ApiError> = serde_json::from_str(&text).ok();
    match (status, api) {
        (StatusCode::UNAUTHORIZED, api) => ClientError::Unauthorized {
            message: api
                .map(|a| a.error)
                .unwrap_or_else(|| "HTTP 401".to_string()),
        },
        (StatusCode::FORBIDDEN, Some(api)) if api.code == "enrollment_refused" => {
            ClientError::EnrollmentRefused { message: api.error }
        }
        (_, Some(api)) => ClientError::Refused {
            status: status.as_u16(),
            error: api,
        },
        (_, None) => {
            let snippet: String = text.chars().take(200).collect();
            ClientError::Protocol {
                url: display_url(url),
                detail: format!("HTTP {status} without an error body: {snippet:?}"),
            }
        }
    }
}
