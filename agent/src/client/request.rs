//! How one request reaches the registry: [`Req`] (a request independent of the URL it goes
//! to), sending it to the URL in use or to each URL in turn ([`Attempt`]), and moving the
//! client to the next URL after a failure that [`ClientError::fails_over`] names.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::info;

use super::errors::{status_error, transport_error};
use super::{ClientError, Credentials, RegistryClient, DEFAULT_TIMEOUT};

/// Which URLs a request may go to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// The URL in use; a failure moves the client to the next URL for the following request.
    UrlInUse,
    /// Each URL in turn, from the one in use, until one answers (one-shot commands).
    EachUrl,
}

/// One request, whichever URL it goes to.
pub(super) struct Req<'a, B: ?Sized> {
    method: Method,
    segments: &'a [&'a str],
    pub(super) query: &'a [(&'a str, String)],
    body: Option<&'a B>,
    creds: Option<&'a Credentials>,
    pub(super) timeout: Duration,
    /// `Range: bytes=N-` when above 0; a `416` answer is then not an error.
    pub(super) range: Option<u64>,
}

impl<'a> Req<'a, ()> {
    pub(super) fn new(method: Method, segments: &'a [&'a str]) -> Self {
        Req {
            method,
            segments,
            query: &[],
            body: None,
            creds: None,
            timeout: DEFAULT_TIMEOUT,
            range: None,
        }
    }
}

impl<'a, B: ?Sized> Req<'a, B> {
    pub(super) fn body<C: Serialize + ?Sized>(self, body: &'a C) -> Req<'a, C> {
        Req {
            method: self.method,
            segments: self.segments,
            query: self.query,
            body: Some(body),
            creds: self.creds,
            timeout: self.timeout,
            range: self.range,
        }
    }

    pub(super) fn creds(mut self, creds: &'a Credentials) -> Self {
        self.creds = Some(creds);
        self
    }
}

impl RegistryClient {
    /// `base` with `segments` appended (each percent-encoded as needed).
    pub(super) fn endpoint(base: &Url, segments: &[&str]) -> Url {
        let mut url = base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends `req` to the URL in use (moving to the next URL when it fails over).
    pub(super) async fn send<B: Serialize + ?Sized>(
        &self,
        req: &Req<'_, B>,
    ) -> Result<(Url, reqwest::Response), ClientError> {
        let (i, base) = self.bases.pick();
        let res = self.send_at(base, req).await;
        if let Err(e) = &res {
            self.after_failure(i, e);
        }
        res
    }

    /// Sends `req` and decodes the JSON answer (`None` for `304`): to the URL in use, or to
    /// each URL in turn until one answers (the error then lists every URL's).
    pub(super) async fn json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        req: &Req<'_, B>,
        attempt: Attempt,
    ) -> Result<Option<T>, ClientError> {
        let order = match attempt {
            Attempt::UrlInUse => vec![self.bases.current()],
            Attempt::EachUrl => self.bases.order(),
        };
        let mut attempts = Vec::new();
        for i in order {
            let base = self.bases.get(i);
            let res = match self.send_at(base, req).await {
                Ok((_, resp)) if resp.status() == StatusCode::NOT_MODIFIED => Ok(None),
                Ok((url, resp)) => self.decode(&url, resp).await.map(Some),
                Err(e) => Err(e),
            };
            match res {
                Ok(v) => {
                    // Only a one-shot command picks the URL: a daemon request that answered
                    // late from a URL the others have left must not pull them back to it.
                    let moved = match attempt {
                        Attempt::EachUrl => self.bases.worked(i),
                        Attempt::UrlInUse => None,
                    };
                    if let Some(prev) = moved {
                        info!(
                            registry = %base,
                            did_not_answer = %self.bases.get(prev),
                            "switched registry URL"
                        );
                    }
                    return Ok(v);
                }
                Err(e) if e.fails_over() => {
                    if attempt == Attempt::UrlInUse {
                        self.after_failure(i, &e);
                    }
                    attempts.push((base.to_string(), e));
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::all_failed(attempts))
    }

    /// After `e` from the URL at `index`: moves to the next URL when `e` calls for it (and
    /// no other request has moved already), and says so.
    fn after_failure(&self, index: usize, e: &ClientError) {
        if !e.fails_over() {
            return;
        }
        if let Some((from, to)) = self.bases.failed(index) {
            info!(
                from = %self.bases.get(from),
                to = %self.bases.get(to),
                error = %e,
                "switching to the next registry URL"
            );
        }
    }

    /// Sends one request to `base`; `Ok` for 2xx and 304 (and 416 for a range request), the
    /// matching [`ClientError`] otherwise.
    async fn send_at<B: Serialize + ?Sized>(
        &self,
        base: &Url,
        req: &Req<'_, B>,
    ) -> Result<(Url, reqwest::Response), ClientError> {
        let mut url = Self::endpoint(base, req.segments);
        if !req.query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in req.query {
                q.append_pair(k, v);
            }
        }
        let mut rb = self
            .http
            .request(req.method.clone(), url.clone())
            .timeout(req.timeout);
        if let Some(c) = req.creds {
            rb = rb.bearer_auth(&c.secret.0);
        }
        if let Some(b) = req.body {
            rb = rb.json(b);
        }
        if let Some(offset) = req.range.filter(|o| *o > 0) {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transport_error(&url, &e, req.timeout, self.pin()))?;
        let status = resp.status();
        if status.is_success()
            || status == StatusCode::NOT_MODIFIED
            || (req.range.is_some() && status == StatusCode::RANGE_NOT_SATISFIABLE)
        {
            return Ok((url, resp));
        }
        Err(status_error(&url, resp).await)
    }
}
