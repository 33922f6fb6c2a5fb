//! Payloads end to end: the real registry binary (blob store, spec pinning) and the real agent
//! binary. Deploy with mode, attestation in the status, a blob corrupted on the registry's disk
//! (never installed, error reported), path escapes refused, `kill -9` in the middle of a
//! download (never a partial file at the target, resumed afterwards), and drift by hand
//! (reported, left alone under `report`, restored under `restore`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::payload::{content, flip_byte, sha256_hex};
use common::{suffix, wait_for, Agent, Registry};
use serde_json::Value;

fn policy(root: &Path, extra: &str) -> String {
    format!(
        "payload_roots = [\"{}\"]\nattest_rehash_secs = 2\n{extra}",
        root.display()
    )
}

fn payload_yaml(name: &str, version: &str, path: &Path, extra: &str) -> String {
    format!(
        "  - {{name: {name}, version: '{version}', path: '{}'{extra}}}\n",
        path.display()
    )
}

fn resource<'a>(res: &'a [Value], name: &str) -> &'a Value {
    res.iter()
        .find(|r| r["name"] == name && r["kind"] == "payload")
        .unwrap_or_else(|| panic!("payload {name} not in {res:?}"))
}

#[tokio::test]
async fn deploys_verifies_and_never_installs_a_corrupt_blob() {
    let r = Registry::start().await;
    let root = tempfile::tempdir().unwrap();
    let a = Agent::start(&r, &policy(root.path(), "")).await;
    let name = format!("tool-{}", suffix());
    let target = root.path().join("sub/dir/tool.bin");

    let v1 = content(3 << 20, 1);
    let sha1 = r.upload(&name, "1", v1.clone()).await;
    assert_eq!(sha1, sha256_hex(&v1));
    let spec = |v: &str| {
        format!(
            "payloads:\n{}",
            payload_yaml(&name, v, &target, ", mode: '0750'")
        )
    };
    let g = r.put_spec(&a.node_id, &spec("1")).await;
    let res = r.wait_observed(&a.node_id, g).await;
    assert_eq!(resource(&res, &name)["state"], "converged", "{res:?}");
    assert_eq!(std::fs::read(&target).unwrap(), v1);
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);
    let att = r.attestations(&a.node_id).await;
    assert_eq!(att.len(), 1, "{att:?}");
    assert_eq!(att[0]["expected"], sha1.as_str());
    assert_eq!(att[0]["actual"], sha1.as_str());
    assert_eq!(att[0]["path"], target.to_str().unwrap());
    assert!(
        a.dir.path().join("state/blobs").join(&sha1).exists(),
        "blob cached by hash"
    );

    // Version 2, with a byte flipped in the registry's stored blob: never installed.
    let v2 = content(3 << 20, 2);
    let sha2 = r.upload(&name, "2", v2.clone()).await;
    let blob = r.blob_file(&sha2);
    flip_byte(&blob, 1 << 20);
    let g = r.put_spec(&a.node_id, &spec("2")).await;
    let res = r.wait_observed(&a.node_id, g).await;
    let p = resource(&res, &name);
    assert_eq!(p["state"], "failed", "{p}");
    let err = p["error"].as_str().unwrap();
    assert!(
        err.contains("corrupt") && err.contains(&sha2) && err.contains("not replaced"),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), v1, "the old file stays");
    let att = r.attestations(&a.node_id).await;
    assert_eq!(att[0]["expected"], sha2.as_str());
    assert_eq!(att[0]["actual"], sha1.as_str());
    assert!(
        !a.dir.path().join("state/blobs").join(&sha2).exists(),
        "a corrupt blob is not cached"
    );
    let leftovers: Vec<_> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("tool.bin")]);

    // Repaired on the registry: the next resync deploys it.
    flip_byte(&blob, 1 << 20);
    wait_for(30, "version 2 to be deployed after the repair", || async {
        (std::fs::read(&target).ok()? == v2).then_some(())
    })
    .await;
    wait_for(30, "the attestation of version 2", || async {
        let att = r.attestations(&a.node_id).await;
        (att.first()?["actual"] == sha2.as_str()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn path_escapes_and_foreign_files_are_refused() {
    let r = Registry::start().await;
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    std::fs::write(outside.join("victim"), b"keep me").unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), root.join("final-link")).unwrap();
    std::fs::write(root.join("foreign"), b"not steward's").unwrap();
    let a = Agent::start(&r, &policy(&root, "")).await;

    let s = suffix();
    let body = content(1000, 7);
    let names: Vec<String> = ["via-link", "outside", "final-link", "foreign"]
        .iter()
        .map(|n| format!("{n}-{s}"))
        .collect();
    for n in &names {
        r.upload(n, "1", body.clone()).await;
    }
    let paths = [
        root.join("link/x"),
        outside.join("x"),
        root.join("final-link"),
        root.join("foreign"),
    ];
    let mut yaml = String::from("payloads:\n");
    for (n, p) in names.iter().zip(&paths) {
        yaml.push_str(&payload_yaml(n, "1", p, ""));
    }
    let g = r.put_spec(&a.node_id, &yaml).await;
    let res = r.wait_observed(&a.node_id, g).await;
    let st = |i: usize| {
        let p = resource(&res, &names[i]);
        (
            p["state"].as_str().unwrap().to_string(),
            p["error"].as_str().unwrap_or("").to_string(),
        )
    };
    let (s0, e0) = st(0);
    assert_eq!(s0, "failed");
    assert!(e0.contains("symbolic link"), "{e0}");
    let (s1, e1) = st(1);
    assert_eq!(s1, "failed");
    assert!(e1.contains("not under an allowed payload root"), "{e1}");
    let (s2, e2) = st(2);
    assert_eq!(s2, "conflict", "{e2}");
    assert!(e2.contains("symbolic link"), "{e2}");
    let (s3, e3) = st(3);
    assert_eq!(s3, "conflict", "{e3}");
    assert!(e3.contains("not deployed by Steward"), "{e3}");

    // Nothing written outside the root, nothing replaced.
    let mut out: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    out.sort();
    assert_eq!(out, vec![std::ffi::OsString::from("victim")]);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(root.join("final-link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(root.join("foreign")).unwrap(),
        b"not steward's"
    );

    // `..` never reaches the agent: the registry refuses it when the spec is written.
    let resp = r
        .http
        .put(r.url(&format!("/v1/nodes/{}/spec", a.node_id)))
        .bearer_auth(&r.admin)
        .header("content-type", "application/yaml")
        .body(format!(
            "payloads:\n{}",
            payload_yaml(&names[3], "1", &root.join("../outside/y"), "")
        ))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

#[tokio::test]
async fn kill_9_mid_download_never_leaves_a_partial_target_and_resumes() {
    let r = Registry::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut a = Agent::start(&r, &policy(root.path(), "")).await;
    let name = format!("big-{}", suffix());
    let target = root.path().join("big.bin");
    let body = content(192 << 20, 3);
    let sha = r.upload(&name, "1", body.clone()).await;
    drop(body);
    r.put_spec(
        &a.node_id,
        &format!("payloads:\n{}", payload_yaml(&name, "1", &target, "")),
    )
    .await;
    let partial = a.dir.path().join(format!("state/blobs/{sha}.partial"));
    wait_for(60, "the download to start", || async {
        let len = std::fs::metadata(&partial).ok()?.len();
        (len > (8 << 20)).then_some(())
    })
    .await;
    a.kill9();
    let got = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(got > 0, "a partial download is kept for the resume");
    assert!(
        !target.exists(),
        "no file at the target path after kill -9 mid-download"
    );

    a.spawn();
    wait_for(
        120,
        "the payload to be deployed after the restart",
        || async {
            let att = r.attestations(&a.node_id).await;
            (att.first()?["actual"] == sha.as_str()).then_some(())
        },
    )
    .await;
    let (h, n) = steward_agent::payload::hash_file(&target).unwrap();
    assert_eq!((h, n), (sha.clone(), 192 << 20));
    assert!(
        a.log().contains("resuming download"),
        "the download resumed with a Range request:\n{}",
        a.log()
    );
    assert!(!partial.exists());
}

#[tokio::test]
async fn drift_by_hand_is_reported_then_restored() {
    let r = Registry::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut a = Agent::start(&r, &policy(root.path(), "payload_drift = \"report\"")).await;
    let name = format!("conf-{}", suffix());
    let target = root.path().join("app.conf");
    let body = content(4096, 9);
    let sha = r.upload(&name, "1", body.clone()).await;
    let g = r
        .put_spec(
            &a.node_id,
            &format!("payloads:\n{}", payload_yaml(&name, "1", &target, "")),
        )
        .await;
    r.wait_observed(&a.node_id, g).await;
    assert_eq!(std::fs::read(&target).unwrap(), body);

    // Changed by hand (same size): reported as drift with the hash found, left alone.
    let mut edited = body.clone();
    edited[100] ^= 1;
    std::fs::write(&target, &edited).unwrap();
    let edited_sha = sha256_hex(&edited);
    wait_for(30, "the drift to be reported", || async {
        let n = r.node(&a.node_id).await;
        let att = n["status"]["payloads"].as_array()?.first()?.clone();
        let res = n["status"]["resources"].as_array()?.clone();
        let p = resource(&res, &name).clone();
        (att["actual"] == edited_sha.as_str()
            && att["expected"] == sha.as_str()
            && p["state"] == "drifted")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        std::fs::read(&target).unwrap(),
        edited,
        "report only: the file is left as found"
    );

    // Same agent under `restore`: the content is put back and the node converges.
    a.kill9();
    let cfg = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("payload_drift = \"report\"", "payload_drift = \"restore\"");
    std::fs::write(&a.config, cfg).unwrap();
    a.spawn();
    wait_for(30, "the file to be restored", || async {
        (std::fs::read(&target).ok()? == body).then_some(())
    })
    .await;
    wait_for(30, "the attestation to match again", || async {
        let n = r.node(&a.node_id).await;
        let att = n["status"]["payloads"].as_array()?.first()?.clone();
        let res = n["status"]["resources"].as_array()?.clone();
        (att["actual"] == sha.as_str() && resource(&res, &name)["state"] == "converged")
            .then_some(())
    })
    .await;

    // Deleted by hand: restored again.
    std::fs::remove_file(&target).unwrap();
    wait_for(30, "the deleted file to be restored", || async {
        (std::fs::read(&target).ok()? == body).then_some(())
    })
    .await;
    assert!(
        a.log().contains("payload drifted; restoring"),
        "{}",
        a.log()
    );
}
