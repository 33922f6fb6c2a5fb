//! End-to-end: the real `stewardctl` binary given several registry URLs (flag, environment
//! variable, config file) against the real registry: with nothing listening on the first URL it
//! reads from and writes to the next (a streamed upload too); with every URL dead it fails (exit 3) naming each URL
//! with its error; a malformed URL in the list is refused by name before anything is sent.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::{free_port, Registry};
use serde_json::{json, Value};

/// `stewardctl` with `registry` given as `how` ("flag", "env" or "file"), the admin token in
/// the environment.
fn ctl(r: &Registry, registry: &str, how: &str, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stewardctl"));
    c.env_remove("STEWARD_TOKEN_FILE")
        .env_remove("STEWARD_REGISTRY")
        .env("STEWARD_TOKEN", &r.admin)
        .env("HOME", r.dir.path());
    let config = r.dir.path().join("stewardctl.toml");
    match how {
        "flag" => {
            c.arg("--registry").arg(registry);
        }
        "env" => {
            c.env("STEWARD_REGISTRY", registry);
        }
        _ => {
            let list: Vec<String> = registry.split(',').map(|u| format!("\"{u}\"")).collect();
            std::fs::write(&config, format!("registry = [{}]\n", list.join(", "))).unwrap();
            c.arg("--config").arg(&config);
        }
    }
    c.args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn a_dead_first_url_is_skipped_and_all_dead_urls_are_named() {
    let r = Registry::start(&[]).await;
    let (st, tok) = r
        .req(
            reqwest::Method::POST,
            "/v1/enrollment-tokens",
            Some(&r.admin),
            Some(json!({"uses": 1})),
        )
        .await;
    assert_eq!(st, 201, "{tok}");
    let (st, en) = r
        .req(
            reqwest::Method::POST,
            "/v1/enroll",
            None,
            Some(json!({"token": tok["token"], "facts": {"machine_id": "fo1", "hostname": "fo-host"}})),
        )
        .await;
    assert_eq!(st, 200, "{en}");
    let id = en["node_id"].as_str().unwrap();

    // A dead first URL, in each of the three places a list can come from: the live one answers.
    let list = format!("{},{}", dead_url(), r.url(""));
    for how in ["flag", "env", "file"] {
        let out = ctl(&r, &list, how, &["-o", "json", "nodes", "list"]);
        assert!(out.status.success(), "{how}: {}", stderr(&out));
        let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(nodes[0]["id"], id, "{how}: {nodes}");
    }
    // A write (POST: sent again only because the first URL never connected) goes through too.
    let out = ctl(
        &r,
        &list,
        "flag",
        &["tokens", "create", "--uses", "1", "-q"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains('.'));

    // A streamed upload is sent once, to a URL that answers.
    let file = r.dir.path().join("blob.bin");
    std::fs::write(&file, b"failover payload").unwrap();
    let out = ctl(
        &r,
        &list,
        "flag",
        &[
            "payloads",
            "upload",
            "fo-blob",
            "1",
            file.to_str().unwrap(),
            "-q",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (st, v) = r
        .req(
            reqwest::Method::GET,
            "/v1/payloads/fo-blob/1",
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["size"], 16, "{v}");

    // Every URL dead: exit 3, each URL named with its error.
    let (a, b) = (dead_url(), dead_url());
    let out = ctl(&r, &format!("{a},{b}"), "flag", &["nodes", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no registry URL answered"), "{err}");
    for u in [&a, &b] {
        assert!(
            err.contains(&format!("{u}/: could not reach")),
            "{u} not named: {err}"
        );
    }

    // A malformed URL in the list is refused by name (exit 2), nothing sent.
    let out = ctl(
        &r,
        &format!("{},127.0.0.1:1", r.url("")),
        "flag",
        &["nodes", "list"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"127.0.0.1:1\""), "{}", stderr(&out));
}
