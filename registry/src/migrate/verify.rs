//! The check after a copy: both stores read in key order side by side (every key of etcd read
//! back, bytes compared, nothing missing, nothing extra), then the event sequence counter and
//! every node's spec generation read through the typed store on both sides.

use std::cmp::Ordering;
use std::sync::Arc;

use super::{MigrateError, Pages, ETCD_PAGE, SOURCE_PAGE};
use crate::kv::{Kv, KvError};
use crate::store::Store;

/// Differences listed in the error at most.
const EXAMPLES: usize = 5;

/// What the typed check read (the same on both sides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub last_event_seq: u64,
    /// Nodes with a spec record.
    pub specs: usize,
}

/// Compares the copy with the original; an error names the first differences.
pub async fn verify(source: &Arc<dyn Kv>, dest: &Arc<dyn Kv>) -> Result<Checked, MigrateError> {
    let diffs = compare(source.as_ref(), dest.as_ref())
        .await
        .map_err(|source| MigrateError::Store {
            what: "reading back for the check",
            source,
        })?;
    let (src, dst) = (Store::new(source.clone()), Store::new(dest.clone()));
    let typed = |source| MigrateError::Typed {
        what: "reading back for the check",
        source,
    };
    let seq = (
        src.last_event_seq().await.map_err(typed)?,
        dst.last_event_seq().await.map_err(typed)?,
    );
    let gens = (
        src.generations().await.map_err(typed)?,
        dst.generations().await.map_err(typed)?,
    );
    let mut diffs = diffs;
    if seq.0 != seq.1 {
        diffs.push(format!(
            "event sequence {} in the embedded store, {} in etcd",
            seq.0, seq.1
        ));
    }
    if gens.0 != gens.1 {
        diffs.push(format!(
            "spec generations differ: {:?} in the embedded store, {:?} in etcd",
            gens.0, gens.1
        ));
    }
    if !diffs.is_empty() {
        return Err(MigrateError::Verify {
            store: dest.describe(),
            count: diffs.len(),
            examples: diffs
                .iter()
                .take(EXAMPLES)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(Checked {
        last_event_seq: seq.0,
        specs: gens.0.len(),
    })
}

/// Reads both stores in key order side by side; returns every difference (missing in etcd,
/// different bytes, only in etcd).
pub(super) async fn compare(source: &dyn Kv, dest: &dyn Kv) -> Result<Vec<String>, KvError> {
    let mut a = Pages::new(source, SOURCE_PAGE);
    let mut b = Pages::new(dest, ETCD_PAGE);
    let mut diffs = Vec::new();
    loop {
        let order = match (a.peek().await?, b.peek().await?) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.key.cmp(&y.key),
        };
        match order {
            Ordering::Less => {
                if let Some(kv) = a.take() {
                    diffs.push(format!("{} is missing in etcd", kv.key));
                }
            }
            Ordering::Greater => {
                if let Some(kv) = b.take() {
                    diffs.push(format!("{} is in etcd only", kv.key));
                }
            }
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (a.take(), b.take()) {
                    if x.value != y.value {
                        diffs.push(format!(
                            "{} differs ({} bytes in the embedded store, {} in etcd)",
                            x.key,
                            x.value.len(),
                            y.value.len()
                        ));
                    }
                }
            }
        }
    }
    Ok(diffs)
}
