//! VMs through the real agent, real QEMU and real netlink, in a fresh network namespace per
//! test (`common::netns`). The guest is Debian's kernel with the harness's busybox initramfs
//! (`tests/guest/vm/test.sh`, virtio-net modules), booted by the agent as a VM with a NIC on a
//! managed bridge. One boot carries most assertions (TCG boots are slow):
//! - QMP (asked by the test itself) says running; the guest's marker is in serial.log;
//! - the tap is a port of the bridge and the guest pings the bridge's address;
//! - the cloud-init seed holds exactly the spec's user-data and meta-data (read back with
//!   mtools); the overlay's backing file is the base, which is left unchanged;
//! - kill -9 of the agent leaves the VM running; the restarted agent adopts it (same pid, one
//!   QEMU);
//! - more memory in the spec: a clean restart with the new `-m`;
//! - QEMU killed by hand is restarted (policy always) and the restart counted;
//! - the VM removed from the spec: process, directory (overlay, seed) and tap gone.
//!
//! The quick test needs no boot: a missing base image is a per-VM error that leaves the rest of
//! the spec converged, and a VM directory the agent did not create is a conflict, left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::netns::{ctl, data_dir, registry, require_netns, strip_ansi};
use common::vm::{
    base_image, qemu_pids, qmp_status, require_tools, status_of, vm_guest, wait, Daemon, QemuReaper,
};
use serde_json::Value;

fn sha(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn mtype(img: &Path, file: &str) -> String {
    let out = Command::new("mtype")
        .arg("-i")
        .arg(img)
        .arg(format!("::{file}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mtype {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

const USER_DATA: &str = "#cloud-config\nhostname: vm-e2e\nruncmd: [echo hello]\n";
const META_DATA: &str = "instance-id: vm-e2e-1\nlocal-hostname: vm-e2e\n";

#[test]
fn vm_boots_on_bridge_outlives_agent_restarts_per_policy_and_is_removed() {
    let Some(ns) = require_netns() else { return };
    let Some(()) = require_tools() else { return };
    let Some(image) = vm_guest("vm-e2e") else {
        return;
    };

    let tmp = tempfile::tempdir().unwrap();
    let vms = tmp.path().join("vms");
    let _reaper = QemuReaper(vms.clone());
    let base = tmp.path().join("base.qcow2");
    base_image(&base);
    let base_sha = sha(&base);

    // Registry and agent daemon, both in the namespace.
    let (_registry, url, admin) = registry(&ns, tmp.path());
    let token = ctl(&ns, url, &admin, &["tokens", "create", "--uses", "1"]);
    let data = tmp.path().join("agent");
    let mut agent = Daemon::new(&ns, tmp.path(), url, &token, &vms);
    let node: Value = wait(
        30,
        &|| format!("the agent to enrol\n{}", agent.log()),
        || serde_json::from_slice(&std::fs::read(data.join("node.json")).ok()?).ok(),
    );
    let node = node["node_id"].as_str().unwrap().to_string();

    let vm_spec = format!(
        "  - name: e2e\n    image: {}\n    memory: 256Mi\n    disk: 64Mi\n    kernel: {}\n    initrd: {}\n    cmdline: \"console=ttyS0 panic=-1 quiet vm.ip=10.77.0.2/24 vm.peer=10.77.0.1\"\n    nics: [{{bridge: br0}}]\n    restart: always\n    cloud_init:\n      user_data: {}\n      meta_data: {}\n",
        base.display(),
        image.kernel.display(),
        image.initramfs.display(),
        serde_json::to_string(USER_DATA).unwrap(),
        serde_json::to_string(META_DATA).unwrap(),
    );
    let net = "networks:\n  bridges:\n    - {name: br0, addresses: [10.77.0.1/24]}\n";
    let spec = tmp.path().join("spec.yaml");
    std::fs::write(&spec, format!("{net}vms:\n{vm_spec}")).unwrap();
    ctl(
        &ns,
        url,
        &admin,
        &["spec", "apply", &node, "-f", spec.to_str().unwrap()],
    );

    let dir = vms.join("e2e");
    let log_path = agent.log.clone();
    let log = move || strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let r = wait(120, &|| format!("the VM to converge\n{}", log()), || {
        status_of(&data, "e2e").filter(|r| r["state"] == "converged")
    });
    let detail = r["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.starts_with("accelerator "), "{r}");
    eprintln!("vm e2e: {detail}");

    // QMP, asked by the test: running. The guest's markers in the serial log.
    assert_eq!(
        qmp_status(&dir.join("qmp.sock")).as_deref(),
        Some("running")
    );
    let serial = dir.join("serial.log");
    let serial_text = || std::fs::read_to_string(&serial).unwrap_or_default();
    wait(
        240,
        &|| format!("the guest's ping result\n{}", serial_text()),
        || serial_text().contains("VM-READY").then_some(()),
    );
    let text = serial_text();
    assert!(text.contains("STEWARD-GUEST-BEGIN"), "{text}");
    assert!(
        text.contains("VM-PING-yes 10.77.0.1"),
        "the guest must reach the bridge:\n{text}"
    );
    // That traffic went over the VM's tap: the VM's activity (its taps' bytes) moved.
    wait(60, &|| format!("the VM's activity\n{}", log()), || {
        let a = status_of(&data, "e2e")?["activity"].as_u64()?;
        (a > 0).then_some(())
    });

    // The tap is a port of br0, marked with the agent's alias, and carries the VM's MAC.
    let rec: Value = serde_json::from_slice(&std::fs::read(dir.join("vm.json")).unwrap()).unwrap();
    let tap = rec["taps"][0].as_str().unwrap().to_string();
    let link = ns.link(&tap).expect("the tap exists");
    assert_eq!(link["master"], "br0", "{link}");
    assert_eq!(link["ifalias"], format!("steward:{node}"));
    let mac_line = text.lines().find(|l| l.starts_with("VM-NIC ")).unwrap();
    let args: Value =
        serde_json::from_slice(&std::fs::read(dir.join("qemu.args")).unwrap()).unwrap();
    assert!(
        args.to_string()
            .contains(&format!("mac={}", &mac_line[7..].trim())),
        "{mac_line} vs {args}"
    );

    // The seed holds exactly the spec's files (read back with mtools), labelled cidata.
    let seed = dir.join("seed.img");
    assert_eq!(mtype(&seed, "user-data"), USER_DATA);
    assert_eq!(mtype(&seed, "meta-data"), META_DATA);
    let label = Command::new("mlabel")
        .args(["-s", "-i"])
        .arg(&seed)
        .arg("::")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&label.stdout)
            .to_ascii_lowercase()
            .contains("cidata"),
        "{label:?}"
    );
    // The overlay is on the base, 64 MiB; the base is never written.
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(dir.join("disk.qcow2"))
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["backing-filename"],
        base.display().to_string(),
        "{info}"
    );
    assert_eq!(info["virtual-size"], 64 << 20);

    // kill -9 of the agent: the VM keeps running; the restarted agent adopts it.
    let pids = qemu_pids(&dir);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = pids[0];
    agent.child = None; // SIGKILL
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(qemu_pids(&dir), vec![pid], "the VM must outlive the agent");
    assert_eq!(
        qmp_status(&dir.join("qmp.sock")).as_deref(),
        Some("running")
    );
    let before = log().matches("reconciled generation").count();
    agent.spawn(&ns);
    wait(
        60,
        &|| format!("two passes of the restarted agent\n{}", log()),
        || (log().matches("reconciled generation").count() >= before + 2).then_some(()),
    );
    assert!(log().contains("adopted, not restarted"), "{}", log());
    assert_eq!(qemu_pids(&dir), vec![pid], "adopted, not duplicated");
    assert_eq!(status_of(&data, "e2e").unwrap()["restarts"], 0);

    // More memory: a clean restart with the new config (not counted as a crash restart).
    // (Each agent process tries KVM once before TCG: that short-lived QEMU is not the VM, so
    // the test waits for the agent to report the action applied before looking at processes.)
    let applied = |kind: &str| log().matches(&format!("applied action=\"{kind}\"")).count();
    let restarts_before = applied("restart");
    std::fs::write(
        &spec,
        format!(
            "{net}vms:\n{}",
            vm_spec.replace("memory: 256Mi", "memory: 320Mi")
        ),
    )
    .unwrap();
    ctl(
        &ns,
        url,
        &admin,
        &["spec", "apply", &node, "-f", spec.to_str().unwrap()],
    );
    wait(90, &|| format!("the config restart\n{}", log()), || {
        (applied("restart") > restarts_before).then_some(())
    });
    let p = qemu_pids(&dir);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_ne!(p[0], pid);
    let pid = p[0];
    let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .replace('\0', " ");
    assert!(cmd.contains("-m 320M"), "{cmd}");
    wait(
        60,
        &|| format!("QMP running after the config restart\n{}", log()),
        || (qmp_status(&dir.join("qmp.sock")).as_deref() == Some("running")).then_some(()),
    );
    assert!(log().contains("config changed"), "{}", log());
    assert_eq!(status_of(&data, "e2e").unwrap()["restarts"], 0);

    // QEMU killed by hand: restarted per policy (always), the restart counted.
    let starts_before = applied("start");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait(60, &|| format!("QEMU to be restarted\n{}", log()), || {
        (applied("start") > starts_before).then_some(())
    });
    let p = qemu_pids(&dir);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_ne!(p[0], pid);
    let new_pid = p[0];
    wait(
        60,
        &|| format!("QMP running after the restart\n{}", log()),
        || (qmp_status(&dir.join("qmp.sock")).as_deref() == Some("running")).then_some(()),
    );
    wait(
        30,
        &|| {
            format!(
                "the restart to be counted: {:?}\n{}",
                status_of(&data, "e2e"),
                log()
            )
        },
        || (status_of(&data, "e2e")?["restarts"] == 1).then_some(()),
    );
    eprintln!("vm e2e: QEMU {pid} killed, restarted as {new_pid}");

    // A payload with `on_change.restart_vms`: a new version restarts the VM.
    let root = tmp.path().join("payloads");
    std::fs::create_dir_all(&root).unwrap();
    for v in ["1", "2"] {
        let f = tmp.path().join(format!("vm.conf.{v}"));
        std::fs::write(&f, format!("version {v}\n")).unwrap();
        ctl(
            &ns,
            url,
            &admin,
            &["payloads", "upload", "vmconf", v, f.to_str().unwrap()],
        );
    }
    let with_payload = |v: &str| {
        format!(
            "{net}vms:\n{}payloads:\n  - {{name: vmconf, version: '{v}', path: {}, on_change: {{restart_vms: [e2e]}}}}\n",
            vm_spec.replace("memory: 256Mi", "memory: 320Mi"),
            root.join("vm.conf").display()
        )
    };
    for v in ["1", "2"] {
        let pid_before = qemu_pids(&dir);
        let starts_before = applied("start");
        std::fs::write(&spec, with_payload(v)).unwrap();
        ctl(
            &ns,
            url,
            &admin,
            &["spec", "apply", &node, "-f", spec.to_str().unwrap()],
        );
        wait(
            90,
            &|| format!("payload {v} and the VM restart\n{}", log()),
            || {
                let deployed =
                    std::fs::read_to_string(root.join("vm.conf")).ok()? == format!("version {v}\n");
                (deployed && applied("start") > starts_before).then_some(())
            },
        );
        let p = qemu_pids(&dir);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_ne!(p, pid_before, "payload {v}: the VM was not restarted");
        wait(
            60,
            &|| format!("QMP running after the payload restart\n{}", log()),
            || (qmp_status(&dir.join("qmp.sock")).as_deref() == Some("running")).then_some(()),
        );
    }
    assert!(
        log().contains("a payload it depends on changed"),
        "{}",
        log()
    );

    // Removed from the spec: process, directory and tap gone; the bridge stays.
    std::fs::write(&spec, net).unwrap();
    ctl(
        &ns,
        url,
        &admin,
        &["spec", "apply", &node, "-f", spec.to_str().unwrap()],
    );
    wait(60, &|| format!("the VM to be removed\n{}", log()), || {
        (qemu_pids(&dir).is_empty() && !dir.exists() && ns.link(&tap).is_none()).then_some(())
    });
    assert!(ns.link("br0").is_some());
    assert_eq!(sha(&base), base_sha, "the base image must never be written");
    let leftovers: Vec<_> = std::fs::read_dir(&vms).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn missing_base_is_a_per_vm_error_and_unmanaged_dirs_are_left_alone() {
    let Some(ns) = require_netns() else { return };
    let Some(()) = require_tools() else { return };
    let (tmp, data) = data_dir();
    let vms = tmp.path().join("vms");
    std::fs::create_dir_all(vms.join("theirs")).unwrap();
    std::fs::write(vms.join("theirs/keep.txt"), "not steward's").unwrap();
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!("vm_dir = \"{}\"\nvm_accel = \"tcg\"\n", vms.display()),
    )
    .unwrap();
    let a = ns.apply(
        &data,
        "networks:\n  bridges:\n    - {name: br0, addresses: [10.78.0.1/24]}\nvms:\n  - {name: nobase, image: /nonexistent/base.qcow2, memory: 64Mi, nics: [{bridge: br0}]}\n  - {name: theirs, image: /nonexistent/base.qcow2, memory: 64Mi}\n",
        Some(&cfg),
    );
    assert_eq!(a.code, 1, "{}", a.log);
    assert_eq!(a.state("br0"), ("converged".into(), String::new()));
    let (state, error) = a.state("nobase");
    assert_eq!(state, "failed");
    assert!(
        error.contains("base image /nonexistent/base.qcow2") && error.contains("No such file"),
        "{error}"
    );
    assert!(
        !vms.join("nobase").exists(),
        "nothing left of a failed create"
    );
    let (state, error) = a.state("theirs");
    assert_eq!(state, "conflict");
    assert!(error.contains("Steward did not create"), "{error}");
    // Removed from the spec: still not touched.
    let a = ns.apply(&data, "{}\n", Some(&cfg));
    assert_eq!(a.code, 0, "{}", a.log);
    assert_eq!(
        std::fs::read_to_string(vms.join("theirs/keep.txt")).unwrap(),
        "not steward's"
    );
}
