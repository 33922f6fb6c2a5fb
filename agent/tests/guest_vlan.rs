//! Host networks that the host kernel here cannot do (802.1Q VLAN interfaces, VLAN-filtering
//! bridges), tested inside a QEMU guest booted with Debian's stock kernel (tests/guest/).
//!
//! - `guest_kernel_vlans_and_isolation` is the harness's self-test: the guest builds what
//!   tests/guest/vlan/spec.yaml declares with `ip`/`bridge` (manual.sh), and the same
//!   assertions as below must hold, so they are known to be right independently of the agent.
//! - `guest_agent_converges_networks` runs the real `steward-agent apply --file` in the guest
//!   (agent.sh): VLANs, a plain bridge with STP and an address, a VLAN-filtering bridge with a
//!   tagged trunk and untagged/PVID access ports, a lab network; isolation between namespaces on
//!   VLAN 10 and VLAN 20; a re-apply that writes nothing; a port moved to another VLAN; a VLAN
//!   on a parent the local policy refuses.
//!
//! Every assertion reads the serial log; `target/guest/logs/<test>.log` keeps it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::guest::{strip_ansi, Boot, Guest};
use serde_json::Value;

fn vlan_dir() -> std::path::PathBuf {
    common::guest::harness_dir().join("vlan")
}

/// Files every VLAN guest gets: the shared script part, the specs and the agent config.
fn guest(name: &str, script: &str) -> Guest {
    let d = vlan_dir();
    let mut g = Guest::new(name);
    g.file(d.join(script), "/test.sh")
        .file(d.join("common.sh"), "/vlan/common.sh");
    g
}

/// `ip -j -d link show`, by interface name.
fn links(boot: &Boot, tag: &str) -> BTreeMap<String, Value> {
    let v = boot.json(&format!("{tag}-links-json"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| (l["ifname"].as_str().unwrap().to_string(), l.clone()))
        .collect()
}

/// A port's VLAN membership: (vid, pvid, untagged) entries.
type Membership = BTreeSet<(u64, bool, bool)>;

/// `bridge -j vlan show`, by port.
fn port_vlans(boot: &Boot, tag: &str) -> BTreeMap<String, Membership> {
    let v = boot.json(&format!("{tag}-vlans-json"));
    let mut out = BTreeMap::new();
    for p in v.as_array().unwrap() {
        let set = p["vlans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let flags: Vec<&str> = e["flags"]
                    .as_array()
                    .map(|f| f.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                (
                    e["vlan"].as_u64().unwrap(),
                    flags.contains(&"PVID"),
                    flags.contains(&"Egress Untagged"),
                )
            })
            .collect();
        out.insert(p["ifname"].as_str().unwrap().to_string(), set);
    }
    out
}

/// `ip -j addr show`: the CIDRs of each interface.
fn addresses(boot: &Boot, tag: &str) -> BTreeMap<String, Vec<String>> {
    let v = boot.json(&format!("{tag}-addrs-json"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let cidrs = l["addr_info"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                        .collect()
                })
                .unwrap_or_default();
            (l["ifname"].as_str().unwrap().to_string(), cidrs)
        })
        .collect()
}

fn link<'a>(links: &'a BTreeMap<String, Value>, name: &str, boot: &Boot) -> &'a Value {
    links.get(name).unwrap_or_else(|| {
        panic!(
            "{name} is not in `ip -d link show`:\n{}",
            boot.get("first-links").text
        )
    })
}

fn is_up(l: &Value) -> bool {
    l["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

/// What spec.yaml declares (spec-moved.yaml when `vp3_vlan` is 10), as the kernel shows it.
fn assert_networks(boot: &Boot, tag: &str, vp3_vlan: u64) {
    let links = links(boot, tag);
    let shown = &boot.get(&format!("{tag}-links")).text;
    // VLAN interfaces: eth1.100 (spec) and eth1.150 (lab 150), with their ids and parents.
    for (name, id, master) in [("eth1.100", 100, "br100"), ("eth1.150", 150, "br150")] {
        let l = link(&links, name, boot);
        assert_eq!(l["linkinfo"]["info_kind"], "vlan", "{name}: {l}");
        assert_eq!(
            l["linkinfo"]["info_data"]["protocol"], "802.1Q",
            "{name}: {l}"
        );
        assert_eq!(l["linkinfo"]["info_data"]["id"], id, "{name}: {l}");
        assert_eq!(l["link"], "eth1", "{name} must sit on eth1: {l}");
        assert_eq!(
            l["master"], master,
            "{name} must be a port of {master}: {l}"
        );
        assert!(is_up(l), "{name} must be up: {l}");
        assert!(
            shown.contains(&format!("{name}@eth1:")) && shown.contains(&format!("802.1Q id {id} ")),
            "`ip -d link show` does not show {name} as VLAN {id}:\n{shown}"
        );
    }
    assert_eq!(link(&links, "eth1.100", boot)["mtu"], 1400);
    // Bridges: br100 with STP, brtrunk VLAN-filtering, br150 from the lab.
    for (name, filtering) in [("br100", 0), ("brtrunk", 1), ("br150", 0)] {
        let l = link(&links, name, boot);
        assert_eq!(l["linkinfo"]["info_kind"], "bridge", "{name}: {l}");
        assert_eq!(
            l["linkinfo"]["info_data"]["vlan_filtering"], filtering,
            "{name}: {l}"
        );
        assert!(is_up(l), "{name} must be up: {l}");
    }
    assert!(
        shown.contains("vlan_filtering 1"),
        "`ip -d link show` shows no VLAN-filtering bridge:\n{shown}"
    );
    assert_ne!(
        link(&links, "br100", boot)["linkinfo"]["info_data"]["stp_state"],
        0,
        "br100 has stp: true"
    );
    for port in ["eth2", "vp1", "vp2", "vp3"] {
        assert_eq!(link(&links, port, boot)["master"], "brtrunk", "{port}");
    }
    // VLAN membership of brtrunk's ports: exactly the spec's.
    let vlans = port_vlans(boot, tag);
    let want: [(&str, Membership); 4] = [
        ("eth2", [(10, false, false), (20, false, false)].into()),
        ("vp1", [(10, true, true)].into()),
        ("vp2", [(10, true, true)].into()),
        ("vp3", [(vp3_vlan, true, true)].into()),
    ];
    for (port, set) in want {
        assert_eq!(
            vlans.get(port),
            Some(&set),
            "`bridge vlan show` for {port} (vid, pvid, untagged):\n{}",
            boot.get(&format!("{tag}-vlans")).text
        );
    }
    // Addresses: br100's own, and the lab's gateway 192.168.150.1/24 on br150.
    let addrs = addresses(boot, tag);
    for (name, cidr) in [("br100", "10.100.0.1/24"), ("br150", "192.168.150.1/24")] {
        assert!(
            addrs.get(name).is_some_and(|a| a.iter().any(|c| c == cidr)),
            "{name} must have {cidr}: {:?}",
            addrs.get(name)
        );
    }
}

/// VLAN 10 (ns1, ns2) talk; VLAN 20 (ns3) reaches neither, although all share one subnet.
fn assert_isolation(boot: &Boot) {
    for (name, reach) in [
        ("ping-ns1-ns2", true),
        ("ping-ns2-ns1", true),
        ("ping-ns3-ns1", false),
        ("ping-ns3-ns2", false),
        ("ping-ns1-ns3", false),
        // After vp3 moved to VLAN 10, ns3 is reachable: its isolation was the VLAN's doing.
        ("moved-ping-ns3-ns1", true),
        ("moved-ping-ns2-ns3", true),
    ] {
        let s = boot.get(name);
        assert_eq!(
            s.rc == 0,
            reach,
            "{name}: expected {}, got rc={}:\n{}",
            if reach { "a reply" } else { "no reply" },
            s.rc,
            s.text
        );
    }
}

/// The agent's `apply --json` status: network resources by name -> (state, error).
fn network_status(boot: &Boot, section: &str) -> BTreeMap<String, (String, String)> {
    let s = boot.get(section);
    let log = strip_ansi(&boot.get(&format!("{section}.stderr")).text);
    let v: Value = serde_json::from_str(s.text.trim()).unwrap_or_else(|e| {
        panic!(
            "`steward-agent apply --json` ({section}) printed no status ({e}), rc={}:\n{}\nagent log:\n{log}",
            s.rc, s.text
        )
    });
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "network")
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                (
                    r["state"].as_str().unwrap_or("").to_string(),
                    r["error"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

fn assert_applied(boot: &Boot, section: &str) {
    let st = network_status(boot, section);
    let s = boot.get(section);
    let log = strip_ansi(&boot.get(&format!("{section}.stderr")).text);
    for name in ["eth1.100", "br100", "brtrunk", "eth1.150", "br150"] {
        assert!(
            st.contains_key(name),
            "{section}: no status for {name}: {st:?}\nagent log:\n{log}"
        );
    }
    for (name, (state, error)) in &st {
        assert_eq!(
            state, "converged",
            "{section}: {name} is {state}: {error}\nagent log:\n{log}"
        );
    }
    assert_eq!(s.rc, 0, "{section}: apply exited {}:\n{log}", s.rc);
}

#[test]
fn guest_kernel_vlans_and_isolation() {
    let Some(boot) = guest("guest-vlan-manual", "manual.sh").boot() else {
        return;
    };
    assert_networks(&boot, "first", 20);
    assert_networks(&boot, "moved", 10);
    assert_isolation(&boot);
}

#[test]
fn guest_agent_converges_networks() {
    let d = vlan_dir();
    let mut g = guest("guest-vlan-agent", "agent.sh");
    g.bin(
        env!("CARGO_BIN_EXE_steward-agent"),
        "/usr/bin/steward-agent",
    )
    .file(d.join("agent.toml"), "/etc/steward/agent.toml")
    .file(d.join("spec.yaml"), "/vlan/spec.yaml")
    .file(d.join("spec-moved.yaml"), "/vlan/spec-moved.yaml")
    .file(d.join("spec-refused.yaml"), "/vlan/spec-refused.yaml");
    let Some(boot) = g.boot() else {
        return;
    };

    // First apply: every network resource converged, exit 0; the kernel shows the spec.
    assert_applied(&boot, "apply");
    assert_networks(&boot, "first", 20);

    // The same spec again: converged, and not one netlink write.
    assert_applied(&boot, "apply-again");
    let again = strip_ansi(&boot.get("apply-again.stderr").text);
    assert!(
        again.contains("netlink_writes=0"),
        "re-applying an unchanged spec must write nothing:\n{again}"
    );

    // vp3 moved from VLAN 20 to 10.
    assert_applied(&boot, "apply-moved");
    assert_networks(&boot, "moved", 10);
    assert_isolation(&boot);

    // A VLAN on eth3, which agent.toml does not allow: refused with the reason, not created;
    // the rest stays converged; apply exits 1 (not all converged).
    let st = network_status(&boot, "apply-refused");
    let (state, error) = st.get("eth3.30").expect("a status for eth3.30");
    assert_eq!(state, "failed", "eth3.30: {error}");
    assert!(error.contains("allowed_vlan_parents"), "eth3.30: {error}");
    for (name, (state, error)) in st.iter().filter(|(n, _)| *n != "eth3.30") {
        assert_eq!(state, "converged", "apply-refused: {name}: {error}");
    }
    assert_eq!(boot.get("apply-refused").rc, 1);
    assert_ne!(
        boot.get("refused-link").rc,
        0,
        "eth3.30 must not exist: {}",
        boot.get("refused-link").text
    );
}
