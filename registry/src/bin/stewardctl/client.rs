//! HTTP client for the registry API: URLs, the bearer token, TLS roots, time-outs, and turning
//! error answers into `CliError`.
//!
//! With several registry URLs (replicas of one registry), a request goes to the first; when
//! that URL fails before the registry could answer it goes to the next, and so on
//! ([`steward_proto::endpoints`] owns the list and the order). What moves on: a failure to
//! connect (refused, DNS, TLS handshake), HTTP 503, and for requests that may be repeated
//! (GET, PUT, DELETE) also a time-out, a connection reset and HTTP 502/504 (a POST that may have
//! reached the registry is not sent twice). When every URL failed, the error names each URL
//! with its failure. A streamed body (payload upload) goes to one URL only: the first that
//! answers `GET /healthz` ([`Client::settle`]).

use std::time::Duration;

use reqwest::{Method, Request, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_proto::endpoints::{is_failover_status, Endpoints};
use steward_proto::ApiError;

use crate::config::Settings;
use crate::error::{chain, CliError};
use crate::output;

/// Overall time-out of an ordinary request.
pub const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A configured connection to one registry (at one URL or several). Deliberately no `Debug`:
/// it holds the token.
pub struct Client {
    http: reqwest::Client,
    bases: Endpoints<Url>,
    token: Option<String>,
}

impl Client {
    /// Builds a client; `timeout` of `None` is for long-lived streams.
    pub fn new(s: &Settings, timeout: Option<Duration>, quiet: bool) -> Result<Self, CliError> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("stewardctl/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| CliError::Usage(format!("reading CA file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CliError::Usage(format!("CA file {}: {}", ca.display(), chain(&e))))?;
            if certs.is_empty() {
                return Err(CliError::Usage(format!(
                    "CA file {} holds no PEM certificate",
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| CliError::Usage(format!("setting up HTTP: {}", chain(&e))))?;
        for u in &s.registries {
            if s.token.is_some() && u.scheme() == "http" && !is_loopback(u) {
                output::note(
                    quiet,
                    format_args!(
                        "warning: sending the token over plain HTTP to {}; use https",
                        u.host_str().unwrap_or("?")
                    ),
                );
            }
        }
        let bases = Endpoints::new(s.registries.clone())
            .ok_or_else(|| CliError::Usage("no registry URL given".into()))?;
        Ok(Client {
            http,
            bases,
            token: s.token.clone(),
        })
    }

    /// The URL of `path` (segments, each percent-encoded) under the base URL in use.
    pub fn url(&self, path: &[&str]) -> Url {
        join(self.bases.pick().1, path)
    }

    /// A request with the bearer token attached.
    pub fn request(&self, method: Method, path: &[&str]) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request (built by [`Client::request`]), to each registry URL in turn while
    /// they fail (see the module docs); non-2xx answers become `CliError::Api`.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response, CliError> {
        let req = rb
            .build()
            .map_err(|e| CliError::Usage(format!("building the request: {}", chain(&e))))?;
        let (from, _) = self.bases.pick();
        let order = self.bases.order();
        let mut attempts: Vec<(String, CliError)> = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let mut attempt = match req.try_clone() {
                Some(r) => r,
                // A streamed body can be sent once: this is the only attempt.
                None if k == 0 => return self.send_once(req, i).await,
                None => break,
            };
            *attempt.url_mut() = retarget(req.url(), self.bases.get(from), self.bases.get(i));
            let repeatable = is_repeatable(req.method());
            match self.http.execute(attempt).await {
                Ok(resp) if moves_on_status(resp.status().as_u16(), repeatable) => {
                    let e = self.api_error(resp).await;
                    attempts.push((self.bases.get(i).to_string(), e));
                }
                Ok(resp) => {
                    self.bases.worked(i);
                    return self.answer(resp).await;
                }
                Err(e) if moves_on_error(&e, repeatable) => {
                    attempts.push((self.bases.get(i).to_string(), self.unreachable_at(e, i)));
                }
                Err(e) => return Err(self.unreachable_at(e, i)),
            }
        }
        Err(all_failed(attempts))
    }

    /// With several URLs, finds one that answers (`GET /healthz`, each in turn) and uses it
    /// from then on: for a request that can be sent only once (a streamed body).
    pub async fn settle(&self) -> Result<(), CliError> {
        if self.bases.len() > 1 {
            self.send(self.http.get(self.url(&["healthz"]))).await?;
        }
        Ok(())
    }

    /// Sends `req` to the URL at `index` only.
    async fn send_once(&self, req: Request, index: usize) -> Result<Response, CliError> {
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| self.unreachable_at(e, index))?;
        self.answer(resp).await
    }

    /// A 2xx answer, or its `CliError::Api`.
    async fn answer(&self, resp: Response) -> Result<Response, CliError> {
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.api_error(resp).await)
        }
    }

    /// Sends a request and decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T, CliError> {
        let resp = self.send(rb).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::Unexpected(format!("unexpected answer from the registry: {e}")))
    }

    /// `GET path?query` decoded from JSON; empty query values are left out.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        let q: Vec<_> = query.iter().filter(|(_, v)| !v.is_empty()).collect();
        self.json(self.request(Method::GET, path).query(&q)).await
    }

    /// Every item of a paged list (`GET path?query&limit=1000`, then `&after=` the
    /// `x-next-after` header until an answer has none). A registry that does not page answers
    /// everything at once, without the header.
    pub async fn get_pages<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<Vec<T>, CliError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = query
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .cloned()
                .collect();
            q.push(("limit", "1000".into()));
            if let Some(a) = &after {
                q.push(("after", a.clone()));
            }
            let resp = self.send(self.request(Method::GET, path).query(&q)).await?;
            let next = resp
                .headers()
                .get("x-next-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
            let page: Vec<T> = serde_json::from_slice(&bytes).map_err(|e| {
                CliError::Unexpected(format!("unexpected answer from the registry: {e}"))
            })?;
            out.extend(page);
            match next {
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                _ => return Ok(out),
            }
        }
    }

    /// `GET path` as text (for the health probes).
    pub async fn get_text(&self, path: &[&str]) -> Result<String, CliError> {
        let resp = self.send(self.request(Method::GET, path)).await?;
        resp.text().await.map_err(|e| self.unreachable(e))
    }

    /// A request with a JSON body, answer decoded from JSON.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: &B,
    ) -> Result<T, CliError> {
        self.json(self.request(method, path).json(body)).await
    }

    /// A request without a body, answer decoded from JSON.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
    ) -> Result<T, CliError> {
        self.json(self.request(method, path)).await
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        self.unreachable_at(e, self.bases.current())
    }

    fn unreachable_at(&self, e: reqwest::Error, index: usize) -> CliError {
        let what = if e.is_timeout() {
            format!(" (no answer within {}s)", TIMEOUT.as_secs())
        } else {
            String::new()
        };
        CliError::Unreachable(format!(
            "could not reach the registry at {}{what}: {}",
            self.bases.get(index),
            chain(&e.without_url())
        ))
    }

    async fn api_error(&self, resp: Response) -> CliError {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let (error, problems) = match serde_json::from_str::<ApiError>(&text) {
            Ok(a) => (a.error, a.problems),
            Err(_) => {
                let body: String = text.trim().chars().take(500).collect();
                let head = format!("the registry answered {status}");
                (
                    if body.is_empty() {
                        head
                    } else {
                        format!("{head}: {body}")
                    },
                    Vec::new(),
                )
            }
        };
        let hint = match status.as_u16() {
            401 if self.token.is_none() => Some(
                "no token configured: give --token-file, set STEWARD_TOKEN_FILE, or put token_file in the config file"
                    .to_string(),
            ),
            401 => Some("the token was not accepted: is it the registry's admin or read token?".to_string()),
            _ => None,
        };
        CliError::Api {
            status: status.as_u16(),
            error,
            problems,
            hint,
        }
    }
}

/// GET, HEAD, PUT and DELETE may be sent again to another URL after a failure mid-request.
fn is_repeatable(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    )
}

/// An answer that sends the request to the next URL: 503 (nothing was done), and 502/504 (a
/// gateway's, which may have passed the request on) when the request may be repeated.
fn moves_on_status(status: u16, repeatable: bool) -> bool {
    status == 503 || (repeatable && is_failover_status(status))
}

/// A failure that sends the request to the next URL: no connection (refused, DNS, TLS
/// handshake: nothing was sent), or any transport failure when the request may be repeated.
fn moves_on_error(e: &reqwest::Error, repeatable: bool) -> bool {
    e.is_connect() || (repeatable && (e.is_timeout() || e.is_request() || e.is_body()))
}

/// The error after every URL failed: the one error for a single URL, else each URL's.
fn all_failed(mut attempts: Vec<(String, CliError)>) -> CliError {
    if attempts.len() == 1 {
        if let Some((_, e)) = attempts.pop() {
            return e;
        }
    }
    let lines: Vec<String> = attempts
        .iter()
        .map(|(url, e)| {
            let why = e.lines().join(" ");
            format!("  {url}: {}", why.trim_start_matches("error: "))
        })
        .collect();
    CliError::Unreachable(format!("no registry URL answered:\n{}", lines.join("\n")))
}

/// `url`, built on the base `from`, moved onto the base `to` (same path below the base, same
/// query; percent-encoding kept).
fn retarget(url: &Url, from: &Url, to: &Url) -> Url {
    let from_path = from.path().trim_end_matches('/');
    let rest = url.path().strip_prefix(from_path).unwrap_or(url.path());
    let mut out = to.clone();
    out.set_path(&format!("{}{rest}", to.path().trim_end_matches('/')));
    out.set_query(url.query());
    out
}

/// Appends percent-encoded path segments to a base URL that may itself have a path.
fn join(base: &Url, path: &[&str]) -> Url {
    let mut u = base.clone();
    if let Ok(mut segs) = u.path_segments_mut() {
        segs.pop_if_empty().extend(path);
    }
    u
}

fn is_loopback(u: &Url) -> bool {
    let host = u.host_str().unwrap_or("");
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    #[test]
    fn paths_are_joined_and_escaped() {
        let base = url("http://127.0.0.1:7700");
        assert_eq!(
            join(&base, &["v1", "nodes", "abc"]).as_str(),
            "http://127.0.0.1:7700/v1/nodes/abc"
        );
        let prefixed = url("https://r.example/steward/");
        assert_eq!(
            join(&prefixed, &["v1", "fragments", "a b/c"]).as_str(),
            "https://r.example/steward/v1/fragments/a%20b%2Fc"
        );
    }

    #[test]
    fn requests_move_onto_another_base_url_keeping_path_and_query() {
        let from = url("http://127.0.0.1:7700");
        let u = join(&from, &["v1", "fragments", "a b/c"]);
        let mut u = u.clone();
        u.set_query(Some("after=3"));
        assert_eq!(
            retarget(&u, &from, &url("https://r.example/steward/")).as_str(),
            "https://r.example/steward/v1/fragments/a%20b%2Fc?after=3"
        );
        let prefixed = url("https://r.example/steward");
        let v = join(&prefixed, &["v1", "nodes"]);
        assert_eq!(
            retarget(&v, &prefixed, &url("http://b:1")).as_str(),
            "http://b:1/v1/nodes"
        );
    }

    #[test]
    fn what_moves_to_the_next_url() {
        assert!(is_repeatable(&Method::GET) && is_repeatable(&Method::PUT));
        assert!(!is_repeatable(&Method::POST));
        assert!(moves_on_status(503, false));
        assert!(moves_on_status(502, true) && moves_on_status(504, true));
        assert!(!moves_on_status(502, false) && !moves_on_status(504, false));
        assert!(!moves_on_status(500, true) && !moves_on_status(404, true));
    }

    #[test]
    fn when_all_fail_each_url_is_named() {
        let one = all_failed(vec![(
            "http://a/".into(),
            CliError::Unreachable("x".into()),
        )]);
        assert!(matches!(one, CliError::Unreachable(m) if m == "x"));
        let two = all_failed(vec![
            ("http://a/".into(), CliError::Unreachable("refused".into())),
            ("http://b/".into(), CliError::Unreachable("reset".into())),
        ]);
        let CliError::Unreachable(m) = two else {
            panic!("not unreachable")
        };
        assert!(
            m.contains("http://a/: refused") && m.contains("http://b/: reset"),
            "{m}"
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback(&url("http://127.0.0.1:7700")));
        assert!(is_loopback(&url("http://[::1]:7700")));
        assert!(is_loopback(&url("http://localhost:7700")));
        assert!(!is_loopback(&url("http://10.0.0.1:7700")));
    }
}
