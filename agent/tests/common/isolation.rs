//! Guests on bridges and traffic checks for the network isolation tests
//! (`network_isolation.rs`, `network_egress.rs`): each guest a namespace of its own behind a
//! veth, `nft` and busybox (`ping`, `nc`) run in namespaces. Nothing here touches the host's
//! own namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use super::docker::in_ci;
use super::netns::{require_netns, NetNs};
use super::vm::Proc;

/// Skips (loudly; fails under CI) when `program args` cannot run.
pub fn require(program: &str, args: &[&str], why: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!in_ci(), "CI is set but {program} is missing: {why}");
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIP {}: {program} is missing ({why}); this test did NOT run (with CI=true \
             it fails). ***",
            std::thread::current().name().unwrap_or("test")
        );
    }
    ok
}

pub fn require_tools() -> bool {
    require("nft", &["--version"], "install nftables")
        && require("busybox", &["ping", "--help"], "install busybox-static")
}

/// busybox with an `nc` applet, for the TCP checks; skipped loudly (never under CI) without.
pub fn have_nc() -> bool {
    require(
        "busybox",
        &["nc", "--help"],
        "the TCP checks need busybox nc",
    )
}

/// A guest: its namespace (deleted on drop) and address.
pub struct Guest {
    pub ns: NetNs,
    pub ip: String,
}

/// A guest on the far side of `port`, a veth made in `host` (the bridge's port), at `cidr`
/// with a default route via `gateway`; the port is put on `bridge` unless the spec does it.
pub fn guest(host: &NetNs, port: &str, bridge: Option<&str>, cidr: &str, gateway: &str) -> Guest {
    let ns = require_netns().expect("a second namespace");
    host.ip(&[
        "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    if let Some(b) = bridge {
        host.ip(&["link", "set", port, "master", b]);
    }
    host.ip(&["link", "set", port, "up"]);
    ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["route", "add", "default", "via", gateway]);
    let ip = cidr.split('/').next().unwrap().to_string();
    Guest { ns, ip }
}

/// The two lab guests most tests use: `va` on `br101` (192.168.101.10) and `vb` on `br102`
/// (192.168.102.10), each routed through its lab's `.1`.
pub fn lab_guests(host: &NetNs) -> (Guest, Guest) {
    let a = guest(
        host,
        "va",
        Some("br101"),
        "192.168.101.10/24",
        "192.168.101.1",
    );
    let b = guest(
        host,
        "vb",
        Some("br102"),
        "192.168.102.10/24",
        "192.168.102.1",
    );
    (a, b)
}

/// `nft args...` in `ns`, asserting success; its stdout.
pub fn nft(ns: &NetNs, args: &[&str]) -> String {
    let out = ns.command("nft").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn has_steward_table(ns: &NetNs) -> bool {
    nft(ns, &["list", "tables"])
        .lines()
        .any(|l| l.trim() == "table inet steward")
}

/// One ICMP echo from `from` to `to` answered, within `tries` attempts of 1 s.
pub fn ping(from: &NetNs, to: &str, tries: u32) -> bool {
    (0..tries).any(|_| {
        from.command("busybox")
            .args(["ping", "-c", "1", "-W", "1", to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    })
}

/// Connects over TCP from `from` to `to:port` (a listener made by [`listen`]).
pub fn tcp(from: &NetNs, to: &str, port: u16, tries: u32) -> bool {
    (0..tries).any(|_| {
        from.command("busybox")
            .args(["nc", "-w", "2", to, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    })
}

/// A TCP listener in `ns` that accepts every connection and closes it; killed on drop.
pub fn listen(ns: &NetNs, port: u16) -> Proc {
    Proc(
        ns.command("busybox")
            .args(["nc", "-ll", "-p", &port.to_string(), "-e", "/bin/true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Sets sysctls (`key=value` each) in `ns`. Where `/proc/sys` is read-only (inside a
/// container), through a procfs of its own in `ip netns exec`'s private mount namespace, as
/// [`NetNs::enable_forwarding`] does.
pub fn sysctl(ns: &NetNs, settings: &[&str]) {
    let args = settings.join(" ");
    let set = format!(
        "sysctl -qw {args} 2>/dev/null || {{ mount -t proc proc /proc && sysctl -qw {args}; }}"
    );
    let st = ns.command("sh").args(["-c", &set]).status().unwrap();
    assert!(st.success(), "cannot set {args} in {}", ns.name);
}

/// Turns IPv6 forwarding on in `ns` and duplicate address detection off (for the links made
/// from now on too), so an address is usable as soon as it is added.
pub fn enable_forwarding_v6(ns: &NetNs) {
    sysctl(
        ns,
        &[
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    );
}

/// A namespace on `bridge` (in `host`) through the veth `port`, holding `cidr` on its `eth0`
/// and no route but the subnet's: the stand-in for a router VM on a lab (`gateway: none`),
/// which the test gives its other links and routes. IPv6 addresses skip duplicate address
/// detection.
pub fn on_bridge(host: &NetNs, port: &str, bridge: &str, cidr: &str) -> Guest {
    let ns = require_netns().expect("a namespace on the bridge");
    host.ip(&[
        "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    host.ip(&["link", "set", port, "master", bridge]);
    host.ip(&["link", "set", port, "up"]);
    ns.ip(&["addr", "add", cidr, "dev", "eth0", "nodad"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let ip = cidr.split('/').next().unwrap().to_string();
    Guest { ns, ip }
}

/// [`guest`] for IPv6: the guest at `cidr` (no duplicate address detection) with a default
/// IPv6 route via `gateway`; the port is put on `bridge`.
pub fn guest6(host: &NetNs, port: &str, bridge: &str, cidr: &str, gateway: &str) -> Guest {
    let g = on_bridge(host, port, bridge, cidr);
    g.ns.ip(&["-6", "route", "add", "default", "via", gateway]);
    g
}

/// One ICMPv6 echo from `from` to `to` answered, within `tries` attempts of 1 s.
pub fn ping6(from: &NetNs, to: &str, tries: u32) -> bool {
    (0..tries).any(|_| {
        from.command("busybox")
            .args(["ping", "-6", "-c", "1", "-W", "1", to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    })
}

/// The MAC address of `link` in `ns`.
pub fn mac(ns: &NetNs, link: &str) -> String {
    let l = ns
        .link(link)
        .unwrap_or_else(|| panic!("no {link} in {}", ns.name));
    l["address"].as_str().unwrap().to_string()
}

/// An nft ruleset loaded in `ns` from text (`nft -f`).
pub fn nft_load(ns: &NetNs, rules: &str) {
    let file = std::env::temp_dir().join(format!("{}-{:08x}.nft", ns.name, rand::random::<u32>()));
    std::fs::write(&file, rules).unwrap();
    nft(ns, &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
}
