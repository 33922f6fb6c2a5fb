//! Single sign-on: bearer JWTs (OIDC ID or access tokens) from the issuers of the `[[oidc]]`
//! config. The signature is checked against the issuer's JWKS (a URL fetched at start, every
//! 10 minutes and when a token names a key not held yet — at most once in 10 s — or a file),
//! then `iss`, `aud`, `exp` and `nbf`; a claim (`groups` by default) is mapped to a role. The
//! only module that speaks `jsonwebtoken`. A verified token is remembered (by its sha256) until
//! it expires or for 5 minutes, so a client sending the same token again costs a hash and a
//! map lookup, not a signature check.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use steward_proto::{CredentialKind, Role};

use crate::auth::{self, Caller, Principal};
use crate::clock::Clock;

/// How long a verified token is remembered at most.
const REMEMBER: i64 = 300;
/// Tokens remembered at most (the memory is emptied when full).
const REMEMBERED_MAX: usize = 10_000;
/// JWKS URLs are fetched again this often.
const REFRESH: Duration = Duration::from_secs(600);
/// ... and on an unknown key id, at most this often.
const REFETCH_GAP: Duration = Duration::from_secs(10);

/// One trusted issuer (`[[oidc]]` in the registry's config).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry, e.g. `https://login.example.com/realms/ops`.
    pub issuer: String,
    /// The `aud` a token must carry (this registry's client id at the issuer).
    pub audience: String,
    /// Where its signing keys are: a JWKS URL (fetched and cached) ...
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// ... or a JWKS file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The claim holding the caller's groups (a string or a list of strings).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim naming the caller in the audit trail and events.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// Group -> role; a token whose groups map to no role is refused. With several, the
    /// strongest role wins (admin, operator, viewer, sessions).
    pub roles: BTreeMap<String, Role>,
}

fn default_roles_claim() -> String {
    "groups".into()
}

fn default_name_claim() -> String {
    "sub".into()
}

/// An issuer that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("oidc issuer {issuer}: {reason}")]
    Config { issuer: String, reason: String },
    #[error("oidc issuer {issuer}: cannot read the JWKS file {path}: {source}")]
    File {
        issuer: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("oidc issuer {issuer}: the JWKS at {url} could not be fetched: {source}")]
    Fetch {
        issuer: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("oidc issuer {issuer}: the JWKS is not valid: {source}")]
    Jwks {
        issuer: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Why a JWT was refused (logged at debug level; the caller gets a plain 401).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("no configured issuer is {0:?}")]
    Issuer(String),
    #[error("no key {0:?} in the issuer's JWKS")]
    Key(String),
    #[error("{0}")]
    Token(String),
    #[error("the token's {claim} map to no role")]
    NoRole { claim: String },
}

struct Issuer {
    cfg: IssuerConfig,
    /// key id -> key.
    keys: RwLock<HashMap<String, DecodingKey>>,
    fetched: Mutex<Option<Instant>>,
}

/// Verified tokens by sha256: who they are, until when they are remembered and their `exp`
/// (unix seconds).
type Remembered = HashMap<[u8; 32], (Caller, i64, i64)>;

/// The configured issuers and the tokens verified lately.
#[derive(Clone)]
pub struct Oidc {
    issuers: Arc<RwLock<Vec<Arc<Issuer>>>>,
    remembered: Arc<Mutex<Remembered>>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
}

impl Oidc {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Oidc {
            issuers: Arc::default(),
            remembered: Arc::default(),
            clock,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Checks the issuers and loads their keys (a JWKS URL that does not answer is logged and
    /// fetched again later; a JWKS file must be readable).
    pub async fn configure(&self, cfgs: &[IssuerConfig]) -> Result<(), OidcError> {
        let mut issuers = Vec::new();
        for cfg in cfgs {
            check(cfg)?;
            let issuer = Arc::new(Issuer {
                cfg: cfg.clone(),
                keys: RwLock::default(),
                fetched: Mutex::new(None),
            });
            match self.load(&issuer).await {
                Ok(n) => tracing::info!(issuer = %cfg.issuer, keys = n, "oidc issuer keys loaded"),
                Err(e @ OidcError::Fetch { .. }) => {
                    tracing::warn!(error = %e, "oidc keys not loaded yet; fetching again later")
                }
                Err(e) => return Err(e),
            }
            issuers.push(issuer);
        }
        *self.issuers.write().unwrap_or_else(|p| p.into_inner()) = issuers;
        Ok(())
    }

    /// Whether any issuer is configured.
    pub fn enabled(&self) -> bool {
        !self
            .issuers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Fetches (or reads) an issuer's JWKS and holds its keys; how many.
    async fn load(&self, issuer: &Issuer) -> Result<usize, OidcError> {
        let name = || issuer.cfg.issuer.clone();
        *issuer.fetched.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let text = match (&issuer.cfg.jwks_url, &issuer.cfg.jwks_file) {
            (Some(url), _) => {
                let fetch = async {
                    self.http
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .text()
                        .await
                };
                fetch.await.map_err(|source| OidcError::Fetch {
                    issuer: name(),
                    url: url.clone(),
                    source,
                })?
            }
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|source| OidcError::File {
                    issuer: name(),
                    path: path.clone(),
                    source,
                })?
            }
            (None, None) => unreachable!("checked by check()"),
        };
        let set: JwkSet = serde_json::from_str(&text).map_err(|source| OidcError::Jwks {
            issuer: name(),
            source,
        })?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Symmetric keys have no place in a public key set.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(jwk.common.key_id.clone().unwrap_or_default(), key);
            }
        }
        let n = keys.len();
        *issuer.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(n)
    }

    /// Fetches every JWKS URL again every 10 minutes (for as long as the process runs).
    pub async fn refresh(self) {
        loop {
            tokio::time::sleep(REFRESH).await;
            let issuers = self
                .issuers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for i in issuers.iter().filter(|i| i.cfg.jwks_url.is_some()) {
                if let Err(e) = self.load(i).await {
                    tracing::warn!(error = %e, "oidc keys not refreshed; keeping the old ones");
                }
            }
        }
    }

    /// When a JWT verified earlier expires (its `exp`), if it is still remembered.
    pub fn expiry(&self, token: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let h = auth::sha256(token);
        let mem = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        mem.get(&h)
            .and_then(|(_, _, exp)| chrono::DateTime::from_timestamp(*exp, 0))
    }

    /// Whether a bearer token has the shape of a JWT.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
    }

    /// The caller a JWT is, or why it is refused.
    pub fn identify(&self, token: &str) -> Result<Caller, Refused> {
        self.identify_hashed(token, &auth::sha256(token))
    }

    /// [`Oidc::identify`] with the token's sha256 already computed (`h`).
    pub fn identify_hashed(&self, token: &str, h: &[u8; 32]) -> Result<Caller, Refused> {
        let now = self.clock.now().timestamp();
        if let Some((caller, until, _)) = self
            .remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(h)
        {
            if now < *until {
                return Ok(caller.clone());
            }
        }
        let (caller, exp) = self.verify(token)?;
        let mut mem = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if mem.len() >= REMEMBERED_MAX {
            mem.clear();
        }
        mem.insert(*h, (caller.clone(), exp.min(now + REMEMBER), exp));
        Ok(caller)
    }

    fn verify(&self, token: &str) -> Result<(Caller, i64), Refused> {
        let bad = |e: jsonwebtoken::errors::Error| Refused::Token(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(bad)?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(Refused::Token(
                "symmetric (HS*) tokens are not accepted".into(),
            ));
        }
        // Which issuer: read `iss` unverified only to pick the keys; verified below.
        let claims =
            unverified_claims(token).ok_or_else(|| Refused::Token("malformed payload".into()))?;
        let iss = claims
            .get("iss")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let issuer = self
            .issuers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|i| i.cfg.issuer == iss)
            .cloned()
            .ok_or_else(|| Refused::Issuer(iss.to_string()))?;
        let kid = header.kid.clone().unwrap_or_default();
        let key = issuer
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&kid)
            .cloned();
        let Some(key) = key else {
            self.refetch_later(&issuer);
            return Err(Refused::Key(kid));
        };
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&issuer.cfg.issuer]);
        v.set_audience(&[&issuer.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = 30;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(bad)?;
        let claims = data.claims;
        let role = role_of(&issuer.cfg, &claims).ok_or_else(|| Refused::NoRole {
            claim: issuer.cfg.roles_claim.clone(),
        })?;
        let name = claims
            .get(&issuer.cfg.name_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Refused::Token(format!("no {} claim", issuer.cfg.name_claim)))?;
        let exp = claims.get("exp").and_then(|v| v.as_i64()).unwrap_or(0);
        let caller = Caller::Principal(Principal {
            name: name.into(),
            role,
            scope: None,
            credential: CredentialKind::Jwt,
            // A sessions JWT acts for its subject's sessions only.
            owner: (role == Role::Sessions).then(|| Arc::from(name)),
        });
        Ok((caller, exp))
    }

    /// Fetches an issuer's JWKS again in the background (a key rotated in), at most once in
    /// 10 s.
    fn refetch_later(&self, issuer: &Arc<Issuer>) {
        if issuer.cfg.jwks_url.is_none() && issuer.cfg.jwks_file.is_none() {
            return;
        }
        {
            let mut last = issuer.fetched.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REFETCH_GAP) {
                return;
            }
            *last = Some(Instant::now());
        }
        let (me, issuer) = (self.clone(), issuer.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = me.load(&issuer).await {
                    tracing::warn!(error = %e, "oidc keys not refetched");
                }
            });
        }
    }
}

fn check(cfg: &IssuerConfig) -> Result<(), OidcError> {
    let bad = |reason: &str| OidcError::Config {
        issuer: cfg.issuer.clone(),
        reason: reason.to_string(),
    };
    if cfg.issuer.is_empty() {
        return Err(bad("issuer must not be empty"));
    }
    if cfg.audience.is_empty() {
        return Err(bad("audience must not be empty"));
    }
    match (&cfg.jwks_url, &cfg.jwks_file) {
        (Some(_), Some(_)) => Err(bad("give jwks_url or jwks_file, not both")),
        (None, None) => Err(bad("give jwks_url (fetched and cached) or jwks_file")),
        _ if cfg.roles.is_empty() => Err(bad(
            "roles maps no group to a role: every token would be refused",
        )),
        _ => Ok(()),
    }
}

/// The strongest role the token's groups map to.
fn role_of(
    cfg: &IssuerConfig,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Option<Role> {
    let groups: Vec<&str> = match claims.get(&cfg.roles_claim)? {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => return None,
    };
    groups
        .iter()
        .filter_map(|g| cfg.roles.get(*g).copied())
        .min()
}

/// The claims of a JWT, not verified (to pick its issuer's keys).
fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
#[path = "oidc_tests.rs"]
pub(crate) mod tests;
