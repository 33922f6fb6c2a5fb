//! Heartbeat ingest: closed-loop saturation (registry and a bare axum handler), and the paced
//! open-loop fleet load.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::bare::Bare;
use crate::procfs::{dir_bytes, settle, Snap};
use crate::stats::{mib, r3, table, Lat};
use crate::util::{bearer, connect_many, last_event_seq, Conn, NodeCred, Registry};

pub const BODY: &str = r#"{"observed_generation":0,"status_digest":"abc","rtt_ms":1.2,"stats":{"cpu_percent":3.5,"load1":0.1,"memory_used_bytes":1000,"memory_total_bytes":2000}}"#;

pub struct Config {
    pub conns: Vec<usize>,
    pub warmup: Duration,
    pub measure: Duration,
    pub paced_rate: f64,
    pub paced_for: Duration,
    pub paced_pool: usize,
}

/// Per node: request path and Authorization header.
type Targets = Arc<Vec<(String, HeaderValue)>>;

/// One closed-loop run.
pub struct SatRun {
    pub target: &'static str,
    pub conns: usize,
    pub secs: f64,
    pub lat: Lat,
    pub non200: usize,
    pub errors: usize,
    pub first_bad: Option<String>,
    /// CPU seconds of the server and of the load generator during the measured window.
    pub server_cpu: f64,
    pub client_cpu: f64,
    /// CPU seconds used by other processes on the machine in the window (noise).
    pub other_cpu: f64,
    /// Registry only: growth of the data dir, storage writes and events in the window.
    pub dir_growth: Option<i64>,
    pub write_bytes: Option<u64>,
    pub events: Option<u64>,
}

impl SatRun {
    pub fn rate(&self) -> f64 {
        self.lat.n as f64 / self.secs
    }

    fn json(&self) -> Value {
        json!({
            "target": self.target, "connections": self.conns, "heartbeats": self.lat.n,
            "seconds": r3(self.secs), "heartbeats_per_sec": r3(self.rate()), "latency": self.lat.json(),
            "non_200": self.non200, "errors": self.errors, "server_cpu_seconds": r3(self.server_cpu),
            "loadgen_cpu_seconds": r3(self.client_cpu),
            "other_processes_cpu_seconds": r3(self.other_cpu),
            "data_dir_growth_bytes": self.dir_growth, "storage_write_bytes": self.write_bytes,
            "events_written": self.events,
        })
    }
}

struct Probe<'a> {
    data: &'a Path,
    admin: Conn,
    token: &'a str,
    seq: u64,
}

/// Worker result: latencies of requests started in the window, non-200 count, errors, sample.
type Tally = (Vec<Duration>, usize, usize, Option<String>);

/// K keep-alive connections sending heartbeats back-to-back, cycling through the nodes.
async fn saturate(
    target: &'static str,
    addr: SocketAddr,
    pid: u32,
    nodes: &Targets,
    conns: usize,
    cfg: &Config,
    mut probe: Option<Probe<'_>>,
) -> Result<SatRun> {
    let pool = connect_many(addr, conns, 64).await?;
    let start = Instant::now();
    let (m0, end) = (start + cfg.warmup, start + cfg.warmup + cfg.measure);
    let mut tasks = Vec::new();
    for (c, mut conn) in pool.into_iter().enumerate() {
        let nodes = nodes.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lats, mut non200, mut errors, mut bad) = (Vec::new(), 0, 0, None::<String>);
            let mut i = c;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let (path, auth) = &nodes[i % nodes.len()];
                i += conns;
                let req = conn.request(
                    Method::POST,
                    path,
                    Some(auth),
                    Some(Bytes::from_static(BODY.as_bytes())),
                )?;
                match conn.send(req).await {
                    Ok((st, body)) => {
                        if t >= m0 {
                            lats.push(t.elapsed());
                        }
                        if st != StatusCode::OK {
                            non200 += 1;
                            bad.get_or_insert_with(|| {
                                format!("{st} {}", String::from_utf8_lossy(&body))
                            });
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        bad.get_or_insert_with(|| format!("{e:#}"));
                        conn = Conn::connect(addr).await?;
                    }
                }
            }
            Ok::<Tally, anyhow::Error>((lats, non200, errors, bad))
        }));
    }
    tokio::time::sleep_until(m0.into()).await;
    let (s0, dir0) = (Snap::take(pid), probe.as_ref().map(|p| dir_bytes(p.data)));
    if let Some(p) = probe.as_mut() {
        p.seq = last_event_seq(&mut p.admin, p.token, p.seq).await?;
    }
    tokio::time::sleep_until(end.into()).await;
    let s1 = Snap::take(pid);
    let dir1 = probe.as_ref().map(|p| dir_bytes(p.data));
    let (mut lats, mut non200, mut errors, mut first_bad) = (Vec::new(), 0, 0, None);
    for t in tasks {
        let (l, n, e, b) = t.await??;
        lats.extend(l);
        non200 += n;
        errors += e;
        first_bad = first_bad.or(b);
    }
    let events = match probe.as_mut() {
        Some(p) => Some(last_event_seq(&mut p.admin, p.token, p.seq).await? - p.seq),
        None => None,
    };
    let (server_cpu, client_cpu, _) = s1.cpu_since(&s0);
    Ok(SatRun {
        target,
        conns,
        secs: cfg.measure.as_secs_f64(),
        lat: Lat::of(lats),
        non200,
        errors,
        first_bad,
        server_cpu,
        client_cpu,
        other_cpu: s1.others_since(&s0),
        dir_growth: dir0.zip(dir1).map(|(a, b)| b as i64 - a as i64),
        write_bytes: probe.map(|_| s1.write_bytes.saturating_sub(s0.write_bytes)),
        events,
    })
}

pub struct Paced {
    pub target_rate: f64,
    pub sent: usize,
    pub achieved: f64,
    pub lat: Lat,
    pub non200: usize,
    pub errors: usize,
    pub first_bad: Option<String>,
    pub server_cpu: f64,
}

/// Open loop: heartbeat `i` is due at `start + i/rate` on connection `i % pool`; latency counts
/// from the due time, so a slow answer delays (and is charged to) the ones queued behind it.
async fn paced(addr: SocketAddr, pid: u32, nodes: &Targets, cfg: &Config) -> Result<Paced> {
    let pool = connect_many(addr, cfg.paced_pool, 64).await?;
    let total = (cfg.paced_rate * cfg.paced_for.as_secs_f64()).round() as usize;
    let rate = cfg.paced_rate;
    let start = Instant::now() + Duration::from_millis(100);
    let s0 = Snap::take(pid);
    let mut tasks = Vec::new();
    for (j, mut conn) in pool.into_iter().enumerate() {
        let nodes = nodes.clone();
        let step = cfg.paced_pool;
        tasks.push(tokio::spawn(async move {
            let (mut lats, mut non200, mut errors, mut bad) = (Vec::new(), 0, 0, None::<String>);
            let mut last = start;
            for i in (j..total).step_by(step) {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let (path, auth) = &nodes[i % nodes.len()];
                let req = conn.request(
                    Method::POST,
                    path,
                    Some(auth),
                    Some(Bytes::from_static(BODY.as_bytes())),
                )?;
                match conn.send(req).await {
                    Ok((st, body)) => {
                        last = Instant::now();
                        lats.push(last.duration_since(due));
                        if st != StatusCode::OK {
                            non200 += 1;
                            bad.get_or_insert_with(|| {
                                format!("{st} {}", String::from_utf8_lossy(&body))
                            });
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        bad.get_or_insert_with(|| format!("{e:#}"));
                        conn = Conn::connect(addr).await?;
                    }
                }
            }
            Ok::<_, anyhow::Error>((lats, non200, errors, bad, last))
        }));
    }
    let (mut lats, mut non200, mut errors, mut first_bad, mut last) =
        (Vec::new(), 0, 0, None, start);
    for t in tasks {
        let (l, n, e, b, at) = t.await??;
        lats.extend(l);
        non200 += n;
        errors += e;
        first_bad = first_bad.or(b);
        last = last.max(at);
    }
    let (server_cpu, _, _) = Snap::take(pid).cpu_since(&s0);
    let sent = lats.len();
    Ok(Paced {
        target_rate: rate,
        sent,
        achieved: sent as f64 / last.duration_since(start).as_secs_f64(),
        lat: Lat::of(lats),
        non200,
        errors,
        first_bad,
        server_cpu,
    })
}

fn check(
    what: &str,
    non200: usize,
    errors: usize,
    bad: &Option<String>,
    failures: &mut Vec<String>,
) {
    if non200 + errors > 0 {
        failures.push(format!(
            "heartbeat {what}: {non200} non-200 answer(s), {errors} transport error(s); first: {}",
            bad.as_deref().unwrap_or("?")
        ));
    }
}

fn ms(x: f64) -> String {
    format!("{x:.2} ms")
}

/// Runs the heartbeat benchmark against the registry (whose fleet is already enrolled) and the
/// bare server; prints the tables and returns the JSON results.
pub async fn run(
    cfg: &Config,
    reg: &Registry,
    fleet: &[NodeCred],
    enrol_time: Duration,
    failures: &mut Vec<String>,
) -> Result<Value> {
    let targets: Targets = Arc::new(
        fleet
            .iter()
            .map(|n| Ok((format!("/v1/nodes/{}/heartbeat", n.id), bearer(&n.secret)?)))
            .collect::<Result<Vec<_>>>()?,
    );
    eprintln!("heartbeat: waiting for the registry to settle after enrolment ...");
    let settle_max = Duration::from_secs(60);
    let (settle_time, settle_writes) = settle(reg.pid(), settle_max).await;
    let settled = settle_time < settle_max;
    let rss_enrolled = Snap::take(reg.pid()).rss_kib;
    let mut admin = Conn::connect(reg.addr).await?;
    let seq0 = last_event_seq(&mut admin, &reg.admin, 0).await?;
    let dir_enrolled = dir_bytes(&reg.data);
    let mut bare = Bare::start().await?;
    let mut runs: Vec<(SatRun, SatRun)> = Vec::new();
    for &k in &cfg.conns {
        eprintln!("heartbeat: saturation, registry, {k} connections ...");
        let probe = Probe {
            data: &reg.data,
            admin: Conn::connect(reg.addr).await?,
            token: &reg.admin,
            seq: 0,
        };
        let r = saturate(
            "registry",
            reg.addr,
            reg.pid(),
            &targets,
            k,
            cfg,
            Some(probe),
        )
        .await?;
        check(
            &format!("saturation registry K={k}"),
            r.non200,
            r.errors,
            &r.first_bad,
            failures,
        );
        eprintln!("heartbeat: saturation, bare axum, {k} connections ...");
        let b = saturate(
            "bare-axum",
            bare.addr,
            bare.guard.pid(),
            &targets,
            k,
            cfg,
            None,
        )
        .await?;
        check(
            &format!("saturation bare K={k}"),
            b.non200,
            b.errors,
            &b.first_bad,
            failures,
        );
        bare.guard.check_alive()?;
        runs.push((r, b));
    }
    drop(bare);
    eprintln!(
        "heartbeat: paced {:.0}/s for {:?} over {} connections ...",
        cfg.paced_rate, cfg.paced_for, cfg.paced_pool
    );
    let p = paced(reg.addr, reg.pid(), &targets, cfg).await?;
    check("paced", p.non200, p.errors, &p.first_bad, failures);
    let rss_after = Snap::take(reg.pid()).rss_kib;
    let phase_events = last_event_seq(&mut admin, &reg.admin, seq0).await? - seq0;
    let dir_after = dir_bytes(&reg.data);

    let mut out = String::new();
    out += &format!(
        "\n== heartbeat: ingest, {} enrolled nodes ==\n  enrolment: {} nodes in {:.2} s ({:.0}/s, 16 in parallel)\n\n",
        fleet.len(),
        fleet.len(),
        enrol_time.as_secs_f64(),
        fleet.len() as f64 / enrol_time.as_secs_f64()
    );
    out += &format!(
        "  saturation (closed loop, {:.1} s warm-up + {:.1} s measured, keep-alive HTTP/1.1):\n",
        cfg.warmup.as_secs_f64(),
        cfg.measure.as_secs_f64()
    );
    let mut rows = Vec::new();
    for (r, b) in &runs {
        rows.push(vec![
            format!("K={}", r.conns),
            format!("{:.0}", r.rate()),
            format!("{:.0}", b.rate()),
            format!("{:.2}x", r.rate() / b.rate()),
            ms(r.lat.p50),
            ms(r.lat.p99),
            ms(b.lat.p50),
            ms(b.lat.p99),
            format!(
                "{:.2}/{:.2}/{:.2}",
                r.server_cpu / r.secs,
                r.client_cpu / r.secs,
                r.other_cpu / r.secs
            ),
            format!("{}", r.non200 + r.errors + b.non200 + b.errors),
        ]);
    }
    out += &table(
        &[
            "conns",
            "registry hb/s",
            "bare hb/s",
            "ratio",
            "reg p50",
            "reg p99",
            "bare p50",
            "bare p99",
            "cores reg/gen/other",
            "bad",
        ],
        &rows,
    );
    out += "  (ratio goal >= 0.5x; cores = CPU seconds per second used by the registry / this load generator /\n   other processes during the registry runs; other > 0.1 means the numbers are disturbed)\n\n";
    let mut rows = Vec::new();
    for (r, _) in &runs {
        rows.push(vec![
            format!("K={}", r.conns),
            format!("{}", r.lat.n),
            format!("{} B", r.dir_growth.unwrap_or(0)),
            format!("{} B", r.write_bytes.unwrap_or(0)),
            format!("{}", r.events.unwrap_or(0)),
        ]);
    }
    out += &if settled {
        format!(
            "  registry writes during the measured saturation windows (before the runs the registry went quiet\n   {:.0} s after enrolment; its store wrote {} B in the background meanwhile, with no requests):\n",
            settle_time.as_secs_f64(),
            settle_writes
        )
    } else {
        format!(
            "  registry writes during the measured saturation windows (NOTE: {:.0} s after enrolment the store was\n   still writing in the background with no requests, {} B so far; write_bytes below include that):\n",
            settle_time.as_secs_f64(),
            settle_writes
        )
    };
    out += &table(
        &[
            "conns",
            "heartbeats",
            "data dir growth",
            "storage write_bytes",
            "events logged",
        ],
        &rows,
    );
    out += &format!(
        "\n  paced (open loop, {:.0} heartbeats/s = {} nodes / 10 s, {:.0} s, {} keep-alive connections; latency from the scheduled send time):\n",
        p.target_rate,
        fleet.len(),
        cfg.paced_for.as_secs_f64(),
        cfg.paced_pool
    );
    out += &table(
        &[
            "target/s",
            "achieved/s",
            "sent",
            "p50",
            "p99",
            "max",
            "registry cores",
            "bad",
        ],
        &[vec![
            format!("{:.0}", p.target_rate),
            format!("{:.0}", p.achieved),
            format!("{}", p.sent),
            ms(p.lat.p50),
            ms(p.lat.p99),
            ms(p.lat.max),
            format!("{:.3}", p.server_cpu / cfg.paced_for.as_secs_f64()),
            format!("{}", p.non200 + p.errors),
        ]],
    );
    out += &format!(
        "\n  registry RSS: {} after enrolment, {} after the runs; data dir: {} B after enrolment, {} B after the runs;\n  events logged during the whole heartbeat phase (warm-ups, bare runs and paced run included): {}\n",
        mib(rss_enrolled),
        mib(rss_after),
        dir_enrolled,
        dir_after,
        phase_events
    );
    print!("{out}");
    if runs.is_empty() {
        bail!("no saturation run configured");
    }
    Ok(json!({
        "nodes": fleet.len(),
        "enrolment_seconds": r3(enrol_time.as_secs_f64()),
        "settle_after_enrolment": {"seconds": r3(settle_time.as_secs_f64()), "storage_write_bytes": settle_writes, "settled": settled},
        "saturation": runs.iter().map(|(r, b)| json!({
            "registry": r.json(), "bare": b.json(), "ratio": r3(r.rate() / b.rate()),
        })).collect::<Vec<_>>(),
        "paced": {
            "target_per_sec": p.target_rate, "achieved_per_sec": r3(p.achieved), "sent": p.sent,
            "seconds": cfg.paced_for.as_secs_f64(), "connections": cfg.paced_pool,
            "latency_from_schedule": p.lat.json(), "non_200": p.non200, "errors": p.errors,
            "registry_cpu_seconds": r3(p.server_cpu),
        },
        "registry_rss_kib": {"after_enrolment": rss_enrolled, "after_runs": rss_after},
        "data_dir_bytes": {"after_enrolment": dir_enrolled, "after_runs": dir_after},
        "events_during_phase": phase_events,
    }))
}
