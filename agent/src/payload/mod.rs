//! Payloads: versioned, content-addressed files (and `docker save` tarballs) deployed to paths
//! under the node's allowed roots, verified by sha256, attested on every pass and restored when
//! they drift. This module owns the blob cache (`<data_dir>/blobs/`), the record of what the
//! agent deployed (`state/payloads.json`, through the store) and every file it writes.
//!
//! One pass ([`PayloadPhase::reconcile`]), per payload: check the path against the policy
//! ([`policy`]), look at the file ([`attest`]: cheap stat check, full hash when it changed or
//! is due), decide ([`plan`]), then deploy or restore (download into the cache with resume
//! ([`fetch`]), copy into a temp file next to the target while hashing, fsync, rename
//! ([`install`])), load `docker-image` payloads into the engine, and note the workloads `on_change` names
//! (restarted by their kind's phase). Files the agent did not deploy are never replaced (unless they already
//! hold the expected content, which the agent then records as its own).

pub mod attest;
mod error;
pub mod fetch;
pub mod install;
pub mod plan;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use steward_proto::{
    NodeSpec, PayloadAttestation, PayloadKind, PayloadSpec, ResourceKind, ResourceState,
    ResourceStatus, WorkloadRef,
};
use tracing::{info, info_span, warn, Instrument};

use crate::client::RegistryClient;
use crate::docker::engine::ContainerEngine;
use crate::docker::Docker;
use crate::pass::Pass;
use crate::reconcile::Policy;
use crate::store::{Kept, Record, Store};
pub use attest::{hash_file, Hashed};
pub use error::PayloadError;
pub use plan::DriftPolicy;

/// Full re-hash period when `policy.attest_rehash_secs` is not set.
pub const DEFAULT_REHASH_SECS: u64 = 3600;

/// What the agent deployed at a path (kept in the store, keyed by path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRecord {
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// The last full hash (so a restart does not re-hash everything at once).
    #[serde(default)]
    pub hashed: Option<Hashed>,
    /// The sha256 last loaded into the Docker engine (`docker-image` payloads).
    #[serde(default)]
    pub image_loaded: Option<String>,
    /// The image references that load produced (checked every pass; loaded again when one is
    /// gone from the engine).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

/// The payload records, by path (`state/payloads.json`).
pub type PayloadRecords = BTreeMap<String, PayloadRecord>;

impl Record for PayloadRecords {
    const KEY: &'static str = "payloads";
}

/// The payload side of the reconciler.
pub struct Payloads {
    blobs: Option<PathBuf>,
    client: Option<Arc<RegistryClient>>,
    records: Kept<PayloadRecords>,
    /// The last full hash of every payload path seen (owned or not).
    hashes: HashMap<String, Hashed>,
    attestations: Vec<PayloadAttestation>,
    /// Workloads to restart because a payload they depend on changed (`on_change`).
    restarts: BTreeSet<WorkloadRef>,
    /// Blobs the cache keeps although the spec no longer names them (rollback targets).
    retained: BTreeSet<String>,
}

impl Default for Payloads {
    fn default() -> Self {
        Payloads::disabled()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn status(name: &str, state: ResourceState, error: Option<String>) -> ResourceStatus {
    ResourceStatus::new(ResourceKind::Payload, name, state, error)
}

/// Whether a pass over `spec` needs the Docker engine (image loads or container restarts).
pub fn needs_docker(spec: &NodeSpec) -> bool {
    spec.payloads
        .iter()
        .any(|p| p.kind == PayloadKind::DockerImage)
}

impl Payloads {
    /// Payloads with the blob cache under `data_dir/blobs`, records in `store`, and blobs
    /// downloaded from `client` (`None`: only cached blobs can be deployed).
    pub fn new(data_dir: &Path, store: Option<Store>, client: Option<Arc<RegistryClient>>) -> Self {
        Payloads {
            blobs: Some(data_dir.join("blobs")),
            client,
            records: Kept::new(store),
            hashes: HashMap::new(),
            attestations: Vec::new(),
            restarts: BTreeSet::new(),
            retained: BTreeSet::new(),
        }
    }

    /// No data dir: every payload is reported failed with the reason.
    pub fn disabled() -> Self {
        Payloads {
            blobs: None,
            client: None,
            records: Kept::new(None),
            hashes: HashMap::new(),
            attestations: Vec::new(),
            restarts: BTreeSet::new(),
            retained: BTreeSet::new(),
        }
    }

    fn load_records(&mut self) -> PayloadRecords {
        if self.records.is_loaded() {
            return self.records.get().clone();
        }
        let recs = self.records.get().clone();
        for (path, r) in &recs {
            if let Some(h) = &r.hashed {
                self.hashes.entry(path.clone()).or_insert_with(|| h.clone());
            }
        }
        recs
    }

    /// One pass over the spec's payloads (see the module docs); returns a status per payload
    /// and keeps the attestations for [`PayloadPhase::attestations`]. Once `pass` is
    /// superseded, the payloads left are not looked at and nothing is removed; the records of
    /// what was deployed are kept and its `on_change` restarts are still owed.
    async fn deploy_all(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        docker: Option<&Docker>,
        pass: &Pass,
    ) -> Vec<ResourceStatus> {
        self.attestations.clear();
        let Some(blobs) = self.blobs.clone() else {
            return spec
                .payloads
                .iter()
                .map(|p| {
                    status(
                        &p.name,
                        ResourceState::Failed,
                        Some(PayloadError::NoDataDir.to_string()),
                    )
                })
                .collect();
        };
        let mut records = self.load_records();
        let mut out = Vec::new();
        pass.planned(spec.payloads.len());
        for p in &spec.payloads {
            if pass.superseded().is_some() {
                break;
            }
            let span = info_span!("payload", name = %p.name, version = %p.version);
            let (st, att, changed) = self
                .one(p, policy, docker, &blobs, &mut records)
                .instrument(span)
                .await;
            if changed {
                // Restarted by the reconciler through their kind's phase, after this one.
                let on_change = p.on_change.iter().flat_map(|o| o.workloads());
                self.restarts.extend(on_change);
            }
            out.push(st);
            self.attestations.extend(att);
            pass.step();
        }
        let wanted: BTreeSet<&str> = spec.payloads.iter().map(|p| p.path.as_str()).collect();
        let removals: Vec<String> = match pass.stopped_by() {
            Some(_) => Vec::new(), // the newer pass decides what goes
            None => plan::removals(&records, &wanted)
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        for path in removals {
            if let Some(r) = records.remove(&path) {
                self.remove(&path, &r, policy).await;
            }
            self.hashes.remove(&path);
        }
        let keep: BTreeSet<&str> = spec
            .payloads
            .iter()
            .filter_map(|p| p.sha256.as_deref())
            .chain(self.retained.iter().map(String::as_str))
            .collect();
        if pass.stopped_by().is_none() {
            fetch::collect_garbage(&blobs, &keep);
        }
        self.records.set(records);
        self.records.persist().await;
        out
    }

    /// One payload: returns its status, its attestation and whether its content changed.
    async fn one(
        &mut self,
        p: &PayloadSpec,
        policy: &Policy,
        docker: Option<&Docker>,
        blobs: &Path,
        records: &mut PayloadRecords,
    ) -> (ResourceStatus, Option<PayloadAttestation>, bool) {
        let failed = |e: String| status(&p.name, ResourceState::Failed, Some(e));
        let Some(expected) = p.sha256.clone() else {
            let e = PayloadError::Unpinned {
                name: p.name.clone(),
            };
            return (failed(e.to_string()), None, false);
        };
        let attest = |actual: Option<String>| PayloadAttestation {
            name: p.name.clone(),
            version: p.version.clone(),
            path: p.path.clone(),
            expected: expected.clone(),
            actual,
        };
        let target = match policy::check_path(&p.path, &policy.payload_roots) {
            Ok(t) => t,
            Err(e) => return (failed(e.to_string()), Some(attest(None)), false),
        };
        let rehash = policy.attest_rehash_secs.unwrap_or(DEFAULT_REHASH_SECS);
        let last = self.hashes.get(&p.path).cloned();
        let t = target.clone();
        let now = now_secs();
        let seen = tokio::task::spawn_blocking(move || {
            let dir = policy::open_dir(&t, false)?;
            attest::observe(
                dir.as_ref(),
                &t.file_name,
                &t.path,
                last.as_ref(),
                rehash,
                now,
            )
        })
        .await
        .unwrap_or_else(|e| Err(PayloadError::Docker(format!("attestation task: {e}"))));
        let seen = match seen {
            Ok(s) => s,
            Err(e) => return (failed(e.to_string()), Some(attest(None)), false),
        };
        if seen.rehashed {
            crate::metrics::get().payload_checks.inc();
        }
        match &seen.hashed {
            Some(h) => self.hashes.insert(p.path.clone(), h.clone()),
            None => self.hashes.remove(&p.path),
        };
        let found = seen.on_disk.actual();
        let recorded = records.get(&p.path).map(|r| r.sha256.clone());
        let decision = plan::decide(
            &expected,
            &seen.on_disk,
            recorded.as_deref(),
            policy.payload_drift,
        );
        let (mut st, actual, changed) = match decision {
            plan::Decision::Converged { record } => {
                if record {
                    info!(path = %p.path, "the expected content is already there; recording it as deployed");
                    self.record(records, p, &expected, seen.hashed.clone());
                }
                if let (Some(h), DriftPolicy::Restore) = (&seen.hashed, policy.payload_drift) {
                    self.fix_mode_owner(p, &target, h).await;
                }
                (
                    status(&p.name, ResourceState::Converged, None),
                    found,
                    false,
                )
            }
            plan::Decision::Deploy(reason) => {
                info!(path = %p.path, %reason, "deploying");
                match self.deploy(p, &target, &expected, blobs).await {
                    Ok(h) => {
                        self.record(records, p, &expected, Some(h));
                        (
                            status(&p.name, ResourceState::Converged, None),
                            Some(expected.clone()),
                            true,
                        )
                    }
                    Err(e) => {
                        warn!(path = %p.path, error = %e, "deploy failed");
                        (failed(e.to_string()), found, false)
                    }
                }
            }
            plan::Decision::Restore(reason) => {
                warn!(path = %p.path, %reason, "payload drifted; restoring");
                match self.deploy(p, &target, &expected, blobs).await {
                    Ok(h) => {
                        self.record(records, p, &expected, Some(h));
                        let msg = format!("restored after drift: {reason}");
                        (
                            status(&p.name, ResourceState::Drifted, Some(msg)),
                            found,
                            true,
                        )
                    }
                    Err(e) => {
                        let msg = format!("{reason}; restoring it failed: {e}");
                        (
                            status(&p.name, ResourceState::Drifted, Some(msg)),
                            found,
                            false,
                        )
                    }
                }
            }
            plan::Decision::ReportDrift(reason) => {
                warn!(path = %p.path, %reason, "payload drifted; reporting only (policy)");
                let msg = format!("{reason}; left as found (policy.payload_drift = \"report\")");
                (
                    status(&p.name, ResourceState::Drifted, Some(msg)),
                    found,
                    false,
                )
            }
            plan::Decision::Conflict(reason) => (
                status(&p.name, ResourceState::Conflict, Some(reason)),
                found,
                false,
            ),
        };
        let holds_expected = matches!(st.state, ResourceState::Converged)
            || (st.state == ResourceState::Drifted && changed);
        if p.kind == PayloadKind::DockerImage && holds_expected {
            if let Err(e) = self.load_image(p, &expected, docker, records).await {
                st = failed(e.to_string());
            }
        }
        (st, Some(attest(actual)), changed)
    }

    fn record(
        &mut self,
        records: &mut PayloadRecords,
        p: &PayloadSpec,
        sha256: &str,
        hashed: Option<Hashed>,
    ) {
        if let Some(h) = &hashed {
            self.hashes.insert(p.path.clone(), h.clone());
        }
        let (image_loaded, images) = records
            .get(&p.path)
            .filter(|r| r.image_loaded.as_deref() == Some(sha256))
            .map(|r| (r.image_loaded.clone(), r.images.clone()))
            .unwrap_or_default();
        records.insert(
            p.path.clone(),
            PayloadRecord {
                name: p.name.clone(),
                version: p.version.clone(),
                sha256: sha256.to_string(),
                hashed,
                image_loaded,
                images,
            },
        );
    }

    /// Download (or take from the cache) and install; returns the installed file's hash record.
    async fn deploy(
        &self,
        p: &PayloadSpec,
        target: &policy::Target,
        expected: &str,
        blobs: &Path,
    ) -> Result<Hashed, PayloadError> {
        let mode = install::parse_mode(p.mode.as_deref())?;
        let owner = install::resolve_owner(p.owner.as_deref())?;
        let fetched = fetch::ensure_blob(self.client.as_deref(), blobs, expected, p.size).await?;
        let (t, blob, sha) = (target.clone(), fetched.path.clone(), expected.to_string());
        let res = tokio::task::spawn_blocking(move || {
            let dir = policy::open_dir(&t, true)?.ok_or_else(|| PayloadError::RootMissing {
                root: t.root.clone(),
            })?;
            install::install(
                &dir,
                &install::Install {
                    target: &t,
                    blob: &blob,
                    sha256: &sha,
                    mode,
                    owner,
                },
            )
        })
        .await
        .unwrap_or_else(|e| Err(PayloadError::Docker(format!("install task: {e}"))));
        match res {
            Ok(meta) => {
                info!(path = %p.path, sha256 = expected, "payload installed");
                Ok(Hashed {
                    sha256: expected.to_string(),
                    meta,
                    at: now_secs(),
                })
            }
            Err(e) => {
                if matches!(e, PayloadError::HashMismatch { .. }) {
                    // The cached copy went bad on disk: fetch it again next time.
                    let _ = std::fs::remove_file(&fetched.path);
                }
                Err(e)
            }
        }
    }

    async fn fix_mode_owner(&self, p: &PayloadSpec, target: &policy::Target, h: &Hashed) {
        let (Ok(mode), Ok(owner)) = (
            install::parse_mode(p.mode.as_deref()),
            install::resolve_owner(p.owner.as_deref()),
        ) else {
            return;
        };
        let (t, meta) = (target.clone(), h.meta);
        let res = tokio::task::spawn_blocking(move || {
            let Some(dir) = policy::open_dir(&t, false)? else {
                return Ok(false);
            };
            install::fix_mode_owner(&dir, &t.file_name, &t.path, mode, owner, &meta)
        })
        .await;
        match res {
            Ok(Ok(true)) => info!(path = %p.path, "mode/owner put back"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(path = %p.path, error = %e, "putting mode/owner back failed"),
            Err(e) => warn!(path = %p.path, error = %e, "mode/owner task failed"),
        }
    }

    async fn load_image(
        &self,
        p: &PayloadSpec,
        expected: &str,
        docker: Option<&Docker>,
        records: &mut PayloadRecords,
    ) -> Result<(), PayloadError> {
        let loaded = records
            .get(&p.path)
            .filter(|r| r.image_loaded.as_deref() == Some(expected))
            .map(|r| r.images.clone());
        if let (Some(refs), Some(d)) = (&loaded, docker) {
            let mut all = true;
            for r in refs {
                if !d.image_exists(r).await.unwrap_or(true) {
                    warn!(path = %p.path, image = %r, "an image of a docker-image payload is gone from the engine; loading it again");
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
        } else if loaded.is_some() {
            return Ok(()); // no engine to check against right now
        }
        let d = docker.ok_or_else(|| {
            PayloadError::Docker(
                "the Docker engine is unreachable, so the image cannot be loaded".into(),
            )
        })?;
        let refs = d
            .load_image(Path::new(&p.path))
            .await
            .map_err(|e| PayloadError::Docker(format!("{e:#}")))?;
        info!(path = %p.path, images = ?refs, "docker-image payload loaded");
        if let Some(r) = records.get_mut(&p.path) {
            r.image_loaded = Some(expected.to_string());
            r.images = refs;
        }
        Ok(())
    }

    /// A recorded payload the spec no longer wants: its file is removed when it still holds
    /// what the agent deployed; otherwise it is left in place. The record goes either way.
    async fn remove(&mut self, path: &str, r: &PayloadRecord, policy: &Policy) {
        let Ok(t) = policy::check_path(path, &policy.payload_roots) else {
            return;
        };
        let (sha, last) = (r.sha256.clone(), self.hashes.get(path).cloned());
        let rehash = policy.attest_rehash_secs.unwrap_or(DEFAULT_REHASH_SECS);
        let now = now_secs();
        let res = tokio::task::spawn_blocking(move || {
            let Some(dir) = policy::open_dir(&t, false)? else {
                return Ok(false);
            };
            let seen = attest::observe(
                Some(&dir),
                &t.file_name,
                &t.path,
                last.as_ref(),
                rehash,
                now,
            )?;
            if seen.on_disk == plan::OnDisk::File(sha) {
                install::remove(&dir, &t)?;
                return Ok(true);
            }
            Ok::<_, PayloadError>(false)
        })
        .await;
        match res {
            Ok(Ok(true)) => info!(path, "removed a payload the spec no longer wants"),
            Ok(Ok(false)) => info!(
                path,
                "a payload left the spec; its file was changed or is gone, so it is left in place"
            ),
            Ok(Err(e)) => warn!(path, error = %e, "removing a payload failed"),
            Err(e) => warn!(path, error = %e, "payload removal task failed"),
        }
    }
}

/// The payloads as the reconcile pass sees them: deployed before the workloads that use them.
/// [`Payloads`] is the real one; the pass's unit tests fake it.
#[async_trait]
pub trait PayloadPhase: Send + Sync {
    /// Blobs the cache keeps although the spec no longer names them.
    fn retain_blobs(&mut self, keep: BTreeSet<String>);
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        engine: Option<&dyn ContainerEngine>,
        pass: &Pass,
    ) -> Vec<ResourceStatus>;
    /// The workloads to restart because a payload they restart on changed.
    fn take_restarts(&mut self) -> BTreeSet<WorkloadRef>;
    fn attestations(&self) -> Vec<PayloadAttestation>;
}

#[async_trait]
impl PayloadPhase for Payloads {
    /// The payload versions a rollback may return to.
    fn retain_blobs(&mut self, keep: BTreeSet<String>) {
        self.retained = keep;
    }
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        policy: &Policy,
        engine: Option<&dyn ContainerEngine>,
        pass: &Pass,
    ) -> Vec<ResourceStatus> {
        let docker = engine.and_then(|e| e.docker());
        self.deploy_all(spec, policy, docker, pass).await
    }
    fn take_restarts(&mut self) -> BTreeSet<WorkloadRef> {
        std::mem::take(&mut self.restarts)
    }
    /// The attestations of the last pass.
    fn attestations(&self) -> Vec<PayloadAttestation> {
        self.attestations.clone()
    }
}
