//! Payload blobs across registry replicas (etcd store): blobs stay files in each replica's data
//! dir and the store records who holds which (`store/replicas.rs`). An upload is acknowledged
//! once `blob_copies` replicas hold the blob (pushed with `PUT /v1/blobs/{sha256}`); a replica
//! asked for a blob it lacks fetches it from a holder (`GET /v1/blobs/{sha256}`), checks its
//! sha256 while storing it, and serves it. Replicas authenticate to each other with the admin
//! token they share.

use std::time::Duration;

use futures_util::TryStreamExt;
use rand::seq::SliceRandom;

use super::blobs::{BlobError, Blobs};
use crate::store::{Store, StoreError};

/// Errors of copying blobs between replicas.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "payload content {sha256} is stored on {stored} replica(s) but {wanted} are required \
         (blob_copies): start more replicas or lower blob_copies"
    )]
    TooFewCopies {
        sha256: String,
        stored: usize,
        wanted: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// The token replicas present to each other (the shared admin token; never printed).
#[derive(Clone)]
pub struct PeerToken(String);

impl PeerToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }
}

impl std::fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerToken(<redacted>)")
    }
}

/// This replica as a peer of the others.
#[derive(Debug, Clone)]
pub struct Peers {
    pub me: String,
    pub url: String,
    /// Replicas that must hold a blob before its upload is acknowledged (fewer when fewer run).
    pub copies: usize,
    token: PeerToken,
    http: reqwest::Client,
}

impl Peers {
    pub fn new(
        me: String,
        url: String,
        copies: usize,
        token: PeerToken,
        http: reqwest::Client,
    ) -> Self {
        Self {
            me,
            url,
            copies,
            token,
            http,
        }
    }

    /// Registers this replica and records the blobs its data dir holds (at start-up).
    pub async fn announce(&self, store: &Store, blobs: &Blobs) -> Result<usize, PeerError> {
        store.register_replica(&self.me, &self.url).await?;
        let held = blobs.list();
        store.record_blob_copies(&self.me, &held).await?;
        Ok(held.len())
    }

    /// Copies a blob this replica just stored to other replicas until `copies` hold it.
    #[tracing::instrument(skip_all, fields(sha256 = %sha256))]
    pub async fn replicate(
        &self,
        store: &Store,
        blobs: &Blobs,
        sha256: &str,
    ) -> Result<usize, PeerError> {
        store
            .record_blob_copies(&self.me, &[sha256.to_string()])
            .await?;
        let mut others: Vec<(String, String)> = store
            .replicas()
            .await?
            .into_iter()
            .filter(|(id, _)| *id != self.me)
            .collect();
        let wanted = self.copies.min(others.len() + 1);
        let holders = store.blob_holders(sha256).await?;
        let mut stored = 1 + others.iter().filter(|(id, _)| holders.contains(id)).count();
        others.retain(|(id, _)| !holders.contains(id));
        others.shuffle(&mut rand::thread_rng());
        for (id, url) in others {
            if stored >= wanted {
                break;
            }
            match self.push(blobs, sha256, &url).await {
                Ok(()) => stored += 1,
                Err(e) => {
                    tracing::warn!(peer = %id, error = %e, "copying a blob to a replica failed")
                }
            }
        }
        if stored < wanted {
            return Err(PeerError::TooFewCopies {
                sha256: sha256.to_string(),
                stored,
                wanted,
            });
        }
        Ok(stored)
    }

    async fn push(&self, blobs: &Blobs, sha256: &str, url: &str) -> anyhow::Result<()> {
        let file = tokio::fs::File::open(blobs.path(sha256)).await?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let resp = self
            .http
            .put(format!("{url}/v1/blobs/{sha256}"))
            .bearer_auth(&self.token.0)
            .timeout(Duration::from_secs(3600))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "{url} answered {}",
            resp.status()
        );
        Ok(())
    }

    /// Fetches a blob this replica lacks from a replica holding it, checking its sha256 while
    /// storing it. `false` when no running replica has it.
    #[tracing::instrument(skip_all, fields(sha256 = %sha256))]
    pub async fn fetch(
        &self,
        store: &Store,
        blobs: &Blobs,
        sha256: &str,
    ) -> Result<bool, PeerError> {
        let holders = store.blob_holders(sha256).await?;
        for (id, url) in store.replicas().await? {
            if id == self.me || !holders.contains(&id) {
                continue;
            }
            match self.pull(blobs, sha256, &url).await {
                Ok(()) => {
                    store
                        .record_blob_copies(&self.me, &[sha256.to_string()])
                        .await?;
                    tracing::info!(peer = %id, "blob fetched from a replica");
                    return Ok(true);
                }
                Err(e) => {
                    tracing::warn!(peer = %id, error = %e, "fetching a blob from a replica failed")
                }
            }
        }
        Ok(false)
    }

    async fn pull(&self, blobs: &Blobs, sha256: &str, url: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(format!("{url}/v1/blobs/{sha256}"))
            .bearer_auth(&self.token.0)
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "{url} answered {}",
            resp.status()
        );
        let ing = blobs
            .ingest(resp.bytes_stream().map_err(|e| e.to_string()), Some(sha256))
            .await?;
        blobs.commit(ing).await?;
        Ok(())
    }
}
