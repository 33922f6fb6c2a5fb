//! The agent's local state under its data dir, knowing no subsystem: the node identity (a 0600
//! file), the last status (`status.json`, which `steward-agent status` reads while the daemon
//! runs), and typed, versioned records under `state/` — one JSON file per [`Record`] type, whose
//! key and format version the owning subsystem declares (the last spec here; the managed links,
//! lab leases, deployed payloads and escalation ladders in their own modules). [`Kept`] is a
//! record held in memory: loaded on first use, written only when it changed.
//!
//! Each file is replaced atomically (temp file, fsync, rename, fsync of the directory), so a
//! crash leaves either the old or the new version; the async writes run on tokio's blocking
//! pool, never on the agent's single runtime thread. A record at a format version above 1
//! carries it as `"_version"` in its JSON object (version 1, today's formats, is written as
//! before, so older agents still read it); a file from a newer agent is refused, not misread. One process at a time holds the store: an
//! exclusive `flock` on `agent.lock`, released by the kernel even on `kill -9`. (The design
//! brief suggested sled; the agent keeps well under a kilobyte of state, and sled cost it eight
//! threads and tens of MiB of lazily zeroed memory, so plain files serve better.)

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use steward_proto::{NodeSpec, NodeStatus};
use tracing::warn;

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the agent's store in {dir} is in use (is another steward-agent running with this data dir?)")]
    Locked { dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}, newer than this agent's {known}: written by a newer steward-agent")]
    Newer {
        path: PathBuf,
        found: u64,
        known: u32,
    },
}

/// A record the store keeps as `state/<KEY>.json`. The subsystem owning the type declares it.
pub trait Record:
    Serialize + DeserializeOwned + Default + Clone + PartialEq + Send + Sync + 'static
{
    /// The file's name without `.json`.
    const KEY: &'static str;
    /// The format version written; a file with a higher one is refused.
    const VERSION: u32 = 1;
}

/// The key carrying a record's format version inside its JSON object.
const VERSION_FIELD: &str = "_version";

/// A record as JSON bytes: the object with `_version` added above version 1.
fn encode<R: Record>(r: &R) -> Vec<u8> {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if R::VERSION > 1 {
        if let Some(o) = v.as_object_mut() {
            o.insert(VERSION_FIELD.into(), R::VERSION.into());
        }
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A record from JSON bytes written by [`encode`] at this or an older version.
fn decode<R: Record>(path: &Path, bytes: &[u8]) -> Result<R, StoreError> {
    let corrupt = |source| StoreError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(corrupt)?;
    if let Some(o) = v.as_object_mut() {
        if let Some(found) = o.remove(VERSION_FIELD).and_then(|f| f.as_u64()) {
            if found > u64::from(R::VERSION) {
                return Err(StoreError::Newer {
                    path: path.to_path_buf(),
                    found,
                    known: R::VERSION,
                });
            }
        }
    }
    serde_json::from_value(v).map_err(corrupt)
}

/// Who this node is to the registry. Stored with mode 0600; Debug never shows the secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The registry's URL, or its URLs separated by commas, as enrolled with.
    pub registry: String,
    pub node_id: String,
    pub node_secret: String,
    #[serde(default)]
    pub heartbeat_interval_secs: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("registry", &self.registry)
            .field("node_id", &self.node_id)
            .field("node_secret", &"<redacted>")
            .finish()
    }
}

/// The last desired state received (`state/spec.json`): stored before it is acted on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredSpec {
    pub generation: u64,
    pub spec: NodeSpec,
}

impl Record for StoredSpec {
    const KEY: &'static str = "spec";
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // `mode` only applies at creation; make sure a pre-existing temp file gets it too.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// [`write_atomic`] on tokio's blocking pool: the fsyncs never stall the runtime's thread.
pub async fn write_atomic_off_runtime(
    path: PathBuf,
    bytes: Vec<u8>,
    mode: u32,
) -> Result<(), StoreError> {
    let p = path.clone();
    tokio::task::spawn_blocking(move || write_atomic(&p, &bytes, mode))
        .await
        .unwrap_or_else(|e| Err(io(&path)(std::io::Error::other(e))))
}

/// Reads a JSON file: `None` when it does not exist.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Paths inside the data dir.
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    pub fn identity(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    pub fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.dir))
    }

    pub fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        read_json(&self.identity())
    }

    pub fn save_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(id).unwrap_or_default();
        write_atomic(&self.identity(), &bytes, 0o600)
    }

    pub fn load_status(&self) -> Result<Option<NodeStatus>, StoreError> {
        read_json(&self.status())
    }

    pub fn save_status(&self, s: &NodeStatus) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(s).unwrap_or_default();
        write_atomic(&self.status(), &bytes, 0o644)
    }

    /// [`Paths::save_status`] off the runtime's thread (the daemon writes it every pass).
    pub async fn save_status_off_runtime(&self, s: &NodeStatus) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(s).unwrap_or_default();
        write_atomic_off_runtime(self.status(), bytes, 0o644).await
    }
}

/// The agent's store: one process at a time (exclusive lock held while this value lives).
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    _lock: std::sync::Arc<nix::fcntl::Flock<std::fs::File>>,
}

impl Store {
    pub fn open(paths: &Paths) -> Result<Self, StoreError> {
        paths.ensure_dir()?;
        let lock_path = paths.dir.join("agent.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked {
                dir: paths.dir.clone(),
            })?;
        let dir = paths.dir.join("state");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self {
            dir,
            _lock: std::sync::Arc::new(lock),
        })
    }

    fn path<R: Record>(&self) -> PathBuf {
        self.dir.join(format!("{}.json", R::KEY))
    }

    /// The stored record, `None` when none was ever stored.
    pub fn load<R: Record>(&self) -> Result<Option<R>, StoreError> {
        let p = self.path::<R>();
        match std::fs::read(&p) {
            Ok(b) => decode(&p, &b).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Stores a record durably; the fsyncs run off the runtime's thread.
    pub async fn save<R: Record>(&self, r: &R) -> Result<(), StoreError> {
        write_atomic_off_runtime(self.path::<R>(), encode(r), 0o600).await
    }

    /// The stored record, or the default when there is none or it cannot be read (logged; a
    /// corrupt file is kept aside as `<key>.json.corrupt` for a post-mortem).
    pub fn load_or_default<R: Record>(&self) -> R {
        match self.load::<R>() {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => {
                if let StoreError::Corrupt { path, .. } = &e {
                    let aside = path.with_extension("json.corrupt");
                    if let Err(e) = std::fs::rename(path, &aside) {
                        warn!(path = %path.display(), error = %e, "setting the corrupt record aside failed");
                    }
                }
                warn!(record = R::KEY, error = %e, "reading a stored record failed; starting afresh");
                R::default()
            }
        }
    }
}

/// One record held in memory: loaded from the store on first use, written back only when it
/// changed (a failed write is logged and tried again at the next [`Kept::persist`]). Without a
/// store (tests, one-shot tools) it lives in memory only.
pub struct Kept<R: Record> {
    store: Option<Store>,
    value: Option<R>,
    /// What the store holds, as far as this process knows.
    saved: Option<R>,
}

impl<R: Record> Default for Kept<R> {
    fn default() -> Self {
        Self::new(None)
    }
}

impl<R: Record> Kept<R> {
    pub fn new(store: Option<Store>) -> Self {
        Self {
            store,
            value: None,
            saved: None,
        }
    }

    /// Whether the record was loaded (or set) yet.
    pub fn is_loaded(&self) -> bool {
        self.value.is_some()
    }

    /// The record, loaded on first use.
    pub fn get(&mut self) -> &mut R {
        if self.value.is_none() {
            let r = self
                .store
                .as_ref()
                .map(Store::load_or_default::<R>)
                .unwrap_or_default();
            self.saved = Some(r.clone());
            self.value = Some(r);
        }
        self.value.get_or_insert_with(R::default)
    }

    /// Replaces the record in memory (stored at the next [`Kept::persist`]).
    pub fn set(&mut self, r: R) {
        if self.value.is_none() {
            self.get();
        }
        self.value = Some(r);
    }

    /// Writes the record if it differs from what the store holds.
    pub async fn persist(&mut self) {
        let (Some(store), Some(value)) = (&self.store, &self.value) else {
            return;
        };
        if self.saved.as_ref() == Some(value) {
            return;
        }
        match store.save(value).await {
            Ok(()) => self.saved = Some(value.clone()),
            Err(e) => warn!(record = R::KEY, error = %format!("{e:#}"), "storing a record failed"),
        }
    }
}

#[cfg(test)]
mod tests;
