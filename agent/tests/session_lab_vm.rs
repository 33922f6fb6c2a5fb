//! A lab session with a VM, end to end in a fresh network namespace (`common::netns`): the
//! real registry and the real agent daemon both in it, real QEMU (TCG) and netlink, driven with
//! the real `stewardctl`. The template has `lab: true`: each session gets a VLAN from the
//! registry's pool (100–170), a bridge-only lab for it (the bridge `br<vlan>` with the gateway
//! `.1` and no VLAN interface: this host's kernel has no 802.1Q; a lab with `parent:` and a
//! real VLAN is converged in the QEMU guest harness, `guest_vlan.rs`), and a VM on that bridge.
//! The agent leases the VM's NIC an address from `.10` and writes it into the VM's cloud-init
//! `network-config`, which the guest reads from its seed disk.
//!
//! - the first session gets VLAN 100: `br100` holds `192.168.100.1/24`, no VLAN interface, the
//!   VM's tap is its port; the agent's lease for the VM's NIC is `.10`, the guest takes it
//!   from its network-config and pings the gateway, and the session's endpoints give it;
//! - a second session gets VLAN 101, its own bridge, its VM leased `192.168.101.10`;
//! - ending the first removes its VM (QEMU gone), tap and bridge, and leaves the second's VM
//!   running (same QEMU process); a third session (`gateway: none`) then gets VLAN 100 again
//!   (freed): its bridge has no host address, its VM the `.10` lease; a pfSense stand-in (a
//!   namespace with a veth into `br100`) holds `.1`, and the guest, taking `.1` as its
//!   gateway from its network-config, pings it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::isolation::on_bridge;
use common::netns::{ctl, registry, require_netns, NetNs};
use common::vm::{
    base_image, qemu_pids, require_tools, status_of, vm_guest, wait, Daemon, QemuReaper,
};
use serde_json::Value;

/// The template: a bridge-only lab and one VM on it, addressed from the lab's `.10`.
fn template(base: &Path, kernel: &Path, initrd: &Path) -> String {
    format!(
        "lab: true\nttl: 1h\nparams:\n  gateway: {{type: string, default: host, one_of: [host, none]}}\nspec:\n  networks:\n    labs:\n      - {{vlan: \"{{{{lab.vlan}}}}\", bridge: \"{{{{lab.bridge}}}}\", gateway: \"{{{{param.gateway}}}}\"}}\n  vms:\n    - name: \"lab-{{{{session}}}}\"\n      image: {}\n      memory: 256Mi\n      disk: 64Mi\n      kernel: {}\n      initrd: {}\n      cmdline: \"console=ttyS0 panic=-1 quiet\"\n      nics: [{{bridge: \"{{{{lab.bridge}}}}\"}}]\n      restart: always\n",
        base.display(),
        kernel.display(),
        initrd.display()
    )
}

/// `stewardctl sessions get ID` (YAML), as JSON.
fn session(ns: &NetNs, url: &str, admin: &Path, id: &str) -> Value {
    serde_norway::from_str(&ctl(ns, url, admin, &["sessions", "get", id])).unwrap()
}

/// The agent's lab leases (`state/network-leases.json` in its data dir): bridge -> consumer ->
/// address.
fn leases(data: &Path) -> Option<Value> {
    let file = walk(data)
        .into_iter()
        .find(|p| p.ends_with("network-leases.json"))?;
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The VM's directory under the agent's `vm_dir`.
fn vm_dir(vms: &Path, id: &str) -> std::path::PathBuf {
    vms.join(format!("lab-{id}"))
}

/// Creates a session of the `lab` template for `owner` and waits until it runs: its id and its
/// record.
fn create(ns: &NetNs, url: &str, admin: &Path, owner: &str, gateway: &str) -> (String, Value) {
    let gateway = format!("gateway={gateway}");
    let id = ctl(
        ns,
        url,
        admin,
        &[
            "sessions", "create", "lab", "--owner", owner, "-p", &gateway, "--wait",
        ],
    );
    let s = session(ns, url, admin, &id);
    assert_eq!(s["state"], "running", "{s}");
    (id, s)
}

#[test]
fn lab_session_vm_gets_vlan_from_pool_and_address_from_dot_ten() {
    let Some(ns) = require_netns() else { return };
    let Some(()) = require_tools() else { return };
    let Some(image) = vm_guest("vm-lab") else {
        return;
    };

    let tmp = tempfile::tempdir().unwrap();
    let vms = tmp.path().join("vms");
    let _reaper = QemuReaper(vms.clone());
    let base = tmp.path().join("base.qcow2");
    base_image(&base);

    let (_registry, url, admin) = registry(&ns, tmp.path());
    let token = ctl(&ns, url, &admin, &["tokens", "create", "--uses", "1"]);
    let data = tmp.path().join("agent");
    let agent = Daemon::new(&ns, tmp.path(), url, &token, &vms);
    wait(
        30,
        &|| format!("the agent to enrol\n{}", agent.log()),
        || std::fs::metadata(data.join("node.json")).ok(),
    );
    let file = tmp.path().join("lab.yaml");
    std::fs::write(&file, template(&base, &image.kernel, &image.initramfs)).unwrap();
    ctl(
        &ns,
        url,
        &admin,
        &["templates", "put", "lab", "-f", file.to_str().unwrap()],
    );

    // The first session: VLAN 100, a bridge-only lab, the VM on it.
    let (a, sa) = create(&ns, url, &admin, "alice", "host");
    assert_eq!(sa["allocations"]["lab"]["vlan"], 100, "{sa}");
    assert_eq!(sa["allocations"]["lab"]["bridge"], "br100");
    assert_eq!(sa["allocations"]["lab"]["gateway"], "192.168.100.1");
    assert_eq!(ns.addrs("br100"), vec!["192.168.100.1/24".to_string()]);
    assert!(
        ns.links()
            .iter()
            .all(|l| l["link_type"] != "vlan" && l["linkinfo"]["info_kind"] != "vlan"),
        "a bridge-only lab makes no VLAN interface: {:?}",
        ns.links()
    );
    let vm_a = format!("lab-{a}");
    let rec: Value =
        serde_json::from_slice(&std::fs::read(vm_dir(&vms, &a).join("vm.json")).unwrap()).unwrap();
    let tap = rec["taps"][0].as_str().unwrap().to_string();
    assert_eq!(ns.link(&tap).unwrap()["master"], "br100");
    let lease = leases(&data).unwrap();
    assert_eq!(
        lease["br100"][format!("vm:{vm_a}/0")],
        "192.168.100.10",
        "{lease}"
    );

    // The guest took that address from the network-config the agent wrote into its seed, and
    // reaches the gateway.
    let serial = vm_dir(&vms, &a).join("serial.log");
    let serial_text = || std::fs::read_to_string(&serial).unwrap_or_default();
    wait(
        300,
        &|| format!("the guest's ping result\n{}", serial_text()),
        || serial_text().contains("VM-READY").then_some(()),
    );
    assert!(
        serial_text().contains("VM-NETCONF 192.168.100.10/24 via 192.168.100.1"),
        "the guest reads its lease from its network-config:\n{}",
        serial_text()
    );
    assert!(
        serial_text().contains("VM-PING-yes 192.168.100.1"),
        "the guest at .10 must reach the lab's gateway:\n{}",
        serial_text()
    );
    // The session's endpoints name the VM's address on the lab.
    let sa = wait(
        60,
        &|| "the VM's address in the session's endpoints".into(),
        || {
            let s = session(&ns, url, &admin, &a);
            let found = (s["endpoints"].as_array()?.iter())
                .any(|e| e["name"] == vm_a.as_str() && e["address"] == "192.168.100.10");
            found.then_some(s)
        },
    );
    eprintln!("session {a}: {sa}");

    // A second session: the next VLAN, its own bridge and lease.
    let (b, sb) = create(&ns, url, &admin, "bob", "host");
    assert_eq!(sb["allocations"]["lab"]["vlan"], 101, "{sb}");
    assert_eq!(ns.addrs("br101"), vec!["192.168.101.1/24".to_string()]);
    let lease = leases(&data).unwrap();
    assert_eq!(lease["br101"][format!("vm:lab-{b}/0")], "192.168.101.10");
    let b_pids = qemu_pids(&vm_dir(&vms, &b));
    assert_eq!(b_pids.len(), 1);

    // Ending the first removes its VM, tap and bridge; the second's VM keeps running.
    ctl(&ns, url, &admin, &["sessions", "end", &a]);
    wait(
        60,
        &|| format!("the first session's VM and lab to go\n{}", agent.log()),
        || {
            (qemu_pids(&vm_dir(&vms, &a)).is_empty()
                && ns.link("br100").is_none()
                && ns.link(&tap).is_none()
                && status_of(&data, &vm_a).is_none())
            .then_some(())
        },
    );
    assert_eq!(qemu_pids(&vm_dir(&vms, &b)), b_pids);
    assert!(ns.link("br101").is_some());

    // VLAN 100 is free again: the next session gets it. With `gateway: none` the host takes
    // no address on the lab's bridge (a router VM would own .1); the VM's lease is .10 still.
    let (c, sc) = create(&ns, url, &admin, "carol", "none");
    assert_eq!(sc["allocations"]["lab"]["vlan"], 100, "{sc}");
    assert!(ns.link("br100").is_some());
    assert!(ns.addrs("br100").is_empty(), "{:?}", ns.addrs("br100"));
    let lease = leases(&data).unwrap();
    assert_eq!(lease["br100"][format!("vm:lab-{c}/0")], "192.168.100.10");
    // A pfSense stand-in: a namespace with a veth into the lab's bridge, holding the lab's
    // `.1` the host does not. The guest reads `.1` as its gateway from its network-config and
    // pings it (for up to a minute, time enough for the stand-in to be plugged in).
    let router = on_bridge(&ns, "pf0", "br100", "192.168.100.1/24");
    let serial = vm_dir(&vms, &c).join("serial.log");
    let serial_text = || std::fs::read_to_string(&serial).unwrap_or_default();
    wait(
        300,
        &|| format!("the third guest's ping result\n{}", serial_text()),
        || serial_text().contains("VM-READY").then_some(()),
    );
    assert!(
        serial_text().contains("VM-NETCONF 192.168.100.10/24 via 192.168.100.1"),
        "the third guest reads its lease and gateway from its network-config:\n{}",
        serial_text()
    );
    assert!(
        serial_text().contains("VM-PING-yes 192.168.100.1"),
        "the guest at .10 must reach the stand-in router at .1:\n{}",
        serial_text()
    );
    // The stand-in answered it (the host holds no address on br100): it knows the guest's MAC.
    assert!(ns.addrs("br100").is_empty(), "{:?}", ns.addrs("br100"));
    let vm_mac = (serial_text().lines())
        .find_map(|l| l.strip_prefix("VM-NIC "))
        .map(str::to_string)
        .unwrap();
    let neigh = router
        .ns
        .ip(&["neigh", "show", "192.168.100.10", "dev", "eth0"]);
    assert!(
        neigh.contains(&vm_mac),
        "the stand-in's neighbour entry for the guest ({vm_mac}): {neigh:?}"
    );
    drop(router);
    for id in [&b, &c] {
        ctl(&ns, url, &admin, &["sessions", "end", id]);
    }
    wait(
        60,
        &|| format!("every session's VM to go\n{}", agent.log()),
        || {
            (qemu_pids(&vms).is_empty() && ns.link("br100").is_none() && ns.link("br101").is_none())
                .then_some(())
        },
    );
}
