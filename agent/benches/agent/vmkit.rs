//! Shared by the VM benches (`vm.rs`, `heal.rs`): a fresh network namespace to run in, QMP
//! asked directly, QEMU cleanup, medians.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The start of a VM bench: its tools are checked, and outside a network namespace the bench
/// runs again inside a fresh one. `Ok(quick)` (`--quick` or `STEWARD_BENCH_QUICK=1`) to go on
/// here; `Err(code)` to exit with.
pub fn start(bench: &str) -> Result<bool, ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("STEWARD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    for c in ["qemu-system-x86_64", "qemu-img", "ip"] {
        if !have(c) {
            eprintln!("{bench} bench: {c} missing (scripts/deps.sh installs it)");
            return Err(ExitCode::FAILURE);
        }
    }
    match in_fresh_netns(bench, &args) {
        Some(code) => Err(code),
        None => Ok(quick),
    }
}

/// Outside a namespace: makes a fresh one, runs this bench again inside it and returns its
/// exit code. Inside (the second run): None, so the bench goes on.
fn in_fresh_netns(bench: &str, args: &[String]) -> Option<ExitCode> {
    if std::env::var("STEWARD_BENCH_VM_NS").is_ok() {
        return None;
    }
    let ns = Ns(format!(
        "steward-bench-{bench}-{:06x}",
        rand::random::<u32>() & 0xffffff
    ));
    run("ip", &["netns", "add", &ns.0]);
    run("ip", &["-n", &ns.0, "link", "set", "lo", "up"]);
    let st = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().unwrap())
        .args(&args[1..])
        .env("STEWARD_BENCH_VM_NS", &ns.0)
        .status()
        .unwrap();
    Some(if st.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub struct Ns(pub String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn qmp_running(sock: &Path) -> bool {
    let Ok(s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return false;
    }
    let _ = w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n");
    let mut n = 0;
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v.get("return").is_some() {
            n += 1;
            if n == 2 {
                return v["return"]["status"] == "running";
            }
        }
    }
}

pub fn wait_running(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qmp_running(sock) {
        assert!(
            Instant::now() < deadline,
            "{} never said running",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn kill_pidfile(p: &Path) {
    if let Ok(pid) = std::fs::read_to_string(p) {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills every QEMU whose command line names a path under the directory (also on panic).
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let needle = self.0.display().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("qemu-system") && cmd.contains(&needle) {
                let _ = Command::new("kill")
                    .args(["-9", &e.file_name().to_string_lossy()])
                    .status();
            }
        }
    }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `<target>/bench-results/`.
pub fn results_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join("bench-results")
}
