//! JWTs minted with keys the test generates, against a JWKS file the test writes.

use chrono::Utc;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::clock::ManualClock;

#[path = "../tests/common/jwt.rs"]
mod jwt;
pub use jwt::TestKey;

pub const ISSUER: &str = "https://sso.test/realms/ops";
pub const AUDIENCE: &str = "steward";

/// Claims of a good token for `sub` in `groups`, valid for an hour.
pub fn claims(sub: &str, groups: &[&str]) -> Value {
    jwt::claims_for(ISSUER, AUDIENCE, sub, groups)
}

/// An issuer config reading `jwks` (written to `dir`), mapping ops-admins, ops and auditors.
pub fn issuer(dir: &std::path::Path, keys: &[&TestKey]) -> IssuerConfig {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwt::jwks(keys).to_string()).unwrap();
    IssuerConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: None,
        jwks_file: Some(path),
        roles_claim: "groups".into(),
        name_claim: "sub".into(),
        roles: [
            ("ops-admins".to_string(), Role::Admin),
            ("ops".to_string(), Role::Operator),
            ("auditors".to_string(), Role::Viewer),
        ]
        .into(),
    }
}

#[tokio::test]
async fn tokens_are_checked_for_signature_issuer_audience_time_and_group() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new("k1");
    let oidc = Oidc::new(ManualClock::new(Utc::now()));
    oidc.configure(&[issuer(dir.path(), &[&key])])
        .await
        .unwrap();

    let good = key.sign(&claims("alice", &["ops", "auditors"]));
    assert!(Oidc::looks_like_jwt(&good));
    let caller = oidc.identify(&good).unwrap();
    assert_eq!(
        caller.role(),
        Some(Role::Operator),
        "the strongest role wins"
    );
    assert_eq!(caller.actor().name.as_deref(), Some("alice"));
    assert_eq!(caller.kind(), CredentialKind::Jwt);

    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("alice", &["ops"]);
        f(&mut c);
        key.sign(&c)
    };
    let now = Utc::now().timestamp();
    let forged = TestKey::new("k1").sign(&claims("alice", &["ops-admins"]));
    let cases: Vec<(&str, String)> = vec![
        ("wrong signature", forged),
        (
            "unknown key",
            TestKey::new("k9").sign(&claims("alice", &["ops"])),
        ),
        (
            "wrong issuer",
            edit(&|c| c["iss"] = json!("https://evil.test")),
        ),
        (
            "wrong audience",
            edit(&|c| c["aud"] = json!("someone-else")),
        ),
        ("expired", edit(&|c| c["exp"] = json!(now - 120))),
        ("not yet valid", edit(&|c| c["nbf"] = json!(now + 600))),
        (
            "no exp",
            edit(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        ("unknown group", edit(&|c| c["groups"] = json!(["interns"]))),
        (
            "no groups",
            edit(&|c| {
                c.as_object_mut().unwrap().remove("groups");
            }),
        ),
        ("no subject", edit(&|c| c["sub"] = json!(""))),
    ];
    for (what, token) in cases {
        assert!(oidc.identify(&token).is_err(), "{what} must be refused");
    }
    assert!(matches!(
        oidc.identify(&edit(&|c| c["groups"] = json!(["interns"]))),
        Err(Refused::NoRole { .. })
    ));
    // A symmetric token signed with the public key as secret (the classic confusion) is refused.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let x = key.jwk["x"].as_str().unwrap();
    let hs = jsonwebtoken::encode(
        &h,
        &claims("mallory", &["ops-admins"]),
        &EncodingKey::from_secret(x.as_bytes()),
    )
    .unwrap();
    assert!(oidc.identify(&hs).is_err());
}

#[tokio::test]
async fn a_verified_token_is_remembered_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new("k1");
    let clock = ManualClock::new(Utc::now());
    let oidc = Oidc::new(clock.clone());
    oidc.configure(&[issuer(dir.path(), &[&key])])
        .await
        .unwrap();
    let token = key.sign(&claims("bob", &["auditors"]));
    assert!(oidc.identify(&token).is_ok());
    // Remembered: still accepted after the JWKS lost its key...
    oidc.configure(&[issuer(dir.path(), &[])]).await.unwrap();
    let remembered = oidc.identify(&token);
    // ... (configure starts afresh: the memory is per process, not per configuration)
    assert!(remembered.is_ok());
    // ... but not past 5 minutes: then it is checked again, and refused.
    clock.advance(std::time::Duration::from_secs(301));
    assert_eq!(oidc.identify(&token), Err(Refused::Key("k1".into())));
}

#[tokio::test]
async fn bad_configs_name_the_issuer_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new("k1");
    let good = issuer(dir.path(), &[&key]);
    let oidc = Oidc::new(ManualClock::new(Utc::now()));
    let mut both = good.clone();
    both.jwks_url = Some("http://127.0.0.1:1/jwks".into());
    let mut no_roles = good.clone();
    no_roles.roles.clear();
    let mut missing = good.clone();
    missing.jwks_file = Some(dir.path().join("nope.json"));
    for (cfg, want) in [
        (both, "not both"),
        (no_roles, "roles"),
        (missing, "cannot read"),
    ] {
        let e = oidc.configure(&[cfg]).await.unwrap_err().to_string();
        assert!(e.contains(ISSUER) && e.contains(want), "{e}");
    }
    assert!(!oidc.enabled(), "a refused configuration installs nothing");
}
