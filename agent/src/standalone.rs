//! `apply --file F --watch`: the daemon's reconcile loop without a registry. The desired state
//! is a local spec file, re-applied when it changes (checked every second), on SIGHUP (even if
//! unchanged), on Docker, netlink and VM exit events and every `resync_interval` — for a node
//! that has no registry (bootstrap, air-gapped, a lab bench) and for measuring the agent alone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use steward_proto::validate::SpecLimits;
use steward_proto::NodeStatus;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::cli::{local_reconciler, read_spec};
use crate::config::AgentConfig;
use crate::daemon::{
    docker_events, netlink_events, reconcile_loop, shutdown_signal, vm_exits, Control,
};
use crate::network::EventFeed;
use crate::store::StoredSpec;
use crate::watchdog::Liveness;

/// How often the spec file's size and modification time are looked at.
const POLL: Duration = Duration::from_secs(1);

fn stamp(path: &str) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(Path::new(path)).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Runs until SIGTERM or Ctrl-C; workloads keep running after it stops. A spec file that is
/// missing or invalid at start is an error; later, an invalid edit is logged and the spec in
/// force stays enforced.
pub async fn apply_watch(cfg: AgentConfig, path: String) -> anyhow::Result<()> {
    if path == "-" {
        anyhow::bail!("--watch needs a spec file to watch, not stdin");
    }
    let spec = read_spec(&path, &cfg.limits)?;
    let (rec, paths) = local_reconciler(&cfg)?;
    info!(file = %path, config = ?cfg, "applying a local spec file, watching it for changes");

    let feed = Arc::new(EventFeed::default());
    let wake = Arc::new(Notify::new());
    let rec = rec.with_link_events(feed.clone());
    let (spec_tx, spec_rx) = watch::channel(Some(StoredSpec {
        generation: 1,
        spec,
    }));
    let (status_tx, _) = watch::channel(NodeStatus::default());
    let live = Arc::new(Liveness::default());
    let watchdog = crate::watchdog::start(live.clone(), cfg.watchdog_max_pass);
    let urgent = Arc::new(Notify::new());
    vm_exits(&cfg, urgent.clone());
    let tasks = [
        tokio::spawn(docker_events(cfg.clone(), wake.clone())),
        tokio::spawn(netlink_events(cfg.clone(), wake.clone(), feed)),
        tokio::spawn(watch_file(path, cfg.limits.clone(), spec_tx)),
        tokio::spawn(reconcile_loop(
            cfg,
            rec,
            spec_rx,
            status_tx,
            wake,
            paths,
            Control {
                live,
                resets: Default::default(),
                urgent,
                progress: Default::default(),
            },
        )),
    ];
    shutdown_signal().await;
    info!("stopping (workloads keep running)");
    for t in tasks.into_iter().chain(watchdog) {
        t.abort();
    }
    Ok(())
}

/// Sends the file's spec with a new generation when its content changes, or on SIGHUP.
async fn watch_file(path: String, limits: SpecLimits, tx: watch::Sender<Option<StoredSpec>>) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "SIGHUP cannot be caught; only file changes re-apply");
            None
        }
    };
    let mut last = stamp(&path);
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
        };
        let now = stamp(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        match read_spec(&path, &limits) {
            Ok(spec) => {
                let (generation, same) = match tx.borrow().as_ref() {
                    Some(s) => (s.generation + 1, s.spec == spec),
                    None => (1, false),
                };
                if same && !forced {
                    continue;
                }
                info!(file = %path, generation, forced, "spec file read; applying");
                tx.send_replace(Some(StoredSpec { generation, spec }));
            }
            Err(e) => {
                warn!(file = %path, error = %format!("{e:#}"), "spec file refused; the spec in force stays")
            }
        }
    }
}
