//! [`Kv`](super::Kv) on an etcd cluster (etcd-client), for several registry replicas.
//!
//! Keys are stored as `{prefix}/{key}` and returned without the prefix; the store's internal
//! keys (leader elections, the revision bump of delete-only transactions) live beside them
//! under `{prefix}.internal/`, so a range or watch of the registry's keys never sees them.
//! Revisions are etcd's (`mod_revision`, header revision). Every request runs under
//! `request_timeout` and with "require leader", so a cluster without quorum answers
//! [`KvError::Unavailable`] instead of hanging. Requests go to one pinned member (one
//! connection per endpoint); a request that fails for want of that member moves the pin to the
//! next endpoint, as etcd's own clients do, so a dead member is never chosen again and again by a
//! balancer. Leases, session keys and elections are in `session.rs`, watches in `watch.rs`,
//! reads of many keys in `many.rs`, options and the `etcd://` URL in `options.rs`.

mod many;
mod options;
mod session;
mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::{Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, TxnOp};
use tokio::task::AbortHandle;

pub use options::{EtcdConfigError, EtcdOptions, DEFAULT_PREFIX};

use super::{
    Compare, KeyValue, Kv, KvError, Leadership, Op, Revision, Txn, TxnOutcome, WatchStream,
};

/// Keys fetched per request by [`Kv::range`], so a huge prefix is not one giant response.
const RANGE_PAGE: usize = 500;

/// The etcd store. Dropping it stops its lease keep-alive and campaigns (its session keys
/// disappear within the lease TTL, as when the process dies); [`EtcdKv::close`] revokes the
/// lease at once.
pub struct EtcdKv {
    inner: Arc<Inner>,
}

/// What the background tasks share with the store handle.
pub(crate) struct Inner {
    /// One client per endpoint, in the order of `opts.endpoints`.
    clients: Vec<Client>,
    /// The index in `clients` that requests go to until one fails for want of its member.
    pinned: AtomicUsize,
    opts: EtcdOptions,
    /// `{prefix}/`: the start of every registry key.
    root: String,
    /// `{prefix}.internal/`: elections and bookkeeping.
    internal: String,
    store: String,
    session: session::Session,
    /// Background tasks (keep-alive, campaigns), aborted on drop.
    tasks: Mutex<Vec<AbortHandle>>,
}

impl EtcdKv {
    /// Connects and checks that the cluster answers a linearizable read within
    /// `request_timeout`.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdKv, KvError> {
        let store = opts.describe();
        let config = |e: EtcdConfigError| KvError::Backend {
            store: store.clone(),
            source: Box::new(e),
        };
        opts.check_prefix().map_err(config)?;
        if opts.endpoints.is_empty() {
            return Err(config(EtcdConfigError::NoEndpoints { url: store.clone() }));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(opts.request_timeout)
            .with_keep_alive(opts.request_timeout, opts.request_timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = opts.tls().map_err(config)? {
            connect = connect.with_tls(tls);
        }
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        let unavailable = |reason: String| KvError::Unavailable {
            store: store.clone(),
            reason,
        };
        let mut clients = Vec::with_capacity(opts.endpoints.len());
        for endpoint in &opts.endpoints {
            // Connections are made when first used: a member that is down now is no error.
            let client = tokio::time::timeout(
                opts.request_timeout,
                Client::connect([endpoint], Some(connect.clone())),
            )
            .await
            .map_err(|_| unavailable(format!("no connection within {:?}", opts.request_timeout)))?
            .map_err(|e| unavailable(format!("cannot connect to {endpoint}: {e}")))?;
            clients.push(client);
        }
        let kv = EtcdKv {
            inner: Arc::new(Inner {
                clients,
                pinned: AtomicUsize::new(0),
                root: format!("{prefix}/"),
                internal: format!("{prefix}.internal/"),
                session: session::Session::new(),
                opts,
                store,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        kv.readiness().await?;
        tracing::info!(store = %kv.inner.store, "connected to etcd");
        Ok(kv)
    }

    /// Revokes this process's lease (its session keys disappear now, its leaderships end) and
    /// stops the background tasks.
    pub async fn close(&self) -> Result<(), KvError> {
        let lease = self.inner.session.stop();
        self.inner.abort_tasks();
        if let Some(id) = lease {
            self.inner
                .call(
                    "lease revoke",
                    |mut c| async move { c.lease_revoke(id).await },
                )
                .await?;
        }
        Ok(())
    }

    /// Compacts the store's history up to `revision` (watches from older revisions then get
    /// [`KvError::Compacted`]).
    pub async fn compact(&self, revision: Revision) -> Result<(), KvError> {
        self.inner
            .call("compact", |mut c| async move {
                c.compact(to_i64(revision), None).await
            })
            .await?;
        Ok(())
    }
}

impl Drop for EtcdKv {
    fn drop(&mut self) {
        self.inner.session.stop();
        self.inner.abort_tasks();
    }
}

impl Inner {
    fn abort_tasks(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    /// The registry key of a stored etcd key (an error outside the prefix or not UTF-8).
    fn strip(&self, key: &[u8]) -> Result<String, KvError> {
        let rest = key
            .strip_prefix(self.root.as_bytes())
            .ok_or_else(|| self.backend(format!("key {key:?} outside {}", self.root)))?;
        String::from_utf8(rest.to_vec())
            .map_err(|e| self.backend(format!("key {key:?} is not UTF-8: {e}")))
    }

    fn backend(&self, msg: String) -> KvError {
        KvError::Backend {
            store: self.store.clone(),
            source: msg.into(),
        }
    }

    fn unavailable(&self, what: &str, why: String) -> KvError {
        KvError::Unavailable {
            store: self.store.clone(),
            reason: format!(
                "{what}: {why} (endpoints {})",
                self.opts.endpoints.join(", ")
            ),
        }
    }

    /// Runs one etcd request (`request(client)`) under `request_timeout`, mapping its errors.
    /// A request that certainly did not reach etcd (no connection to the member the client
    /// picked, a member without leader) is sent again until the timeout: the client keeps
    /// choosing dead members of a degraded cluster.
    async fn call<T, F, Fut>(&self, what: &str, request: F) -> Result<T, KvError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_retrying(what, not_sent, request).await
    }

    /// Like [`Inner::call`] for a read: it changes nothing, so it is also sent again after an
    /// error that may pass (the member it went to died mid-request, etcd's leader changed),
    /// until the timeout.
    async fn call_read<T, F, Fut>(&self, what: &str, request: F) -> Result<T, KvError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_retrying(what, |e| not_sent(e) || transient(e), request)
            .await
    }

    async fn call_retrying<T, F, Fut>(
        &self,
        what: &str,
        retry: impl Fn(&etcd_client::Error) -> bool,
        mut request: F,
    ) -> Result<T, KvError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.opts.request_timeout;
        let mut last = None;
        loop {
            let (pin, client) = self.client();
            match tokio::time::timeout_at(deadline, request(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if retry(&e) => {
                    self.unpin(pin, &e);
                    last = Some(e.to_string());
                    let pause = tokio::time::Instant::now() + RETRY_PAUSE;
                    if pause >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(pause).await;
                }
                Ok(Err(e)) => {
                    self.unpin(pin, &e);
                    return Err(self.map_err(what, e));
                }
                Err(_) => {
                    self.move_pin(pin);
                    break;
                }
            }
        }
        let waited = format!("no answer within {:?}", self.opts.request_timeout);
        Err(self.unavailable(
            what,
            match last {
                Some(e) => format!("{waited} (last error: {e})"),
                None => waited,
            },
        ))
    }

    /// The pinned member's client and its index.
    pub(crate) fn client(&self) -> (usize, Client) {
        let pin = self.pinned.load(Ordering::Relaxed) % self.clients.len();
        (pin, self.clients[pin].clone())
    }

    /// Moves the pin off member `pin` after error `e` if the error may come from that member
    /// (down, unreachable, without leader), so the next request tries another.
    fn unpin(&self, pin: usize, e: &etcd_client::Error) {
        if not_sent(e) || transient(e) {
            self.move_pin(pin);
        }
    }

    /// Moves the pin from `pin` to the next endpoint (unless another request already moved it).
    pub(crate) fn move_pin(&self, pin: usize) {
        let next = (pin + 1) % self.clients.len();
        if self
            .pinned
            .compare_exchange(pin, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.clients.len() > 1
        {
            tracing::debug!(
                store = %self.store,
                from = %self.opts.endpoints[pin],
                to = %self.opts.endpoints[next],
                "etcd member did not answer; trying the next endpoint"
            );
        }
    }

    /// Like [`Inner::call`] for a request that cannot be repeated (on an open stream).
    async fn call_once<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, KvError> {
        match tokio::time::timeout(self.opts.request_timeout, fut).await {
            Err(_) => Err(self.unavailable(
                what,
                format!("no answer within {:?}", self.opts.request_timeout),
            )),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.map_err(what, e)),
        }
    }

    fn map_err(&self, what: &str, e: etcd_client::Error) -> KvError {
        use etcd_client::Error as E;
        match e {
            E::GRpcStatus(s) if s.message().contains("database space exceeded") => self
                .unavailable(
                    what,
                    "etcd is out of space (NOSPACE alarm): compact and defragment etcd, then \
                 `etcdctl alarm disarm`"
                        .into(),
                ),
            E::GRpcStatus(s) if s.message().contains("too many operations in txn") => {
                self.backend(format!(
                    "{what}: {} (etcd's --max-txn-ops, default 128, limits one transaction)",
                    s.message()
                ))
            }
            E::GRpcStatus(s) if s.message().contains("request is too large") => {
                self.backend(format!(
                    "{what}: {} (etcd's --max-request-bytes, default 1.5 MiB, limits one request)",
                    s.message()
                ))
            }
            E::GRpcStatus(s) if TRANSIENT.contains(&i32::from(s.code())) => {
                self.unavailable(what, s.message().to_string())
            }
            E::TransportError(_) | E::IoError(_) => self.unavailable(what, e.to_string()),
            other => KvError::Backend {
                store: self.store.clone(),
                source: Box::new(other),
            },
        }
    }

    fn header_revision(&self, h: Option<&etcd_client::ResponseHeader>) -> Revision {
        h.map(|h| to_u64(h.revision())).unwrap_or(0)
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, KvError> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            mod_revision: to_u64(kv.mod_revision()),
        })
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut).abort_handle();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }
}

/// gRPC codes of a request that may succeed later: Cancelled, Unknown, DeadlineExceeded,
/// Aborted, Unavailable ("etcdserver: no leader", "leader changed", "request timed out").
const TRANSIENT: [i32; 5] = [1, 2, 4, 10, 14];

/// True for errors after which the same request may succeed (see [`TRANSIENT`]), connection
/// errors included.
fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => TRANSIENT.contains(&i32::from(s.code())),
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    }
}

/// Pause before sending again a request that did not reach etcd.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// True for errors that prove the request never reached a member that could apply it.
fn not_sent(e: &etcd_client::Error) -> bool {
    let msg = e.to_string().to_ascii_lowercase();
    [
        "tcp connect error",
        "error trying to connect",
        "connection refused",
        "etcdserver: no leader",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// The first key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn to_u64(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn to_i64(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// The ops of a transaction as etcd ops: etcd refuses a key twice in one txn, and since ops
/// apply in order, the last op on a key decides its final state.
fn etcd_ops(inner: &Inner, ops: &[Op]) -> Vec<TxnOp> {
    let key_of = |op: &Op| match op {
        Op::Put { key, .. } | Op::Delete { key } => key.clone(),
    };
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for op in ops.iter().rev() {
        if !seen.insert(key_of(op)) {
            continue;
        }
        out.push(match op {
            Op::Put { key, value } => TxnOp::put(inner.full(key), value.clone(), None),
            Op::Delete { key } => TxnOp::delete(inner.full(key), None),
        });
    }
    out.reverse();
    if !ops.is_empty() && ops.iter().all(|op| matches!(op, Op::Delete { .. })) {
        // A txn that deletes only absent keys would not raise etcd's revision; the contract
        // says every txn with an op does.
        out.push(TxnOp::put(format!("{}revision", inner.internal), "", None));
    }
    out
}

#[async_trait::async_trait]
impl Kv for EtcdKv {
    fn describe(&self) -> String {
        self.inner.store.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, KvError> {
        let full = self.inner.full(key);
        let resp = self
            .inner
            .call_read("get", |mut c| {
                let full = full.clone();
                async move { c.get(full, None).await }
            })
            .await?;
        resp.kvs()
            .first()
            .map(|kv| self.inner.key_value(kv))
            .transpose()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, KvError> {
        many::get_many(&self.inner, keys).await
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, KvError> {
        let inner = &self.inner;
        let first = inner.full(prefix).into_bytes();
        let end = prefix_end(&first);
        let mut from = match start_after {
            Some(s) if s.as_bytes() >= prefix.as_bytes() => {
                let mut k = inner.full(s).into_bytes();
                k.push(0);
                k
            }
            _ => first,
        };
        let mut out = Vec::new();
        // Later pages read at the first page's revision: one consistent snapshot.
        let mut at: Option<i64> = None;
        loop {
            let want = match limit {
                0 => RANGE_PAGE,
                l => RANGE_PAGE.min(l - out.len()),
            };
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(want as i64);
            if let Some(rev) = at {
                opts = opts.with_revision(rev);
            }
            let resp = inner
                .call_read("range", |mut c| {
                    let (key, opts) = (from.clone(), opts.clone());
                    async move { c.get(key, Some(opts)).await }
                })
                .await?;
            at.get_or_insert(resp.header().map(|h| h.revision()).unwrap_or(0));
            for kv in resp.kvs() {
                out.push(inner.key_value(kv)?);
            }
            let (Some(last), true) = (resp.kvs().last(), resp.more()) else {
                break;
            };
            if limit != 0 && out.len() >= limit {
                break;
            }
            from = last.key().to_vec();
            from.push(0);
        }
        Ok(out)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, KvError> {
        if txn.ops.is_empty() && txn.compares.is_empty() {
            return Ok(TxnOutcome::Committed(self.revision().await?));
        }
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => EtcdCompare::mod_revision(
                    self.inner.full(key),
                    CompareOp::Equal,
                    to_i64(*revision),
                ),
            })
            .collect();
        let etxn = etcd_client::Txn::new()
            .when(compares)
            .and_then(etcd_ops(&self.inner, &txn.ops));
        let resp = self
            .inner
            .call("txn", |mut c| {
                let etxn = etxn.clone();
                async move { c.txn(etxn).await }
            })
            .await?;
        if !resp.succeeded() {
            return Ok(TxnOutcome::Conflict);
        }
        Ok(TxnOutcome::Committed(
            self.inner.header_revision(resp.header()),
        ))
    }

    async fn revision(&self) -> Result<Revision, KvError> {
        let key = &self.inner.root;
        let resp = self
            .inner
            .call_read("revision", |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(self.inner.header_revision(resp.header()))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, KvError> {
        watch::watch(self.inner.clone(), prefix, from).await
    }

    async fn put_session(&self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        session::put_session(&self.inner, key, value).await
    }

    async fn elect(&self, name: &str, replica_id: &str) -> Result<Leadership, KvError> {
        session::elect(&self.inner, name, replica_id).await
    }

    async fn readiness(&self) -> Result<(), KvError> {
        self.revision().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/s/a"), b"/s/b");
        assert_eq!(prefix_end(b"/s/\xff"), b"/s0");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
