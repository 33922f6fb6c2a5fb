//! The fleet's heartbeats: an open-loop load paced at N/10 per second (every node once per
//! 10 s interval) that runs through all phases; every answer is recorded with its scheduled
//! time (which names its phase), its latency from that time and its answer time (for the
//! longest stall).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::stats::{r3, Lat};
use crate::util::{bearer, Conn, NodeCred};

/// Phase index meaning "between phases": recorded, never reported.
pub const BETWEEN: usize = 0;

/// One answer (or failure): outcome, due time, latency from the due time, answer time (µs).
#[derive(Clone, Copy)]
struct Rec {
    /// 0 answered 2xx, 1 answered otherwise, 2 transport error (refused, reset).
    outcome: u8,
    due_us: u32,
    lat_us: u32,
    at_us: u32,
}

/// Heartbeat figures of the heartbeats due in one phase.
#[derive(Clone, Debug, Default)]
pub struct PhaseHb {
    pub answered: usize,
    pub lat: Lat,
    /// The largest gap between two consecutive answers (ms).
    pub gap_ms: f64,
    pub non2xx: usize,
    pub errors: usize,
    pub first_non2xx: Option<String>,
    pub first_error: Option<String>,
    /// Answers per second over the phase's span of answers.
    pub rate: f64,
}

impl PhaseHb {
    pub fn json(&self) -> Value {
        json!({
            "answered": self.answered, "latency_from_schedule": self.lat.json(),
            "longest_gap_ms": r3(self.gap_ms), "non_2xx": self.non2xx,
            "transport_errors": self.errors, "first_non_2xx": self.first_non2xx,
            "first_transport_error": self.first_error, "answers_per_sec": r3(self.rate),
        })
    }
}

/// A bad answer's due time, outcome and text (a worker keeps its first few).
type Bad = (u32, u8, String);
/// A worker's records and bad answers.
type WorkerOut = (Vec<Rec>, Vec<Bad>);

/// Microseconds from `start` (saturating).
fn us_since(start: Instant, t: Instant) -> u32 {
    t.saturating_duration_since(start)
        .as_micros()
        .min(u32::MAX as u128) as u32
}

/// A running load; `set_phase` and `silence` steer it. A heartbeat counts for the phase it
/// was due in (so a backlog left by a stall is charged to the phase that caused it).
pub struct Load {
    targets: usize,
    /// (µs since start, phase) at every phase change.
    timeline: Arc<Mutex<Vec<(u32, usize)>>>,
    start: Instant,
    /// Which nodes send nothing: [`LOUD`], [`TENTH`] (see [`silenced`]) or [`ALL_BUT_1PC`].
    pub silence: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WorkerOut>>,
    pub conns: usize,
}

/// The nodes that stop heartbeating in phase (c): every tenth, spread over the schedule.
pub fn silenced(node: usize) -> bool {
    node % 10 == 9
}

/// Silence modes: every node heartbeats.
pub const LOUD: u8 = 0;
/// Every tenth node ([`silenced`]) is silent (phase c).
pub const TENTH: u8 = 1;
/// Every node but every hundredth is silent: a mass transition (phase m).
pub const ALL_BUT_1PC: u8 = 2;

/// Whether `node` is silent in silence mode `mode`.
pub fn silent_in(mode: u8, node: usize) -> bool {
    match mode {
        TENTH => silenced(node),
        ALL_BUT_1PC => node % 100 != 0,
        _ => false,
    }
}

/// The heartbeat body: what an agent sends every interval (its status digest echoed).
fn body(digest: &str) -> Bytes {
    Bytes::from(
        json!({"observed_generation": 0, "status_digest": digest, "rtt_ms": 1.2,
            "stats": {"cpu_percent": 3.5, "load1": 0.1, "memory_used_bytes": 1_000_000_000u64,
            "memory_total_bytes": 8_000_000_000u64}})
        .to_string(),
    )
}

impl Load {
    /// Starts `rate` heartbeats per second over `conns` keep-alive connections to `addr`,
    /// heartbeat `i` from node `i % nodes.len()` due at `start + i / rate`.
    pub fn start(
        addr: SocketAddr,
        nodes: &[NodeCred],
        digest: &str,
        rate: f64,
        conns: usize,
    ) -> Result<Load> {
        let targets: Arc<Vec<(String, HeaderValue)>> = Arc::new(
            nodes
                .iter()
                .map(|n| Ok((format!("/v1/nodes/{}/heartbeat", n.id), bearer(&n.secret)?)))
                .collect::<Result<_>>()?,
        );
        let silence = Arc::new(AtomicU8::new(LOUD));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now() + Duration::from_millis(200);
        let body = body(digest);
        let mut tasks = Vec::new();
        for j in 0..conns {
            let w = Worker {
                addr,
                targets: targets.clone(),
                silence: silence.clone(),
                stop: stop.clone(),
                start,
                rate,
                body: body.clone(),
            };
            tasks.push(tokio::spawn(w.run(j, conns)));
        }
        Ok(Load {
            targets: targets.len(),
            timeline: Arc::new(Mutex::new(vec![(0, BETWEEN)])),
            start,
            silence,
            stop,
            tasks,
            conns,
        })
    }

    /// How many nodes the load heartbeats for.
    pub fn targets(&self) -> usize {
        self.targets
    }

    pub fn set_phase(&self, p: usize) {
        let at = us_since(self.start, Instant::now());
        if let Ok(mut t) = self.timeline.lock() {
            t.push((at, p));
        }
    }

    /// Stops the load; returns the figures of phases `0..phases`.
    pub async fn finish(self, phases: usize) -> Vec<PhaseHb> {
        self.stop.store(true, Ordering::SeqCst);
        let timeline = self.timeline.lock().map(|t| t.clone()).unwrap_or_default();
        let phase_of = |due: u32| {
            let i = timeline.partition_point(|(at, _)| *at <= due);
            timeline[i.saturating_sub(1)].1
        };
        let mut per: Vec<Vec<Rec>> = vec![Vec::new(); phases];
        let mut firsts: Vec<[Option<String>; 3]> = vec![Default::default(); phases];
        for t in self.tasks {
            let Ok((recs, bad)) = t.await else {
                continue;
            };
            for r in recs {
                if let Some(v) = per.get_mut(phase_of(r.due_us)) {
                    v.push(r);
                }
            }
            for (due, outcome, text) in bad {
                if let Some(f) = firsts.get_mut(phase_of(due)) {
                    f[outcome as usize].get_or_insert(text);
                }
            }
        }
        per.into_iter()
            .zip(firsts)
            .map(|(recs, [_, non2xx, err])| summarize(recs, non2xx, err))
            .collect()
    }
}

fn summarize(
    mut recs: Vec<Rec>,
    first_non2xx: Option<String>,
    first_error: Option<String>,
) -> PhaseHb {
    recs.sort_unstable_by_key(|r| r.at_us);
    let answered: Vec<&Rec> = recs.iter().filter(|r| r.outcome != 2).collect();
    let gap_us = answered
        .windows(2)
        .map(|w| w[1].at_us - w[0].at_us)
        .max()
        .unwrap_or(0);
    let span = match (answered.first(), answered.last()) {
        (Some(a), Some(b)) if b.at_us > a.at_us => (b.at_us - a.at_us) as f64 / 1e6,
        _ => 0.0,
    };
    PhaseHb {
        answered: answered.len(),
        lat: Lat::of(
            answered
                .iter()
                .map(|r| Duration::from_micros(r.lat_us as u64))
                .collect(),
        ),
        gap_ms: gap_us as f64 / 1e3,
        non2xx: recs.iter().filter(|r| r.outcome == 1).count(),
        errors: recs.iter().filter(|r| r.outcome == 2).count(),
        first_non2xx,
        first_error,
        rate: if span > 0.0 {
            answered.len() as f64 / span
        } else {
            0.0
        },
    }
}

struct Worker {
    addr: SocketAddr,
    targets: Arc<Vec<(String, HeaderValue)>>,
    silence: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    start: Instant,
    rate: f64,
    body: Bytes,
}

impl Worker {
    /// One heartbeat on `conn` (connected first when `None`); `conn` is left `Some` only when
    /// it was reused and failed, or succeeded.
    async fn send(
        &self,
        conn: &mut Option<Conn>,
        path: &str,
        auth: &HeaderValue,
    ) -> Result<(StatusCode, Bytes)> {
        let fresh = conn.is_none();
        if fresh {
            *conn = Some(Conn::connect(self.addr).await?);
        }
        let c = conn
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no connection"))?;
        let req = c.request(Method::POST, path, Some(auth), Some(self.body.clone()))?;
        let res = c.send(req).await;
        if res.is_err() && fresh {
            *conn = None;
        }
        res
    }

    /// Connection `j` of `k`: heartbeats j, j+k, j+2k, ...; a failed send or connect drops
    /// that heartbeat (as an agent would) and reconnects for the next one.
    async fn run(self, j: usize, k: usize) -> WorkerOut {
        let (mut recs, mut bad_list) = (Vec::new(), Vec::<Bad>::new());
        let mut conn: Option<Conn> = None;
        let n = self.targets.len();
        for i in (j..).step_by(k) {
            let due = self.start + Duration::from_secs_f64(i as f64 / self.rate);
            tokio::time::sleep_until(due.into()).await;
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let node = i % n;
            if silent_in(self.silence.load(Ordering::SeqCst), node) {
                continue;
            }
            let (path, auth) = &self.targets[node];
            let mut res = self.send(&mut conn, path, auth).await;
            if res.is_err() && conn.take().is_some() {
                // A kept-alive connection the server had closed (e.g. across the restart):
                // retried at once on a new one, as HTTP clients do.
                res = self.send(&mut conn, path, auth).await;
            }
            let now = Instant::now();
            let (outcome, bad) = match res {
                Ok((st, _)) if st == StatusCode::OK => (0, None),
                Ok((st, b)) => (1, Some(format!("{st} {}", String::from_utf8_lossy(&b)))),
                Err(e) => {
                    conn = None;
                    (2, Some(format!("{e:#}")))
                }
            };
            let due_us = us_since(self.start, due);
            if let Some(text) = bad.filter(|_| bad_list.len() < 100) {
                bad_list.push((due_us, outcome, text));
            }
            recs.push(Rec {
                outcome,
                due_us,
                lat_us: us_since(due, now),
                at_us: us_since(self.start, now),
            });
        }
        (recs, bad_list)
    }
}
