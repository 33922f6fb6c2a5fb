//! Support for the install tests (`e2e_install.rs`): the Debian packages (built once per test
//! process by `packaging/build-deb.sh` from the workspace's debug binaries), the clean Debian
//! image (`debian-rootfs.sh`: debootstrap, cached under `target/e2e-install/`), containers on
//! the test dockerd, and tool checks that fail under CI and skip loudly elsewhere.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The clean Debian image (bump the suffix when `debian-rootfs.sh` changes what it builds).
pub const DEBIAN_IMAGE: &str = "steward-e2e/debian:bookworm-minbase-1";
/// The image of the workload containers (`scripts/test-image.sh`).
pub const TEST_IMAGE: &str = "steward-test/busybox:1";

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        .unwrap_or(false)
}

/// Checks that every tool is installed. A missing one fails the test under CI; elsewhere the
/// test is skipped with a loud line on stderr (the caller returns when this is false).
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(&format!(
        "missing {} (scripts/deps.sh installs them)",
        missing.join(", ")
    ))
}

/// Checks that the Docker engine answers; like [`require_tools`].
pub fn require_docker() -> bool {
    if !require_tools(&["docker"]) {
        return false;
    }
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || skip_or_fail("the Docker engine does not answer (bash scripts/docker-up.sh starts it)")
}

fn skip_or_fail(why: &str) -> bool {
    assert!(
        !in_ci(),
        "CI is set but this test cannot run: {why}. A missing component fails under CI."
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIP {}: {why}; this test did NOT run (with CI=true it fails). ***",
        std::thread::current().name().unwrap_or("test")
    );
    false
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/debug` (this test's executable is `target/debug/deps/e2e_install-HASH`).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

/// `target/e2e-install`: the cached root file system and the packages built here.
pub fn cache_dir() -> PathBuf {
    bin_dir().parent().unwrap().join("e2e-install")
}

/// Runs a command; panics with its output unless it succeeds. Returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout and stderr of a finished command.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The two packages, built once per test process.
pub struct Packages {
    pub agent: PathBuf,
    pub registry: PathBuf,
}

/// Builds the packages with `packaging/build-deb.sh --fast` from the debug binaries next to
/// this test (`cargo test --workspace` builds them all; else `cargo build --workspace`).
pub fn packages() -> &'static Packages {
    static P: OnceLock<Packages> = OnceLock::new();
    P.get_or_init(|| {
        let bins = bin_dir();
        for b in ["steward-agent", "steward-registry", "stewardctl"] {
            assert!(
                bins.join(b).is_file(),
                "{} is missing: run `cargo build --workspace` first (cargo test --workspace \
                 builds it)",
                bins.join(b).display()
            );
        }
        let out = cache_dir().join(format!("debs-{}", std::process::id()));
        // Leftovers of earlier test processes that are gone.
        if let Ok(rd) = std::fs::read_dir(cache_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("debs-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let stdout = ok(Command::new("bash")
            .arg(workspace().join("packaging/build-deb.sh"))
            .arg("--bin-dir")
            .arg(&bins)
            .arg("--out")
            .arg(&out)
            .arg("--fast"));
        let debs: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
        assert_eq!(debs.len(), 2, "build-deb.sh printed {stdout:?}");
        Packages {
            agent: debs[0].clone(),
            registry: debs[1].clone(),
        }
    })
}

/// The clean Debian image, built once (see `debian-rootfs.sh`).
pub fn debian_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        ok(Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/install/debian-rootfs.sh"))
            .arg(cache_dir())
            .arg(DEBIAN_IMAGE));
    });
    DEBIAN_IMAGE
}

/// The busybox image for workload containers.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        ok(Command::new("bash")
            .arg(workspace().join("scripts/test-image.sh"))
            .arg(TEST_IMAGE));
    });
    TEST_IMAGE
}

/// A random lower-case hex string of `n` bytes.
pub fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A clean Debian machine: a container of [`DEBIAN_IMAGE`] on the host's network (so it
/// reaches the registry on 127.0.0.1), with its own /etc/machine-id as a booted system has.
/// Removed when dropped.
pub struct Machine {
    pub name: String,
}

impl Machine {
    /// `extra` are further `docker run` arguments (e.g. a volume).
    pub fn start(extra: &[&str]) -> Machine {
        let name = format!("steward-test-install-{}", random_hex(4));
        ok(Command::new("docker")
            .args(["run", "-d", "--network", "host", "--name", &name])
            .args(extra)
            .args([debian_image(), "sleep", "infinity"]));
        let m = Machine { name };
        m.write(
            "/etc/machine-id",
            "0444",
            "root:root",
            &format!("{}\n", random_hex(16)),
        );
        m
    }

    /// Runs `script` with `sh -c` in the machine: (exit code, stdout + stderr).
    pub fn sh(&self, script: &str) -> (i32, String) {
        let out = Command::new("docker")
            .args(["exec", &self.name, "sh", "-c", script])
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), text(&out))
    }

    /// Like [`Machine::sh`], panicking unless it succeeds; returns the output.
    pub fn sh_ok(&self, script: &str) -> String {
        let (code, out) = self.sh(script);
        assert_eq!(code, 0, "in {}: `{script}` failed:\n{out}", self.name);
        out
    }

    /// Writes a file as cloud-init's write_files does: parents created, then mode and owner.
    pub fn write(&self, path: &str, mode: &str, owner: &str, content: &str) {
        let mut child = Command::new("docker")
            .args(["exec", "-i", &self.name, "sh", "-c"])
            .arg(r#"mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1" && chown "$3" "$1""#)
            .args(["sh", path, mode, owner])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "writing {path}: {}", text(&out));
    }

    /// Copies a host file into the machine.
    pub fn copy_in(&self, from: &Path, to: &str) {
        ok(Command::new("docker")
            .arg("cp")
            .arg(from)
            .arg(format!("{}:{to}", self.name)));
    }

    /// Starts the agent in the background exactly as its unit would: the unit's environment
    /// file, then its `ExecStart=` command line (read from the installed unit). Its pid goes to
    /// /run/steward-agent.pid, its output to /var/log/steward-agent.log.
    pub fn start_agent_like_the_unit(&self) {
        let unit = self.sh_ok("cat /lib/systemd/system/steward-agent.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit has an ExecStart= line");
        let env = unit
            .lines()
            .find_map(|l| l.strip_prefix("EnvironmentFile=-"))
            .expect("the unit reads an environment file");
        let script = format!(
            "set -a; [ ! -r {env} ] || . {env}; set +a; echo $$ >/run/steward-agent.pid; \
             exec {exec} >>/var/log/steward-agent.log 2>&1"
        );
        ok(Command::new("docker").args(["exec", "-d", &self.name, "sh", "-c", &script]));
    }

    /// SIGTERM to the agent (what `systemctl stop` does with KillMode=process), then waits
    /// until it has exited.
    pub fn stop_agent(&self) {
        self.sh_ok(
            "pid=$(cat /run/steward-agent.pid); kill -TERM $pid; \
             for i in $(seq 300); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done; \
             echo agent did not exit; exit 1",
        );
    }

    pub fn agent_log(&self) -> String {
        self.sh("cat /var/log/steward-agent.log").1
    }

    /// dpkg's status abbreviation of `pkg` (`ii`, `rc`), or `none` when dpkg does not know it.
    pub fn dpkg_status(&self, pkg: &str) -> String {
        let (code, out) = self.sh(&format!(
            "dpkg-query -W -f='${{db:Status-Abbrev}}' {pkg} 2>/dev/null"
        ));
        if code == 0 {
            out.trim().to_string()
        } else {
            "none".into()
        }
    }

    /// Whether `path` exists in the machine.
    pub fn exists(&self, path: &str) -> bool {
        self.sh(&format!("[ -e {path} ]")).0 == 0
    }

    /// `stat -c '%a %U:%G'` of `path`.
    pub fn mode_owner(&self, path: &str) -> String {
        self.sh_ok(&format!("stat -c '%a %U:%G' {path}"))
            .trim()
            .to_string()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// Removes the named host containers when dropped (the agents' workloads), also on panic.
pub struct Workloads(pub Vec<String>);

impl Drop for Workloads {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("docker").args(["rm", "-f", n]).output();
        }
    }
}
