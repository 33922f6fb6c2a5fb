//! The agent's local state under its data dir: the node identity (a 0600 file), the last spec
//! received (so a restart without the registry keeps enforcing it), the links the agent created
//! (`state/network-links.json`: name -> ifindex and desired hash, plus the ports it enslaved),
//! the lab address leases (`state/network-leases.json`), the payloads it deployed
//! (`state/payloads.json`: path -> name, version, sha256, last hash), and the last status (`status.json`,
//! which `steward-agent status` reads while the daemon runs).
//!
//! Each record is a small JSON file replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new version. One process at a time holds
//! the store: an exclusive `flock` on `agent.lock`, released by the kernel even on `kill -9`.
//! (The design brief suggested sled; the agent keeps well under a kilobyte of state, and sled
//! cost it eight threads and tens of MiB of lazily zeroed memory, so plain files serve better.)

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use steward_proto::{NodeSpec, NodeStatus};

use crate::network::types::NetState;
use crate::network::Leases;

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the agent's store in {dir} is in use (is another steward-agent running with this data dir?)")]
    Locked { dir: PathBuf },
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
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
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

/// The agent's store: one process at a time (exclusive lock held while this value lives).
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    _lock: std::sync::Arc<nix::fcntl::Flock<std::fs::File>>,
}

const SPEC_KEY: &str = "spec";
const NET_LINKS_KEY: &str = "network-links";
const NET_LEASES_KEY: &str = "network-leases";
const PAYLOADS_KEY: &str = "payloads";
const HEAL_KEY: &str = "heal";

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

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let p = self.path(key);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { path: p, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    fn put<T: Serialize>(&self, key: &str, v: &T) -> Result<(), StoreError> {
        write_atomic(
            &self.path(key),
            &serde_json::to_vec(v).unwrap_or_default(),
            0o600,
        )
    }

    pub fn spec(&self) -> Result<Option<StoredSpec>, StoreError> {
        self.get(SPEC_KEY)
    }

    /// Stores a spec durably (before it is acted on).
    pub async fn save_spec(&self, s: &StoredSpec) -> Result<(), StoreError> {
        self.put(SPEC_KEY, s)
    }

    /// The links (and ports) the agent created, as last recorded.
    pub fn net_state(&self) -> Result<NetState, StoreError> {
        Ok(self.get(NET_LINKS_KEY)?.unwrap_or_default())
    }

    /// Records the managed links durably.
    pub async fn save_net_state(&self, s: &NetState) -> Result<(), StoreError> {
        self.put(NET_LINKS_KEY, s)
    }

    /// The lab address leases.
    pub fn lab_leases(&self) -> Result<Leases, StoreError> {
        Ok(self.get(NET_LEASES_KEY)?.unwrap_or_default())
    }

    /// Records the lab address leases durably.
    pub async fn save_lab_leases(&self, l: &Leases) -> Result<(), StoreError> {
        self.put(NET_LEASES_KEY, l)
    }

    /// The payloads the agent deployed, by path.
    pub fn payload_records(&self) -> Result<crate::payload::PayloadRecords, StoreError> {
        Ok(self.get(PAYLOADS_KEY)?.unwrap_or_default())
    }

    /// Records the deployed payloads durably.
    pub async fn save_payload_records(
        &self,
        r: &crate::payload::PayloadRecords,
    ) -> Result<(), StoreError> {
        self.put(PAYLOADS_KEY, r)
    }

    /// The containers' escalation ladders.
    pub fn heal_state(&self) -> Result<crate::heal::containers::HealState, StoreError> {
        Ok(self.get(HEAL_KEY)?.unwrap_or_default())
    }

    /// Records the escalation ladders durably.
    pub async fn save_heal_state(
        &self,
        s: &crate::heal::containers::HealState,
    ) -> Result<(), StoreError> {
        self.put(HEAL_KEY, s)
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

    #[tokio::test]
    async fn network_records_survive_reopen() {
        use crate::network::types::LinkRecord;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let mut net = NetState::default();
        net.links.insert(
            "br0".into(),
            LinkRecord {
                index: 7,
                hash: "h".into(),
            },
        );
        net.ports.insert("eth2".into(), "br0".into());
        let mut leases = Leases::new();
        leases
            .entry("br142".into())
            .or_default()
            .insert("container:web".into(), "192.168.142.10".parse().unwrap());
        {
            let store = Store::open(&paths).unwrap();
            assert_eq!(store.net_state().unwrap(), NetState::default());
            assert!(store.lab_leases().unwrap().is_empty());
            store.save_net_state(&net).await.unwrap();
            store.save_lab_leases(&leases).await.unwrap();
        }
        let store = Store::open(&paths).unwrap();
        assert_eq!(store.net_state().unwrap(), net);
        assert_eq!(store.lab_leases().unwrap(), leases);
    }
}
