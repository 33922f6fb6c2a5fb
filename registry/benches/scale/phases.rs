//! The scenario: seed (cached), the bare comparison, then the registry on a copy of the seed
//! through phases (a)-(f) under one continuous heartbeat load, then the bare comparison again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bare::Bare;
use crate::interfere::{metric, timed_get, Api};
use crate::load::{silenced, Load, ALL_BUT_1PC, BETWEEN, LOUD, TENTH};
use crate::procfs::{dir_bytes, Snap};
use crate::seed::{self, Seed, DIGEST};
use crate::stats::r3;
use crate::util::{free_port, Registry};
use crate::Config;

/// Phase indexes of the heartbeat records (0 is between phases).
pub const PHASES: [&str; 9] = [
    "between",
    "a: heartbeats alone",
    "b: pages, scrapes, reads",
    "c: 10% go stale, down",
    "d: fragment to all",
    "m: 99% go stale, down",
    "m: 89% come back",
    "e: registry killed",
    "e: after restart",
];
const A: usize = 1;
const B: usize = 2;
const C: usize = 3;
const D: usize = 4;
const M_DOWN: usize = 5;
const M_BACK: usize = 6;
const E_DOWN: usize = 7;
const E: usize = 8;

/// Heartbeats every 10 s; stale after 2 missed intervals (20 s), down after 5 (50 s).
const FLAGS: [&str; 10] = [
    "--heartbeat-interval",
    "10s",
    "--stale-after",
    "2",
    "--down-after",
    "5",
    "--max-connections-per-address",
    "1000000",
    "--max-connections",
    "19000",
];
/// After the restart: health thresholds far away, so that the idle phase is idle.
const FAR_FLAGS: [&str; 10] = [
    "--heartbeat-interval",
    "10s",
    "--stale-after",
    "360",
    "--down-after",
    "720",
    "--max-connections-per-address",
    "1000000",
    "--max-connections",
    "19000",
];
/// The silent nodes go down after 50 s; the monitor looks every 2.5 s.
pub const C_SECS: u64 = 65;

/// With `--store etcd`: the etcd member's store URL, process and data dir.
struct EtcdSide {
    url: String,
    /// The admin token file every replica on etcd is given.
    admin_token: PathBuf,
    pid: u32,
    dir: PathBuf,
}

/// Where the registry's store lives: its own data dir (sled), or an etcd member of this run.
struct StoreSide(Option<EtcdSide>);

impl StoreSide {
    /// The registry's `serve` flags: `base`, and the etcd store when there is one.
    fn flags(&self, base: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        if let Some(e) = &self.0 {
            v.extend(["--store".to_string(), e.url.clone()]);
            v.extend([
                "--admin-token-file".to_string(),
                e.admin_token.display().to_string(),
            ]);
        }
        v
    }

    /// Where the store's data lives: the etcd member's data dir, else the registry's.
    fn dir(&self, reg: &Registry) -> PathBuf {
        self.0
            .as_ref()
            .map_or_else(|| reg.data.clone(), |e| e.dir.clone())
    }
}

/// The registry's counters over one phase (and etcd's, when it is the store).
struct Window<'a> {
    store: &'a StoreSide,
    s0: Snap,
    dir0: u64,
    etcd0: Option<Snap>,
}

impl<'a> Window<'a> {
    fn open(reg: &Registry, store: &'a StoreSide) -> Window<'a> {
        Window {
            store,
            s0: Snap::take(reg.pid()),
            dir0: dir_bytes(&store.dir(reg)),
            etcd0: store.0.as_ref().map(|e| Snap::take(e.pid)),
        }
    }

    fn close(&self, reg: &Registry) -> Value {
        let s1 = Snap::take(reg.pid());
        let (cpu, _, secs) = s1.cpu_since(&self.s0);
        let mut v = json!({
            "seconds": r3(secs), "registry_cores": r3(cpu / secs.max(1e-9)),
            "other_processes_cores": r3(s1.others_since(&self.s0) / secs.max(1e-9)),
            "write_bytes": s1.write_bytes.saturating_sub(self.s0.write_bytes),
            "data_dir_growth_bytes": dir_bytes(&self.store.dir(reg)) as i64 - self.dir0 as i64,
            "rss_kib": s1.rss_kib,
        });
        if let (Some(e), Some(e0)) = (&self.store.0, &self.etcd0) {
            let e1 = Snap::take(e.pid);
            let (ecpu, _, esecs) = e1.cpu_since(e0);
            v["etcd"] = json!({"cores": r3(ecpu / esecs.max(1e-9)),
                "write_bytes": e1.write_bytes.saturating_sub(e0.write_bytes),
                "rss_kib": e1.rss_kib});
        }
        v
    }
}

/// Removes the run's copy of the seed when dropped.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `GET /readyz` until it answers 200.
async fn wait_ready(api: &Api, max: Duration) -> Result<()> {
    let deadline = Instant::now() + max;
    loop {
        if let Ok((t, _)) = timed_get(api, "/readyz").await {
            if t.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("/readyz not 200 within {max:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Health gauges and the health-changed counter, from one scrape (between phases).
async fn health_counts(api: &Api) -> Value {
    let Ok((t, body)) = timed_get(api, "/metrics").await else {
        return Value::Null;
    };
    let g = |s: &str| metric(&body, s);
    // A counter appears with its first event.
    let changed = g("steward_registry_events_total{kind=\"health-changed\"}").unwrap_or(0.0);
    json!({
        "scrape_ms": r3(t.ms),
        "ready": g("steward_registry_nodes{health=\"ready\"}"),
        "stale": g("steward_registry_nodes{health=\"stale\"}"),
        "down": g("steward_registry_nodes{health=\"down\"}"),
        "health_changed_events": changed,
    })
}

/// The pool of heartbeat connections for `rate` per second.
fn pool(rate: f64) -> usize {
    ((rate / 40.0) as usize).clamp(16, 256)
}

/// The same paced load against the bare axum handler, for as long as phase (a).
async fn bare_run(cfg: &Config, seed: &Seed) -> Result<Value> {
    let bare = Bare::start().await?;
    let rate = cfg.nodes as f64 / 10.0;
    let load = Load::start(bare.addr, &seed.nodes, DIGEST, rate, pool(rate))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s0 = Snap::take(bare.guard.pid());
    load.set_phase(A);
    tokio::time::sleep(cfg.a).await;
    load.set_phase(BETWEEN);
    let s1 = Snap::take(bare.guard.pid());
    let (cpu, _, secs) = s1.cpu_since(&s0);
    let others = s1.others_since(&s0) / secs;
    let hb = load.finish(PHASES.len()).await.swap_remove(A);
    Ok(
        json!({"heartbeats": hb.json(), "server_cores": r3(cpu / secs),
        "other_processes_cores": r3(others)}),
    )
}

/// Runs the whole scenario, filling `out`.
pub async fn run(cfg: &Config, out: &mut Value, failures: &mut Vec<String>) -> Result<()> {
    let seed = seed::ensure(cfg.nodes, cfg.reseed).await?;
    out["seed"] = seed.stats.clone();
    out["seed_cache"] = json!(seed.root.display().to_string());
    if cfg.phases.is_none() {
        eprintln!("bare axum handler: paced load for {:?} ...", cfg.a);
        out["bare"] = bare_run(cfg, &seed).await?;
    }
    let dir = RunDir(PathBuf::from(format!(
        "/tmp/steward-scale-run-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0)?;
    // Kept until the end of the run (dropping it kills etcd).
    let mut _etcd = None;
    let mut store = StoreSide(None);
    let copy = if cfg.etcd {
        let (cached, stats) = crate::etcd::ensure(&seed, cfg.nodes).await?;
        out["etcd_seed"] = stats;
        let (etcd, copied) = crate::etcd::start_copy(&cached, &dir.0).await?;
        store.0 = Some(EtcdSide {
            url: etcd.url.clone(),
            admin_token: dir.0.join("data/admin.token"),
            pid: etcd.guard.pid(),
            dir: etcd.dir.clone(),
        });
        _etcd = Some(etcd);
        // The registry's own data dir: its admin token (the seed's) only.
        std::fs::create_dir_all(dir.0.join("data"))?;
        std::fs::copy(
            seed.data().join("admin.token"),
            dir.0.join("data/admin.token"),
        )?;
        copied
    } else {
        seed::copy_data(&seed, &dir.0)?
    };
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let t0 = Instant::now();
    let start_flags = store.flags(&FLAGS);
    let start_flags: Vec<&str> = start_flags.iter().map(String::as_str).collect();
    let reg = Registry::start_on(
        &dir.0.join("data"),
        &dir.0.join("registry.log"),
        addr,
        &start_flags,
        Duration::from_secs(600),
    )
    .await
    .context("starting the registry on the copied seed")?;
    wait_ready(&Api::of(&reg), Duration::from_secs(600)).await?;
    out["start"] = json!({"copy_seconds": r3(copy.as_secs_f64()),
        "ready_seconds": r3(t0.elapsed().as_secs_f64()), "flags": start_flags});
    let mut res = scenario(cfg, &seed, (reg, &store), &dir.0, out).await;
    if res.is_ok() && cfg.phases.is_none() {
        // Once more at the end: the machine is shared, a second run shows how steady it was.
        eprintln!("bare axum handler again: paced load for {:?} ...", cfg.a);
        match bare_run(cfg, &seed).await {
            Ok(v) => out["bare_end"] = v,
            Err(e) => res = Err(e),
        }
    }
    if let Ok(hb) = &res {
        for (name, h) in PHASES.iter().zip(hb).skip(1) {
            if h.non2xx > 0 || (h.errors > 0 && *name != PHASES[E_DOWN]) {
                failures.push(format!(
                    "heartbeats due in {name}: {} non-2xx (first: {}), {} transport errors (first: {})",
                    h.non2xx,
                    h.first_non2xx.as_deref().unwrap_or("-"),
                    h.errors,
                    h.first_error.as_deref().unwrap_or("-")
                ));
            }
        }
    }
    // The registry's log outlives the run's copy of the seed.
    let kept = crate::util::results_path("scale-registry.log");
    let _ = std::fs::copy(dir.0.join("registry.log"), &kept);
    out["registry_log"] = json!(kept.display().to_string());
    let wrong = out["d"]["fanout"]["wrong_answers"].as_u64().unwrap_or(0);
    if wrong > 0 {
        failures.push(format!("d: {wrong} wrong long-poll answers"));
    }
    if !failures.is_empty() {
        let log = std::fs::read_to_string(dir.0.join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        out["registry_log_tail"] = json!(lines[lines.len().saturating_sub(40)..]);
    }
    res.map(|_| ())
}

/// Phases (a)-(f) on the running registry; returns the heartbeat figures per phase.
async fn scenario(
    cfg: &Config,
    seed: &Seed,
    (reg, store): (Registry, &StoreSide),
    run_dir: &Path,
    out: &mut Value,
) -> Result<Vec<crate::load::PhaseHb>> {
    let n = seed.nodes.len();
    let rate = n as f64 / 10.0;
    let load = Load::start(reg.addr, &seed.nodes, DIGEST, rate, pool(rate))?;
    out["load"] = json!({"rate_per_sec": rate, "connections": load.conns});
    eprintln!("registry: one heartbeat round (10 s) before phase a ...");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let api = Api::of(&reg);

    if cfg.runs('a') {
        eprintln!("a: heartbeats alone, {:?} ...", cfg.a);
        let w = Window::open(&reg, store);
        load.set_phase(A);
        tokio::time::sleep(cfg.a).await;
        load.set_phase(BETWEEN);
        out["a"] = json!({"registry": w.close(&reg)});
    }
    if cfg.runs('b') {
        eprintln!("b: status pages, scrapes, node reads, {:?} ...", cfg.b);
        let w = Window::open(&reg, store);
        load.set_phase(B);
        let b = crate::interfere::run(&reg, &seed.nodes, cfg.b).await;
        load.set_phase(BETWEEN);
        out["b"] = json!({"registry": w.close(&reg)});
        out["b"]["interference"] = b?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if cfg.runs('c') {
        phase_c((&reg, store), &api, &load, out).await;
    }
    if cfg.runs('d') {
        phase_d((&reg, store), &api, &load, &seed.nodes, out).await?;
    }
    if cfg.runs('m') {
        mass(cfg, (&reg, store), &api, &load, out).await;
    }
    let reg = if cfg.runs('e') {
        restart(cfg, (reg, store), run_dir, &load, out).await?
    } else {
        reg
    };
    let hb = load.finish(PHASES.len()).await;
    if cfg.runs('f') {
        eprintln!("f: idle, {:?} ...", cfg.idle);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let w = Window::open(&reg, store);
        tokio::time::sleep(cfg.idle).await;
        out["f"] = json!({"registry": w.close(&reg)});
    }
    out["heartbeats"] = PHASES
        .iter()
        .zip(&hb)
        .skip(1)
        .map(|(p, h)| json!({"phase": p, "figures": h.json()}))
        .collect();
    Ok(hb)
}

/// Phase (c): every tenth node stops heartbeating until it is down.
async fn phase_c((reg, store): (&Registry, &StoreSide), api: &Api, load: &Load, out: &mut Value) {
    let n = load.targets();
    let silent = (0..n).filter(|i| silenced(*i)).count();
    out["c"] = json!({"silent_nodes": silent, "before": health_counts(api).await});
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("c: {silent} nodes (every tenth) stop heartbeating, {C_SECS} s ...");
    let w = Window::open(reg, store);
    load.set_phase(C);
    load.silence.store(TENTH, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(C_SECS)).await;
    load.set_phase(BETWEEN);
    out["c"]["registry"] = w.close(reg);
    out["c"]["after"] = health_counts(api).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Phase (d): 10k long-polls of heartbeating nodes, then a fragment to all.
async fn phase_d(
    (reg, store): (&Registry, &StoreSide),
    api: &Api,
    load: &Load,
    nodes: &[crate::util::NodeCred],
    out: &mut Value,
) -> Result<()> {
    let watchers: Vec<_> = (nodes.iter().enumerate())
        .filter(|(i, _)| !silenced(*i))
        .map(|(_, c)| c.clone())
        .take(10_000)
        .collect();
    eprintln!(
        "d: {} long-polls, then a fragment to all ...",
        watchers.len()
    );
    let w = Window::open(reg, store);
    load.set_phase(D);
    let d = crate::fanout::run(api, &watchers).await;
    load.set_phase(BETWEEN);
    out["d"] = json!({"registry": w.close(reg)});
    out["d"]["fanout"] = d?.0;
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

/// Phase (m): a mass transition. Every node but every hundredth stops heartbeating until all of
/// them are down, then all but the tenth silent since phase c heartbeat again (89% come back;
/// the tenth stays down for phase e). The hundredth that kept heartbeating shows the stalls while
/// 99% go down, and every heartbeating node while 89% come back.
async fn mass(
    cfg: &Config,
    (reg, store): (&Registry, &StoreSide),
    api: &Api,
    load: &Load,
    out: &mut Value,
) {
    let n = load.targets();
    let silent = (0..n)
        .filter(|i| crate::load::silent_in(ALL_BUT_1PC, *i))
        .count();
    out["m"] = json!({"silent_nodes": silent, "before": health_counts(api).await});
    eprintln!(
        "m: {silent} nodes stop heartbeating, {C_SECS} s, then all come back, {:?} ...",
        cfg.e
    );
    let w = Window::open(reg, store);
    load.set_phase(M_DOWN);
    load.silence.store(ALL_BUT_1PC, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(C_SECS)).await;
    load.set_phase(BETWEEN);
    out["m"]["down"] = w.close(reg);
    out["m"]["after_down"] = health_counts(api).await;
    let w = Window::open(reg, store);
    // The tenth silent since phase c stays silent: phase e restarts with it stored down.
    load.silence.store(TENTH, Ordering::SeqCst);
    load.set_phase(M_BACK);
    tokio::time::sleep(cfg.e).await;
    load.set_phase(BETWEEN);
    out["m"]["back"] = w.close(reg);
    out["m"]["after_back"] = health_counts(api).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Phase (e): kill -9, restart on the same data dir (far thresholds), every node heartbeats.
async fn restart(
    cfg: &Config,
    (reg, store): (Registry, &StoreSide),
    run_dir: &Path,
    load: &Load,
    out: &mut Value,
) -> Result<Registry> {
    let (data, addr) = (reg.data.clone(), reg.addr);
    let (dir0, rss_before) = (dir_bytes(&store.dir(&reg)), Snap::take(reg.pid()).rss_kib);
    eprintln!(
        "e: kill -9, restart, every node heartbeats, {:?} ...",
        cfg.e
    );
    load.set_phase(E_DOWN);
    let t0 = Instant::now();
    drop(reg);
    let log = run_dir.join("registry.log");
    let far = store.flags(&FAR_FLAGS);
    let far: Vec<&str> = far.iter().map(String::as_str).collect();
    let reg = Registry::start_on(&data, &log, addr, &far, Duration::from_secs(600))
        .await
        .context("restarting the registry")?;
    let listening = t0.elapsed();
    let api = Api::of(&reg);
    wait_ready(&api, Duration::from_secs(600)).await?;
    let ready = t0.elapsed();
    let w = Window::open(&reg, store);
    load.silence.store(LOUD, Ordering::SeqCst);
    load.set_phase(E);
    tokio::time::sleep(cfg.e).await;
    load.set_phase(BETWEEN);
    let s1 = Snap::take(reg.pid());
    out["e"] = json!({
        "registry": w.close(&reg),
        "listening_seconds": r3(listening.as_secs_f64()),
        "ready_seconds": r3(ready.as_secs_f64()),
        "write_bytes_since_start": s1.write_bytes,
        "data_dir_growth_bytes_since_kill": dir_bytes(&store.dir(&reg)) as i64 - dir0 as i64,
        "rss_kib_before_kill": rss_before,
        "after": health_counts(&api).await,
        "flags": far,
    });
    Ok(reg)
}
