//! Replicas sharing a store and where payload blobs are: `replicas/{id}` (a session key holding
//! the replica's URL: gone once the replica stops) and `blob-copies/{sha256}/{replica}` (this
//! replica holds a copy of the blob in its data dir).

use super::{Result, Store};
use crate::kv::Txn;

/// Most keys written in one transaction when announcing blob copies (etcd allows 128 ops).
const BATCH: usize = 100;

impl Store {
    /// Registers this replica and the URL its peers reach it at, for as long as it runs.
    pub async fn register_replica(&self, id: &str, url: &str) -> Result<()> {
        let key = format!("replicas/{id}");
        Ok(self.kv.put_session(&key, url.as_bytes().to_vec()).await?)
    }

    /// Replicas running now: `(id, url)`.
    pub async fn replicas(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .kv
            .range("replicas/", None, 0)
            .await?
            .into_iter()
            .map(|kv| {
                let id = kv.key["replicas/".len()..].to_string();
                (id, String::from_utf8_lossy(&kv.value).into_owned())
            })
            .collect())
    }

    /// Records that `replica` holds the blobs `sha256s`.
    pub async fn record_blob_copies(&self, replica: &str, sha256s: &[String]) -> Result<()> {
        for chunk in sha256s.chunks(BATCH) {
            let mut txn = Txn::new();
            for sha in chunk {
                txn = txn.put(format!("blob-copies/{sha}/{replica}"), Vec::new());
            }
            self.commit(txn).await?;
        }
        Ok(())
    }

    /// The replicas recorded as holding blob `sha256`.
    pub async fn blob_holders(&self, sha256: &str) -> Result<Vec<String>> {
        let prefix = format!("blob-copies/{sha256}/");
        Ok(self
            .kv
            .range(&prefix, None, 0)
            .await?
            .into_iter()
            .map(|kv| kv.key[prefix.len()..].to_string())
            .collect())
    }

    /// Forgets every recorded copy of blob `sha256` (its last version was deleted).
    pub async fn forget_blob(&self, sha256: &str) -> Result<()> {
        let holders = self.blob_holders(sha256).await?;
        if holders.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new().freeing();
        for h in holders {
            txn = txn.delete(format!("blob-copies/{sha256}/{h}"));
        }
        self.commit(txn).await.map(drop)
    }
}
