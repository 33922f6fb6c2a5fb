//! What a migration reports: records and bytes per kind, the checks, the payload blobs left in
//! the old data dir (and how the replicas get them), and the admin token every replica needs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::MigrateError;
use crate::kv::Kv;
use crate::store::Store;

/// Records and value bytes copied of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCount {
    pub records: u64,
    pub bytes: u64,
}

/// The payload blobs of the old data dir.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobStats {
    pub dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// `name/version` of payload versions whose blob is not in `dir`.
    pub missing: Vec<String>,
}

/// The result of a migration.
#[derive(Debug, Clone)]
pub struct Summary {
    pub from: PathBuf,
    pub to: String,
    pub kinds: BTreeMap<String, KindCount>,
    /// Keys deleted from the prefix first (`--force`).
    pub replaced: usize,
    pub last_event_seq: u64,
    /// Nodes whose spec record (and generation) was checked.
    pub specs: usize,
    pub blobs: BlobStats,
    /// `DIR/admin.token` when the old registry generated its admin token there.
    pub admin_token: Option<PathBuf>,
    pub seconds: f64,
}

impl Summary {
    /// Records copied in total.
    pub fn records(&self) -> u64 {
        self.kinds.values().map(|c| c.records).sum()
    }
}

/// Counts the blob files (`<sha256>`) in `DIR/blobs` and names payload versions without one.
pub async fn blob_stats(dir: &Path, source: &Arc<dyn Kv>) -> Result<BlobStats, MigrateError> {
    let blobs = dir.join("blobs");
    let mut stats = BlobStats {
        dir: blobs.clone(),
        ..BlobStats::default()
    };
    let mut held = BTreeSet::new();
    if blobs.is_dir() {
        let io = |source| MigrateError::Io {
            path: blobs.clone(),
            source,
        };
        for entry in std::fs::read_dir(&blobs).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().map_err(io)?;
            if meta.is_file() && name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                stats.files += 1;
                stats.bytes += meta.len();
                held.insert(name);
            }
        }
    }
    let store = Store::new(source.clone());
    let versions = store
        .payload_versions()
        .await
        .map_err(|source| MigrateError::Typed {
            what: "reading payload versions",
            source,
        })?;
    stats.missing = versions
        .into_iter()
        .filter(|v| !held.contains(&v.sha256))
        .map(|v| format!("{}/{}", v.name, v.version))
        .collect();
    Ok(stats)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (records, bytes) = self
            .kinds
            .values()
            .fold((0, 0), |(r, b), c| (r + c.records, b + c.bytes));
        writeln!(
            f,
            "migrated {} -> {} in {:.1} s: {records} records, {bytes} bytes, every key read back \
             and compared",
            self.from.display(),
            self.to,
            self.seconds
        )?;
        if self.replaced > 0 {
            writeln!(
                f,
                "  (--force: {} keys the prefix held were deleted first)",
                self.replaced
            )?;
        }
        for (kind, c) in &self.kinds {
            writeln!(
                f,
                "  {kind:<12} {:>9} records {:>12} bytes",
                c.records, c.bytes
            )?;
        }
        writeln!(
            f,
            "  event sequence {} and the spec generations of {} node(s): the same in etcd",
            self.last_event_seq, self.specs
        )?;
        let b = &self.blobs;
        writeln!(
            f,
            "payload blobs: {} file(s), {} bytes in {} stay files (etcd holds their metadata \
             only). Start the first replica with {} as its data dir: it announces its blobs and \
             the other replicas fetch them from it. Or copy {}/ into every replica's data dir.",
            b.files,
            b.bytes,
            b.dir.display(),
            self.from.display(),
            b.dir.display()
        )?;
        if !b.missing.is_empty() {
            writeln!(
                f,
                "  warning: no blob in {} for payload version(s) {}: they cannot be downloaded",
                b.dir.display(),
                b.missing.join(", ")
            )?;
        }
        match &self.admin_token {
            Some(p) => write!(
                f,
                "admin token: every replica must be given the same admin token file \
                 (admin_token_file). This registry's is {}: copy it (mode 0600) to every \
                 replica and point admin_token_file at it.",
                p.display()
            ),
            None => write!(
                f,
                "admin token: every replica must be given the same admin token file \
                 (admin_token_file): use the file this registry was given."
            ),
        }
    }
}
