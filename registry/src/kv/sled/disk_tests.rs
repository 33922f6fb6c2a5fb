//! Tests of the embedded store on a full disk: a small tmpfs mounted for the test (root only;
//! under CI=true a test that cannot mount fails instead of skipping).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use super::tests::{commit, open, GUARD};
use super::SledKv;
use crate::kv::{Kv, KvError, Txn, TxnOutcome};

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

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
                tracing::warn!("skipped: {why}");
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
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if crate::disk::is_out_of_space(&e) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
}

#[tokio::test]
async fn a_full_disk_refuses_ordinary_writes_lets_freeing_ones_through_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(mount) = Tmpfs::mount(&data, "16m") else {
        return;
    };
    let reserve = data.join(crate::disk::RESERVE_FILE);
    let kv = SledKv::open(&data, 2 * 1024 * 1024).unwrap();
    assert!(reserve.exists(), "disk reserve created");
    commit(
        &kv,
        Txn::new().put("payloads/filler/1", vec![1u8; 512 * 1024]),
    )
    .await;

    let filler = data.join("filler");
    fill(&filler);
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..400u32 {
        let key = format!("specs/{n}");
        match kv.txn(Txn::new().put(&key, vec![7u8; 64 * 1024])).await {
            Ok(TxnOutcome::Committed(_)) => acked.push(key),
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(TxnOutcome::Conflict) => panic!("conflict without compares"),
        }
    }
    let err = refused.expect("a write refused on the full disk");
    assert!(matches!(err, KvError::Full { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "registry store at {} is out of disk space (ENOSPC): free space or delete payload \
             versions",
            data.display()
        )
    );
    assert!(!reserve.exists(), "reserve released");

    // Ordinary writes and readiness refused, reads served, a freeing write goes through.
    let again = kv.txn(Txn::new().put("specs/more", "x")).await;
    assert!(matches!(again, Err(KvError::Full { .. })), "{again:?}");
    assert!(matches!(kv.readiness().await, Err(KvError::Full { .. })));
    let check = kv
        .txn(Txn::new().when("payloads/filler/1", 0))
        .await
        .unwrap();
    assert_eq!(check, TxnOutcome::Conflict, "a txn without ops is answered");
    for key in &acked {
        assert!(kv.get(key).await.unwrap().is_some(), "{key} readable");
    }
    assert_eq!(kv.get("specs/more").await.unwrap(), None);
    commit(&kv, Txn::new().delete("payloads/filler/1").freeing()).await;
    assert_eq!(kv.get("payloads/filler/1").await.unwrap(), None);

    // Space back: writes and readiness recover without a reopen by the caller.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + GUARD;
    let rev = loop {
        match kv.txn(Txn::new().put("specs/after", "y")).await {
            Ok(TxnOutcome::Committed(rev)) => break rev,
            other if std::time::Instant::now() > deadline => panic!("no recovery: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    kv.readiness().await.unwrap();
    assert!(reserve.exists(), "disk reserve re-created");

    // Every acknowledged write is there after a reopen.
    drop(kv);
    let kv = open(&data);
    assert_eq!(kv.revision().await.unwrap(), rev);
    for key in acked.iter().chain([&"specs/after".to_string()]) {
        assert!(kv.get(key).await.unwrap().is_some(), "{key} kept");
    }
    assert_eq!(kv.get("payloads/filler/1").await.unwrap(), None);
    drop(kv);
    drop(mount);
}

/// Env var that makes the `#[ignore]`d child below run (it is only started by its parent).
const STUCK_CHILD: &str = "STEWARD_KV_SLED_STUCK_CHILD";

#[test]
fn a_database_sled_cannot_close_after_enospc_makes_the_store_answer_instead_of_hanging() {
    // In a child process: the sled thread left hanging holds sled's process-wide lock, which
    // would stall the other tests of this process.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kv::sled::disk_tests::stuck_child",
            "--ignored",
            "--nocapture",
        ])
        .env(STUCK_CHILD, "1")
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{log}");
    assert!(log.contains("1 passed"), "child did not run:\n{log}");
}

/// A disk full but for 1 MiB: writes are acknowledged, then refused; sled's flush of the failed
/// database may then never return. Every later call answers within the hang guard, with the
/// store working again or refusing with `Full` or `Unavailable` naming the restart.
#[tokio::test]
#[ignore = "run by a_database_sled_cannot_close_after_enospc_makes_the_store_answer_instead_of_hanging"]
async fn stuck_child() {
    if std::env::var(STUCK_CHILD).is_err() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_mount) = Tmpfs::mount(&data, "16m") else {
        return;
    };
    let kv = SledKv::open(&data, 2 * 1024 * 1024).unwrap();
    let filler = data.join("filler");
    fill(&filler);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - 1024 * 1024)
        .unwrap();
    drop(f);
    let mut refused = false;
    for n in 0..400u32 {
        let t = Txn::new().put(format!("specs/{n}"), vec![7u8; 64 * 1024]);
        if tokio::time::timeout(GUARD, kv.txn(t))
            .await
            .unwrap()
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "a write refused on the full disk");
    std::fs::remove_file(&filler).unwrap();
    let acceptable = |r: &Result<(), KvError>| match r {
        Ok(()) | Err(KvError::Full { .. }) => true,
        Err(KvError::Unavailable { reason, .. }) => reason.contains("restart the registry"),
        Err(_) => false,
    };
    for _ in 0..3 {
        let t = Txn::new().put("specs/after", "x");
        let w = tokio::time::timeout(GUARD, kv.txn(t)).await.unwrap();
        let w = w.map(|_| ());
        assert!(acceptable(&w), "{w:?}");
        let r = tokio::time::timeout(GUARD, kv.readiness()).await.unwrap();
        assert!(acceptable(&r), "{r:?}");
    }
}
