//! Node health as its own small record, `health/{id}`, apart from the node record (kilobytes
//! with its last status): a health transition writes a few dozen bytes, many of them in one
//! transaction. The node record's `health` field counts only for a decommissioned node and for
//! nodes without a health record (stores written before health records existed).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use steward_proto::Health;

use super::{enc, NodeRecord, Result, Store, TXN_OPS};
use crate::kv::Txn;

/// A node's health as last judged, and its last heartbeat then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub health: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
}

impl HealthRecord {
    /// Overlays this health on a stored node record (a decommissioned node stays so).
    pub fn apply_to(&self, rec: &mut NodeRecord) {
        if rec.health != Health::Decommissioned {
            rec.health = self.health;
        }
        if self.last_heartbeat > rec.last_heartbeat {
            rec.last_heartbeat = self.last_heartbeat;
        }
    }
}

fn key(id: &str) -> String {
    format!("health/{id}")
}

impl Store {
    /// Every stored health record, by node id.
    pub async fn healths(&self) -> Result<Vec<(String, HealthRecord)>> {
        self.list("health/").await
    }

    /// Stores nodes' health records, up to [`TXN_OPS`] per transaction, several transactions
    /// in flight at once (the embedded store commits them with one fsync; written as they are:
    /// the newest judgement wins).
    pub async fn put_healths(&self, records: &[(String, HealthRecord)]) -> Result<()> {
        let txns: Vec<Txn> = records
            .chunks(TXN_OPS)
            .map(|chunk| {
                chunk
                    .iter()
                    .fold(Txn::new(), |txn, (id, r)| txn.put(key(id), enc(r)))
            })
            .collect();
        let mut txns = txns.into_iter();
        loop {
            let wave: Vec<_> = txns.by_ref().take(16).map(|t| self.commit(t)).collect();
            if wave.is_empty() {
                return Ok(());
            }
            futures_util::future::try_join_all(wave).await?;
        }
    }

    /// Calls `f` with every node record, its health record overlaid (read a page at a time).
    pub async fn for_each_node(&self, mut f: impl FnMut(NodeRecord)) -> Result<()> {
        let mut healths: std::collections::HashMap<String, HealthRecord> =
            self.healths().await?.into_iter().collect();
        self.scan("nodes/", |_, mut rec: NodeRecord| {
            if let Some(h) = healths.remove(&rec.id) {
                h.apply_to(&mut rec);
            }
            f(rec);
        })
        .await
    }

    /// Every node record with its health record overlaid.
    pub async fn nodes_with_health(&self) -> Result<Vec<NodeRecord>> {
        let mut out = Vec::new();
        self.for_each_node(|rec| out.push(rec)).await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_records_of_many_nodes_go_in_several_transactions_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_embedded(dir.path()).unwrap();
        let rec = |health| HealthRecord {
            health,
            last_heartbeat: None,
        };
        let many: Vec<(String, HealthRecord)> = (0..(TXN_OPS * 2 + 50))
            .map(|i| (format!("n{i:04}"), rec(Health::Stale)))
            .collect();
        store.put_healths(&many).await.unwrap();
        let back = store.healths().await.unwrap();
        assert_eq!(back, many);
        // The newest judgement wins; nothing else changes.
        store
            .put_healths(&[("n0001".to_string(), rec(Health::Ready))])
            .await
            .unwrap();
        let back = store.healths().await.unwrap();
        assert_eq!(back.len(), many.len());
        assert_eq!(back[1], ("n0001".to_string(), rec(Health::Ready)));
        assert_eq!(back[2], many[2]);
        // A node record is overlaid with its health, unless decommissioned.
        let mut n = NodeRecord::test("n0001");
        n.health = Health::Down;
        rec(Health::Ready).apply_to(&mut n);
        assert_eq!(n.health, Health::Ready);
        n.health = Health::Decommissioned;
        rec(Health::Ready).apply_to(&mut n);
        assert_eq!(n.health, Health::Decommissioned);
    }
}
