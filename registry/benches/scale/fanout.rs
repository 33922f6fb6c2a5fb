//! Phase (d): watchers parked in long-polls (one connection each), then one fragment written
//! whose selector matches every node: the PUT's answer time and each watcher's wake-up time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::interfere::Api;
use crate::procfs::listen_overflows;
use crate::seed::LABEL;
use crate::stats::{r3, Lat};
use crate::util::{bearer, Conn, NodeCred};

/// A watcher's answer: when, status, generation.
type Answer = (Instant, Result<(StatusCode, Option<u64>)>);

/// Parks one `wait=120s` long-poll per node (connections opened 64 at a time); returns once
/// every request is sent, with the answers' channel.
async fn park(
    api: &Api,
    watchers: &[NodeCred],
) -> Result<(mpsc::UnboundedReceiver<Answer>, Duration, u64)> {
    let n = watchers.len();
    let sem = Arc::new(Semaphore::new(64));
    let sent = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel::<Answer>();
    let (start, overflows0) = (Instant::now(), listen_overflows());
    for node in watchers {
        let (sem, sent, tx, addr) = (sem.clone(), sent.clone(), tx.clone(), api.addr);
        let auth = bearer(&node.secret)?;
        let path = format!("/v1/nodes/{}/spec?after=0&wait=120s", node.id);
        tokio::spawn(async move {
            let outcome = async {
                let permit = sem.acquire_owned().await?;
                let mut conn = Conn::connect(addr).await?;
                drop(permit);
                let req = conn.request(Method::GET, &path, Some(&auth), None)?;
                let (st, body) = conn.send_counted(req, Some(&sent)).await?;
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                Ok((st, v["generation"].as_u64()))
            }
            .await;
            let _ = tx.send((Instant::now(), outcome));
        });
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while sent.load(Ordering::SeqCst) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} watchers sent their long-poll in 180 s",
                sent.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let parked = start.elapsed();
    Ok((rx, parked, listen_overflows().saturating_sub(overflows0)))
}

/// The number of affected nodes in a fragment write's answer (its count, else its list's length).
fn affected(v: &Value) -> Option<u64> {
    v["affected_count"]
        .as_u64()
        .or_else(|| v["affected"].as_array().map(|a| a.len() as u64))
}

/// Runs phase (d) with `watchers` parked; returns its figures and the wrong answers' count.
pub async fn run(api: &Api, watchers: &[NodeCred]) -> Result<(Value, usize)> {
    let n = watchers.len();
    let (mut rx, parked, overflows) = park(api, watchers).await?;
    // Let the last requests reach the registry and park.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let early = std::iter::from_fn(|| rx.try_recv().ok()).count();
    let body = json!({"selector": format!("{}={}", LABEL.0, LABEL.1),
        "spec": {"containers": [{"name": "probe", "image": "busybox:1.36"}]}});
    let mut admin = Conn::connect(api.addr).await?;
    let t0 = Instant::now();
    let (st, v) = admin
        .call(
            Method::PUT,
            "/v1/fragments/scale-all",
            &api.admin,
            Some(&body),
        )
        .await?;
    let put = t0.elapsed();
    let put_bytes = v.to_string().len();
    if !st.is_success() {
        bail!("PUT /v1/fragments/scale-all answered {st}");
    }
    let (mut lats, mut wrong, mut first_wrong) = (Vec::with_capacity(n), 0usize, None);
    while lats.len() + early < n {
        let (at, outcome) = tokio::time::timeout(Duration::from_secs(90), rx.recv())
            .await
            .map_err(|_| anyhow!("only {} of {n} watchers answered within 90 s", lats.len()))?
            .ok_or_else(|| anyhow!("watchers gone after {} answers", lats.len()))?;
        let ok = matches!(outcome, Ok((StatusCode::OK, Some(g))) if g >= 1);
        if !ok {
            wrong += 1;
            first_wrong.get_or_insert_with(|| match &outcome {
                Ok((st, g)) => format!("{st}, generation {g:?}"),
                Err(e) => format!("{e:#}"),
            });
        }
        lats.push(at.duration_since(t0));
    }
    let all = t0.elapsed();
    let lat = Lat::of(lats);
    let put_ms = put.as_secs_f64() * 1e3;
    eprintln!(
        "fan-out: PUT {put_ms:.0} ms; woken (from the PUT's answer) p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.p50 - put_ms,
        lat.p99 - put_ms,
        lat.max - put_ms
    );
    let out = json!({
        "watchers": n, "park_seconds": r3(parked.as_secs_f64()), "listen_overflows": overflows,
        "early_answers": early, "put_ms": r3(put_ms), "put_status": st.as_u16(),
        "put_answer_bytes": put_bytes, "affected": affected(&v),
        "woken_from_put_sent": lat.json(),
        "woken_after_put_answer_ms": {"p50": r3(lat.p50 - put_ms), "p99": r3(lat.p99 - put_ms),
            "max": r3(lat.max - put_ms)},
        "all_answered_ms": r3(all.as_secs_f64() * 1e3),
        "wrong_answers": wrong, "first_wrong": first_wrong,
    });
    Ok((out, wrong + early))
}
