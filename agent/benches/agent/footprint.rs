//! footprint: the agent's idle cost (RSS, CPU, threads) with 10 managed containers at a 10 s
//! heartbeat, side by side with Debian's prometheus-node-exporter scraped every 10 s (a
//! Prometheus-like load comparable to the agent's heartbeat).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::harness::{free_port, running, Agent, Proc, Registry, IMAGE};
use crate::stats::{
    clk_tck, cpu_ticks, file_rss_split, machine_busy_ticks, mem, mib, r3, table, thread_names, Mem,
    Summary,
};

pub const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

pub struct Config {
    pub window: Duration,
    pub containers: usize,
    pub heartbeat: Duration,
    pub scrape_every: Duration,
}

/// Counters of one process over the window.
#[derive(Default)]
struct Track {
    pid: u32,
    first: Mem,
    last: Mem,
    max_rss: u64,
    cpu0: u64,
    cpu1: u64,
}

impl Track {
    fn start(pid: u32) -> Result<Track> {
        let m = mem(pid)?;
        Ok(Track {
            pid,
            first: m,
            last: m,
            max_rss: m.rss_kib,
            cpu0: cpu_ticks(pid)?,
            cpu1: 0,
        })
    }

    fn sample(&mut self) -> Result<()> {
        let m = mem(self.pid)?;
        self.max_rss = self.max_rss.max(m.rss_kib);
        self.last = m;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.sample()?;
        self.cpu1 = cpu_ticks(self.pid)?;
        Ok(())
    }

    fn cpu_s(&self, tck: f64) -> f64 {
        self.cpu1.saturating_sub(self.cpu0) as f64 / tck
    }

    fn json(&self, tck: f64, wall: f64) -> Value {
        let (exe, libs) = file_rss_split(self.pid);
        json!({
            "rss_file_kib_own_executable": exe,
            "rss_file_kib_shared_libraries": libs,
            "pid": self.pid,
            "rss_kib": {"start": self.first.rss_kib, "max": self.max_rss, "end": self.last.rss_kib},
            "rss_anon_kib_end": self.last.anon_kib,
            "rss_file_kib_end": self.last.file_kib,
            "vm_hwm_kib": self.last.hwm_kib,
            "cpu_seconds": r3(self.cpu_s(tck)),
            "cpu_percent_of_one_core": r3(self.cpu_s(tck) / wall * 100.0),
            "threads": self.last.threads,
            "thread_names": thread_names(self.pid),
        })
    }
}

pub async fn run(cfg: &Config, tag: &str) -> Result<(Value, String)> {
    let reg = Registry::start(cfg.heartbeat).await?;
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
    let names: Vec<String> = (0..cfg.containers)
        .map(|k| format!("fp-{tag}-{k}"))
        .collect();
    let mut yaml = String::from("containers:\n");
    for n in &names {
        yaml.push_str(&format!(
            "  - {{name: {n}, image: '{IMAGE}', command: [sleep, '3600']}}\n"
        ));
    }
    let g = reg.put_spec(&agent.node_id, &yaml).await?;
    let st = agent.wait_generation(g, Duration::from_secs(60)).await?;
    let converged = st["resources"].as_array().map(Vec::len).unwrap_or(0);
    let not_running: Vec<&String> = names.iter().filter(|n| !running(n)).collect();
    if converged != cfg.containers || !not_running.is_empty() {
        return Err(agent.explain(anyhow::anyhow!(
            "the agent reported {converged} resources converged for {} wanted; not running: {not_running:?}",
            cfg.containers
        )));
    }
    eprintln!(
        "footprint: agent pid {} converged {} containers; starting node-exporter",
        agent.proc.pid(),
        cfg.containers
    );

    // node-exporter on a free loopback port, no systemd.
    let ne_dir = tempfile::tempdir()?;
    let mut ne = start_node_exporter(ne_dir.path()).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    if let Some((_, url)) = &ne {
        scrape(&http, url).await?; // warm-up: its first scrape allocates
    }
    // Let the agent finish the reconciles its own creates triggered, and send its status.
    agent
        .wait_idle(Duration::from_secs(1), Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let tck = clk_tck();
    let me = std::process::id();
    let mut a = Track::start(agent.proc.pid())?;
    let mut n = match &ne {
        Some((p, _)) => Some(Track::start(p.pid())?),
        None => None,
    };
    let (machine0, self0) = (machine_busy_ticks(), cpu_ticks(me)?);
    let t0 = Instant::now();
    let secs = cfg.window.as_secs();
    let mut scrapes: Vec<f64> = Vec::new();
    let mut scrape_bytes = 0usize;
    let mut beats: Vec<String> = Vec::new();
    eprintln!("footprint: sampling for {} s ...", cfg.window.as_secs_f64());
    for k in 0..=secs {
        let at = t0 + Duration::from_secs(k);
        tokio::time::sleep_until(at.into()).await;
        agent.proc.check_alive().map_err(|e| agent.explain(e))?;
        a.sample()?;
        if let (Some(t), Some((p, url))) = (n.as_mut(), ne.as_mut()) {
            p.check_alive()?;
            t.sample()?;
            if k < secs && k % cfg.scrape_every.as_secs().max(1) == 0 {
                let i = Instant::now();
                scrape_bytes = scrape(&http, url).await?;
                scrapes.push(i.elapsed().as_secs_f64() * 1e3);
            }
        }
        if let Ok(node) = reg.node(&agent.node_id).await {
            if let Some(hb) = node["last_heartbeat"].as_str() {
                if beats.last().map(String::as_str) != Some(hb) {
                    beats.push(hb.to_string());
                }
            }
        }
    }
    a.finish()?;
    if let Some(t) = n.as_mut() {
        t.finish()?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let machine_s = machine_busy_ticks().saturating_sub(machine0) as f64 / tck;
    let self_s = cpu_ticks(me)?.saturating_sub(self0) as f64 / tck;
    let others_s =
        (machine_s - a.cpu_s(tck) - n.as_ref().map(|t| t.cpu_s(tck)).unwrap_or(0.0) - self_s)
            .max(0.0);
    // The first value is the heartbeat before the window.
    let heartbeats = beats.len().saturating_sub(1);
    let cpus = std::thread::available_parallelism()
        .map(|x| x.get())
        .unwrap_or(1);

    let na = "n/a".to_string();
    let row = |label: &str, av: f64, nv: Option<f64>, fmt: &dyn Fn(f64) -> String| {
        vec![
            label.to_string(),
            fmt(av),
            nv.map(fmt).unwrap_or_else(|| na.clone()),
            nv.filter(|x| *x > 0.0)
                .map(|x| format!("{:.2}×", av / x))
                .unwrap_or_else(|| na.clone()),
        ]
    };
    let mb = |kib: f64| mib(kib as u64);
    let f2 = |x: f64| format!("{x:.2}");
    let f3 = |x: f64| format!("{x:.3}");
    let f0 = |x: f64| format!("{x:.0}");
    let nm = |f: &dyn Fn(&Track) -> f64| n.as_ref().map(f);
    let rows = vec![
        row(
            "RSS at start MiB",
            a.first.rss_kib as f64,
            nm(&|t| t.first.rss_kib as f64),
            &mb,
        ),
        row(
            "RSS max MiB",
            a.max_rss as f64,
            nm(&|t| t.max_rss as f64),
            &mb,
        ),
        row(
            "RSS at end MiB",
            a.last.rss_kib as f64,
            nm(&|t| t.last.rss_kib as f64),
            &mb,
        ),
        row(
            "  anonymous (RssAnon) at end MiB",
            a.last.anon_kib as f64,
            nm(&|t| t.last.anon_kib as f64),
            &mb,
        ),
        row(
            "  file-backed (RssFile) at end MiB",
            a.last.file_kib as f64,
            nm(&|t| t.last.file_kib as f64),
            &mb,
        ),
        row(
            "  mappings of its executable (smaps Rss) MiB",
            file_rss_split(a.pid).0 as f64,
            nm(&|t| file_rss_split(t.pid).0 as f64),
            &mb,
        ),
        row(
            "  mappings of shared libraries (smaps Rss) MiB",
            file_rss_split(a.pid).1 as f64,
            nm(&|t| file_rss_split(t.pid).1 as f64),
            &mb,
        ),
        row(
            "peak RSS since process start (VmHWM) MiB",
            a.last.hwm_kib as f64,
            nm(&|t| t.last.hwm_kib as f64),
            &mb,
        ),
        row(
            "CPU seconds over the window",
            a.cpu_s(tck),
            nm(&|t| t.cpu_s(tck)),
            &f3,
        ),
        row(
            "CPU % of one core",
            a.cpu_s(tck) / wall * 100.0,
            nm(&|t| t.cpu_s(tck) / wall * 100.0),
            &f2,
        ),
        row(
            "threads",
            a.last.threads as f64,
            nm(&|t| t.last.threads as f64),
            &f0,
        ),
    ];
    let ratio_max = n.as_ref().map(|t| a.max_rss as f64 / t.max_rss as f64);
    let sc = Summary::of(&scrapes);
    let mut text = format!(
        "footprint: idle over {wall:.0} s (1 sample/s), {} managed containers, heartbeat {} \
         (heartbeats the registry saw in the window: {heartbeats})\n",
        cfg.containers,
        humantime::format_duration(cfg.heartbeat),
    );
    match &ne {
        Some(_) => text.push_str(&format!(
            "node-exporter: {NODE_EXPORTER}, default collectors, scraped (GET /metrics) every {} s \
             during the window: {} scrapes, median {:.1} ms, {} KiB each\n\n",
            cfg.scrape_every.as_secs(),
            sc.n,
            sc.median,
            scrape_bytes / 1024
        )),
        None => text.push_str(&format!(
            "node-exporter: {NODE_EXPORTER} is missing (apt-get install -y prometheus-node-exporter); agent only\n\n"
        )),
    }
    text.push_str(&table(
        &["", "steward-agent", "node-exporter", "agent/node-exporter"],
        &rows,
    ));
    if let Some(r) = ratio_max {
        text.push_str(&format!(
            "ratio of max RSS agent/node-exporter: {r:.2}× (goal ≤ 0.5×: {})\n",
            if r <= 0.5 { "met" } else { "NOT met" }
        ));
    }
    text.push_str(&format!("agent threads: {}\n", thread_names(a.pid)));
    text.push_str(&format!(
        "other CPU on the machine during the window (not agent, node-exporter or this bench): \
         {:.1}% of one core ({cpus} CPUs); this bench: {:.2}%\n",
        others_s / wall * 100.0,
        self_s / wall * 100.0
    ));

    let j = json!({
        "window_seconds": r3(wall),
        "containers": cfg.containers,
        "heartbeat_seconds": cfg.heartbeat.as_secs(),
        "heartbeats_in_window": heartbeats,
        "clk_tck": tck,
        "agent": a.json(tck, wall),
        "node_exporter": n.as_ref().map(|t| {
            let mut v = t.json(tck, wall);
            v["scrape_every_seconds"] = json!(cfg.scrape_every.as_secs());
            v["scrapes"] = json!(sc.n);
            v["scrape_ms"] = sc.json();
            v["scrape_bytes"] = json!(scrape_bytes);
            v
        }),
        "ratio_max_rss": ratio_max.map(r3),
        "goal_ratio": 0.5,
        "other_cpu_percent_of_one_core": r3(others_s / wall * 100.0),
        "bench_cpu_percent_of_one_core": r3(self_s / wall * 100.0),
    });
    drop(ne.take());
    Ok((j, text))
}

/// Starts node-exporter on a free loopback port and waits until /metrics answers; `None` when
/// it is not installed.
async fn start_node_exporter(dir: &Path) -> Result<Option<(Proc, String)>> {
    if !Path::new(NODE_EXPORTER).exists() {
        eprintln!(
            "footprint: {NODE_EXPORTER} is missing; install it with \
             `apt-get install -y prometheus-node-exporter` for the comparison"
        );
        return Ok(None);
    }
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("node-exporter.log"))?;
    let child = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting prometheus-node-exporter")?;
    let mut p = Proc {
        child: Some(child),
        what: "prometheus-node-exporter",
    };
    let url = format!("http://127.0.0.1:{port}/metrics");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        p.check_alive()?;
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(Some((p, url)));
        }
        if Instant::now() > deadline {
            bail!("node-exporter did not answer {url} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One scrape; the body's size.
async fn scrape(http: &reqwest::Client, url: &str) -> Result<usize> {
    let resp = http.get(url).send().await?;
    let st = resp.status();
    let body = resp.bytes().await?;
    if !st.is_success() {
        bail!("GET {url}: HTTP {st}");
    }
    Ok(body.len())
}
