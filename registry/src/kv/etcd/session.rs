//! This process's etcd lease and what hangs on it: the keep-alive task (the lease is granted
//! at first use, renewed every TTL/4, re-granted when lost, and the session keys are then
//! written again), [`Kv::put_session`](crate::kv::Kv::put_session) keys, and leader elections
//! (a lease-bound key written only if absent; `is_leader` turns false as soon as no
//! keep-alive has succeeded within TTL/2, before the server can expire the lease).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, PutOptions, TxnOp, TxnOpResponse, WatchOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{to_i64, Inner};
use crate::kv::{KvError, Leadership, Revision};

/// The current lease as the keep-alive task sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// `0`: none (not yet granted, lost, or stopped).
    pub id: i64,
    /// Until when this process may act as the lease's holder: the send time of the last
    /// successful grant/renewal plus TTL/2 (the server keeps it at least TTL after that).
    pub fresh_until: Instant,
}

pub(super) struct Session {
    lease: watch::Sender<Lease>,
    /// Session keys (full etcd keys) and their values, written again on a new lease.
    keys: Mutex<BTreeMap<String, Vec<u8>>>,
    started: Mutex<bool>,
    /// Leadership flags handed out by `elect`, forced false when the session stops.
    leaders: Mutex<Vec<Arc<watch::Sender<bool>>>>,
}

impl Session {
    pub(super) fn new() -> Self {
        let (lease, _) = watch::channel(Lease {
            id: 0,
            fresh_until: Instant::now(),
        });
        Self {
            lease,
            keys: Mutex::new(BTreeMap::new()),
            started: Mutex::new(false),
            leaders: Mutex::new(Vec::new()),
        }
    }

    /// Ends every leadership and forgets the lease; returns it (for a revoke).
    pub(super) fn stop(&self) -> Option<i64> {
        for l in lock(&self.leaders).iter() {
            l.send_replace(false);
        }
        let old = self.lease.send_replace(Lease {
            id: 0,
            fresh_until: Instant::now(),
        });
        (old.id != 0).then_some(old.id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ttl(inner: &Inner) -> Duration {
    inner.opts.lease_ttl.max(Duration::from_secs(1))
}

/// Starts the keep-alive task once, then waits (up to `request_timeout`) for a lease.
async fn current_lease(inner: &Arc<Inner>) -> Result<i64, KvError> {
    {
        let mut started = lock(&inner.session.started);
        if !*started {
            *started = true;
            inner.spawn(keeper(inner.clone()));
        }
    }
    let mut rx = inner.session.lease.subscribe();
    let got = tokio::time::timeout(inner.opts.request_timeout, rx.wait_for(|l| l.id != 0)).await;
    match got {
        Ok(Ok(l)) => Ok(l.id),
        _ => Err(inner.unavailable(
            "lease",
            format!("no lease granted within {:?}", inner.opts.request_timeout),
        )),
    }
}

/// Grants the lease, keeps it alive, and grants a new one when it is lost.
async fn keeper(inner: Arc<Inner>) {
    let ttl = ttl(&inner);
    loop {
        let sent = Instant::now();
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(10);
        let grant = inner
            .call("lease grant", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await;
        let id = match grant {
            Ok(g) => g.id(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot get an etcd lease; retrying");
                tokio::time::sleep(ttl / 10).await;
                continue;
            }
        };
        inner.session.lease.send_replace(Lease {
            id,
            fresh_until: sent + ttl / 2,
        });
        tracing::debug!(lease = id, "etcd lease granted");
        keep_alive(&inner, id, sent + ttl).await;
        tracing::warn!(lease = id, store = %inner.store, "etcd lease lost; granting a new one");
        inner.session.lease.send_replace(Lease {
            id: 0,
            fresh_until: Instant::now(),
        });
    }
}

/// Renews lease `id` every TTL/4 until it is lost (etcd says so, or no renewal succeeded
/// before `expires`, the earliest time the server may drop it). Writes the session keys
/// again after each success while they are not all written under this lease.
async fn keep_alive(inner: &Arc<Inner>, id: i64, mut expires: Instant) {
    let ttl = ttl(inner);
    let mut keys_written = false;
    let mut stream = None;
    while Instant::now() < expires {
        let sent = Instant::now();
        let renewed = match stream.as_mut() {
            None => {
                match inner
                    .call("lease keep-alive", |mut c| async move {
                        c.lease_keep_alive(id).await
                    })
                    .await
                {
                    Ok(s) => {
                        stream = Some(s);
                        Ok(true)
                    }
                    Err(e) if e.to_string().contains("lease not found") => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some((keeper, responses)) => {
                let send = keeper.keep_alive();
                match inner
                    .call_once("lease keep-alive", async move {
                        send.await?;
                        responses.message().await
                    })
                    .await
                {
                    Ok(Some(r)) => Ok(r.ttl() > 0),
                    Ok(None) => Err(inner.unavailable("lease keep-alive", "stream ended".into())),
                    Err(e) => Err(e),
                }
            }
        };
        match renewed {
            Ok(false) => return,
            Ok(true) => {
                expires = sent + ttl;
                inner.session.lease.send_replace(Lease {
                    id,
                    fresh_until: sent + ttl / 2,
                });
                if !keys_written {
                    keys_written = write_session_keys(inner, id).await;
                }
                tokio::time::sleep(ttl / 4).await;
            }
            Err(e) => {
                tracing::warn!(lease = id, error = %e, "etcd lease keep-alive failed; retrying");
                stream = None;
                tokio::time::sleep(ttl / 20).await;
            }
        }
    }
}

/// Writes every session key under lease `id`; `false` if one write failed (retried later).
async fn write_session_keys(inner: &Arc<Inner>, id: i64) -> bool {
    let keys = lock(&inner.session.keys).clone();
    for (key, value) in keys {
        if let Err(e) = put_with_lease(inner, key.clone(), value, id).await {
            tracing::warn!(key, error = %e, "cannot write a session key again; retrying");
            return false;
        }
    }
    true
}

async fn put_with_lease(
    inner: &Arc<Inner>,
    key: String,
    value: Vec<u8>,
    id: i64,
) -> Result<(), KvError> {
    inner
        .call("put", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(id)))
                    .await
            }
        })
        .await
        .map(|_| ())
}

pub(super) async fn put_session(
    inner: &Arc<Inner>,
    key: &str,
    value: Vec<u8>,
) -> Result<(), KvError> {
    let full = inner.full(key);
    lock(&inner.session.keys).insert(full.clone(), value.clone());
    let id = current_lease(inner).await?;
    put_with_lease(inner, full, value, id).await
}

pub(super) async fn elect(
    inner: &Arc<Inner>,
    name: &str,
    replica_id: &str,
) -> Result<Leadership, KvError> {
    current_lease(inner).await?;
    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    lock(&inner.session.leaders).push(tx.clone());
    let key = format!("{}election/{name}", inner.internal);
    inner.spawn(campaign(inner.clone(), key, replica_id.to_string(), tx));
    Ok(Leadership { is_leader: rx })
}

/// Campaigns for `key` for ever: write it under our lease if absent; while it holds our lease
/// we lead (as long as the lease is fresh); otherwise wait for it to be deleted.
async fn campaign(inner: Arc<Inner>, key: String, replica: String, tx: Arc<watch::Sender<bool>>) {
    let ttl = ttl(&inner);
    loop {
        tx.send_replace(false);
        let lease = match current_lease(&inner).await {
            Ok(id) => id,
            Err(_) => continue,
        };
        let attempt = etcd_client::Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                replica.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = match inner
            .call("campaign", |mut c| {
                let attempt = attempt.clone();
                async move { c.txn(attempt).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key, error = %e, "campaign failed; retrying");
                tokio::time::sleep(ttl / 10).await;
                continue;
            }
        };
        let rev = inner.header_revision(resp.header());
        let holder = if resp.succeeded() {
            Some(lease)
        } else {
            resp.op_responses().iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
                _ => None,
            })
        };
        match holder {
            Some(h) if h == lease => {
                tracing::info!(key, replica, "leadership acquired");
                hold(&inner, &key, rev + 1, lease, &tx).await;
                tx.send_replace(false);
                tracing::info!(key, replica, "leadership ended");
            }
            Some(_) => wait_deleted(&inner, &key, rev + 1, ttl).await,
            None => {}
        }
    }
}

/// Opens a watch of one key from `from`.
async fn watch_key(
    inner: &Arc<Inner>,
    key: &str,
    from: Revision,
) -> Result<etcd_client::WatchStream, KvError> {
    let opts = WatchOptions::new().with_start_revision(to_i64(from));
    inner
        .call("watch", |mut c| {
            let (key, opts) = (key.to_string(), opts.clone());
            async move { c.watch(key, Some(opts)).await }
        })
        .await
}

/// `true` when the response says the key was deleted or the watch cannot go on.
fn deleted_or_broken(
    resp: &Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
) -> bool {
    match resp {
        Ok(Some(r)) => {
            r.canceled()
                || r.compact_revision() != 0
                || r.events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
        }
        _ => true,
    }
}

/// Leads while the key is ours and the lease fresh; returns when either stops holding.
async fn hold(inner: &Arc<Inner>, key: &str, from: Revision, lease: i64, tx: &watch::Sender<bool>) {
    let tick = ttl(inner) / 10;
    let Ok(mut stream) = watch_key(inner, key, from).await else {
        return;
    };
    loop {
        let now = *inner.session.lease.borrow();
        if now.id != lease {
            return;
        }
        tx.send_replace(Instant::now() < now.fresh_until);
        if let Ok(resp) = tokio::time::timeout(tick, stream.message()).await {
            if deleted_or_broken(&resp) {
                return;
            }
        }
    }
}

/// Waits until the key is deleted, the watch breaks, or `limit` passes (then the caller
/// simply campaigns again).
async fn wait_deleted(inner: &Arc<Inner>, key: &str, from: Revision, limit: Duration) {
    let Ok(mut stream) = watch_key(inner, key, from).await else {
        tokio::time::sleep(limit / 10).await;
        return;
    };
    let _ = tokio::time::timeout(limit, async {
        while !deleted_or_broken(&stream.message().await) {}
    })
    .await;
}
