//! systemd integration: `READY=1` once the agent runs, then `WATCHDOG=1` every half
//! `WatchdogSec` while the agent is healthy — its only runtime thread turns (the pings come from
//! a task on it) and no reconcile pass has been running for longer than `watchdog_max_pass`. A
//! hung main loop stops the pings, and systemd restarts the agent; workloads keep running.
//! Without systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`) this does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tracing::{debug, error, info};

/// What the reconcile loop tells the watchdog: when the pass in progress started, if any.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    /// Milliseconds after `origin` + 1 at which the running pass started; 0 when idle.
    pass_started: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            origin: Instant::now(),
            pass_started: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    pub fn pass_started(&self) {
        let ms = self.origin.elapsed().as_millis() as u64 + 1;
        self.pass_started.store(ms, Ordering::Release);
    }

    pub fn pass_finished(&self) {
        self.pass_started.store(0, Ordering::Release);
    }

    /// How long the running pass has been going on, if one is.
    fn running_for(&self, now: Instant) -> Option<Duration> {
        match self.pass_started.load(Ordering::Acquire) {
            0 => None,
            ms => {
                let started = self.origin + Duration::from_millis(ms - 1);
                Some(now.saturating_duration_since(started))
            }
        }
    }
}

/// Healthy unless a pass has been running for longer than `max_pass`.
fn healthy(running_for: Option<Duration>, max_pass: Duration) -> bool {
    running_for.is_none_or(|d| d <= max_pass)
}

/// Tells systemd the agent is ready and, when the unit has `WatchdogSec`, starts the pings.
pub fn start(live: Arc<Liveness>, max_pass: Duration) -> Option<JoinHandle<()>> {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        debug!(error = %e, "READY=1 not delivered");
    }
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let period = Duration::from_micros(usec) / 2;
    info!(timeout = ?Duration::from_micros(usec), ?max_pass, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        let mut stuck = false;
        loop {
            tick.tick().await;
            let running = live.running_for(Instant::now());
            if healthy(running, max_pass) {
                stuck = false;
                if let Err(e) = sd_notify::notify(false, &[NotifyState::Watchdog]) {
                    debug!(error = %e, "WATCHDOG=1 not delivered");
                }
            } else if !stuck {
                stuck = true;
                error!(
                    running_for = ?running.unwrap_or_default(),
                    ?max_pass,
                    "a reconcile pass is hung; no longer notifying the systemd watchdog, which will restart the agent"
                );
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_unless_a_pass_runs_too_long() {
        let max = Duration::from_secs(60);
        let cases = [
            (None, true),
            (Some(Duration::from_secs(1)), true),
            (Some(Duration::from_secs(60)), true),
            (Some(Duration::from_secs(61)), false),
        ];
        for (running, want) in cases {
            assert_eq!(healthy(running, max), want, "{running:?}");
        }
    }

    #[test]
    fn liveness_tracks_the_running_pass() {
        let l = Liveness::default();
        assert_eq!(l.running_for(Instant::now()), None);
        l.pass_started();
        let later = Instant::now() + Duration::from_secs(5);
        assert!(l.running_for(later).unwrap() >= Duration::from_secs(5));
        l.pass_finished();
        assert_eq!(l.running_for(later), None);
    }
}
