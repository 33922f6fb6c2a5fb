//! [`Kv::get_many`](super::super::Kv::get_many) on etcd: many single keys read in read-only
//! transactions of [`BATCH`] gets each, a few transactions in flight, instead of one round trip
//! per key.

use etcd_client::{TxnOp, TxnOpResponse};
use futures_util::{stream, StreamExt, TryStreamExt};

use super::{Inner, KeyValue, KvError};

/// Gets per transaction: well under etcd's default `--max-txn-ops` (128), and a response of
/// 64 records stays far below gRPC's 4 MiB message limit.
const BATCH: usize = 64;
/// Transactions of one call in flight at once.
const IN_FLIGHT: usize = 4;

pub(super) async fn get_many(
    inner: &Inner,
    keys: &[String],
) -> Result<Vec<Option<KeyValue>>, KvError> {
    let chunks: Vec<Vec<String>> = keys.chunks(BATCH).map(<[String]>::to_vec).collect();
    let batches: Vec<Vec<Option<KeyValue>>> = stream::iter(chunks)
        .map(|chunk| async move { batch(inner, &chunk).await })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(batches.into_iter().flatten().collect())
}

async fn batch(inner: &Inner, keys: &[String]) -> Result<Vec<Option<KeyValue>>, KvError> {
    let ops: Vec<TxnOp> = keys
        .iter()
        .map(|k| TxnOp::get(inner.full(k), None))
        .collect();
    let txn = etcd_client::Txn::new().and_then(ops);
    let resp = inner
        .call_read("get many", |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
    let answers = resp.op_responses();
    if answers.len() != keys.len() {
        return Err(unexpected(
            inner,
            format!("{} answers to {} gets", answers.len(), keys.len()),
        ));
    }
    answers
        .iter()
        .map(|a| match a {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| inner.key_value(kv)).transpose(),
            _ => Err(unexpected(inner, "an answer that is not a get".into())),
        })
        .collect()
}

fn unexpected(inner: &Inner, what: String) -> KvError {
    KvError::Backend {
        store: inner.store.clone(),
        source: format!("a read-only transaction of gets came back with {what}").into(),
    }
}
