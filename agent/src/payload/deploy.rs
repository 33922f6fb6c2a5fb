//! One payload's step of the pass: check its path, look at its file, decide, deploy or
//! restore it, load a `docker-image` payload into the engine; and the removal of a payload the
//! spec no longer wants.

use std::path::Path;

use steward_proto::{PayloadAttestation, PayloadKind, PayloadSpec, ResourceState, ResourceStatus};
use tracing::{info, warn};

use super::{
    attest, fetch, install, now_secs, plan, policy, status, DriftPolicy, Hashed, PayloadError,
    PayloadRecord, PayloadRecords, Payloads, DEFAULT_REHASH_SECS,
};
use crate::docker::Docker;
use crate::reconcile::Policy;

/// One payload being reconciled: its spec, its path checked against the policy, the sha256 its
/// spec pins and the blob cache.
struct Job<'a> {
    p: &'a PayloadSpec,
    target: policy::Target,
    expected: String,
    blobs: &'a Path,
}

impl Payloads {
    /// One payload: returns its status, its attestation and whether its content changed.
    pub(super) async fn one(
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
        let job = Job {
            p,
            target,
            expected: expected.clone(),
            blobs,
        };
        let seen = match self.look(&job, policy).await {
            Ok(s) => s,
            Err(e) => return (failed(e.to_string()), Some(attest(None)), false),
        };
        let (mut st, actual, changed) = self.act(&job, &seen, policy, records).await;
        let holds_expected = matches!(st.state, ResourceState::Converged)
            || (st.state == ResourceState::Drifted && changed);
        if p.kind == PayloadKind::DockerImage && holds_expected {
            if let Err(e) = self.load_image(p, &expected, docker, records).await {
                st = failed(e.to_string());
            }
        }
        (st, Some(attest(actual)), changed)
    }

    /// Looks at the payload's file (stat check; full hash when it changed or is due) and keeps
    /// its last full hash.
    async fn look(&mut self, job: &Job<'_>, policy: &Policy) -> Result<attest::Seen, PayloadError> {
        let rehash = policy.attest_rehash_secs.unwrap_or(DEFAULT_REHASH_SECS);
        let last = self.hashes.get(&job.p.path).cloned();
        let t = job.target.clone();
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
        .unwrap_or_else(|e| Err(PayloadError::Docker(format!("attestation task: {e}"))))?;
        if seen.rehashed {
            crate::metrics::get().payload_checks.inc();
        }
        match &seen.hashed {
            Some(h) => self.hashes.insert(job.p.path.clone(), h.clone()),
            None => self.hashes.remove(&job.p.path),
        };
        Ok(seen)
    }

    /// Decides from what is on disk and what was recorded, then deploys or restores as decided;
    /// returns the status, the content now at the path and whether it changed.
    async fn act(
        &mut self,
        job: &Job<'_>,
        seen: &attest::Seen,
        policy: &Policy,
        records: &mut PayloadRecords,
    ) -> (ResourceStatus, Option<String>, bool) {
        let (p, expected) = (job.p, job.expected.as_str());
        let found = seen.on_disk.actual();
        let recorded = records.get(&p.path).map(|r| r.sha256.clone());
        let decision = plan::decide(
            expected,
            &seen.on_disk,
            recorded.as_deref(),
            policy.payload_drift,
        );
        match decision {
            plan::Decision::Converged { record } => {
                if record {
                    info!(path = %p.path, "the expected content is already there; recording it as deployed");
                    self.record(records, p, expected, seen.hashed.clone());
                }
                if let (Some(h), DriftPolicy::Restore) = (&seen.hashed, policy.payload_drift) {
                    self.fix_mode_owner(p, &job.target, h).await;
                }
                (
                    status(&p.name, ResourceState::Converged, None),
                    found,
                    false,
                )
            }
            plan::Decision::Deploy(reason) => {
                info!(path = %p.path, %reason, "deploying");
                match self.deploy_and_record(job, records).await {
                    Ok(()) => (
                        status(&p.name, ResourceState::Converged, None),
                        Some(expected.to_string()),
                        true,
                    ),
                    Err(e) => {
                        warn!(path = %p.path, error = %e, "deploy failed");
                        let st = status(&p.name, ResourceState::Failed, Some(e.to_string()));
                        (st, found, false)
                    }
                }
            }
            plan::Decision::Restore(reason) => {
                warn!(path = %p.path, %reason, "payload drifted; restoring");
                let (msg, changed) = match self.deploy_and_record(job, records).await {
                    Ok(()) => (format!("restored after drift: {reason}"), true),
                    Err(e) => (format!("{reason}; restoring it failed: {e}"), false),
                };
                let st = status(&p.name, ResourceState::Drifted, Some(msg));
                (st, found, changed)
            }
            plan::Decision::ReportDrift(reason) => {
                warn!(path = %p.path, %reason, "payload drifted; reporting only (policy)");
                let msg = format!("{reason}; left as found (policy.payload_drift = \"report\")");
                let st = status(&p.name, ResourceState::Drifted, Some(msg));
                (st, found, false)
            }
            plan::Decision::Conflict(reason) => (
                status(&p.name, ResourceState::Conflict, Some(reason)),
                found,
                false,
            ),
        }
    }

    /// Deploys the payload (see [`Payloads::deploy`]) and records it as the agent's.
    async fn deploy_and_record(
        &mut self,
        job: &Job<'_>,
        records: &mut PayloadRecords,
    ) -> Result<(), PayloadError> {
        let h = self
            .deploy(job.p, &job.target, &job.expected, job.blobs)
            .await?;
        self.record(records, job.p, &job.expected, Some(h));
        Ok(())
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
    pub(super) async fn remove(&mut self, path: &str, r: &PayloadRecord, policy: &Policy) {
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
