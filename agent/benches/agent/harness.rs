//! The processes a bench drives: the release registry and agent binaries, the Docker engine
//! through its CLI (independently of the agent), `docker events`, and clean-up guards.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

pub const IMAGE: &str = "steward-test/busybox:1";

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Nanoseconds since the epoch of `t` (CLOCK_REALTIME, like Docker's TimeNano).
pub fn epoch_ns(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// A short random tag for container names, so concurrent runs never collide.
pub fn tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xffffff)
}

/// `docker <args>`; its trimmed stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running the docker CLI")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Force-removes every container (running or not) matching a `docker ps` filter.
pub fn remove_matching(filter: &str) {
    let Ok(ids) = docker(&["ps", "-aq", "--filter", filter]) else {
        return;
    };
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        let _ = docker(&args);
    }
}

/// Whether a container of that name exists and runs.
pub fn running(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", name]).is_ok_and(|s| s == "true")
}

pub fn exists(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.Id}}", name]).is_ok()
}

/// Removes every container whose name holds `-<tag>-` when dropped (also on panic). Declare it
/// before the agent so that the agent is killed first and cannot recreate them.
pub struct Sweep {
    pub tag: String,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        remove_matching(&format!("name=-{}-", self.tag));
    }
}

/// `<target>/bench-results`: the target dir is the ancestor of this executable that holds
/// cargo's CACHEDIR.TAG (or CARGO_TARGET_DIR).
pub fn results_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            exe.ancestors()
                .find(|a| a.join("CACHEDIR.TAG").exists())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("bench-results")
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub what: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("{} exited unexpectedly: {st}", self.what);
            }
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every `every` until it returns Some; fails after `limit` with `what`.
pub async fn poll<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// The registry binary built next to this bench (target/release/steward-registry).
pub fn registry_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot locate the target dir from {}", exe.display()))?;
    let p = dir.join("steward-registry");
    if !p.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p steward-registry` \
             (cargo bench only builds the agent's own binary; building from inside the bench \
             would wait on cargo's build-directory lock)",
            p.display()
        );
    }
    Ok(p)
}

/// Warns when a registry source file is newer than the registry binary (a stale build).
pub fn registry_staleness(bin: &Path) -> Option<String> {
    let built = std::fs::metadata(bin).ok()?.modified().ok()?;
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../registry/src"));
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![src];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                    newest = Some((m, p));
                }
            }
        }
    }
    let (t, p) = newest?;
    (t > built).then(|| {
        format!(
            "WARNING: {} is newer than {}: run `cargo build --release -p steward-registry`",
            p.display(),
            bin.display()
        )
    })
}

pub struct Registry {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub http: reqwest::Client,
}

impl Registry {
    pub async fn start(heartbeat: Duration) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(registry_bin()?)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--heartbeat-interval")
            .arg(humantime::format_duration(heartbeat).to_string())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting steward-registry")?;
        let mut r = Registry {
            proc: Proc {
                child: Some(child),
                what: "steward-registry",
            },
            port,
            dir,
            admin: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            r.proc.check_alive()?;
            let ok = r.http.get(r.url("/healthz")).send().await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the registry did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r.admin = std::fs::read_to_string(r.dir.path().join("data/admin.token"))?
            .trim()
            .to_string();
        Ok(r)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn enrollment_token(&self) -> Result<String> {
        let resp = self
            .http
            .post(self.url("/v1/enrollment-tokens"))
            .bearer_auth(&self.admin)
            .json(&json!({"uses": 1, "description": "steward-agent bench"}))
            .send()
            .await?;
        let st = resp.status();
        let v: Value = resp.json().await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("POST /v1/enrollment-tokens: HTTP {st}: {v}"))
    }

    /// `PUT /v1/nodes/{id}/spec` with a YAML body; the new generation.
    pub async fn put_spec(&self, node: &str, yaml: &str) -> Result<u64> {
        let resp = self
            .http
            .put(self.url(&format!("/v1/nodes/{node}/spec")))
            .bearer_auth(&self.admin)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await?;
        let st = resp.status();
        let v: Value = resp.json().await?;
        if !st.is_success() {
            bail!("spec refused: HTTP {st}: {v}");
        }
        v["generation"]
            .as_u64()
            .ok_or_else(|| anyhow!("no generation in {v}"))
    }

    pub async fn node(&self, id: &str) -> Result<Value> {
        Ok(self
            .http
            .get(self.url(&format!("/v1/nodes/{id}")))
            .bearer_auth(&self.admin)
            .send()
            .await?
            .json()
            .await?)
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.dir.path().join("registry.log"), n)
    }
}

/// The last `n` lines of a file, without ANSI colours.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| strip_ansi(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The agent binary: cargo's release build of this package, or `STEWARD_BENCH_AGENT` (to compare
/// another build of it).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("STEWARD_BENCH_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_steward-agent")))
}

pub struct Agent {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub node_id: String,
}

impl Agent {
    /// Starts the release agent against `reg` with a fresh enrollment token and waits until it
    /// has enrolled and reconciled an empty spec (generation 1, written here).
    pub async fn start(reg: &Registry) -> Result<Agent> {
        let dir = tempfile::tempdir()?;
        let token = reg.enrollment_token().await?;
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "registry = \"{}\"\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\nresync_interval = \"30s\"\n",
                reg.url(""),
                dir.path().join("state").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let child = Command::new(agent_bin())
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting steward-agent")?;
        let mut a = Agent {
            proc: Proc {
                child: Some(child),
                what: "steward-agent",
            },
            dir,
            node_id: String::new(),
        };
        let idfile = a.dir.path().join("state/node.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let node: Value = loop {
            a.proc.check_alive().map_err(|e| a.explain(e))?;
            if let Some(v) = std::fs::read(&idfile)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                break v;
            }
            if Instant::now() > deadline {
                return Err(a.explain(anyhow!("the agent did not enrol within 30 s")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        a.node_id = node["node_id"]
            .as_str()
            .ok_or_else(|| anyhow!("node.json without node_id: {node}"))?
            .to_string();
        let g = reg.put_spec(&a.node_id, "containers: []\n").await?;
        a.wait_generation(g, Duration::from_secs(30)).await?;
        Ok(a)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// `e` with the tail of the agent's log, which is kept as
    /// `<target>/bench-results/agent-failure.log` (its temporary dir goes away).
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let kept = results_dir().join("agent-failure.log");
        let saved = std::fs::create_dir_all(results_dir())
            .and_then(|_| std::fs::copy(self.log_path(), &kept))
            .is_ok();
        anyhow!(
            "{e:#}\n--- last lines of the agent's log{} ---\n{}",
            if saved {
                format!(" (all of it: {})", kept.display())
            } else {
                String::new()
            },
            tail(&self.log_path(), 25)
        )
    }

    /// The agent's own status file (written after every reconcile).
    pub fn status(&self) -> Option<Value> {
        let b = std::fs::read(self.dir.path().join("state/status.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Waits until the agent reports generation `g` reconciled with every resource converged;
    /// returns the status.
    pub async fn wait_generation(&mut self, g: u64, limit: Duration) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            self.proc.check_alive().map_err(|e| self.explain(e))?;
            if let Some(st) = self.status() {
                if st["observed_generation"].as_u64() >= Some(g) {
                    let bad: Vec<&Value> = st["resources"]
                        .as_array()
                        .map(|a| a.iter().filter(|r| r["state"] != "converged").collect())
                        .unwrap_or_default();
                    if bad.is_empty() {
                        return Ok(st);
                    }
                    if Instant::now() > deadline {
                        return Err(self.explain(anyhow!(
                            "the agent reconciled generation {g} but did not converge: {bad:?}"
                        )));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(self.explain(anyhow!(
                    "the agent did not reconcile generation {g} within {limit:?} (status: {:?})",
                    self.status().map(|s| s["observed_generation"].clone())
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the agent's log has not grown for `quiet` (the agent is idle: no reconcile
    /// pending after the events of the last change), at most `limit`.
    pub async fn wait_idle(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let size = || {
            std::fs::metadata(self.log_path())
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let (mut last, mut since) = (size(), Instant::now());
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s = size();
            if s != last {
                (last, since) = (s, Instant::now());
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.kill();
        if !self.node_id.is_empty() {
            remove_matching(&format!("label=io.steward.node={}", self.node_id));
        }
    }
}

/// A container event seen on the engine's event stream.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    /// The engine's own timestamp of the event (TimeNano), ns since the epoch.
    pub engine_ns: i128,
    /// When this process read the line, ns since the epoch.
    pub arrived_ns: i128,
}

/// (action, container name) → its first event.
type Seen = Arc<(Mutex<HashMap<(String, String), Start>>, Condvar)>;

/// `docker events` for container creates and starts, read by a thread into a map.
pub struct Events {
    proc: Proc,
    seen: Seen,
}

impl Events {
    /// Subscribes and makes sure the subscription is live (a probe container's start is seen).
    pub fn subscribe(tag: &str) -> Result<Events> {
        let mut child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=create",
                "--filter",
                "event=start",
                "--format",
                "{{.Action}} {{.Actor.Attributes.name}} {{.TimeNano}}",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting `docker events`")?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from docker events"))?;
        let seen: Seen = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let arrived_ns = epoch_ns(SystemTime::now());
                let Ok(line) = line else { break };
                let mut f = line.split_whitespace();
                let (Some(action), Some(name), Some(ns)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                let Ok(engine_ns) = ns.parse::<i128>() else {
                    continue;
                };
                let (m, cv) = &*s2;
                if let Ok(mut m) = m.lock() {
                    m.entry((action.to_string(), name.to_string()))
                        .or_insert(Start {
                            engine_ns,
                            arrived_ns,
                        });
                    cv.notify_all();
                }
            }
        });
        let ev = Events {
            proc: Proc {
                child: Some(child),
                what: "docker events",
            },
            seen,
        };
        // The subscription is live once a start made after it shows up.
        for i in 0..10 {
            let probe = format!("probe-{tag}-{i}");
            docker(&["run", "-d", "--name", &probe, IMAGE, "true"])?;
            let got = ev.wait(&probe, Duration::from_secs(2));
            let _ = docker(&["rm", "-f", &probe]);
            if got.is_some() {
                return Ok(ev);
            }
        }
        bail!("`docker events` never reported a container start")
    }

    /// The first start of container `name`, waiting at most `limit`.
    pub fn wait(&self, name: &str, limit: Duration) -> Option<Start> {
        let key = ("start".to_string(), name.to_string());
        let deadline = Instant::now() + limit;
        let (m, cv) = &*self.seen;
        let mut g = m.lock().ok()?;
        loop {
            if let Some(s) = g.get(&key) {
                return Some(*s);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            g = cv.wait_timeout(g, left).ok()?.0;
        }
    }

    /// The create event of `name`, if seen (it precedes the start on the stream).
    pub fn created(&self, name: &str) -> Option<Start> {
        let key = ("create".to_string(), name.to_string());
        self.seen.0.lock().ok()?.get(&key).copied()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// Removes ANSI escape sequences (colours) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for c in it.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One line of the agent's log: its timestamp (ns since the epoch) and its text.
pub struct LogLine {
    pub ns: i128,
    pub text: String,
}

/// The agent's log lines with a parseable timestamp.
pub fn read_log(path: &Path) -> Vec<LogLine> {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    s.lines()
        .filter_map(|l| {
            let l = strip_ansi(l);
            let (ts, rest) = l.trim_start().split_once(' ')?;
            let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
            Some(LogLine {
                ns: t.timestamp_nanos_opt()? as i128,
                text: rest.to_string(),
            })
        })
        .collect()
}

/// The value of `key=` in a tracing line (up to the next space), without quotes.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let i = text.find(&pat)? + pat.len();
    let v = text[i..].split(' ').next()?;
    Some(v.trim_matches('"'))
}

/// A Debug-printed Duration (`12.3ms`, `850µs`, `1.2s`, `900ns`) in milliseconds.
pub fn debug_duration_ms(s: &str) -> Option<f64> {
    for (unit, f) in [
        ("ms", 1.0),
        ("µs", 1e-3),
        ("us", 1e-3),
        ("ns", 1e-6),
        ("s", 1e3),
    ] {
        if let Some(n) = s.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|x| x * f);
        }
    }
    None
}
