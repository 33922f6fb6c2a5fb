//! Fleet-scale benchmark (issue 16): one registry (the real binary, sled store) holding N nodes
//! with full statuses, heartbeats paced at N/10 per second from every live node through seven
//! phases: (a) heartbeats alone, (b) status pages, scrapes and node reads, (c) 10% of the nodes
//! go stale then down, (d) a fragment to all with 10k parked long-polls, (m) 99% go stale then
//! down and 89% come back (a mass transition), (e) kill -9 and
//! restart, (f) idle; the same load against a bare axum handler side by side.
//!
//! `cargo bench -p steward-registry --bench scale [-- --nodes N] [--quick] [--reseed]
//! [--phases abcdmef] [--store etcd]` (`--quick`: 10,000 nodes and shorter phases; `--phases`:
//! only these phases and no bare run, for working on one of them; `--store etcd`: the registry
//! on a one-member etcd holding the seed, migrated into it once and cached in
//! `/tmp/steward-scale-etcd-N/`; `STEWARD_BENCH_REGISTRY=/path/to/binary` measures another
//! registry build). The seeded fleet is cached in `/tmp/steward-scale-seed-N/`.
//! Results: a table on stdout and JSON in `target/bench-results/scale.json`. Timings are only
//! reported; wrong answers are counted and reported.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "registry/bare.rs"]
mod bare;
#[path = "scale/etcd.rs"]
mod etcd;
#[path = "scale/fanout.rs"]
mod fanout;
#[path = "scale/interfere.rs"]
mod interfere;
#[path = "scale/load.rs"]
mod load;
#[path = "scale/phases.rs"]
mod phases;
#[allow(dead_code)]
#[path = "registry/procfs.rs"]
mod procfs;
#[path = "scale/report.rs"]
mod report;
#[path = "scale/seed.rs"]
mod seed;
#[allow(dead_code)]
#[path = "registry/stats.rs"]
mod stats;
#[allow(dead_code)]
#[path = "registry/util.rs"]
mod util;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What to run, from the command line.
pub struct Config {
    pub nodes: usize,
    pub quick: bool,
    pub reseed: bool,
    /// The phases to run (`--phases`, letters of a-f and m); all of them, and the bare runs, by
    /// default.
    pub phases: Option<String>,
    /// The registry's store is etcd (`--store etcd`), else sled.
    pub etcd: bool,
    /// Length of phases (a) (and of the bare run), (b) and (e); of the idle phase (f).
    pub a: Duration,
    pub b: Duration,
    pub e: Duration,
    pub idle: Duration,
}

impl Config {
    /// Whether phase `p` runs.
    pub fn runs(&self, p: char) -> bool {
        self.phases.as_ref().is_none_or(|ps| ps.contains(p))
    }

    fn from_args() -> Result<Config, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let nodes = match args.iter().position(|a| a == "--nodes") {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.replace('_', "").parse().ok())
                .filter(|n| *n >= 100)
                .ok_or("--nodes takes a number of nodes (at least 100)")?,
            None if quick => 10_000,
            None => 100_000,
        };
        let s =
            |quick_secs, full_secs| Duration::from_secs(if quick { quick_secs } else { full_secs });
        let phases = match args.iter().position(|a| a == "--phases") {
            Some(i) => Some(
                args.get(i + 1)
                    .filter(|p| !p.is_empty() && p.chars().all(|c| "abcdefm".contains(c)))
                    .ok_or("--phases takes letters among a, b, c, d, m, e and f")?
                    .clone(),
            ),
            None => None,
        };
        let etcd = match args.iter().position(|a| a == "--store") {
            Some(i) => match args.get(i + 1).map(String::as_str) {
                Some("etcd") => true,
                Some("sled") => false,
                _ => return Err("--store takes sled or etcd".into()),
            },
            None => false,
        };
        Ok(Config {
            nodes,
            phases,
            etcd,
            quick,
            reseed: args.iter().any(|a| a == "--reseed"),
            a: s(20, 30),
            b: s(32, 47),
            e: s(25, 30),
            idle: s(30, 60),
        })
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> ExitCode {
    if let Ok(port) = std::env::var("STEWARD_BENCH_BARE_PORT") {
        bare::serve(&port);
    }
    let cfg = match Config::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scale bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nofile = util::raise_nofile();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let registry = util::registry_bin().display().to_string();
    println!(
        "steward-registry fleet-scale benchmark: {} nodes{}; registry {registry} on {}",
        cfg.nodes,
        if cfg.quick { " (--quick)" } else { "" },
        if cfg.etcd {
            "etcd (one member, on this machine)"
        } else {
            "its embedded sled store"
        }
    );
    println!(
        "machine: {cpus} CPU(s) shared by the registry, this load generator and the bare server; \
         loopback; RLIMIT_NOFILE {nofile}; load average at start {}",
        uptime()
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
        "nodes": cfg.nodes, "quick": cfg.quick, "cpus": cpus, "registry": registry,
        "store": if cfg.etcd { "etcd" } else { "sled" },
        "rlimit_nofile": nofile, "loadavg_start": uptime(),
        "note": "load generator, registry and bare server share these CPUs over loopback",
    });
    let mut failures: Vec<String> = Vec::new();
    let res = rt.block_on(phases::run(&cfg, &mut results, &mut failures));
    rt.shutdown_timeout(Duration::from_secs(2));
    results["loadavg_end"] = json!(uptime());
    results["failures"] = json!(failures);
    results["error"] = json!(res.as_ref().err().map(|e| format!("{e:#}")));
    results["wall_seconds"] = json!(stats::r3(started.elapsed().as_secs_f64()));
    if res.is_ok() {
        print!("{}", report::text(&cfg, &results));
    }
    write_results(&results, started);
    if let Err(e) = &res {
        eprintln!("\nbenchmark error: {e:#}");
    }
    for f in &failures {
        eprintln!("WRONG ANSWERS: {f}");
    }
    if let Some(tail) = results["registry_log_tail"].as_array() {
        eprintln!("--- last lines of the registry's log ---");
        for l in tail {
            eprintln!("{}", l.as_str().unwrap_or_default());
        }
    }
    if res.is_err() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn write_results(results: &Value, started: Instant) {
    let path = util::results_path("scale.json");
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| {
            std::fs::write(
                &path,
                serde_json::to_string_pretty(results).unwrap_or_default(),
            )
        });
    match written {
        Ok(()) => println!(
            "\nresults: {} (total {:.1} s, load average at end {})",
            path.display(),
            started.elapsed().as_secs_f64(),
            uptime()
        ),
        Err(e) => eprintln!("writing {}: {e}", path.display()),
    }
}
