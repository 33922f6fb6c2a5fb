//! The systemd watchdog, without systemd: the real agent (`apply --watch`) is given a
//! `NOTIFY_SOCKET` (a datagram socket of the test's), `WATCHDOG_USEC` and its own
//! `WATCHDOG_PID`, the way systemd starts a `Type=notify` unit with `WatchdogSec`. It says
//! `READY=1` and pings `WATCHDOG=1` while healthy; once a reconcile pass hangs (the "Docker
//! engine" is a socket of the test's that accepts and never answers) for longer than
//! `watchdog_max_pass`, the pings stop, so systemd would restart it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::{UnixDatagram, UnixListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every datagram received within `within`.
fn drain(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    out
}

#[test]
fn a_hung_reconcile_pass_stops_the_watchdog_pings() {
    let tmp = tempfile::tempdir().unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();

    // A "Docker engine" that drops connections at once (the agent fails fast and its passes
    // finish) until `hang` is set; then it accepts and never answers.
    let docker_path = tmp.path().join("docker.sock");
    let listener = UnixListener::bind(&docker_path).unwrap();
    let hang = Arc::new(AtomicBool::new(false));
    {
        let hang = hang.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                if hang.load(Ordering::SeqCst) {
                    held.push(conn);
                }
            }
        });
    }

    let spec = tmp.path().join("spec.yaml");
    std::fs::write(&spec, "containers:\n  - {name: wd, image: busybox:1}\n").unwrap();
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nresync_interval = \"300s\"\nbackoff_max = \"1s\"\nmetrics_listen = \"off\"\nwatchdog_max_pass = \"1s\"\n",
            tmp.path().join("agent").display()
        ),
    )
    .unwrap();
    let log_path = tmp.path().join("agent.log");
    // `exec` keeps the shell's pid, so WATCHDOG_PID names the agent, as systemd's would.
    let child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_steward-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--docker-socket")
        .arg(&docker_path)
        .args(["apply", "--watch", "--file"])
        .arg(&spec)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _agent = Proc(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Healthy: READY=1, then pings.
    let got = drain(&notify, Duration::from_secs(3));
    assert!(got.iter().any(|m| m == "READY=1"), "{got:?}\n{}", log());
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        pings >= 3,
        "only {pings} pings while healthy: {got:?}\n{}",
        log()
    );
    assert!(log().contains("systemd watchdog enabled"), "{}", log());

    // Hang the next pass in a Docker call.
    hang.store(true, Ordering::SeqCst);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log().contains("a reconcile pass is hung") {
        assert!(
            Instant::now() < deadline,
            "the hang was not noticed:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drain(&notify, Duration::from_millis(100));
    // Four ping periods and more: not one ping.
    let after = drain(&notify, Duration::from_millis(1500));
    assert!(
        !after.iter().any(|m| m == "WATCHDOG=1"),
        "pings went on while a pass hung: {after:?}"
    );
}
