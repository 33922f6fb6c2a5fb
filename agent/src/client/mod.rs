//! The agent's client for the registry's HTTP API (see docs/API.md).
//!
//! One [`RegistryClient`] holds one `reqwest::Client` (so connections are kept alive and
//! reused) over rustls with the *ring* crypto provider. For `https` URLs the server is
//! verified either
//!
//! - against the built-in web PKI roots plus the certificates of [`TlsOptions::ca_file`], with
//!   the usual hostname check; or
//! - when [`TlsOptions::pin_sha256`] is set, by pinning: the server is accepted if and only if
//!   the sha256 of its end-entity certificate (DER) is the pin. The handshake signatures are
//!   still verified against that certificate's key, but neither the chain, the hostname nor the
//!   validity period are checked, and `ca_file` is not used. [`cert_sha256_pem`] computes the
//!   pin of a PEM certificate.
//!
//! The node secret and the enrollment token never appear in `Debug` output or in errors.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_proto::{
    ApiError, EnrollResponse, Heartbeat, HeartbeatResponse, NodeFacts, NodeStatus, Problem,
    SpecDocument,
};

mod errors;
mod tls;

use errors::{status_error, transport_error};
pub use tls::cert_sha256_pem;
use tls::tls_config;

/// Timeout of every request except the long-poll.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Added to the long-poll's `wait` to get its HTTP timeout.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(15);
/// Timeout of one whole blob download (payloads can be large; stalls are caught by the caller).
pub const BLOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Time allowed to open a connection (TCP and TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the registry's certificate is verified (only used for `https` URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with one or more CA certificates trusted in addition to the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Hex sha256 of the server's end-entity certificate (DER); colons and case are ignored.
    /// When set, the certificate is pinned and `ca_file` is not used.
    pub pin_sha256: Option<String>,
}

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
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => true,
            ClientError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
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

/// A secret string: usable, but never printed.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
struct Credentials {
    node_id: String,
    secret: Secret,
}

/// How `https` servers are verified.
#[derive(Clone)]
enum TlsMode {
    Plain,
    Roots { ca_file: Option<PathBuf> },
    Pinned { pin: String },
}

impl fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsMode::Plain => f.write_str("plain HTTP"),
            TlsMode::Roots { ca_file: None } => f.write_str("web PKI roots"),
            TlsMode::Roots { ca_file: Some(p) } => {
                write!(f, "web PKI roots and {}", p.display())
            }
            TlsMode::Pinned { pin } => write!(f, "pinned sha256 {pin}"),
        }
    }
}

/// The agent's client for one registry.
#[derive(Clone)]
pub struct RegistryClient {
    base: Url,
    http: reqwest::Client,
    tls: TlsMode,
    creds: Option<Credentials>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.base.as_str())
            .field("tls", &self.tls)
            .field("node_id", &self.creds.as_ref().map(|c| c.node_id.as_str()))
            .field("secret", &self.creds.as_ref().map(|c| &c.secret))
            .finish()
    }
}

/// Body of `POST /v1/enroll` (borrowed, so the facts are not copied).
#[derive(Serialize)]
struct EnrollBody<'a> {
    token: &'a str,
    facts: &'a NodeFacts,
    /// Proof of being the enrolled node: its current secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_secret: Option<&'a str>,
}

impl RegistryClient {
    /// A client for the registry at `url` (`http(s)://host:port`, optionally with a path
    /// prefix). For `https`, the server is verified as `tls` says (see the module docs); for
    /// `http`, `tls` is ignored.
    pub fn new(url: &str, tls: &TlsOptions) -> Result<Self, ClientError> {
        let base = parse_base_url(url)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (config, mode) = if base.scheme() == "https" {
            tls_config(provider, tls)?
        } else {
            (
                tls_config(provider, &TlsOptions::default())?.0,
                TlsMode::Plain,
            )
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(DEFAULT_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("steward-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::TlsConfig(format!("cannot build the HTTP client: {e}")))?;
        Ok(RegistryClient {
            base,
            http,
            tls: mode,
            creds: None,
        })
    }

    /// The same client, authenticating as node `node_id` with `secret` (from the enrolment).
    pub fn with_credentials(self, node_id: String, secret: String) -> Self {
        RegistryClient {
            creds: Some(Credentials {
                node_id,
                secret: Secret(secret),
            }),
            ..self
        }
    }

    /// The node id set by [`RegistryClient::with_credentials`].
    pub fn node_id(&self) -> Option<&str> {
        self.creds.as_ref().map(|c| c.node_id.as_str())
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// `POST /v1/enroll`: enrols this machine with an enrollment token (a new node), or with
    /// a re-enrolment grant an admin issued for its node (as `token`). Never sends the
    /// client's node secret: see [`RegistryClient::reenroll`].
    pub async fn enroll(
        &self,
        token: &str,
        facts: &NodeFacts,
    ) -> Result<EnrollResponse, ClientError> {
        self.enroll_with(token, facts, None).await
    }

    /// `POST /v1/enroll` as the node of this client's credentials, proving it with its
    /// current secret: the node keeps its id and gets a new secret (the old one stops
    /// working; use the answer's). `NotEnrolled` without credentials.
    pub async fn reenroll(
        &self,
        token: &str,
        facts: &NodeFacts,
    ) -> Result<EnrollResponse, ClientError> {
        let node_secret = Some(self.creds()?.secret.0.as_str());
        self.enroll_with(token, facts, node_secret).await
    }

    async fn enroll_with(
        &self,
        token: &str,
        facts: &NodeFacts,
        node_secret: Option<&str>,
    ) -> Result<EnrollResponse, ClientError> {
        let url = self.endpoint(&["v1", "enroll"]);
        let body = EnrollBody {
            token,
            facts,
            node_secret,
        };
        let resp = self
            .call(
                Method::POST,
                url.clone(),
                Some(&body),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        self.decode(&url, resp).await
    }

    /// `POST /v1/nodes/{id}/heartbeat`.
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatResponse, ClientError> {
        let creds = self.creds()?;
        let url = self.endpoint(&["v1", "nodes", &creds.node_id, "heartbeat"]);
        let resp = self
            .call(
                Method::POST,
                url.clone(),
                Some(hb),
                Some(creds),
                DEFAULT_TIMEOUT,
            )
            .await?;
        self.decode(&url, resp).await
    }

    /// `PUT /v1/nodes/{id}/status`.
    pub async fn put_status(&self, status: &NodeStatus) -> Result<(), ClientError> {
        let creds = self.creds()?;
        let url = self.endpoint(&["v1", "nodes", &creds.node_id, "status"]);
        self.call(Method::PUT, url, Some(status), Some(creds), DEFAULT_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Long-poll `GET /v1/nodes/{id}/spec?after=G&wait=W`: the spec document as soon as its
    /// generation is greater than `after`, or `Ok(None)` (`304`) when `wait` passed without
    /// one. `wait` must not exceed the registry's `max_wait` (300 s by default). The HTTP
    /// timeout of this call is `wait` + [`LONG_POLL_MARGIN`].
    pub async fn wait_spec(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<Option<SpecDocument>, ClientError> {
        let creds = self.creds()?;
        let mut url = self.endpoint(&["v1", "nodes", &creds.node_id, "spec"]);
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("wait", &format!("{}ms", wait.as_millis()));
        let resp = self
            .call(
                Method::GET,
                url.clone(),
                None::<&()>,
                Some(creds),
                wait.saturating_add(LONG_POLL_MARGIN),
            )
            .await?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        self.decode(&url, resp).await.map(Some)
    }

    /// `GET /v1/blobs/{sha256}` from byte `offset` on (with `Range: bytes=offset-` when
    /// `offset > 0`), authenticated as this node: the response (`200`, `206`, or `416` when
    /// `offset` is at or past the end) with its body not read yet. The whole download may
    /// take up to [`BLOB_TIMEOUT`]; the caller watches for a stalled stream itself.
    pub async fn blob(&self, sha256: &str, offset: u64) -> Result<reqwest::Response, ClientError> {
        let creds = self.creds()?;
        let url = self.endpoint(&["v1", "blobs", sha256]);
        let mut rb = self
            .http
            .get(url.clone())
            .timeout(BLOB_TIMEOUT)
            .bearer_auth(&creds.secret.0);
        if offset > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transport_error(&url, &e, BLOB_TIMEOUT, self.pin()))?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(resp);
        }
        Err(status_error(&url, resp).await)
    }

    fn pin(&self) -> Option<&str> {
        match &self.tls {
            TlsMode::Pinned { pin } => Some(pin),
            _ => None,
        }
    }

    fn creds(&self) -> Result<&Credentials, ClientError> {
        self.creds.as_ref().ok_or(ClientError::NotEnrolled)
    }

    /// The base URL with `segments` appended (each percent-encoded as needed).
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request; `Ok` for 2xx and 304, the matching [`ClientError`] otherwise.
    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        creds: Option<&Credentials>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let mut rb = self.http.request(method, url.clone()).timeout(timeout);
        if let Some(c) = creds {
            rb = rb.bearer_auth(&c.secret.0);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transport_error(&url, &e, timeout, self.pin()))?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        Err(status_error(&url, resp).await)
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        url: &Url,
        resp: reqwest::Response,
    ) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(url, &e, DEFAULT_TIMEOUT, self.pin()))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url: display_url(url),
            detail: format!("HTTP {status} with a body that is not the expected JSON: {e}"),
        })
    }
}

/// Checks and normalises the registry URL.
fn parse_base_url(raw: &str) -> Result<Url, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if url.password().is_some() || !url.username().is_empty() {
        // Do not echo a password back.
        return Err(ClientError::InvalidUrl {
            url: format!("{}://…@{}", url.scheme(), url.host_str().unwrap_or("")),
            reason: "credentials in the URL are not supported".into(),
        });
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return Err(invalid(
            "a host is required, as in https://registry.example:8443",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("no query or fragment allowed"));
    }
    Ok(url)
}

/// The URL without its query, for messages.
fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::tls::parse_pin;
    use super::*;

    #[test]
    fn pins_parse_with_colons_and_any_case() {
        let hex64 = "AB".repeat(32);
        let colons = hex64
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert_eq!(parse_pin(&hex64.to_lowercase()).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_base_url("https://r.example:8443").is_ok());
        assert!(parse_base_url("http://127.0.0.1:7080/").is_ok());
        assert!(parse_base_url("ftp://r.example").is_err());
        assert!(parse_base_url("r.example:8443").is_err());
        let e = parse_base_url("https://u:hunter2@r.example").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn endpoints_keep_a_path_prefix_and_encode_ids() {
        let c = RegistryClient::new("https://r.example/steward/", &TlsOptions::default()).unwrap();
        assert_eq!(
            c.endpoint(&["v1", "nodes", "a/b", "spec"]).as_str(),
            "https://r.example/steward/v1/nodes/a%2Fb/spec"
        );
        let c = RegistryClient::new("http://127.0.0.1:7080", &TlsOptions::default()).unwrap();
        assert_eq!(
            c.endpoint(&["v1", "enroll"]).as_str(),
            "http://127.0.0.1:7080/v1/enroll"
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = RegistryClient::new("http://127.0.0.1:1", &TlsOptions::default())
            .unwrap()
            .with_credentials("node-1".into(), "node-1.s3cr3t-value".into());
        let d = format!("{c:?}");
        assert!(d.contains("node-1") && d.contains("redacted"), "{d}");
        assert!(!d.contains("s3cr3t"), "{d}");
    }

    #[tokio::test]
    async fn not_enrolled_is_reported() {
        let c = RegistryClient::new("http://127.0.0.1:1", &TlsOptions::default()).unwrap();
        let e = c.heartbeat(&Heartbeat::default()).await.unwrap_err();
        assert!(matches!(e, ClientError::NotEnrolled), "{e:?}");
        assert!(e.requires_reenrolment());
    }

    #[test]
    fn refusals_list_problems_not_in_the_message() {
        let e = ClientError::Refused {
            status: 400,
            error: ApiError {
                error: "invalid input: a: bad".into(),
                code: "invalid".into(),
                problems: vec![Problem::new("a", "bad"), Problem::new("b", "worse")],
            },
        };
        let s = e.to_string();
        assert!(
            s.contains("invalid input: a: bad (problems: b: worse)"),
            "{s}"
        );
    }
}
