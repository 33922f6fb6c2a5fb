//! Records kept per node or per login until taken: workload resets queued per node
//! (`resets/{node}`: a JSON list of workload names, `kind/name` for a reset of one kind) until
//! its next heartbeat, and status page login sessions.

use steward_proto::{WorkloadKind, WorkloadRef};

use super::{Result, Store, Update};

/// How a reset is queued: the name, or `kind/name` for one kind (a name never holds a `/`).
pub fn queued_reset(name: &str, kind: Option<WorkloadKind>) -> String {
    match kind {
        Some(k) => format!("{}/{name}", k.as_str()),
        None => name.to_string(),
    }
}

/// Taken resets as the heartbeat answers them: names (every kind), and one-kind resets.
pub fn split_resets(queued: Vec<String>) -> (Vec<String>, Vec<WorkloadRef>) {
    let mut names = Vec::new();
    let mut refs = Vec::new();
    for q in queued {
        let one_kind = q
            .split_once('/')
            .and_then(|(k, n)| Some(WorkloadRef::new(WorkloadKind::parse(k)?, n)));
        match one_kind {
            Some(r) => refs.push(r),
            None => names.push(q),
        }
    }
    (names, refs)
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::kv::sled::SledKv;

    #[test]
    fn one_kind_resets_are_queued_apart_from_names() {
        let queued = vec![
            queued_reset("web", None),
            queued_reset("web", Some(WorkloadKind::Vm)),
            queued_reset("db", Some(WorkloadKind::Container)),
        ];
        assert_eq!(queued, ["web", "vm/web", "container/db"]);
        let (names, refs) = split_resets(queued);
        assert_eq!(names, ["web"]);
        assert_eq!(
            refs,
            [
                WorkloadRef::new(WorkloadKind::Vm, "web"),
                WorkloadRef::new(WorkloadKind::Container, "db")
            ]
        );
    }

    #[tokio::test]
    async fn queued_resets_survive_reopen_and_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_embedded(dir.path()).unwrap();
            store.queue_reset("n1", "web").await.unwrap();
            store.queue_reset("n1", "db").await.unwrap();
            store.queue_reset("n1", "web").await.unwrap();
            store.queue_reset("n2", "vm").await.unwrap();
        }
        // The closed store's commit task lets go of the database a moment after the drop.
        let mut tries = 0;
        let kv = loop {
            match SledKv::open(dir.path(), 0) {
                Ok(kv) => break kv,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        };
        let store = Store::new(Arc::new(kv));
        assert_eq!(store.reset_nodes().await.unwrap(), vec!["n1", "n2"]);
        assert_eq!(store.take_resets("n1").await.unwrap(), vec!["web", "db"]);
        assert!(store.take_resets("n1").await.unwrap().is_empty());
        assert_eq!(store.take_resets("n2").await.unwrap(), vec!["vm"]);
        assert!(store.take_resets("unknown").await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_numbered_without_gaps_by_concurrent_writers_and_trimmed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let ev = |m: String| steward_proto::Event {
            seq: 0,
            time: chrono::Utc::now(),
            kind: steward_proto::EventKind::SpecWritten,
            node_id: None,
            generation: None,
            workload: None,
            credential: steward_proto::CredentialKind::System,
            actor: None,
            message: m,
        };
        let mut tasks = Vec::new();
        for t in 0..8 {
            let (store, ev) = (store.clone(), ev);
            tasks.push(tokio::spawn(async move {
                for i in 0..5 {
                    let evs = vec![ev(format!("{t}.{i}a")), ev(format!("{t}.{i}b"))];
                    let got = store.append_events(evs).await.unwrap();
                    assert_eq!(got[1].seq, got[0].seq + 1, "one append is contiguous");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let all = store.events_after(0, 0).await.unwrap();
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=80).collect::<Vec<_>>());
        assert_eq!(store.last_event_seq().await.unwrap(), 80);
        assert_eq!(store.events_after(78, 10).await.unwrap().len(), 2);
        assert_eq!(store.trim_events(30, 100).await.unwrap(), 30);
        let left = store.events_after(0, 0).await.unwrap();
        assert_eq!(left.first().map(|e| e.seq), Some(31));
        assert_eq!(left.len(), 50);
        // Numbering continues after trimming.
        let next = store.append_events(vec![ev("x".into())]).await.unwrap();
        assert_eq!(next[0].seq, 81);
    }
}
