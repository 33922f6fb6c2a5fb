//! Containers on managed bridges, with the real agent binary, real netlink and the real Docker
//! engine. Docker lives in the host's network namespace, so these are the only network tests
//! that make a link there: a bridge with a unique name (`stw<random>`) and a unique private
//! subnet, removed again by the agent and, whatever happens, by a drop guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::netns::{strip_ansi, Applied};
use common::{engine_ready, suffix, IMAGE};
use serde_json::Value;

/// Removes the test's containers, Docker network and bridge on drop.
struct Cleanup {
    bridge: String,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.bridge])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.bridge])
            .output();
    }
}

/// A /24 in 10.0.0.0/8 that no route or Docker network of this host uses.
fn free_subnet() -> (u8, u8) {
    let routes = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-4", "route"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    let nets = String::from_utf8_lossy(
        &Command::new("docker")
            .args([
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            ])
            .args(
                String::from_utf8_lossy(
                    &Command::new("docker")
                        .args(["network", "ls", "-q"])
                        .output()
                        .unwrap()
                        .stdout,
                )
                .split_whitespace(),
            )
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    loop {
        let (a, b) = (200 + rand::random::<u8>() % 50, rand::random::<u8>());
        let prefix = format!("10.{a}.");
        if !routes.contains(&prefix) && !nets.contains(&prefix) {
            return (a, b);
        }
    }
}

/// `steward-agent apply` in the host namespace (Docker's), with its own data dir and node id
/// (`node` is written as the node identity: containers are owned per node id, and tests run
/// in parallel).
fn apply(data: &Path, node: &str, spec: &str) -> Applied {
    std::fs::create_dir_all(data).unwrap();
    let id = serde_json::json!({"registry": "http://127.0.0.1:9", "node_id": node, "node_secret": "x.y"});
    std::fs::write(data.join("node.json"), id.to_string()).unwrap();
    let file = data.with_extension("spec.yaml");
    std::fs::write(&file, spec).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_steward-agent"))
        .arg("--data-dir")
        .arg(data)
        .args(["apply", "--json", "--file"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    Applied {
        code: out.status.code().unwrap_or(-1),
        status: serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON status ({e}):\n{log}")),
        log,
    }
}

/// The container's address and gateway on `network`.
fn address_on(container: &str, network: &str) -> (Ipv4Addr, Ipv4Addr) {
    let v: Value = serde_json::from_str(&common::docker(&["inspect", container])).unwrap();
    let n = &v[0]["NetworkSettings"]["Networks"][network];
    (
        n["IPAddress"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{n}")),
        n["Gateway"].as_str().unwrap().parse().unwrap(),
    )
}

fn sleeper(name: &str, network: &str) -> String {
    format!(
        "  - {{name: {name}, image: '{IMAGE}', command: [sleep, '3600'], network: {network}}}\n"
    )
}

#[test]
fn container_on_a_managed_bridge_gets_an_address_in_its_subnet() {
    if !engine_ready() {
        return;
    }
    let sfx = suffix();
    let bridge = format!("stw{sfx}");
    let web = format!("stw-web-{sfx}");
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
        containers: vec![web.clone()],
    };
    let (a, b) = free_subnet();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let node = format!("test-{sfx}");
    let spec = format!(
        "networks:\n  bridges:\n    - {{name: {bridge}, addresses: [10.{a}.{b}.1/24]}}\ncontainers:\n{}",
        sleeper(&web, &bridge)
    );
    let r = apply(&data, &node, &spec);
    assert_eq!(r.code, 0, "{}", r.log);
    assert_eq!(r.state(&bridge).0, "converged");
    assert_eq!(r.state(&web).0, "converged", "{}", r.log);
    let (ip, gw) = address_on(&web, &bridge);
    assert_eq!(gw, Ipv4Addr::new(10, a, b, 1));
    assert_eq!(
        ip.octets()[..3],
        [10, a, b],
        "{ip} must be in 10.{a}.{b}.0/24"
    );
    let net: Value =
        serde_json::from_str(&common::docker(&["network", "inspect", &bridge])).unwrap();
    assert_eq!(
        net[0]["Options"]["com.docker.network.bridge.name"],
        bridge.as_str()
    );
    assert_eq!(net[0]["Labels"]["io.steward.managed"], "true");

    // Converged: nothing written, the container untouched.
    let id = common::inspect(&web).unwrap().id;
    let r = apply(&data, &node, &spec);
    assert_eq!(r.code, 0, "{}", r.log);
    assert_eq!(r.writes(), 0, "{}", r.log);
    assert_eq!(common::inspect(&web).unwrap().id, id);

    // Everything dropped: container, Docker network and bridge go.
    let r = apply(&data, &node, "{}\n");
    assert_eq!(r.code, 0, "{}", r.log);
    assert!(common::inspect(&web).is_none());
    let out = Command::new("docker")
        .args(["network", "inspect", &bridge])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the Docker network must be gone");
    let out = Command::new("ip")
        .args(["link", "show", "dev", &bridge])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the bridge must be gone");
}

#[test]
fn lab_containers_get_stable_addresses_from_dot_10() {
    if !engine_ready() {
        return;
    }
    let sfx = suffix();
    let bridge = format!("stw{sfx}");
    let (c0, c1, c2) = (
        format!("stw-c0-{sfx}"),
        format!("stw-c1-{sfx}"),
        format!("stw-c2-{sfx}"),
    );
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
        containers: vec![c0.clone(), c1.clone(), c2.clone()],
    };
    let (a, b) = free_subnet();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let node = format!("test-{sfx}");
    // The lab's VLAN sits on a parent the default policy refuses: no VLAN is ever made in the
    // host's namespace; the lab's bridge, gateway and leases come all the same.
    let lab = format!(
        "networks:\n  labs:\n    - {{vlan: 3001, parent: stwnone, bridge: {bridge}, cidr: 10.{a}.{b}.0/24}}\ncontainers:\n"
    );
    let r = apply(
        &data,
        &node,
        &format!("{lab}{}{}", sleeper(&c1, &bridge), sleeper(&c2, &bridge)),
    );
    assert!(
        r.state("stwnone.3001").1.contains("allowed_vlan_parents"),
        "{}",
        r.log
    );
    assert_eq!(r.state(&c1).0, "converged", "{}", r.log);
    assert_eq!(r.state(&c2).0, "converged", "{}", r.log);
    assert_eq!(
        address_on(&c1, &bridge),
        (Ipv4Addr::new(10, a, b, 10), Ipv4Addr::new(10, a, b, 1))
    );
    assert_eq!(address_on(&c2, &bridge).0, Ipv4Addr::new(10, a, b, 11));
    let c2_id = common::inspect(&c2).unwrap().id;

    // c1 leaves, c0 arrives first in the spec: c2 keeps .11 (untouched), c0 gets the free .10.
    let r = apply(
        &data,
        &node,
        &format!("{lab}{}{}", sleeper(&c0, &bridge), sleeper(&c2, &bridge)),
    );
    assert_eq!(r.state(&c0).0, "converged", "{}", r.log);
    assert!(common::inspect(&c1).is_none());
    assert_eq!(common::inspect(&c2).unwrap().id, c2_id);
    assert_eq!(address_on(&c2, &bridge).0, Ipv4Addr::new(10, a, b, 11));
    assert_eq!(address_on(&c0, &bridge).0, Ipv4Addr::new(10, a, b, 10));

    let r = apply(&data, &node, "{}\n");
    assert_eq!(r.code, 0, "{}", r.log);
    let out = Command::new("ip")
        .args(["link", "show", "dev", &bridge])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the lab's bridge must be gone");
}

/// Whether `port` (a bridge port in the host namespace) has the kernel's `isolated` flag.
fn port_isolated(port: &str) -> bool {
    let out = Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", port])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["linkinfo"]["info_slave_data"]["isolated"] == true
}

/// The host-side veths of the ports of `bridge`.
fn ports_of(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "master", bridge])
        .output()
        .unwrap();
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// `ping` from inside `container`, one echo.
fn pings(container: &str, to: &str) -> bool {
    Command::new("docker")
        .args(["exec", container, "ping", "-c", "1", "-W", "1", to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn two_sessions_containers_on_a_ports_isolated_bridge_cannot_reach_each_other() {
    if !engine_ready() {
        return;
    }
    let sfx = suffix();
    let bridge = format!("stw{sfx}");
    let (c1, c2) = (format!("stw-s1-{sfx}"), format!("stw-s2-{sfx}"));
    let _cleanup = Cleanup {
        bridge: bridge.clone(),
        containers: vec![c1.clone(), c2.clone()],
    };
    let (a, b) = free_subnet();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("state");
    let node = format!("test-{sfx}");
    let spec = |isolated: bool| {
        format!(
            "networks:\n  bridges:\n    - {{name: {bridge}, addresses: [10.{a}.{b}.1/24], ports_isolated: {isolated}}}\ncontainers:\n{}{}",
            sleeper(&c1, &bridge),
            sleeper(&c2, &bridge)
        )
    };
    let r = apply(&data, &node, &spec(true));
    assert_eq!(r.code, 0, "{}", r.log);
    assert_eq!(r.state(&c2).0, "converged", "{}", r.log);
    let gw = format!("10.{a}.{b}.1");
    let (ip1, _) = address_on(&c1, &bridge);
    let (ip2, _) = address_on(&c2, &bridge);
    let ports = ports_of(&bridge);
    assert_eq!(ports.len(), 2, "{ports:?}");
    // Docker plugs the veths in after the agent's network pass; the one-shot apply flags them
    // before it ends.
    for p in &ports {
        assert!(port_isolated(p), "{p} not isolated:\n{}", r.log);
    }
    assert!(!pings(&c1, &ip2.to_string()), "session 1 reaches session 2");
    assert!(!pings(&c2, &ip1.to_string()), "session 2 reaches session 1");
    assert!(
        pings(&c1, &gw) && pings(&c2, &gw),
        "each reaches the gateway"
    );

    // The policy removed: the flags go and the containers reach each other.
    let r = apply(&data, &node, &spec(false));
    assert_eq!(r.code, 0, "{}", r.log);
    assert!(ports_of(&bridge).iter().all(|p| !port_isolated(p)));
    // (Neighbour entries that failed while isolated may take a retry.)
    assert!(
        (0..5).any(|_| pings(&c1, &ip2.to_string())),
        "without the policy"
    );
    let r = apply(&data, &node, "{}\n");
    assert_eq!(r.code, 0, "{}", r.log);
}
