//! [`Kv::watch`](super::super::Kv::watch) on etcd: one etcd watch of the prefix from a
//! revision, its events grouped by revision (one transaction = one item), `Compacted` when etcd
//! no longer has the history asked for, and an error item (then the end) when the watch breaks.

use std::collections::VecDeque;
use std::sync::Arc;

use etcd_client::{EventType, WatchOptions, WatchResponse};

use super::{prefix_end, to_i64, to_u64, Inner};
use crate::kv::{KvError, Revision, WatchEvent, WatchStream};

struct State {
    inner: Arc<Inner>,
    stream: etcd_client::WatchStream,
    prefix: String,
    from: Revision,
    ready: VecDeque<Vec<WatchEvent>>,
    done: bool,
}

pub(super) async fn watch(
    inner: Arc<Inner>,
    prefix: &str,
    from: Revision,
) -> Result<WatchStream, KvError> {
    let key = inner.full(prefix);
    let opts = WatchOptions::new()
        .with_range(prefix_end(key.as_bytes()))
        .with_start_revision(to_i64(from.max(1)));
    let stream = inner
        .call("watch", |mut c| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { c.watch(key, Some(opts)).await }
        })
        .await?;
    let state = State {
        inner,
        stream,
        prefix: prefix.to_string(),
        from,
        ready: VecDeque::new(),
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(state, next)))
}

async fn next(mut st: State) -> Option<(Result<Vec<WatchEvent>, KvError>, State)> {
    loop {
        if let Some(group) = st.ready.pop_front() {
            return Some((Ok(group), st));
        }
        if st.done {
            return None;
        }
        let resp = match st.stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                st.done = true;
                let e = st.broken("the server ended the watch".into());
                return Some((Err(e), st));
            }
            Err(e) => {
                st.done = true;
                let e = st.broken(e.to_string());
                return Some((Err(e), st));
            }
        };
        if let Err(e) = st.take(&resp) {
            st.done = true;
            return Some((Err(e), st));
        }
    }
}

impl State {
    fn broken(&self, why: String) -> KvError {
        self.inner
            .unavailable(&format!("watch of {:?}", self.prefix), why)
    }

    /// Queues the events of one etcd response, one item per revision.
    fn take(&mut self, resp: &WatchResponse) -> Result<(), KvError> {
        if resp.compact_revision() != 0 {
            return Err(KvError::Compacted {
                store: self.inner.store.clone(),
                requested: self.from,
                oldest: to_u64(resp.compact_revision()),
            });
        }
        if resp.canceled() {
            return Err(self.broken(format!("cancelled by etcd: {}", resp.cancel_reason())));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let event = WatchEvent {
                key: self.inner.strip(kv.key())?,
                value: match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                },
                revision: to_u64(kv.mod_revision()),
            };
            // etcd never splits one revision over two responses (without `fragment`).
            match self.ready.back_mut() {
                Some(group) if group.last().map(|e| e.revision) == Some(event.revision) => {
                    group.push(event)
                }
                _ => self.ready.push_back(vec![event]),
            }
        }
        Ok(())
    }
}
