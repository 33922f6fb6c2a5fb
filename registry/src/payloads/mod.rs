//! Payloads: named, immutable versions of content-addressed blobs. Uploads (streamed into the
//! blob store), listing, deletion (refused while a spec references the version, then the blob is
//! collected when no version uses it), and pinning of `sha256`/`size` into specs: the
//! [`Payloads`] service and its [`PayloadError`].

pub mod blobs;
pub mod peers;

use std::collections::BTreeMap;

use axum::body::Bytes;
use chrono::Utc;
use futures_util::Stream;
use steward_proto::validate::{validate_spec, SpecLimits};
use steward_proto::{
    Actor, EventKind, NodeSpec, PayloadSpec, PayloadSummary, PayloadVersion, Problem,
};

use crate::events::EventLog;
use crate::spec_gate::{SpecGate, ATTEMPTS};
use crate::store::{Store, StoreError};
use blobs::{BlobError, Blobs};
use peers::{PeerError, Peers};

/// What a payload operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// A name, version or sha256 that breaks the rules.
    #[error("invalid input: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    #[error("no payload named {name:?}")]
    NoPayload { name: String },
    #[error("no payload {name:?} version {version:?}")]
    NoVersion { name: String, version: String },
    /// The version exists with other content (versions are immutable).
    #[error("{0}")]
    Immutable(String),
    /// The version is still referenced (by specs, fragments or an active rollout).
    #[error("{message}")]
    InUse {
        message: String,
        problems: Vec<Problem>,
    },
    /// Payloads of a spec that name a version the registry lacks, or another sha256 or size.
    #[error("unprocessable: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Unresolved(Vec<Problem>),
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Copying a blob to or from other replicas failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, PayloadError>;

/// Checks a payload name and version with the same rules as a spec's `payloads[]` entry.
pub fn check_name_version(name: &str, version: &str) -> Result<()> {
    crate::names::check_name("name", name).map_err(|p| PayloadError::Invalid(vec![p]))?;
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
        Err(e) => Err(PayloadError::Invalid(
            e.0.into_iter()
                .map(|p| Problem::new(p.field.replace("payloads[0].", ""), p.reason))
                .collect(),
        )),
    }
}

/// Checks an upload's name, version and the sha256 its uploader expects, if any.
fn check_upload(name: &str, version: &str, expected_sha256: Option<&str>) -> Result<()> {
    check_name_version(name, version)?;
    match expected_sha256 {
        Some(s) if !blobs::is_sha256(s) => Err(PayloadError::Invalid(vec![Problem::new(
            "x-steward-sha256",
            "must be 64 lower-case hex characters",
        )])),
        _ => Ok(()),
    }
}

/// Result of an upload: the version and whether it was new.
pub struct Uploaded {
    pub version: PayloadVersion,
    pub created: bool,
}

/// Payload versions and their blobs.
#[derive(Clone)]
pub struct Payloads {
    store: Store,
    events: EventLog,
    blobs: Blobs,
    gate: SpecGate,
    /// Serialises payload metadata changes and blob collection (taken after the spec gate's
    /// lock when both are needed).
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// This replica as a peer of the others (set at start-up with an etcd store): blobs are
    /// copied between replicas.
    peers: std::sync::Arc<std::sync::OnceLock<Peers>>,
}

impl Payloads {
    pub fn new(store: Store, events: EventLog, blobs: Blobs, gate: SpecGate) -> Self {
        Self {
            store,
            events,
            blobs,
            gate,
            lock: Default::default(),
            peers: Default::default(),
        }
    }

    /// Makes this replica a peer of the others (at start-up, with an etcd store).
    pub fn set_peers(&self, peers: Peers) {
        let _ = self.peers.set(peers);
    }

    /// Stores a blob copy pushed by another replica (only if `body` hashes to `sha256`) and
    /// records that this replica holds it; true when it was new here.
    pub async fn receive_copy<S, E>(&self, sha256: &str, body: S) -> Result<bool>
    where
        S: Stream<Item = std::result::Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let ing = self.blobs.ingest(body, Some(sha256)).await?;
        let created = self.blobs.commit(ing).await?;
        if let Some(p) = self.peers.get() {
            self.store
                .record_blob_copies(&p.me, &[sha256.to_string()])
                .await?;
        }
        Ok(created)
    }

    /// Fetches a blob this replica lacks from another replica (sha256 checked); false when no
    /// replica has it, or there are no other replicas.
    pub async fn fetch_blob(&self, sha256: &str) -> Result<bool> {
        Ok(match self.peers.get() {
            Some(p) => p.fetch(&self.store, &self.blobs, sha256).await?,
            None => false,
        })
    }

    /// The blob directory (downloads are served from its files).
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }
}

impl Payloads {
    /// `PUT /v1/payloads/{name}/{version}`: streams `body` into the blob store, then records the
    /// version. The same version with the same content is a no-op; with other content, 409.
    pub async fn upload<S, E>(
        &self,
        name: &str,
        version: &str,
        expected_sha256: Option<&str>,
        body: S,
        cred: &Actor,
    ) -> Result<Uploaded>
    where
        S: Stream<Item = std::result::Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        check_upload(name, version, expected_sha256)?;
        // Received and hashed before taking the lock: a slow upload does not block others.
        let ing = self.blobs.ingest(body, expected_sha256).await?;
        let _guard = self.lock.lock().await;
        if let Some(existing) = self.store.payload_version(name, version).await? {
            if existing.sha256 == ing.sha256 {
                return Ok(Uploaded {
                    version: existing,
                    created: false,
                });
            }
            return Err(PayloadError::Immutable(format!(
                "payload {name:?} version {version:?} already exists with sha256 {} ({} bytes); \
             versions are immutable: upload the new content as a new version",
                existing.sha256, existing.size
            )));
        }
        let pv = PayloadVersion {
            name: name.to_string(),
            version: version.to_string(),
            sha256: ing.sha256.clone(),
            size: ing.size,
            created_at: Utc::now(),
        };
        let new_blob = self.blobs.commit(ing).await?;
        // With replicas: acknowledged only once `blob_copies` replicas hold the content.
        if let Some(peers) = self.peers.get() {
            peers
                .replicate(&self.store, &self.blobs, &pv.sha256)
                .await?;
        }
        if !self.store.create_payload_version(&pv).await? {
            // Another replica stored this version meanwhile: same content is the same version.
            let existing = self.get(name, version).await?;
            if existing.sha256 != pv.sha256 {
                return Err(PayloadError::Immutable(format!(
                    "payload {name:?} version {version:?} was just uploaded with other content \
                 (sha256 {}); versions are immutable",
                    existing.sha256
                )));
            }
            return Ok(Uploaded {
                version: existing,
                created: false,
            });
        }
        self.events
            .record(
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
    pub async fn collect_at_start(&self) -> Result<usize> {
        let used: std::collections::HashSet<String> = self
            .store
            .payload_versions()
            .await?
            .into_iter()
            .map(|v| v.sha256)
            .collect();
        Ok(self.blobs.collect_at_start(|sha| !used.contains(sha)))
    }

    /// Every payload with its versions.
    pub async fn list(&self) -> Result<Vec<PayloadSummary>> {
        let mut by_name: BTreeMap<String, PayloadSummary> = BTreeMap::new();
        let mut all = self.store.payload_versions().await?;
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
    pub async fn versions(&self, name: &str) -> Result<Vec<PayloadVersion>> {
        let mut v: Vec<PayloadVersion> = self
            .store
            .payload_versions()
            .await?
            .into_iter()
            .filter(|v| v.name == name)
            .collect();
        if v.is_empty() {
            return Err(PayloadError::NoPayload {
                name: name.to_string(),
            });
        }
        v.sort_by_key(|a| a.created_at);
        Ok(v)
    }

    pub async fn get(&self, name: &str, version: &str) -> Result<PayloadVersion> {
        self.store
            .payload_version(name, version)
            .await?
            .ok_or_else(|| not_found(name, version))
    }
}

fn not_found(name: &str, version: &str) -> PayloadError {
    PayloadError::NoVersion {
        name: name.to_string(),
        version: version.to_string(),
    }
}

impl Payloads {
    /// What references `name@version`: node specs (own, rollout overrides included) and
    /// fragments (which is what effective specs are merged from), as human-readable strings.
    async fn references(&self, name: &str, version: &str) -> Result<Vec<String>> {
        let uses = |s: &NodeSpec| {
            s.payloads
                .iter()
                .any(|p| p.name == name && p.version == version)
        };
        let mut out = Vec::new();
        for (id, rec) in self.store.specs().await? {
            if uses(&rec.own)
                || rec.sessions.values().any(uses)
                || rec
                    .payload_overrides
                    .get(name)
                    .is_some_and(|v| v == version)
            {
                out.push(format!("node {id}"));
            }
        }
        for f in self.store.fragments().await? {
            if uses(&f.spec) {
                out.push(format!("fragment {}", f.name));
            }
        }
        // An active rollout may still move nodes to, or back to, these versions.
        for r in self.store.rollouts::<steward_proto::Rollout>().await? {
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
    pub async fn delete(&self, name: &str, version: &str, cred: &Actor) -> Result<PayloadVersion> {
        for _ in 0..ATTEMPTS {
            match self.delete_once(name, version, cred).await {
                Err(PayloadError::Store(StoreError::Stale)) => continue,
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
    async fn delete_once(&self, name: &str, version: &str, cred: &Actor) -> Result<PayloadVersion> {
        // The spec lock first: no spec write of this process can pin this version while it is being
        // deleted; the spec epoch does the same for other replicas.
        let _specs = self.gate.lock().await;
        let _guard = self.lock.lock().await;
        let epoch = self.store.spec_epoch().await?;
        let pv = self.get(name, version).await?;
        let refs = self.references(name, version).await?;
        if !refs.is_empty() {
            return Err(PayloadError::InUse {
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
        self.store
            .remove_payload_version(epoch, name, version)
            .await?;
        let shared = self
            .store
            .payload_versions()
            .await?
            .iter()
            .any(|v| v.sha256 == pv.sha256);
        if !shared {
            self.blobs.remove(&pv.sha256).await?;
            // Other replicas drop their copies at their next start (unreferenced blobs).
            self.store.forget_blob(&pv.sha256).await?;
        }
        self.events
            .record(
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
    pub async fn pin(&self, spec: &mut NodeSpec, prefix: &str) -> Result<()> {
        let mut problems = Vec::new();
        for (i, p) in spec.payloads.iter_mut().enumerate() {
            let Some(v) = self.store.payload_version(&p.name, &p.version).await? else {
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
            Err(PayloadError::Unresolved(problems))
        }
    }

    /// Applies per-node rollout overrides (payload name -> version) to an effective spec, pinning
    /// the overriding version's sha256 and size.
    pub async fn apply_overrides(
        &self,
        spec: &mut NodeSpec,
        overrides: &BTreeMap<String, String>,
    ) -> Result<()> {
        for p in spec.payloads.iter_mut() {
            let Some(version) = overrides.get(&p.name) else {
                continue;
            };
            let v = self
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
}
