//! Phase (b), interference: the status page's first view (alone, then every 5 s under the
//! rest), two live status pages (`GET /ui/events` streaming) while a trickle of status changes
//! makes events flow, `/metrics` scraped every 15 s, and the node list read in pages (or whole,
//! when the registry has no paging).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::procfs::Snap;
use crate::seed::status;
use crate::stats::{r3, Lat};
use crate::util::{bearer, Conn, NodeCred, Registry};

/// What requests need of the registry: its address and admin token.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub admin: String,
}

impl Api {
    pub fn of(reg: &Registry) -> Api {
        Api {
            addr: reg.addr,
            admin: reg.admin.clone(),
        }
    }
}

/// One timed request: status, milliseconds, body bytes.
#[derive(Clone, Debug)]
pub struct Timed {
    pub status: u16,
    pub ms: f64,
    pub bytes: usize,
}

impl Timed {
    pub fn json(&self) -> Value {
        json!({"status": self.status, "ms": r3(self.ms), "bytes": self.bytes})
    }
}

/// GET `path` with the admin token on a fresh connection, timed (body read included).
pub async fn timed_get(reg: &Api, path: &str) -> Result<(Timed, Bytes)> {
    let mut c = Conn::connect(reg.addr).await?;
    let req = c.request(Method::GET, path, Some(&bearer(&reg.admin)?), None)?;
    let t = Instant::now();
    let (st, body) = c.send(req).await?;
    let timed = Timed {
        status: st.as_u16(),
        ms: t.elapsed().as_secs_f64() * 1e3,
        bytes: body.len(),
    };
    Ok((timed, body))
}

/// A value of the Prometheus text `body`: the first sample whose name and labels start with
/// `series` (e.g. `steward_registry_nodes{health="down"}`).
pub fn metric(body: &[u8], series: &str) -> Option<f64> {
    String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A live status page: the SSE stream's answer status, bytes and `event:` lines received.
async fn live_page(reg: &Api, stop: Arc<AtomicBool>) -> Result<Value> {
    let mut c = Conn::connect(reg.addr).await?;
    let req = c.request(Method::GET, "/ui/events", Some(&bearer(&reg.admin)?), None)?;
    let t = Instant::now();
    let resp = c.send_streaming(req).await?;
    let (status, head_ms) = (resp.status(), t.elapsed().as_secs_f64() * 1e3);
    let mut body = resp.into_body();
    let (mut bytes, mut events, mut by_kind) = (0usize, 0usize, serde_json::Map::new());
    while !stop.load(Ordering::SeqCst) {
        let frame = tokio::time::timeout(Duration::from_millis(200), body.frame()).await;
        let Ok(frame) = frame else { continue };
        let Some(frame) = frame else { break };
        if let Ok(data) = frame?.into_data() {
            bytes += data.len();
            for l in String::from_utf8_lossy(&data).lines() {
                if let Some(kind) = l.strip_prefix("event: ") {
                    events += 1;
                    let n = by_kind.entry(kind.to_string()).or_insert(json!(0));
                    *n = json!(n.as_u64().unwrap_or(0) + 1);
                }
            }
        }
    }
    Ok(
        json!({"status": status.as_u16(), "answer_head_ms": r3(head_ms), "bytes": bytes,
        "events": events, "by_kind": by_kind}),
    )
}

/// A status change every `every` from the first nodes in turn (events flow, as in a real
/// fleet); returns the PUTs' latency and the non-2xx count.
async fn status_trickle(
    reg: &Api,
    nodes: Vec<NodeCred>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(Lat, usize)> {
    let mut c = Conn::connect(reg.addr).await?;
    let (mut lats, mut bad) = (Vec::new(), 0);
    let mut iv = tokio::time::interval(every);
    for k in 0.. {
        iv.tick().await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let i = k % nodes.len();
        // A restart counted on the first container: a change the registry records as an event
        // (a new digest alone, or moved activity counters, is not one).
        let mut st = status(i, &format!("trickle-{k}"));
        if let Some(r) = st.resources.first_mut() {
            r.restarts = 1000 + k as u32;
        }
        let body = serde_json::to_vec(&st)?;
        let path = format!("/v1/nodes/{}/status", nodes[i].id);
        let req = c.request(
            Method::PUT,
            &path,
            Some(&bearer(&nodes[i].secret)?),
            Some(body.into()),
        )?;
        let t = Instant::now();
        let (st, _) = c.send(req).await?;
        lats.push(t.elapsed());
        bad += usize::from(!st.is_success());
    }
    Ok((Lat::of(lats), bad))
}

/// `/metrics` every `every` until stopped.
async fn scrapes(
    reg: &Api,
    path: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Timed>> {
    let mut out = Vec::new();
    let mut iv = tokio::time::interval(every);
    loop {
        iv.tick().await;
        if stop.load(Ordering::SeqCst) {
            return Ok(out);
        }
        out.push(timed_get(reg, path).await?.0);
    }
}

/// Reads the whole node list: pages of `limit` following the `x-next-after` cursor, or the one
/// unpaged answer of a registry that does not page.
pub async fn read_nodes(reg: &Api, limit: usize) -> Result<Value> {
    let mut c = Conn::connect(reg.addr).await?;
    let auth = bearer(&reg.admin)?;
    let (mut pages, mut items, mut bytes) = (Vec::new(), 0usize, 0usize);
    let mut after: Option<String> = None;
    let started = Instant::now();
    loop {
        let path = match &after {
            Some(a) => format!("/v1/nodes?limit={limit}&after={a}"),
            None => format!("/v1/nodes?limit={limit}"),
        };
        let req = c.request(Method::GET, &path, Some(&auth), None)?;
        let t = Instant::now();
        let resp = c.send_streaming(req).await?;
        let st = resp.status();
        // The registry's pager: the next page's cursor in `x-next-after`, none on the last.
        let next = resp
            .headers()
            .get("x-next-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await?
            .to_bytes();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        bytes += body.len();
        if st != StatusCode::OK
            || (next.is_none()
                && after.is_none()
                && pages.is_empty()
                && !paged_answer(&body, limit))
        {
            // No cursor on a full first page: this was the whole list (not parsed: that would
            // load this process).
            return Ok(json!({"paged": false, "status": st.as_u16(), "ms": r3(ms),
                "bytes": body.len()}));
        }
        let v: Value = serde_json::from_slice(&body)?;
        let n = v.as_array().map(Vec::len).unwrap_or(0);
        items += n;
        pages.push(ms);
        after = next;
        if after.is_none() || n == 0 {
            break;
        }
    }
    let mut sorted = pages.clone();
    sorted.sort_by(f64::total_cmp);
    let max = sorted.last().copied().unwrap_or(0.0);
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    Ok(
        json!({"paged": true, "limit": limit, "pages": pages.len(), "nodes": items,
        "bytes": bytes, "page_ms_p50": r3(p50), "page_ms_max": r3(max),
        "total_ms": r3(started.elapsed().as_secs_f64() * 1e3)}),
    )
}

/// Whether a first answer without a cursor is still a paged one (it holds at most `limit`
/// nodes: the whole fleet fit on one page), judged without parsing a large body.
fn paged_answer(body: &[u8], limit: usize) -> bool {
    body.len() < limit * 16 * 1024
        && serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.len() <= limit))
            .unwrap_or(false)
}

/// Runs phase (b) for at least `dur` (and until the node list is read); returns its figures.
pub async fn run(reg: &Registry, nodes: &[NodeCred], dur: Duration) -> Result<Value> {
    let started = Instant::now();
    let api = Api::of(reg);
    let (first_view, _) = timed_get(&api, "/").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut pages = Vec::new();
    for _ in 0..2 {
        let (r, s) = (api.clone(), stop.clone());
        pages.push(tokio::spawn(async move { live_page(&r, s).await }));
    }
    let (r, s) = (api.clone(), stop.clone());
    let trickle_nodes = nodes[..nodes.len().min(1000)].to_vec();
    let trickle = tokio::spawn(async move {
        status_trickle(&r, trickle_nodes, Duration::from_millis(100), s).await
    });
    let (r, s) = (api.clone(), stop.clone());
    let every = Duration::from_secs(15);
    let scraper = tokio::spawn(async move { scrapes(&r, "/metrics", every, s).await });
    // The status page's first view again every 5 s, under all of the above.
    let (r, s) = (api.clone(), stop.clone());
    let every = Duration::from_secs(5);
    let viewer = tokio::spawn(async move { scrapes(&r, "/", every, s).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nodes_read = read_nodes(&api, 1000).await?;
    let rss_after_reads = Snap::take(reg.pid()).rss_kib;
    tokio::time::sleep(dur.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::SeqCst);
    let mut page_out = Vec::new();
    for p in pages {
        page_out.push(p.await??);
    }
    let (trickle_lat, trickle_bad) = trickle.await??;
    let scrapes = scraper.await??;
    let views = viewer.await??;
    Ok(json!({
        "first_view": first_view.json(),
        "first_views_under_load": views.iter().map(Timed::json).collect::<Vec<_>>(),
        "live_pages": page_out,
        "status_changes": {"every_ms": 100, "put_latency": trickle_lat.json(), "non_2xx": trickle_bad},
        "metrics_scrapes": scrapes.iter().map(Timed::json).collect::<Vec<_>>(),
        "nodes_read": nodes_read,
        "rss_kib_after_reads": rss_after_reads,
        "seconds": r3(started.elapsed().as_secs_f64()),
    }))
}
