//! Named credentials over a real (sled) store, with a manual clock for expiry.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use steward_proto::{Actor, CreateCredential, CredentialKind, Role};

use super::*;
use crate::clock::ManualClock;
use crate::kv::sled::SledKv;

async fn service(dir: &std::path::Path, clock: Arc<ManualClock>) -> Credentials {
    let store = Store::new(Arc::new(SledKv::open(dir, 0).unwrap()));
    Credentials::load(store, clock).await.unwrap()
}

fn req(name: &str, role: Role, selector: Option<&str>, expires: Option<&str>) -> CreateCredential {
    CreateCredential {
        name: name.into(),
        role,
        selector: selector.map(str::to_string),
        expires_in: expires.map(str::to_string),
        description: None,
        owner: None,
    }
}

fn by() -> Actor {
    Actor::new(CredentialKind::Admin, "admin-token")
}

#[tokio::test]
async fn created_credentials_identify_until_they_expire_or_are_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Utc::now());
    let c = service(dir.path(), clock.clone()).await;
    let made = c
        .create(
            req("ci", Role::Operator, Some("env=lab"), Some("1h")),
            &by(),
        )
        .await
        .unwrap();
    assert!(made.token.starts_with("stc_ci."), "{}", made.token);
    assert_eq!(made.info.created_by, "admin-token");
    let caller = c.identify(&made.token).expect("identified");
    assert_eq!(caller.role(), Some(Role::Operator));
    assert_eq!(caller.actor().name.as_deref(), Some("ci"));
    assert_eq!(caller.scope().unwrap().text, "env=lab");
    // A wrong secret with the right name, and an unknown name, are nobody.
    let forged = format!("stc_ci.{}", "0".repeat(64));
    assert!(c.identify(&forged).is_none());
    assert!(c.identify("stc_nobody.abc").is_none());
    // Expiry with the injected clock, no sleeping.
    clock.advance(Duration::from_secs(3599));
    assert!(c.identify(&made.token).is_some());
    clock.advance(Duration::from_secs(1));
    assert!(c.identify(&made.token).is_none(), "expired at its end");

    let other = c
        .create(req("ops", Role::Admin, None, None), &by())
        .await
        .unwrap();
    assert!(c.identify(&other.token).is_some());
    let (info, changed) = c.revoke("ops").await.unwrap();
    assert!(info.revoked && changed);
    assert!(c.identify(&other.token).is_none(), "revoked");
    let (_, changed) = c.revoke("ops").await.unwrap();
    assert!(!changed, "revoking twice changes nothing");
    assert!(matches!(
        c.revoke("nope").await,
        Err(CredentialError::NotFound(_))
    ));

    // Stored hashed: the token appears nowhere in the store's records.
    let stored = c.store.credentials().await.unwrap();
    let text = serde_json::to_string(&stored).unwrap();
    assert!(!text.contains(&made.token[8..]) && !text.contains(&other.token[9..]));
}

#[tokio::test]
async fn bad_requests_name_the_field_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = service(dir.path(), ManualClock::new(Utc::now())).await;
    let cases = [
        (req("", Role::Viewer, None, None), "name"),
        (req("a b", Role::Viewer, None, None), "name"),
        (req("x", Role::Viewer, Some("env=a b"), None), "selector"),
        (req("x", Role::Viewer, Some(""), None), "selector"),
        (req("x", Role::Viewer, None, Some("soon")), "expires_in"),
        (req("x", Role::Viewer, None, Some("20y")), "expires_in"),
        (req("x", Role::Admin, Some("env=lab"), None), "selector"),
    ];
    for (r, field) in cases {
        match c.create(r, &by()).await {
            Err(CredentialError::Invalid(p)) => assert_eq!(p[0].field, field, "{p:?}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(c.store.credentials().await.unwrap().is_empty());
    c.create(req("x", Role::Viewer, None, None), &by())
        .await
        .unwrap();
    assert!(matches!(
        c.create(req("x", Role::Admin, None, None), &by()).await,
        Err(CredentialError::Exists(_))
    ));
    assert_eq!(
        c.list()[0].role,
        Role::Viewer,
        "the refused create changed nothing"
    );
}

#[tokio::test]
async fn last_use_is_stored_at_most_once_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Utc::now());
    let c = service(dir.path(), clock.clone()).await;
    let made = c
        .create(req("ci", Role::Viewer, None, None), &by())
        .await
        .unwrap();
    assert_eq!(c.flush_last_used().await.unwrap(), 0, "never used");
    c.identify(&made.token).unwrap();
    assert_eq!(c.flush_last_used().await.unwrap(), 1);
    let stored = c.store.credentials().await.unwrap();
    assert_eq!(
        stored[0].last_used.map(|t| t.timestamp()),
        Some(clock.now().timestamp())
    );
    clock.advance(Duration::from_secs(10));
    c.identify(&made.token).unwrap();
    assert_eq!(c.flush_last_used().await.unwrap(), 0, "within the minute");
    clock.advance(Duration::from_secs(60));
    c.identify(&made.token).unwrap();
    assert_eq!(c.flush_last_used().await.unwrap(), 1);
    // The list shows what this process saw even before it is stored.
    clock.advance(Duration::from_secs(5));
    c.identify(&made.token).unwrap();
    assert_eq!(
        c.list()[0].last_used.map(|t| t.timestamp()),
        Some(clock.now().timestamp())
    );
}
