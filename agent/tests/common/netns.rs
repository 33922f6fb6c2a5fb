//! Network-namespace helpers for the host-network tests: every test that changes links gets
//! its own namespace (`ip netns add steward-test-<random>`), runs the real agent binary in it
//! with `ip netns exec`, and inspects it with `ip -n <ns> -d -j link` / `addr`. The namespace
//! is deleted when the [`NetNs`] is dropped, also when the test panics; nothing here touches
//! the host's own namespace.
//!
//! Without `ip` or without the right to make namespaces (not root): in CI (`CI` set) the test
//! fails; elsewhere it is skipped with a loud message.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::docker::in_ci;

/// A fresh network namespace with `lo` up, deleted on drop.
pub struct NetNs {
    pub name: String,
}

/// Creates a namespace, or returns `None` (skipping loudly; panicking under CI) when this
/// machine cannot.
pub fn require_netns() -> Option<NetNs> {
    let name = format!("steward-test-{:08x}", rand::random::<u32>());
    let made = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}); install iproute2"))
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`ip netns add` failed: {} (the tests need root)",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        });
    match made {
        Ok(()) => {
            let ns = NetNs { name };
            ns.ip(&["link", "set", "lo", "up"]);
            Some(ns)
        }
        Err(e) => {
            if in_ci() {
                panic!("CI is set but network namespaces are not usable: {e}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIP {}: {e}; this test did NOT run (with CI=true it fails). ***",
                std::thread::current().name().unwrap_or("test")
            );
            None
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Removes terminal colour codes from log text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What one `steward-agent apply` run in the namespace reported.
pub struct Applied {
    pub code: i32,
    /// The `--json` status.
    pub status: Value,
    /// The agent's log (stderr), colours removed.
    pub log: String,
}

impl Applied {
    /// (state, error) of a resource.
    pub fn state(&self, name: &str) -> (String, String) {
        let r = self.status["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name))
            .unwrap_or_else(|| panic!("{name} not in {}", self.status));
        (
            r["state"].as_str().unwrap_or("").to_string(),
            r["error"].as_str().unwrap_or("").to_string(),
        )
    }

    /// A number from the `networks reconciled ... key=N` log line.
    pub fn summary(&self, key: &str) -> u64 {
        let line = self
            .log
            .lines()
            .rev()
            .find(|l| l.contains("networks reconciled"))
            .unwrap_or_else(|| panic!("no summary line in the log:\n{}", self.log));
        let pat = format!("{key}=");
        let at = line
            .find(&pat)
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        line[at + pat.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    }

    /// Netlink write requests the agent made.
    pub fn writes(&self) -> u64 {
        self.summary("netlink_writes")
    }
}

impl NetNs {
    /// `ip -n <ns> args...`, asserting success; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A command run inside the namespace (`ip netns exec <ns> program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Every link, as `ip -d -j link` shows it.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_str(&self.ip(&["-d", "-j", "link", "show"])).unwrap()
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    /// The addresses of `name` as `addr/prefix`, link-local ones left out.
    pub fn addrs(&self, name: &str) -> Vec<String> {
        let v: Vec<Value> =
            serde_json::from_str(&self.ip(&["-j", "addr", "show", "dev", name])).unwrap();
        v.first()
            .and_then(|l| l["addr_info"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|a| a["scope"] != "link")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// Turns IPv4 forwarding on in the namespace. Where `/proc/sys` is read-only (inside a
    /// container: the fresh-Debian runs), through a procfs of its own, mounted in the private
    /// mount namespace `ip netns exec` makes (it never reaches the host's mounts).
    pub fn enable_forwarding(&self) {
        let set = "sysctl -qw net.ipv4.ip_forward=1 2>/dev/null \
                   || { mount -t proc proc /proc && sysctl -qw net.ipv4.ip_forward=1; }";
        let st = self.command("sh").args(["-c", set]).status().unwrap();
        assert!(st.success(), "cannot turn forwarding on in {}", self.name);
    }

    /// A veth pair `a` / `b`, both in the namespace.
    pub fn veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    }

    /// Runs `steward-agent --data-dir <data> apply --file <spec> --json` in the namespace, with
    /// no Docker engine (networks only) unless `docker` is set.
    pub fn apply(&self, data: &Path, spec: &str, config: Option<&Path>) -> Applied {
        self.apply_in(
            self.command(env!("CARGO_BIN_EXE_steward-agent")),
            data,
            spec,
            config,
        )
    }

    /// [`NetNs::apply`] through `c`, a command running the agent in the namespace (with an
    /// environment of the caller's making).
    pub fn apply_in(
        &self,
        mut c: Command,
        data: &Path,
        spec: &str,
        config: Option<&Path>,
    ) -> Applied {
        let file = data.with_extension("spec.yaml");
        std::fs::write(&file, spec).unwrap();
        c.arg("--data-dir")
            .arg(data)
            .args(["--docker-socket", "/nonexistent/docker.sock"]);
        if let Some(cfg) = config {
            c.arg("--config").arg(cfg);
        }
        let out: Output = c
            .arg("apply")
            .arg("--file")
            .arg(&file)
            .arg("--json")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let log = strip_ansi(&String::from_utf8_lossy(&out.stderr));
        let status = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "apply printed no JSON status ({e}); exit {:?}\nstdout: {}\nlog:\n{log}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout)
            )
        });
        Applied {
            code: out.status.code().unwrap_or(-1),
            status,
            log,
        }
    }
}

/// A temporary data dir for one agent.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state");
    (dir, data)
}

/// `stewardctl --registry URL --token-file TOKEN ARGS...` run in `ns`; its trimmed stdout
/// (panics with its stderr when it fails).
pub fn ctl(ns: &NetNs, url: &str, token: &std::path::Path, args: &[&str]) -> String {
    let out = ns
        .command(super::workspace_bin("stewardctl"))
        .args(["--registry", url, "--token-file"])
        .arg(token)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stewardctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The real registry in `ns` on 127.0.0.1:7700 (data in `dir/registry`, log in
/// `dir/registry.log`), once `stewardctl health` answers: the process, its URL and the admin
/// token file.
pub fn registry(
    ns: &NetNs,
    dir: &std::path::Path,
) -> (super::vm::Proc, &'static str, std::path::PathBuf) {
    let reg_dir = dir.join("registry");
    let url = "http://127.0.0.1:7700";
    let child = super::vm::Proc(
        ns.command(super::workspace_bin("steward-registry"))
            .args([
                "serve",
                "--heartbeat-interval",
                "1s",
                "--listen",
                "127.0.0.1:7700",
            ])
            .arg("--data-dir")
            .arg(&reg_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let admin = reg_dir.join("admin.token");
    super::vm::wait(30, &|| "the registry to answer".into(), || {
        let ok = admin.exists()
            && ns
                .command(super::workspace_bin("stewardctl"))
                .args(["--registry", url, "--token-file"])
                .arg(&admin)
                .arg("health")
                .output()
                .is_ok_and(|o| o.status.success());
        ok.then_some(())
    });
    (child, url, admin)
}
