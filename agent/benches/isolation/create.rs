//! Parts 1 and 2 of the isolation bench: the create of the 100 isolated labs' table by the
//! agent, side by side with `nft -f` of the same ruleset (and of the same isolation written one
//! rule per bridge), and the no-op re-apply right after it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{agent, labs, Ns};

/// Medians of part 1 and 2.
#[derive(Default)]
pub struct Create {
    pub agent_wall: Vec<Duration>,
    pub agent_in: Vec<Duration>,
    pub noop_wall: Vec<Duration>,
    pub noop_in: Vec<Duration>,
    /// `isolation_us` of the create and of the no-op.
    pub agent_iso: Vec<Duration>,
    pub noop_iso: Vec<Duration>,
    pub base_wall: Vec<Duration>,
    pub base_in: Vec<Duration>,
    pub nft_text: Vec<Duration>,
    /// `nft -f` of [`per_bridge_text`].
    pub nft_per_bridge: Vec<Duration>,
    pub nft_json: Vec<Duration>,
    /// `nft -j list table inet steward` of all the rules (what a pass runs when it must look).
    pub nft_list: Vec<Duration>,
    pub exec: Vec<Duration>,
}

/// The isolation of `bridges` written without sets: per bridge two drops in `forward`, the
/// neighbour-discovery accept and a drop in `input` and in `output`, and a fast path at the
/// head of each chain (603 rules for 100 bridges).
fn per_bridge_text(bridges: &[String]) -> String {
    let q = |b: &String| format!("\"{b}\"");
    let all = format!(
        "{{ {} }}",
        bridges.iter().map(q).collect::<Vec<_>>().join(", ")
    );
    let nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept";
    let head = |hook: &str| {
        format!(
            "  chain {hook} {{\n    type filter hook {hook} priority filter - 1; policy accept;\n"
        )
    };
    let mut s = String::from("table inet steward {\n");
    s += &head("forward");
    let _ = writeln!(s, "    iifname != {all} oifname != {all} accept");
    for b in bridges.iter().map(q) {
        let _ = writeln!(
            s,
            "    iifname {b} oifname != {b} drop\n    oifname {b} iifname != {b} drop"
        );
    }
    for (hook, key) in [("input", "iifname"), ("output", "oifname")] {
        s += "  }\n";
        s += &head(hook);
        let _ = writeln!(s, "    {key} != {all} accept");
        for b in bridges.iter().map(q) {
            let _ = writeln!(s, "    {key} {b} {nd}\n    {key} {b} drop");
        }
    }
    s + "  }\n}\n"
}

/// Parts 1 and 2.
pub fn create(dir: &Path, rounds: usize) -> (Create, usize) {
    let ns = Ns::new("iso");
    let open = dir.join("open.yaml");
    let isolated = dir.join("isolated.yaml");
    std::fs::write(&open, labs(101..=200, [])).unwrap();
    std::fs::write(&isolated, labs([], 101..=200)).unwrap();
    let data = dir.join("data");
    // The links, once, open; then the ruleset the agent makes, as text and as JSON.
    let first = agent(&ns, &data, &open);
    assert!(first.netlink_writes > 0 && first.nft_writes == 0);
    let a = agent(&ns, &data, &isolated);
    assert_eq!((a.netlink_writes, a.nft_writes), (0, 1), "isolating");
    let text = ns.nft(&["list", "table", "inet", "steward"]);
    let rules = text.lines().filter(|l| l.contains(" comment ")).count();
    let text_file = dir.join("steward.nft");
    std::fs::write(&text_file, &text).unwrap();
    let bridges: Vec<String> = (101..=200).map(|v| format!("br{v}")).collect();
    let per_bridge_file = dir.join("per-bridge.nft");
    std::fs::write(&per_bridge_file, per_bridge_text(&bridges)).unwrap();
    let json_file = dir.join("steward.json");
    std::fs::write(
        &json_file,
        ns.nft(&["-j", "list", "table", "inet", "steward"]),
    )
    .unwrap();
    let back = agent(&ns, &data, &open);
    assert_eq!(back.nft_writes, 1, "opening deletes the table");
    assert!(!ns.has_table());
    // `nft -j -f` of the listed JSON (objects without a command are added) recreates it too?
    let json_ok = ns
        .cmd("nft")
        .args(["-j", "-f"])
        .arg(&json_file)
        .output()
        .is_ok_and(|o| o.status.success())
        && ns.nft(&["list", "table", "inet", "steward"]) == text;
    if ns.has_table() {
        ns.nft(&["delete", "table", "inet", "steward"]);
    }
    if !json_ok {
        println!("note: `nft -j -f` of the listed JSON did not recreate the table: row left out");
    }
    let (text_path, json_path) = (text_file.to_str().unwrap(), json_file.to_str().unwrap());
    let per_bridge_path = per_bridge_file.to_str().unwrap();
    let mut c = Create::default();
    for round in 0..rounds {
        // Each step starts and ends with no table and the agent knowing of none.
        for step in (0..4).map(|i| (i + round) % 4) {
            match step {
                0 => {
                    let a = agent(&ns, &data, &isolated);
                    assert_eq!((a.netlink_writes, a.nft_writes), (0, 1), "create");
                    let again = agent(&ns, &data, &isolated);
                    assert_eq!(
                        (again.netlink_writes, again.nft_writes),
                        (0, 0),
                        "a no-op re-apply must not write"
                    );
                    c.agent_wall.push(a.wall);
                    c.agent_in.push(a.inside);
                    c.noop_wall.push(again.wall);
                    c.noop_in.push(again.inside);
                    c.agent_iso.push(a.isolation);
                    c.noop_iso.push(again.isolation);
                    assert_eq!(agent(&ns, &data, &open).nft_writes, 1);
                }
                1 => {
                    c.nft_text.push(ns.time("nft", &["-f", text_path]));
                    assert!(ns.has_table());
                    ns.nft(&["delete", "table", "inet", "steward"]);
                    c.nft_per_bridge
                        .push(ns.time("nft", &["-f", per_bridge_path]));
                    assert!(ns.has_table());
                    ns.nft(&["delete", "table", "inet", "steward"]);
                }
                2 => {
                    let b = agent(&ns, &data, &open);
                    assert_eq!((b.netlink_writes, b.nft_writes), (0, 0), "baseline");
                    c.base_wall.push(b.wall);
                    c.base_in.push(b.inside);
                }
                _ => {
                    c.exec.push(ns.time("true", &[]));
                    if json_ok {
                        c.nft_json.push(ns.time("nft", &["-j", "-f", json_path]));
                        let list = ["-j", "list", "table", "inet", "steward"];
                        c.nft_list.push(ns.time("nft", &list));
                        ns.nft(&["delete", "table", "inet", "steward"]);
                    }
                }
            }
            assert!(!ns.has_table());
        }
    }
    (c, rules)
}
