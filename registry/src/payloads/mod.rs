//! Payloads: named, immutable versions of content-addressed blobs. Uploads (streamed into the
//! blob store), listing, deletion (refused while a spec references the version, then the blob is
//! collected when no version uses it), and pinning of `sha256`/`size` into specs.

pub mod blobs;
pub mod peers;

use std::collections::BTreeMap;

use axum::body::Bytes;
use chrono::Utc;
use futures_util::Stream;
use steward_proto::validate::{validate_spec, SpecLimits};
use steward_proto::{
    CredentialKind, EventKind, NodeSpec, PayloadSpec, PayloadSummary, PayloadVersion, Problem,
};

use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;
use crate::store::StoreError;

/// Checks a payload name and version with the same rules as a spec's `payloads[]` entry.
pub fn check_name_version(name: &str, version: &str) -> ApiResult<()> {
    crate::specs::check_name("name", name)?;
    let spec = NodeSpec {
        payloads: vec![PayloadSpec {
            name: name.to_string(),
            version: version.to_string(),
            path: "/payload".into(),
            kind: Default::default(),
            mode: None,
            owner: None,
            sha256: None,
            size: None,
            on_change: None,
        }],
        ..Default::default()
    };
    // One payload: no limit applies; the default limits keep the call simple.
    match validate_spec(&spec, &SpecLimits::default()) {
        Ok(()) => Ok(()),
        Err(e) => Err(RegistryError::Invalid(
            e.0.into_iter()
                .map(|p| Problem::new(p.field.replace("payloads[0].", ""), p.reason))
                .collect(),
        )),
    }
}

/// Result of an upload: the version and whether it was new.
pub struct Uploaded {
    pub version: PayloadVersion,
    pub created: bool,
}

/// `PUT /v1/payloads/{name}/{version}`: streams `body` into the blob store, then records the
/// version. The same version with the same content is a no-op; with other content, 409.
pub async fn upload<S, E>(
    state: &AppState,
    name: &str,
    version: &str,
    expected_sha256: Option<&str>,
    body: S,
    cred: CredentialKind,
) -> ApiResult<Uploaded>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    check_name_version(name, version)?;
    if let Some(s) = expected_sha256 {
        if !blobs::is_sha256(s) {
            return Err(RegistryError::invalid(
                "x-steward-sha256",
                "must be 64 lower-case hex characters",
            ));
        }
    }
    // Received and hashed before taking the lock: a slow upload does not block others.
    let ing = state.blobs.ingest(body, expected_sha256).await?;
    let _guard = state.payload_lock.lock().await;
    if let Some(existing) = state.store.payload_version(name, version).await? {
        if existing.sha256 == ing.sha256 {
            return Ok(Uploaded {
                version: existing,
                created: false,
            });
        }
        return Err(RegistryError::Conflict {
            message: format!(
                "payload {name:?} version {version:?} already exists with sha256 {} ({} bytes); \
                 versions are immutable: upload the new content as a new version",
                existing.sha256, existing.size
            ),
            problems: vec![],
        });
    }
    let pv = PayloadVersion {
        name: name.to_string(),
        version: version.to_string(),
        sha256: ing.sha256.clone(),
        size: ing.size,
        created_at: Utc::now(),
    };
    let new_blob = state.blobs.commit(ing).await?;
    // With replicas: acknowledged only once `blob_copies` replicas hold the content.
    if let Some(peers) = state.peers.get() {
        peers
            .replicate(&state.store, &state.blobs, &pv.sha256)
            .await?;
    }
    if !state.store.create_payload_version(&pv).await? {
        // Another replica stored this version meanwhile: same content is the same version.
        let existing = get(state, name, version).await?;
        if existing.sha256 != pv.sha256 {
            return Err(RegistryError::Conflict {
                message: format!(
                    "payload {name:?} version {version:?} was just uploaded with other content \
                     (sha256 {}); versions are immutable",
                    existing.sha256
                ),
                problems: vec![],
            });
        }
        return Ok(Uploaded {
            version: existing,
            created: false,
        });
    }
    state
        .event(
            EventKind::PayloadUploaded,
            None,
            None,
            cred,
            format!(
                "payload {name:?} version {version:?} uploaded: sha256 {} ({} bytes{})",
                pv.sha256,
                pv.size,
                if new_blob {
                    ""
                } else {
                    ", content already stored"
                }
            ),
        )
        .await?;
    Ok(Uploaded {
        version: pv,
        created: true,
    })
}

/// Start-up: removes interrupted uploads and blobs no version references.
pub async fn collect_at_start(state: &AppState) -> ApiResult<usize> {
    let used: std::collections::HashSet<String> = state
        .store
        .payload_versions()
        .await?
        .into_iter()
        .map(|v| v.sha256)
        .collect();
    Ok(state.blobs.collect_at_start(|sha| !used.contains(sha)))
}

/// Every payload with its versions.
pub async fn list(state: &AppState) -> ApiResult<Vec<PayloadSummary>> {
    let mut by_name: BTreeMap<String, PayloadSummary> = BTreeMap::new();
    let mut all = state.store.payload_versions().await?;
    all.sort_by_key(|a| a.created_at);
    for v in all {
        let e = by_name
            .entry(v.name.clone())
            .or_insert_with(|| PayloadSummary {
                name: v.name.clone(),
                versions: vec![],
                total_size: 0,
            });
        e.versions.push(v.version);
        e.total_size += v.size;
    }
    Ok(by_name.into_values().collect())
}

/// The versions of one payload, oldest first (404 when it has none).
pub async fn versions(state: &AppState, name: &str) -> ApiResult<Vec<PayloadVersion>> {
    let mut v: Vec<PayloadVersion> = state
        .store
        .payload_versions()
        .await?
        .into_iter()
        .filter(|v| v.name == name)
        .collect();
    if v.is_empty() {
        return Err(RegistryError::NotFound(format!(
            "no payload named {name:?}"
        )));
    }
    v.sort_by_key(|a| a.created_at);
    Ok(v)
}

pub async fn get(state: &AppState, name: &str, version: &str) -> ApiResult<PayloadVersion> {
    state
        .store
        .payload_version(name, version)
        .await?
        .ok_or_else(|| not_found(name, version))
}

fn not_found(name: &str, version: &str) -> RegistryError {
    RegistryError::NotFound(format!("no payload {name:?} version {version:?}"))
}

/// What references `name@version`: node specs (own or effective, rollout overrides included)
/// and fragments, as human-readable strings.
async fn references(state: &AppState, name: &str, version: &str) -> ApiResult<Vec<String>> {
    let uses = |s: &NodeSpec| {
        s.payloads
            .iter()
            .any(|p| p.name == name && p.version == version)
    };
    let mut out = Vec::new();
    for (id, rec) in state.store.specs().await? {
        if uses(&rec.own)
            || uses(&rec.effective)
            || rec
                .payload_overrides
                .get(name)
                .is_some_and(|v| v == version)
        {
            out.push(format!("node {id}"));
        }
    }
    for f in state.store.fragments().await? {
        if uses(&f.spec) {
            out.push(format!("fragment {}", f.name));
        }
    }
    // An active rollout may still move nodes to, or back to, these versions.
    for r in state.store.rollouts::<steward_proto::Rollout>().await? {
        let needs = r.version == version
            || r.nodes.iter().any(|n| {
                n.previous_version == version || n.previous_override.as_deref() == Some(version)
            });
        if r.payload == name && r.state.is_active() && needs {
            out.push(format!("rollout {}", r.id));
        }
    }
    Ok(out)
}

/// `DELETE /v1/payloads/{name}/{version}`: refused (409) while referenced; the blob is removed
/// when no other version has the same content.
pub async fn delete(
    state: &AppState,
    name: &str,
    version: &str,
    cred: CredentialKind,
) -> ApiResult<PayloadVersion> {
    for _ in 0..crate::specs::ATTEMPTS {
        match delete_once(state, name, version, cred).await {
            Err(RegistryError::Store(StoreError::Stale)) => continue,
            r => return r,
        }
    }
    Err(StoreError::Busy {
        what: "payload deletion",
    }
    .into())
}

/// One attempt of [`delete`]: [`StoreError::Stale`] when a spec change (on any replica)
/// committed while the references were checked.
async fn delete_once(
    state: &AppState,
    name: &str,
    version: &str,
    cred: CredentialKind,
) -> ApiResult<PayloadVersion> {
    // spec_lock first: no spec write of this process can pin this version while it is being
    // deleted; the spec epoch does the same for other replicas.
    let _specs = state.spec_lock.lock().await;
    let _guard = state.payload_lock.lock().await;
    let epoch = state.store.spec_epoch().await?;
    let pv = get(state, name, version).await?;
    let refs = references(state, name, version).await?;
    if !refs.is_empty() {
        return Err(RegistryError::Conflict {
            message: format!(
                "payload {name:?} version {version:?} is referenced by {}; change those specs first",
                refs.join(", ")
            ),
            problems: refs
                .iter()
                .map(|r| Problem::new(r.clone(), format!("references {name}@{version}")))
                .collect(),
        });
    }
    state
        .store
        .remove_payload_version(epoch, name, version)
        .await?;
    let shared = state
        .store
        .payload_versions()
        .await?
        .iter()
        .any(|v| v.sha256 == pv.sha256);
    if !shared {
        state.blobs.remove(&pv.sha256).await?;
        // Other replicas drop their copies at their next start (unreferenced blobs).
        state.store.forget_blob(&pv.sha256).await?;
    }
    state
        .event(
            EventKind::PayloadDeleted,
            None,
            None,
            cred,
            format!(
                "payload {name:?} version {version:?} deleted{}",
                if shared {
                    "; its content is kept for other versions"
                } else {
                    "; its blob was collected"
                }
            ),
        )
        .await?;
    Ok(pv)
}

/// Pins `sha256` and `size` of every payload of `spec` from the stored versions. A missing
/// version or a client-given sha256 that differs is a problem on `{prefix}payloads[i]...`.
pub async fn pin(state: &AppState, spec: &mut NodeSpec, prefix: &str) -> ApiResult<()> {
    let mut problems = Vec::new();
    for (i, p) in spec.payloads.iter_mut().enumerate() {
        let Some(v) = state.store.payload_version(&p.name, &p.version).await? else {
            problems.push(Problem::new(
                format!("{prefix}payloads[{i}].version"),
                format!(
                    "payload {:?} has no version {:?} in the registry; upload it first with \
                     PUT /v1/payloads/{}/{}",
                    p.name, p.version, p.name, p.version
                ),
            ));
            continue;
        };
        if let Some(given) = &p.sha256 {
            if *given != v.sha256 {
                problems.push(Problem::new(
                    format!("{prefix}payloads[{i}].sha256"),
                    format!(
                        "sha256 {given} differs from {} stored for {}@{}",
                        v.sha256, p.name, p.version
                    ),
                ));
                continue;
            }
        }
        if let Some(given) = p.size {
            if given != v.size {
                problems.push(Problem::new(
                    format!("{prefix}payloads[{i}].size"),
                    format!(
                        "size {given} differs from {} stored for {}@{}",
                        v.size, p.name, p.version
                    ),
                ));
                continue;
            }
        }
        p.sha256 = Some(v.sha256);
        p.size = Some(v.size);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RegistryError::Unprocessable(problems))
    }
}

/// Applies per-node rollout overrides (payload name -> version) to an effective spec, pinning
/// the overriding version's sha256 and size.
pub async fn apply_overrides(
    state: &AppState,
    spec: &mut NodeSpec,
    overrides: &BTreeMap<String, String>,
) -> ApiResult<()> {
    for p in spec.payloads.iter_mut() {
        let Some(version) = overrides.get(&p.name) else {
            continue;
        };
        let v = state
            .store
            .payload_version(&p.name, version)
            .await?
            .ok_or_else(|| not_found(&p.name, version))?;
        p.version = v.version;
        p.sha256 = Some(v.sha256);
        p.size = Some(v.size);
    }
    Ok(())
}

/// True when the node's effective spec references a blob with this sha256.
pub async fn node_may_read(state: &AppState, node_id: &str, sha256: &str) -> ApiResult<bool> {
    Ok(state.store.spec(node_id).await?.is_some_and(|r| {
        r.effective
            .payloads
            .iter()
            .any(|p| p.sha256.as_deref() == Some(sha256))
    }))
}
