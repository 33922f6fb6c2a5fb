//! Fragments apply at read time: a fragment write stores one record whatever the number of nodes
//! it matches, every matching node's generation rises and its document shows the fragment, the
//! view is the same after a restart, spec records from before `base` keep their generation, and
//! a fragment that would break one node is refused without changing anything; the long-polls a
//! fragment write moves are woken as its answer goes out.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::tests::{call, enroll, ADMIN};
use crate::kv::Txn;
use crate::state::{AppState, Settings};
use crate::store::Store;

async fn state_on(store: Store, dir: &std::path::Path) -> AppState {
    AppState::new(Settings::default(), store, dir, ADMIN, None)
        .await
        .unwrap()
}

pub(super) async fn send(
    state: &AppState,
    method: Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    call(
        state,
        method,
        path,
        Some(ADMIN),
        Some(("application/json", body.to_string())),
    )
    .await
}

/// Every spec record's revision in the store.
async fn spec_revisions(store: &Store) -> BTreeMap<String, u64> {
    store
        .kv()
        .range("specs/", None, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.mod_revision))
        .collect()
}

/// Every node's generation and document, as this process serves them (the JSON served, with
/// its parts serialised once per merge, the same as the document's own JSON).
async fn documents(state: &AppState, ids: &[String]) -> Vec<(u64, steward_proto::SpecDocument)> {
    let mut out = Vec::new();
    for id in ids {
        let doc = state.specs.document(id).await.unwrap();
        let served = state.specs.document_json(id).await.unwrap();
        let own = serde_json::to_string(&doc).unwrap();
        assert_eq!(served, (doc.generation, own), "{id}");
        out.push((state.generation(id), doc));
    }
    out
}

#[tokio::test]
async fn a_fragment_for_every_node_stores_one_record_and_every_node_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = state_on(store.clone(), dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(enroll(&state, &format!("m-{i:02}")).await.0);
    }
    // A third of the nodes have an own spec (generation 1), the others none (generation 0).
    for id in ids.iter().step_by(3) {
        let own = json!({"containers": [{"name": "own", "image": "nginx:1"}]});
        let (st, w) = send(&state, Method::PUT, &format!("/v1/nodes/{id}/spec"), own).await;
        assert_eq!(st, StatusCode::OK, "{w}");
    }
    let before = documents(&state, &ids).await;
    let specs_before = spec_revisions(&store).await;
    assert_eq!(specs_before.len(), 10);

    let body =
        json!({"selector": "", "spec": {"containers": [{"name": "all", "image": "busybox:1"}]}});
    let (st, w) = send(&state, Method::PUT, "/v1/fragments/all", body.clone()).await;
    assert_eq!(st, StatusCode::OK, "{w}");
    assert_eq!(w["affected"].as_array().unwrap().len(), 30, "{w}");
    assert_eq!(w["affected_count"], 30, "{w}");
    assert_eq!(
        spec_revisions(&store).await,
        specs_before,
        "no node's spec record is written"
    );
    let after = documents(&state, &ids).await;
    let answered: Vec<u64> = w["affected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["generation"].as_u64().unwrap())
        .collect();
    let mut served: Vec<(String, u64)> = ids
        .iter()
        .cloned()
        .zip(after.iter().map(|(g, _)| *g))
        .collect();
    served.sort();
    assert_eq!(
        answered,
        served.iter().map(|(_, g)| *g).collect::<Vec<_>>(),
        "the answer names the generations served"
    );
    for (i, ((g0, _), (g1, doc))) in before.iter().zip(&after).enumerate() {
        assert_eq!(*g1, g0 + 1, "{doc:?}");
        // Documents share merges only where the records agree: each keeps its own spec.
        let has_own = doc.spec.containers.iter().any(|c| c.name == "own");
        assert_eq!(has_own, i % 3 == 0, "{doc:?}");
        assert_eq!(doc.generation, *g1);
        assert_eq!(doc.fragments, ["all"]);
        assert!(doc.spec.containers.iter().any(|c| c.name == "all"));
    }
    // The same fragment again moves nobody.
    let (st, w) = send(&state, Method::PUT, "/v1/fragments/all", body).await;
    assert_eq!((st, w["affected"].clone()), (StatusCode::OK, json!([])));

    // A restart serves the same generations and documents.
    let restarted = state_on(store.clone(), dir.path()).await;
    assert_eq!(documents(&restarted, &ids).await, after, "after a restart");

    // Deleting it raises every node once more and takes it out of every document.
    let (st, w) = send(&restarted, Method::DELETE, "/v1/fragments/all", Value::Null).await;
    assert_eq!(st, StatusCode::OK, "{w}");
    for ((g1, _), (g2, doc)) in after.iter().zip(documents(&restarted, &ids).await) {
        assert_eq!(g2, g1 + 1);
        assert!(doc.fragments.is_empty() && doc.spec.containers.iter().all(|c| c.name != "all"));
    }
    let again = state_on(store.clone(), dir.path()).await;
    assert_eq!(
        documents(&again, &ids).await,
        documents(&restarted, &ids).await,
        "the deleted fragment's ghost is stored"
    );
}

#[tokio::test]
async fn a_fragment_that_would_break_one_node_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = state_on(store.clone(), dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(enroll(&state, &format!("m-{i:02}")).await.0);
    }
    let own = json!({"containers": [{"name": "web", "image": "nginx:1"}]});
    let (st, _) = send(
        &state,
        Method::PUT,
        &format!("/v1/nodes/{}/spec", ids[7]),
        own,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let before = documents(&state, &ids).await;
    let revision = store.kv().revision().await.unwrap();
    let clash =
        json!({"selector": "", "spec": {"containers": [{"name": "web", "image": "httpd:2"}]}});
    let (st, w) = send(&state, Method::PUT, "/v1/fragments/clash", clash).await;
    assert_eq!(st, StatusCode::CONFLICT, "{w}");
    let named = w.to_string();
    assert!(named.contains(&format!("nodes[{}]", ids[7])), "{named}");
    assert_eq!(
        store.kv().revision().await.unwrap(),
        revision + 1,
        "nothing stored but the refusal's audit record"
    );
    assert!(store.fragments().await.unwrap().is_empty());
    assert_eq!(documents(&state, &ids).await, before);
}

/// Which nodes a fragment moves is decided once per distinct label set: nodes sharing a set are
/// all moved or all left, a set that does not match moves nobody, and a node whose labels
/// change is judged by its new set.
#[tokio::test]
async fn a_fragment_moves_exactly_the_nodes_whose_label_set_matches_including_after_a_relabel() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = state_on(store.clone(), dir.path()).await;
    let mut roles = BTreeMap::new();
    for i in 0..24 {
        let id = enroll(&state, &format!("r-{i:02}")).await.0;
        let role = ["web", "db", "cache"][i % 3];
        let path = format!("/v1/nodes/{id}");
        let (st, w) = send(
            &state,
            Method::PATCH,
            &path,
            json!({"labels": {"role": role}}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{w}");
        roles.insert(id, role);
    }
    let moved = |w: &Value| -> Vec<String> {
        let listed = w["affected"].as_array().unwrap();
        listed
            .iter()
            .map(|a| a["node_id"].as_str().unwrap().to_string())
            .collect()
    };
    let with_role = |roles: &BTreeMap<String, &str>, want: &[&str]| -> Vec<String> {
        let ids = roles.iter().filter(|(_, r)| want.contains(r));
        ids.map(|(id, _)| id.clone()).collect()
    };
    let web = json!({"selector": "role=web", "spec": {"containers": [{"name": "w", "image": "nginx:1"}]}});
    let (st, w) = send(&state, Method::PUT, "/v1/fragments/web", web).await;
    assert_eq!(st, StatusCode::OK, "{w}");
    assert_eq!(moved(&w), with_role(&roles, &["web"]), "{w}");
    // One db node becomes web: the next fragment for web or db judges it by its new labels.
    let turned = with_role(&roles, &["db"])[0].clone();
    let path = format!("/v1/nodes/{turned}");
    let (st, w) = send(
        &state,
        Method::PATCH,
        &path,
        json!({"labels": {"role": "web"}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{w}");
    roles.insert(turned.clone(), "web");
    let both = json!({"selector": "role!=cache", "spec": {"containers": [{"name": "b", "image": "busybox:1"}]}});
    let (st, w) = send(&state, Method::PUT, "/v1/fragments/both", both).await;
    assert_eq!(st, StatusCode::OK, "{w}");
    assert_eq!(moved(&w), with_role(&roles, &["web", "db"]), "{w}");
    assert_eq!(w["affected_count"], 16, "{w}");
    let doc = documents(&state, std::slice::from_ref(&turned)).await;
    assert_eq!(doc[0].1.fragments, ["both", "web"], "{doc:?}");
}

#[tokio::test]
async fn spec_records_from_before_base_keep_their_generation_and_are_given_one_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = state_on(store.clone(), dir.path()).await;
    let (id, _) = enroll(&state, "m-old").await;
    let body =
        json!({"selector": "", "spec": {"containers": [{"name": "f", "image": "busybox:1"}]}});
    let (st, _) = send(&state, Method::PUT, "/v1/fragments/f", body.clone()).await;
    assert_eq!(st, StatusCode::OK);
    drop(state);
    // The record as the registry wrote it before: generation 7 with the merged spec stored.
    let legacy = json!({
        "generation": 7,
        "own": {"containers": [{"name": "own", "image": "nginx:1"}]},
        "effective": {"containers": [{"name": "own", "image": "nginx:1"}, {"name": "f", "image": "busybox:1"}]},
        "fragments": ["f"],
        "updated_at": null
    });
    let key = format!("specs/{id}");
    store
        .kv()
        .txn(Txn::new().put(key.clone(), legacy.to_string()))
        .await
        .unwrap();
    let state = state_on(store.clone(), dir.path()).await;
    assert_eq!(state.generation(&id), 7);
    let doc = state.specs.document(&id).await.unwrap();
    assert_eq!(
        (doc.generation, doc.fragments.clone()),
        (7, vec!["f".to_string()])
    );
    let stored: Value =
        serde_json::from_slice(&store.kv().get(&key).await.unwrap().unwrap().value).unwrap();
    assert!(stored["base"].is_i64(), "{stored}");
    assert!(stored.get("effective").is_none(), "{stored}");
    // Given once: the next start reads the base, and a fragment change moves the node on.
    let revision = store.kv().get(&key).await.unwrap().unwrap().mod_revision;
    let state = state_on(store.clone(), dir.path()).await;
    assert_eq!(state.generation(&id), 7);
    assert_eq!(
        store.kv().get(&key).await.unwrap().unwrap().mod_revision,
        revision
    );
    let body =
        json!({"selector": "", "spec": {"containers": [{"name": "f", "image": "busybox:2"}]}});
    let (st, _) = send(&state, Method::PUT, "/v1/fragments/f", body).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(state.generation(&id), 8);
}

/// A fragment write's answer is not queued behind the long-polls it wakes: they are woken as
/// its answer's body is read, and not before; reads see the new set at once.
#[tokio::test]
async fn parked_long_polls_are_woken_as_the_fragment_answer_is_read() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();
    let state = state_on(store, dir.path()).await;
    let id = enroll(&state, "poll-1").await.0;
    let poll = {
        let (state, path) = (
            state.clone(),
            format!("/v1/nodes/{id}/spec?after=0&wait=60s"),
        );
        tokio::spawn(async move { call(&state, Method::GET, &path, Some(ADMIN), None).await })
    };
    // Hang guard only: the poll parks as soon as the spawned task runs.
    for _ in 0..3000 {
        if state.live(&id).unwrap().spec.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(state.live(&id).unwrap().spec.receiver_count(), 1, "parked");

    let body =
        json!({"selector": "", "spec": {"containers": [{"name": "all", "image": "busybox:1"}]}});
    let req = axum::http::Request::builder()
        .method(Method::PUT)
        .uri("/v1/fragments/all")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = super::router(state.clone(), 64 * 1024)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Answered, its body not read yet: the node's document already has the fragment, and its
    // long-poll has not been woken.
    assert_eq!(state.specs.document(&id).await.unwrap().generation, 1);
    assert_eq!(
        state.generation(&id),
        0,
        "published only once the answer goes out"
    );
    assert!(!poll.is_finished());

    let answer = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["affected"][0]["generation"], 1, "{answer}");
    assert_eq!(state.generation(&id), 1);
    let (st, doc) = poll.await.unwrap();
    assert_eq!(
        (st, doc["generation"].clone()),
        (StatusCode::OK, json!(1)),
        "{doc}"
    );
    assert_eq!(doc["fragments"], json!(["all"]));
}
