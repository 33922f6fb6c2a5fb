//! The agent's local state under its data dir: the node identity (a 0600 file), the last spec
//! received (sled, so a restart without the registry keeps enforcing it), and the last status
//! (a JSON file that `steward-agent status` reads while the daemon holds the sled lock).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use steward_proto::{NodeSpec, NodeStatus};

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the agent's store in {dir}: {source} (is another steward-agent running with this data dir?)")]
    Open { dir: PathBuf, source: sled::Error },
    #[error("agent store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Who this node is to the registry. Stored with mode 0600; Debug never shows the secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
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

/// The last desired state received.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredSpec {
    pub generation: u64,
    pub spec: NodeSpec,
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
    Ok(())
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
    pub fn db(&self) -> PathBuf {
        self.dir.join("db")
    }

    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.dir))
    }

    pub fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        let p = self.identity();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { path: p, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    pub fn save_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(id).unwrap_or_default();
        write_atomic(&self.identity(), &bytes, 0o600)
    }

    pub fn load_status(&self) -> Result<Option<NodeStatus>, StoreError> {
        let p = self.status();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { path: p, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    pub fn save_status(&self, s: &NodeStatus) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(s).unwrap_or_default();
        write_atomic(&self.status(), &bytes, 0o644)
    }
}

/// The sled database (one process at a time).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

const SPEC_KEY: &str = "spec";

impl Store {
    pub fn open(paths: &Paths) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(paths.db())
            .open()
            .map_err(|source| StoreError::Open {
                dir: paths.db(),
                source,
            })?;
        Ok(Self { db })
    }

    pub fn spec(&self) -> Result<Option<StoredSpec>, StoreError> {
        match self.db.get(SPEC_KEY)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    path: PathBuf::from("db:spec"),
                    source,
                }),
            None => Ok(None),
        }
    }

    /// Stores a spec durably (before it is acted on).
    pub async fn save_spec(&self, s: &StoredSpec) -> Result<(), StoreError> {
        self.db
            .insert(SPEC_KEY, serde_json::to_vec(s).unwrap_or_default())?;
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identity_is_0600_and_spec_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(&dir.path().join("state"));
        paths.ensure_dir().unwrap();
        assert!(paths.load_identity().unwrap().is_none());
        let id = Identity {
            registry: "http://r".into(),
            node_id: "n1".into(),
            node_secret: "n1.secret".into(),
            heartbeat_interval_secs: 10,
        };
        paths.save_identity(&id).unwrap();
        let mode = std::fs::metadata(paths.identity())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            paths.load_identity().unwrap().unwrap().node_secret,
            "n1.secret"
        );
        assert!(!format!("{id:?}").contains("secret\""));
        assert!(!format!("{id:?}").contains("n1.secret"));

        let s = StoredSpec {
            generation: 4,
            spec: serde_norway::from_str("containers: [{name: a, image: x}]").unwrap(),
        };
        {
            let store = Store::open(&paths).unwrap();
            assert!(
                Store::open(&paths).is_err(),
                "a second process must not open the same store"
            );
            store.save_spec(&s).await.unwrap();
        }
        let store = Store::open(&paths).unwrap();
        assert_eq!(store.spec().unwrap(), Some(s));
    }
}
