//! Unit tests of the typed store on the embedded backend: spec writes split over several
//! transactions; alert deliveries recorded once.

#![allow(clippy::unwrap_used)]

use super::*;

fn write(id: &str, generation: u64, revision: Revision) -> SpecWrite {
    SpecWrite {
        node_id: id.to_string(),
        record: SpecRecord {
            generation,
            ..Default::default()
        },
        revision,
        history: None,
    }
}

#[tokio::test]
async fn a_spec_write_larger_than_one_transaction_is_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let writes: Vec<SpecWrite> = (0..250).map(|i| write(&format!("n{i:03}"), 1, 0)).collect();
    let epoch = store.spec_epoch().await.unwrap();
    let rev0 = store.kv().revision().await.unwrap();
    let written = store.write_specs(epoch, &writes, None).await.unwrap();
    assert_eq!(written.len(), 250);
    assert_eq!(store.specs().await.unwrap().len(), 250);
    // Three transactions (100 ops at most each, the first also raises the epoch).
    assert_eq!(store.kv().revision().await.unwrap() - rev0, 3);
    // The epoch moved: a change computed before this one is refused as stale.
    assert!(matches!(
        store.write_specs(epoch, &writes[..1], None).await,
        Err(StoreError::Stale)
    ));
}

#[tokio::test]
async fn a_record_replaced_meanwhile_is_left_to_the_writer_that_replaced_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let epoch = store.spec_epoch().await.unwrap();
    let first: Vec<SpecWrite> = (0..150).map(|i| write(&format!("n{i:03}"), 1, 0)).collect();
    store.write_specs(epoch, &first, None).await.unwrap();
    // A second change computed from these records; meanwhile another writer replaces n140
    // (which falls in the second transaction).
    let mut second = Vec::new();
    for i in 0..150 {
        let id = format!("n{i:03}");
        let (rec, rev) = store.spec_rev(&id).await.unwrap();
        second.push(write(&id, rec.generation + 1, rev));
    }
    let epoch = store.spec_epoch().await.unwrap();
    let (_, rev140) = store.spec_rev("n140").await.unwrap();
    store
        .kv()
        .txn(
            Txn::new()
                .when("specs/n140", rev140)
                .put("specs/n140", enc(&write("n140", 7, 0).record)),
        )
        .await
        .unwrap();
    let written = store.write_specs(epoch, &second, None).await.unwrap();
    assert_eq!(written.len(), 149);
    assert!(written.iter().all(|w| w.node_id != "n140"));
    assert_eq!(store.spec("n140").await.unwrap().unwrap().generation, 7);
    assert_eq!(store.spec("n139").await.unwrap().unwrap().generation, 2);
}

#[tokio::test]
async fn a_delivery_outcome_is_recorded_once_compared_on_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let d = DeliveryRecord {
        id: "d1".into(),
        alert_id: "a1".into(),
        kind: "node-down".into(),
        node_id: "n1".into(),
        webhook: "h".into(),
        shown: "http://x/hook".into(),
        body: "{}".into(),
        attempts: 0,
        next_attempt: Utc::now(),
    };
    store
        .add_deliveries(std::slice::from_ref(&d))
        .await
        .unwrap();
    // The same delivery id cannot be stored twice.
    assert!(matches!(
        store.add_deliveries(std::slice::from_ref(&d)).await,
        Err(StoreError::Stale)
    ));
    let (_, rev) = store.delivery("d1").await.unwrap().unwrap();
    let failed = DeliveryRecord { attempts: 1, ..d };
    let rev2 = store.save_delivery(&failed, rev).await.unwrap().unwrap();
    // A replica still holding the old revision (a stale leader) records nothing.
    assert_eq!(store.save_delivery(&failed, rev).await.unwrap(), None);
    assert!(!store.finish_delivery("d1", rev).await.unwrap());
    let all = store.deliveries().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].0.attempts, all[0].1), (1, rev2));
    assert!(store.finish_delivery("d1", rev2).await.unwrap());
    assert!(!store.finish_delivery("d1", rev2).await.unwrap());
    assert!(store.deliveries().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_machine_claim_stores_the_node_with_it_and_is_undone_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let a = NodeRecord::test("node-a");
    assert!(store.claim_machine("m1", None, &a).await.unwrap());
    assert_eq!(
        store.node_for_machine("m1").await.unwrap().as_deref(),
        Some("node-a")
    );
    assert!(store.node("node-a").await.unwrap().is_some());
    // A second claim decided on "no node" loses and changes nothing.
    let b = NodeRecord::test("node-b");
    assert!(!store.claim_machine("m1", None, &b).await.unwrap());
    assert!(store.node("node-b").await.unwrap().is_none());
    // A claim over node-a (re-enrolment), then undone: node-a's record and mapping are back.
    let mut a2 = a.clone();
    a2.facts.hostname = "renamed".into();
    assert!(store
        .claim_machine("m1", Some("node-a"), &a2)
        .await
        .unwrap());
    store
        .unclaim_machine("m1", Some("node-a"), "node-a", Some(&a))
        .await
        .unwrap();
    assert_eq!(
        store.node("node-a").await.unwrap().unwrap().facts.hostname,
        ""
    );
    // A new node's claim undone: neither the mapping nor the node is left.
    assert!(store.claim_machine("m2", None, &b).await.unwrap());
    store
        .unclaim_machine("m2", None, "node-b", None)
        .await
        .unwrap();
    assert_eq!(store.node_for_machine("m2").await.unwrap(), None);
    assert!(store.node("node-b").await.unwrap().is_none());
}
