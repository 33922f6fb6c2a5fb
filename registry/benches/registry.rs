//! Registry benchmarks against the real `steward-registry` binary (a separate process).
//!
//! `cargo bench -p steward-registry --bench registry [-- [heartbeat|longpoll] [--quick]]`
//! (`STEWARD_BENCH_QUICK=1` is the same as `--quick`). Results: a table on stdout and JSON in
//! `target/bench-results/registry.json`. Timings are only reported; wrong answers (non-200,
//! wrong generation) fail the run.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "registry/bare.rs"]
mod bare;
#[path = "registry/heartbeat.rs"]
mod heartbeat;
#[path = "registry/longpoll.rs"]
mod longpoll;
#[path = "registry/procfs.rs"]
mod procfs;
#[path = "registry/stats.rs"]
mod stats;
#[path = "registry/util.rs"]
mod util;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use procfs::Snap;
use stats::mib;
use util::{enroll_many, Registry};

struct Config {
    quick: bool,
    heartbeat: bool,
    longpoll: bool,
    fleet: usize,
    fanout: usize,
    hb: heartbeat::Config,
    lp: longpoll::Config,
}

impl Config {
    fn from_args() -> Option<Config> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        // Cargo passes `--bench`; other flags are ignored too. Bare words filter by name.
        let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        let wants =
            |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
        let (heartbeat, longpoll) = (wants("heartbeat"), wants("longpoll"));
        if !heartbeat && !longpoll {
            return None;
        }
        let fleet = if quick { 1_000 } else { 10_000 };
        Some(Config {
            quick,
            heartbeat,
            longpoll,
            fleet,
            fanout: if quick { 200 } else { 1_000 },
            hb: heartbeat::Config {
                conns: vec![32, 128],
                warmup: Duration::from_millis(if quick { 500 } else { 1_000 }),
                measure: Duration::from_secs(if quick { 2 } else { 5 }),
                // Every node once per 10 s heartbeat interval.
                paced_rate: fleet as f64 / 10.0,
                paced_for: Duration::from_secs(if quick { 3 } else { 10 }),
                paced_pool: if quick { 16 } else { 64 },
            },
            lp: longpoll::Config {
                rounds: if quick { 3 } else { 5 },
                idle_hold: Duration::from_secs(if quick { 2 } else { 5 }),
            },
        })
    }
}

/// Simulated nodes only heartbeat during the heartbeat runs; with the default thresholds (stale
/// after 3 x 10 s) the health monitor would mark them stale in between, and every such change
/// (and the recovery on the next heartbeat) is a store write plus an event, which is not the
/// steady state being measured.
/// The whole simulated fleet connects from 127.0.0.1: no per-address connection cap.
const REGISTRY_FLAGS: [&str; 6] = [
    "--stale-after",
    "360",
    "--down-after",
    "720",
    "--max-connections-per-address",
    "1000000",
];

async fn run(cfg: &Config, results: &mut Value, failures: &mut Vec<String>) -> Result<()> {
    let reg = Registry::start(&REGISTRY_FLAGS).await?;
    let res = run_on(cfg, &reg, results, failures).await;
    if res.is_err() || !failures.is_empty() {
        eprintln!(
            "--- last lines of the registry's log ---\n{}",
            reg.log_tail(30)
        );
    }
    res
}

async fn run_on(
    cfg: &Config,
    reg: &Registry,
    results: &mut Value,
    failures: &mut Vec<String>,
) -> Result<()> {
    println!(
        "registry pid {} on {}, rss at start {}; flags {} (nodes idle between phases stay ready)",
        reg.pid(),
        reg.addr,
        mib(Snap::take(reg.pid()).rss_kib),
        REGISTRY_FLAGS.join(" ")
    );
    results["registry_flags"] = json!(REGISTRY_FLAGS);
    eprintln!("enrolling {} nodes ...", cfg.fleet);
    let (fleet, enrol_time) = enroll_many(reg, cfg.fleet, "fleet", json!({}), 16).await?;
    eprintln!(
        "enrolled {} nodes in {:.2} s",
        fleet.len(),
        enrol_time.as_secs_f64()
    );
    results["enrolment"] = json!({"nodes": fleet.len(), "seconds": stats::r3(enrol_time.as_secs_f64()), "parallel": 16});
    if cfg.heartbeat {
        results["heartbeat"] = heartbeat::run(&cfg.hb, reg, &fleet, enrol_time, failures).await?;
    }
    if cfg.longpoll {
        eprintln!("enrolling {} nodes with bench=fanout ...", cfg.fanout);
        let (fan, t) =
            enroll_many(reg, cfg.fanout, "fanout", json!({"bench": "fanout"}), 16).await?;
        eprintln!("enrolled {} nodes in {:.2} s", fan.len(), t.as_secs_f64());
        let total = fleet.len() + fan.len();
        results["longpoll"] = longpoll::run(&cfg.lp, reg, &fan, &fleet, total, failures).await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Ok(port) = std::env::var("STEWARD_BENCH_BARE_PORT") {
        bare::serve(&port);
    }
    let Some(cfg) = Config::from_args() else {
        println!("registry bench: no benchmark matches the filter (known: heartbeat, longpoll)");
        return ExitCode::SUCCESS;
    };
    let nofile = util::raise_nofile();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "steward-registry benchmarks{}",
        if cfg.quick {
            " (--quick: reduced sizes)"
        } else {
            ""
        }
    );
    println!(
        "machine: {cpus} CPU(s), shared by the registry, the load generator (this process) and the bare server; \
         all traffic over loopback; RLIMIT_NOFILE {nofile}"
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut results = json!({
        "quick": cfg.quick,
        "cpus": cpus,
        "note": "load generator, registry and bare server share these CPUs over loopback",
        "rlimit_nofile": nofile,
    });
    let mut failures = Vec::new();
    let res = rt.block_on(run(&cfg, &mut results, &mut failures));
    rt.shutdown_timeout(Duration::from_secs(2));
    results["failures"] = json!(failures);
    results["error"] = json!(res.as_ref().err().map(|e| format!("{e:#}")));
    results["wall_seconds"] = json!(stats::r3(started.elapsed().as_secs_f64()));
    let path = util::results_path("registry.json");
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| {
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&results).unwrap_or_default(),
            )
        });
    match written {
        Ok(()) => println!(
            "\nresults: {} (total {:.1} s)",
            path.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("writing {}: {e}", path.display()),
    }
    if let Err(e) = &res {
        eprintln!("\nbenchmark error: {e:#}");
    }
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    if res.is_err() || !failures.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
