//! The payload subsystem's one error type: every message names the path or blob and says what
//! to do about it.

use std::path::{Path, PathBuf};

/// Everything that can go wrong with a payload; each message names the path or blob and what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload path {path:?} is refused by this node's policy: {reason}")]
    PathRefused { path: String, reason: String },
    #[error(
        "payload path {}: {} is a symbolic link; payload paths may not pass through symbolic \
         links (use the real directory in the spec)", path.display(), link.display()
    )]
    SymlinkInPath { path: PathBuf, link: PathBuf },
    #[error("payload path {}: {} exists and is not a directory", path.display(), what.display())]
    NotADirectory { path: PathBuf, what: PathBuf },
    #[error(
        "the payload root {} does not exist; create it (it is listed in policy.payload_roots)",
        root.display()
    )]
    RootMissing { root: PathBuf },
    #[error(
        "payload {name} has no sha256: the registry pins it when the spec is written; write the \
         spec through the registry"
    )]
    Unpinned { name: String },
    #[error(
        "{what} is corrupt: expected sha256 {expected}, got {actual} ({bytes} bytes); the \
         target was not replaced"
    )]
    HashMismatch {
        what: &'static str,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("downloading blob {sha256} failed: {reason}")]
    Download { sha256: String, reason: String },
    #[error(
        "blob {sha256} is not in the cache ({}) and there is no registry to download it from",
        dir.display()
    )]
    NoRegistry { sha256: String, dir: PathBuf },
    #[error("mode {0:?} is not an octal file mode")]
    BadMode(String),
    #[error("owner {owner:?}: {reason}")]
    BadOwner { owner: String, reason: String },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("docker-image payload: {0}")]
    Docker(String),
    #[error("payloads need the agent's data directory (for the blob cache and records)")]
    NoDataDir,
}

impl PayloadError {
    pub(super) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        PayloadError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
