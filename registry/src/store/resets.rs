//! Records kept per node or per login until taken: workload resets queued per node
//! (`resets/{node}`: a JSON list of workload names) until its next heartbeat, and status page
//! login sessions.

use super::{Result, Store, Update};

impl Store {
    /// Queues a reset of workload `name` for node `node` (once: a name already queued is not
    /// added again). Compare-and-swap loop, so a concurrent [`Store::take_resets`] or queueing
    /// loses nothing. Durable when it returns.
    pub async fn queue_reset(&self, node: &str, name: &str) -> Result<()> {
        self.update(&format!("resets/{node}"), false, "reset queue", |old| {
            let mut names: Vec<String> = old.unwrap_or_default();
            if names.iter().any(|n| n == name) {
                return Update::Keep(());
            }
            names.push(name.to_string());
            Update::Put(names, ())
        })
        .await
    }

    /// Takes (reads and removes, in one atomic step) the resets queued for `node`, oldest first.
    /// Writes nothing when none are queued.
    pub async fn take_resets(&self, node: &str) -> Result<Vec<String>> {
        self.update(
            &format!("resets/{node}"),
            true,
            "reset queue",
            |old| match old {
                Some(names) => Update::Delete(names),
                None => Update::Keep(Vec::new()),
            },
        )
        .await
    }
}

impl Store {
    /// Nodes with resets queued (at start-up, to know which heartbeats must read the store).
    pub async fn reset_nodes(&self) -> Result<Vec<String>> {
        Ok(self
            .list::<Vec<String>>("resets/")
            .await?
            .into_iter()
            .map(|(node, _)| node)
            .collect())
    }
}

/// Login sessions of the status page (`ui-sessions/{sha256 of the cookie id, hex}`; the record
/// is owned by `ui/access.rs`).
impl Store {
    pub async fn put_ui_session<T: serde::Serialize>(&self, hash_hex: &str, s: &T) -> Result<()> {
        self.put(&format!("ui-sessions/{hash_hex}"), s).await
    }

    pub async fn remove_ui_sessions(&self, hashes: &[String]) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let mut txn = crate::kv::Txn::new().freeing();
        for h in hashes {
            txn = txn.delete(format!("ui-sessions/{h}"));
        }
        self.commit(txn).await.map(drop)
    }

    pub async fn ui_sessions<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        self.list("ui-sessions/").await
    }
}
