//! Helpers for tests that run against the real Docker engine (never a mock).
//!
//! - [`require_docker`]: connects, or skips the test loudly (fails it when `CI` is set).
//! - [`ensure_test_image`]: builds the local busybox test image once (`scripts/test-image.sh`).
//! - [`unique_name`]: container/volume names that parallel tests cannot collide on.
//! - [`Cleanup`]: removes the containers and volumes a test created when it is dropped, also
//!   when the test panics.
//! - [`docker_cli`], [`inspect`], [`container_spec`], [`http_get`]: small conveniences.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use steward_agent::docker::Docker;
use steward_proto::ContainerSpec;

/// The image [`ensure_test_image`] builds.
pub const TEST_IMAGE: &str = "steward-test/busybox:1";

/// Prefix of every name [`unique_name`] hands out, so leftovers are easy to find.
pub const NAME_PREFIX: &str = "steward-test";

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        .unwrap_or(false)
}

/// Connects to the local engine. When it is missing: panics under CI (a test whose component
/// is missing must fail there, never skip silently); otherwise prints a loud SKIP line and
/// returns `None`, and the test returns early.
///
/// The engine is the one at `DOCKER_HOST` when that is a `unix://` address (the docker CLI the
/// helpers run uses it too), else at the default socket.
pub async fn require_docker() -> Option<Docker> {
    let connected = match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Docker::connect(Some(Path::new(path)))
                .await
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "DOCKER_HOST={host} is not a unix:// socket, and the agent only speaks to a \
                 local engine over its unix socket"
            )),
        },
        _ => Docker::connect(None).await.map_err(|e| e.to_string()),
    };
    match connected {
        Ok(d) => Some(d),
        Err(e) => {
            if in_ci() {
                panic!(
                    "CI is set but the Docker engine is not usable ({e}); install and start it \
                     (apt-get install -y docker.io busybox-static; dockerd &) before running the \
                     tests"
                );
            }
            // Straight to stderr: the test harness captures eprintln! of passing tests, and a
            // skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIP {}: no usable Docker engine ({e}); this test did NOT run. Start \
                 dockerd to run it (with CI=true a missing engine fails the test). ***",
                std::thread::current().name().unwrap_or("test")
            );
            None
        }
    }
}

/// Builds [`TEST_IMAGE`] with `scripts/test-image.sh` (once per test process; the script itself
/// does nothing when the image exists). Returns the image name.
pub fn ensure_test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(TEST_IMAGE)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): {}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    TEST_IMAGE
}

/// A name no other test (in this or another process) uses: `steward-test-<prefix>-<pid>-<n>-<t>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{NAME_PREFIX}-{prefix}-{}-{n}-{t:x}", std::process::id())
}

/// Removes, when dropped, the containers, volumes and image tags registered with it.
#[derive(Default)]
pub struct Cleanup {
    containers: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl Cleanup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a container name or id; returns it for convenience.
    pub fn container(&self, name: impl Into<String>) -> String {
        let name = name.into();
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        name
    }

    /// Registers a named volume; returns it.
    pub fn volume(&self, name: impl Into<String>) -> String {
        let name = name.into();
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        name
    }

    /// Registers an image reference (tag) to untag; returns it.
    pub fn image(&self, reference: impl Into<String>) -> String {
        let reference = reference.into();
        self.images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reference.clone());
        reference
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let take = |m: &mut Mutex<Vec<String>>| {
            std::mem::take(m.get_mut().unwrap_or_else(|p| p.into_inner()))
        };
        let containers = take(&mut self.containers);
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&containers)
                .output();
        }
        let volumes = take(&mut self.volumes);
        if !volumes.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
        let images = take(&mut self.images);
        if !images.is_empty() {
            let _ = Command::new("docker").arg("rmi").args(&images).output();
        }
    }
}

/// Runs the docker CLI; returns its trimmed stdout, panics with its stderr on failure.
pub fn docker_cli(args: &[&str]) -> String {
    let out = try_docker_cli(args).unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")));
    out.trim().to_string()
}

/// Runs the docker CLI; `Err(stderr)` when it exits non-zero.
pub fn try_docker_cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `docker inspect -f FORMAT TARGET`, trimmed.
pub fn inspect(target: &str, format: &str) -> String {
    docker_cli(&["inspect", "-f", format, target])
}

/// Whether a container with exactly this name exists (running or not).
pub fn container_exists(name: &str) -> bool {
    !docker_cli(&["ps", "-aq", "--filter", &format!("name=^/{name}$")]).is_empty()
}

/// A container spec from JSON fields merged over `{"name": name, "image": image}`, e.g.
/// `container_spec(&n, TEST_IMAGE, json!({"command": ["sleep", "3600"]}))`.
pub fn container_spec(name: &str, image: &str, extra: serde_json::Value) -> ContainerSpec {
    let mut v = serde_json::json!({ "name": name, "image": image });
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    serde_json::from_value(v).unwrap_or_else(|e| panic!("bad test container spec: {e}"))
}

/// A plain HTTP/1.0 GET from the host, retried until it answers or `timeout` passes.
/// Returns (status code, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    let mut last_err = String::new();
    while Instant::now() < deadline {
        match http_get_once(addr, path) {
            Ok(r) => return r,
            Err(e) => last_err = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("GET http://{addr}{path} did not answer within {timeout:?}: {last_err}");
}

fn http_get_once(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {raw:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes (then panics with
/// `what`).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
