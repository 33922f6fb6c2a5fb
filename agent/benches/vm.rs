//! VM bench: spec written → VM running (QMP `query-status` says "running"), side by side in
//! the same run, rounds alternating, with the same `qemu-system-x86_64` command started by
//! hand (the agent's own command line from `qemu.args`, paths moved to another directory):
//! - the agent daemon (`steward-agent run`, real release registry): `PUT /v1/nodes/{id}/spec`
//!   → long-poll → reconcile → QMP running — the production path;
//! - `steward-agent apply --file` (a process per spec: start-up, observe, then the same work);
//! - by hand: the whole sequence a user would type (`qemu-img create` of the overlay,
//!   `ip tuntap add`, `ip link set master`, then QEMU), and the QEMU command alone.
//!
//! The bench re-executes itself inside a fresh network namespace (`ip netns exec`), so the
//! bridges, taps, registry and agent all live there. The accelerator is TCG for all
//! (`vm_accel = "tcg"`: KVM does not work on our machines, and trying it would cost the agent
//! one failed QEMU start per process).
//!
//! `cargo build --release -p steward-registry && cargo bench -p steward-agent --bench vm
//! [-- --quick]` (root). Medians are printed and written to `target/bench-results/vm.json`.
//! Goal (reported, not asserted): agent ≤ 1.2× the by-hand sequence. A round where the agent
//! does not converge fails the bench.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "agent/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "agent/vmkit.rs"]
mod vmkit;

use vmkit::{kill_pidfile, median, ms, results_dir, run, wait_running, Reaper};

fn main() -> ExitCode {
    let quick = match vmkit::start("vm") {
        Ok(quick) => quick,
        Err(code) => return code,
    };
    let rounds = if quick { 3 } else { 7 };
    let registry_bin = match harness::registry_bin() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vm bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(w) = harness::registry_staleness(&registry_bin) {
        eprintln!("{w}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let _reaper = Reaper(tmp.path().to_path_buf());
    let base = tmp.path().join("base.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "32M"],
    );
    let kernel = std::fs::read_dir("/boot").ok().and_then(|rd| {
        rd.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
    });
    let cfg = tmp.path().join("agent.toml");
    let vms = tmp.path().join("vms");
    std::fs::write(
        &cfg,
        format!(
            "vm_dir = \"{}\"\nvm_accel = \"tcg\"\nvm_stop_timeout = \"1s\"\nmetrics_listen = \"off\"\n",
            vms.display()
        ),
    )
    .unwrap();
    let net = "networks:\n  bridges:\n    - {name: br0, addresses: [10.79.0.1/24]}\n";
    let boot = kernel
        .as_ref()
        .map(|k| {
            format!(
                "    kernel: {}\n    cmdline: \"console=ttyS0 quiet\"\n",
                k.display()
            )
        })
        .unwrap_or_default();
    let vm = format!(
        "vms:\n  - name: bench\n    image: {}\n    memory: 256Mi\n    disk: 64Mi\n    nics: [{{bridge: br0}}]\n    cloud_init: {{user_data: \"#cloud-config\\n\"}}\n{boot}",
        base.display()
    );
    let spec = tmp.path().join("spec.yaml");
    let agent = |spec_text: &str| -> (bool, String) {
        std::fs::write(&spec, spec_text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(tmp.path().join("state"))
            .args([
                "--docker-socket",
                "/nonexistent/docker.sock",
                "apply",
                "--file",
            ])
            .arg(&spec)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // The bridge first (not timed), and one VM to learn the agent's QEMU command.
    let (ok, log) = agent(net);
    assert!(ok, "{log}");
    let (ok, log) = agent(&format!("{net}{vm}"));
    assert!(ok, "{log}");
    let args_file: (String, Vec<String>) =
        serde_json::from_slice(&std::fs::read(vms.join("bench/qemu.args")).unwrap()).unwrap();
    let (ok, log) = agent(net);
    assert!(ok, "{log}");

    let hand_dir = tmp.path().join("hand");
    let agent_dir = vms.join("bench").display().to_string();
    let hand_args: Vec<String> = args_file
        .1
        .iter()
        .map(|a| {
            a.replace(&agent_dir, &hand_dir.display().to_string())
                .replace("stv", "hnd")
        })
        .collect();
    let tap = hand_args
        .iter()
        .find_map(|a| {
            a.split("ifname=")
                .nth(1)
                .map(|r| r.split(',').next().unwrap().to_string())
        })
        .unwrap();

    // The daemon: the real registry and `steward-agent run`, both in this namespace, on their
    // own bridge and VM directory (node id of their own, so the two agents never share a link).
    let registry = rt
        .block_on(harness::Registry::start(Duration::from_secs(5)))
        .unwrap();
    let token = rt.block_on(registry.enrollment_token()).unwrap();
    let d_data = tmp.path().join("state-d");
    let d_vms = tmp.path().join("vms-d");
    let d_cfg = tmp.path().join("agent-d.toml");
    std::fs::write(
        &d_cfg,
        format!(
            "registry = \"{}\"\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\nvm_dir = \"{}\"\nvm_accel = \"tcg\"\nvm_stop_timeout = \"1s\"\nmetrics_listen = \"off\"\nlong_poll_wait = \"60s\"\n",
            registry.url(""),
            d_data.display(),
            d_vms.display()
        ),
    )
    .unwrap();
    let _daemon = harness::Proc {
        child: Some(
            Command::new(env!("CARGO_BIN_EXE_steward-agent"))
                .arg("--config")
                .arg(&d_cfg)
                .args(["--docker-socket", "/nonexistent/docker.sock", "run"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(tmp.path().join("agent-d.log")).unwrap())
                .spawn()
                .unwrap(),
        ),
        what: "steward-agent run",
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        if let Some(v) = std::fs::read(d_data.join("node.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            break v["node_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the daemon did not enrol");
        std::thread::sleep(Duration::from_millis(20));
    };
    let net_d = "networks:\n  bridges:\n    - {name: br1, addresses: [10.80.0.1/24]}\n";
    let vm_d = vm
        .replace("name: bench", "name: benchd")
        .replace("bridge: br0", "bridge: br1");
    rt.block_on(registry.put_spec(&node, net_d)).unwrap();
    let d_sock = d_vms.join("benchd/qmp.sock");
    let gone = |p: &Path| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.exists() {
            assert!(Instant::now() < deadline, "{} was not removed", p.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut d_t = Vec::new();

    let (mut a_t, mut h_full, mut h_qemu, mut noop) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Daemon: spec written to the registry → QMP running.
        let t = Instant::now();
        rt.block_on(registry.put_spec(&node, &format!("{net_d}{vm_d}")))
            .unwrap();
        wait_running(&d_sock);
        d_t.push(t.elapsed());
        rt.block_on(registry.put_spec(&node, net_d)).unwrap(); // delete (not timed)
        gone(&d_vms.join("benchd"));

        // Agent: spec written → apply → QMP running.
        let t = Instant::now();
        let (ok, log) = agent(&format!("{net}{vm}"));
        wait_running(&vms.join("bench/qmp.sock"));
        let d = t.elapsed();
        assert!(ok, "round {round}: the agent did not converge:\n{log}");
        a_t.push(d);
        // The same spec again: a no-op pass (process start, observe, QMP), the fixed cost.
        let t = Instant::now();
        let (ok, log) = agent(&format!("{net}{vm}"));
        noop.push(t.elapsed());
        assert!(ok, "{log}");
        let (ok, log) = agent(net); // delete (not timed)
        assert!(ok, "{log}");

        // By hand: overlay, tap on the bridge, the same QEMU command → QMP running.
        let _ = std::fs::remove_dir_all(&hand_dir);
        std::fs::create_dir_all(&hand_dir).unwrap();
        // A seed image of the agent's size (its content does not matter to QEMU).
        std::fs::write(hand_dir.join("seed.img"), vec![0u8; 512 << 10]).unwrap();
        let t = Instant::now();
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
                hand_dir.join("disk.qcow2").to_str().unwrap(),
                "64M",
            ],
        );
        run("ip", &["tuntap", "add", "dev", &tap, "mode", "tap"]);
        run("ip", &["link", "set", "dev", &tap, "master", "br0", "up"]);
        let tq = Instant::now();
        let st = Command::new(&args_file.0)
            .args(&hand_args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "QEMU by hand failed");
        wait_running(&hand_dir.join("qmp.sock"));
        h_qemu.push(tq.elapsed());
        h_full.push(t.elapsed());
        kill_pidfile(&hand_dir.join("qemu.pid"));
        run("ip", &["link", "del", &tap]);
    }
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "rounds (ms): apply [{}]  by-hand sequence [{}]  QEMU alone [{}]",
        list(&a_t),
        list(&h_full),
        list(&h_qemu)
    );
    println!("daemon rounds (ms): [{}]", list(&d_t));
    let (a, hf, hq, nop) = (median(a_t), median(h_full), median(h_qemu), median(noop));
    let dm = median(d_t);
    println!(
        "vm bench: spec written → QMP \"running\", TCG, median of {rounds} rounds (alternating)\n"
    );
    println!("{:<58} {:>10}", "method", "ms");
    println!(
        "{:<58} {:>10.1}",
        "steward-agent run: PUT spec → long-poll → QEMU running",
        ms(dm)
    );
    println!(
        "{:<58} {:>10.1}",
        "steward-agent apply --file (create overlay, seed, tap, QEMU)",
        ms(a)
    );
    println!(
        "{:<58} {:>10.1}",
        "by hand: qemu-img + ip tuntap + ip link + same QEMU command",
        ms(hf)
    );
    println!(
        "{:<58} {:>10.1}",
        "by hand: the same QEMU command alone",
        ms(hq)
    );
    println!(
        "{:<58} {:>10.1}",
        "steward-agent apply, VM already running (no-op pass)",
        ms(nop)
    );
    println!(
        "\ndaemon / by-hand sequence = {:.2}× (goal ≤ 1.2×); apply / by-hand sequence = {:.2}×; \
         apply / QEMU alone = {:.2}×",
        ms(dm) / ms(hf),
        ms(a) / ms(hf),
        ms(a) / ms(hq)
    );
    let out = json!({
        "rounds": rounds,
        "accel": "tcg",
        "daemon_ms": ms(dm),
        "ratio_daemon_vs_sequence": ms(dm) / ms(hf),
        "apply_ms": ms(a),
        "by_hand_sequence_ms": ms(hf),
        "by_hand_qemu_only_ms": ms(hq),
        "agent_noop_ms": ms(nop),
        "ratio_apply_vs_sequence": ms(a) / ms(hf),
        "ratio_apply_vs_qemu_only": ms(a) / ms(hq),
        "goal_ratio": 1.2,
    });
    let dir = results_dir();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("vm.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    );
    ExitCode::SUCCESS
}
