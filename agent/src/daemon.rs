//! `steward-agent run`: the heartbeat ticker, the spec watcher, the Docker and netlink event
//! listeners and the reconciler, running concurrently. The agent keeps enforcing the last stored spec while the registry is
//! unreachable and never stops a workload because of that, with one exception: a session's
//! workloads and volumes go at its lease's deadline, by the agent's clock (`reconcile::leases`).

mod passes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use steward_proto::{Heartbeat, NodeStatus, WorkloadKind, WorkloadRef};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::client::RegistryClient;
use crate::config::AgentConfig;
use crate::docker::Docker;
use crate::facts::StatsSampler;
use crate::network::EventFeed;
use crate::reconciler::Reconciler;
use crate::store::{Identity, Paths, Store, StoredSpec};
use crate::watchdog::Liveness;
pub(crate) use passes::reconcile_loop;

/// Jittered exponential backoff with a cap.
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        Self {
            next: Duration::from_millis(500),
            cap,
        }
    }
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(500);
    }
    /// The delay to wait now (full jitter between 50 % and 100 %), doubling the next one.
    pub fn delay(&mut self) -> Duration {
        let base = self.next.min(self.cap);
        self.next = (self.next * 2).min(self.cap);
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// `d` ± 10 %.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(
    cfg: AgentConfig,
    identity: Identity,
    client: RegistryClient,
) -> anyhow::Result<()> {
    let paths = Paths::new(&cfg.data_dir);
    let store = Store::open(&paths)?;
    let stored = load_stored(&store)?;
    let (spec_tx, spec_rx) = watch::channel(stored);
    let (status_tx, status_rx) =
        watch::channel(paths.load_status().ok().flatten().unwrap_or_default());
    let wake = Arc::new(Notify::new());
    let client = Arc::new(client);
    let live = Arc::new(Liveness::default());
    let resets: Resets = Arc::default();
    let board = crate::pass::Board::default();
    let watchdog = crate::watchdog::start(live.clone(), cfg.watchdog_max_pass);
    let metrics = serve_metrics(&cfg).await;

    let watcher = tokio::spawn(watch_spec(
        client.clone(),
        store.clone(),
        spec_tx,
        cfg.clone(),
    ));
    let heart = tokio::spawn(heartbeat(
        client.clone(),
        identity.clone(),
        status_rx,
        spec_rx.clone(),
        cfg.clone(),
        LoopLink {
            resets: resets.clone(),
            wake: wake.clone(),
            progress: board.clone(),
        },
    ));
    let events = tokio::spawn(docker_events(cfg.clone(), wake.clone()));
    let feed = Arc::new(EventFeed::default());
    let link_events = tokio::spawn(netlink_events(cfg.clone(), wake.clone(), feed.clone()));
    let urgent = Arc::new(Notify::new());
    vm_exits(&cfg, urgent.clone());
    let rec = reconciler(&cfg, &identity, &store, &client, feed);
    let recon = tokio::spawn(reconcile_loop(
        cfg.clone(),
        rec,
        spec_rx,
        status_tx,
        wake,
        paths,
        Control {
            live,
            resets,
            urgent,
            progress: board,
        },
    ));

    shutdown_signal().await;
    info!("stopping (workloads keep running)");
    for t in [watcher, heart, events, link_events, recon]
        .into_iter()
        .chain(metrics)
        .chain(watchdog)
    {
        t.abort();
    }
    Ok(())
}

/// The spec stored by the last run, if any: enforced until the registry answers.
fn load_stored(store: &Store) -> anyhow::Result<Option<StoredSpec>> {
    let stored = store.load::<StoredSpec>()?;
    match &stored {
        Some(s) => info!(
            generation = s.generation,
            "enforcing the stored spec until the registry answers"
        ),
        None => info!("no spec stored yet; waiting for the registry"),
    }
    Ok(stored)
}

/// The metrics endpoint's task, when `metrics_listen` is set and it could listen.
async fn serve_metrics(cfg: &AgentConfig) -> Option<tokio::task::JoinHandle<()>> {
    match cfg.metrics_listen {
        Some(addr) => crate::metrics::serve(addr)
            .await
            .map_err(|e| warn!(error = %e, "metrics endpoint disabled"))
            .ok(),
        None => None,
    }
}

/// The daemon's reconciler: host networks (woken by `feed`), heal state and payload records in
/// `store`, payload blobs from the registry, VMs when configured.
fn reconciler(
    cfg: &AgentConfig,
    identity: &Identity,
    store: &Store,
    client: &Arc<RegistryClient>,
    feed: Arc<EventFeed>,
) -> Reconciler {
    Reconciler::new(
        cfg.docker_socket.clone(),
        cfg.policy.clone(),
        identity.node_id.clone(),
    )
    .with_networks(
        cfg.lab_cidr_template.clone(),
        Some(store.clone()),
        crate::config::first_registry_url(cfg.registry.as_ref().unwrap_or(&identity.registry)),
    )
    .with_link_events(feed)
    .with_activity(cfg.activity_interval)
    .with_heal(cfg.heal, Some(store.clone()))
    .with_payloads(crate::payload::Payloads::new(
        &cfg.data_dir,
        Some(store.clone()),
        Some(client.clone()),
    ))
    .with_vms(cfg.vms.clone())
}

async fn watch_spec(
    client: Arc<RegistryClient>,
    store: Store,
    tx: watch::Sender<Option<StoredSpec>>,
    cfg: AgentConfig,
) {
    let mut backoff = Backoff::new(cfg.backoff_max);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let after = tx.borrow().as_ref().map(|s| s.generation).unwrap_or(0);
        match client.wait_spec(after, cfg.long_poll_wait).await {
            Ok(Some(doc)) => {
                backoff.reset();
                if unreachable_since.take().is_some() {
                    info!("registry reachable again");
                }
                if doc.generation <= after && tx.borrow().is_some() {
                    continue;
                }
                let s = StoredSpec {
                    generation: doc.generation,
                    spec: doc.spec,
                };
                if let Err(e) = take_spec(&store, &tx, s).await {
                    // Not acted on: the same spec is asked for again after the backoff.
                    let d = backoff.delay();
                    error!(error = %format!("{e:#}"), retry_in = ?d, "storing the new spec failed; enforcing the stored one");
                    tokio::time::sleep(d).await;
                }
            }
            Ok(None) => {
                backoff.reset();
                if tx.borrow().is_none() {
                    // 304 for after=0 means the node has no spec yet: an empty one applies.
                    tx.send_replace(Some(StoredSpec::default()));
                }
            }
            Err(e) => {
                let d = backoff.delay();
                if unreachable_since.is_none() {
                    unreachable_since = Some(Instant::now());
                }
                warn!(error = %format!("{e:#}"), retry_in = ?d, "spec watch failed; enforcing the stored spec");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Hands a received spec to the reconcile loop only once it is stored durably, so a restart
/// keeps enforcing whatever the agent has acted on; a spec that could not be stored is not
/// acted on at all.
async fn take_spec(
    store: &Store,
    tx: &watch::Sender<Option<StoredSpec>>,
    s: StoredSpec,
) -> Result<(), crate::store::StoreError> {
    store.save(&s).await?;
    info!(generation = s.generation, "new spec received");
    tx.send_replace(Some(s));
    Ok(())
}

async fn heartbeat(
    client: Arc<RegistryClient>,
    identity: Identity,
    status: watch::Receiver<NodeStatus>,
    spec: watch::Receiver<Option<StoredSpec>>,
    cfg: AgentConfig,
    link: LoopLink,
) {
    let LoopLink {
        resets,
        wake,
        progress,
    } = link;
    let mut interval = Duration::from_secs(identity.heartbeat_interval_secs.max(1));
    let mut sampler = StatsSampler::new(&cfg.data_dir);
    let mut rtt_ms: Option<f64> = None;
    let mut sent_digest = String::new();
    let mut backoff = Backoff::new(cfg.backoff_max);
    loop {
        let st = status.borrow().clone();
        let hb = Heartbeat {
            observed_generation: st.observed_generation,
            status_digest: st.digest.clone(),
            stats: Some(sampler.sample()),
            rtt_ms,
            progress: progress.snapshot(),
        };
        let started = Instant::now();
        match client.heartbeat(&hb).await {
            Ok(resp) => {
                backoff.reset();
                rtt_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                crate::metrics::get().heartbeat(Some(started.elapsed()));
                interval = Duration::from_secs(resp.heartbeat_interval_secs.max(1));
                let asked = asked_resets(resp.reset, resp.reset_workloads);
                if !asked.is_empty() {
                    info!(workloads = ?asked, "the registry asks to reset these workloads");
                    resets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(asked);
                    wake.notify_one();
                }
                let known = spec.borrow().as_ref().map(|s| s.generation).unwrap_or(0);
                if resp.generation > known {
                    debug!(
                        generation = resp.generation,
                        "registry has a newer spec; the watcher will fetch it"
                    );
                }
                if (resp.status_wanted || st.digest != sent_digest) && !st.digest.is_empty() {
                    match client.put_status(&st).await {
                        Ok(()) => sent_digest = st.digest.clone(),
                        Err(e) => warn!(error = %format!("{e:#}"), "sending status failed"),
                    }
                }
                tokio::time::sleep(jitter(interval)).await;
            }
            Err(e) => {
                let d = backoff.delay().min(interval);
                crate::metrics::get().heartbeat(None);
                warn!(error = %format!("{e:#}"), retry_in = ?d, "heartbeat failed");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// What the heartbeat shares with the reconcile loop: the resets it hands over (and the wake-up
/// that makes the loop take them), and the progress of the loop's pass, which it reports.
struct LoopLink {
    resets: Resets,
    wake: Arc<Notify>,
    progress: crate::pass::Board,
}

/// Workload resets asked by the registry, waiting for the reconcile loop.
type Resets = Arc<std::sync::Mutex<Vec<WorkloadRef>>>;

/// The workloads a heartbeat's answer resets: a name alone (older registries, or a reset asked
/// without a kind) names every kind's workload of that name.
fn asked_resets(names: Vec<String>, refs: Vec<WorkloadRef>) -> Vec<WorkloadRef> {
    let every_kind = names.into_iter().flat_map(|n| {
        WorkloadKind::ALL
            .into_iter()
            .map(move |k| WorkloadRef::new(k, n.clone()))
    });
    every_kind.chain(refs).collect()
}

/// What the reconcile loop reports to (the watchdog's liveness, the progress of its pass) and
/// takes orders from (resets, and wake-ups that skip the event debounce: a VM's QEMU exited).
#[derive(Default)]
pub(crate) struct Control {
    pub live: Arc<Liveness>,
    pub resets: Resets,
    pub urgent: Arc<Notify>,
    pub progress: crate::pass::Board,
}

pub(crate) async fn docker_events(cfg: AgentConfig, wake: Arc<Notify>) {
    let mut backoff = Backoff::new(cfg.backoff_max);
    loop {
        match Docker::connect(cfg.docker_socket.as_deref()).await {
            Ok(d) => {
                let mut events = Box::pin(d.events());
                backoff.reset();
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(ev) => {
                            debug!(container = %ev.name, action = %ev.action, "docker event");
                            wake.notify_one();
                        }
                        Err(e) => {
                            warn!(error = %format!("{e:#}"), "docker event stream failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => debug!(error = %format!("{e:#}"), "docker not reachable for events"),
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

/// Wakes the reconciler when a VM's QEMU exits, so a crashed VM walks its ladder at once
/// rather than at the next resync. The watcher blocks in `poll`, so it gets a thread of its
/// own, which ends with the process.
pub(crate) fn vm_exits(cfg: &AgentConfig, wake: Arc<Notify>) {
    let dir = cfg.vms.dir.clone();
    let spawned = std::thread::Builder::new()
        .name("vm-exits".into())
        .spawn(move || {
            crate::vm::watch_exits(&dir, VM_EXIT_POLL, |name| {
                info!(vm = %name, "QEMU exited; reconciling now");
                wake.notify_one();
            })
        });
    if let Err(e) = spawned {
        warn!(error = %e, "no VM exit watcher (a crashed VM is found at the next resync)");
    }
}

/// How often the VM exit watcher looks at the QEMU processes.
const VM_EXIT_POLL: Duration = Duration::from_millis(500);

/// Wakes the reconciler on every link and address change of the host (netlink), so a managed
/// link deleted or changed by hand is restored at once.
pub(crate) async fn netlink_events(cfg: AgentConfig, wake: Arc<Notify>, feed: Arc<EventFeed>) {
    let mut backoff = Backoff::new(cfg.backoff_max);
    loop {
        let why = crate::network::events::follow(&feed, |ev| {
            debug!(what = ev.what, index = ev.index, link = ?ev.name, "netlink event");
            wake.notify_one();
        })
        .await;
        warn!(error = %why, "netlink event listener stopped; restarting");
        tokio::time::sleep(backoff.delay()).await;
    }
}

pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(4));
        let ds: Vec<Duration> = (0..8).map(|_| b.delay()).collect();
        assert!(ds[0] <= Duration::from_millis(500) && ds[0] >= Duration::from_millis(250));
        assert!(ds.iter().all(|d| *d <= Duration::from_secs(4)));
        assert!(ds[7] >= Duration::from_secs(2), "{ds:?}");
        b.reset();
        assert!(b.delay() <= Duration::from_millis(500));
    }

    #[test]
    fn a_reset_without_a_kind_names_every_kind_and_one_with_a_kind_only_that_one() {
        let vm_db = WorkloadRef::new(WorkloadKind::Vm, "db");
        assert_eq!(
            asked_resets(vec!["web".into()], vec![vm_db.clone()]),
            [
                WorkloadRef::new(WorkloadKind::Container, "web"),
                WorkloadRef::new(WorkloadKind::Vm, "web"),
                vm_db,
            ]
        );
    }

    /// The documented rule "stored durably first": a spec the store could not keep never
    /// reaches the reconcile loop; once storing works, it does, and a restart reads it back.
    #[tokio::test]
    async fn a_spec_is_acted_on_only_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let store = Store::open(&paths).unwrap();
        let (tx, rx) = watch::channel(None);
        let spec = StoredSpec {
            generation: 3,
            spec: serde_norway::from_str("containers: [{name: a, image: x}]").unwrap(),
        };
        // A directory where the temp file goes makes every write of the spec fail.
        let blocker = dir.path().join("state/spec.tmp");
        std::fs::create_dir(&blocker).unwrap();
        assert!(take_spec(&store, &tx, spec.clone()).await.is_err());
        assert_eq!(*rx.borrow(), None, "acted on a spec that was not stored");
        std::fs::remove_dir(&blocker).unwrap();
        take_spec(&store, &tx, spec.clone()).await.unwrap();
        assert_eq!(rx.borrow().as_ref(), Some(&spec));
        drop(store);
        let reopened = Store::open(&paths).unwrap();
        assert_eq!(reopened.load::<StoredSpec>().unwrap(), Some(spec));
    }
}
