//! HTTP client for the registry API: URLs, the bearer token, TLS roots, time-outs, and turning
//! error answers into `CliError`.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_proto::ApiError;

use crate::config::Settings;
use crate::error::{chain, CliError};
use crate::output;

/// Overall time-out of an ordinary request.
pub const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A configured connection to one registry. Deliberately no `Debug`: it holds the token.
pub struct Client {
    http: reqwest::Client,
    base: Url,
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
        if s.token.is_some() && s.registry.scheme() == "http" && !is_loopback(&s.registry) {
            output::note(
                quiet,
                format_args!(
                    "warning: sending the token over plain HTTP to {}; use https",
                    s.registry.host_str().unwrap_or("?")
                ),
            );
        }
        Ok(Client {
            http,
            base: s.registry.clone(),
            token: s.token.clone(),
        })
    }

    /// The URL of `path` (segments, each percent-encoded) under the registry's base URL.
    pub fn url(&self, path: &[&str]) -> Url {
        join(&self.base, path)
    }

    /// A request with the bearer token attached.
    pub fn request(&self, method: Method, path: &[&str]) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request; non-2xx answers become `CliError::Api`.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response, CliError> {
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
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
        let what = if e.is_timeout() {
            format!(" (no answer within {}s)", TIMEOUT.as_secs())
        } else {
            String::new()
        };
        CliError::Unreachable(format!(
            "could not reach the registry at {}{what}: {}",
            self.base,
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
    fn loopback_detection() {
        assert!(is_loopback(&url("http://127.0.0.1:7700")));
        assert!(is_loopback(&url("http://[::1]:7700")));
        assert!(is_loopback(&url("http://localhost:7700")));
        assert!(!is_loopback(&url("http://10.0.0.1:7700")));
    }
}
