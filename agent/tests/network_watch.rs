//! `steward-agent apply --file F --watch` in a fresh network namespace: the daemon's reconcile
//! loop fed by a local file. A re-apply (SIGHUP) of the converged spec reuses the links the
//! previous pass dumped (`observed=events`, no netlink write) while the event listener saw no
//! change; a bridge deleted by hand moves the event epoch, so the next pass dumps and restores
//! it; an edited file is applied; an invalid edit is refused and the spec in force stays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::netns::{require_netns, strip_ansi};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 50 ms until it returns Some; panics with `what` after `secs` (a bound
/// against hangs, not a timing assertion).
fn wait<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `networks reconciled` summary lines of the log so far.
fn passes(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("networks reconciled"))
        .map(str::to_string)
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 2;
    line[at..].split_whitespace().next().unwrap()
}

#[test]
fn watch_mode_reuses_observations_until_an_event_and_follows_the_file() {
    let Some(ns) = require_netns() else { return };
    let tmp = tempfile::tempdir().unwrap();
    ns.veth("w0", "w0peer");
    let spec = tmp.path().join("spec.yaml");
    std::fs::write(
        &spec,
        "networks:\n  bridges:\n    - {name: brw, addresses: [10.41.0.1/24], ports: [{iface: w0}]}\n",
    )
    .unwrap();
    let data = tmp.path().join("agent");
    let log_path = tmp.path().join("agent.log");
    let child = ns
        .command(env!("CARGO_BIN_EXE_steward-agent"))
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--docker-socket",
            "/nonexistent/docker.sock",
            "--resync-interval",
            "300s",
            "apply",
            "--watch",
            "--file",
        ])
        .arg(&spec)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _agent = Proc(child);
    let log = || strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());

    // Created, then a pass with no write (woken by the events of its own writes).
    wait(30, "brw created", || {
        let p = passes(&log());
        p.iter()
            .any(|l| field(l, "netlink_writes") != "0")
            .then_some(())
    });
    assert_eq!(ns.link("w0").unwrap()["master"], "brw");
    wait(30, "a pass without writes after the create", || {
        let p = passes(&log());
        (field(p.last()?, "netlink_writes") == "0").then_some(())
    });

    // SIGHUP: a re-apply of the converged spec. Kernel events of the new links (IPv6 DAD, ...)
    // may still arrive for a moment and rightly force a dump; once they stop, the re-apply must
    // come from the event-fed cache.
    let mut from_cache = None;
    for _ in 0..20 {
        let before = passes(&log()).len();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let line = wait(20, "the re-apply after SIGHUP", || {
            passes(&log()).get(before).cloned()
        });
        assert_eq!(field(&line, "netlink_writes"), "0", "{line}");
        if field(&line, "observed") == "events" {
            from_cache = Some(line);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let line = from_cache.unwrap_or_else(|| {
        panic!(
            "no re-apply reused the observed links:\n{}",
            passes(&log()).join("\n")
        )
    });
    eprintln!("re-apply from the event-fed cache: {line}");

    // Deleted by hand: the event moves the epoch; the next pass dumps and restores it.
    let before = passes(&log()).len();
    let old = ns.link("brw").unwrap()["ifindex"].clone();
    ns.ip(&["link", "del", "dev", "brw"]);
    let back = wait(20, &format!("brw restored\n{}", log()), || ns.link("brw"));
    assert_ne!(back["ifindex"], old);
    // Its summary line comes at the end of the pass, after the link is back.
    let restoring = wait(20, "the restoring pass's summary", || {
        passes(&log())
            .split_off(before)
            .into_iter()
            .find(|l| field(l, "netlink_writes") != "0")
    });
    assert_eq!(field(&restoring, "observed"), "dump", "{restoring}");
    wait(20, "w0 back in brw", || {
        (ns.link("w0")?["master"] == "brw").then_some(())
    });

    // The file edited: a second bridge appears.
    std::fs::write(
        &spec,
        "networks:\n  bridges:\n    - {name: brw, addresses: [10.41.0.1/24], ports: [{iface: w0}]}\n    - {name: brx}\n",
    )
    .unwrap();
    wait(20, "brx created from the edited file", || ns.link("brx"));

    // An invalid edit is refused; what is in force stays.
    std::fs::write(&spec, "networks:\n  bridges:\n    - {name: 'bad name!'}\n").unwrap();
    wait(20, "the invalid file to be refused", || {
        log().contains("spec file refused").then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(ns.link("brw").is_some() && ns.link("brx").is_some());
    let l = log();
    assert!(
        l.contains("bad name!") || l.contains("bridges[0].name"),
        "{l}"
    );
}
