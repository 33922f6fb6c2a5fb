//! [`ClientError`] and turning a failed request into one a user can act on: transport
//! failures (unreachable, timeout, TLS, pin mismatch), error answers (the registry's
//! `ApiError`), and which of them move the client to the next registry URL.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use rustls::{CertificateError, OtherError};
use steward_proto::endpoints::is_failover_status;
use steward_proto::{ApiError, Problem};

use super::display_url;
use super::tls::{find_rustls_error, PinMismatchError};

/// Why a call to the registry failed; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("invalid TLS settings: {0}")]
    TlsConfig(String),

    #[error(
        "cannot reach the registry at {url}: {detail}; check the registry URL, that the registry \
         is running, and that this host can reach it (DNS, routes, firewall)"
    )]
    Unreachable { url: String, detail: String },

    #[error(
        "the registry at {url} did not answer within {}: it may be overloaded or the network \
         may be dropping packets; the request will be retried",
        humantime::format_duration(*.after)
    )]
    Timeout { url: String, after: Duration },

    #[error(
        "the registry's certificate did not match the pin: {url} presented a certificate with \
         sha256 {actual}, but the pin is {expected}; if the registry's certificate was replaced \
         on purpose, set pin_sha256 to the new certificate's sha256, otherwise something between \
         this host and the registry is intercepting the connection"
    )]
    PinMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    #[error(
        "the registry's certificate at {url} is not trusted ({detail}); give the CA that signed \
         it with ca_file, or pin the certificate with pin_sha256"
    )]
    UntrustedCertificate { url: String, detail: String },

    #[error(
        "TLS handshake with the registry at {url} failed: {detail}; check that the URL's scheme \
         (http or https) and port are the registry's"
    )]
    Tls { url: String, detail: String },

    #[error(
        "the registry no longer accepts this node's credentials ({message}): the node was \
         decommissioned or enrolled again with another secret; enrol again with a new \
         enrollment token (or, if the node is still enrolled, with a re-enrolment grant: \
         stewardctl nodes reenroll NODE_ID)"
    )]
    Unauthorized { message: String },

    #[error(
        "the registry refused the enrollment token ({message}): it is unknown, expired, revoked \
         or used up; create a new one (POST /v1/enrollment-tokens) and enrol again"
    )]
    EnrollmentRefused { message: String },

    #[error(
        "the registry refused the request (HTTP {status}, {}): {}{}",
        .error.code,
        .error.error,
        problems_suffix(&.error.error, &.error.problems)
    )]
    Refused { status: u16, error: ApiError },

    #[error(
        "this agent is not enrolled (no node id and secret): enrol with an enrollment token first"
    )]
    NotEnrolled,

    #[error(
        "unexpected answer from {url}: {detail}; check that the URL is a Steward registry of a \
         compatible version"
    )]
    Protocol { url: String, detail: String },

    #[error(
        "the registry at {url} is unavailable (HTTP {status} from it or from a load balancer in \
         front of it: {detail}); the request will be retried, on the next registry URL if \
         there are several"
    )]
    Unavailable {
        url: String,
        status: u16,
        detail: String,
    },

    #[error("no registry URL answered:{}", attempts_list(.attempts))]
    AllFailed {
        /// Each URL tried, with its error.
        attempts: Vec<(String, ClientError)>,
    },
}

/// `attempts` one per line, as `\n  URL: error`.
fn attempts_list(attempts: &[(String, ClientError)]) -> String {
    attempts
        .iter()
        .map(|(url, e)| format!("\n  {url}: {e}"))
        .collect()
}

impl ClientError {
    /// The node's credentials are gone: only a new enrolment helps.
    pub fn requires_reenrolment(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized { .. } | ClientError::NotEnrolled
        )
    }

    /// Worth retrying later unchanged: the network, a time-out, or a server-side failure.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Timeout { .. }
            | ClientError::Unavailable { .. } => true,
            ClientError::Refused { status, .. } => *status >= 500 || *status == 429,
            ClientError::AllFailed { attempts } => attempts.iter().all(|(_, e)| e.is_transient()),
            _ => false,
        }
    }

    /// A failure of this URL rather than an answer of the registry, after which the client
    /// moves to the next registry URL: connection refused or reset, DNS, a time-out, a failed
    /// TLS handshake (including a certificate the pin or the CA refuses: the next URL is held
    /// to the same check), or HTTP 502/503/504. Any other answer would be the same from every
    /// replica and is returned as it is.
    pub fn fails_over(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Timeout { .. }
            | ClientError::Tls { .. }
            | ClientError::PinMismatch { .. }
            | ClientError::UntrustedCertificate { .. }
            | ClientError::Unavailable { .. } => true,
            ClientError::Refused { status, .. } => is_failover_status(*status),
            _ => false,
        }
    }

    /// `attempts` as one error: the error itself for a single URL, else `AllFailed`.
    pub(super) fn all_failed(mut attempts: Vec<(String, ClientError)>) -> ClientError {
        if attempts.len() == 1 {
            if let Some((_, e)) = attempts.pop() {
                return e;
            }
        }
        ClientError::AllFailed { attempts }
    }

    /// HTTP status of a refusal, if the registry answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            ClientError::Unauthorized { .. } => Some(401),
            ClientError::EnrollmentRefused { .. } => Some(403),
            _ => None,
        }
    }
}

/// Problems not already spelled out in the message, as `" (problems: a: x; b: y)"`.
fn problems_suffix(message: &str, problems: &[Problem]) -> String {
    let missing: Vec<String> = problems
        .iter()
        .map(ToString::to_string)
        .filter(|p| !message.contains(p.as_str()))
        .collect();
    if missing.is_empty() {
        String::new()
    } else {
        format!(" (problems: {})", missing.join("; "))
    }
}

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
        (_, None) if is_failover_status(status.as_u16()) => ClientError::Unavailable {
            url: display_url(url),
            status: status.as_u16(),
            detail: text
                .chars()
                .take(200)
                .collect::<String>()
                .trim()
                .to_string(),
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
