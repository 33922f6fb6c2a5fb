//! Payloads: versioned, content-addressed files (and `docker save` tarballs) deployed to paths
//! under the node's allowed roots, verified by sha256, attested on every pass and restored when
//! they drift. This module owns the blob cache (`<data_dir>/blobs/`), the record of what the
//! agent deployed (`state/payloads.json`, through the store) and every file it writes.
//!
//! One pass ([`PayloadPhase::reconcile`]), per payload (`deploy.rs`): check the path against
//! the policy ([`policy`]), look at the file ([`attest`]: cheap stat check, full hash when it
//! changed or is due), decide ([`plan`]), then deploy or restore (download into the cache with
//! resume ([`fetch`]), copy into a temp file next to the target while hashing, fsync, rename
//! ([`install`])), load `docker-image` payloads into the engine, and note the workloads
//! `on_change` names (restarted by their kind's phase). Files the agent did not deploy are
//! never replaced (unless they already hold the expected content, which the agent then records
//! as its own).

pub mod attest;
mod deploy;
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
    NodeSpec, PayloadAttestation, PayloadKind, ResourceKind, ResourceState, ResourceStatus,
    WorkloadRef,
};
use tracing::{info_span, Instrument};

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
