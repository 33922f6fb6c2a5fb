//! The Kv conformance suite (`kv_conformance/suite.rs`) run against each store backend, plus
//! the etcd-only rules: sessions and elections across two processes' connections, compaction,
//! and quorum loss (real 3-member etcd clusters from `common/etcd.rs`; skipped loudly without
//! `etcd`, failed under `CI=true`).
//!
//! Run: `cargo test -p steward-registry --test kv_conformance`.
//!
//! Both backends run the same rules (`conformance!(etcd, ..)`, `conformance!(sled, ..)`). The
//! session and election rules need two processes sharing a store, so for sled they are "put_session
//! is a plain put" and "elect is always the leader"; sled's compaction (history bound) is
//! covered by its unit tests (`kv/sled/tests.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "kv_conformance/suite.rs"]
mod suite;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use common::etcd::EtcdCluster;
use steward_registry::kv::etcd::{EtcdKv, EtcdOptions};
use steward_registry::kv::sled::SledKv;
use steward_registry::kv::{Kv, KvError, Txn, TxnOutcome};

/// Keeps a backend's resources (cluster, temp dir) alive for the test.
type Guard = Box<dyn Any + Send + Sync>;

/// Lease TTL of the test connections: short, so that takeovers happen quickly.
const TEST_TTL: Duration = Duration::from_secs(2);

async fn etcd_connect(cluster: &EtcdCluster, prefix: &str) -> EtcdKv {
    let mut opts = EtcdOptions::from_url(&cluster.url(prefix)).unwrap();
    opts.lease_ttl = TEST_TTL;
    EtcdKv::connect(opts).await.unwrap()
}

/// An etcd store on the shared 3-member cluster, under a prefix of its own.
async fn etcd_open(test: &str) -> Option<(Guard, Arc<dyn Kv>)> {
    let cluster = EtcdCluster::shared().await?;
    let kv = etcd_connect(&cluster, &format!("/conformance/{test}")).await;
    Some((Box::new(cluster), Arc::new(kv)))
}

/// The backend-independent rules, as one test each, for the backend opened by `$open`.
macro_rules! conformance {
    ($backend:ident, $open:ident) => {
        mod $backend {
            use super::*;

            macro_rules! rule {
                ($name:ident, |$kv:ident| $body:expr) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some((_guard, $kv)) = $open(stringify!($name)).await else {
                            return;
                        };
                        $body.await;
                    }
                };
            }

            rule!(get_put_delete, |kv| suite::get_put_delete(&*kv));
            rule!(range_order_prefix_start_after_limit, |kv| {
                suite::range_order_prefix_start_after_limit(&*kv)
            });
            rule!(range_many_keys, |kv| suite::range_many_keys(&*kv));
            rule!(get_many_in_order, |kv| suite::get_many_in_order(&*kv));
            rule!(revisions_strictly_increase, |kv| {
                suite::revisions_strictly_increase(&*kv)
            });
            rule!(compare_on_revision, |kv| suite::compare_on_revision(&*kv));
            rule!(multi_op_txn_all_or_nothing, |kv| {
                suite::multi_op_txn_all_or_nothing(&*kv)
            });
            rule!(concurrent_increments_end_at_n, |kv| {
                suite::concurrent_increments(kv.clone(), 8, 10)
            });
            rule!(watch_from_now, |kv| suite::watch_from_now(&*kv));
            rule!(watch_replays_history, |kv| suite::watch_replays_history(
                &*kv
            ));
            rule!(watch_prefix_isolation, |kv| suite::watch_prefix_isolation(
                &*kv
            ));
        }
    };
}

conformance!(etcd, etcd_open);
conformance!(sled, sled_open);

/// The embedded store in a temporary directory (kept alive by the guard).
async fn sled_open(_test: &str) -> Option<(Guard, Arc<dyn Kv>)> {
    let dir = tempfile::tempdir().unwrap();
    let kv = SledKv::open(dir.path(), 0).unwrap();
    Some((Box::new(dir), Arc::new(kv)))
}

/// The embedded store's session keys are plain keys and it is always the leader: there is one
/// process per directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_session_keys_are_plain_and_it_always_leads() {
    let (_dir, kv) = sled_open("session").await.unwrap();
    kv.put_session("replicas/me", b"url".to_vec())
        .await
        .unwrap();
    assert_eq!(kv.get("replicas/me").await.unwrap().unwrap().value, b"url");
    let l = kv.elect("jobs", "me").await.unwrap();
    assert!(*l.is_leader.borrow());
}

/// Compaction on its own cluster (it would cut the history other tests replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compacted_watch_yields_compacted() {
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let kv = etcd_connect(&cluster, "/compaction").await;
    let kv = &kv;
    suite::compacted_watch(kv, |r| async move { kv.compact(r).await.unwrap() }).await;
}

/// Ends a process's connection as a crash would: its keep-alive stops, nothing is revoked.
async fn crash(kv: Box<dyn Kv>) {
    drop(kv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_session_key_disappears_when_its_process_dies() {
    let Some(cluster) = EtcdCluster::shared().await else {
        return;
    };
    let prefix = "/conformance/session-crash";
    let observer = etcd_connect(&cluster, prefix).await;
    let other = Box::new(etcd_connect(&cluster, prefix).await);
    suite::session_key_disappears_with_its_process(&observer, other, crash).await;
}

/// A raw etcd client on the cluster (to act on leases behind the store's back).
async fn raw(cluster: &EtcdCluster) -> etcd_client::Client {
    etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .unwrap()
}

/// Revokes every lease on the cluster.
async fn revoke_all_leases(cluster: &EtcdCluster) {
    let mut c = raw(cluster).await;
    for l in c.leases().await.unwrap().leases() {
        let _ = c.lease_revoke(l.id()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_session_key_disappears_when_its_lease_is_revoked() {
    // Own cluster: revoking every lease would disturb the other tests.
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let prefix = "/conformance/session-revoke";
    let observer = etcd_connect(&cluster, prefix).await;
    // A lease far longer than the hang guard: only the revoke can remove the key.
    let mut opts = EtcdOptions::from_url(&cluster.url(prefix)).unwrap();
    opts.lease_ttl = Duration::from_secs(3600);
    let other = Box::new(EtcdKv::connect(opts).await.unwrap());
    suite::session_key_disappears_with_its_process(&observer, other, |kv| async {
        drop(kv);
        revoke_all_leases(&cluster).await;
    })
    .await;
}

/// When the lease is lost behind the process's back (revoked, or expired during a partition),
/// the store grants a new one and writes its session keys again under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_session_keys_come_back_on_a_new_lease() {
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let prefix = "/conformance/session-regrant";
    let kv = etcd_connect(&cluster, prefix).await;
    kv.put_session("replicas/r1", b"up".to_vec()).await.unwrap();
    let key = format!("{prefix}/replicas/r1");
    let lease_of = |key: String| {
        let cluster = &cluster;
        async move {
            let mut c = raw(cluster).await;
            let r = c.get(key, None).await.unwrap();
            r.kvs().first().map(|kv| kv.lease())
        }
    };
    let first = lease_of(key.clone()).await.expect("session key written");
    assert_ne!(first, 0, "a session key is bound to a lease");
    revoke_all_leases(&cluster).await;
    suite::eventually("the session key on a new lease", || async {
        matches!(lease_of(key.clone()).await, Some(l) if l != 0 && l != first)
    })
    .await;
    assert_eq!(kv.get("replicas/r1").await.unwrap().unwrap().value, b"up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_elect_one_leader_then_failover() {
    let Some(cluster) = EtcdCluster::shared().await else {
        return;
    };
    let prefix = "/conformance/elect";
    let a = Box::new(etcd_connect(&cluster, prefix).await);
    let b = Box::new(etcd_connect(&cluster, prefix).await);
    suite::elect_one_leader_then_failover(a, b, crash).await;
}

/// Losing the leader's lease (revoked behind its back) ends its leadership; one of the two
/// leads again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leadership_ends_when_the_lease_is_lost() {
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let prefix = "/conformance/elect-lease";
    let a = etcd_connect(&cluster, prefix).await;
    let la = a.elect("jobs", "a").await.unwrap().is_leader;
    suite::eventually("a leads", || async { *la.borrow() }).await;
    let mut changes = la.clone();
    revoke_all_leases(&cluster).await;
    suite::within("leadership to end", changes.wait_for(|l| !*l))
        .await
        .unwrap();
    suite::eventually("a leads again on a new lease", || async { *la.borrow() }).await;
}

/// Without quorum the leader's keep-alives fail, so it stops claiming leadership (before its
/// lease could expire at the server); with quorum back it leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leadership_ends_when_quorum_is_lost() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let a = etcd_connect(&cluster, "/conformance/elect-quorum").await;
    let la = a.elect("jobs", "a").await.unwrap().is_leader;
    suite::eventually("a leads", || async { *la.borrow() }).await;
    cluster.kill(0);
    cluster.kill(1);
    let mut changes = la.clone();
    suite::within("leadership to end", changes.wait_for(|l| !*l))
        .await
        .unwrap();
    cluster.restart(0).await;
    suite::eventually("a leads again", || async { *la.borrow() }).await;
}

async fn write(kv: &EtcdKv, i: usize) -> Result<TxnOutcome, KvError> {
    kv.txn(Txn::new().put(format!("q/{i}"), i.to_string()))
        .await
}

/// With one member of three killed (the raft leader), writes continue: after a re-election
/// (hang guard only) twenty writes in a row succeed, and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_writes_continue_with_one_of_three_members_killed() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let kv = etcd_connect(&cluster, "/quorum").await;
    suite::committed(write(&kv, 0).await.unwrap());
    let leader = cluster.leader().await.expect("the cluster has a leader");
    cluster.kill(leader);
    suite::eventually("a write after the re-election", || async {
        write(&kv, 1).await.is_ok()
    })
    .await;
    for i in 2..22 {
        suite::committed(write(&kv, i).await.unwrap());
    }
    assert_eq!(kv.range("q/", None, 0).await.unwrap().len(), 22);
    cluster.restart(leader).await;
    suite::committed(write(&kv, 22).await.unwrap());
}

/// The leader is killed and brought back three times in a row: after each kill writes go on
/// through the same connection (it leaves the dead member for a live one), and the member that
/// came back serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_writes_continue_through_repeated_leader_kills() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let kv = &etcd_connect(&cluster, "/repeated").await;
    let mut written = 0;
    suite::committed(write(kv, written).await.unwrap());
    for round in 0..3 {
        let leader = cluster.leader().await.expect("the cluster has a leader");
        cluster.kill(leader);
        written += 1;
        let i = written;
        suite::eventually(
            &format!("a write after leader kill {round}"),
            || async move { write(kv, i).await.is_ok() },
        )
        .await;
        for _ in 0..5 {
            written += 1;
            suite::committed(write(kv, written).await.unwrap());
        }
        cluster.restart(leader).await;
    }
    let keys = kv.range("q/", None, 0).await.unwrap();
    assert_eq!(
        keys.len(),
        written + 1,
        "every acknowledged write is stored"
    );
}

/// With two members of three killed, a write fails with `Unavailable` naming the store (the
/// request timeout, not a hang), and succeeds again once a member is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_writes_fail_unavailable_with_two_of_three_members_killed() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let mut opts = EtcdOptions::from_url(&cluster.url("/quorum")).unwrap();
    opts.request_timeout = Duration::from_secs(2);
    let kv = EtcdKv::connect(opts).await.unwrap();
    suite::committed(write(&kv, 0).await.unwrap());
    cluster.kill(0);
    cluster.kill(1);
    let err = suite::within("a write without quorum", write(&kv, 1))
        .await
        .expect_err("a write without quorum must fail");
    match &err {
        KvError::Unavailable { store, .. } => assert_eq!(*store, kv.describe()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&cluster.endpoint(2).replace("http://", "")),
        "{msg}"
    );
    // A new connection cannot start either: it checks a linearizable read.
    let mut opts = EtcdOptions::from_url(&cluster.url("/quorum")).unwrap();
    opts.request_timeout = Duration::from_secs(2);
    let refused = suite::within("a connect without quorum", EtcdKv::connect(opts)).await;
    assert!(
        matches!(refused, Err(KvError::Unavailable { .. })),
        "{:?}",
        refused.err()
    );
    cluster.restart(1).await;
    suite::eventually("writes again with quorum back", || async {
        write(&kv, 2).await.is_ok()
    })
    .await;
    assert!(kv.get("q/2").await.unwrap().is_some());
}

/// CA, server certificate (for 127.0.0.1) and client certificate, written under `dir`.
fn tls_files(dir: &std::path::Path) -> (common::etcd::EtcdTls, common::etcd::EtcdTls) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca.self_signed(&ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let ca_path = write("ca.pem", ca.pem());
    let leaf = |names: Vec<String>, eku: Eku, stem: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        common::etcd::EtcdTls {
            ca: ca_path.clone(),
            cert: write(&format!("{stem}.pem"), cert.pem()),
            key: write(&format!("{stem}-key.pem"), key.serialize_pem()),
        }
    };
    let server = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        Eku::ServerAuth,
        "server",
    );
    let client = leaf(vec!["steward-registry".into()], Eku::ClientAuth, "client");
    (server, client)
}

/// `etcds://` with a CA and a client certificate talks to a cluster that requires client
/// certificates; without the client certificate the connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = tls_files(dir.path());
    let Some(cluster) = EtcdCluster::start_with(3, Some(server)).await else {
        return;
    };
    let url = cluster.url("/tls");
    assert!(url.starts_with("etcds://"), "{url}");
    let mut opts = EtcdOptions::from_url(&url).unwrap();
    opts.ca_file = Some(client.ca.clone());
    opts.cert_file = Some(client.cert.clone());
    opts.key_file = Some(client.key.clone());
    let kv = EtcdKv::connect(opts.clone()).await.unwrap();
    suite::get_put_delete(&kv).await;
    opts.cert_file = None;
    opts.key_file = None;
    opts.request_timeout = Duration::from_secs(2);
    let refused = suite::within(
        "a connect without client certificate",
        EtcdKv::connect(opts),
    )
    .await;
    assert!(
        refused.is_err(),
        "a connection without client certificate was accepted"
    );
}
