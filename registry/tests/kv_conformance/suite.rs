//! The Kv conformance suite: one function per rule of the store contract (the brief's "Kv
//! contract", `registry/src/kv/mod.rs`), generic over the backend (`&dyn Kv`). Each function
//! expects a store (or a key prefix of one) that nobody else writes to; other writers may
//! share the store's revision counter, so revisions are only compared, never counted.
//! `kv_conformance.rs` instantiates it per backend.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use steward_registry::kv::{
    KeyValue, Kv, KvError, Revision, Txn, TxnOutcome, WatchEvent, WatchStream,
};

/// Hang guard of every wait in the suite (never a timing assertion).
pub const GUARD: Duration = Duration::from_secs(60);

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not finish within {GUARD:?}"))
}

/// Polls `check` every 50 ms until it is true (hang guard [`GUARD`]).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

pub fn committed(o: TxnOutcome) -> Revision {
    match o {
        TxnOutcome::Committed(r) => r,
        TxnOutcome::Conflict => panic!("expected the txn to commit, got Conflict"),
    }
}

pub async fn put(kv: &dyn Kv, key: &str, value: &str) -> Revision {
    committed(kv.txn(Txn::new().put(key, value)).await.unwrap())
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

async fn next_item(w: &mut WatchStream) -> Result<Vec<WatchEvent>, KvError> {
    within("the next watch item", w.next())
        .await
        .expect("the watch ended early")
}

fn ev(key: &str, value: Option<&str>, revision: Revision) -> WatchEvent {
    WatchEvent {
        key: key.into(),
        value: value.map(|v| v.as_bytes().to_vec()),
        revision,
    }
}

/// get of an absent key is None; put is read back with its mod_revision; delete removes it;
/// deleting an absent key is not an error.
pub async fn get_put_delete(kv: &dyn Kv) {
    assert_eq!(kv.get("nodes/a").await.unwrap(), None);
    let r1 = put(kv, "nodes/a", "one").await;
    let got = kv.get("nodes/a").await.unwrap().unwrap();
    assert_eq!(
        got,
        KeyValue {
            key: "nodes/a".into(),
            value: b"one".to_vec(),
            mod_revision: r1
        }
    );
    let r2 = put(kv, "nodes/a", "two").await;
    assert!(r2 > r1);
    let got = kv.get("nodes/a").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.mod_revision), (&b"two"[..], r2));
    let r3 = committed(kv.txn(Txn::new().delete("nodes/a")).await.unwrap());
    assert!(r3 > r2);
    assert_eq!(kv.get("nodes/a").await.unwrap(), None);
    committed(kv.txn(Txn::new().delete("nodes/never")).await.unwrap());
    // Empty and binary values round-trip.
    put(kv, "nodes/empty", "").await;
    assert_eq!(kv.get("nodes/empty").await.unwrap().unwrap().value, b"");
    let bin = vec![0u8, 255, 10, 13];
    committed(
        kv.txn(Txn::new().put("nodes/bin", bin.clone()))
            .await
            .unwrap(),
    );
    assert_eq!(kv.get("nodes/bin").await.unwrap().unwrap().value, bin);
}

/// range: keys starting with the prefix, in byte order, strictly after `start_after`, at
/// most `limit` (0 = all); a key that merely shares the first characters is not included.
pub async fn range_order_prefix_start_after_limit(kv: &dyn Kv) {
    for k in ["a/b", "a/a", "a/c", "a/ab", "ab/x", "a", "b/1", "a/B"] {
        put(kv, k, k).await;
    }
    let all = kv.range("a/", None, 0).await.unwrap();
    assert_eq!(keys(&all), ["a/B", "a/a", "a/ab", "a/b", "a/c"]);
    assert!(all.iter().all(|kv| kv.value == kv.key.as_bytes()));
    let r = kv.range("a/", Some("a/ab"), 0).await.unwrap();
    assert_eq!(keys(&r), ["a/b", "a/c"]);
    let r = kv.range("a/", None, 2).await.unwrap();
    assert_eq!(keys(&r), ["a/B", "a/a"]);
    let r = kv.range("a/", Some("a/a"), 2).await.unwrap();
    assert_eq!(keys(&r), ["a/ab", "a/b"]);
    // start_after need not exist; before the prefix = from the start; after it = nothing.
    let r = kv.range("a/", Some("a/aa"), 0).await.unwrap();
    assert_eq!(keys(&r), ["a/ab", "a/b", "a/c"]);
    assert_eq!(kv.range("a/", Some("0"), 1).await.unwrap().len(), 1);
    assert!(kv.range("a/", Some("a/z"), 0).await.unwrap().is_empty());
    assert!(kv.range("zz/", None, 0).await.unwrap().is_empty());
    let r = kv.range("a", None, 0).await.unwrap();
    assert_eq!(keys(&r), ["a", "a/B", "a/a", "a/ab", "a/b", "a/c", "ab/x"]);
    let r = kv.range("", None, 0).await.unwrap();
    assert_eq!(r.len(), 8);
}

/// range over more keys than one backend page (1,100 keys written in txns of 100): complete,
/// ordered, and limit / start_after still exact.
pub async fn range_many_keys(kv: &dyn Kv) {
    for batch in 0..11 {
        let mut t = Txn::new();
        for i in 0..100 {
            let k = format!("events/{:020}", batch * 100 + i);
            t = t.put(k, "x");
        }
        committed(kv.txn(t).await.unwrap());
    }
    let all = kv.range("events/", None, 0).await.unwrap();
    assert_eq!(all.len(), 1100);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(kv.range("events/", None, 700).await.unwrap().len(), 700);
    let after = format!("events/{:020}", 599);
    let rest = kv.range("events/", Some(&after), 0).await.unwrap();
    assert_eq!(rest.len(), 500);
    assert_eq!(rest[0].key, format!("events/{:020}", 600));
}

/// `get_many` answers each key as `get` does, in the order asked, `None` for an absent one and
/// twice for a key asked twice, across more keys than one etcd transaction holds.
pub async fn get_many_in_order(kv: &dyn Kv) {
    assert!(kv.get_many(&[]).await.unwrap().is_empty());
    for batch in 0..3 {
        let mut t = Txn::new();
        for i in batch * 50..(batch + 1) * 50 {
            t = t.put(format!("nodes/n{i:03}"), format!("v{i}"));
        }
        committed(kv.txn(t).await.unwrap());
    }
    // Backwards, half of them absent, and one asked twice.
    let mut keys: Vec<String> = (0..300).rev().map(|i| format!("nodes/n{i:03}")).collect();
    keys.push("nodes/n007".into());
    let got = kv.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    for (k, g) in keys.iter().zip(&got) {
        let i: usize = k["nodes/n".len()..].parse().unwrap();
        match g {
            Some(g) => {
                assert!(i < 150, "{k} was never written");
                assert_eq!((&g.key, &g.value[..]), (k, format!("v{i}").as_bytes()));
            }
            None => assert!(i >= 150, "{k} is missing"),
        }
        assert_eq!(g, &kv.get(k).await.unwrap(), "{k}: get_many and get differ");
    }
}

/// Every committed txn with an op raises the revision; the store's revision is at least the
/// last committed one; a txn with no ops commits at the current revision; each key's
/// mod_revision is the revision of the txn that wrote it.
pub async fn revisions_strictly_increase(kv: &dyn Kv) {
    let mut last = kv.revision().await.unwrap();
    let mut written = Vec::new();
    for i in 0..10 {
        let k = format!("specs/{i}");
        let r = put(kv, &k, "v").await;
        assert!(r > last, "revision {r} after {last}");
        last = r;
        written.push((k, r));
    }
    // A delete of an absent key is still a committed txn with an op.
    let r = committed(kv.txn(Txn::new().delete("specs/absent")).await.unwrap());
    assert!(
        r > last,
        "a delete-only txn raised the revision from {last} to {r}"
    );
    last = r;
    assert!(kv.revision().await.unwrap() >= last);
    let empty = committed(kv.txn(Txn::new()).await.unwrap());
    assert!(empty >= last);
    assert!(kv.revision().await.unwrap() >= empty);
    for (k, r) in written {
        assert_eq!(kv.get(&k).await.unwrap().unwrap().mod_revision, r);
    }
}

/// Compare on mod_revision: a match commits, a mismatch is Conflict and changes nothing,
/// revision 0 means "absent".
pub async fn compare_on_revision(kv: &dyn Kv) {
    let r1 = put(kv, "tokens/t", "v1").await;
    let r2 = committed(
        kv.txn(Txn::new().when("tokens/t", r1).put("tokens/t", "v2"))
            .await
            .unwrap(),
    );
    // Stale revision: nothing of the txn happens.
    let stale = Txn::new()
        .when("tokens/t", r1)
        .put("tokens/t", "v3")
        .put("tokens/other", "x")
        .delete("tokens/t");
    assert_eq!(kv.txn(stale).await.unwrap(), TxnOutcome::Conflict);
    let got = kv.get("tokens/t").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.mod_revision), (&b"v2"[..], r2));
    assert_eq!(kv.get("tokens/other").await.unwrap(), None);
    // 0 = absent.
    let create = Txn::new().when("tokens/new", 0).put("tokens/new", "n");
    committed(kv.txn(create.clone()).await.unwrap());
    assert_eq!(kv.txn(create).await.unwrap(), TxnOutcome::Conflict);
    assert_eq!(
        kv.txn(Txn::new().when("tokens/t", 0).put("tokens/t", "x"))
            .await
            .unwrap(),
        TxnOutcome::Conflict
    );
    committed(kv.txn(Txn::new().delete("tokens/new")).await.unwrap());
    committed(
        kv.txn(Txn::new().when("tokens/new", 0).put("tokens/new", "again"))
            .await
            .unwrap(),
    );
}

/// Several ops commit together at one revision, in order (the last op on a key wins), and a
/// failing compare among several leaves everything as it was.
pub async fn multi_op_txn_all_or_nothing(kv: &dyn Kv) {
    let ra = put(kv, "m/a", "a0").await;
    put(kv, "m/gone", "g").await;
    let t = Txn::new()
        .when("m/a", ra)
        .when("m/b", 0)
        .put("m/a", "a1")
        .put("m/b", "b1")
        .delete("m/gone")
        .put("m/x", "x")
        .delete("m/x")
        .delete("m/y")
        .put("m/y", "y")
        .put("m/z", "z1")
        .put("m/z", "z2");
    let r = committed(kv.txn(t).await.unwrap());
    let all = kv.range("m/", None, 0).await.unwrap();
    assert_eq!(keys(&all), ["m/a", "m/b", "m/y", "m/z"]);
    assert!(all.iter().all(|kv| kv.mod_revision == r));
    let values: Vec<&[u8]> = all.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, [&b"a1"[..], b"b1", b"y", b"z2"]);
    // Second compare fails: nothing applied.
    let t = Txn::new()
        .when("m/a", r)
        .when("m/b", 0)
        .put("m/a", "a2")
        .delete("m/z");
    assert_eq!(kv.txn(t).await.unwrap(), TxnOutcome::Conflict);
    assert_eq!(kv.range("m/", None, 0).await.unwrap(), all);
}

/// `tasks` tasks each add `per` to a counter by read / compare-and-put / retry on Conflict:
/// the counter ends at exactly tasks × per and every value 1..=N was committed exactly once
/// (a gap-free sequence across concurrent writers).
pub async fn concurrent_increments(kv: Arc<dyn Kv>, tasks: usize, per: usize) {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let kv = kv.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..per {
                loop {
                    let cur = kv.get("counter/seq").await.unwrap();
                    let (n, rev) = match &cur {
                        Some(c) => (
                            std::str::from_utf8(&c.value)
                                .unwrap()
                                .parse::<u64>()
                                .unwrap(),
                            c.mod_revision,
                        ),
                        None => (0, 0),
                    };
                    let t = Txn::new()
                        .when("counter/seq", rev)
                        .put("counter/seq", (n + 1).to_string());
                    if let TxnOutcome::Committed(_) = kv.txn(t).await.unwrap() {
                        mine.push(n + 1);
                        break;
                    }
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(within("an increment task", h).await.unwrap());
    }
    all.sort_unstable();
    let n = (tasks * per) as u64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>());
    let end = kv.get("counter/seq").await.unwrap().unwrap();
    assert_eq!(end.value, n.to_string().into_bytes());
}

/// A watch from `revision() + 1` sees later changes, one item per txn (all its changes,
/// deletions as `None`), at the txn's revision.
pub async fn watch_from_now(kv: &dyn Kv) {
    let now = kv.revision().await.unwrap();
    let mut w = kv.watch("w/", now + 1).await.unwrap();
    let r1 = put(kv, "w/a", "1").await;
    let r2 = committed(
        kv.txn(Txn::new().put("w/b", "2").delete("w/a").put("w/c", "3"))
            .await
            .unwrap(),
    );
    assert_eq!(next_item(&mut w).await.unwrap(), [ev("w/a", Some("1"), r1)]);
    let mut second = next_item(&mut w).await.unwrap();
    second.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        second,
        [
            ev("w/a", None, r2),
            ev("w/b", Some("2"), r2),
            ev("w/c", Some("3"), r2)
        ]
    );
}

/// A watch from an earlier revision replays every change since then, in order, one item per
/// txn, then continues with new ones without a gap.
pub async fn watch_replays_history(kv: &dyn Kv) {
    let r1 = put(kv, "h/a", "1").await;
    let r2 = committed(
        kv.txn(Txn::new().put("h/b", "2").put("h/c", "3"))
            .await
            .unwrap(),
    );
    let r3 = committed(kv.txn(Txn::new().delete("h/a")).await.unwrap());
    let mut w = kv.watch("h/", r1).await.unwrap();
    assert_eq!(next_item(&mut w).await.unwrap(), [ev("h/a", Some("1"), r1)]);
    let mut second = next_item(&mut w).await.unwrap();
    second.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(second, [ev("h/b", Some("2"), r2), ev("h/c", Some("3"), r2)]);
    assert_eq!(next_item(&mut w).await.unwrap(), [ev("h/a", None, r3)]);
    let r4 = put(kv, "h/d", "4").await;
    assert_eq!(next_item(&mut w).await.unwrap(), [ev("h/d", Some("4"), r4)]);
    // From the middle: starts exactly at r2.
    let mut w = kv.watch("h/", r2).await.unwrap();
    assert_eq!(next_item(&mut w).await.unwrap()[0].revision, r2);
}

/// A watch of a prefix sees nothing of other prefixes, including ones that share its first
/// characters; a txn touching both shows only the watched part.
pub async fn watch_prefix_isolation(kv: &dyn Kv) {
    let now = kv.revision().await.unwrap();
    let mut w = kv.watch("p/a/", now + 1).await.unwrap();
    put(kv, "p/b/x", "no").await;
    put(kv, "p/ab", "no").await;
    put(kv, "p/a", "no").await;
    let r = committed(
        kv.txn(Txn::new().put("p/b/y", "no").put("p/a/1", "yes"))
            .await
            .unwrap(),
    );
    assert_eq!(
        next_item(&mut w).await.unwrap(),
        [ev("p/a/1", Some("yes"), r)]
    );
}

/// A watch from a revision older than the kept history yields `Compacted` and ends.
/// `compact(r)` drops the history before `r` (backend-specific hook).
pub async fn compacted_watch<F, Fut>(kv: &dyn Kv, compact: F)
where
    F: FnOnce(Revision) -> Fut,
    Fut: Future<Output = ()>,
{
    let r1 = put(kv, "c/k", "1").await;
    put(kv, "c/k", "2").await;
    let r3 = put(kv, "c/k", "3").await;
    compact(r3).await;
    let mut w = kv.watch("c/", r1).await.unwrap();
    match next_item(&mut w).await {
        Err(KvError::Compacted {
            requested, oldest, ..
        }) => {
            assert_eq!(requested, r1);
            assert!(oldest > r1, "oldest kept {oldest} after the requested {r1}");
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(within("the end of a compacted watch", w.next())
        .await
        .is_none());
    // From the compaction point on, history is still there.
    let mut w = kv.watch("c/", r3).await.unwrap();
    assert_eq!(next_item(&mut w).await.unwrap(), [ev("c/k", Some("3"), r3)]);
}

/// A session key is visible while its process lives and disappears after `end_process`
/// (the process dies / its session is ended); an ordinary key of that process stays.
/// `observer` and `other` are two processes' connections to the same store.
pub async fn session_key_disappears_with_its_process<F, Fut>(
    observer: &dyn Kv,
    other: Box<dyn Kv>,
    end_process: F,
) where
    F: FnOnce(Box<dyn Kv>) -> Fut,
    Fut: Future<Output = ()>,
{
    other
        .put_session("replicas/r2", b"alive".to_vec())
        .await
        .unwrap();
    put(&*other, "specs/kept", "v").await;
    let seen = observer.get("replicas/r2").await.unwrap().unwrap();
    assert_eq!(seen.value, b"alive");
    // Overwriting a session key keeps it a session key.
    other
        .put_session("replicas/r2", b"still".to_vec())
        .await
        .unwrap();
    end_process(other).await;
    eventually("the session key to disappear", || async {
        observer.get("replicas/r2").await.unwrap().is_none()
    })
    .await;
    assert!(observer.get("specs/kept").await.unwrap().is_some());
}

/// Two processes campaign for one job: exactly one is leader (never both, sampled), and when
/// the leader's process ends (`end_process`) the other takes over.
pub async fn elect_one_leader_then_failover<F, Fut>(a: Box<dyn Kv>, b: Box<dyn Kv>, end_process: F)
where
    F: FnOnce(Box<dyn Kv>) -> Fut,
    Fut: Future<Output = ()>,
{
    let la = a.elect("jobs", "replica-a").await.unwrap().is_leader;
    let lb = b.elect("jobs", "replica-b").await.unwrap().is_leader;
    eventually("one leader", || async { *la.borrow() || *lb.borrow() }).await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (x, y) = (*la.borrow(), *lb.borrow());
        assert!(x != y, "exactly one leader expected, a={x} b={y}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_leads = *la.borrow();
    let (leader, follower, old_flag, new_flag) = if a_leads {
        (a, b, la, lb)
    } else {
        (b, a, lb, la)
    };
    end_process(leader).await;
    assert!(
        !*old_flag.borrow(),
        "an ended process still claims leadership"
    );
    eventually("the other process to take over", || async {
        *new_flag.borrow()
    })
    .await;
    drop(follower);
}
