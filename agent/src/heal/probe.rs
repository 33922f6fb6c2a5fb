//! Agent-side health probes (TCP connect, HTTP GET) and the pure tracker that turns probe
//! results into a health state the way Docker does: `starting` during the start period (failures
//! there do not count), `healthy` after a success, `unhealthy` after `retries` failures in a row.

use std::time::Duration;

use steward_proto::HealthCheck;
use tokio::net::TcpStream;

/// Probe settings resolved from a spec's `healthcheck` (Docker's defaults where absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

fn dur(v: &Option<String>, default: Duration) -> Duration {
    v.as_deref()
        .and_then(|s| humantime::parse_duration(s).ok())
        .unwrap_or(default)
}

impl ProbeSettings {
    pub fn from_spec(hc: &HealthCheck) -> Self {
        ProbeSettings {
            // Never below a second: a probe loop must not spin.
            interval: dur(&hc.interval, Duration::from_secs(30)).max(Duration::from_secs(1)),
            timeout: dur(&hc.timeout, Duration::from_secs(30)),
            retries: hc.retries.unwrap_or(3).max(1),
            start_period: dur(&hc.start_period, Duration::ZERO),
        }
    }
}

/// What a probe concluded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeHealth {
    Starting,
    Healthy,
    Unhealthy,
}

impl ProbeHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeHealth::Starting => "starting",
            ProbeHealth::Healthy => "healthy",
            ProbeHealth::Unhealthy => "unhealthy",
        }
    }
}

/// Consecutive results of one workload's probe (times in seconds since the workload started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    failures: u32,
    health: ProbeHealth,
    pub last_error: Option<String>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            failures: 0,
            health: ProbeHealth::Starting,
            last_error: None,
        }
    }
}

impl Tracker {
    pub fn health(&self) -> ProbeHealth {
        self.health
    }

    /// Records one result, `since_start` after the workload (re)started.
    pub fn record(
        &mut self,
        result: Result<(), String>,
        since_start: Duration,
        s: &ProbeSettings,
    ) -> ProbeHealth {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.last_error = None;
                self.health = ProbeHealth::Healthy;
            }
            Err(e) => {
                self.last_error = Some(e);
                // During the start period a failure does not count (Docker's rule), unless the
                // workload had already been seen healthy.
                if since_start < s.start_period && self.health == ProbeHealth::Starting {
                    return self.health;
                }
                self.failures += 1;
                if self.failures >= s.retries {
                    self.health = ProbeHealth::Unhealthy;
                }
            }
        }
        self.health
    }
}

/// Connects to `target` (`host:port`) within `timeout`.
pub async fn tcp(target: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("tcp {target}: {e}")),
        Err(_) => Err(format!("tcp {target}: no connection within {timeout:?}")),
    }
}

/// GETs `url` within `timeout`; any 2xx or 3xx answer is healthy.
pub async fn http(client: &reqwest::Client, url: &str, timeout: Duration) -> Result<(), String> {
    match client.get(url).timeout(timeout).send().await {
        Ok(r) if r.status().is_success() || r.status().is_redirection() => Ok(()),
        Ok(r) => Err(format!("http {url}: answered {}", r.status())),
        Err(e) => Err(format!("http {url}: {}", e.without_url())),
    }
}

/// An HTTP client for probes: no redirects followed, no proxy from the environment.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProbeSettings {
        ProbeSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 2,
            start_period: Duration::from_secs(10),
        }
    }

    #[test]
    fn results_become_health_like_docker() {
        let s = settings();
        let err = || Err("refused".to_string());
        // (seconds since start, result, health after it)
        type Steps = &'static [(u64, bool, ProbeHealth)];
        let cases: &[(&str, Steps)] = &[
            (
                "failures in the start period do not count",
                &[
                    (1, false, ProbeHealth::Starting),
                    (5, false, ProbeHealth::Starting),
                    (11, false, ProbeHealth::Starting),
                    (12, false, ProbeHealth::Unhealthy),
                ],
            ),
            (
                "a success makes it healthy, retries failures in a row unhealthy",
                &[
                    (1, true, ProbeHealth::Healthy),
                    (2, false, ProbeHealth::Healthy),
                    (3, true, ProbeHealth::Healthy),
                    (4, false, ProbeHealth::Healthy),
                    (5, false, ProbeHealth::Unhealthy),
                    (6, true, ProbeHealth::Healthy),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut t = Tracker::default();
            for (at, ok, want) in *steps {
                let r = if *ok { Ok(()) } else { err() };
                assert_eq!(
                    t.record(r, Duration::from_secs(*at), &s),
                    *want,
                    "{name}: at {at}s"
                );
            }
        }
    }

    #[test]
    fn settings_take_dockers_defaults() {
        let hc = HealthCheck {
            tcp: Some("127.0.0.1:1".into()),
            interval: Some("2s".into()),
            ..Default::default()
        };
        let s = ProbeSettings::from_spec(&hc);
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.retries, 3);
        assert_eq!(s.start_period, Duration::ZERO);
    }

    /// Against real sockets on loopback: a listener answers, a closed port does not.
    #[tokio::test]
    async fn tcp_and_http_probes_against_real_sockets() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let t = Duration::from_secs(5);
        assert_eq!(tcp(&addr.to_string(), t).await, Ok(()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(tcp(&closed.to_string(), t)
            .await
            .unwrap_err()
            .contains("tcp"));
        let c = http_client();
        let e = http(&c, &format!("http://{addr}/health"), t)
            .await
            .unwrap_err();
        assert!(e.contains("503"), "{e}");
    }
}
