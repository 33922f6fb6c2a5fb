//! Payload contents as files named by their sha256 under `<data_dir>/blobs/`: streamed in
//! (hashed on the way, never whole in memory), fsynced and renamed into place, stored once per
//! content, removed when no version references them any more.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The disk holding the blobs is full (the temporary file is removed).
    #[error(
        "payload blob store at {} is out of disk space (ENOSPC): free space or delete payload versions",
        .dir.display()
    )]
    Full {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the request body failed after {received} bytes: {reason}")]
    Body { received: u64, reason: String },
    #[error("the content's sha256 is {actual}, but x-steward-sha256 said {expected}; nothing was stored")]
    Mismatch { expected: String, actual: String },
}

/// Content that has been received into a temporary file and hashed, not yet in place. The
/// temporary file is removed when this is dropped without [`Blobs::commit`].
#[derive(Debug)]
pub struct Ingested {
    pub sha256: String,
    pub size: u64,
    tmp: Option<PathBuf>,
}

impl Drop for Ingested {
    fn drop(&mut self) {
        if let Some(p) = self.tmp.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The blob directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

/// True when `s` is 64 lower-case hex characters.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BlobError + 'a {
    move |source| {
        if crate::disk::is_out_of_space(&source) {
            // `path` is in `blobs/` or `blobs/.tmp/`: name the blob directory.
            let dir = path
                .ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "blobs"))
                .unwrap_or(path)
                .to_path_buf();
            return BlobError::Full { dir, source };
        }
        BlobError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Blobs {
    /// Blobs under `<data_dir>/blobs` (created on first use).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("blobs"),
        }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join(".tmp")
    }

    /// Where the blob with this sha256 is (or would be) stored. `sha256` must be checked with
    /// [`is_sha256`] first.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    pub async fn exists(&self, sha256: &str) -> bool {
        tokio::fs::try_exists(self.path(sha256))
            .await
            .unwrap_or(false)
    }

    /// Streams `body` to a temporary file while hashing it, then fsyncs it. With `expected`, a
    /// different hash is an error and the file is removed.
    pub async fn ingest<S, E>(&self, body: S, expected: Option<&str>) -> Result<Ingested, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let tmp_dir = self.tmp_dir();
        // Owner-only: payloads may hold anything (the data dir's sled files are private too).
        let mut dirs = tokio::fs::DirBuilder::new();
        dirs.recursive(true).mode(0o700);
        dirs.create(&tmp_dir)
            .await
            .map_err(io("creating", &tmp_dir))?;
        let tmp = tmp_dir.join(format!("upload-{}", uuid::Uuid::new_v4()));
        let mut ing = Ingested {
            sha256: String::new(),
            size: 0,
            tmp: Some(tmp.clone()),
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(io("creating", &tmp))?;
        let mut hasher = Sha256::new();
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body {
                received: ing.size,
                reason: e.to_string(),
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io("writing", &tmp))?;
            ing.size += chunk.len() as u64;
        }
        file.flush().await.map_err(io("writing", &tmp))?;
        file.sync_all().await.map_err(io("syncing", &tmp))?;
        drop(file);
        ing.sha256 = hex::encode(hasher.finalize());
        if let Some(exp) = expected {
            if exp != ing.sha256 {
                return Err(BlobError::Mismatch {
                    expected: exp.to_string(),
                    actual: ing.sha256.clone(),
                });
            }
        }
        Ok(ing)
    }

    /// Puts received content in place as `blobs/<sha256>`; when that content is already
    /// stored, the new copy is dropped. Returns true when a new file was stored.
    pub async fn commit(&self, mut ing: Ingested) -> Result<bool, BlobError> {
        let dest = self.path(&ing.sha256);
        if self.exists(&ing.sha256).await {
            return Ok(false); // `ing` removes its temporary file when dropped
        }
        let Some(tmp) = ing.tmp.take() else {
            return Ok(false);
        };
        if let Err(e) = tokio::fs::rename(&tmp, &dest).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io("renaming into", &dest)(e));
        }
        // The rename is durable once the directory is synced.
        let dir = self.dir.clone();
        let synced = tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        synced.map_err(io("syncing", &self.dir))?;
        Ok(true)
    }

    /// Start-up housekeeping: removes uploads a crash left in `.tmp/`, and blob files in
    /// `unreferenced` says no version uses (a crash between storing a blob and recording its
    /// version). Returns how many files were removed.
    pub fn collect_at_start(&self, unreferenced: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        if let Ok(rd) = std::fs::read_dir(self.tmp_dir()) {
            for e in rd.flatten() {
                removed += usize::from(std::fs::remove_file(e.path()).is_ok());
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_sha256(&name) && unreferenced(&name) {
                    removed += usize::from(std::fs::remove_file(e.path()).is_ok());
                }
            }
        }
        removed
    }

    /// The sha256 of every blob stored here.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_sha256(n))
            .collect()
    }

    /// Removes a blob (absent is fine).
    pub async fn remove(&self, sha256: &str) -> Result<(), BlobError> {
        let p = self.path(sha256);
        match tokio::fs::remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &p)(e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn ingest_hashes_and_dedups() {
        let d = tempfile::tempdir().unwrap();
        let b = Blobs::new(d.path());
        let ing = b
            .ingest(chunks(&[b"hello ", b"world"]), None)
            .await
            .unwrap();
        assert_eq!(
            ing.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(ing.size, 11);
        let sha = ing.sha256.clone();
        assert!(b.commit(ing).await.unwrap());
        let again = b
            .ingest(chunks(&[b"hello world"]), Some(&sha))
            .await
            .unwrap();
        assert!(!b.commit(again).await.unwrap());
        assert_eq!(std::fs::read(b.path(&sha)).unwrap(), b"hello world");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("blobs"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(b.tmp_dir()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn mismatch_stores_nothing() {
        let d = tempfile::tempdir().unwrap();
        let b = Blobs::new(d.path());
        let err = b
            .ingest(chunks(&[b"x"]), Some(&"0".repeat(64)))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        assert_eq!(std::fs::read_dir(b.tmp_dir()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn start_up_collects_interrupted_uploads_and_orphans() {
        let d = tempfile::tempdir().unwrap();
        let b = Blobs::new(d.path());
        let keep = b.ingest(chunks(&[b"keep"]), None).await.unwrap();
        let keep_sha = keep.sha256.clone();
        b.commit(keep).await.unwrap();
        let orphan = b.ingest(chunks(&[b"orphan"]), None).await.unwrap();
        let orphan_sha = orphan.sha256.clone();
        b.commit(orphan).await.unwrap();
        std::fs::write(b.tmp_dir().join("upload-x"), b"half").unwrap();
        let removed = b.collect_at_start(|sha| sha != keep_sha);
        assert_eq!(removed, 2);
        assert!(b.path(&keep_sha).exists());
        assert!(!b.path(&orphan_sha).exists());
        assert_eq!(std::fs::read_dir(b.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn sha_format() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(!is_sha256(&"A".repeat(64)));
        assert!(!is_sha256("../etc/passwd"));
    }
}
