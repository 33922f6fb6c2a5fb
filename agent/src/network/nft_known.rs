//! What the agent knows of its nftables table between passes, and what a pass does with `nft`
//! given that (pure, table-tested). Kept in `NetState::table`, in the data dir, so one-shot
//! `apply` processes know it too: the digest of the batch that makes the table what it was, and
//! the kernel's ruleset generation id then (`nft_gen.rs`), with where it was read.
//!
//! The generation moves on every nftables commit in the namespace, whoever makes it; so the
//! same generation (same boot, same namespace) means the table is still what the agent left.

use sha2::{Digest, Sha256};

use super::nft_gen::{self, Generation};
use super::types::TableSeen;

/// What a pass does with `nft`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The table is known to be the plan: no `nft` at all.
    Nothing,
    /// Write the plan without looking first: the table is known (it differs from the plan by
    /// a change of the spec, never by drift), or the agent knows of no table of its own
    /// (nothing could be reported drifted). The batch replaces whatever is there.
    Write,
    /// `nft -j list table inet steward`, compare with the plan, write on a difference.
    List,
}

/// What a pass's decision rests on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// A full resync: always look.
    pub full: bool,
    /// The table as the agent last knew it.
    pub seen: Option<&'a TableSeen>,
    /// The generation now (`None`: cannot be read, so nothing is known).
    pub now: Option<&'a Generation>,
    /// [`digest`] of this pass's batch.
    pub digest: &'a str,
    /// The plan is no table at all.
    pub want_empty: bool,
    /// No bridge was isolated by the agent (`NetState::isolated`): it knows of no table.
    pub none_isolated: bool,
}

/// The table is what the agent last knew (nothing committed since, same boot and namespace).
fn unchanged(f: &Facts) -> bool {
    match (f.seen, f.now) {
        (Some(seen), Some(now)) => seen.generation == now.id && seen.at == now.at,
        _ => false,
    }
}

pub fn step(f: &Facts) -> Step {
    if f.full {
        return Step::List;
    }
    match f.seen {
        Some(seen) if unchanged(f) && seen.digest == f.digest => Step::Nothing,
        Some(_) if unchanged(f) => Step::Write,
        _ if f.none_isolated && !f.want_empty => Step::Write,
        _ => Step::List,
    }
}

/// sha256 (hex) of a batch's JSON text.
pub fn digest(batch: &str) -> String {
    hex::encode(Sha256::digest(batch.as_bytes()))
}

/// After a look that found the table as planned: known at the generation read before the look
/// (a change between that read and the look moves the generation, so the next pass looks).
pub fn looked(before: Option<&Generation>, digest: &str) -> Option<TableSeen> {
    before.map(|g| TableSeen {
        generation: g.id,
        at: g.at.clone(),
        digest: digest.to_string(),
    })
}

/// After the agent's own write: known at `after` only when that is the very next generation
/// to `before` (read before the write), i.e. the write was the only commit in between; else
/// (another commit came between, or a read failed) not known, and the next pass looks.
pub fn wrote(
    before: Option<&Generation>,
    after: Option<&Generation>,
    digest: &str,
) -> Option<TableSeen> {
    match (before, after) {
        (Some(b), Some(a)) if a.at == b.at && a.id == nft_gen::next(b.id) => looked(after, digest),
        _ => None,
    }
}

#[cfg(test)]
#[path = "nft_known_tests.rs"]
mod tests;
