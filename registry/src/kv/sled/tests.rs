//! Tests of the embedded store on real sled databases in temporary directories.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;

use super::watch::Limits;
use super::SledKv;
use crate::kv::{KeyValue, Kv, KvError, Revision, Txn, TxnOutcome, WatchEvent, WatchStream};

/// Hang guard for one watch item (not a timing assertion).
pub(super) const GUARD: Duration = Duration::from_secs(20);

/// Opens a store, retrying while sled's file lock of a just-dropped handle is still held.
fn open_with(dir: &Path, limits: Limits) -> SledKv {
    let mut tries = 0;
    loop {
        match SledKv::open_with(dir, 0, limits) {
            Ok(kv) => return kv,
            Err(e) if tries < 100 && e.to_string().contains("lock") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("opening {}: {e}", dir.display()),
        }
    }
}

pub(super) fn open(dir: &Path) -> SledKv {
    open_with(dir, Limits::default())
}

pub(super) async fn commit(kv: &SledKv, txn: Txn) -> Revision {
    match kv.txn(txn).await.unwrap() {
        TxnOutcome::Committed(rev) => rev,
        TxnOutcome::Conflict => panic!("unexpected conflict"),
    }
}

async fn next(w: &mut WatchStream) -> Option<Result<Vec<WatchEvent>, KvError>> {
    tokio::time::timeout(GUARD, w.next())
        .await
        .expect("watch item within the hang guard")
}

async fn value(kv: &SledKv, key: &str) -> Option<Vec<u8>> {
    kv.get(key).await.unwrap().map(|kv| kv.value)
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

fn put(key: &str, value: &str, revision: Revision) -> WatchEvent {
    WatchEvent {
        key: key.into(),
        value: Some(value.as_bytes().to_vec()),
        revision,
    }
}

#[tokio::test]
async fn txn_applies_all_ops_when_compares_hold_and_nothing_on_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path());
    let r1 = commit(&kv, Txn::new().when("a", 0).put("a", "1")).await;
    let got = kv.get("a").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.mod_revision), (&b"1"[..], r1));

    // "absent" no longer holds.
    let out = kv.txn(Txn::new().when("a", 0).put("a", "2")).await.unwrap();
    assert_eq!(out, TxnOutcome::Conflict);
    // One compare of two fails: none of the ops is applied, the revision stays.
    let out = kv
        .txn(
            Txn::new()
                .when("a", r1)
                .when("b", 7)
                .put("a", "9")
                .put("b", "9"),
        )
        .await
        .unwrap();
    assert_eq!(out, TxnOutcome::Conflict);
    assert_eq!(value(&kv, "a").await.unwrap(), b"1");
    assert_eq!(value(&kv, "b").await, None);
    assert_eq!(kv.revision().await.unwrap(), r1);

    // Ops apply in order; deleting an absent key is not an error.
    let r2 = commit(
        &kv,
        Txn::new()
            .when("a", r1)
            .when("b", 0)
            .put("x", "1")
            .delete("x")
            .put("b", "1")
            .put("b", "2")
            .delete("never-written")
            .delete("a"),
    )
    .await;
    assert!(r2 > r1);
    assert_eq!(value(&kv, "x").await, None);
    assert_eq!(value(&kv, "a").await, None);
    let b = kv.get("b").await.unwrap().unwrap();
    assert_eq!((b.value.as_slice(), b.mod_revision), (&b"2"[..], r2));
}

#[tokio::test]
async fn revisions_rise_with_every_txn_that_has_ops_and_mark_the_keys_written() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path());
    assert_eq!(kv.revision().await.unwrap(), 0);
    let mut last = 0;
    for i in 0..5 {
        let rev = commit(&kv, Txn::new().put(format!("k{i}"), "v")).await;
        assert!(rev > last, "{rev} after {last}");
        assert_eq!(
            kv.get(&format!("k{i}"))
                .await
                .unwrap()
                .unwrap()
                .mod_revision,
            rev
        );
        last = rev;
    }
    // No ops: committed at the current revision, nothing raised.
    assert_eq!(commit(&kv, Txn::new()).await, last);
    assert_eq!(commit(&kv, Txn::new().when("k0", 1)).await, last);
    assert_eq!(kv.revision().await.unwrap(), last);
    assert_eq!(kv.get("k0").await.unwrap().unwrap().mod_revision, 1);

    // Concurrent transactions get distinct revisions; the store ends at the highest.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move { commit(&kv, Txn::new().put(format!("c{i}"), "v")).await })
        })
        .collect();
    let mut revs = Vec::new();
    for t in tasks {
        revs.push(t.await.unwrap());
    }
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), 16, "distinct revisions: {revs:?}");
    assert!(revs[0] > last);
    assert_eq!(kv.revision().await.unwrap(), revs[15]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_write_loops_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..10 {
                    loop {
                        let cur = kv.get("counter").await.unwrap();
                        let (n, rev) = cur.map_or((0, 0), |c| {
                            (
                                String::from_utf8(c.value).unwrap().parse().unwrap(),
                                c.mod_revision,
                            )
                        });
                        let t = Txn::new()
                            .when("counter", rev)
                            .put("counter", format!("{}", n + 1));
                        match kv.txn(t).await.unwrap() {
                            TxnOutcome::Committed(_) => break,
                            TxnOutcome::Conflict => conflicts += 1,
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(value(&kv, "counter").await.unwrap(), b"80");
    assert_eq!(
        kv.revision().await.unwrap(),
        80,
        "one revision per committed increment"
    );
}

#[tokio::test]
async fn range_returns_the_prefix_in_key_order_after_start_after_up_to_limit() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path());
    let mut t = Txn::new();
    for k in [
        "nodes/c", "nodes/a", "nodesx", "node", "specs/a", "nodes/b", "nodes/",
    ] {
        t = t.put(k, k);
    }
    commit(&kv, t).await;
    let all = kv.range("nodes/", None, 0).await.unwrap();
    assert_eq!(keys(&all), ["nodes/", "nodes/a", "nodes/b", "nodes/c"]);
    assert_eq!(all[1].value, b"nodes/a");
    let after = kv.range("nodes/", Some("nodes/a"), 0).await.unwrap();
    assert_eq!(keys(&after), ["nodes/b", "nodes/c"]);
    let page = kv.range("nodes/", Some("nodes/"), 2).await.unwrap();
    assert_eq!(keys(&page), ["nodes/a", "nodes/b"]);
    let before_prefix = kv.range("nodes/", Some("a"), 1).await.unwrap();
    assert_eq!(keys(&before_prefix), ["nodes/"]);
    assert!(kv
        .range("nodes/", Some("nodes/c"), 0)
        .await
        .unwrap()
        .is_empty());
    assert!(kv.range("nodes/", Some("z"), 0).await.unwrap().is_empty());
    assert!(kv.range("rollouts/", None, 0).await.unwrap().is_empty());
    let everything = kv.range("", None, 0).await.unwrap();
    assert_eq!(
        keys(&everything),
        ["node", "nodes/", "nodes/a", "nodes/b", "nodes/c", "nodesx", "specs/a"]
    );
}

#[tokio::test]
async fn a_watch_from_now_gets_each_txn_under_its_prefix_as_one_item() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path());
    commit(&kv, Txn::new().put("specs/old", "x")).await;
    let now = kv.revision().await.unwrap() + 1;
    let mut w = kv.watch("specs/", now).await.unwrap();
    let mut w0 = kv.watch("specs/", 0).await.unwrap(); // 0 = from now on, too

    let r1 = commit(
        &kv,
        Txn::new()
            .put("specs/a", "1")
            .put("nodes/x", "1")
            .put("specs/b", "2"),
    )
    .await;
    commit(&kv, Txn::new().put("nodes/y", "1")).await; // nothing under specs/
    let r3 = commit(&kv, Txn::new().delete("specs/a")).await;

    for w in [&mut w, &mut w0] {
        let first = next(w).await.unwrap().unwrap();
        assert_eq!(
            first,
            vec![put("specs/a", "1", r1), put("specs/b", "2", r1)]
        );
        let second = next(w).await.unwrap().unwrap();
        let deleted = WatchEvent {
            key: "specs/a".into(),
            value: None,
            revision: r3,
        };
        assert_eq!(second, vec![deleted]);
    }
}

#[tokio::test]
async fn a_watch_from_the_history_continues_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path());
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(commit(&kv, Txn::new().put(format!("k/{i}"), "v")).await);
    }
    let mut w = kv.watch("k/", revs[1]).await.unwrap();
    let writer = {
        let kv = kv.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 5..10 {
                revs.push(commit(&kv, Txn::new().put(format!("k/{i}"), "v")).await);
            }
            revs
        })
    };
    let mut seen = Vec::new();
    for _ in 1..10 {
        let item = next(&mut w).await.unwrap().unwrap();
        assert_eq!(item.len(), 1);
        seen.push((item[0].key.clone(), item[0].revision));
    }
    revs.extend(writer.await.unwrap());
    let expected: Vec<_> = (1..10).map(|i| (format!("k/{i}"), revs[i])).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_watch_older_than_the_history_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        txns: 3,
        ..Limits::default()
    };
    let kv = open_with(dir.path(), limits);
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(commit(&kv, Txn::new().put(format!("k/{i}"), "v")).await);
    }
    let mut w = kv.watch("k/", revs[1]).await.unwrap();
    match next(&mut w).await {
        Some(Err(KvError::Compacted {
            requested, oldest, ..
        })) => assert_eq!((requested, oldest), (revs[1], revs[2])),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        next(&mut w).await.is_none(),
        "the stream ends after Compacted"
    );
    // The oldest kept revision is still served.
    let mut w = kv.watch("k/", revs[2]).await.unwrap();
    assert_eq!(next(&mut w).await.unwrap().unwrap()[0].key, "k/2");

    // After a reopen, revisions from before this process opened the store are unknown.
    kv.flush_blocking().unwrap();
    drop((w, kv));
    let kv = open(dir.path());
    let mut w = kv.watch("k/", revs[4]).await.unwrap();
    assert!(matches!(
        next(&mut w).await,
        Some(Err(KvError::Compacted { .. }))
    ));
    let mut w = kv.watch("k/", revs[4] + 1).await.unwrap();
    let r = commit(&kv, Txn::new().put("k/new", "v")).await;
    assert_eq!(next(&mut w).await.unwrap().unwrap()[0].revision, r);
}

#[tokio::test]
async fn a_watcher_that_falls_behind_gets_an_error_and_its_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        live: 2,
        ..Limits::default()
    };
    let kv = open_with(dir.path(), limits);
    let mut w = kv.watch("k/", 0).await.unwrap();
    for i in 0..5 {
        commit(&kv, Txn::new().put(format!("k/{i}"), "v")).await;
    }
    match next(&mut w).await {
        Some(Err(KvError::Unavailable { reason, .. })) => {
            assert!(reason.contains("behind"), "{reason}")
        }
        other => panic!("expected an error for the lagging watcher, got {other:?}"),
    }
    assert!(
        next(&mut w).await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test]
async fn a_reopened_store_keeps_its_data_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (rev, a_rev) = {
        let kv = open(dir.path());
        let a_rev = commit(&kv, Txn::new().put("a", "1").put("b", "2")).await;
        let rev = commit(&kv, Txn::new().delete("b").put("c", "3")).await;
        (rev, a_rev)
    };
    let kv = open(dir.path());
    assert_eq!(kv.revision().await.unwrap(), rev);
    let all = kv.range("", None, 0).await.unwrap();
    assert_eq!(keys(&all), ["a", "c"]);
    assert_eq!((all[0].mod_revision, all[1].mod_revision), (a_rev, rev));
    assert!(commit(&kv, Txn::new().put("d", "4")).await > rev);
    assert_eq!(kv.dir(), dir.path());
    assert_eq!(kv.describe(), format!("sled:{}", dir.path().display()));
}

#[tokio::test]
async fn the_embedded_store_is_always_leader_and_session_keys_are_plain_keys() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open(dir.path());
    let lead = kv.elect("jobs", "replica-1").await.unwrap();
    assert!(*lead.is_leader.borrow());
    kv.put_session("replicas/r1", b"up".to_vec()).await.unwrap();
    kv.readiness().await.unwrap();
    drop(kv);
    let kv = open(dir.path());
    assert_eq!(value(&kv, "replicas/r1").await.unwrap(), b"up");
}

#[tokio::test]
async fn the_old_store_format_is_imported_under_the_new_keys_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = ::sled::open(dir.path().join("db")).unwrap();
        let tree = |name: &str, records: &[(&[u8], &str)]| {
            let t = db.open_tree(name).unwrap();
            for (k, v) in records {
                t.insert(k, v.as_bytes()).unwrap();
            }
        };
        tree(
            "nodes",
            &[(b"n1", r#"{"id":"n1"}"#), (b"n2", r#"{"id":"n2"}"#)],
        );
        tree("machines", &[(b"m-1", "n1")]);
        tree("specs", &[(b"n1", r#"{"generation":3}"#)]);
        tree("fragments", &[(b"base", "{}")]);
        tree("tokens", &[(b"t1", "{}")]);
        tree(
            "events",
            &[(&7u64.to_be_bytes(), "e7"), (&12u64.to_be_bytes(), "e12")],
        );
        tree("payloads", &[(b"app\x001.2.0", "pv")]);
        tree("rollouts", &[(b"r1", "ro")]);
        tree("resets", &[(b"n1", r#"["web"]"#)]);
        tree("reenroll_grants", &[(b"g1", "gr")]);
        db.flush().unwrap();
    }
    let kv = open(dir.path());
    let all = kv.range("", None, 0).await.unwrap();
    let got: Vec<(&str, &[u8])> = all
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    let expected: Vec<(&str, &[u8])> = vec![
        ("events/00000000000000000007", b"e7"),
        ("events/00000000000000000012", b"e12"),
        ("fragments/base", b"{}"),
        ("grants/g1", b"gr"),
        ("machines/m-1", b"n1"),
        ("nodes/n1", br#"{"id":"n1"}"#),
        ("nodes/n2", br#"{"id":"n2"}"#),
        ("payloads/app/1.2.0", b"pv"),
        ("resets/n1", br#"["web"]"#),
        ("rollouts/r1", b"ro"),
        ("specs/n1", br#"{"generation":3}"#),
        ("tokens/t1", b"{}"),
    ];
    assert_eq!(got, expected);
    let rev = kv.revision().await.unwrap();
    assert!(rev > 0);
    assert!(
        all.iter().all(|kv| kv.mod_revision == rev),
        "one transaction"
    );
    let after = commit(&kv, Txn::new().delete("nodes/n2")).await;
    kv.flush_blocking().unwrap();
    drop(kv);

    // The old trees are gone; a second open imports nothing again.
    {
        let db = ::sled::open(dir.path().join("db")).unwrap();
        let names: Vec<_> = db.tree_names().iter().map(|n| n.to_vec()).collect();
        for old in ["nodes", "events", "payloads", "reenroll_grants"] {
            assert!(
                !names.contains(&old.as_bytes().to_vec()),
                "{old} still there"
            );
        }
    }
    let kv = open(dir.path());
    assert_eq!(kv.revision().await.unwrap(), after);
    assert_eq!(
        kv.range("", None, 0).await.unwrap().len(),
        expected.len() - 1
    );
    assert_eq!(value(&kv, "nodes/n2").await, None);
}
