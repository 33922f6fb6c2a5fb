//! Specs and fragments in the store: `specs/{id}`, `fragments/{name}`, the fragments' ghosts
//! `meta/fragment-ghosts` and the spec epoch `meta/spec-epoch`; spec writes larger than one etcd
//! transaction are split.

use super::NodeRecord;
use super::{
    dec, enc, HistoryWrite, Result, SpecRecord, SpecWrite, Store, SPEC_EPOCH, TXN_BYTES, TXN_OPS,
};
use crate::fragment_set::Ghosts;
use crate::kv::{KeyValue, Revision, Txn, TxnOutcome};
use steward_proto::{Fragment, NodeSpec};

/// The key of the fragments' ghosts.
pub const GHOSTS: &str = "meta/fragment-ghosts";

/// Specs and fragments.
impl Store {
    pub async fn spec(&self, node_id: &str) -> Result<Option<SpecRecord>> {
        self.value(&format!("specs/{node_id}")).await
    }

    /// A node's spec record as stored (undecoded), to decode with [`Store::decode_spec`].
    pub async fn spec_raw(&self, node_id: &str) -> Result<Option<KeyValue>> {
        Ok(self.kv.get(&format!("specs/{node_id}")).await?)
    }

    /// Decodes a spec record read with [`Store::spec_raw`].
    pub fn decode_spec(kv: &KeyValue) -> Result<SpecRecord> {
        dec(kv)
    }

    /// Every node's spec record.
    pub async fn specs(&self) -> Result<Vec<(String, SpecRecord)>> {
        self.list("specs/").await
    }

    /// Every node's stored generation and `base` (the specs are skipped).
    pub async fn bases(&self) -> Result<Vec<(String, u64, Option<i64>)>> {
        #[derive(serde::Deserialize)]
        struct Base {
            generation: u64,
            #[serde(default)]
            base: Option<i64>,
        }
        let mut out = Vec::new();
        self.scan("specs/", |id, b: Base| out.push((id, b.generation, b.base)))
            .await?;
        Ok(out)
    }

    /// Every node's stored spec generation (as written; see [`Store::bases`]).
    pub async fn generations(&self) -> Result<Vec<(String, u64)>> {
        /// Only the generation of a spec record is decoded (the specs are skipped).
        #[derive(serde::Deserialize)]
        struct Generation {
            generation: u64,
        }
        let mut out = Vec::new();
        self.scan("specs/", |id, g: Generation| out.push((id, g.generation)))
            .await?;
        Ok(out)
    }

    pub async fn fragment(&self, name: &str) -> Result<Option<Fragment>> {
        self.value(&format!("fragments/{name}")).await
    }

    pub async fn fragments(&self) -> Result<Vec<Fragment>> {
        self.values("fragments/").await
    }

    /// What deleted fragments and old selectors add to generations (`fragment_set.rs`), and the
    /// revision they were written at: every fragment change writes them, so it is the version of
    /// the whole fragment set.
    pub async fn ghosts(&self) -> Result<(Ghosts, Revision)> {
        match self.kv.get(GHOSTS).await? {
            Some(kv) => Ok((dec(&kv)?, kv.mod_revision)),
            None => Ok((Ghosts::new(), 0)),
        }
    }

    /// Stores (`Some`) or deletes (`None`) fragment `name` together with the new ghosts and its
    /// history version, if no
    /// other spec change committed since `epoch` ([`StoreError::Stale`] otherwise). One
    /// transaction whatever the number of nodes the fragment matches.
    pub async fn write_fragment(
        &self,
        epoch: Revision,
        name: &str,
        fragment: Option<&Fragment>,
        ghosts: &Ghosts,
        history: &HistoryWrite,
    ) -> Result<Revision> {
        let key = format!("fragments/{name}");
        let txn = Txn::new()
            .when(SPEC_EPOCH, epoch)
            .put(SPEC_EPOCH, Vec::new())
            .put(GHOSTS, enc(ghosts));
        let txn = history.add_to(txn);
        let txn = match fragment {
            Some(f) => txn.put(key, enc(f)),
            None => txn.delete(key),
        };
        self.commit(txn).await
    }

    /// The revision of the spec epoch: read it before reading what a spec change is computed
    /// from, and pass it to [`Store::write_specs`].
    pub async fn spec_epoch(&self) -> Result<Revision> {
        Ok(self
            .kv
            .get(SPEC_EPOCH)
            .await?
            .map_or(0, |kv| kv.mod_revision))
    }

    /// Writes node specs and optionally a node record. The first
    /// transaction holds the node record and as many specs as fit (etcd bounds a
    /// transaction to 128 operations and 1.5 MiB), and commits only if no other spec change
    /// committed since `epoch` was read ([`StoreError::Stale`] otherwise: compute again).
    /// Further specs follow in more transactions, each spec only if its record is still the
    /// one it was computed from: a record another writer replaced meanwhile was computed by
    /// that writer after the first transaction, so with this change taken into account, and is
    /// left as it is. Returns the writes that were stored. A crash between transactions leaves
    /// some nodes on their previous effective spec until the next change recomputes them.
    pub async fn write_specs<'a>(
        &self,
        epoch: Revision,
        specs: &'a [SpecWrite],
        node: Option<&NodeRecord>,
    ) -> Result<Vec<&'a SpecWrite>> {
        let mut first = Txn::new()
            .when(SPEC_EPOCH, epoch)
            .put(SPEC_EPOCH, Vec::new());
        let mut bytes = 0;
        if let Some(n) = node {
            let v = enc(n);
            bytes += v.len();
            first = first.put(format!("nodes/{}", n.id), v);
        }
        let encoded: Vec<(String, Vec<u8>, &SpecWrite)> = specs
            .iter()
            .map(|w| (format!("specs/{}", w.node_id), enc(&w.record), w))
            .collect();
        let mut rest = encoded.as_slice();
        let mut written = Vec::with_capacity(specs.len());
        while let Some(((key, value, w), tail)) = rest.split_first() {
            let more = ops_of(w);
            let size = value.len() + w.history.as_ref().map_or(0, HistoryWrite::bytes);
            if first.ops.len() + more > TXN_OPS || bytes + size > TXN_BYTES {
                break;
            }
            first = first
                .when(key.clone(), w.revision)
                .put(key.clone(), value.clone());
            if let Some(h) = &w.history {
                first = h.add_to(first);
            }
            bytes += size;
            written.push(*w);
            rest = tail;
        }
        self.commit(first).await?;
        // The rest in transactions of their own, committed side by side: each record is
        // compared on its own revision, so their order does not matter.
        let mut chunks = Vec::new();
        while !rest.is_empty() {
            let (mut n, mut size, mut ops) = (0, 0, 0);
            while n < rest.len()
                && (n == 0
                    || (ops + ops_of(rest[n].2) <= TXN_OPS && size + rest[n].1.len() <= TXN_BYTES))
            {
                size += rest[n].1.len();
                ops += ops_of(rest[n].2);
                n += 1;
            }
            chunks.push(&rest[..n]);
            rest = &rest[n..];
        }
        let stored = futures_util::future::try_join_all(
            chunks.into_iter().map(|c| self.write_spec_chunk(c)),
        )
        .await?;
        written.extend(stored.into_iter().flatten());
        Ok(written)
    }

    /// Writes a chunk of specs in one transaction, each only if its record is unchanged;
    /// returns the ones stored.
    async fn write_spec_chunk<'a>(
        &self,
        chunk: &[(String, Vec<u8>, &'a SpecWrite)],
    ) -> Result<Vec<&'a SpecWrite>> {
        let mut todo: Vec<&(String, Vec<u8>, &SpecWrite)> = chunk.iter().collect();
        loop {
            let mut txn = Txn::new();
            for (key, value, w) in &todo {
                txn = txn
                    .when(key.clone(), w.revision)
                    .put(key.clone(), value.clone());
                if let Some(h) = &w.history {
                    txn = h.add_to(txn);
                }
            }
            if !matches!(self.kv.txn(txn).await?, TxnOutcome::Conflict) {
                return Ok(todo.iter().map(|(_, _, w)| *w).collect());
            }
            // Keep only the records nobody replaced meanwhile, and try again.
            let mut kept = Vec::with_capacity(todo.len());
            for item in todo {
                let now = self.kv.get(&item.0).await?.map_or(0, |kv| kv.mod_revision);
                if now == item.2.revision {
                    kept.push(item);
                }
            }
            todo = kept;
            if todo.is_empty() {
                return Ok(Vec::new());
            }
        }
    }

    /// The spec records and revisions of several nodes, in the order given: one by one for a
    /// few, else from one read of every spec record (a fragment write touching many nodes does
    /// not wait for a read per node).
    pub async fn spec_revs(&self, node_ids: &[String]) -> Result<Vec<(SpecRecord, Revision)>> {
        if node_ids.len() <= 16 {
            let mut out = Vec::with_capacity(node_ids.len());
            for id in node_ids {
                out.push(self.spec_rev(id).await?);
            }
            return Ok(out);
        }
        let mut all: std::collections::HashMap<String, KeyValue> = self
            .kv
            .range("specs/", None, 0)
            .await?
            .into_iter()
            .map(|kv| (kv.key["specs/".len()..].to_string(), kv))
            .collect();
        node_ids
            .iter()
            .map(|id| match all.remove(id) {
                Some(kv) => Ok((dec(&kv)?, kv.mod_revision)),
                None => Ok((SpecRecord::default(), 0)),
            })
            .collect()
    }

    /// Gives the spec records written before `base` existed the base they were read with
    /// (`(node id, base)`; once, at start-up). A record changed meanwhile (by another replica
    /// doing the same) is left as it is. Returns how many were written.
    pub async fn set_bases(&self, bases: &[(String, i64)]) -> Result<usize> {
        let mut written = 0;
        for chunk in bases.chunks(TXN_OPS) {
            let mut txn = Txn::new();
            let mut n = 0;
            for (id, base) in chunk {
                let (mut rec, rev) = self.spec_rev(id).await?;
                if rec.base.is_some() || rev == 0 {
                    continue;
                }
                rec.base = Some(*base);
                let key = format!("specs/{id}");
                txn = txn.when(key.clone(), rev).put(key, enc(&rec));
                n += 1;
            }
            if n > 0 && !matches!(self.kv.txn(txn).await?, TxnOutcome::Conflict) {
                written += n;
            }
        }
        Ok(written)
    }

    /// A node's spec record and its revision (`(default, 0)` when it has none yet).
    pub async fn spec_rev(&self, node_id: &str) -> Result<(SpecRecord, Revision)> {
        Ok(self
            .get(&format!("specs/{node_id}"))
            .await?
            .unwrap_or_default())
    }
}

impl Default for SpecRecord {
    fn default() -> Self {
        Self {
            generation: 0,
            base: Some(0),
            own: NodeSpec::default(),
            updated_at: None,
            payload_overrides: Default::default(),
            sessions: Default::default(),
        }
    }
}

impl SpecRecord {
    /// The record's `base`; a record from before `base` existed is read as having the
    /// generation it stored under this `weight`.
    pub fn base_under(&self, weight: u64) -> i64 {
        self.base
            .unwrap_or_else(|| crate::fragment_set::base_for(self.generation, weight))
    }
}

/// Transaction operations one spec write takes: its record, and its history version.
fn ops_of(w: &SpecWrite) -> usize {
    1 + w.history.as_ref().map_or(0, HistoryWrite::ops)
}
