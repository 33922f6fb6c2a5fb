//! Unit tests of the migration's pure parts (batching, skipped keys) and of copy + verify
//! between two real embedded stores (the etcd round trip is `tests/e2e_migrate.rs`).
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn batches_hold_at_most_max_ops_records() {
    let sizes = vec![10; 250];
    let b = batches(&sizes, 100, 1_000_000);
    assert_eq!(b, vec![0..100, 100..200, 200..250]);
    assert!(batches(&[], 100, 1000).is_empty());
}

#[test]
fn batches_stay_under_max_bytes_and_a_big_record_goes_alone() {
    // 400 + 400 fit in 1000; the third would not; 1500 is over the budget on its own.
    let sizes = [400, 400, 400, 1500, 100, 100];
    let b = batches(&sizes, 100, 1000);
    assert_eq!(b, vec![0..2, 2..3, 3..4, 4..6]);
    for r in &b {
        let total: usize = sizes[r.clone()].iter().sum();
        assert!(total <= 1000 || r.len() == 1, "{r:?}: {total} bytes");
    }
    // Consecutive, complete, in order.
    let flat: Vec<usize> = b.into_iter().flatten().collect();
    assert_eq!(flat, (0..sizes.len()).collect::<Vec<_>>());
}

#[test]
fn batches_of_real_record_sizes_fit_etcd_limits() {
    // 1,000 records of 20 KiB: bytes decide before the op count does.
    let sizes = vec![20 * 1024; 1000];
    for r in batches(&sizes, MAX_OPS, MAX_TXN_BYTES) {
        assert!(r.len() <= MAX_OPS);
        assert!(sizes[r].iter().sum::<usize>() <= MAX_TXN_BYTES);
    }
    let l = Limits::new(None);
    assert!(
        l.record < ETCD_MAX_REQUEST_BYTES && l.txn <= l.record,
        "{l:?}"
    );
    // A raised etcd limit lets bigger records through; a lowered one shrinks transactions too.
    assert!(Limits::new(Some(8 << 20)).record > 7 << 20);
    assert!(Limits::new(Some(512 * 1024)).txn < 512 * 1024);
}

#[test]
fn session_keys_and_blob_copies_are_not_copied() {
    for k in ["replicas/r1", "hb/r1", "blob-copies/abc/r1"] {
        assert!(skipped(k), "{k}");
    }
    for k in [
        "nodes/n1",
        "meta/event-seq",
        "ui-sessions/x",
        "events/00000000000000000001",
    ] {
        assert!(!skipped(k), "{k}");
    }
    assert_eq!(kind("events/00000000000000000001"), "events");
    assert_eq!(kind("meta/event-seq"), "meta");
}

async fn sled_with(dir: &Path, records: &[(&str, &[u8])]) -> Arc<dyn Kv> {
    let kv = SledKv::open(dir, 0).unwrap();
    let txn = records
        .iter()
        .fold(Txn::new(), |t, (k, v)| t.put(*k, v.to_vec()));
    kv.txn(txn).await.unwrap();
    Arc::new(kv)
}

#[tokio::test]
async fn copy_then_verify_between_embedded_stores_and_a_changed_byte_is_found() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big = vec![b'x'; 300 * 1024];
    let mut records: Vec<(String, Vec<u8>)> = (0..250)
        .map(|i| {
            (
                format!("events/{i:020}"),
                format!("{{\"seq\":{i}}}").into_bytes(),
            )
        })
        .collect();
    records.push(("meta/event-seq".into(), b"249".to_vec()));
    records.push(("replicas/old".into(), b"http://x".to_vec()));
    for i in 0..5 {
        records.push((format!("specs/n{i}"), big.clone()));
    }
    let refs: Vec<(&str, &[u8])> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let source = sled_with(a.path(), &refs).await;
    let dest = sled_with(b.path(), &[]).await;
    let kinds = copy(source.as_ref(), dest.as_ref(), 9, Limits::new(None))
        .await
        .unwrap();
    assert_eq!(kinds["events"].records, 250);
    assert_eq!(kinds["specs"].records, 5);
    assert_eq!(kinds["meta"].records, 1);
    assert!(!kinds.contains_key("replicas"));
    assert!(dest.get("replicas/old").await.unwrap().is_none());
    let diffs = verify::compare(source.as_ref(), dest.as_ref())
        .await
        .unwrap();
    assert!(diffs.is_empty(), "{diffs:?}");
    // A second copy into the same store finds the keys there: nothing is overwritten.
    let e = copy(source.as_ref(), dest.as_ref(), 9, Limits::new(None))
        .await
        .unwrap_err();
    assert!(matches!(e, MigrateError::Conflict { .. }), "{e}");
    dest.txn(Txn::new().put("events/00000000000000000007", b"{}".to_vec()))
        .await
        .unwrap();
    dest.txn(Txn::new().put("nodes/extra", b"{}".to_vec()))
        .await
        .unwrap();
    let diffs = verify::compare(source.as_ref(), dest.as_ref())
        .await
        .unwrap();
    assert_eq!(diffs.len(), 2, "{diffs:?}");
    assert!(
        diffs[0].contains("events/00000000000000000007 differs"),
        "{diffs:?}"
    );
    assert!(
        diffs[1].contains("nodes/extra is in etcd only"),
        "{diffs:?}"
    );
}

#[tokio::test]
async fn a_store_without_db_or_in_use_is_refused_with_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let e = open_source(d.path()).err().unwrap();
    assert!(matches!(e, MigrateError::NoStore { .. }), "{e}");
    let _held = SledKv::open(d.path(), 0).unwrap();
    let e = open_source(d.path()).err().unwrap();
    assert!(matches!(e, MigrateError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("still running"), "{e}");
}

#[tokio::test]
async fn a_record_over_etcds_request_limit_is_refused_before_anything_is_written() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let huge = vec![b'x'; 2 << 20];
    let source = sled_with(a.path(), &[("nodes/n1", b"{}"), ("specs/n1", &huge)]).await;
    let dest = sled_with(b.path(), &[]).await;
    let e = copy(source.as_ref(), dest.as_ref(), 9, Limits::new(None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, MigrateError::TooLarge { ref key, .. } if key == "specs/n1"),
        "{e}"
    );
    assert!(e.to_string().contains("--max-request-bytes"), "{e}");
    assert!(dest.range("", None, 0).await.unwrap().is_empty());
    // With etcd's limit raised (and said so), it goes through.
    copy(
        source.as_ref(),
        dest.as_ref(),
        9,
        Limits::new(Some(4 << 20)),
    )
    .await
    .unwrap();
    assert_eq!(dest.range("", None, 0).await.unwrap().len(), 2);
}
