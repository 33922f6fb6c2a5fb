//! Virtual machines with QEMU, one registered kind of workload (`workload::WorkloadPhase`):
//! the only module speaking QMP. Observe (VM directories, their records, pidfiles and QMP) →
//! plan (`plan.rs`, pure) → heal (`heal::vms`) → apply (`driver.rs` for QEMU, `disk.rs`
//! for overlays, `seed.rs` for cloud-init, `tap.rs` for taps; bridge ports through
//! `network::attach_port`) → report one `ResourceStatus` per VM, with the accelerator in
//! `detail`.
//!
//! Ownership: a VM directory `<vm_dir>/<name>/` is the agent's only when its `vm.json` record
//! names this node; it is made under a temporary name with the record inside, then renamed,
//! so a crash never leaves an unrecorded directory. Taps are recorded in the VM's record before
//! they are created; a link holding a tap's name that is not recorded is a conflict.

pub mod disk;
pub mod driver;
pub mod launch;
pub mod netconf;
pub mod plan;
pub mod qmp;
pub mod seed;
pub mod tap;

mod apply;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use steward_proto::{
    NodeSpec, ResourceKind, ResourceState, ResourceStatus, VmSpec, WorkloadKind, WorkloadRef,
};
use tracing::{info, info_span, warn, Instrument};

use crate::heal::status::Healed;
use crate::heal::tracker::Entries;
use crate::workload::{PassCx, WorkloadPass, WorkloadPhase};
use driver::{Launch, VmPaths};
pub use launch::{derive_mac, launch};
use plan::{DesiredVm, ObservedVm, Proc, VmAction, VmVerdict};

/// Errors of the VM subsystem, each naming what failed and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("base image {path}: {reason} (the base image must be a readable file on this node)")]
    BaseImage { path: PathBuf, reason: String },
    #[error("disk: {reason}")]
    Disk { reason: String },
    #[error("cloud-init seed {path}: {reason}")]
    Seed { path: PathBuf, reason: String },
    #[error("tap {tap}: {reason}")]
    Tap { tap: String, reason: String },
    #[error("NIC on bridge {bridge}: {reason}")]
    Nic { bridge: String, reason: String },
    #[error("{reason}")]
    Qemu { reason: String },
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
    #[error("{0}")]
    Conflict(String),
}

/// Which accelerator VMs get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM when it works (tried once per agent process), TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            o => Err(format!("{o:?} is not one of auto, kvm, tcg")),
        }
    }
}

/// VM settings from the agent config.
#[derive(Debug, Clone)]
pub struct VmSettings {
    /// Parent of the VM directories (`/var/lib/steward/vms`).
    pub dir: PathBuf,
    pub accel: Accel,
    /// How long a guest gets to power off after the ACPI button before `quit`.
    pub stop_timeout: Duration,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The escalation ladder's pace (the agent's `[heal]`).
    pub heal: crate::heal::ladder::LadderPolicy,
}

impl Default for VmSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/steward/vms"),
            accel: Accel::Auto,
            stop_timeout: Duration::from_secs(30),
            qemu: PathBuf::from("qemu-system-x86_64"),
            heal: Default::default(),
        }
    }
}

/// Calls `on_exit(name)` whenever a VM's QEMU under `dir` goes away (crashed, killed, or
/// stopped), so the reconcile loop restarts a crashed VM at once rather than at the next
/// resync. Blocking: run it on a thread of its own. Every `every` the VM directories' pidfiles
/// are checked against `/proc` (three small reads per VM, no QMP) to find the running QEMUs;
/// in between, each one is watched through a pidfd (Linux 5.3+) in one `poll`, which returns
/// the moment a process has exited (after it closed its files, so its disk lock is free).
/// Without pidfds the scan alone notices, within `every`.
pub fn watch_exits(dir: &Path, every: Duration, mut on_exit: impl FnMut(&str)) -> ! {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let pidfd = |pid: i32| {
        rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid)?,
            rustix::process::PidfdFlags::empty(),
        )
        .ok()
    };
    let timeout = Timespec {
        tv_sec: every.as_secs() as i64,
        tv_nsec: i64::from(every.subsec_nanos()),
    };
    let mut live: BTreeMap<String, (i32, Option<std::os::fd::OwnedFd>)> = BTreeMap::new();
    loop {
        let now: BTreeMap<String, i32> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid = driver::live_pid(&VmPaths::new(e.path()))?;
                Some((e.file_name().to_string_lossy().to_string(), pid))
            })
            .collect();
        for name in live.keys().filter(|n| !now.contains_key(*n)) {
            on_exit(name);
        }
        live.retain(|n, (pid, _)| now.get(n) == Some(pid));
        for (name, pid) in now {
            live.entry(name).or_insert_with(|| (pid, pidfd(pid)));
        }
        let (names, mut fds): (Vec<&String>, Vec<PollFd>) = live
            .iter()
            .filter_map(|(n, (_, fd))| Some((n, PollFd::new(fd.as_ref()?, PollFlags::IN))))
            .unzip();
        if fds.is_empty() {
            std::thread::sleep(every);
            continue;
        }
        let _ = poll(&mut fds, Some(&timeout));
        let exited: Vec<String> = fds
            .iter()
            .zip(names)
            .filter(|(p, _)| !p.revents().is_empty())
            .map(|(_, n)| n.clone())
            .collect();
        for name in exited {
            live.remove(&name);
            on_exit(&name);
        }
    }
}

/// The VM side of the reconciler.
pub struct Vms {
    s: VmSettings,
    node: String,
    /// Why KVM did not work, once a start with KVM failed and TCG succeeded.
    kvm_broken: Option<String>,
    /// VMs seen running in this process (to log adoption once).
    seen: HashSet<String>,
    /// Agent-side health probes of running VMs.
    probes: crate::heal::probes::Probes,
    /// Why a VM's start (create, start, restart) failed in the last pass: a failure for its
    /// ladder and rollback in the next one.
    start_failed: BTreeMap<String, String>,
}

fn status(name: &str, state: ResourceState, error: Option<String>) -> ResourceStatus {
    ResourceStatus::new(ResourceKind::Vm, name, state, error)
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> VmError {
    move |e| VmError::Io {
        what,
        reason: e.to_string(),
    }
}

impl Vms {
    pub fn new(s: VmSettings, node: String) -> Self {
        Self {
            s,
            node,
            kvm_broken: None,
            seen: HashSet::new(),
            probes: Default::default(),
            start_failed: BTreeMap::new(),
        }
    }

    /// Probes the running VMs with a health check; how each VM was found, for healing.
    async fn look(
        &mut self,
        spec: &NodeSpec,
        observed: &[ObservedVm],
    ) -> BTreeMap<String, crate::heal::vms::VmSeen> {
        let running = |name: &str| {
            observed
                .iter()
                .any(|o| o.name == name && o.proc == Proc::Alive("running".into()))
        };
        let targets: Vec<crate::heal::probes::Target> = spec
            .vms
            .iter()
            .filter(|v| running(&v.name))
            .filter_map(|v| {
                // A QMP reset reboots the guest in the same QEMU: the record's restart count
                // (which a reset bumps) is part of the instance, so the check's start period
                // begins again, as it does after a restart.
                let p = self.paths(&v.name);
                let restarts = p.load().map(|r| r.restarts).unwrap_or(0);
                Some(crate::heal::probes::Target {
                    name: &v.name,
                    instance: format!("{}/{restarts}", driver::live_pid(&p)?),
                    check: v.healthcheck.as_ref()?,
                    netns_of: None, // from the host, against the guest's address
                })
            })
            .collect();
        let mut health = self.probes.probe(&targets, std::time::Instant::now()).await;
        spec.vms
            .iter()
            .map(|v| {
                let h = health.remove(&v.name);
                let seen = crate::heal::vms::VmSeen {
                    running: running(&v.name),
                    health: h.as_ref().map(|(h, _)| h.as_str().to_string()),
                    probe_error: h.and_then(|(_, e)| e),
                    start_failed: self.start_failed.get(&v.name).cloned(),
                };
                (v.name.clone(), seen)
            })
            .collect()
    }

    fn paths(&self, name: &str) -> VmPaths {
        VmPaths::new(self.s.dir.join(name))
    }

    /// Removes what a crash in the middle of a create or delete left behind.
    fn clean_leftovers(&self) {
        let Ok(rd) = std::fs::read_dir(&self.s.dir) else {
            return;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            let ours = VmPaths::new(e.path())
                .load()
                .is_some_and(|r| r.node == self.node);
            if n.starts_with(".steward-deleting-") || (n.starts_with(".steward-creating-") && ours)
            {
                info!(dir = %e.path().display(), "removing a leftover of an interrupted VM create/delete");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    async fn observe(&mut self) -> Vec<ObservedVm> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.s.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            let p = VmPaths::new(e.path());
            let rec = p.load();
            let owner = rec.as_ref().map(|r| r.node.clone());
            let proc = if owner.as_deref() == Some(self.node.as_str()) {
                driver::observe(&p).await
            } else {
                Proc::Absent
            };
            out.push(ObservedVm {
                name,
                owner,
                launch_hash: rec
                    .as_ref()
                    .map(|r| r.launch_hash.clone())
                    .unwrap_or_default(),
                started: rec.as_ref().is_some_and(|r| r.started),
                proc,
            });
        }
        out
    }

    /// The planner's `actions` put through the heal tracker, for the VMs of `spec` that can be
    /// launched (the others are reported failed, not healed). Returns what healing concluded
    /// and the entries as they were before (for steps a superseded pass never takes).
    fn heal(
        &mut self,
        cx: &mut PassCx<'_>,
        launches: &BTreeMap<String, Launch>,
        seen: &BTreeMap<String, crate::heal::vms::VmSeen>,
        actions: &mut Vec<VmAction>,
    ) -> (Healed, Entries<VmSpec>) {
        let spec = cx.spec;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let healable: Vec<VmSpec> = (spec.vms.iter())
            .filter(|v| launches.contains_key(&v.name))
            .cloned()
            .collect();
        // Ladders and rollback memory of VMs gone from the spec go; a VM whose config cannot
        // be launched right now keeps its own (its last healthy config among them).
        let entries = &mut cx.heal.vms;
        entries.retain(|n, _| spec.vms.iter().any(|v| &v.name == n));
        let unhealed = entries.clone();
        let pass = crate::heal::vms::Pass {
            desired: &healable,
            payloads: &spec.payloads,
            seen,
            policy: &self.s.heal,
            generation: cx.generation,
            now,
        };
        let healed = crate::heal::vms::heal_vms(entries, actions, &pass);
        for name in &healed.acted {
            self.probes.forget(name);
        }
        (healed, unhealed)
    }

    /// Logs each VM found running for the first time in this process.
    fn note_adopted(&mut self, observed: &[ObservedVm]) {
        for o in observed {
            if matches!(o.proc, Proc::Alive(_)) && self.seen.insert(o.name.clone()) {
                info!(vm = %o.name, "found a running VM through its QMP socket: adopted, not restarted");
            }
        }
    }

    /// Every VM of `spec` failed for `why`.
    fn failed_all(spec: &NodeSpec, why: &str) -> WorkloadPass {
        let statuses = (spec.vms.iter())
            .map(|v| status(&v.name, ResourceState::Failed, Some(why.to_string())))
            .collect();
        WorkloadPass {
            statuses,
            ..Default::default()
        }
    }

    /// Taps of running VMs put back on their bridge if it was recreated meanwhile.
    async fn reattach_taps(
        &self,
        launches: &BTreeMap<String, Launch>,
        failed: &BTreeMap<String, String>,
        pass: &crate::pass::Pass,
    ) {
        for (name, l) in launches {
            if !self.seen.contains(name) || failed.contains_key(name) || pass.stopped_by().is_some()
            {
                continue;
            }
            for n in &l.nics {
                if tap::exists(&n.tap) && tap::master(&n.tap).as_deref() != Some(&n.bridge) {
                    let alias = crate::network::types::alias_for(&self.node);
                    match crate::network::attach_port(&n.tap, &n.bridge, n.vlan, &alias).await {
                        Ok(()) => {
                            info!(vm = %name, tap = %n.tap, bridge = %n.bridge, "tap put back on its bridge")
                        }
                        Err(e) => {
                            warn!(vm = %name, tap = %n.tap, error = %e, "re-attaching a tap failed")
                        }
                    }
                }
            }
        }
    }

    /// One status per VM of `spec`: the plan's verdict or the failure of its action, then
    /// what healing concluded and what was seen (`heal::status::workload_status`).
    fn statuses(
        &self,
        spec: &NodeSpec,
        verdicts: &[(String, VmVerdict)],
        failed: &BTreeMap<String, String>,
        seen: &BTreeMap<String, crate::heal::vms::VmSeen>,
        healed: &crate::heal::status::Healed,
    ) -> Vec<ResourceStatus> {
        let mut out = Vec::new();
        for v in &spec.vms {
            let p = self.paths(&v.name);
            let verdict = verdicts.iter().find(|(n, _)| n == &v.name).map(|(_, v)| v);
            let (state, error) = match (failed.get(&v.name), verdict) {
                (Some(e), _) => (ResourceState::Failed, Some(e.clone())),
                (None, Some(VmVerdict::Conflict(w))) => (ResourceState::Conflict, Some(w.clone())),
                (None, Some(VmVerdict::Failed(w))) => (ResourceState::Failed, Some(w.clone())),
                (None, Some(VmVerdict::Pending(w))) => (ResourceState::Pending, Some(w.clone())),
                (None, _) => (ResourceState::Converged, None),
            };
            let seen_now = seen.get(&v.name);
            let rec = p.load().filter(|r| r.node == self.node);
            let outcome = crate::heal::status::Outcome {
                workload: WorkloadRef::new(WorkloadKind::Vm, &v.name),
                pass: (state, error),
                health: seen_now.and_then(|s| s.health.as_deref()),
                probe_error: seen_now.and_then(|s| s.probe_error.as_deref()),
                restarts: rec.as_ref().map_or(0, |r| r.restarts),
                detail: rec.filter(|r| r.started && !r.accel.is_empty()).map(|r| {
                    match &r.accel_note {
                        Some(n) => format!("accelerator {} ({n})", r.accel),
                        None => format!("accelerator {}", r.accel),
                    }
                }),
            };
            let r = crate::heal::status::workload_status(outcome, healed, chrono::Utc::now());
            out.push(r);
        }
        out
    }

    /// The VMs of `spec` as the planner wants them, with their QEMU inputs; a VM whose config
    /// cannot be launched is failed with the reason and taken out of `observed` (never
    /// planned, never deleted).
    #[allow(clippy::type_complexity)]
    fn desired(
        &self,
        spec: &NodeSpec,
        leases: &BTreeMap<String, BTreeMap<usize, crate::network::NicLease>>,
        observed: &mut Vec<ObservedVm>,
    ) -> (
        Vec<DesiredVm>,
        BTreeMap<String, Launch>,
        BTreeMap<String, String>,
    ) {
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        let mut launches: BTreeMap<String, Launch> = BTreeMap::new();
        let mut desired = Vec::new();
        for v in &spec.vms {
            match launch(v, &self.node, leases.get(&v.name)) {
                Ok(l) => {
                    desired.push(DesiredVm {
                        name: v.name.clone(),
                        launch_hash: l.hash(),
                        state: v.state,
                        restart: v.restart,
                    });
                    launches.insert(v.name.clone(), l);
                }
                Err(e) => {
                    observed.retain(|o| o.name != v.name);
                    failed.insert(v.name.clone(), e);
                }
            }
        }
        (desired, launches, failed)
    }

    /// Carries out `actions` in order until the pass is superseded: then the index of the
    /// first action not taken. Failures go into `failed` (and, for a start, `start_failed`).
    async fn apply_all(
        &mut self,
        actions: &[VmAction],
        spec: &NodeSpec,
        launches: &BTreeMap<String, Launch>,
        unusable: &BTreeMap<String, String>,
        pass: &crate::pass::Pass,
        failed: &mut BTreeMap<String, String>,
    ) -> Option<usize> {
        pass.planned(actions.len());
        for (i, a) in actions.iter().enumerate() {
            if pass.superseded().is_some() {
                return Some(i);
            }
            let name = a.name().to_string();
            let vm = spec.vms.iter().find(|v| v.name == name);
            let span = info_span!("vm", action = a.kind(), vm = %name);
            let res = self
                .apply(a, vm, launches.get(&name), unusable)
                .instrument(span)
                .await;
            crate::metrics::get().action(a.kind(), res.is_ok());
            pass.step();
            match res {
                Ok(()) => info!(action = a.kind(), vm = %name, "applied"),
                Err(e) => {
                    warn!(action = a.kind(), vm = %name, error = %e, "VM action failed");
                    if matches!(
                        a,
                        VmAction::Create { start: true, .. }
                            | VmAction::Start { .. }
                            | VmAction::Restart { .. }
                    ) {
                        self.start_failed.insert(name.clone(), e.to_string());
                    }
                    failed.insert(name, format!("{} failed: {e}", a.kind()));
                }
            }
        }
        None
    }
}

#[async_trait]
impl WorkloadPhase for Vms {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Vm
    }

    async fn restart(&mut self, name: &str, _: &mut PassCx<'_>) -> Result<(), String> {
        let restarted = Vms::restart(self, name).await.map_err(|e| e.to_string())?;
        if restarted {
            info!(vm = %name, "restarted after a payload changed");
        }
        Ok(())
    }

    /// Observe → plan → heal → apply → report for every VM of the pass's effective spec.
    /// Bridges in `cx.net.unusable` are not Steward's to use. Once the pass is superseded, the
    /// actions left are not carried out (a VM's create-and-start is one), and their ladders
    /// are left as they were.
    async fn reconcile(&mut self, cx: &mut PassCx<'_>) -> WorkloadPass {
        let spec = cx.spec;
        if spec.vms.is_empty() && !self.s.dir.exists() {
            return WorkloadPass::default();
        }
        if let Err(e) = std::fs::create_dir_all(&self.s.dir) {
            let why = format!(
                "cannot create the VM directory {}: {e}",
                self.s.dir.display()
            );
            return Self::failed_all(spec, &why);
        }
        self.clean_leftovers();
        let mut observed = self.observe().await;
        let (desired, launches, mut failed) = self.desired(spec, &cx.net.vm_leases, &mut observed);
        let (mut actions, verdicts) = plan::plan(&desired, &observed, &self.node);
        let seen = self.look(spec, &observed).await;
        let (healed, unhealed) = self.heal(cx, &launches, &seen, &mut actions);
        self.note_adopted(&observed);
        self.start_failed.clear();
        let unusable = &cx.net.unusable;
        let stopped_at =
            (self.apply_all(&actions, spec, &launches, unusable, cx.pass, &mut failed)).await;
        if let Some(i) = stopped_at {
            // Steps not taken are neither counted on the ladders nor waited for.
            let skipped = actions[i..].iter().map(VmAction::name);
            crate::heal::tracker::restore(&mut cx.heal.vms, &unhealed, skipped);
        }
        self.reattach_taps(&launches, &failed, cx.pass).await;
        // The taps of the VMs seen running, for their activity.
        let interfaces = (launches.iter())
            .filter(|(name, _)| seen.get(*name).is_some_and(|s| s.running))
            .map(|(name, l)| {
                let taps = l.nics.iter().map(|n| n.tap.clone()).collect();
                let w = WorkloadRef::new(WorkloadKind::Vm, name);
                (w, crate::network::counters::Interfaces::Named(taps))
            })
            .collect();
        WorkloadPass {
            statuses: self.statuses(spec, &verdicts, &failed, &seen, &healed),
            rolled_back: !healed.rolled_back_now.is_empty(),
            interfaces,
        }
    }

    fn next_probe_in(&self, spec: &NodeSpec) -> Option<Duration> {
        self.probes.next_due_of(
            (spec.vms.iter()).filter_map(|v| Some((v.name.as_str(), v.healthcheck.as_ref()?))),
            std::time::Instant::now(),
        )
    }
}
