//! `steward-registry migrate`: copies an embedded registry (the sled store in `--from-data-dir`)
//! into an etcd store, in transactions that fit etcd's limits (at most [`MAX_OPS`] keys and
//! [`MAX_TXN_BYTES`] bytes each), then reads every key back and compares (`verify.rs`), and
//! reports what it did (`summary.rs`). Session keys of the old process (`replicas/`, `hb/`) and
//! its blob-copy records are not copied: running replicas write their own. Payload blobs stay
//! files; the summary says how to bring them to the replicas.

mod summary;
mod verify;

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub use summary::{BlobStats, KindCount, Summary};

use crate::kv::etcd::{EtcdConfigError, EtcdKv, EtcdOptions};
use crate::kv::sled::SledKv;
use crate::kv::{KeyValue, Kv, KvError, Txn, TxnOutcome};

/// Most keys written by one transaction (etcd refuses more than `--max-txn-ops`, default 128).
pub const MAX_OPS: usize = 100;
/// Most bytes of keys and values in one transaction, well under etcd's default request limit
/// (`--max-request-bytes`, 1.5 MiB).
pub const MAX_TXN_BYTES: usize = 1024 * 1024;
/// etcd's default request limit (`--max-request-bytes`): 1.5 MiB.
pub const ETCD_MAX_REQUEST_BYTES: usize = 1_536 * 1024;
/// Room left in a request for its framing: a record may be this much smaller than the limit.
const REQUEST_FRAMING: usize = 16 * 1024;
/// Bytes counted per written key besides its key (twice: compare and put) and value: the
/// protobuf framing of the compare and the put.
const OP_OVERHEAD: usize = 32;
/// Keys read per request from the embedded store.
const SOURCE_PAGE: usize = 1000;
/// Keys read per request from etcd when verifying (bounded response size).
const ETCD_PAGE: usize = 100;
/// Progress is logged every this many records of one kind (and when a kind is done).
const PROGRESS_EVERY: u64 = 10_000;

/// Key prefixes that are not copied: the old process's session keys and the blob copies it
/// recorded (replicas announce the blobs they hold when they start).
pub const SKIPPED: [&str; 3] = ["replicas/", "hb/", "blob-copies/"];

/// `steward-registry migrate` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MigrateArgs {
    /// Data dir of the embedded registry to copy (its `db/`, `blobs/` and `admin.token`). Stop
    /// that registry first: a running one holds a lock on its store.
    #[arg(long)]
    pub from_data_dir: PathBuf,
    /// The etcd cluster to copy into: etcd://host1:2379,host2:2379[/prefix] (etcds:// for TLS).
    #[arg(long)]
    pub to: String,
    /// Key prefix of the registry's records in etcd, as the replicas will use it [default:
    /// the URL's path, else /steward].
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// CA certificate (PEM) that signs the etcd servers' certificates (etcds://).
    #[arg(long)]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd client-certificate authentication.
    #[arg(long, requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert-file.
    #[arg(long, requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd's --max-request-bytes, if raised there (a record larger than this cannot be
    /// copied, nor written by a replica) [default: 1572864].
    #[arg(long)]
    pub etcd_max_request_bytes: Option<usize>,
    /// Replace what the etcd prefix holds (every key under it is deleted first) instead of
    /// refusing a prefix that already holds registry data.
    #[arg(long)]
    pub force: bool,
}

/// Errors of a migration; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{} holds no embedded registry store ({} is missing): give the registry's data dir \
             (data_dir, default /var/lib/steward-registry)", .dir.display(), .dir.join("db").display())]
    NoStore { dir: PathBuf },
    #[error("the embedded store in {} is in use: a registry is still running on it (sled holds \
             a lock on {}). Stop it first (e.g. `systemctl stop steward-registry`), then run \
             migrate again", .dir.display(), .dir.join("db").display())]
    Locked { dir: PathBuf },
    #[error("cannot open the embedded store in {}: {source}", .dir.display())]
    Source {
        dir: PathBuf,
        #[source]
        source: KvError,
    },
    #[error("etcd options: {0}")]
    Options(#[from] EtcdConfigError),
    #[error("etcd prefix {prefix:?} must start with '/' and name something (e.g. /steward)")]
    Prefix { prefix: String },
    #[error("cannot connect to the etcd store {store}: {source}")]
    Connect {
        store: String,
        #[source]
        source: KvError,
    },
    #[error(
        "the etcd store {store} already holds registry data (e.g. key {key:?}): migrate into \
             an empty prefix (--etcd-prefix), or give --force to delete what it holds and copy \
             again (stop every registry replica using it first)"
    )]
    NotEmpty { store: String, key: String },
    #[error(
        "record {key:?} is {bytes} bytes: larger than one etcd request may be ({limit} \
             bytes with etcd's default --max-request-bytes)"
    )]
    TooLarge {
        key: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "keys being copied (from {key:?} on) appeared in {store} meanwhile: is a registry \
             replica running on this prefix? Stop it and run migrate again with --force"
    )]
    Conflict { store: String, key: String },
    #[error("{what}: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: KvError,
    },
    #[error("{what}: {source}")]
    Typed {
        what: &'static str,
        #[source]
        source: crate::store::StoreError,
    },
    #[error(
        "the copy in {store} differs from the embedded store in {count} place(s), e.g. \
             {examples}; run migrate again with --force"
    )]
    Verify {
        store: String,
        count: usize,
        examples: String,
    },
    #[error("reading {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// True for keys that are not copied ([`SKIPPED`]).
pub fn skipped(key: &str) -> bool {
    SKIPPED.iter().any(|p| key.starts_with(p))
}

/// The kind of a record: its key up to the first `/` (`nodes`, `events`, `meta`, ...).
pub fn kind(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// Splits records of the given sizes (in order) into consecutive batches of at most `max_ops`
/// records and `max_bytes` bytes; a record larger than `max_bytes` gets a batch of its own.
pub fn batches(sizes: &[usize], max_ops: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        let full = i - start >= max_ops.max(1) || bytes + size > max_bytes;
        if i > start && full {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// The bytes one record costs in a copy transaction (`prefix_len`: the etcd prefix and `/`).
fn op_size(kv: &KeyValue, prefix_len: usize) -> usize {
    2 * (prefix_len + kv.key.len()) + kv.value.len() + OP_OVERHEAD
}

/// Reads a store's keys page by page, in key order, leaving out [`SKIPPED`] ones.
struct Pages<'a> {
    kv: &'a dyn Kv,
    page: usize,
    after: Option<String>,
    buf: VecDeque<KeyValue>,
    done: bool,
}

impl<'a> Pages<'a> {
    fn new(kv: &'a dyn Kv, page: usize) -> Self {
        Self {
            kv,
            page,
            after: None,
            buf: VecDeque::new(),
            done: false,
        }
    }

    /// The next page (empty at the end).
    async fn next_page(&mut self) -> Result<Vec<KeyValue>, KvError> {
        let mut out = Vec::new();
        while out.is_empty() && !self.done {
            let got = self.kv.range("", self.after.as_deref(), self.page).await?;
            self.done = got.len() < self.page;
            if let Some(last) = got.last() {
                self.after = Some(last.key.clone());
            }
            out.extend(got.into_iter().filter(|kv| !skipped(&kv.key)));
        }
        Ok(out)
    }

    /// The next key without taking it.
    async fn peek(&mut self) -> Result<Option<&KeyValue>, KvError> {
        if self.buf.is_empty() {
            let page = self.next_page().await?;
            self.buf.extend(page);
        }
        Ok(self.buf.front())
    }

    fn take(&mut self) -> Option<KeyValue> {
        self.buf.pop_front()
    }
}

/// Runs a migration: open both stores, refuse (or with `force`, clear) a prefix holding data,
/// copy, verify, and say what was done.
pub async fn migrate(args: MigrateArgs) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let dir = args.from_data_dir.clone();
    let source: Arc<dyn Kv> = Arc::new(open_source(&dir)?);
    let opts = etcd_options(&args)?;
    let store = opts.describe();
    let prefix_len = opts.prefix.trim_end_matches('/').len() + 1;
    let etcd = Arc::new(
        EtcdKv::connect(opts)
            .await
            .map_err(|source| MigrateError::Connect {
                store: store.clone(),
                source,
            })?,
    );
    let dest: Arc<dyn Kv> = etcd.clone();
    let replaced = prepare(dest.as_ref(), &store, args.force).await?;
    tracing::info!(from = %dir.display(), to = %store, "copying the registry's records");
    let limits = Limits::new(args.etcd_max_request_bytes);
    let kinds = copy(source.as_ref(), dest.as_ref(), prefix_len, limits).await?;
    tracing::info!(to = %store, "verifying: reading every key back");
    let checked = verify::verify(&source, &dest).await?;
    let blobs = summary::blob_stats(&dir, &source).await?;
    if let Err(e) = etcd.close().await {
        tracing::warn!(error = %e, "closing the etcd session");
    }
    let token = dir.join("admin.token");
    Ok(Summary {
        from: dir,
        to: store,
        kinds,
        replaced,
        last_event_seq: checked.last_event_seq,
        specs: checked.specs,
        blobs,
        admin_token: token.exists().then_some(token),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Opens the embedded store (without a disk reserve). It must exist; a running registry holds
/// sled's lock on it. Its records are only read, but opening a data dir of a registry older than
/// the `Kv` interface converts it to the current layout (`kv/sled/legacy.rs`), as `serve` would.
fn open_source(dir: &Path) -> Result<SledKv, MigrateError> {
    if !dir.join("db").is_dir() {
        return Err(MigrateError::NoStore {
            dir: dir.to_path_buf(),
        });
    }
    SledKv::open(dir, 0).map_err(|source| {
        let locked = match &source {
            KvError::Io { source, .. } => source.to_string().contains("could not acquire lock"),
            _ => false,
        };
        if locked {
            MigrateError::Locked {
                dir: dir.to_path_buf(),
            }
        } else {
            MigrateError::Source {
                dir: dir.to_path_buf(),
                source,
            }
        }
    })
}

/// The etcd options from `--to` and the etcd flags.
fn etcd_options(args: &MigrateArgs) -> Result<EtcdOptions, MigrateError> {
    let mut opts = EtcdOptions::from_url(args.to.trim())?;
    if let Some(p) = &args.etcd_prefix {
        if !p.starts_with('/') || p.len() < 2 {
            return Err(MigrateError::Prefix { prefix: p.clone() });
        }
        opts.prefix = p.trim_end_matches('/').to_string();
    }
    opts.ca_file = args.etcd_ca_file.clone();
    opts.cert_file = args.etcd_cert_file.clone();
    opts.key_file = args.etcd_key_file.clone();
    Ok(opts)
}

/// Refuses a prefix that holds keys, or with `force` deletes them; returns how many were
/// deleted.
async fn prepare(dest: &dyn Kv, store: &str, force: bool) -> Result<usize, MigrateError> {
    let read = |source| MigrateError::Store {
        what: "reading the etcd prefix",
        source,
    };
    let first = dest.range("", None, 1).await.map_err(read)?;
    let Some(first) = first.first() else {
        return Ok(0);
    };
    if !force {
        return Err(MigrateError::NotEmpty {
            store: store.to_string(),
            key: first.key.clone(),
        });
    }
    let mut deleted = 0;
    loop {
        let keys = dest.range("", None, MAX_OPS).await.map_err(read)?;
        if keys.is_empty() {
            break;
        }
        let txn = keys
            .iter()
            .fold(Txn::new(), |t, kv| t.delete(kv.key.clone()));
        dest.txn(txn).await.map_err(|source| MigrateError::Store {
            what: "deleting what the etcd prefix held (--force)",
            source,
        })?;
        deleted += keys.len();
    }
    tracing::warn!(
        store,
        keys = deleted,
        "--force: deleted what the etcd prefix held"
    );
    Ok(deleted)
}

/// Sizes that bound the copy's transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest record (alone in a transaction).
    pub record: usize,
    /// Bytes of one transaction of several records.
    pub txn: usize,
}

impl Limits {
    /// The limits under etcd's request limit (`None`: etcd's default).
    pub fn new(max_request_bytes: Option<usize>) -> Self {
        let request = max_request_bytes.unwrap_or(ETCD_MAX_REQUEST_BYTES);
        let record = request.saturating_sub(REQUEST_FRAMING).max(1);
        Self {
            record,
            txn: MAX_TXN_BYTES.min(record),
        }
    }
}

/// Copies every record (but the [`SKIPPED`] ones) in key order; returns records and bytes per
/// kind.
async fn copy(
    source: &dyn Kv,
    dest: &dyn Kv,
    prefix_len: usize,
    limits: Limits,
) -> Result<BTreeMap<String, KindCount>, MigrateError> {
    let mut kinds: BTreeMap<String, KindCount> = BTreeMap::new();
    let mut pages = Pages::new(source, SOURCE_PAGE);
    let mut current: Option<String> = None;
    loop {
        let page = pages
            .next_page()
            .await
            .map_err(|source| MigrateError::Store {
                what: "reading the embedded store",
                source,
            })?;
        if page.is_empty() {
            break;
        }
        let sizes: Vec<usize> = page.iter().map(|kv| op_size(kv, prefix_len)).collect();
        if let Some((kv, &bytes)) = page.iter().zip(&sizes).find(|(_, &s)| s > limits.record) {
            return Err(MigrateError::TooLarge {
                key: kv.key.clone(),
                bytes,
                limit: limits.record,
            });
        }
        for range in batches(&sizes, MAX_OPS, limits.txn) {
            write_batch(dest, &page[range.clone()]).await?;
            for kv in &page[range] {
                let k = kind(&kv.key);
                if current.as_deref() != Some(k) {
                    log_done(current.as_deref(), &kinds);
                    current = Some(k.to_string());
                }
                let c = kinds.entry(k.to_string()).or_default();
                c.records += 1;
                c.bytes += kv.value.len() as u64;
                if c.records % PROGRESS_EVERY == 0 {
                    tracing::info!(kind = k, records = c.records, bytes = c.bytes, "copying");
                }
            }
        }
    }
    log_done(current.as_deref(), &kinds);
    Ok(kinds)
}

fn log_done(kind: Option<&str>, kinds: &BTreeMap<String, KindCount>) {
    if let Some(c) = kind.and_then(|k| kinds.get(k)) {
        tracing::info!(
            kind,
            records = c.records,
            bytes = c.bytes,
            "copied every record of this kind"
        );
    }
}

/// Writes one batch in one transaction, each key only if absent.
async fn write_batch(dest: &dyn Kv, batch: &[KeyValue]) -> Result<(), MigrateError> {
    let txn = batch.iter().fold(Txn::new(), |t, kv| {
        t.when(kv.key.clone(), 0)
            .put(kv.key.clone(), kv.value.clone())
    });
    match dest.txn(txn).await {
        Ok(TxnOutcome::Committed(_)) => Ok(()),
        Ok(TxnOutcome::Conflict) => Err(MigrateError::Conflict {
            store: dest.describe(),
            key: batch.first().map(|kv| kv.key.clone()).unwrap_or_default(),
        }),
        Err(source) => Err(MigrateError::Store {
            what: "writing to etcd",
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
