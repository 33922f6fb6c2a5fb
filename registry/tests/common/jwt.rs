//! Test JWTs: an Ed25519 key the test generates, its JWK, and tokens it signs (shared by the
//! registry's unit tests, the end-to-end tests and the auth benchmark).
#![allow(dead_code, clippy::unwrap_used)]

use base64::Engine;
use serde_json::{json, Value};

/// An Ed25519 signing key and its JWK.
pub struct TestKey {
    pub kid: String,
    enc: jsonwebtoken::EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    pub fn new(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
        TestKey {
            kid: kid.into(),
            enc: jsonwebtoken::EncodingKey::from_ed_der(&kp.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
        }
    }

    /// A token with these claims, signed by this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

/// Claims for `sub` in `groups` from `iss` for `aud`, valid for an hour.
pub fn claims_for(iss: &str, aud: &str, sub: &str, groups: &[&str]) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": iss, "aud": aud, "sub": sub, "groups": groups, "iat": now, "exp": now + 3600})
}

/// A JWKS holding these keys.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}
