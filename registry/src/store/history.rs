//! Spec history: every version of a node's own spec and of a fragment, kept under
//! `history/{node|fragment}/{name}/{seq:010}` with the last sequence number in
//! `history/{node|fragment}/{name}`, written in the same transaction as the change it records;
//! the oldest beyond the retention is deleted in that transaction too (no scan, no job).

use steward_proto::SpecVersion;

use super::{dec, enc, Result, Store};
use crate::kv::Txn;

/// What a history belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryOf {
    Node,
    Fragment,
}

impl HistoryOf {
    fn key(self, name: &str) -> String {
        match self {
            HistoryOf::Node => format!("history/node/{name}"),
            HistoryOf::Fragment => format!("history/fragment/{name}"),
        }
    }
}

/// One version to store with a spec change.
#[derive(Debug, Clone)]
pub struct HistoryWrite {
    of: HistoryOf,
    name: String,
    entry: SpecVersion,
    /// The version that falls out of the retention, if any.
    drop: Option<u64>,
}

impl HistoryWrite {
    /// `entry` (its `seq` already the next one) for `name`, keeping the last `keep` versions.
    pub fn new(of: HistoryOf, name: &str, entry: SpecVersion, keep: usize) -> Self {
        let keep = keep.max(1) as u64;
        HistoryWrite {
            of,
            name: name.to_string(),
            drop: (entry.seq > keep).then(|| entry.seq - keep),
            entry,
        }
    }

    /// Adds the version, the counter and the deletion of the oldest kept one to `txn`.
    pub fn add_to(&self, txn: Txn) -> Txn {
        let base = self.of.key(&self.name);
        let txn = txn
            .put(format!("{base}/{:010}", self.entry.seq), enc(&self.entry))
            .put(base.clone(), enc(&self.entry.seq));
        match self.drop {
            Some(old) => txn.delete(format!("{base}/{old:010}")),
            None => txn,
        }
    }

    /// Bytes it adds to a transaction.
    pub fn bytes(&self) -> usize {
        enc(&self.entry).len() + 32
    }

    /// Operations it adds to a transaction.
    pub fn ops(&self) -> usize {
        2 + usize::from(self.drop.is_some())
    }
}

impl Store {
    /// The last sequence number of a history (0: none yet).
    pub async fn history_seq(&self, of: HistoryOf, name: &str) -> Result<u64> {
        Ok(self.value(&of.key(name)).await?.unwrap_or(0))
    }

    /// Every kept version, oldest first.
    pub async fn history(&self, of: HistoryOf, name: &str) -> Result<Vec<SpecVersion>> {
        let prefix = format!("{}/", of.key(name));
        self.kv
            .range(&prefix, None, 0)
            .await?
            .iter()
            .map(dec)
            .collect()
    }
}
