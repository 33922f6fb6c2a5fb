//! Spec history and rollback: the versions kept of each node's own spec and each fragment
//! (written with the change itself, `store/history.rs`), and reverts, which write an old
//! version again as a new one.

use chrono::Utc;
use steward_proto::{Actor, FragmentWrite, FragmentWritten, NodeSpec, SpecVersion, SpecWritten};

use super::{Result, SpecError, Specs};
use crate::store::{HistoryOf, HistoryWrite};

impl Specs {
    /// The version to store with a change of `name`'s spec (the next sequence number).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn version(
        &self,
        of: HistoryOf,
        name: &str,
        generation: u64,
        by: &Actor,
        note: &str,
        spec: Option<&NodeSpec>,
        selector: Option<&str>,
    ) -> Result<HistoryWrite> {
        let seq = self.store.history_seq(of, name).await? + 1;
        let entry = SpecVersion {
            seq,
            generation,
            time: Utc::now(),
            author: by.name.clone().unwrap_or_else(|| "-".into()),
            note: note.to_string(),
            spec: spec.cloned(),
            selector: selector.map(str::to_string),
        };
        Ok(HistoryWrite::new(of, name, entry, self.history_kept))
    }

    /// The kept versions of a node's own spec, oldest first.
    pub async fn node_history(&self, id: &str) -> Result<Vec<SpecVersion>> {
        self.store
            .node(id)
            .await?
            .ok_or_else(|| SpecError::NoNode(id.to_string()))?;
        Ok(self.store.history(HistoryOf::Node, id).await?)
    }

    /// The kept versions of a fragment (deleted ones too), oldest first.
    pub async fn fragment_history(&self, name: &str) -> Result<Vec<SpecVersion>> {
        let v = self.store.history(HistoryOf::Fragment, name).await?;
        if v.is_empty() && self.store.fragment(name).await?.is_none() {
            return Err(SpecError::NoFragment(name.to_string()));
        }
        Ok(v)
    }

    /// Writes again the own spec a node had at generation `to` (the last version written at
    /// or before it), as a new generation.
    pub async fn revert_node(&self, id: &str, to: u64, by: &Actor) -> Result<SpecWritten> {
        let kept = self.node_history(id).await?;
        let old = kept
            .iter()
            .rev()
            .find(|v| v.generation <= to)
            .and_then(|v| v.spec.clone())
            .ok_or_else(|| SpecError::NoVersion {
                what: format!("node {id}"),
                at: to,
                kept: describe(&kept),
            })?;
        let note = format!("reverted to generation {to}");
        retry_stale!(self.write_node_spec_once(id, old.clone(), None, by, &note))
    }

    /// Writes again revision `to` of a fragment (its last kept version of that revision) as a
    /// new revision; a version that was a deletion deletes the fragment. Like
    /// [`Specs::write_fragment`], the wake-up of the nodes it moved comes with the answer.
    pub async fn revert_fragment(
        &self,
        name: &str,
        to: u64,
        by: &Actor,
    ) -> Result<(FragmentWritten, crate::fleet::Wake)> {
        let kept = self.fragment_history(name).await?;
        let old = kept
            .iter()
            .rev()
            .find(|v| v.generation == to && v.spec.is_some())
            .ok_or_else(|| SpecError::NoVersion {
                what: format!("fragment {name}"),
                at: to,
                kept: describe(&kept),
            })?;
        let body = FragmentWrite {
            selector: old.selector.clone().unwrap_or_default(),
            spec: old.spec.clone().unwrap_or_default(),
        };
        let note = format!("reverted to revision {to}");
        retry_stale!(self.write_fragment_once(name, body.clone(), by, &note))
    }
}

/// `generations 3-9 are kept` / `nothing is kept`, for the error of a revert.
fn describe(kept: &[SpecVersion]) -> String {
    match (kept.first(), kept.last()) {
        (Some(a), Some(b)) => format!("kept: {} to {}", a.generation, b.generation),
        _ => "nothing is kept".into(),
    }
}
