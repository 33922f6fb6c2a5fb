//! End-to-end: the real `stewardctl` binary against the real registry: every command group,
//! output formats and exit codes.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::Registry;
use serde_json::{json, Value};

fn ctl(r: &Registry, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stewardctl"));
    c.arg("--registry")
        .arg(r.url(""))
        .args(args)
        .env_remove("STEWARD_TOKEN")
        .env_remove("STEWARD_TOKEN_FILE")
        .env("HOME", r.dir.path());
    if let Some(t) = token {
        c.env("STEWARD_TOKEN", t);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

#[tokio::test]
async fn stewardctl_round_trip_and_exit_codes() {
    let r = Registry::start(&[]).await;
    let admin = r.admin.clone();
    let a = Some(admin.as_str());

    // tokens create (quiet prints only the token) → enrol → nodes list.
    let token = ok(ctl(
        &r,
        a,
        &[
            "tokens", "create", "--uses", "2", "--label", "role=web", "-q",
        ],
    ))
    .trim()
    .to_string();
    assert!(token.contains('.'), "{token}");
    let (st, en) = r
        .req(
            reqwest::Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": token, "facts": {"machine_id": "ctl1", "hostname": "ctl-host"}})),
        )
        .await;
    assert_eq!(st, 200);
    let id = en["node_id"].as_str().unwrap().to_string();
    let list: Value =
        serde_json::from_str(&ok(ctl(&r, a, &["-o", "json", "nodes", "list"]))).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    let table = ok(ctl(&r, a, &["nodes", "list", "--selector", "role=web"]));
    assert!(
        table.contains("ctl-host") && table.contains("role=web"),
        "{table}"
    );
    let tokens = ok(ctl(&r, a, &["tokens", "list"]));
    assert!(
        !tokens.contains(token.split('.').nth(1).unwrap()),
        "token list must not show secrets"
    );

    // spec apply / get / diff.
    let file = r.dir.path().join("spec.yaml");
    std::fs::write(&file, "containers:\n  - {name: web, image: 'nginx:1.27'}\n").unwrap();
    let out = ok(ctl(
        &r,
        a,
        &["spec", "apply", &id, "-f", file.to_str().unwrap()],
    ));
    assert!(out.contains("generation 1"), "{out}");
    let got = ok(ctl(&r, a, &["spec", "get", &id]));
    assert!(got.contains("nginx:1.27"), "{got}");
    assert_eq!(
        ctl(&r, a, &["spec", "diff", &id, "-f", file.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    std::fs::write(&file, "containers:\n  - {name: web, image: 'nginx:1.28'}\n").unwrap();
    let d = ctl(&r, a, &["spec", "diff", &id, "-f", file.to_str().unwrap()]);
    assert_eq!(d.status.code(), Some(1));
    assert!(stdout(&d).contains("-") && stdout(&d).contains("nginx:1.28"));

    // Invalid spec: exit 6, the field named, nothing changed.
    std::fs::write(
        &file,
        "containers:\n  - {name: web, image: 'nginx', ports: ['99999:80']}\n",
    )
    .unwrap();
    let bad = ctl(&r, a, &["spec", "apply", &id, "-f", file.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("containers[0].ports[0]"));
    assert_eq!(
        ok(ctl(&r, a, &["spec", "get", &id, "--generation-only"])).trim(),
        "1"
    );

    // Labels and fragments.
    ok(ctl(&r, a, &["nodes", "label", &id, "tier=gold", "role-"]));
    let node: Value =
        serde_json::from_str(&ok(ctl(&r, a, &["-o", "json", "nodes", "get", &id]))).unwrap();
    assert_eq!(node["labels"], json!({"tier": "gold"}));
    // Payloads: uploaded (hashed locally, streamed), listed; a spec naming a version the
    // registry lacks is refused (exit 6), then the fragment pins the uploaded one.
    let blob = r.dir.path().join("tc.bin");
    std::fs::write(&blob, vec![7u8; 300_000]).unwrap();
    let up = ok(ctl(
        &r,
        a,
        &["payloads", "upload", "tc", "1", blob.to_str().unwrap()],
    ));
    assert!(up.contains("tc@1 uploaded"), "{up}");
    let again = ok(ctl(
        &r,
        a,
        &["payloads", "upload", "tc", "1", blob.to_str().unwrap()],
    ));
    assert!(again.contains("already stored"), "{again}");
    std::fs::write(&blob, b"other content").unwrap();
    let clash = ctl(
        &r,
        a,
        &["payloads", "upload", "tc", "1", blob.to_str().unwrap()],
    );
    assert_eq!(clash.status.code(), Some(6));
    let list = ok(ctl(&r, a, &["payloads", "list"]));
    assert!(list.contains("tc") && list.contains("293.0 KiB"), "{list}");
    std::fs::write(
        &file,
        "payloads:\n  - {name: tc, version: '2', path: /opt/tc}\n",
    )
    .unwrap();
    let missing = ctl(
        &r,
        a,
        &[
            "fragments",
            "apply",
            "gold",
            "--selector",
            "tier=gold",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(missing.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("payloads[0].version"));
    std::fs::write(
        &file,
        "payloads:\n  - {name: tc, version: '1', path: /opt/tc}\n",
    )
    .unwrap();
    let out = ok(ctl(
        &r,
        a,
        &[
            "fragments",
            "apply",
            "gold",
            "--selector",
            "tier=gold",
            "-f",
            file.to_str().unwrap(),
        ],
    ));
    assert!(out.contains(&id), "{out}");
    assert_eq!(
        ok(ctl(&r, a, &["spec", "get", &id, "--generation-only"])).trim(),
        "2"
    );
    assert!(ok(ctl(&r, a, &["fragments", "list"])).contains("gold"));

    // Events, as JSON lines.
    let ev = ok(ctl(&r, a, &["-o", "json", "events", "--node", &id]));
    assert!(
        ev.contains("node-enrolled") && ev.contains("labels-changed"),
        "{ev}"
    );

    // Exit codes: 4 unauthorised, 5 not found, 3 unreachable.
    assert_eq!(
        ctl(&r, Some("wrong"), &["nodes", "list"]).status.code(),
        Some(4)
    );
    assert_eq!(
        ctl(&r, a, &["nodes", "get", "no-such-node"]).status.code(),
        Some(5)
    );
    let unreachable = Command::new(env!("CARGO_BIN_EXE_stewardctl"))
        .args([
            "--registry",
            "http://127.0.0.1:1",
            "--token",
            "x",
            "nodes",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));

    // Decommission.
    ok(ctl(&r, a, &["nodes", "delete", &id]));
    let node: Value =
        serde_json::from_str(&ok(ctl(&r, a, &["-o", "json", "nodes", "get", &id]))).unwrap();
    assert_eq!(node["health"], "decommissioned");
}
