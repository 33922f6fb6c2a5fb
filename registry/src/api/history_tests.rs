//! Spec history in process: every own-spec and fragment version kept with its author, the
//! oldest dropped past the retention, reverts written as new versions, refused reverts
//! changing nothing.
#![allow(clippy::unwrap_used)]

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::fragment_tests::send;
use super::tests::{call, enroll, ADMIN};
use crate::state::{AppState, Settings};
use crate::store::Store;

async fn registry(dir: &std::path::Path, kept: usize) -> AppState {
    let store = Store::open_embedded(dir).unwrap();
    let settings = Settings {
        spec_history_kept: kept,
        ..Settings::default()
    };
    AppState::new(settings, store, dir, ADMIN, None)
        .await
        .unwrap()
}

fn spec(image: &str) -> Value {
    json!({"containers": [{"name": "web", "image": image}]})
}

#[tokio::test]
async fn own_spec_versions_are_kept_and_reverted() {
    let dir = tempfile::tempdir().unwrap();
    let state = registry(dir.path(), 3).await;
    let (id, _) = enroll(&state, "m-hist").await;
    let path = format!("/v1/nodes/{id}/spec");
    let mut gens = Vec::new();
    for image in ["nginx:1", "nginx:2", "nginx:3", "nginx:4"] {
        let (st, w) = send(&state, Method::PUT, &path, spec(image)).await;
        assert_eq!(st, StatusCode::OK, "{w}");
        gens.push(w["generation"].as_u64().unwrap());
    }
    // The same spec again is no new version.
    send(&state, Method::PUT, &path, spec("nginx:4")).await;
    let (st, h) = call(
        &state,
        Method::GET,
        &format!("{path}/history"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let h = h.as_array().unwrap();
    // Three kept: the first fell out.
    let seqs: Vec<u64> = h.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(h[0]["spec"]["containers"][0]["image"], "nginx:2");
    assert_eq!(h[0]["generation"], gens[1]);
    assert!(h
        .iter()
        .all(|v| v["author"] == "admin-token" && v["note"] == "written"));

    // Revert to generation 2 (nginx:2): a new generation with that content.
    let (st, w) = send(
        &state,
        Method::POST,
        &format!("{path}/revert"),
        json!({"to": gens[1]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{w}");
    let g = w["generation"].as_u64().unwrap();
    assert!(g > gens[3]);
    let doc = state.specs.document(&id).await.unwrap();
    assert_eq!(
        serde_json::to_value(&doc.own).unwrap()["containers"][0]["image"],
        "nginx:2"
    );
    let (_, h) = call(
        &state,
        Method::GET,
        &format!("{path}/history"),
        Some(ADMIN),
        None,
    )
    .await;
    let last = h.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["note"], format!("reverted to generation {}", gens[1]));
    assert_eq!(last["generation"], g);

    // Generation 1 fell out of the history: 404 naming what is kept, nothing written.
    let before = state.store.kv().revision().await.unwrap();
    let (st, e) = send(
        &state,
        Method::POST,
        &format!("{path}/revert"),
        json!({"to": gens[0]}),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
    assert!(e["error"].as_str().unwrap().contains("kept: "), "{e}");
    assert_eq!(
        state.store.kv().revision().await.unwrap(),
        before + 1,
        "only its audit record"
    );
    let (st, e) = send(
        &state,
        Method::POST,
        &format!("{path}/revert"),
        json!({"to": "x"}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
}

#[tokio::test]
async fn fragment_versions_deletions_and_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let state = registry(dir.path(), 100).await;
    let (id, _) = enroll(&state, "m-frag").await;
    let put = |sel: &str, image: &str| json!({"selector": sel, "spec": spec(image)});
    let path = "/v1/fragments/web";
    assert_eq!(
        send(&state, Method::PUT, path, put("", "nginx:1")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&state, Method::PUT, path, put("", "nginx:2")).await.0,
        StatusCode::OK
    );
    let (st, _) = call(&state, Method::DELETE, path, Some(ADMIN), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, h) = call(
        &state,
        Method::GET,
        &format!("{path}/history"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let h = h.as_array().unwrap();
    let notes: Vec<(&str, u64)> = h
        .iter()
        .map(|v| {
            (
                v["note"].as_str().unwrap(),
                v["generation"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(notes, vec![("written", 1), ("written", 2), ("deleted", 2)]);
    assert!(h[2].get("spec").is_none());
    // Revision 1 comes back (as a fragment again, revision 1 of its new life).
    let (st, w) = send(
        &state,
        Method::POST,
        &format!("{path}/revert"),
        json!({"to": 1}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{w}");
    let doc = state.specs.document(&id).await.unwrap();
    assert_eq!(doc.fragments, vec!["web".to_string()]);
    assert_eq!(
        serde_json::to_value(&doc.spec).unwrap()["containers"][0]["image"],
        "nginx:1"
    );
    let (_, h) = call(
        &state,
        Method::GET,
        &format!("{path}/history"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        h.as_array().unwrap().last().unwrap()["note"],
        "reverted to revision 1"
    );
    // A fragment that never was: 404.
    let (st, _) = call(
        &state,
        Method::GET,
        "/v1/fragments/none/history",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = send(
        &state,
        Method::POST,
        &format!("{path}/revert"),
        json!({"to": 9}),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
