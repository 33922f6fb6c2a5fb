//! Drift re-assertion: the real agent runs as a daemon (`steward-agent run`) in a fresh network
//! namespace, next to the real registry in the same namespace (the agent must reach it on
//! 127.0.0.1 there); the spec is written with the real `stewardctl`. A managed bridge deleted
//! by hand, and its MTU changed by hand, are put back through netlink events (the periodic
//! resync is set to 300 s, so it cannot be what restores them), and the drift is logged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use common::netns::{ctl, registry, require_netns, strip_ansi};
use common::vm::{wait, Proc};
use serde_json::Value;

fn status_of(data: &Path, name: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(&std::fs::read(data.join("status.json")).ok()?).ok()?;
    let r = v["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)?;
    Some((
        r["state"].as_str()?.to_string(),
        r["error"].as_str().unwrap_or("").to_string(),
    ))
}

#[test]
fn managed_bridge_changed_or_deleted_by_hand_is_restored() {
    let Some(ns) = require_netns() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_registry, url, admin) = registry(&ns, tmp.path());
    let token = ctl(&ns, url, &admin, &["tokens", "create", "--uses", "1"]);

    ns.veth("d0", "d0peer");
    let data = tmp.path().join("agent");
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "registry = \"{url}\"\nenrollment_token = \"{token}\"\ndata_dir = \"{}\"\nresync_interval = \"300s\"\nlong_poll_wait = \"30s\"\nbackoff_max = \"1s\"\n",
            data.display()
        ),
    )
    .unwrap();
    let log_path = tmp.path().join("agent.log");
    let _agent = Proc(
        ns.command(env!("CARGO_BIN_EXE_steward-agent"))
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let node: Value = wait(30, &|| "the agent to enrol".into(), || {
        serde_json::from_slice(&std::fs::read(data.join("node.json")).ok()?).ok()
    });
    let node = node["node_id"].as_str().unwrap().to_string();

    let spec = tmp.path().join("spec.yaml");
    std::fs::write(
        &spec,
        "networks:\n  bridges:\n    - {name: brd, mtu: 1400, addresses: [10.40.0.1/24], ports: [{iface: d0}]}\n",
    )
    .unwrap();
    ctl(
        &ns,
        url,
        &admin,
        &["spec", "apply", &node, "-f", spec.to_str().unwrap()],
    );
    wait(30, &|| "brd to converge".into(), || {
        (status_of(&data, "brd")?.0 == "converged").then_some(())
    });
    let first = ns.link("brd").unwrap();
    assert_eq!(first["ifalias"], format!("steward:{node}"));

    // Deleted by hand: recreated, with its address and port.
    ns.ip(&["link", "del", "dev", "brd"]);
    let started = Instant::now();
    let back = wait(20, &|| format!("brd to come back\n{}", log()), || {
        ns.link("brd")
    });
    eprintln!("brd restored after deletion in {:?}", started.elapsed());
    assert_ne!(back["ifindex"], first["ifindex"], "a new link");
    wait(20, &|| "brd's address and port".into(), || {
        (ns.addrs("brd") == ["10.40.0.1/24"] && ns.link("d0")?["master"] == "brd").then_some(())
    });
    wait(20, &|| "the drift to be logged".into(), || {
        log().contains("brd was deleted by hand").then_some(())
    });

    // MTU changed by hand: put back.
    ns.ip(&["link", "set", "dev", "brd", "mtu", "1300"]);
    let started = Instant::now();
    wait(
        20,
        &|| format!("brd's MTU to be restored\n{}", log()),
        || (ns.link("brd")?["mtu"] == 1400).then_some(()),
    );
    eprintln!("brd's MTU restored in {:?}", started.elapsed());
    wait(20, &|| "the MTU drift to be logged".into(), || {
        log().contains("MTU is 1300, spec says 1400").then_some(())
    });
    let l = log();
    assert!(l.contains("restored a managed link after drift"), "{l}");
    wait(20, &|| "brd to be reported converged again".into(), || {
        (status_of(&data, "brd")?.0 == "converged").then_some(())
    });
}
