//! What a credential narrowed to a label selector may see and touch outside the auth
//! matrix's own node: lists narrowed, other nodes refused (and unknown ones not found),
//! writes outside the scope refused and changing nothing.
#![allow(clippy::unwrap_used)]

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::auth_matrix_tests::{create, credentials};
use super::tests::{call, fixture, ADMIN};

/// A credential scoped to `team=a` neither reads nor writes nodes outside it.
#[tokio::test]
async fn a_scoped_credential_stays_in_its_scope() {
    let fx = fixture().await;
    let creds = credentials(&fx).await;
    let lab = &creds.tokens[6].1;
    let (own, other) = (&fx.own.0, &fx.other.0);
    // Reads: only the own node is listed; the other is refused.
    let (st, nodes) = call(&fx.state, Method::GET, "/v1/nodes", Some(lab), None).await;
    assert_eq!(st, StatusCode::OK);
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![own.as_str()]);
    for uri in [
        format!("/v1/nodes/{other}"),
        format!("/v1/nodes/{other}/spec"),
    ] {
        let (st, e) = call(&fx.state, Method::GET, &uri, Some(lab), None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{uri}");
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("outside this credential's scope"),
            "{e}"
        );
    }
    // A node it cannot know of is not found.
    let (st, _) = call(
        &fx.state,
        Method::GET,
        "/v1/nodes/unknown-node",
        Some(lab),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Writes to the other node are refused and change nothing.
    let before = call(
        &fx.state,
        Method::GET,
        &format!("/v1/nodes/{other}/spec"),
        Some(ADMIN),
        None,
    )
    .await;
    let (st, _) = call(
        &fx.state,
        Method::PUT,
        &format!("/v1/nodes/{other}/spec"),
        Some(lab),
        Some((
            "application/yaml",
            "containers: [{name: x, image: busybox}]".into(),
        )),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let after = call(
        &fx.state,
        Method::GET,
        &format!("/v1/nodes/{other}/spec"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(before, after);
    // Its nodes cannot be moved out of the scope by a label patch.
    let (st, e) = call(
        &fx.state,
        Method::PATCH,
        &format!("/v1/nodes/{own}"),
        Some(lab),
        Some((
            "application/json",
            json!({"labels": {"team": null}}).to_string(),
        )),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{e}");
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains("out of this credential's scope"));
    // Fragments: one whose selector stays inside the scope is fine, a wider one is refused.
    let put = |name: &str, sel: &str| {
        let body = json!({"selector": sel, "spec": {}}).to_string();
        let uri = format!("/v1/fragments/{name}");
        let state = fx.state.clone();
        let lab = lab.clone();
        async move {
            call(
                &state,
                Method::PUT,
                &uri,
                Some(&lab),
                Some(("application/json", body)),
            )
            .await
        }
    };
    assert_eq!(put("lab-only", "team=a,role=web").await.0, StatusCode::OK);
    let (st, e) = put("wide", "role=web").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(
        e["error"].as_str().unwrap().contains("must include team=a"),
        "{e}"
    );
    assert!(fx.state.store.fragment("wide").await.unwrap().is_none());
    // Moving its own fragment out of the scope is refused too.
    assert_eq!(put("lab-only", "").await.0, StatusCode::FORBIDDEN);
    let (_, list) = call(&fx.state, Method::GET, "/v1/fragments", Some(lab), None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["lab-only"], "f1 (x=y) is not listed");
    // Events: only about nodes in the scope.
    let (_, events) = call(
        &fx.state,
        Method::GET,
        "/v1/events?limit=1000",
        Some(lab),
        None,
    )
    .await;
    let events = events.as_array().unwrap();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e["node_id"].as_str() == Some(own.as_str())),
        "{events:?}"
    );
    // The audit trail covers the whole fleet: not for scoped credentials.
    let viewer_lab = create(&fx, "lab-viewer", "viewer", json!({"selector": "team=a"})).await;
    let (st, _) = call(&fx.state, Method::GET, "/v1/audit", Some(&viewer_lab), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}
