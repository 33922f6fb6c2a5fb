//! Heal bench: a VM's QEMU killed with SIGKILL → the VM running again (QMP `query-status` of a
//! new QEMU says "running"), side by side in the same run, rounds alternating:
//! - the running agent (`steward-agent apply --watch`, resync set to 300 s so only its VM exit
//!   watcher can notice): exit seen → reconcile → the ladder's restart rung → QEMU started;
//! - a supervisor loop restarting the same QEMU command (`while :; do qemu ...; done`): what a
//!   user scripts without an agent (a systemd unit with `Restart=always`, `RestartSec=0` is the
//!   same idea; there is no systemd on our machines).
//!
//! Memory: the resident set of the agent watching its VM, next to the supervisor shell's.
//! The ladder is set to stay on its first rung with no backoff (`attempts_per_rung = 1000`,
//! `backoff_initial = "0s"`), so every round measures a plain restart.
//!
//! `cargo bench -p steward-agent --bench heal [-- --quick]` (root; re-runs itself in a fresh
//! network namespace). Medians are printed and written to `target/bench-results/heal.json`.
//! Timings are reported, never asserted; a VM that does not come back fails the bench.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "agent/vmkit.rs"]
mod vmkit;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vmkit::{median, ms, qmp_running, results_dir, run, wait_running, Reaper};

fn pid_in(pidfile: &Path) -> Option<i32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// Kills the QEMU of `dir` and times until a new QEMU there says running (`log`: what to show
/// when it does not).
fn kill_and_time(dir: &Path, log: &Path) -> Duration {
    let old = pid_in(&dir.join("qemu.pid")).expect("a running QEMU");
    let t = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = t + Duration::from_secs(60);
    loop {
        let new = pid_in(&dir.join("qemu.pid")).filter(|p| *p != old);
        if new.is_some() && qmp_running(&dir.join("qmp.sock")) {
            return t.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{} did not come back (the old QEMU: {:?})\n{}",
            dir.display(),
            std::fs::read_to_string(format!("/proc/{old}/stat")),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Kills a child and its process group on drop.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    let quick = match vmkit::start("heal") {
        Ok(quick) => quick,
        Err(code) => return code,
    };
    let rounds = if quick { 3 } else { 9 };
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_path_buf());
    let base = tmp.path().join("base.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "32M"],
    );
    let vms = tmp.path().join("vms");
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nvm_dir = \"{}\"\nvm_accel = \"tcg\"\nvm_stop_timeout = \"1s\"\nresync_interval = \"300s\"\nmetrics_listen = \"off\"\n[heal]\nattempts_per_rung = 1000\nbackoff_initial = \"0s\"\nbackoff_max = \"0s\"\n",
            tmp.path().join("state").display(),
            vms.display()
        ),
    )
    .unwrap();
    let spec = tmp.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            "vms:\n  - {{name: heal, image: {}, memory: 128Mi, restart: always}}\n",
            base.display()
        ),
    )
    .unwrap();
    let a_log = tmp.path().join("agent.log");
    let agent = Group(
        Command::new(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--config")
            .arg(&cfg)
            .args([
                "--docker-socket",
                "/nonexistent/docker.sock",
                "apply",
                "--watch",
                "--file",
            ])
            .arg(&spec)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&a_log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let a_dir = vms.join("heal");
    wait_running(&a_dir.join("qmp.sock"));

    // The supervisor: the agent's own QEMU command, in the foreground, paths moved.
    let (qemu, qargs): (String, Vec<String>) =
        serde_json::from_slice(&std::fs::read(a_dir.join("qemu.args")).unwrap()).unwrap();
    let h_dir = tmp.path().join("hand");
    std::fs::create_dir_all(&h_dir).unwrap();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            h_dir.join("disk.qcow2").to_str().unwrap(),
        ],
    );
    std::fs::copy(a_dir.join("seed.img"), h_dir.join("seed.img")).unwrap();
    let a_s = a_dir.display().to_string();
    let h_args: Vec<String> = qargs
        .iter()
        .filter(|a| *a != "-daemonize")
        .map(|a| a.replace(&a_s, &h_dir.display().to_string()))
        .collect();
    let supervisor = Group(
        Command::new("sh")
            .args([
                "-c",
                "while :; do \"$@\" >/dev/null 2>&1; done",
                "sh",
                &qemu,
            ])
            .args(&h_args)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    wait_running(&h_dir.join("qmp.sock"));

    // Both VMs running for a moment first (the agent's exit watcher looks every 500 ms: a QEMU
    // it never saw alive is found by the next resync instead).
    std::thread::sleep(Duration::from_secs(2));
    let (mut a_t, mut h_t) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a_t.push(kill_and_time(&a_dir, &a_log));
        h_t.push(kill_and_time(&h_dir, Path::new("/dev/null")));
        std::thread::sleep(Duration::from_secs(1));
    }
    let (a_rss, h_rss) = (rss_kib(agent.0.id()), rss_kib(supervisor.0.id()));
    let restarts = std::fs::read_to_string(tmp.path().join("state/status.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["resources"][0]["restarts"].as_u64())
        .unwrap_or(0);
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "rounds (ms): agent [{}]  supervisor loop [{}]",
        list(&a_t),
        list(&h_t)
    );
    let (a, h) = (median(a_t), median(h_t));
    println!(
        "heal bench: QEMU killed (SIGKILL) → a new QEMU says running, TCG, median of {rounds} \
         rounds (alternating)\n"
    );
    println!("{:<62} {:>10}", "method", "ms");
    println!(
        "{:<62} {:>10.1}",
        "steward-agent apply --watch (exit watcher → ladder: restart)",
        ms(a)
    );
    println!(
        "{:<62} {:>10.1}",
        "supervisor loop: while :; do qemu ...; done",
        ms(h)
    );
    println!(
        "\nagent / supervisor = {:.2}×; resident memory: agent {a_rss} KiB, supervisor shell \
         {h_rss} KiB; restarts the agent counted: {restarts}",
        ms(a) / ms(h)
    );
    let out = json!({
        "rounds": rounds,
        "accel": "tcg",
        "agent_ms": ms(a),
        "supervisor_ms": ms(h),
        "ratio_agent_vs_supervisor": ms(a) / ms(h),
        "agent_rss_kib": a_rss,
        "supervisor_rss_kib": h_rss,
        "agent_restarts_counted": restarts,
    });
    let dir = results_dir();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("heal.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    );
    drop(supervisor);
    drop(agent);
    ExitCode::SUCCESS
}
