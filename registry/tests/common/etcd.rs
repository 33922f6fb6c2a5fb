//! A real etcd cluster for tests: N members (3 by default) on free loopback ports, each with
//! its own temporary data dir, started with Debian's `etcd` (or `$STEWARD_ETCD`). `kill(i)`
//! sends SIGKILL to one member, `restart(i)` starts it again on the same dir and ports, and
//! every member is killed on drop. Without `etcd` the test is skipped loudly, or fails when
//! `CI` is set (`bash scripts/deps.sh` installs it).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` and `/metrics`, also when the client port speaks TLS.
    metrics_port: u16,
    child: Option<Child>,
}

/// Certificates for a cluster whose client port speaks TLS and requires client certificates
/// signed by `ca` (the server certificate must name 127.0.0.1).
#[derive(Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct EtcdCluster {
    etcd: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    token: String,
    tls: Option<EtcdTls>,
}

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The etcd binary: `$STEWARD_ETCD` or `etcd` on `PATH`; `None` (a loud skip) when missing,
/// a panic when `CI` is set.
pub fn require_etcd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STEWARD_ETCD") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(p) = std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
    {
        return Some(p);
    }
    let msg = "etcd not found (`etcd` on PATH, or $STEWARD_ETCD); install it with \
               `bash scripts/deps.sh` (Debian package etcd-server)";
    assert!(!in_ci(), "CI is set and {msg}");
    // Straight to stderr (not eprintln!, which the test harness captures): a skip must show.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIP {}: {msg}; this test did NOT run (with CI=true it fails). ***",
        std::thread::current().name().unwrap_or("test")
    );
    None
}

static SHARED: Mutex<Weak<EtcdCluster>> = Mutex::new(Weak::new());

/// A free loopback port below Linux's ephemeral range (32768-60999): a member's port must stay
/// free while the member is killed and restarted, and a port from the ephemeral range can be
/// taken meanwhile as the local end of any outgoing connection.
/// Ports already handed out in this process are never handed out again, so two clusters started
/// at the same time cannot pick the same one. (Another process can still take a port between this
/// check and etcd's bind: [`EtcdCluster::start_with`] retries on fresh ports when that happens.)
fn etcd_port() -> u16 {
    use rand::Rng;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// The text etcd logs when a port it was given is taken.
const PORT_TAKEN: &str = "address already in use";

/// How many times a cluster start is tried on fresh ports when one of its ports was taken.
const START_ATTEMPTS: usize = 5;

impl EtcdCluster {
    /// A 3-member cluster shared by the tests of this process that run at the same time (it
    /// stops when the last of them drops it). Tests must not kill its members and should use
    /// their own key prefix.
    pub async fn shared() -> Option<Arc<EtcdCluster>> {
        let existing = SHARED.lock().unwrap().upgrade();
        if let Some(c) = existing {
            return Some(c);
        }
        let fresh = Arc::new(Self::start(3).await?);
        let mut slot = SHARED.lock().unwrap();
        if let Some(c) = slot.upgrade() {
            return Some(c); // another test won the race; ours stops on drop
        }
        *slot = Arc::downgrade(&fresh);
        Some(fresh)
    }

    /// Starts `n` members and waits until each answers its health check (it has a leader).
    pub async fn start(n: usize) -> Option<EtcdCluster> {
        Self::start_with(n, None).await
    }

    /// Like [`EtcdCluster::start`], with TLS and client certificates on the client port.
    /// A member that cannot bind one of its ports (another process took it after it was found
    /// free) makes the whole start be tried again on fresh ports.
    pub async fn start_with(n: usize, tls: Option<EtcdTls>) -> Option<EtcdCluster> {
        let etcd = require_etcd()?;
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::new(etcd.clone(), n, tls.clone());
            match cluster.start_members().await {
                Ok(()) => return Some(cluster),
                Err(log) if log.contains(PORT_TAKEN) && attempt < START_ATTEMPTS => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "etcd test cluster: a port was taken (attempt {attempt}); retrying on fresh ports"
                    );
                }
                Err(log) => panic!("etcd test cluster did not start; member log:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// A cluster of `n` members on fresh ports and a fresh data dir, none started yet.
    fn new(etcd: PathBuf, n: usize, tls: Option<EtcdTls>) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: etcd_port(),
                peer_port: etcd_port(),
                metrics_port: etcd_port(),
                child: None,
            })
            .collect();
        let token = format!("steward-test-{}", uuid::Uuid::new_v4());
        EtcdCluster {
            etcd,
            dir,
            members,
            token,
            tls,
        }
    }

    /// Spawns every member and waits until each is healthy; on failure every member is killed
    /// and the failing member's log is returned.
    async fn start_members(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            if let Err(log) = self.try_wait_healthy(i).await {
                for j in 0..self.members.len() {
                    self.kill(j);
                }
                return Err(log);
            }
        }
        Ok(())
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let m = &self.members[i];
        let client = self.endpoint(i);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let mut cmd = Command::new(&self.etcd);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", &self.token])
            .args(["--listen-metrics-urls", &metrics])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        self.members[i].child = Some(child);
    }

    /// Waits (hang guard: 60 s) until member `i` reports itself healthy.
    async fn wait_healthy(&mut self, i: usize) {
        if let Err(log) = self.try_wait_healthy(i).await {
            panic!("etcd member {i} not healthy; log:\n{log}");
        }
    }

    /// Waits until member `i` reports itself healthy; its log when it exits or is not healthy
    /// after 60 s.
    async fn try_wait_healthy(&mut self, i: usize) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].metrics_port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.text().await.is_ok_and(|t| t.contains("\"true\"")) {
                    return Ok(());
                }
            }
            let exited = self.members[i]
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let why = if exited {
                    "exited"
                } else {
                    "not healthy after 60 s"
                };
                return Err(format!("member {i} {why}:\n{log}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Member `i`'s plain-HTTP Prometheus endpoint (`/metrics`).
    pub fn metrics_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}/metrics", self.members[i].metrics_port)
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// `etcd://127.0.0.1:p1,127.0.0.1:p2,...` (`etcds://` with TLS) plus `prefix` (as the
    /// registry's `--store`).
    pub fn url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{}{prefix}", hosts.join(","))
    }

    /// Index of the member that is the raft leader now, as the live members see it (plain
    /// clusters only).
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new(); // (index, own member id, leader id)
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let status = async {
                let mut c = etcd_client::Client::connect([self.endpoint(i)], None)
                    .await
                    .ok()?;
                c.status().await.ok()
            };
            if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(2), status).await {
                ids.push((i, s.header().map(|h| h.member_id()), s.leader()));
            }
        }
        ids.iter()
            .find(|(_, me, _)| ids.iter().any(|(_, _, l)| *me == Some(*l)))
            .map(|(i, _, _)| *i)
    }

    /// SIGKILL to member `i` (its data dir stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data dir and ports; waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i).await;
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
