//! Installing like an operator would, end to end:
//! - the Debian packages pass lintian (no error, no warning) and their systemd units pass
//!   `systemd-analyze verify`;
//! - the cloud-init templates and `stewardctl cloud-init` output pass `cloud-init schema`, and
//!   a single-use token in them enrols exactly once;
//! - in a clean Debian machine (debootstrap'd image on the test dockerd, host network): the
//!   user-data's files and commands install the agent package from a real registry (TLS,
//!   pinned certificate), the agent, started as its unit's `ExecStart=`, enrols and turns
//!   ready; its workload survives a reinstall and an agent stop; `dpkg --remove` keeps the
//!   configuration and state, `dpkg --purge` deletes them;
//! - the registry's `/install.sh` does the same with one command, and the registry package
//!   installs with its system user and serves the agent package it carries.
//!
//! Needs docker, debootstrap, lintian, systemd, cloud-init, shellcheck, dpkg-dev and help2man
//! (scripts/deps.sh); under CI a missing one fails the test. Run alone with
//! `cargo test -p steward-registry --test e2e_install` after `cargo build --workspace`.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "install/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Registry;
use serde_json::{json, Value};
use support::{ok, packages, Machine, Workloads};

/// A registry serving HTTPS (self-signed certificate for 127.0.0.1) with `packages_dir`.
struct TlsRegistry {
    reg: Registry,
    dir: tempfile::TempDir,
}

impl TlsRegistry {
    async fn start(packages_dir: &Path) -> TlsRegistry {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        let arg = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        let (cert, key, pkgs) = (
            arg("cert.pem"),
            arg("key.pem"),
            packages_dir.to_string_lossy(),
        );
        let reg = Registry::start_with(
            &[
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--packages-dir",
                &pkgs,
                "--heartbeat-interval",
                "1s",
            ],
            "https",
            Some(ck.cert.pem()),
        )
        .await;
        TlsRegistry { reg, dir }
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// `stewardctl` as an admin of this registry.
    fn ctl(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_stewardctl"));
        c.arg("--config")
            .arg("/dev/null")
            .arg("--registry")
            .arg(self.reg.url(""))
            .arg("--ca-file")
            .arg(self.cert())
            .arg("--token-file")
            .arg(self.reg.dir.path().join("data/admin.token"));
        c
    }

    /// Waits until a node labelled `via=VIA` is ready and has sent a heartbeat.
    async fn wait_ready(&self, via: &str, m: &Machine) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, nodes) = self.reg.get("/v1/nodes", &self.reg.admin).await;
            let node = nodes.as_array().and_then(|a| {
                a.iter()
                    .find(|n| n["labels"]["via"] == via && n["health"] == "ready")
                    .filter(|n| !n["last_heartbeat"].is_null())
                    .cloned()
            });
            if let Some(n) = node {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no ready node via={via}: {nodes}\nagent log:\n{}\nregistry log:\n{}",
                m.agent_log(),
                self.reg.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs `cloud-init schema --config-file` on `path`.
fn schema_ok(path: &Path) {
    ok(Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(path));
}

/// The `write_files` entry for `path` in user-data.
fn write_file<'a>(user_data: &'a serde_norway::Value, path: &str) -> &'a serde_norway::Value {
    user_data["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("no write_files entry for {path}"))
}

/// The value of `key = "..."` in a TOML text.
fn toml_str(text: &str, key: &str) -> Option<String> {
    let v: toml::Value = toml::from_str(text).unwrap();
    v.get(key).and_then(|s| s.as_str()).map(str::to_string)
}

#[test]
fn packages_pass_lintian_and_their_units_verify() {
    if !support::require_tools(&[
        "lintian",
        "systemd-analyze",
        "shellcheck",
        "dpkg-shlibdeps",
        "help2man",
    ]) {
        return;
    }
    let p = packages();
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--no-tag-display-limit"])
        .arg(&p.agent)
        .arg(&p.registry)
        .output()
        .unwrap();
    let report = support::text(&out);
    assert!(out.status.success(), "lintian:\n{report}");
    for l in report.lines() {
        assert!(!l.starts_with("E:") && !l.starts_with("W:"), "lintian: {l}");
    }

    // Both packages unpacked in one root, with the host's systemd targets for the units'
    // dependencies; man pages from that root. `verify` exits 0 even for unknown keys, so any
    // output at all fails.
    let root = tempfile::tempdir().unwrap();
    for deb in [&p.agent, &p.registry] {
        ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()));
    }
    let units = root.path().join("lib/systemd/system");
    for e in std::fs::read_dir("/lib/systemd/system").unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".target") {
            let _ = std::fs::copy(e.path(), units.join(e.file_name()));
        }
    }
    for unit in ["steward-agent.service", "steward-registry.service"] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.path().display()))
            .arg(units.join(unit))
            .env("MANPATH", root.path().join("usr/share/man"))
            .output()
            .unwrap();
        let said = support::text(&out);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{said}"
        );
    }

    let agent = std::fs::read_to_string(units.join("steward-agent.service")).unwrap();
    for line in [
        "Restart=always",
        "KillMode=process",
        "ConditionPathExists=/etc/steward/agent.toml",
        "After=network-online.target docker.service",
        "Wants=network-online.target",
        "ExecStart=/usr/bin/steward-agent --config /etc/steward/agent.toml run",
        "NoNewPrivileges=yes",
    ] {
        assert!(agent.lines().any(|l| l == line), "agent unit lacks {line}");
    }
    let registry = std::fs::read_to_string(units.join("steward-registry.service")).unwrap();
    for line in [
        "User=steward-registry",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=steward-registry",
        "CapabilityBoundingSet=",
        "PrivateDevices=yes",
    ] {
        assert!(
            registry.lines().any(|l| l == line),
            "registry unit lacks {line}"
        );
    }
    // The registry package carries the agent package it serves; the configs are conffiles.
    let agent_deb = root
        .path()
        .join("usr/share/steward/packages")
        .join(p.agent.file_name().unwrap());
    assert_eq!(
        std::fs::read(agent_deb).unwrap(),
        std::fs::read(&p.agent).unwrap()
    );
    let conffiles = |deb: &Path| {
        let d = tempfile::tempdir().unwrap();
        ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(d.path()));
        std::fs::read_to_string(d.path().join("conffiles")).unwrap()
    };
    assert_eq!(conffiles(&p.agent), "/etc/default/steward-agent\n");
    assert_eq!(
        conffiles(&p.registry),
        "/etc/default/steward-registry\n/etc/steward/registry.toml\n"
    );

    // The shell that runs as root on other machines passes shellcheck.
    let ws = support::workspace();
    let mut sc = Command::new("shellcheck");
    sc.current_dir(&ws)
        .args(["-s", "sh", "packaging/install.sh"]);
    for s in ["postinst", "prerm", "postrm"] {
        for pkg in ["steward-agent", "steward-registry"] {
            sc.arg(format!("packaging/deb/{pkg}.{s}"));
        }
    }
    ok(&mut sc);
    ok(Command::new("shellcheck").current_dir(&ws).args([
        "packaging/build-deb.sh",
        "registry/tests/install/debian-rootfs.sh",
    ]));
}

#[tokio::test]
async fn cloud_init_user_data_passes_the_schema_and_its_token_enrols_once() {
    if !support::require_tools(&["cloud-init"]) {
        return;
    }
    let ws = support::workspace();
    for t in ["cloud-init/registry.yaml", "cloud-init/apt.yaml"] {
        schema_ok(&ws.join(t));
    }
    // The registry only hashes what it serves: any bytes do for rendering.
    let pkgs = tempfile::tempdir().unwrap();
    std::fs::write(
        pkgs.path().join("steward-agent_0.1.0_amd64.deb"),
        "not really a deb",
    )
    .unwrap();
    let r = TlsRegistry::start(pkgs.path()).await;
    let work = tempfile::tempdir().unwrap();

    // Template registry, single use.
    let user_data = ok(r.ctl().args([
        "cloud-init",
        "--labels",
        "role=web,via=schema-test",
        "--uses",
        "1",
    ]));
    let file = work.path().join("registry.yaml");
    std::fs::write(&file, &user_data).unwrap();
    schema_ok(&file);
    let doc: serde_norway::Value = serde_norway::from_str(&user_data).unwrap();
    let cfg = write_file(&doc, "/etc/steward/agent.toml");
    assert_eq!(cfg["permissions"].as_str(), Some("0600"));
    let toml_text = cfg["content"].as_str().unwrap();
    assert_eq!(
        toml_str(toml_text, "registry"),
        Some(r.reg.url("")).map(|u| u.trim_end_matches('/').to_string())
    );
    let pem = std::fs::read_to_string(r.cert()).unwrap();
    assert_eq!(
        toml_str(toml_text, "ca_pin_sha256"),
        Some(steward_agent_pin(&pem)),
        "the pin is the sha256 of the registry's certificate"
    );
    let token = toml_str(toml_text, "enrollment_token").unwrap();
    let script = write_file(&doc, "/run/steward/install-agent.sh")["content"]
        .as_str()
        .unwrap();
    let sha = hex_sha256(b"not really a deb");
    assert!(
        script.contains(&format!("echo \"{sha}  $deb\"")),
        "{script}"
    );

    let enroll = |machine: &str| json!({"token": token, "facts": {"machine_id": machine, "hostname": machine}});
    let (st, first) = r
        .reg
        .req(
            reqwest::Method::POST,
            "/v1/enroll",
            None,
            Some(enroll("m-one")),
        )
        .await;
    assert_eq!(st, 200, "{first}");
    let (_, node) = r
        .reg
        .get(
            &format!("/v1/nodes/{}", first["node_id"].as_str().unwrap()),
            &r.reg.admin,
        )
        .await;
    assert_eq!(node["labels"], json!({"role": "web", "via": "schema-test"}));
    let (st, second) = r
        .reg
        .req(
            reqwest::Method::POST,
            "/v1/enroll",
            None,
            Some(enroll("m-two")),
        )
        .await;
    assert_eq!(st, 403, "a single-use token enrolled twice: {second}");
    assert_eq!(second["code"], "enrollment_refused");

    // Template apt, with a key; an explicit pin.
    let key = work.path().join("key.asc");
    std::fs::write(&key, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGVzdGV3YXJk\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n").unwrap();
    let pin = "AB:".repeat(31) + "AB";
    let apt = ok(r
        .ctl()
        .args(["cloud-init", "--template", "apt", "--labels", "via=apt"])
        .args([
            "--apt-source",
            "deb [signed-by=$KEY_FILE] https://apt.example.net/steward bookworm main",
        ])
        .arg("--apt-key-file")
        .arg(&key)
        .args(["--ca-pin", &pin]));
    let file = work.path().join("apt.yaml");
    std::fs::write(&file, &apt).unwrap();
    schema_ok(&file);
    let doc: serde_norway::Value = serde_norway::from_str(&apt).unwrap();
    assert!(doc["apt"]["sources"]["steward.list"]["key"]
        .as_str()
        .unwrap()
        .contains("mQINBGVzdGV3YXJk"));
    assert_eq!(doc["packages"][0].as_str(), Some("steward-agent"));
    let toml_text = write_file(&doc, "/etc/steward/agent.toml")["content"]
        .as_str()
        .unwrap();
    assert_eq!(toml_str(toml_text, "ca_pin_sha256"), Some("ab".repeat(32)));

    // A template that cannot be rendered creates no token.
    let (_, before) = r.reg.get("/v1/enrollment-tokens", &r.reg.admin).await;
    let out = r
        .ctl()
        .args(["cloud-init", "--template", "apt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", support::text(&out));
    assert!(
        support::text(&out).contains("needs --apt-source"),
        "{}",
        support::text(&out)
    );
    let (_, after) = r.reg.get("/v1/enrollment-tokens", &r.reg.admin).await;
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len()
    );
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// What an agent pins: sha256 of the certificate's DER.
fn steward_agent_pin(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    hex_sha256(der.as_ref())
}

#[path = "install/machines.rs"]
mod machines;
