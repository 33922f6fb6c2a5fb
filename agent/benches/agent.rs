//! Agent benchmarks against the real release binaries (`steward-agent`, `steward-registry`) and
//! the real Docker engine.
//!
//! `cargo bench -p steward-agent --bench agent [-- [converge|footprint] [--quick]]`
//! (`STEWARD_BENCH_QUICK=1` is the same as `--quick`: a smoke run under a minute). Needs a
//! running Docker engine (`bash scripts/docker-up.sh`) and the registry built in release
//! (`cargo build --release -p steward-registry`). Results: a table on stdout and JSON in
//! `target/bench-results/agent.json`. Timings are only reported, never asserted; an agent that
//! does not converge fails the run.
//!
//! - converge: spec write on the registry → container running, next to `docker run -d` of the
//!   same image and command (see `agent/converge.rs` for the method).
//! - footprint: the idle agent with 10 managed containers at a 10 s heartbeat, next to Debian's
//!   prometheus-node-exporter scraped every 10 s (see `agent/footprint.rs`).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "agent/converge.rs"]
mod converge;
#[path = "agent/footprint.rs"]
mod footprint;
#[path = "agent/harness.rs"]
mod harness;
#[path = "agent/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use harness::{registry_bin, registry_staleness, Sweep, IMAGE};

struct Config {
    quick: bool,
    converge: Option<converge::Config>,
    footprint: Option<footprint::Config>,
}

impl Config {
    fn from_args() -> Config {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        // Cargo passes `--bench`; other flags are ignored too. Bare words filter by name.
        let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        let wants =
            |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
        Config {
            quick,
            converge: wants("converge").then_some(converge::Config {
                runs: if quick { 6 } else { 30 },
                warmup: if quick { 1 } else { 2 },
                burst_runs: if quick { 3 } else { 10 },
            }),
            footprint: wants("footprint").then_some(footprint::Config {
                window: Duration::from_secs(if quick { 15 } else { 60 }),
                containers: 10,
                heartbeat: Duration::from_secs(10),
                scrape_every: Duration::from_secs(10),
            }),
        }
    }
}

/// `<target>/bench-results/agent.json`.
fn results_path() -> PathBuf {
    harness::results_dir().join("agent.json")
}

/// A Docker engine answers and the test image exists (built from busybox-static if needed).
fn engine() -> Result<String> {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stderr(Stdio::null())
        .output();
    let version = match ok {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => bail!(
            "no Docker engine answers `docker info`: start one with `bash scripts/docker-up.sh`"
        ),
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-image.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(IMAGE)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("building the test image {IMAGE} with scripts/test-image.sh failed");
    }
    Ok(version)
}

/// Other Steward processes on this host (they share the CPUs and, for agents, react to every
/// managed container's events).
fn other_steward_processes() -> Vec<String> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm.starts_with("steward-") || comm == "cargo" {
            out.push(format!("{comm} ({pid})"));
        }
    }
    out
}

async fn run(cfg: &Config, tag: &str, results: &mut Value, report: &mut String) -> Result<()> {
    if let Some(c) = &cfg.converge {
        let (j, t) = converge::run(c, tag).await?;
        results["converge"] = j;
        report.push_str(&t);
        report.push('\n');
    }
    if let Some(c) = &cfg.footprint {
        let (j, t) = footprint::run(c, tag).await?;
        results["footprint"] = j;
        report.push_str(&t);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cfg = Config::from_args();
    if cfg.converge.is_none() && cfg.footprint.is_none() {
        println!("agent bench: no benchmark matches the filter (known: converge, footprint)");
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let prep = engine().and_then(|v| {
        let agent = harness::agent_bin();
        if !agent.exists() {
            bail!("the agent binary {} does not exist", agent.display());
        }
        Ok((v, registry_bin()?))
    });
    let (docker_version, registry) = match prep {
        Ok(x) => x,
        Err(e) => {
            eprintln!("agent bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(w) = registry_staleness(&registry) {
        eprintln!("{w}");
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg = loadavg
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let others = other_steward_processes();
    let tag = harness::tag();
    println!(
        "steward-agent benchmarks{}",
        if cfg.quick {
            " (--quick: reduced sizes)"
        } else {
            ""
        }
    );
    println!(
        "machine: {cpus} CPU(s), Docker {docker_version}, load average {loadavg}; agent {}, registry {}",
        harness::agent_bin().display(),
        registry.display()
    );
    println!(
        "other Steward/cargo processes on this host: {}",
        if others.is_empty() {
            "none".to_string()
        } else {
            others.join(", ")
        }
    );
    println!();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut results = json!({
        "quick": cfg.quick,
        "cpus": cpus,
        "docker": docker_version,
        "loadavg_at_start": loadavg,
        "other_processes": others,
    });
    let mut report = String::new();
    let res = {
        // Removes every container of this run, also on error or panic (after the agents,
        // which are dropped inside, are killed).
        let _sweep = Sweep { tag: tag.clone() };
        rt.block_on(run(&cfg, &tag, &mut results, &mut report))
    };
    print!("{report}");
    results["error"] = json!(res.as_ref().err().map(|e| format!("{e:#}")));
    results["wall_seconds"] = json!(stats::r3(started.elapsed().as_secs_f64()));
    let path = results_path();
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .map_err(anyhow::Error::from)
        .and_then(|_| Ok(std::fs::write(&path, serde_json::to_vec_pretty(&results)?)?));
    match written {
        Ok(()) => println!("\nresults: {}", path.display()),
        Err(e) => eprintln!("writing {}: {e:#}", path.display()),
    }
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent bench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
