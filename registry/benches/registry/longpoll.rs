//! Long-poll fan-out (one fragment write wakes every parked watcher) and the cost of idle
//! watchers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::procfs::{listen_overflows, Snap, CLK_TCK};
use crate::stats::{mib, percentile, r3, table, Lat};
use crate::util::{bearer, connect_many, Conn, NodeCred, Registry};

pub struct Config {
    pub rounds: u32,
    pub idle_hold: Duration,
}

/// One watcher's answer in one round.
struct Answer {
    round: u32,
    at: Instant,
    outcome: Result<(StatusCode, Option<u64>)>,
}

struct Round {
    round: u32,
    put_ms: f64,
    lat: Lat,
    all_answered_ms: f64,
    park_wait_ms: f64,
    /// CPU milliseconds of the registry and of other processes (noise) during the round.
    registry_cpu_ms: f64,
    other_cpu_ms: f64,
}

/// Waits until the registry has been quiet (at most 1 tick of CPU per 250 ms) after `min`,
/// giving up after `max`. Returns how long it waited.
async fn until_quiet(pid: u32, min: Duration, max: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::sleep(min).await;
    loop {
        let a = Snap::take(pid);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let b = Snap::take(pid);
        if b.cpu_ticks.saturating_sub(a.cpu_ticks) <= 1 || start.elapsed() >= max {
            return start.elapsed();
        }
    }
}

/// Fails on any answer that arrived while the watchers should all be parked.
fn no_early_answers(rx: &mut mpsc::UnboundedReceiver<Answer>, what: &str) -> Result<()> {
    if let Ok(a) = rx.try_recv() {
        let got = match a.outcome {
            Ok((st, g)) => format!("{st} generation {g:?}"),
            Err(e) => format!("{e:#}"),
        };
        bail!(
            "{what}: a watcher answered before any change (round {}): {got}",
            a.round
        );
    }
    Ok(())
}

/// Latency of writing a fragment whose selector matches no node: what a fragment write costs
/// before any node is affected (the registry re-reads every node to find the matching ones).
async fn empty_fragment_puts(reg: &Registry, times: u32) -> Result<Vec<f64>> {
    let mut admin = Conn::connect(reg.addr).await?;
    let mut out = Vec::new();
    for i in 0..times {
        let body = json!({"selector": "bench=nothing", "spec": {"containers": [{"name": "probe", "image": format!("busybox:e{i}")}]}});
        let t0 = Instant::now();
        let (st, v) = admin
            .call(
                Method::PUT,
                "/v1/fragments/bench-empty",
                &reg.admin,
                Some(&body),
            )
            .await?;
        out.push(t0.elapsed().as_secs_f64() * 1e3);
        let affected = v["affected"].as_array().map(Vec::len);
        if st != StatusCode::OK || affected != Some(0) {
            bail!("PUT /v1/fragments/bench-empty: {st} {v} (want 200 with no affected node)");
        }
    }
    Ok(out)
}

async fn fanout(
    reg: &Registry,
    nodes: &[NodeCred],
    cfg: &Config,
    failures: &mut Vec<String>,
) -> Result<Vec<Round>> {
    let n = nodes.len();
    let conns = connect_many(reg.addr, n, 64).await?;
    let (round_tx, round_rx) = watch::channel(0u32);
    let (ans_tx, mut ans_rx) = mpsc::unbounded_channel::<Answer>();
    let sent = Arc::new(AtomicUsize::new(0));
    let rounds = cfg.rounds;
    let mut tasks = Vec::new();
    for (node, mut conn) in nodes.iter().zip(conns) {
        let (mut round_rx, ans_tx, sent) = (round_rx.clone(), ans_tx.clone(), sent.clone());
        let auth = bearer(&node.secret)?;
        let id = node.id.clone();
        tasks.push(tokio::spawn(async move {
            for r in 1..=rounds {
                if round_rx.wait_for(|v| *v >= r).await.is_err() {
                    return;
                }
                let path = format!("/v1/nodes/{id}/spec?after={}&wait=60s", r - 1);
                let outcome = async {
                    let req = conn.request(Method::GET, &path, Some(&auth), None)?;
                    let (st, body) = conn.send_counted(req, Some(&sent)).await?;
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    Ok((st, v["generation"].as_u64()))
                }
                .await;
                let at = Instant::now();
                let failed = outcome.is_err();
                let _ = ans_tx.send(Answer {
                    round: r,
                    at,
                    outcome,
                });
                if failed {
                    return;
                }
            }
        }));
    }
    drop(ans_tx);
    let mut admin = Conn::connect(reg.addr).await?;
    let mut out = Vec::new();
    for r in 1..=rounds {
        round_tx.send_replace(r);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.load(Ordering::SeqCst) < n * r as usize {
            if Instant::now() > deadline {
                bail!(
                    "round {r}: only {} of {n} watchers sent their long-poll",
                    sent.load(Ordering::SeqCst) - n * (r as usize - 1)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let parked = until_quiet(reg.pid(), Duration::from_secs(1), Duration::from_secs(10)).await;
        no_early_answers(&mut ans_rx, "fan-out")?;
        let body = json!({"selector": "bench=fanout", "spec": {"containers": [{"name": "probe", "image": format!("busybox:{r}")}]}});
        let s0 = Snap::take(reg.pid());
        let t0 = Instant::now();
        let (st, v) = admin
            .call(Method::PUT, "/v1/fragments/fanout", &reg.admin, Some(&body))
            .await?;
        let put = t0.elapsed();
        if st != StatusCode::OK {
            bail!("round {r}: PUT /v1/fragments/fanout answered {st} {v}");
        }
        let affected = v["affected"].as_array().map(Vec::len).unwrap_or(0);
        if affected != n {
            failures.push(format!(
                "longpoll round {r}: the fragment write affected {affected} nodes, expected {n}"
            ));
        }
        let mut lats = Vec::with_capacity(n);
        let mut wrong = 0usize;
        let mut first_wrong = None;
        while lats.len() < n {
            let a = tokio::time::timeout(Duration::from_secs(60), ans_rx.recv())
                .await
                .map_err(|_| {
                    anyhow!(
                        "round {r}: only {} of {n} watchers answered within 60 s",
                        lats.len()
                    )
                })?
                .ok_or_else(|| anyhow!("round {r}: watchers gone after {} answers", lats.len()))?;
            let ok =
                matches!(a.outcome, Ok((StatusCode::OK, Some(g))) if g == r as u64) && a.round == r;
            if !ok {
                wrong += 1;
                first_wrong.get_or_insert_with(|| match &a.outcome {
                    Ok((st, g)) => format!("{st}, generation {g:?} (want 200, generation {r})"),
                    Err(e) => format!("{e:#}"),
                });
            }
            lats.push(a.at.duration_since(t0));
        }
        let all = t0.elapsed();
        let s1 = Snap::take(reg.pid());
        let (registry_cpu, _, _) = s1.cpu_since(&s0);
        if wrong > 0 {
            failures.push(format!(
                "longpoll round {r}: {wrong} wrong answer(s); first: {}",
                first_wrong.unwrap_or_default()
            ));
        }
        let lat = Lat::of(lats);
        eprintln!(
            "longpoll: round {r}: PUT {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            put.as_secs_f64() * 1e3,
            lat.p50,
            lat.p99,
            lat.max
        );
        out.push(Round {
            round: r,
            put_ms: put.as_secs_f64() * 1e3,
            lat,
            all_answered_ms: all.as_secs_f64() * 1e3,
            park_wait_ms: parked.as_secs_f64() * 1e3,
            registry_cpu_ms: registry_cpu * 1e3,
            other_cpu_ms: s1.others_since(&s0) * 1e3,
        });
    }
    drop(round_tx);
    for t in tasks {
        let _ = t.await;
    }
    Ok(out)
}

struct Idle {
    watchers: usize,
    park_secs: f64,
    listen_overflows: u64,
    rss_before: u64,
    rss_after: u64,
    cpu_secs: f64,
    hold_secs: f64,
}

/// Parks one `wait=120s` long-poll per node, each on its own connection, and measures the
/// registry's memory and CPU while they idle.
async fn idle(reg: &Registry, nodes: &[NodeCred], cfg: &Config) -> Result<Idle> {
    let n = nodes.len();
    let pid = reg.pid();
    until_quiet(pid, Duration::from_millis(500), Duration::from_secs(10)).await;
    let rss_before = Snap::take(pid).rss_kib;
    let sem = Arc::new(Semaphore::new(64));
    let sent = Arc::new(AtomicUsize::new(0));
    let (ans_tx, mut ans_rx) = mpsc::unbounded_channel::<Answer>();
    let (start, overflows0) = (Instant::now(), listen_overflows());
    let mut tasks = Vec::with_capacity(n);
    for node in nodes {
        let (sem, sent, ans_tx, addr) = (sem.clone(), sent.clone(), ans_tx.clone(), reg.addr);
        let auth = bearer(&node.secret)?;
        let path = format!("/v1/nodes/{}/spec?after=0&wait=120s", node.id);
        tasks.push(tokio::spawn(async move {
            let outcome = async {
                let permit = sem.acquire_owned().await?;
                let mut conn = Conn::connect(addr).await?;
                drop(permit);
                let req = conn.request(Method::GET, &path, Some(&auth), None)?;
                let (st, _) = conn.send_counted(req, Some(&sent)).await?;
                Ok((st, None))
            }
            .await;
            let _ = ans_tx.send(Answer {
                round: 0,
                at: Instant::now(),
                outcome,
            });
        }));
    }
    drop(ans_tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent.load(Ordering::SeqCst) < n {
        no_early_answers(&mut ans_rx, "idle watchers")?;
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} idle watchers sent their long-poll in 120 s",
                sent.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let park_secs = start.elapsed().as_secs_f64();
    let overflows = listen_overflows().saturating_sub(overflows0);
    until_quiet(pid, Duration::from_secs(1), Duration::from_secs(20)).await;
    no_early_answers(&mut ans_rx, "idle watchers")?;
    let a = Snap::take(pid);
    tokio::time::sleep(cfg.idle_hold).await;
    let b = Snap::take(pid);
    no_early_answers(&mut ans_rx, "idle watchers")?;
    for t in &tasks {
        t.abort();
    }
    let (cpu_secs, _, hold_secs) = b.cpu_since(&a);
    Ok(Idle {
        watchers: n,
        park_secs,
        listen_overflows: overflows,
        rss_before,
        rss_after: a.rss_kib,
        cpu_secs,
        hold_secs,
    })
}

/// Runs the long-poll benchmark; prints the tables and returns the JSON results.
pub async fn run(
    cfg: &Config,
    reg: &Registry,
    fanout_nodes: &[NodeCred],
    fleet: &[NodeCred],
    total_nodes: usize,
    failures: &mut Vec<String>,
) -> Result<Value> {
    eprintln!("longpoll: fragment writes matching no node ...");
    let mut empty = empty_fragment_puts(reg, 5).await?;
    empty.sort_by(f64::total_cmp);
    eprintln!(
        "longpoll: fan-out to {} watchers, {} rounds ...",
        fanout_nodes.len(),
        cfg.rounds
    );
    let rounds = fanout(reg, fanout_nodes, cfg, failures).await?;
    eprintln!("longpoll: parking {} idle watchers ...", fleet.len());
    let idle = idle(reg, fleet, cfg).await?;

    let mut p99s: Vec<f64> = rounds.iter().map(|r| r.lat.p99).collect();
    p99s.sort_by(f64::total_cmp);
    let median_p99 = if p99s.is_empty() {
        0.0
    } else {
        percentile(&p99s, 50.0)
    };
    let mut out = format!(
        "\n== longpoll: fan-out, {} watchers (label bench=fanout) of {} enrolled nodes, one connection each ==\n",
        fanout_nodes.len(),
        total_nodes
    );
    out += "  latency = from just before the fragment PUT is sent until each watcher has its 200 (generation checked);\n";
    out += "  CPU reg/other = CPU time of the registry / of other processes in that window (10 ms ticks; other > 0 = noise)\n";
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            vec![
                format!("{}", r.round),
                format!("{:.1} ms", r.put_ms),
                format!("{:.1} ms", r.lat.p50),
                format!("{:.1} ms", r.lat.p99),
                format!("{:.1} ms", r.lat.max),
                format!("{:.1} ms", r.all_answered_ms),
                format!("{:.0} ms", r.park_wait_ms),
                format!("{:.0}/{:.0} ms", r.registry_cpu_ms, r.other_cpu_ms),
            ]
        })
        .collect();
    out += &table(
        &[
            "round",
            "PUT",
            "p50",
            "p99",
            "max",
            "all answered",
            "parked after",
            "CPU reg/other",
        ],
        &rows,
    );
    out += &format!(
        "  median p99 over {} rounds: {median_p99:.1} ms (goal < 100 ms)\n",
        rounds.len()
    );
    out += &format!(
        "  for comparison, PUT of a fragment matching no node ({} nodes enrolled): median {:.1} ms, max {:.1} ms over {} writes\n",
        total_nodes,
        percentile(&empty, 50.0),
        empty.last().copied().unwrap_or(0.0),
        empty.len()
    );
    let per = (idle.rss_after as f64 - idle.rss_before as f64) / idle.watchers.max(1) as f64;
    out += &format!(
        "\n== longpoll: {} idle watchers (wait=120s, one connection each) ==\n",
        idle.watchers
    );
    out += &table(
        &[
            "watchers",
            "parked in",
            "listen overflows",
            "RSS before",
            "RSS parked",
            "per watcher",
            "CPU while idle",
            "cores",
        ],
        &[vec![
            format!("{}", idle.watchers),
            format!("{:.2} s", idle.park_secs),
            format!("{}", idle.listen_overflows),
            mib(idle.rss_before),
            mib(idle.rss_after),
            format!("{per:.1} KiB"),
            format!("{:.0} ms / {:.1} s", idle.cpu_secs * 1e3, idle.hold_secs),
            format!("{:.4}", idle.cpu_secs / idle.hold_secs),
        ]],
    );
    out += &format!(
        "  (connections opened 64 at a time; a listen overflow drops the SYN and costs that client a 1 s retry;\n   CPU from /proc/<pid>/stat utime+stime, resolution {:.0} ms)\n",
        1000.0 / CLK_TCK
    );
    print!("{out}");
    Ok(json!({
        "fanout": {
            "watchers": fanout_nodes.len(), "registry_nodes": total_nodes,
            "rounds": rounds.iter().map(|r| json!({
                "round": r.round, "put_ms": r3(r.put_ms), "latency": r.lat.json(),
                "all_answered_ms": r3(r.all_answered_ms), "parked_wait_ms": r3(r.park_wait_ms),
                "registry_cpu_ms": r3(r.registry_cpu_ms), "other_processes_cpu_ms": r3(r.other_cpu_ms),
            })).collect::<Vec<_>>(),
            "median_p99_ms": r3(median_p99),
            "empty_fragment_put_ms": empty.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
        },
        "idle": {
            "watchers": idle.watchers, "park_seconds": r3(idle.park_secs), "listen_overflows": idle.listen_overflows,
            "rss_kib_before": idle.rss_before, "rss_kib_parked": idle.rss_after,
            "kib_per_watcher": r3(per), "cpu_seconds": r3(idle.cpu_secs), "hold_seconds": r3(idle.hold_secs),
        },
    }))
}
