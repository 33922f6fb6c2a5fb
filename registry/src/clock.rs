//! Time for the things that expire (named credentials, ...): the [`Clock`] they read, injected
//! so expiry is tested without sleeping, the [`Lifetime`] they share, and the parsing of an
//! operator's `expires_in` (`90d`) with the bounds that name the field.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use steward_proto::Problem;

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Arc<Self> {
        Arc::new(ManualClock(Mutex::new(at)))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += chrono::Duration::from_std(by).unwrap_or_default();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Until when something is valid; `None`: for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime(pub Option<DateTime<Utc>>);

impl Lifetime {
    /// Valid from `now` for `ttl` (`None`: for ever).
    pub fn starting(now: DateTime<Utc>, ttl: Option<Duration>) -> Self {
        Lifetime(ttl.map(|d| now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)))
    }

    /// Whether it is still valid at `now` (the end itself is already expired).
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        self.0.is_none_or(|end| now < end)
    }
}

/// Parses an operator's lifetime (`90d`, `1h30m`) for `field`, between `min` and `max`.
pub fn parse_ttl(
    field: &str,
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, Problem> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| Problem::new(field, format!("not a duration like 90d: {e}")))?;
    if d < min || d > max {
        return Err(Problem::new(
            field,
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_end_at_their_end() {
        let clock = ManualClock::new(Utc::now());
        let l = Lifetime::starting(clock.now(), Some(Duration::from_secs(60)));
        assert!(l.live_at(clock.now()));
        clock.advance(Duration::from_secs(59));
        assert!(l.live_at(clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(!l.live_at(clock.now()));
        assert!(Lifetime::starting(clock.now(), None).live_at(clock.now()));
    }

    #[test]
    fn ttl_parsing_names_the_field() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(86400));
        assert_eq!(
            parse_ttl("expires_in", "1h", min, max).unwrap().as_secs(),
            3600
        );
        let e = parse_ttl("expires_in", "2d", min, max).unwrap_err();
        assert_eq!(e.field, "expires_in");
        assert!(e.to_string().contains("between 1s and 1day"), "{e}");
        assert!(parse_ttl("expires_in", "soon", min, max).is_err());
    }
}
