//! The VM driver's process side: QEMU's command line, starting it detached (`-daemonize`: it
//! double-forks into its own session, so upgrading, restarting or `kill -9` of the agent never
//! stops a VM), observing it (pidfile + `/proc` + QMP `query-status`), stopping it gracefully
//! (ACPI power-down through QMP, a timeout, `quit`, then SIGKILL), and the per-VM record
//! (`vm.json`) that marks a directory as the agent's own.
//!
//! Files in `<vm_dir>/<name>/`: `vm.json` (record), `disk.qcow2` (overlay), `seed.img`
//! (cloud-init), `qemu.pid`, `qmp.sock`, `serial.log` (the serial console), `qemu.log`
//! (QEMU's own messages), `qemu.args` (the last command line, JSON, for people and the bench).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tracing::{info, warn};

use super::plan::Proc;
use super::qmp::{self, Qmp};
use super::VmError;

/// The record that makes a VM directory the agent's: written (atomically) before anything
/// else is created for the VM, updated as the VM changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub node: String,
    pub name: String,
    /// Launch hash of the running (or last started) process.
    #[serde(default)]
    pub launch_hash: String,
    /// Started by the agent and not stopped by it since.
    #[serde(default)]
    pub started: bool,
    /// Taps made for this VM (recorded before they are created).
    #[serde(default)]
    pub taps: Vec<String>,
    /// "kvm" or "tcg", and why not KVM.
    #[serde(default)]
    pub accel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel_note: Option<String>,
    /// Restarts the agent made after a crash or a guest power-off.
    #[serde(default)]
    pub restarts: u32,
}

/// Paths of one VM's files.
#[derive(Debug, Clone)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn seed(&self) -> PathBuf {
        self.dir.join("seed.img")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    pub fn args(&self) -> PathBuf {
        self.dir.join("qemu.args")
    }

    pub fn load(&self) -> Option<VmRecord> {
        serde_json::from_slice(&std::fs::read(self.record()).ok()?).ok()
    }

    pub fn save(&self, r: &VmRecord) -> Result<(), VmError> {
        crate::store::write_atomic(
            &self.record(),
            &serde_json::to_vec_pretty(r).unwrap_or_default(),
            0o600,
        )
        .map_err(|e| VmError::Io {
            what: format!("writing {}", self.record().display()),
            reason: e.to_string(),
        })
    }
}

/// One NIC as QEMU gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchNic {
    pub tap: String,
    pub bridge: String,
    pub vlan: Option<u16>,
    pub mac: String,
}

/// Everything QEMU's command line depends on (hashed into the launch hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Launch {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub nics: Vec<LaunchNic>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// The cloud-init files (name, content).
    pub seed: Vec<(String, String)>,
}

impl Launch {
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(serde_json::to_vec(self).unwrap_or_default()))[..16].to_string()
    }
}

/// QEMU's arguments for `launch` in `p` with accelerator `accel` ("kvm" or "tcg").
pub fn qemu_args(p: &VmPaths, l: &Launch, accel: &str) -> Vec<String> {
    let path = |x: PathBuf| x.display().to_string();
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("{},process=steward-vm-{}", l.name, l.name),
        "-daemonize".into(),
        "-pidfile".into(),
        path(p.pidfile()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p.qmp().display()),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", p.serial().display()),
        // A guest power-off leaves QEMU alive in state "shutdown", so the planner can tell it
        // from a crash (no process) and apply the restart policy.
        "-no-shutdown".into(),
        "-accel".into(),
        accel.into(),
    ];
    if accel == "kvm" {
        a.extend(["-cpu".into(), "host".into()]);
    }
    a.extend([
        "-smp".into(),
        l.cpus.to_string(),
        "-m".into(),
        format!("{}M", l.memory_mib),
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2", p.disk().display()),
        "-drive".into(),
        format!(
            "file={},if=virtio,format=raw,readonly=on",
            p.seed().display()
        ),
    ]);
    for (i, n) in l.nics.iter().enumerate() {
        a.extend([
            "-netdev".into(),
            format!("tap,id=net{i},ifname={},script=no,downscript=no", n.tap),
            "-device".into(),
            format!("virtio-net-pci,netdev=net{i},mac={}", n.mac),
        ]);
    }
    if let Some(k) = &l.kernel {
        a.extend(["-kernel".into(), k.clone()]);
        if let Some(i) = &l.initrd {
            a.extend(["-initrd".into(), i.clone()]);
        }
        if let Some(c) = &l.cmdline {
            a.extend(["-append".into(), c.clone()]);
        }
    }
    a
}

/// The QEMU process of a VM directory, if one is alive: the pid from its pidfile, alive, not
/// a zombie, and its command line naming this directory (so a reused pid is never mistaken).
/// A QEMU in the middle of exiting counts as alive: the kernel drops its command line before
/// it closes its files, and until then it still holds the disk image's lock, so a new QEMU
/// started at that moment would fail.
pub fn live_pid(p: &VmPaths) -> Option<i32> {
    // Task flags (include/linux/sched.h): exiting, and kernel thread.
    const PF_EXITING: u64 = 0x4;
    const PF_KTHREAD: u64 = 0x0020_0000;
    let pid: i32 = std::fs::read_to_string(p.pidfile())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if matches!(fields.first(), None | Some(&"Z") | Some(&"X")) {
        return None;
    }
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = p.pidfile().display().to_string();
    let ours = String::from_utf8_lossy(&cmd)
        .split('\0')
        .any(|a| a == needle);
    let exiting = cmd.is_empty() && flags & PF_EXITING != 0 && flags & PF_KTHREAD == 0;
    (ours || exiting).then_some(pid)
}

/// The process state of a VM directory.
pub async fn observe(p: &VmPaths) -> Proc {
    if live_pid(p).is_none() {
        return Proc::Absent;
    }
    match qmp::query_status(&p.qmp()).await {
        Ok(s) => Proc::Alive(s.0),
        Err(e) => {
            // It may have exited between the two looks.
            if live_pid(p).is_none() {
                Proc::Absent
            } else {
                Proc::Unresponsive(e.to_string())
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join("; ")
}

/// Starts QEMU detached with `accel` and waits until QMP answers. Returns the QMP status.
pub async fn spawn(qemu: &Path, p: &VmPaths, l: &Launch, accel: &str) -> Result<String, VmError> {
    let _ = std::fs::remove_file(p.qmp());
    let _ = std::fs::remove_file(p.pidfile());
    let args = qemu_args(p, l, accel);
    let _ = std::fs::write(
        p.args(),
        serde_json::to_vec_pretty(&(qemu.display().to_string(), &args)).unwrap_or_default(),
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.qemu_log())
        .map_err(|e| VmError::Io {
            what: format!("opening {}", p.qemu_log().display()),
            reason: e.to_string(),
        })?;
    let mark = std::fs::metadata(p.qemu_log())
        .map(|m| m.len())
        .unwrap_or(0);
    // The parent returns once the daemon has initialised (or failed to); the daemon lives on
    // in its own session, reparented to init.
    let st = Command::new(qemu)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .status()
        .await
        .map_err(|e| VmError::Qemu {
            reason: format!(
                "cannot run {} ({e}); install qemu-system-x86",
                qemu.display()
            ),
        })?;
    tracing::debug!("QEMU's parent returned");
    if !st.success() {
        let text = std::fs::read(p.qemu_log()).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(mark as usize..).unwrap_or(&[])).to_string();
        let msg: Vec<&str> = new.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(VmError::Qemu {
            reason: format!(
                "QEMU ({accel}) exited with {st}: {}",
                if msg.is_empty() {
                    tail(&p.qemu_log(), 3)
                } else {
                    msg.join("; ")
                }
            ),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match qmp::query_status(&p.qmp()).await {
            Ok(s) => return Ok(s.0),
            Err(e) => {
                if live_pid(p).is_none() {
                    return Err(VmError::Qemu {
                        reason: format!("QEMU exited after starting: {}", tail(&p.qemu_log(), 3)),
                    });
                }
                if Instant::now() > deadline {
                    return Err(VmError::Qemu {
                        reason: format!("QMP did not answer after start: {e}"),
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_gone(p: &VmPaths, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if live_pid(p).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live_pid(p).is_none()
}

/// Stops QEMU: ACPI power-down, up to `timeout` for the guest to power off, then `quit`, then
/// SIGKILL. Succeeds when no process is left (also when there was none).
pub async fn stop(p: &VmPaths, timeout: Duration) -> Result<(), VmError> {
    let Some(pid) = live_pid(p) else {
        return Ok(());
    };
    let name = p.dir.display().to_string();
    match Qmp::connect(&p.qmp()).await {
        Ok(mut q) => {
            let already_off = matches!(q.status().await, Ok(s) if s.0 == "shutdown");
            if !already_off {
                if let Err(e) = q.powerdown().await {
                    warn!(vm = %name, error = %e, "ACPI power-down failed");
                }
                drop(q);
                let deadline = Instant::now() + timeout;
                while Instant::now() < deadline {
                    if live_pid(p).is_none() {
                        return Ok(());
                    }
                    if matches!(qmp::query_status(&p.qmp()).await, Ok(s) if s.0 == "shutdown") {
                        break; // the guest powered off (QEMU stays, -no-shutdown)
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            match Qmp::connect(&p.qmp()).await {
                Ok(mut q) => {
                    info!(vm = %name, "sending quit");
                    if let Err(e) = q.quit().await {
                        warn!(vm = %name, error = %e, "QMP quit failed");
                    }
                }
                Err(e) => warn!(vm = %name, error = %e, "QMP unreachable for quit"),
            }
        }
        Err(e) => warn!(vm = %name, error = %e, "QMP unreachable; killing QEMU"),
    }
    if wait_gone(p, Duration::from_secs(5)).await {
        return Ok(());
    }
    warn!(vm = %name, pid, "QEMU still alive after quit; SIGKILL");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    if wait_gone(p, Duration::from_secs(5)).await {
        Ok(())
    } else {
        Err(VmError::Qemu {
            reason: format!("QEMU (pid {pid}) survived SIGKILL"),
        })
    }
}

/// Hard-resets the guest through QMP (`system_reset`); QEMU and its process stay.
pub async fn reset(p: &VmPaths) -> Result<(), VmError> {
    let err = |e: qmp::QmpError| VmError::Qemu {
        reason: format!("QMP system_reset: {e}"),
    };
    Qmp::connect(&p.qmp())
        .await
        .map_err(err)?
        .system_reset()
        .await
        .map_err(err)
}

/// Asks QMP whether the VM runs with KVM.
pub async fn kvm_enabled(p: &VmPaths) -> Option<bool> {
    Qmp::connect(&p.qmp()).await.ok()?.kvm_enabled().await.ok()
}
