//! Test support for the VM tests: QEMU processes seen from `/proc`, QMP asked directly (not
//! through the agent), the agent's status file, and cleanup guards.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::guest::{missing, Guest, Image};
use super::netns::{strip_ansi, NetNs};

/// Kills the child on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The VM tests' guest (`tests/guest/vm/test.sh` with virtio-net, and virtio-blk and vfat to
/// read its cloud-init seed), built or reused under `name`; `None` when skipped for a missing
/// component.
pub fn vm_guest(name: &str) -> Option<Image> {
    let mut g = Guest::new(name);
    g.file(super::guest::harness_dir().join("vm/test.sh"), "/test.sh");
    for m in [
        "virtio_pci",
        "virtio_net",
        "virtio_blk",
        "vfat",
        "nls_cp437",
        "nls_utf8",
        "nls_ascii",
    ] {
        g.module(m);
    }
    g.build()
}

/// An empty 32 MiB qcow2 at `path`, the base image of the VM tests.
pub fn base_image(path: &Path) {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("32M")
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img create {}", path.display());
}

/// The real agent daemon (`steward-agent run`) in a namespace, set up for VMs: its data in
/// `<tmp>/agent`, its VMs in `vms`, its log appended to `<tmp>/agent.log`.
pub struct Daemon {
    pub ns_name: String,
    pub cfg: PathBuf,
    pub log: PathBuf,
    pub child: Option<Proc>,
}

impl Daemon {
    /// Writes the agent's config (enrolling with `token` at `url`) and starts it. The
    /// accelerator is TCG unless STEWARD_VM_ACCEL says otherwise: on some machines /dev/kvm
    /// exists and QEMU starts with it, but the guest hangs (the guest harness sees the same and
    /// falls back).
    pub fn new(ns: &NetNs, tmp: &Path, url: &str, token: &str, vms: &Path) -> Daemon {
        let accel = std::env::var("STEWARD_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
        let cfg = tmp.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "registry = \"{url}\"\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\nvm_dir = \"{}\"\nvm_accel = \"{accel}\"\nvm_stop_timeout = \"3s\"\nresync_interval = \"2s\"\nactivity_interval = \"2s\"\nlong_poll_wait = \"30s\"\nbackoff_max = \"1s\"\nmetrics_listen = \"off\"\n[policy]\npayload_roots = [\"{}\"]\n",
                tmp.join("agent").display(),
                vms.display(),
                tmp.join("payloads").display()
            ),
        )
        .unwrap();
        let mut d = Daemon {
            ns_name: ns.name.clone(),
            cfg,
            log: tmp.join("agent.log"),
            child: None,
        };
        d.spawn(ns);
        d
    }

    pub fn spawn(&mut self, ns: &NetNs) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        assert_eq!(ns.name, self.ns_name);
        self.child = Some(Proc(
            ns.command(env!("CARGO_BIN_EXE_steward-agent"))
                .arg("--config")
                .arg(&self.cfg)
                .arg("run")
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }

    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

/// Kills every QEMU whose command line names `dir` (cleanup when a test fails midway).
pub struct QemuReaper(pub PathBuf);

impl Drop for QemuReaper {
    fn drop(&mut self) {
        for pid in qemu_pids(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Polls `f` every 100 ms until Some; panics with `what` after `secs` (a bound against hangs,
/// not a timing assertion).
pub fn wait<T>(secs: u64, what: &dyn Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            // The step's duration, for setting these bounds from measurements under load.
            let first_line = what();
            let first_line = first_line.lines().next().unwrap_or_default();
            eprintln!(
                "waited {:.1}s of {secs}s for {first_line}",
                start.elapsed().as_secs_f64()
            );
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {}",
            what()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Live (non-zombie) processes whose command line has an argument under `dir`.
pub fn qemu_pids(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        let cmd = String::from_utf8_lossy(&cmd).to_string();
        if !zombie && cmd.contains("qemu-system") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// QMP `query-status` asked by the test itself (not through the agent).
pub fn qmp_status(sock: &Path) -> Option<String> {
    let s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut w = s.try_clone().ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?; // greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
        .ok()?;
    let mut answers = 0;
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&line).ok()?;
        if v.get("return").is_some() {
            answers += 1;
            if answers == 2 {
                return v["return"]["status"].as_str().map(str::to_string);
            }
        }
    }
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// QEMU, qemu-img and mtools, or None (skipped outside CI; a failure in CI).
pub fn require_tools() -> Option<()> {
    for (cmd, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("mtype", "mtools"),
    ] {
        if !have(cmd) {
            return missing(&format!("{cmd} (Debian package {pkg})"));
        }
    }
    Some(())
}

pub fn status_of(data: &Path, name: &str) -> Option<Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(data.join("status.json")).ok()?).ok()?;
    v["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
}
