//! The agent's client for the registry's HTTP API (see docs/API.md).
//!
//! One [`RegistryClient`] holds one `reqwest::Client` speaking HTTP/2 (h2c on `http` URLs,
//! ALPN on `https`), so the long-poll and the heartbeats share one kept-alive connection, over
//! rustls with the *ring* crypto provider, and the registry's URLs
//! ([`Endpoints`]: one, or several replicas of one registry). A request goes to the URL in use;
//! when it fails in a way [`ClientError::fails_over`] names (connection, time-out, TLS
//! handshake, HTTP 502/503/504) the client moves to the next URL for the following request
//! (the daemon's loops retry with their jittered backoff) and logs the switch. Enrolment tries
//! each URL in turn before failing. For `https` URLs the server is verified either
//!
//! - against the built-in web PKI roots plus the certificates of [`TlsOptions::ca_file`], with
//!   the usual hostname check; or
//! - when [`TlsOptions::pin_sha256`] is set, by pinning: the server is accepted if and only if
//!   the sha256 of its end-entity certificate (DER) is the pin. The handshake signatures are
//!   still verified against that certificate's key, but neither the chain, the hostname nor the
//!   validity period are checked, and `ca_file` is not used. [`cert_sha256_pem`] computes the
//!   pin of a PEM certificate.
//!
//! The same verification applies to every URL of the list. The node secret and the
//! enrollment token never appear in `Debug` output or in errors.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_proto::endpoints::Endpoints;
use steward_proto::{
    EnrollResponse, Heartbeat, HeartbeatResponse, NodeFacts, NodeStatus, SpecDocument,
};

mod errors;
mod request;
mod tls;

use errors::transport_error;
pub use errors::ClientError;
use request::{Attempt, Req};
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

/// The agent's client for one registry (at one URL or several).
#[derive(Clone)]
pub struct RegistryClient {
    /// Shared by the clones (the spec watcher's and the heartbeat's): a switch is seen by all.
    bases: Arc<Endpoints<Url>>,
    http: reqwest::Client,
    tls: TlsMode,
    creds: Option<Credentials>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("urls", &self.urls())
            .field("in_use", &self.url())
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
    /// prefix), or at each of several such URLs separated by commas (replicas of one
    /// registry; the first is used until it fails). For `https`, the server is verified as
    /// `tls` says (see the module docs); for `http`, `tls` is ignored.
    pub fn new(url: &str, tls: &TlsOptions) -> Result<Self, ClientError> {
        let bases = parse_urls(url)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (config, mode) = if bases.all().iter().any(|b| b.scheme() == "https") {
            tls_config(provider, tls)?
        } else {
            (
                tls_config(provider, &TlsOptions::default())?.0,
                TlsMode::Plain,
            )
        };
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(DEFAULT_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(90))
            // One HTTP/2 connection carries the long-poll and the heartbeats side by side; its
            // pings find a dead connection while a long-poll waits on it.
            .http2_keep_alive_interval(Duration::from_secs(15))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("steward-agent/", env!("CARGO_PKG_VERSION")));
        if bases.all().iter().all(|b| b.scheme() == "http") {
            // Plain HTTP: HTTP/2 from the first byte (h2c; the registry serves both), so one
            // connection is enough. Over HTTPS, ALPN picks HTTP/2 the same way.
            builder = builder.http2_prior_knowledge();
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::TlsConfig(format!("cannot build the HTTP client: {e}")))?;
        Ok(RegistryClient {
            bases: Arc::new(bases),
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

    /// The base URL in use.
    pub fn url(&self) -> &str {
        self.bases.pick().1.as_str()
    }

    /// Every base URL, in the configured order.
    pub fn urls(&self) -> Vec<&str> {
        self.bases.all().iter().map(Url::as_str).collect()
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
        let body = EnrollBody {
            token,
            facts,
            node_secret,
        };
        let req = Req::new(Method::POST, &["v1", "enroll"]).body(&body);
        self.json(&req, Attempt::EachUrl)
            .await?
            .ok_or_else(|| ClientError::Protocol {
                url: self.url().to_string(),
                detail: "HTTP 304 to an enrolment".into(),
            })
    }

    /// `POST /v1/nodes/{id}/heartbeat`.
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatResponse, ClientError> {
        let creds = self.creds()?;
        let segments = ["v1", "nodes", &creds.node_id, "heartbeat"];
        let req = Req::new(Method::POST, &segments).body(hb).creds(creds);
        self.json(&req, Attempt::UrlInUse)
            .await?
            .ok_or_else(|| ClientError::Protocol {
                url: self.url().to_string(),
                detail: "HTTP 304 to a heartbeat".into(),
            })
    }

    /// `PUT /v1/nodes/{id}/status`.
    pub async fn put_status(&self, status: &NodeStatus) -> Result<(), ClientError> {
        let creds = self.creds()?;
        let segments = ["v1", "nodes", &creds.node_id, "status"];
        let req = Req::new(Method::PUT, &segments).body(status).creds(creds);
        self.send(&req).await?;
        Ok(())
    }

    /// Long-poll `GET /v1/nodes/{id}/spec?after=G&wait=W`: the spec document as soon as its
    /// generation is greater than `after`, or `Ok(None)` (`304`) when `wait` passed without
    /// one. `wait` must not exceed the registry's `max_wait` (300 s by default). The HTTP
    /// timeout of this call is `wait` + [`LONG_POLL_MARGIN`]. After a switch of registry URL
    /// the caller asks again with the same `after`: generations are the registry's, not a URL's.
    pub async fn wait_spec(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<Option<SpecDocument>, ClientError> {
        let creds = self.creds()?;
        let segments = ["v1", "nodes", &creds.node_id, "spec"];
        let query = [
            ("after", after.to_string()),
            ("wait", format!("{}ms", wait.as_millis())),
        ];
        let mut req = Req::new(Method::GET, &segments).creds(creds);
        req.query = &query;
        req.timeout = wait.saturating_add(LONG_POLL_MARGIN);
        self.json(&req, Attempt::UrlInUse).await
    }

    /// `GET /v1/blobs/{sha256}` from byte `offset` on (with `Range: bytes=offset-` when
    /// `offset > 0`), authenticated as this node: the response (`200`, `206`, or `416` when
    /// `offset` is at or past the end) with its body not read yet. The whole download may
    /// take up to [`BLOB_TIMEOUT`]; the caller watches for a stalled stream itself.
    pub async fn blob(&self, sha256: &str, offset: u64) -> Result<reqwest::Response, ClientError> {
        let creds = self.creds()?;
        let segments = ["v1", "blobs", sha256];
        let mut req = Req::new(Method::GET, &segments).creds(creds);
        req.timeout = BLOB_TIMEOUT;
        req.range = Some(offset);
        Ok(self.send(&req).await?.1)
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

/// Checks a registry URL, or a comma-separated list of them (see [`RegistryClient::new`]):
/// each must be a valid base URL (the error names the first that is not), none twice.
pub fn parse_urls(raw: &str) -> Result<Endpoints<Url>, ClientError> {
    Endpoints::parse(
        raw,
        |e| ClientError::InvalidUrl {
            url: raw.to_string(),
            reason: e.to_string(),
        },
        parse_base_url,
    )
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
    use steward_proto::{ApiError, Problem};

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
            RegistryClient::endpoint(c.bases.get(0), &["v1", "nodes", "a/b", "spec"]).as_str(),
            "https://r.example/steward/v1/nodes/a%2Fb/spec"
        );
        let c = RegistryClient::new("http://127.0.0.1:7080", &TlsOptions::default()).unwrap();
        assert_eq!(
            RegistryClient::endpoint(c.bases.get(0), &["v1", "enroll"]).as_str(),
            "http://127.0.0.1:7080/v1/enroll"
        );
    }

    /// A loopback port nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn every_url_of_a_list_is_checked_and_the_bad_one_named() {
        let c = RegistryClient::new("http://a:1, https://b:2/", &TlsOptions::default()).unwrap();
        assert_eq!(c.urls(), vec!["http://a:1/", "https://b:2/"]);
        assert_eq!(c.url(), "http://a:1/");
        let e = RegistryClient::new("http://a:1,ftp://b:2", &TlsOptions::default()).unwrap_err();
        match e {
            ClientError::InvalidUrl { url, .. } => assert_eq!(url, "ftp://b:2"),
            other => panic!("{other:?}"),
        }
        let e = RegistryClient::new(" , ", &TlsOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no registry URL"), "{e}");
    }

    #[tokio::test]
    async fn a_connection_error_moves_the_client_to_the_next_url() {
        let (a, b) = (closed_port(), closed_port());
        let list = format!("http://127.0.0.1:{a},http://127.0.0.1:{b}");
        let c = RegistryClient::new(&list, &TlsOptions::default())
            .unwrap()
            .with_credentials("n".into(), "n.s".into());
        let shared = c.clone();
        let e = c.heartbeat(&Heartbeat::default()).await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        assert!(e.fails_over());
        // The clone shares the list: both now use the second URL.
        assert_eq!(shared.url(), format!("http://127.0.0.1:{b}/"));
    }

    #[tokio::test]
    async fn enrolment_tries_each_url_and_names_each_error() {
        let (a, b) = (closed_port(), closed_port());
        let list = format!("http://127.0.0.1:{a},http://127.0.0.1:{b}");
        let c = RegistryClient::new(&list, &TlsOptions::default()).unwrap();
        let e = c.enroll("t.x", &NodeFacts::default()).await.unwrap_err();
        let ClientError::AllFailed { attempts } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(attempts.len(), 2);
        let text = e.to_string();
        for port in [a, b] {
            assert!(
                text.contains(&format!("http://127.0.0.1:{port}/: cannot reach")),
                "{text}"
            );
        }
        assert!(e.is_transient());
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
