//! UDP reachability for the isolation tests: datagrams sent through bash's `/dev/udp`, counted
//! by an nftables counter in the receiver's namespace (table `inet udpseen`, the test's own),
//! so no listener is needed and an answer is not required: a datagram counted arrived.

use std::process::Stdio;
use std::time::Duration;

use super::netns::NetNs;

/// Counts UDP datagrams to `port` arriving in `ns` (after every filter of lower priority,
/// the agent's `input` chain included).
pub fn count_udp(ns: &NetNs, port: u16) {
    let rules = format!(
        "table inet udpseen {{\n chain input {{\n  type filter hook input priority 10;\n  \
         udp dport {port} counter\n }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{}-udp.nft", ns.name));
    std::fs::write(&file, rules).unwrap();
    let st = ns.command("nft").arg("-f").arg(&file).status().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(st.success(), "loading the UDP counter in {}", ns.name);
}

/// Datagrams counted so far in `ns` by [`count_udp`].
pub fn udp_seen(ns: &NetNs) -> u64 {
    let out = ns
        .command("nft")
        .args(["-j", "list", "table", "inet", "udpseen"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["nftables"].as_array().unwrap().iter())
        .filter_map(|o| o["rule"]["expr"].as_array())
        .filter_map(|e| e.iter().find_map(|s| s["counter"]["packets"].as_u64()))
        .sum()
}

/// Whether a datagram from `from` to `to:port` is counted in `to_ns` (which ran
/// [`count_udp`]), within `tries` sends 300 ms apart.
pub fn udp(from: &NetNs, to_ns: &NetNs, to: &str, port: u16, tries: u32) -> bool {
    let before = udp_seen(to_ns);
    (0..tries).any(|_| {
        let _ = from
            .command("bash")
            .args(["-c", &format!("echo x > /dev/udp/{to}/{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(300));
        udp_seen(to_ns) > before
    })
}
