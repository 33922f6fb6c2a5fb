//! converge: spec write on the registry → the container runs, side by side with `docker run -d`
//! of the same image and command.
//!
//! Both are timed on CLOCK_REALTIME: from `SystemTime::now()` just before the `PUT
//! /v1/nodes/{id}/spec` (resp. just before spawning `docker run -d`) to the engine's own
//! timestamp (TimeNano) of the container's `start` event, read from a `docker events`
//! subprocess. Agent and docker runs alternate (which goes first alternates too), and each run
//! starts from the same state: after an agent run, an (unmeasured) empty spec removes its
//! container and the bench waits until the agent is idle again (its log quiet for 300 ms);
//! after a docker run the container is removed with `docker rm -f` and the same pause follows.
//!
//! A second, smaller agent series ("burst") writes a spec adding a second container right when
//! the first one's start event arrives, i.e. while the agent is still reacting to its own
//! container events: what an operator applying two changes in a row sees.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use crate::harness::{
    debug_duration_ms, docker, epoch_ns, exists, field, poll, read_log, Agent, Events, Registry,
    Start, IMAGE,
};
use crate::stats::{r3, table, Summary};

pub struct Config {
    pub runs: usize,
    pub warmup: usize,
    pub burst_runs: usize,
}

struct AgentRun {
    generation: u64,
    t0_ns: i128,
    put_ms: f64,
    created: Option<Start>,
    start: Start,
}

struct DockerRun {
    t0_ns: i128,
    wall_ms: f64,
    created: Option<Start>,
    start: Start,
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

const SETTLE_QUIET: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_secs(30);

fn spec(names: &[&str]) -> String {
    let mut s = String::from("containers:\n");
    for n in names {
        s.push_str(&format!(
            "  - {{name: {n}, image: '{IMAGE}', command: [sleep, '3600']}}\n"
        ));
    }
    s
}

/// Writes `names` as the spec and waits for the start event of `last`; timed from just before
/// the write.
async fn write_and_wait(
    reg: &Registry,
    agent: &mut Agent,
    events: &Events,
    names: &[&str],
) -> Result<AgentRun> {
    let last = names.last().copied().unwrap_or_default();
    let yaml = spec(names);
    let t0 = SystemTime::now();
    let i0 = Instant::now();
    let generation = reg.put_spec(&agent.node_id, &yaml).await?;
    let put_ms = i0.elapsed().as_secs_f64() * 1e3;
    let start = events.wait(last, TIMEOUT).ok_or_else(|| {
        agent.explain(anyhow!(
            "the agent did not start {last} within {TIMEOUT:?} of the spec write (generation {generation})"
        ))
    })?;
    Ok(AgentRun {
        generation,
        t0_ns: epoch_ns(t0),
        put_ms,
        created: events.created(last),
        start,
    })
}

/// Back to the same starting point, unmeasured: an empty spec removes the containers, then
/// wait until the agent is idle.
async fn reset(reg: &Registry, agent: &mut Agent, names: &[&str]) -> Result<()> {
    let empty = reg.put_spec(&agent.node_id, "containers: []\n").await?;
    agent.wait_generation(empty, TIMEOUT).await?;
    poll(
        TIMEOUT,
        Duration::from_millis(10),
        "the agent to remove its containers",
        || names.iter().all(|n| !exists(n)).then_some(()),
    )
    .await
    .map_err(|e| agent.explain(e))?;
    agent.wait_idle(SETTLE_QUIET, Duration::from_secs(5)).await;
    Ok(())
}

async fn agent_run(
    reg: &Registry,
    agent: &mut Agent,
    events: &Events,
    name: &str,
) -> Result<AgentRun> {
    let r = write_and_wait(reg, agent, events, &[name]).await?;
    // The agent's own verdict must agree.
    agent.wait_generation(r.generation, TIMEOUT).await?;
    // Let the passes its own container events trigger finish under this generation.
    agent.wait_idle(SETTLE_QUIET, Duration::from_secs(5)).await;
    reset(reg, agent, &[name]).await?;
    Ok(r)
}

/// A second write right when the first write's container starts.
async fn burst_run(
    reg: &Registry,
    agent: &mut Agent,
    events: &Events,
    first: &str,
    second: &str,
) -> Result<AgentRun> {
    write_and_wait(reg, agent, events, &[first]).await?;
    let r = write_and_wait(reg, agent, events, &[first, second]).await?;
    agent.wait_generation(r.generation, TIMEOUT).await?;
    reset(reg, agent, &[first, second]).await?;
    Ok(r)
}

async fn docker_run(agent: &Agent, events: &Events, name: &str) -> Result<DockerRun> {
    let t0 = SystemTime::now();
    let i0 = Instant::now();
    let out = Command::new("docker")
        .args(["run", "-d", "--name", name, IMAGE, "sleep", "3600"])
        .output()?;
    let wall_ms = i0.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "docker run -d {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let start = events
        .wait(name, TIMEOUT)
        .ok_or_else(|| anyhow!("no start event for {name} (docker run -d) within {TIMEOUT:?}"))?;
    docker(&["rm", "-f", name])?;
    // The same pause as after an agent run (the agent ignores unmanaged containers).
    agent.wait_idle(SETTLE_QUIET, Duration::from_secs(5)).await;
    Ok(DockerRun {
        t0_ns: epoch_ns(t0),
        wall_ms,
        created: events.created(name),
        start,
    })
}

/// Runs the comparison; returns the JSON result and the text report.
pub async fn run(cfg: &Config, tag: &str) -> Result<(Value, String)> {
    let reg = Registry::start(Duration::from_secs(10)).await?;
    let res = run_on(cfg, tag, &reg).await;
    if res.is_err() {
        eprintln!(
            "--- last lines of the registry's log ---\n{}",
            reg.log_tail(15)
        );
    }
    res
}

async fn run_on(cfg: &Config, tag: &str, reg: &Registry) -> Result<(Value, String)> {
    let mut agent = Agent::start(reg).await?;
    let events = Events::subscribe(tag)?;
    agent.wait_idle(SETTLE_QUIET, Duration::from_secs(5)).await;
    eprintln!(
        "converge: agent pid {} (node {}), {} warm-up + {} measured runs each, then {} burst runs",
        agent.proc.pid(),
        agent.node_id,
        cfg.warmup,
        cfg.runs,
        cfg.burst_runs
    );
    let mut runs_a = Vec::new();
    let mut runs_d = Vec::new();
    for i in 0..cfg.warmup + cfg.runs {
        let measured = i >= cfg.warmup;
        for agent_turn in [i % 2 == 0, i % 2 == 1] {
            if agent_turn {
                let r = agent_run(reg, &mut agent, &events, &format!("bench-{tag}-{i}")).await?;
                if measured {
                    runs_a.push(r);
                }
            } else {
                let r = docker_run(&agent, &events, &format!("base-{tag}-{i}")).await?;
                if measured {
                    runs_d.push(r);
                }
            }
        }
        if measured && (i + 1 - cfg.warmup) % 5 == 0 {
            eprintln!("  {} / {} runs", i + 1 - cfg.warmup, cfg.runs);
        }
    }
    let mut runs_b = Vec::new();
    for j in 0..cfg.burst_runs {
        let (x, y) = (format!("burst1-{tag}-{j}"), format!("burst2-{tag}-{j}"));
        runs_b.push(burst_run(reg, &mut agent, &events, &x, &y).await?);
    }

    // Where the agent's time went, from its own log (same clock).
    let log = read_log(&agent.log_path());
    let mut recv_ms = Vec::new();
    let mut recv_to_create_ms = Vec::new();
    let mut took_ms = Vec::new();
    let mut passes = Vec::new();
    for r in &runs_a {
        let g = r.generation.to_string();
        let gen_is = |t: &str| field(t, "generation") == Some(g.as_str());
        if let Some(l) = log
            .iter()
            .find(|l| l.text.contains("new spec received") && gen_is(&l.text))
        {
            recv_ms.push(ms(l.ns - r.t0_ns));
            if let Some(c) = r.created {
                recv_to_create_ms.push(ms(c.engine_ns - l.ns));
            }
        }
        let recs: Vec<_> = log
            .iter()
            .filter(|l| l.text.contains(" reconciled "))
            .filter(|l| gen_is(&l.text))
            .collect();
        if let Some(t) = recs
            .first()
            .and_then(|l| field(&l.text, "took"))
            .and_then(debug_duration_ms)
        {
            took_ms.push(t);
        }
        passes.push(recs.len() as f64);
    }

    let lat = |v: &[&AgentRun]| -> Vec<f64> {
        v.iter().map(|r| ms(r.start.engine_ns - r.t0_ns)).collect()
    };
    let a_start = lat(&runs_a.iter().collect::<Vec<_>>());
    let b_start = lat(&runs_b.iter().collect::<Vec<_>>());
    let a_arr: Vec<f64> = runs_a
        .iter()
        .map(|r| ms(r.start.arrived_ns - r.t0_ns))
        .collect();
    let d_start: Vec<f64> = runs_d
        .iter()
        .map(|r| ms(r.start.engine_ns - r.t0_ns))
        .collect();
    let d_arr: Vec<f64> = runs_d
        .iter()
        .map(|r| ms(r.start.arrived_ns - r.t0_ns))
        .collect();
    let d_wall: Vec<f64> = runs_d.iter().map(|r| r.wall_ms).collect();
    let put: Vec<f64> = runs_a.iter().map(|r| r.put_ms).collect();
    let a_c2s: Vec<f64> = runs_a
        .iter()
        .filter_map(|r| r.created.map(|c| ms(r.start.engine_ns - c.engine_ns)))
        .collect();
    let d_c2s: Vec<f64> = runs_d
        .iter()
        .filter_map(|r| r.created.map(|c| ms(r.start.engine_ns - c.engine_ns)))
        .collect();
    let d_t2c: Vec<f64> = runs_d
        .iter()
        .filter_map(|r| r.created.map(|c| ms(c.engine_ns - r.t0_ns)))
        .collect();
    let a_t2c: Vec<f64> = runs_a
        .iter()
        .filter_map(|r| r.created.map(|c| ms(c.engine_ns - r.t0_ns)))
        .collect();
    let (sa, sd) = (Summary::of(&a_start), Summary::of(&d_start));
    let (saa, sda) = (Summary::of(&a_arr), Summary::of(&d_arr));
    let sb = Summary::of(&b_start);
    let ratio = sa.median / sd.median;

    let f = |x: f64| format!("{x:.1}");
    let rows: Vec<Vec<String>> = [
        ("median", sa.median, sd.median),
        ("p90", sa.p90, sd.p90),
        ("min", sa.min, sd.min),
        ("max", sa.max, sd.max),
        ("mean", sa.mean, sd.mean),
        ("median, by event arrival", saa.median, sda.median),
    ]
    .iter()
    .map(|(k, a, d)| vec![format!("{k} ms"), f(*a), f(*d), format!("{:.2}×", a / d)])
    .collect();
    let mut text = format!(
        "converge: write → container running ({} runs each, alternating; image {IMAGE}, `sleep 3600`)\n\
         agent: SystemTime before PUT /v1/nodes/{{id}}/spec → engine start event (TimeNano)\n\
         docker: SystemTime before spawning `docker run -d` → engine start event (TimeNano)\n\n",
        runs_a.len()
    );
    text.push_str(&table(
        &["", "steward-agent", "docker run -d", "agent/docker"],
        &rows,
    ));
    text.push_str(&format!(
        "ratio of medians agent/docker: {ratio:.2}× (goal ≤ 1.2×: {})\n\n",
        if ratio <= 1.2 { "met" } else { "NOT met" }
    ));
    let parts = [
        (
            "agent: PUT → 200 from the registry (validate, store, fsync)",
            Summary::of(&put),
        ),
        (
            "agent: PUT → log \"new spec received\" (long-poll answer, sled flush)",
            Summary::of(&recv_ms),
        ),
        (
            "agent: \"new spec received\" → create event (observe, plan, create)",
            Summary::of(&recv_to_create_ms),
        ),
        ("agent: PUT → create event", Summary::of(&a_t2c)),
        (
            "agent: create event → start event (engine starts it)",
            Summary::of(&a_c2s),
        ),
        (
            "agent: first reconcile pass (`took` in its log)",
            Summary::of(&took_ms),
        ),
        (
            "agent: reconcile passes per spec write (count)",
            Summary::of(&passes),
        ),
        (
            "docker: spawn → create event (CLI, create)",
            Summary::of(&d_t2c),
        ),
        (
            "docker: create event → start event (engine starts it)",
            Summary::of(&d_c2s),
        ),
        (
            "docker: `docker run -d` command wall time (exec → exit)",
            Summary::of(&d_wall),
        ),
        (
            "agent, burst: 2nd write right at the 1st's start event → start",
            sb.clone(),
        ),
    ];
    let rows: Vec<Vec<String>> = parts
        .iter()
        .map(|(k, s)| {
            vec![
                k.to_string(),
                s.n.to_string(),
                f(s.median),
                f(s.p90),
                f(s.min),
                f(s.max),
            ]
        })
        .collect();
    text.push_str("breakdown (ms; agent phases from its own log timestamps, same clock):\n");
    text.push_str(&table(&["", "n", "median", "p90", "min", "max"], &rows));

    let raw = |v: &[f64]| v.iter().map(|x| r3(*x)).collect::<Vec<_>>();
    let j = json!({
        "runs": runs_a.len(),
        "warmup": cfg.warmup,
        "image": IMAGE,
        "method": "SystemTime before the PUT (agent) or before spawning `docker run -d` (docker) → TimeNano of the engine's start event; runs alternate; each starts from the same container set",
        "agent_ms": sa.json(),
        "docker_ms": sd.json(),
        "agent_by_arrival_ms": saa.json(),
        "docker_by_arrival_ms": sda.json(),
        "ratio_of_medians": r3(ratio),
        "goal_ratio": 1.2,
        "docker_run_wall_ms": Summary::of(&d_wall).json(),
        "breakdown": {
            "agent_put_ms": Summary::of(&put).json(),
            "agent_put_to_spec_received_ms": Summary::of(&recv_ms).json(),
            "agent_spec_received_to_create_event_ms": Summary::of(&recv_to_create_ms).json(),
            "agent_put_to_create_event_ms": Summary::of(&a_t2c).json(),
            "agent_create_to_start_event_ms": Summary::of(&a_c2s).json(),
            "agent_first_reconcile_took_ms": Summary::of(&took_ms).json(),
            "agent_reconcile_passes_per_write": Summary::of(&passes).json(),
            "docker_spawn_to_create_event_ms": Summary::of(&d_t2c).json(),
            "docker_create_to_start_event_ms": Summary::of(&d_c2s).json(),
        },
        "burst": {
            "runs": runs_b.len(),
            "method": "spec {a} written, then {a, b} written as soon as a's start event arrives; write of {a, b} → b's start event",
            "agent_ms": sb.json(),
        },
        "raw": {
            "agent_ms": raw(&a_start),
            "docker_ms": raw(&d_start),
            "docker_wall_ms": raw(&d_wall),
            "agent_burst_ms": raw(&b_start),
        },
    });
    Ok((j, text))
}
