//! The install tests that run in clean Debian machines (containers of the debootstrap'd image
//! on the test dockerd, on the host's network): cloud-init user-data, `/install.sh`, and the
//! registry package.

use super::*;

/// The agent's workload: one busybox container on the host's dockerd.
async fn run_workload(r: &TlsRegistry, node: &str, name: &str) -> u64 {
    let spec = format!(
        "containers:\n  - name: {name}\n    image: {}\n    command: [sleep, \"3600\"]\n",
        support::test_image()
    );
    let (st, w) = r
        .reg
        .put_yaml(&format!("/v1/nodes/{node}/spec"), &r.reg.admin, &spec)
        .await;
    assert_eq!(st, 200, "{w}");
    w["generation"].as_u64().unwrap()
}

/// Waits until the node reports `generation` converged.
async fn wait_converged(r: &TlsRegistry, node: &str, generation: u64, m: &Machine) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, n) = r.reg.get(&format!("/v1/nodes/{node}"), &r.reg.admin).await;
        let st = &n["status"];
        let done = st["observed_generation"].as_u64() == Some(generation)
            && st["resources"]
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(|r| r["state"] == "converged"));
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation} did not converge: {n}\nagent log:\n{}",
            m.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `id running` of a host container.
fn container_state(name: &str) -> String {
    ok(Command::new("docker").args(["inspect", "-f", "{{.Id}} {{.State.Running}}", name]))
        .trim()
        .to_string()
}

#[tokio::test]
async fn cloud_init_installs_the_agent_which_enrols_keeps_workloads_and_purges_cleanly() {
    if !support::require_docker()
        || !support::require_tools(&["debootstrap", "dpkg-shlibdeps", "help2man", "flock"])
    {
        return;
    }
    let p = packages();
    // The registry serves the packages_dir that its own package installs.
    let reg_root = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&p.registry)
        .arg(reg_root.path()));
    let r = TlsRegistry::start(&reg_root.path().join("usr/share/steward/packages")).await;

    let user_data = ok(r
        .ctl()
        .args(["cloud-init", "--labels", "via=cloud-init", "--uses", "1"]));
    let doc: serde_norway::Value = serde_norway::from_str(&user_data).unwrap();

    // What cloud-init does with this user-data: write_files, then runcmd.
    let m = Machine::start(&["-v", "/var/run/docker.sock:/var/run/docker.sock"]);
    for f in doc["write_files"].as_sequence().unwrap() {
        m.write(
            f["path"].as_str().unwrap(),
            f["permissions"].as_str().unwrap(),
            f["owner"].as_str().unwrap(),
            f["content"].as_str().unwrap(),
        );
    }
    for cmd in doc["runcmd"].as_sequence().unwrap() {
        let argv: Vec<&str> = cmd
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let out = Command::new("docker")
            .args(["exec", &m.name])
            .args(&argv)
            .output()
            .unwrap();
        let said = support::text(&out);
        assert!(out.status.success(), "runcmd {argv:?}:\n{said}");
        assert!(said.contains(": OK"), "the sha256 was not checked:\n{said}");
        assert!(said.contains("systemd is not running"), "{said}");
    }
    assert_eq!(m.dpkg_status("steward-agent"), "ii");
    assert_eq!(m.mode_owner("/etc/steward/agent.toml"), "600 root:root");
    assert_eq!(m.mode_owner("/var/lib/steward"), "700 root:root");
    assert!(m.exists("/lib/systemd/system/steward-agent.service"));
    assert!(
        m.exists("/etc/systemd/system/multi-user.target.wants/steward-agent.service"),
        "postinst enables the unit"
    );

    m.start_agent_like_the_unit();
    let node = r.wait_ready("cloud-init", &m).await;
    let id = node["id"].as_str().unwrap().to_string();
    assert!(m.exists("/var/lib/steward/node.json"));
    assert_eq!(m.mode_owner("/var/lib/steward/node.json"), "600 root:root");

    // The token in the user-data was single-use.
    let token = toml_str(
        write_file(&doc, "/etc/steward/agent.toml")["content"]
            .as_str()
            .unwrap(),
        "enrollment_token",
    )
    .unwrap();
    let (st, again) = r.reg.req(reqwest::Method::POST, "/v1/enroll", None,
        Some(json!({"token": token, "facts": {"machine_id": support::random_hex(16), "hostname": "second"}}))).await;
    assert_eq!(
        (st, again["code"].as_str()),
        (403, Some("enrollment_refused")),
        "{again}"
    );

    // A workload survives a reinstall of the package and the agent stopping as systemd stops
    // it (SIGTERM to the main process only), and is not recreated afterwards.
    let name = format!("steward-test-install-{}", support::random_hex(4));
    let _cleanup = Workloads(vec![name.clone()]);
    let generation = run_workload(&r, &id, &name).await;
    wait_converged(&r, &id, generation, &m).await;
    let before = container_state(&name);
    assert!(before.ends_with(" true"), "{before}");
    m.copy_in(&p.agent, "/tmp/steward-agent.deb");
    m.sh_ok("dpkg -i /tmp/steward-agent.deb");
    m.stop_agent();
    assert!(
        m.agent_log().contains("workloads keep running"),
        "{}",
        m.agent_log()
    );
    assert_eq!(
        container_state(&name),
        before,
        "the workload changed when the agent stopped"
    );
    m.start_agent_like_the_unit();
    r.wait_ready("cloud-init", &m).await;
    wait_converged(&r, &id, generation, &m).await;
    assert_eq!(
        container_state(&name),
        before,
        "the workload was recreated after the restart"
    );
    m.stop_agent();

    // remove keeps the configuration and the state; purge deletes them.
    m.sh_ok("dpkg --remove steward-agent");
    assert_eq!(m.dpkg_status("steward-agent"), "rc");
    assert!(!m.exists("/usr/bin/steward-agent"));
    assert!(!m.exists("/lib/systemd/system/steward-agent.service"));
    for kept in [
        "/etc/steward/agent.toml",
        "/var/lib/steward/node.json",
        "/etc/default/steward-agent",
    ] {
        assert!(m.exists(kept), "dpkg --remove deleted {kept}");
    }
    m.sh_ok("dpkg --purge steward-agent");
    assert_eq!(m.dpkg_status("steward-agent"), "none");
    for gone in [
        "/etc/steward",
        "/var/lib/steward",
        "/etc/default/steward-agent",
        "/etc/systemd/system/multi-user.target.wants/steward-agent.service",
    ] {
        assert!(!m.exists(gone), "dpkg --purge left {gone}");
    }
    assert_eq!(
        container_state(&name),
        before,
        "purging the agent touched its workload"
    );
}

#[tokio::test]
async fn install_script_installs_configures_and_upgrades_the_agent() {
    if !support::require_docker()
        || !support::require_tools(&["debootstrap", "dpkg-shlibdeps", "help2man", "flock"])
    {
        return;
    }
    let p = packages();
    let pkgs = tempfile::tempdir().unwrap();
    std::fs::copy(&p.agent, pkgs.path().join(p.agent.file_name().unwrap())).unwrap();
    let r = TlsRegistry::start(pkgs.path()).await;
    let token = ok(r
        .ctl()
        .args(["tokens", "create", "--label", "via=install-sh", "-q"]))
    .trim()
    .to_string();

    let m = Machine::start(&[]);
    m.copy_in(&r.cert(), "/tmp/registry.crt");
    let url = r.reg.url("");
    let one_command = format!(
        "curl -fsSL --cacert /tmp/registry.crt {url}/install.sh | sh -s -- --token {token}"
    );
    let out = m.sh_ok(&one_command);
    assert!(
        out.contains("wrote /etc/steward/agent.toml (mode 0600)"),
        "{out}"
    );
    assert!(out.contains("systemd is not running here"), "{out}");
    assert_eq!(m.dpkg_status("steward-agent"), "ii");
    assert_eq!(m.mode_owner("/etc/steward/agent.toml"), "600 root:root");
    let cfg = m.sh_ok("cat /etc/steward/agent.toml");
    assert_eq!(toml_str(&cfg, "registry").as_deref(), Some(url.as_str()));
    assert_eq!(toml_str(&cfg, "enrollment_token"), Some(token.clone()));
    let pem = std::fs::read_to_string(r.cert()).unwrap();
    assert_eq!(
        toml_str(&cfg, "ca_pin_sha256"),
        Some(steward_agent_pin(&pem))
    );

    m.start_agent_like_the_unit();
    r.wait_ready("install-sh", &m).await;

    // Run again without a token: an upgrade that keeps the configuration.
    let out = m.sh_ok(&format!(
        "curl -fsSL --cacert /tmp/registry.crt {url}/install.sh | sh"
    ));
    assert!(
        out.contains("kept the existing /etc/steward/agent.toml"),
        "{out}"
    );
    assert_eq!(m.sh_ok("cat /etc/steward/agent.toml"), cfg);
    // A tampered download is refused before dpkg sees it.
    let out = m.sh_ok(&format!(
        "curl -fsSL --cacert /tmp/registry.crt {url}/install.sh | sed 's/\\(amd64 [^ ]*\\) [0-9a-f]\\{{64\\}}/\\1 {}/' >/tmp/i.sh; sh /tmp/i.sh 2>&1 || true",
        "0".repeat(64)
    ));
    assert!(
        out.contains("does not have the sha256 the registry announced"),
        "{out}"
    );

    m.stop_agent();
    m.sh_ok("dpkg --purge steward-agent");
    for gone in ["/etc/steward", "/var/lib/steward", "/usr/bin/steward-agent"] {
        assert!(!m.exists(gone), "dpkg --purge left {gone}");
    }
}

#[tokio::test]
async fn registry_package_installs_with_its_user_and_serves_the_agent_package() {
    if !support::require_docker()
        || !support::require_tools(&["debootstrap", "dpkg-shlibdeps", "help2man", "flock"])
    {
        return;
    }
    let p = packages();
    let m = Machine::start(&[]);
    m.copy_in(&p.registry, "/tmp/steward-registry.deb");
    m.sh_ok("dpkg -i /tmp/steward-registry.deb");
    assert_eq!(m.dpkg_status("steward-registry"), "ii");
    let user = m.sh_ok("getent passwd steward-registry");
    assert!(
        user.contains(":/var/lib/steward-registry:/usr/sbin/nologin"),
        "{user}"
    );
    assert_eq!(m.mode_owner("/etc/steward/registry.toml"), "644 root:root");

    // Run it as its unit would: its user, its state directory (systemd's StateDirectory=),
    // its ExecStart. The host network is shared: a free port instead of 7700.
    let port = common::free_port();
    let unit = m.sh_ok("cat /lib/systemd/system/steward-registry.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    m.sh_ok("install -d -m 0700 -o steward-registry -g steward-registry /var/lib/steward-registry");
    ok(Command::new("docker")
        .args(["exec", "-d", "-u", "steward-registry", "-e"])
        .arg(format!("STEWARD_LISTEN=127.0.0.1:{port}"))
        .args([
            &m.name,
            "sh",
            "-c",
            &format!("echo $$ >/tmp/registry.pid; exec {exec} >/tmp/registry.log 2>&1"),
        ]));
    let script = m.sh_ok(&format!(
        "for i in $(seq 100); do curl -fsS http://127.0.0.1:{port}/install.sh 2>/dev/null && exit 0; sleep 0.1; done; cat /tmp/registry.log; exit 1"
    ));
    let deb = p.agent.file_name().unwrap().to_string_lossy().into_owned();
    let sha = hex_sha256(&std::fs::read(&p.agent).unwrap());
    assert!(script.contains(&format!("amd64 {deb} {sha}")), "{script}");
    assert_eq!(
        m.mode_owner("/var/lib/steward-registry/admin.token"),
        "600 steward-registry:steward-registry"
    );
    m.sh_ok("kill $(cat /tmp/registry.pid)");

    // purge removes the package's files, keeps the fleet's store and the user.
    let out = m.sh_ok("dpkg --purge steward-registry 2>&1");
    assert!(
        out.contains("kept the store in /var/lib/steward-registry"),
        "{out}"
    );
    assert_eq!(m.dpkg_status("steward-registry"), "none");
    assert!(!m.exists("/etc/steward/registry.toml"));
    assert!(!m.exists("/usr/share/steward/packages"));
    assert!(m.exists("/var/lib/steward-registry/admin.token"));
}
