//! Carrying out the VM plan's actions: create (directory, record and overlay under a temporary
//! name, then renamed), start (taps made and put on their bridges, QEMU spawned detached, KVM
//! tried with a TCG fallback), stop, restart, QMP reset and delete.

use std::collections::BTreeMap;
use std::path::Path;

use steward_proto::quantity::parse_memory;
use steward_proto::VmSpec;
use tracing::{info, warn};

use super::driver::{self, Launch, LaunchNic, VmPaths, VmRecord};
use super::plan::VmAction;
use super::{disk, io_err, seed, tap, Accel, VmError, Vms};

impl Vms {
    pub(super) async fn apply(
        &mut self,
        a: &VmAction,
        vm: Option<&VmSpec>,
        l: Option<&Launch>,
        unusable: &BTreeMap<String, String>,
    ) -> Result<(), VmError> {
        let need = |what: &str| VmError::Qemu {
            reason: format!("internal: no {what} for this VM"),
        };
        match a {
            VmAction::Create { name, start } => {
                let vm = vm.ok_or_else(|| need("spec"))?;
                self.create(vm, l.ok_or_else(|| need("launch"))?).await?;
                if *start {
                    self.start(name, l.ok_or_else(|| need("launch"))?, false, unusable)
                        .await?;
                }
                Ok(())
            }
            VmAction::Start {
                name,
                reason,
                crash,
            } => {
                info!(%reason, "starting");
                self.start(name, l.ok_or_else(|| need("launch"))?, *crash, unusable)
                    .await
            }
            VmAction::Restart {
                name,
                reason,
                crash,
            } => {
                info!(%reason, "restarting");
                self.stop(name).await?;
                self.start(name, l.ok_or_else(|| need("launch"))?, *crash, unusable)
                    .await
            }
            VmAction::Stop { name, reason } => {
                info!(%reason, "stopping");
                self.stop(name).await
            }
            VmAction::Delete { name, reason } => {
                info!(%reason, "deleting");
                self.delete(name).await
            }
            VmAction::Reset { name, reason } => {
                warn!(%reason, "resetting the guest");
                driver::reset(&self.paths(name)).await?;
                if let Some(mut rec) = self.paths(name).load() {
                    rec.restarts += 1;
                    self.paths(name).save(&rec)?;
                }
                Ok(())
            }
        }
    }

    /// Directory, record and overlay, made under a temporary name and renamed into place.
    async fn create(&mut self, vm: &VmSpec, l: &Launch) -> Result<(), VmError> {
        // The taps are recorded with the directory (one durable write less on the way to a
        // running VM), so their names must be free now.
        for n in &l.nics {
            if tap::exists(&n.tap) {
                return Err(VmError::Conflict(format!(
                    "a link named {} exists that Steward did not create for this VM; left alone",
                    n.tap
                )));
            }
        }
        let base = Path::new(&vm.image);
        let info = disk::probe(base).await?;
        let size = match &vm.disk {
            Some(q) => Some(parse_memory(q).map_err(|e| VmError::Disk { reason: e })?),
            None => None,
        };
        let tmp = self.s.dir.join(format!(
            ".steward-creating-{}-{:08x}",
            vm.name,
            rand::random::<u32>()
        ));
        std::fs::create_dir(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        // The seed may carry secrets in its user-data: the VM's files are the agent's only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", tmp.display())))?;
        let res = async {
            let p = VmPaths::new(tmp.clone());
            p.save(&VmRecord {
                node: self.node.clone(),
                name: vm.name.clone(),
                taps: l.nics.iter().map(|n| n.tap.clone()).collect(),
                ..Default::default()
            })?;
            disk::create_overlay(base, &info, &p.disk(), size).await?;
            let dest = self.paths(&vm.name).dir;
            std::fs::rename(&tmp, &dest).map_err(io_err(format!("renaming to {}", dest.display())))
        }
        .await;
        if res.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            info!(vm = %vm.name, base = %vm.image, "VM directory and overlay created");
        }
        res
    }

    async fn start(
        &mut self,
        name: &str,
        l: &Launch,
        crash: bool,
        unusable: &BTreeMap<String, String>,
    ) -> Result<(), VmError> {
        let t0 = std::time::Instant::now();
        let p = self.paths(name);
        let mut rec = p
            .load()
            .ok_or_else(|| VmError::Conflict(format!("{} has no record", p.dir.display())))?;
        seed::build(
            &p.seed(),
            &l.seed
                .iter()
                .map(|(n, c)| (n.as_str(), c.clone()))
                .collect::<Vec<_>>(),
        )?;
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "seed built");
        self.prepare_taps(&p, &mut rec, l, unusable).await?;
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "taps ready");
        let (accel, note) = self.spawn_qemu(name, &p, l).await?;
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "QEMU answers QMP");
        if accel == "kvm" && driver::kvm_enabled(&p).await == Some(false) {
            warn!(vm = %name, "QMP says KVM is not enabled");
        }
        rec.started = true;
        rec.launch_hash = l.hash();
        rec.accel = accel.to_string();
        rec.accel_note = note;
        if crash {
            rec.restarts += 1;
        }
        p.save(&rec)?;
        self.seen.insert(name.to_string());
        info!(vm = %name, accel, pid = driver::live_pid(&p), "QEMU started (detached)");
        Ok(())
    }

    /// The VM's taps: each recorded first, then made and put on its bridge; taps of NICs no
    /// longer wanted removed.
    async fn prepare_taps(
        &self,
        p: &VmPaths,
        rec: &mut VmRecord,
        l: &Launch,
        unusable: &BTreeMap<String, String>,
    ) -> Result<(), VmError> {
        let alias = crate::network::types::alias_for(&self.node);
        for n in &l.nics {
            check_bridge(n, unusable)?;
            if !rec.taps.contains(&n.tap) {
                if tap::exists(&n.tap) {
                    return Err(VmError::Conflict(format!(
                        "a link named {} exists that Steward did not create for this VM; left alone",
                        n.tap
                    )));
                }
                rec.taps.push(n.tap.clone());
                p.save(rec)?;
            }
            create_tap(&n.tap).await?;
            crate::network::attach_port(&n.tap, &n.bridge, n.vlan, &alias)
                .await
                .map_err(|e| VmError::Nic {
                    bridge: n.bridge.clone(),
                    reason: e.to_string(),
                })?;
        }
        let stale: Vec<String> = rec
            .taps
            .iter()
            .filter(|t| !l.nics.iter().any(|n| &n.tap == *t))
            .cloned()
            .collect();
        for t in stale {
            tap::remove(&t)?;
            rec.taps.retain(|x| x != &t);
            p.save(rec)?;
        }
        Ok(())
    }

    /// Spawns QEMU with KVM or TCG as configured; under `auto`, a KVM start that fails is tried
    /// again with TCG and KVM is not tried again by this process. Returns the accelerator used
    /// and the note on it for the status.
    async fn spawn_qemu(
        &mut self,
        name: &str,
        p: &VmPaths,
        l: &Launch,
    ) -> Result<(&'static str, Option<String>), VmError> {
        let (accel, note) = match (self.s.accel, &self.kvm_broken) {
            (Accel::Tcg, _) => ("tcg", Some("configured: vm_accel = tcg".to_string())),
            (Accel::Kvm, _) => ("kvm", None),
            (Accel::Auto, Some(why)) => ("tcg", Some(format!("KVM not used: {why}"))),
            (Accel::Auto, None) => ("kvm", None),
        };
        match driver::spawn(&self.s.qemu, p, l, accel).await {
            Ok(_) => Ok((accel, note)),
            Err(e) if self.s.accel == Accel::Auto && accel == "kvm" => {
                let why = e.to_string();
                warn!(vm = %name, error = %why, "QEMU with KVM failed; trying TCG");
                driver::spawn(&self.s.qemu, p, l, "tcg").await?;
                self.kvm_broken = Some(why.clone());
                Ok(("tcg", Some(format!("KVM not used: {why}"))))
            }
            Err(e) => Err(e),
        }
    }

    /// Restarts a running VM this node owns (for a payload's `on_change.restart_vms`): a
    /// graceful stop now; the next plan starts it again with its spec. False when it is not
    /// running or not ours.
    pub async fn restart(&mut self, name: &str) -> Result<bool, VmError> {
        let p = self.paths(name);
        let ours = p.load().is_some_and(|r| r.node == self.node);
        if !ours || driver::live_pid(&p).is_none() {
            return Ok(false);
        }
        info!(vm = %name, "restarting: a payload it depends on changed");
        self.stop(name).await?;
        Ok(true)
    }

    async fn stop(&mut self, name: &str) -> Result<(), VmError> {
        let p = self.paths(name);
        driver::stop(&p, self.s.stop_timeout).await?;
        if let Some(mut rec) = p.load() {
            rec.started = false;
            p.save(&rec)?;
        }
        self.seen.remove(name);
        Ok(())
    }

    async fn delete(&mut self, name: &str) -> Result<(), VmError> {
        self.stop(name).await?;
        let p = self.paths(name);
        if let Some(rec) = p.load() {
            for t in &rec.taps {
                tap::remove(t)?;
            }
        }
        let trash = self.s.dir.join(format!(
            ".steward-deleting-{name}-{:08x}",
            rand::random::<u32>()
        ));
        std::fs::rename(&p.dir, &trash).map_err(io_err(format!("renaming {}", p.dir.display())))?;
        std::fs::remove_dir_all(&trash).map_err(io_err(format!("removing {}", trash.display())))?;
        info!(vm = %name, "VM deleted: process, taps, overlay and seed gone");
        Ok(())
    }
}

/// Creates (or takes) the VM's tap, waiting up to 10 s while another process still holds it: a
/// QEMU killed a moment ago lets go of its tap only when its exit completes, and failing the
/// start then would count as one more failure on the VM's ladder.
async fn create_tap(name: &str) -> Result<(), VmError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tap::create_or_busy(name)? {
            Ok(()) => return Ok(()),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(VmError::Tap {
                    tap: name.to_string(),
                    reason: format!(
                        "TUNSETIFF: {e}: another process (a QEMU?) still holds it after 10 s"
                    ),
                })
            }
        }
    }
}

/// Refuses a NIC whose bridge the network pass found unusable or that is not a bridge here.
fn check_bridge(n: &LaunchNic, unusable: &BTreeMap<String, String>) -> Result<(), VmError> {
    if let Some(why) = unusable.get(&n.bridge) {
        return Err(VmError::Nic {
            bridge: n.bridge.clone(),
            reason: format!("the bridge cannot be used: {why}"),
        });
    }
    if !Path::new("/sys/class/net")
        .join(&n.bridge)
        .join("bridge")
        .exists()
    {
        return Err(VmError::Nic {
            bridge: n.bridge.clone(),
            reason: "no such bridge on this host; declare it under networks.bridges".into(),
        });
    }
    Ok(())
}
