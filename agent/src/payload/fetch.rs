//! The blob cache (`<data_dir>/blobs/<sha256>`) and resumable downloads into it. A download
//! streams the registry's `GET /v1/blobs/{sha256}` into `<sha256>.partial`, hashing every byte
//! on a blocking thread while the next chunks arrive; an interrupted download resumes from the
//! partial file's length with `Range: bytes=N-` (the prefix is hashed again first). Only a
//! blob whose sha256 (and size) match is renamed into the cache; a corrupt one is deleted.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::attest::HASH_BUF;
use super::PayloadError;
use crate::client::RegistryClient;

/// A download that receives nothing for this long is abandoned (and resumed next pass).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Chunks buffered between the network and the writer thread.
const CHANNEL_CHUNKS: usize = 64;

/// What [`ensure_blob`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    /// Bytes received from the registry this time (0 when the blob was cached).
    pub downloaded: u64,
    /// Where the download started (> 0 when it resumed a partial file).
    pub resumed_from: u64,
}

/// Path of a blob in the cache.
pub fn blob_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(sha256)
}

/// Path of a partial download.
pub fn partial_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.partial"))
}

fn dl_err(sha256: &str, reason: impl Into<String>) -> PayloadError {
    PayloadError::Download {
        sha256: sha256.to_string(),
        reason: reason.into(),
    }
}

/// Makes sure the blob `sha256` (of `size` bytes, when known) is in the cache `dir`, downloading
/// or resuming it from the registry; returns its path.
pub async fn ensure_blob(
    client: Option<&RegistryClient>,
    dir: &Path,
    sha256: &str,
    size: Option<u64>,
) -> Result<Fetched, PayloadError> {
    let path = blob_path(dir, sha256);
    if let Some(cached) = cached_blob(&path, sha256, size).await {
        return Ok(cached);
    }
    let Some(client) = client else {
        return Err(PayloadError::NoRegistry {
            sha256: sha256.to_string(),
            dir: dir.to_path_buf(),
        });
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PayloadError::io("create directory", dir, e))?;
    let partial = partial_path(dir, sha256);
    let (resp, start, hasher) = request_blob(client, &partial, sha256, size).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let p = partial.clone();
    let writer = tokio::task::spawn_blocking(move || write_chunks(&p, start, hasher, rx));
    let failure = receive(resp.bytes_stream(), tx, start, size).await;
    let (hasher, written) = writer
        .await
        .map_err(|e| dl_err(sha256, format!("writer thread: {e}")))?
        .map_err(|e| PayloadError::io("write", &partial, e))?;
    check_complete(&partial, sha256, size, failure, written).await?;
    commit_blob(dir, &partial, &path, sha256, hasher, written).await?;
    info!(
        sha256,
        bytes = written,
        resumed_from = start,
        "blob downloaded and verified"
    );
    Ok(Fetched {
        path,
        downloaded: written - start,
        resumed_from: start,
    })
}

/// The cached blob at `path` when it is there with the right size; a wrong-sized one is deleted.
async fn cached_blob(path: &Path, sha256: &str, size: Option<u64>) -> Option<Fetched> {
    let m = tokio::fs::metadata(path).await.ok()?;
    if size.is_none_or(|s| s == m.len()) {
        return Some(Fetched {
            path: path.to_path_buf(),
            downloaded: 0,
            resumed_from: 0,
        });
    }
    warn!(
        sha256,
        size = m.len(),
        "cached blob has the wrong size; downloading it again"
    );
    let _ = tokio::fs::remove_file(path).await;
    None
}

/// Asks the registry for the blob from where the partial file ends; returns the response, the
/// offset its body starts at and the hasher holding the bytes before it. A partial file the
/// registry cannot resume (416) is deleted and the request made again, once.
async fn request_blob(
    client: &RegistryClient,
    partial: &Path,
    sha256: &str,
    size: Option<u64>,
) -> Result<(reqwest::Response, u64, Sha256), PayloadError> {
    let mut restarted = false;
    loop {
        let p = partial.to_path_buf();
        let (hasher, have) = tokio::task::spawn_blocking(move || hash_prefix(&p, size))
            .await
            .map_err(|e| dl_err(sha256, format!("hashing the partial file: {e}")))??;
        let resp = client
            .blob(sha256, have)
            .await
            .map_err(|e| dl_err(sha256, format!("{e:#}")))?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !range.starts_with(&format!("bytes {have}-")) {
                    return Err(dl_err(
                        sha256,
                        format!("asked for bytes {have}- but got Content-Range {range:?}"),
                    ));
                }
                info!(sha256, from = have, "resuming download");
                return Ok((resp, have, hasher));
            }
            StatusCode::RANGE_NOT_SATISFIABLE if !restarted => {
                // The partial file is complete or longer than the blob: start over once.
                restarted = true;
                let _ = tokio::fs::remove_file(partial).await;
            }
            s if s.is_success() => return Ok((resp, 0, Sha256::new())),
            s => return Err(dl_err(sha256, format!("the registry answered HTTP {s}"))),
        }
    }
}

/// Streams the response body to the writer thread; returns why it stopped early, if it did.
/// Dropping `tx` on return tells the writer the body is over.
async fn receive<B: AsRef<[u8]>, E: std::fmt::Display>(
    stream: impl futures_util::Stream<Item = Result<B, E>>,
    tx: mpsc::Sender<B>,
    start: u64,
    size: Option<u64>,
) -> Option<String> {
    let mut stream = std::pin::pin!(stream);
    let mut received = start;
    loop {
        match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Err(_) => return Some(format!("nothing received for {IDLE_TIMEOUT:?}")),
            Ok(None) => return None,
            Ok(Some(Err(e))) => return Some(format!("the transfer broke off: {e}")),
            Ok(Some(Ok(chunk))) => {
                received += chunk.as_ref().len() as u64;
                if size.is_some_and(|s| received > s) {
                    return Some(format!(
                        "the registry sent more than the {} bytes the spec pins",
                        size.unwrap_or(0)
                    ));
                }
                if tx.send(chunk).await.is_err() {
                    return None; // the writer failed: its error is reported by the caller
                }
            }
        }
    }
}

/// Refuses a download that stopped early or short (keeping the partial file for a resume unless
/// it is longer than the blob).
async fn check_complete(
    partial: &Path,
    sha256: &str,
    size: Option<u64>,
    failure: Option<String>,
    written: u64,
) -> Result<(), PayloadError> {
    if let Some(f) = failure {
        if size.is_some_and(|s| written > s) {
            let _ = tokio::fs::remove_file(partial).await;
        }
        return Err(dl_err(
            sha256,
            format!("{f} after {written} bytes; the download resumes from there next time"),
        ));
    }
    if let Some(s) = size {
        if written < s {
            return Err(dl_err(
                sha256,
                format!("the transfer ended after {written} of {s} bytes; it resumes next time"),
            ));
        }
    }
    Ok(())
}

/// Checks the finished download's sha256 (deleting it on a mismatch) and renames it into the
/// cache, fsyncing the directory.
async fn commit_blob(
    dir: &Path,
    partial: &Path,
    path: &Path,
    sha256: &str,
    hasher: Sha256,
    written: u64,
) -> Result<(), PayloadError> {
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 {
        let _ = tokio::fs::remove_file(partial).await;
        return Err(PayloadError::HashMismatch {
            what: "downloaded blob",
            expected: sha256.to_string(),
            actual,
            bytes: written,
        });
    }
    std::fs::rename(partial, path).map_err(|e| PayloadError::io("rename", path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PayloadError::io("fsync", dir, e))?;
    Ok(())
}

/// Hashes what a partial download already holds (truncating it when it is longer than the
/// blob can be); returns the hasher and the length.
fn hash_prefix(p: &Path, size: Option<u64>) -> Result<(Sha256, u64), PayloadError> {
    let f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Sha256::new(), 0)),
        Err(e) => return Err(PayloadError::io("open", p, e)),
    };
    let len = f
        .metadata()
        .map_err(|e| PayloadError::io("stat", p, e))?
        .len();
    if size.is_some_and(|s| len > s) {
        drop(f);
        std::fs::remove_file(p).map_err(|e| PayloadError::io("remove", p, e))?;
        return Ok((Sha256::new(), 0));
    }
    let mut h = Sha256::new();
    let mut r = std::io::Read::take(f, len);
    let mut buf = vec![0u8; HASH_BUF];
    let mut n = 0u64;
    loop {
        let k =
            std::io::Read::read(&mut r, &mut buf).map_err(|e| PayloadError::io("read", p, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h, n))
}

/// The writer thread: appends chunks at `start`, hashing them; fsyncs at the end (also when
/// the sender stopped early, so what was received survives for a resume).
fn write_chunks<B: AsRef<[u8]>>(
    p: &Path,
    start: u64,
    mut h: Sha256,
    mut rx: mpsc::Receiver<B>,
) -> std::io::Result<(Sha256, u64)> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(p)?;
    f.set_len(start)?;
    f.seek(SeekFrom::Start(start))?;
    let mut w = std::io::BufWriter::with_capacity(HASH_BUF, f);
    let mut n = start;
    while let Some(b) = rx.blocking_recv() {
        let b = b.as_ref();
        h.update(b);
        w.write_all(b)?;
        n += b.len() as u64;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_data()?;
    Ok((h, n))
}

/// Deletes cached blobs and partial downloads whose sha256 is not in `keep`.
pub fn collect_garbage(dir: &Path, keep: &std::collections::BTreeSet<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let sha = name.strip_suffix(".partial").unwrap_or(&name);
        if !keep.contains(sha) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => info!(blob = %name, "removed a blob no payload uses any more"),
                Err(err) => warn!(blob = %name, error = %err, "removing an unused blob failed"),
            }
        }
    }
}
