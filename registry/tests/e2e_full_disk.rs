//! A full disk against the real registry binary, its data dir on a 16 MiB tmpfs: writes answer
//! 507 naming the store and the data dir, /readyz answers 503, a payload version can still be
//! deleted, and once space is freed writes and /readyz recover without a restart; a restart
//! afterwards finds every acknowledged write.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{free_port, Registry};
use reqwest::Method;
use serde_json::{json, Value};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` when that is impossible here (not root), which
    /// fails the test under CI=true.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                let why = format!("cannot mount a tmpfs at {}: {other:?}", dir.display());
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("skipped: {why}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
    written
}

async fn put_spec(r: &Registry, id: &str, n: u32) -> (u16, Value) {
    // Some bulk per spec so the store's log grows quickly.
    let env: String = (0..40)
        .map(|i| format!("      K{i}: \"value-{n}-{i}-{}\"\n", "x".repeat(64)))
        .collect();
    let yaml = format!("containers:\n  - name: c{n}\n    image: busybox\n    env:\n{env}");
    r.put_yaml(&format!("/v1/nodes/{id}/spec"), &r.admin, &yaml)
        .await
}

async fn readyz(r: &Registry) -> (u16, String) {
    let resp = r.client.get(r.url("/readyz")).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_full_disk_answers_507_lets_payloads_be_deleted_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(mount) = Tmpfs::mount(&data, "16m") else {
        return;
    };
    let mut r = Registry {
        child: None,
        port: free_port(),
        dir,
        admin: String::new(),
        extra: vec!["--store-reserve-bytes".into(), "2097152".into()],
        scheme: "http",
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    };
    r.spawn().await;
    let data_dir = data.display().to_string();
    assert!(data.join("store.reserve").exists(), "disk reserve created");

    // A payload version (1 MiB) to delete later, and a node with a spec.
    let resp = r
        .client
        .put(r.url("/v1/payloads/filler/1"))
        .bearer_auth(&r.admin)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text().await);
    let (id, _) = r.enroll("m-full", json!({})).await;
    let (st, w) = put_spec(&r, &id, 0).await;
    assert_eq!(st, 200, "{w}");
    let mut acked = (0u32, w["generation"].as_u64().unwrap());

    // Fill the disk, then write specs until the store refuses.
    let filler = data.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);
    // An upload on the full disk: 507 naming the blob directory, nothing left behind. (Its own
    // client: the registry answers before reading the whole body and closes that connection.)
    let resp = reqwest::Client::new()
        .put(r.url("/v1/payloads/big/1"))
        .bearer_auth(&r.admin)
        .header("content-type", "application/octet-stream")
        .body(vec![5u8; 256 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 507);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "insufficient_storage", "{body}");
    assert_eq!(
        body["error"],
        format!(
            "payload blob store at {data_dir}/blobs is out of disk space (ENOSPC): free space or \
             delete payload versions"
        )
        .as_str()
    );
    assert_eq!(
        std::fs::read_dir(data.join("blobs/.tmp")).unwrap().count(),
        0
    );
    let mut refused = None;
    for n in 1..=400u32 {
        let (st, body) = put_spec(&r, &id, n).await;
        match st {
            200 => acked = (n, body["generation"].as_u64().unwrap()),
            507 => {
                refused = Some(body);
                break;
            }
            other => panic!("spec write {n}: {other} {body}\nlog:\n{}", r.log()),
        }
    }
    let body = refused.unwrap_or_else(|| panic!("no 507 on a full disk; log:\n{}", r.log()));
    assert_eq!(body["code"], "insufficient_storage", "{body}");
    let expected = format!(
        "registry store at {data_dir} is out of disk space (ENOSPC): free space or delete payload versions"
    );
    assert_eq!(body["error"], expected.as_str(), "{body}");

    // Refused writes changed nothing; the store says it cannot write.
    let (st, doc) = r.get(&format!("/v1/nodes/{id}/spec"), &r.admin).await;
    assert_eq!(st, 200, "{doc}");
    assert_eq!(
        doc["generation"], acked.1,
        "a refused write changed the spec"
    );
    let (st, text) = readyz(&r).await;
    assert_eq!(st, 503, "{text}");
    assert!(text.contains(&expected), "{text}");
    assert_eq!(put_spec(&r, &id, 1000).await.0, 507, "still full");

    // Deleting a payload version, the way to free space, works on the full disk.
    let (st, del) = r
        .req(
            Method::DELETE,
            "/v1/payloads/filler/1",
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200, "{del}\nlog:\n{}", r.log());
    assert_eq!(r.get("/v1/payloads/filler/1", &r.admin).await.0, 404);

    // Space back: writes and /readyz recover without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (st, w) = loop {
        let (st, w) = put_spec(&r, &id, 2000).await;
        if st == 200 || Instant::now() > deadline {
            break (st, w);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        st,
        200,
        "write after space came back: {w}\nlog:\n{}",
        r.log()
    );
    acked = (2000, w["generation"].as_u64().unwrap());
    assert_eq!(acked.1, doc["generation"].as_u64().unwrap() + 1);
    let (st, text) = readyz(&r).await;
    assert_eq!((st, text.as_str()), (200, "ready\n"));
    assert!(
        data.join("store.reserve").exists(),
        "disk reserve re-created"
    );
    let resp = r
        .client
        .put(r.url("/v1/payloads/after/1"))
        .bearer_auth(&r.admin)
        .header("content-type", "application/octet-stream")
        .body(vec![9u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    // A restart sees every acknowledged write.
    r.kill9();
    r.spawn().await;
    let (st, doc) = r.get(&format!("/v1/nodes/{id}/spec"), &r.admin).await;
    assert_eq!(st, 200, "{doc}");
    assert_eq!(doc["generation"], acked.1);
    assert_eq!(doc["own"]["containers"][0]["name"], format!("c{}", acked.0));
    assert_eq!(r.get("/v1/payloads/filler/1", &r.admin).await.0, 404);
    assert_eq!(r.get("/v1/payloads/after/1", &r.admin).await.0, 200);
    r.kill9();
    drop(mount);
}
