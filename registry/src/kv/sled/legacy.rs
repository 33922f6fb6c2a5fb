//! The one-off import of a data dir written by the registry before the `Kv` interface: its
//! per-record-type sled trees are copied into the `kv` tree under the typed store's keys, in
//! one transaction, the first time such a database is opened; the old trees are then dropped.

use std::path::Path;

use ::sled::transaction::ConflictableTransactionError;
use ::sled::Transactional;

use super::{be_u64, encode, Db, REVISION_KEY};

/// The old trees and the key prefix their records get (values are unchanged).
const OLD_TREES: [(&str, &str); 10] = [
    ("nodes", "nodes"),
    ("machines", "machines"),
    ("specs", "specs"),
    ("fragments", "fragments"),
    ("tokens", "tokens"),
    ("events", "events"),
    ("payloads", "payloads"),
    ("rollouts", "rollouts"),
    ("resets", "resets"),
    ("reenroll_grants", "grants"),
];

/// Key in the `meta` tree written with the import (the number of records imported), so that an
/// interrupted clean-up of the old trees is finished at the next open.
const IMPORTED_KEY: &[u8] = b"legacy_imported";

/// The new key of an old record: events were keyed by their 8-byte big-endian sequence
/// number, payload versions by `name NUL version`, everything else by its id.
fn new_key(prefix: &str, old: &[u8]) -> String {
    match prefix {
        "events" => format!("events/{:020}", be_u64(old)),
        "payloads" => {
            let mut parts = old.splitn(2, |b| *b == 0);
            let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let version = String::from_utf8_lossy(parts.next().unwrap_or_default());
            format!("payloads/{name}/{version}")
        }
        _ => format!("{prefix}/{}", String::from_utf8_lossy(old)),
    }
}

/// Imports the old trees of `db` into its `kv` tree when they hold data and `kv` is empty, then
/// drops them. Returns the number of records imported.
pub(super) fn import(db: &Db, dir: &Path) -> Result<usize, ::sled::Error> {
    let names = db.db.tree_names();
    let present: Vec<(&str, &str)> = OLD_TREES
        .into_iter()
        .filter(|(old, _)| names.iter().any(|n| n.as_ref() == old.as_bytes()))
        .collect();
    if present.is_empty() {
        return Ok(0);
    }
    let done_before = db.meta.get(IMPORTED_KEY)?.is_some();
    let mut records = Vec::new();
    if !done_before {
        for (old, prefix) in &present {
            for item in db.db.open_tree(old)?.iter() {
                let (k, v) = item?;
                records.push((new_key(prefix, &k), v));
            }
        }
        if !records.is_empty() && !db.kv.is_empty() {
            tracing::warn!(dir = %dir.display(), records = records.len(),
                "the store holds both old-format trees and new records: old trees left as they are");
            return Ok(0);
        }
    }
    if !records.is_empty() {
        let count = records.len() as u64;
        (&db.kv, &db.meta)
            .transaction(|(kv, meta)| {
                let rev = meta.get(REVISION_KEY)?.map_or(0, |v| be_u64(&v)) + 1;
                for (key, value) in &records {
                    kv.insert(key.as_bytes(), encode(rev, value))?;
                }
                meta.insert(REVISION_KEY, &rev.to_be_bytes())?;
                meta.insert(IMPORTED_KEY, &count.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                ::sled::transaction::TransactionError::Storage(e) => e,
                ::sled::transaction::TransactionError::Abort(()) => {
                    ::sled::Error::ReportableBug("legacy import aborted".into())
                }
            })?;
        db.db.flush()?;
        tracing::info!(dir = %dir.display(), records = count,
            "imported the records of the old store format");
    }
    for (old, _) in &present {
        db.db.drop_tree(old)?;
    }
    db.db.flush()?;
    Ok(records.len())
}
