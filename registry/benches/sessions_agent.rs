//! Sessions with a real agent and the real Docker engine, side by side in one run with the same
//! containers started by hand with `docker run -d`:
//!
//! 1. one session (busybox `httpd` on a published host port, plus a `sleep` container): create →
//!    its endpoint answers HTTP 200, and create → `state: running`; by hand: two `docker run -d`
//!    → the endpoint answers, → both returned. Median of N (10, quick 3), alternating. The
//!    endpoint is probed every 20 ms once Docker reports the container started (`docker
//!    events`), and again with probes from t0: a probe that reaches the port while Docker still
//!    sets the container's network up stalls the first answer by ~1 s, on both sides alike.
//! 2. a hot spare claimed (template `spares: 1`): POST → its endpoint answers HTTP 200, median
//!    of N claims (each waits for the next spare to run first); beside part 1's by-hand figure.
//! 3. many conference sessions on one host (150, quick 30; two containers each): create all →
//!    all `running`; the agent's RSS and CPU while they run; `stewardctl sessions list`; end all →
//!    the agent removed every container. By hand: the same containers with `docker run -d` in a
//!    loop, `docker ps`, one `docker rm -f`.
//!
//! `cargo build --release -p steward-agent && cargo bench -p steward-registry --bench
//! sessions_agent [-- --quick]`. Needs root (the agent runs under `unshare`), a Docker engine
//! and the image `steward-test/busybox:1` (`scripts/test-image.sh`). Figures are only reported.
//! The registry runs with `--heartbeat-interval 1s`: the agent reports status on heartbeats.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

const IMAGE: &str = "steward-test/busybox:1";
/// On every container this bench makes (steward's and by hand): what the cleanup removes.
const LABEL: &str = "steward-bench=sessions_agent";
/// The registry's session port range; by-hand containers publish from `HAND_PORTS`.
const PORTS: &str = "14000-14999";
const HAND_PORTS: u16 = 15_000;
const POLL: Duration = Duration::from_millis(20);
/// Polling while many sessions start or end.
const SLOW: Duration = Duration::from_millis(250);

/// A child process with its temporary dir; killed when dropped.
struct Proc {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` with its stdout in `dir/out` and its stderr in `dir/log` (`RUST_LOG=level`).
fn spawn(cmd: &mut Command, dir: tempfile::TempDir, level: &str) -> Proc {
    let file = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let cmd = cmd
        .env("RUST_LOG", level)
        .stdout(file("out"))
        .stderr(file("log"));
    let child = cmd.spawn().unwrap();
    Proc { child, dir }
}

/// The registry, the client probing endpoints, and the container starts Docker reports.
struct Bench {
    _registry: Proc,
    url: String,
    admin: String,
    client: reqwest::Client,
    web: reqwest::Client,
    starts: Proc,
}

async fn start() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    let text = format!("[sessions]\nmax_live = 100000\nports = \"{PORTS}\"\n");
    std::fs::write(&cfg, text).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_steward-registry"));
    cmd.args(["serve", "--listen", &url[7..], "--heartbeat-interval", "1s"]);
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    let registry = spawn(&mut cmd, dir, "warn");
    let client = reqwest::Client::new();
    let healthy = || {
        let resp = client.get(format!("{url}/healthz")).send();
        async { resp.await.is_ok_and(|r| r.status().is_success()) }
    };
    until(Instant::now(), 30, POLL, "the registry to start", healthy).await;
    let admin = std::fs::read_to_string(registry.dir.path().join("data/admin.token")).unwrap();
    let web = reqwest::Client::builder().pool_max_idle_per_host(0);
    let mut events = Command::new("docker");
    events.args(["events", "--filter", &format!("label={LABEL}"), "--filter"]);
    events.args(["event=start", "--format", "{{.Actor.Attributes.name}}"]);
    Bench {
        _registry: registry,
        url,
        admin: admin.trim().to_string(),
        client,
        web: web.timeout(Duration::from_secs(2)).build().unwrap(),
        starts: spawn(&mut events, tempfile::tempdir().unwrap(), ""),
    }
}

/// `steward-agent` next to this bench's executable (`target/release`).
fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("steward-agent");
    let hint = "build it first with `cargo build --release -p steward-agent`";
    assert!(p.exists(), "{} is missing: {hint}", p.display());
    p
}

/// The real agent, enrolled, in a private mount namespace (its own /etc/machine-id), with the
/// default resync and long-poll settings. `unshare` without `--fork` and `sh -c 'exec …'` keep
/// the child's pid: `child.id()` is the agent's.
async fn start_agent(url: &str, token: &str) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = (dir.path().join("agent.toml"), dir.path().join("state"));
    let text = format!(
        "registry = \"{url}\"\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\n\
         metrics_listen = \"off\"\n",
        state.display()
    );
    std::fs::write(&config, text).unwrap();
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, format!("{}\n", uuid::Uuid::new_v4().simple())).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"]);
    cmd.arg("mount --bind \"$0\" /etc/machine-id && exec \"$@\"");
    cmd.arg(machine_id)
        .arg(agent_bin())
        .arg("--config")
        .arg(config)
        .arg("run");
    let agent = spawn(&mut cmd, dir, "info");
    let enrolled = || {
        let v: Option<Value> = std::fs::read(state.join("node.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        async move { v.is_some_and(|v| v["node_id"].is_string()) }
    };
    until(Instant::now(), 30, POLL, "the agent to enrol", enrolled).await;
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", agent.child.id()));
    let pid_ok = comm.is_ok_and(|c| c.trim() == "steward-agent");
    assert!(pid_ok, "the agent's pid");
    agent
}

impl Proc {
    fn proc(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap()
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = self.proc("status");
        let kib = |key: &str| -> f64 {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    /// utime + stime, in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = self.proc("stat");
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK);
        ticks / hz.ok().flatten().unwrap_or(100) as f64
    }
}

fn docker<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "docker: {err}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// How many of this bench's containers there are (`extra`: one more filter).
fn count(extra: &str) -> usize {
    let label = format!("label={LABEL}");
    let ps = docker(&["ps", "-aq", "--filter", &label, "--filter", extra]);
    ps.lines().count()
}

/// Removes every container this bench made (by label, and the by-hand ones by name).
fn cleanup() {
    let mut ids = String::new();
    for f in [format!("label={LABEL}"), "name=^bench-hand-".into()] {
        let ps = Command::new("docker")
            .args(["ps", "-aq", "--filter", &f])
            .output();
        let out = ps.map(|o| o.stdout).unwrap_or_default();
        ids.push_str(&String::from_utf8_lossy(&out));
    }
    let mut ids: Vec<&str> = ids.split_whitespace().collect();
    ids.sort_unstable();
    ids.dedup();
    if !ids.is_empty() {
        drop(Command::new("docker").args(["rm", "-f"]).args(ids).output());
    }
}

/// Cleans up when dropped: made before the agent, so dropped after it (on a panic too).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Polls every `every` until `done` (hang guard: `secs`); the seconds since `t`.
async fn until<F, Fut>(t: Instant, secs: u64, every: Duration, what: &str, mut done: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !done().await {
        assert!(t.elapsed().as_secs() < secs, "{what}: not in {secs} s");
        tokio::time::sleep(every).await;
    }
    t.elapsed().as_secs_f64()
}

fn port_of(s: &Value) -> u16 {
    s["allocations"]["ports"]["http"].as_u64().unwrap() as u16
}

/// `docker run -d` of session `i`'s two containers by hand.
fn hand_run(i: usize, port: u16) {
    let web = format!("bench-hand-web-{i}");
    let back = format!("bench-hand-back-{i}");
    let publish = format!("{port}:80");
    let common = ["run", "-d", "--label", LABEL, "--name"];
    let httpd = ["httpd", "-f", "-p", "80", "-h", "/www"];
    docker(&[&common[..], &[&web, "-p", &publish, IMAGE], &httpd].concat());
    docker(&[&common[..], &[&back, IMAGE, "sleep", "3600"]].concat());
}

impl Bench {
    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let mut rb = self.client.request(method, url).bearer_auth(&self.admin);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let st = resp.status().as_u16();
        (st, resp.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (st, v) = self.req(method, path, body).await;
        assert!((200..300).contains(&st), "{path}: {st} {v}");
        v
    }

    async fn create(&self) -> Value {
        let body = json!({"template": "conf", "owner": "bench"});
        self.send(Method::POST, "/v1/sessions", Some(body)).await
    }

    async fn answers(&self, port: u16) -> bool {
        let resp = self.web.get(format!("http://127.0.0.1:{port}/")).send();
        resp.await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    }

    fn started(&self, name: &str) -> bool {
        let names = std::fs::read_to_string(self.starts.dir.path().join("out"));
        names.is_ok_and(|n| n.lines().any(|l| l == name))
    }

    /// Seconds from `t` until container `name`'s endpoint on `port` answers 200, probed every
    /// 20 ms from `t` (`early`) or once Docker reported `name` started.
    async fn endpoint(&self, name: &str, port: u16, t: Instant, early: bool) -> f64 {
        let ready = || async { (early || self.started(name)) && self.answers(port).await };
        until(t, 120, POLL, name, ready).await
    }

    /// Ends `ids`; waits until the agent removed all their containers (polling every `every`).
    async fn end_all(&self, ids: &[String], every: Duration) -> f64 {
        let t = Instant::now();
        for id in ids {
            let path = format!("/v1/sessions/{id}");
            self.send(Method::DELETE, &path, None).await;
        }
        let gone = || async { count("label=io.steward.session") == 0 };
        until(t, 600, every, "the agent to remove the containers", gone).await
    }

    /// One session: (create → endpoint answers 200, create → `running`), in seconds.
    async fn steward_once(&self, early: bool) -> (f64, f64) {
        let t = Instant::now();
        let s = self.create().await;
        let (id, port) = (s["id"].as_str().unwrap().to_string(), port_of(&s));
        let path = format!("/v1/sessions/{id}");
        let running = || async {
            let s = self.send(Method::GET, &path, None).await;
            assert_ne!(s["state"], "failed", "{s}");
            s["state"] == "running"
        };
        let name = format!("web-{id}");
        let (http, running) = tokio::join!(
            self.endpoint(&name, port, t, early),
            until(t, 120, POLL, "the session to run", running)
        );
        self.end_all(&[id], Duration::from_millis(100)).await;
        (http, running)
    }

    /// By hand: (endpoint answers 200, both `docker run -d` returned), in seconds.
    async fn hand_once(&self, i: usize, early: bool) -> (f64, f64) {
        let port = HAND_PORTS + i as u16;
        let t = Instant::now();
        let run = tokio::task::spawn_blocking(move || {
            hand_run(i, port);
            t.elapsed().as_secs_f64()
        });
        let name = format!("bench-hand-web-{i}");
        let http = self.endpoint(&name, port, t, early).await;
        let ran = run.await.unwrap();
        cleanup();
        (http, ran)
    }
}

impl Bench {
    /// The ids of `template`'s spares in state running.
    async fn running_spares(&self, template: &str) -> Vec<String> {
        let path = format!("/v1/sessions?template={template}&state=running");
        let list = self.send(Method::GET, &path, None).await;
        (list.as_array().unwrap().iter())
            .filter(|s| s["spare"] == true)
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// `n` claims of a spare of a copy of `conf` with `spares: 1`: seconds from each POST until
    /// the claimed session's endpoint answers 200 (each once the next spare runs). Ends them all
    /// and sets the copy's spares to 0 after.
    async fn spare_claims(&self, n: usize, conf: &Value) -> Vec<f64> {
        let mut t = conf.clone();
        t["spares"] = json!(1);
        self.send(Method::PUT, "/v1/templates/spare", Some(t.clone()))
            .await;
        let (mut took, mut ids) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let ready = || async { !self.running_spares("spare").await.is_empty() };
            until(Instant::now(), 120, POLL, "a running spare", ready).await;
            let t0 = Instant::now();
            let body = json!({"template": "spare", "owner": "bench"});
            let s = self.send(Method::POST, "/v1/sessions", Some(body)).await;
            assert_eq!(
                s["state"], "running",
                "a claim answers with a running spare: {s}"
            );
            let port = port_of(&s);
            took.push(
                until(
                    t0,
                    30,
                    Duration::from_millis(1),
                    "the claimed endpoint",
                    || self.answers(port),
                )
                .await,
            );
            ids.push(s["id"].as_str().unwrap().to_string());
        }
        t["spares"] = json!(0);
        self.send(Method::PUT, "/v1/templates/spare", Some(t)).await;
        ids.extend(self.running_spares("spare").await);
        let path = "/v1/sessions?template=spare&state=pending";
        let pending = self.send(Method::GET, path, None).await;
        ids.extend(
            (pending.as_array().unwrap().iter()).map(|s| s["id"].as_str().unwrap().to_string()),
        );
        self.end_all(&ids, SLOW).await;
        took
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

/// Median wall time of 3 runs of `cmd` (stdout discarded).
fn time_cmd(cmd: &mut Command) -> f64 {
    let mut v = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let st = cmd.stdout(Stdio::null()).status().unwrap();
        assert!(st.success(), "{cmd:?}: {st}");
        v.push(t.elapsed().as_secs_f64());
    }
    median(v)
}

fn cmp(what: String, s: f64, h: f64, unit: &str) -> [String; 4] {
    let f = |v: f64| format!("{v:.3} {unit}");
    [what, f(s), f(h), format!("{:.2}x", s / h)]
}

fn one(what: String, s: String) -> [String; 4] {
    [what, s, "-".into(), "-".into()]
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let (n, sessions, window) = if quick { (3, 30, 30) } else { (10, 150, 30) };
    let c = 2 * sessions;
    let agent_path = agent_bin();
    let ok = Command::new("docker").arg("info").output();
    let hint = "no Docker engine answers `docker info`: run `bash scripts/docker-up.sh`";
    assert!(ok.is_ok_and(|o| o.status.success()), "{hint}");
    let hint = format!("image {IMAGE} is missing: run `bash scripts/test-image.sh`");
    assert!(!docker(&["images", "-q", IMAGE]).is_empty(), "{hint}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("sessions_agent: {n} single sessions, {sessions} sessions ({c} containers) on one host; {cpus} CPU(s) shared by registry, agent, dockerd and the bench; registry heartbeat 1s; agent {}", agent_path.display());
    cleanup();
    let _cleanup = Cleanup;
    let b = start().await;
    let tok = b.send(Method::POST, "/v1/enrollment-tokens", Some(json!({})));
    let agent = start_agent(&b.url, tok.await["token"].as_str().unwrap()).await;
    let label = json!({"steward-bench": "sessions_agent"});
    let template = json!({"ports": ["http"], "per_owner": 100_000, "ttl": "1h",
        "spec": {"containers": [
            {"name": "web-{{session}}", "image": IMAGE, "labels": label, "ports": ["{{port.http}}:80"],
             "command": ["httpd"], "args": ["-f", "-p", "80", "-h", "/www"]},
            {"name": "back-{{session}}", "image": IMAGE, "labels": label,
             "command": ["sleep"], "args": ["3600"]}]}});
    b.send(Method::PUT, "/v1/templates/conf", Some(template.clone()))
        .await;

    // Warm-up (not counted): the node becomes ready, the image and engine paths are warm.
    let t = Instant::now();
    let s = loop {
        let body = json!({"template": "conf", "owner": "bench"});
        let (st, v) = b.req(Method::POST, "/v1/sessions", Some(body)).await;
        if st == 201 {
            break v;
        }
        assert!(st == 409 && t.elapsed().as_secs() < 60, "create: {st} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let warm = || b.answers(port_of(&s));
    until(t, 120, POLL, "the warm-up session to answer", warm).await;
    b.end_all(&[s["id"].as_str().unwrap().to_string()], SLOW)
        .await;
    b.hand_once(999, false).await;

    // 1. One session vs two `docker run -d`, alternating; the endpoint probed two ways.
    let (mut s_http, mut h_http) = ([vec![], vec![]], [vec![], vec![]]);
    let (mut s_run, mut h_ran) = (vec![], vec![]);
    for i in 0..n {
        for early in [false, true] {
            let (a, b2) = b.steward_once(early).await;
            let (c, d) = b.hand_once(2 * i + usize::from(early), early).await;
            let how = if early { "from t0" } else { "once started" };
            println!("  {i} probed {how}: session http {a:.3}s, running {b2:.3}s | by hand: http {c:.3}s, runs returned {d:.3}s");
            s_http[usize::from(early)].push(a);
            h_http[usize::from(early)].push(c);
            s_run.push(b2);
            h_ran.push(d);
        }
    }

    // 2. A hot spare claimed: POST -> its endpoint answers.
    let spare_http = median(b.spare_claims(n, &template).await);

    // 3. Many sessions on one host.
    let (rss_idle, _) = agent.rss_mib();
    let cpu0 = agent.cpu_secs();
    let t = Instant::now();
    let (mut ids, mut ports) = (Vec::new(), Vec::new());
    for _ in 0..sessions {
        let s = b.create().await;
        ids.push(s["id"].as_str().unwrap().to_string());
        ports.push(port_of(&s));
    }
    let created = t.elapsed().as_secs_f64();
    let all_up = || async { count("status=running") == c };
    let in_docker = until(t, 900, SLOW, "session containers running", all_up).await;
    let listed = || async {
        let l = b.send(Method::GET, "/v1/sessions?state=running", None);
        l.await.as_array().unwrap().len() == sessions
    };
    let all_running = until(t, 900, SLOW, "sessions running", listed).await;
    let ramp_cpu = (agent.cpu_secs() - cpu0) / all_running * 100.0;
    let mut answering = 0;
    for p in &ports {
        answering += usize::from(b.answers(*p).await);
    }
    let cpu0 = agent.cpu_secs();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let cpu = (agent.cpu_secs() - cpu0) / window as f64 * 100.0;
    let (rss, hwm) = agent.rss_mib();
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_stewardctl"));
    ctl.args(["--registry", &b.url, "sessions", "list"]);
    let ctl = time_cmd(ctl.env("STEWARD_TOKEN", &b.admin));
    let ended = b.end_all(&ids, SLOW).await;
    drop(agent);

    let t = Instant::now();
    for i in 0..sessions {
        hand_run(i, HAND_PORTS + i as u16);
    }
    let h_all = until(t, 900, SLOW, "by-hand containers running", all_up).await;
    let filter = format!("label={LABEL}");
    let h_ps = time_cmd(Command::new("docker").args(["ps", "--filter", &filter]));
    let t = Instant::now();
    let ids = docker(&["ps", "-aq", "--filter", &filter]);
    docker(&[&["rm", "-f"][..], &ids.lines().collect::<Vec<_>>()].concat());
    let h_rm = t.elapsed().as_secs_f64();

    let [sh, sh0] = s_http.map(median);
    let [hh, hh0] = h_http.map(median);
    #[rustfmt::skip]
    let rows = [
        ["what".into(), "steward".into(), "by hand".into(), "ratio".into()],
        cmp(format!("1 session: endpoint answers 200 (median of {n})"), sh, hh, "s"),
        cmp("  the same, probed from t0 (~1 s stall in Docker)".into(), sh0, hh0, "s"),
        cmp(format!("spare claimed: endpoint answers 200 (median of {n})"), spare_http, hh, "s"),
        cmp(format!("1 session: state running / docker runs returned ({})", 2 * n), median(s_run), median(h_ran), "s"),
        one(format!("{sessions} sessions: all POSTs returned"), format!("{created:.3} s")),
        cmp(format!("{sessions} sessions: {c} containers running in Docker"), in_docker, h_all, "s"),
        cmp(format!("{sessions} sessions: all state running"), all_running, h_all, "s"),
        one(format!("{sessions} sessions: endpoints answering 200"), format!("{answering}/{sessions}")),
        cmp("list: stewardctl sessions list / docker ps".into(), ctl * 1e3, h_ps * 1e3, "ms"),
        cmp(format!("end all: {c} containers removed / docker rm -f"), ended, h_rm, "s"),
        one("agent RSS, idle (0 sessions, after part 1)".into(), format!("{rss_idle:.1} MiB")),
        one(format!("agent RSS, {sessions} sessions running"), format!("{rss:.1} MiB")),
        one("agent peak RSS (VmHWM)".into(), format!("{hwm:.1} MiB")),
        one("agent CPU, create -> all running (one core)".into(), format!("{ramp_cpu:.1} %")),
        one(format!("agent CPU, {window} s of {sessions} sessions running"), format!("{cpu:.2} %")),
    ];
    println!();
    for [what, s, h, ratio] in rows {
        println!("{what:<54} {s:>12} {h:>12} {ratio:>7}");
    }
    let goal = if sh / hh <= 1.2 { "met" } else { "not met" };
    let ratio = sh / hh;
    println!("endpoint answers: {ratio:.2}x docker by hand; goal <= 1.2x {goal} (reported, not asserted)");
    let goal = if spare_http < 0.05 { "met" } else { "not met" };
    println!(
        "spare claimed -> endpoint answers: {:.1} ms; goal < 50 ms {goal} (reported, not asserted)",
        spare_http * 1e3
    );
}
