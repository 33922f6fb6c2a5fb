//! What the status page shows, computed from the in-memory fleet view (never the store): one row per
//! node, the fleet summary, and the table query (filter, search, sort, page).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use steward_proto::selector::Selector;
use steward_proto::{Health, Labels, Node, NodeKind};

use crate::fleet::{Brief, Fleet, Live, LiveNode};

/// Nodes per page unless `per_page` says otherwise.
pub const PER_PAGE: usize = 100;

pub use crate::fleet::Attest;

/// One line of the node table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub hostname: String,
    pub labels: Labels,
    pub kind: NodeKind,
    pub health: Health,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub rtt_ms: Option<f64>,
    pub agent_version: String,
    pub generation: u64,
    pub observed: u64,
    pub containers: usize,
    pub vms: usize,
    pub payloads: usize,
    /// Resources in state failed.
    pub failed: usize,
    pub drifted: bool,
    pub attest: Attest,
}

impl Row {
    /// A row from a wire node (the node page).
    pub fn from_node(n: &Node) -> Row {
        let brief = Brief::of_parts(&n.facts, n.status.as_ref());
        Row {
            id: n.id.clone(),
            labels: n.labels.clone(),
            health: n.health,
            last_heartbeat: n.last_heartbeat,
            rtt_ms: n.heartbeat_rtt_ms,
            generation: n.generation,
            observed: n.observed_generation,
            ..Row::of_brief(brief)
        }
    }

    /// A row from the fleet view's entry (no store read).
    pub fn from_live(id: &str, ln: &LiveNode) -> Row {
        let generation = ln.generation();
        let l = ln.lock();
        Row {
            labels: (*l.labels).clone(),
            ..Row::of_live(id, generation, &l)
        }
    }

    /// A row from a locked fleet view entry, without its labels (the whole-fleet pass of the
    /// table: only the rows of the page shown get them).
    fn of_live(id: &str, generation: u64, l: &Live) -> Row {
        Row {
            id: id.to_string(),
            health: l.health,
            last_heartbeat: l.last_heartbeat,
            rtt_ms: l.rtt_ms,
            generation,
            observed: l.observed_generation,
            ..Row::of_brief(l.brief.clone())
        }
    }

    fn of_brief(b: Brief) -> Row {
        Row {
            id: String::new(),
            hostname: b.hostname,
            labels: Labels::default(),
            kind: b.kind,
            health: Health::Ready,
            last_heartbeat: None,
            rtt_ms: None,
            agent_version: b.agent_version,
            generation: 0,
            observed: 0,
            containers: b.containers,
            vms: b.vms,
            payloads: b.payloads,
            failed: b.failed,
            drifted: b.drifted,
            attest: b.attest,
        }
    }

    /// The observed generation lags the desired one.
    pub fn behind(&self) -> bool {
        self.observed < self.generation
    }
}

/// The fleet summary and the page of the table `q` asks for, in one pass over the fleet view:
/// the nodes the filter keeps become rows (without labels, matched in place), and only the rows
/// of the page get their labels.
pub fn fleet_table(fleet: &Fleet, q: &TableQuery) -> (Summary, Result<Page, BadQuery>) {
    let filter = Filter::parse(q);
    let mut summary = Summary::default();
    let mut rows = Vec::new();
    fleet.for_each(|id, ln| {
        let generation = ln.generation();
        let l = ln.lock();
        summary.add(l.health, l.brief.drifted, l.brief.failed);
        if let Ok(f) = &filter {
            let row = Row::of_live(id, generation, &l);
            if f.keeps(&row, &l.labels) {
                rows.push(row);
            }
        }
    });
    let page = filter.map(|_| {
        let mut page = page_of(rows, q);
        for r in &mut page.rows {
            if let Some(ln) = fleet.live(&r.id) {
                r.labels = (*ln.lock().labels).clone();
            }
        }
        page
    });
    (summary, page)
}

/// One node's row, if it exists.
pub fn row(fleet: &Fleet, id: &str) -> Option<Row> {
    fleet.live(id).map(|ln| Row::from_live(id, &ln))
}

/// The fleet overview.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: usize,
    pub ready: usize,
    pub stale: usize,
    pub down: usize,
    pub decommissioned: usize,
    pub drifted: usize,
    /// Resources in state failed, fleet-wide, and the nodes holding them.
    pub failed_workloads: usize,
    pub failing_nodes: usize,
}

impl Summary {
    /// The overview of the whole fleet view, without building rows.
    pub fn of_fleet(fleet: &Fleet) -> Summary {
        let mut s = Summary::default();
        fleet.for_each(|_, ln| {
            let l = ln.lock();
            s.add(l.health, l.brief.drifted, l.brief.failed);
        });
        s
    }

    fn add(&mut self, health: Health, drifted: bool, failed: usize) {
        self.total += 1;
        match health {
            Health::Ready => self.ready += 1,
            Health::Stale => self.stale += 1,
            Health::Down => self.down += 1,
            Health::Decommissioned => self.decommissioned += 1,
        }
        let active = health != Health::Decommissioned;
        self.drifted += usize::from(active && drifted);
        if active && failed > 0 {
            self.failed_workloads += failed;
            self.failing_nodes += 1;
        }
    }
}

/// Columns the table sorts by.
pub const SORT_KEYS: &[&str] = &[
    "name",
    "kind",
    "health",
    "heartbeat",
    "rtt",
    "version",
    "generation",
    "containers",
    "vms",
    "payloads",
    "attestation",
];

/// The table's query string: `?selector=&health=&flag=&q=&sort=&dir=&page=&per_page=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableQuery {
    pub selector: String,
    pub health: String,
    /// `drifted` or `failed`.
    pub flag: String,
    pub q: String,
    pub sort: String,
    pub desc: bool,
    pub page: usize,
    pub per_page: usize,
}

/// A query parameter that makes no sense, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadQuery {
    pub field: &'static str,
    pub reason: String,
}

impl TableQuery {
    pub fn from_params(p: &HashMap<String, String>) -> TableQuery {
        let get = |k: &str| p.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
        let sort = get("sort");
        TableQuery {
            selector: get("selector"),
            health: get("health"),
            flag: get("flag"),
            q: get("q"),
            sort: if SORT_KEYS.contains(&sort.as_str()) {
                sort
            } else {
                "name".into()
            },
            desc: get("dir") == "desc",
            page: get("page").parse().unwrap_or(1).max(1),
            per_page: get("per_page").parse().unwrap_or(PER_PAGE).clamp(10, 1000),
        }
    }

    /// The query string for this query with `f` applied (for links).
    pub fn href(&self, f: impl FnOnce(&mut TableQuery)) -> String {
        let mut q = self.clone();
        f(&mut q);
        let mut parts: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("selector", &q.selector),
            ("health", &q.health),
            ("flag", &q.flag),
            ("q", &q.q),
        ] {
            if !v.is_empty() {
                parts.push((k, v.clone()));
            }
        }
        if q.sort != "name" {
            parts.push(("sort", q.sort.clone()));
        }
        if q.desc {
            parts.push(("dir", "desc".into()));
        }
        if q.page > 1 {
            parts.push(("page", q.page.to_string()));
        }
        if q.per_page != PER_PAGE {
            parts.push(("per_page", q.per_page.to_string()));
        }
        let qs: Vec<String> = parts
            .into_iter()
            .map(|(k, v)| format!("{k}={}", urlencode(&v)))
            .collect();
        if qs.is_empty() {
            "/".into()
        } else {
            format!("/?{}", qs.join("&"))
        }
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One page of the table.
#[derive(Debug, Clone)]
pub struct Page {
    pub rows: Vec<Row>,
    /// Rows matching the filter (all pages).
    pub matching: usize,
    pub page: usize,
    pub pages: usize,
}

/// The table query's filter, parsed.
struct Filter {
    selector: Selector,
    health: Vec<Health>,
    flag: String,
    needle: String,
}

impl Filter {
    fn parse(q: &TableQuery) -> Result<Filter, BadQuery> {
        let selector: Selector = q.selector.parse().map_err(|e| BadQuery {
            field: "selector",
            reason: format!("{e}"),
        })?;
        let health: Vec<Health> = q
            .health
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| h.parse::<Health>())
            .collect::<Result<_, _>>()
            .map_err(|reason| BadQuery {
                field: "health",
                reason,
            })?;
        if !matches!(q.flag.as_str(), "" | "drifted" | "failed") {
            return Err(BadQuery {
                field: "flag",
                reason: format!("unknown flag {:?}: expected drifted or failed", q.flag),
            });
        }
        Ok(Filter {
            selector,
            health,
            flag: q.flag.clone(),
            needle: q.q.to_lowercase(),
        })
    }

    /// Whether the row (with these labels) passes.
    fn keeps(&self, r: &Row, labels: &Labels) -> bool {
        self.selector.matches(labels)
            && (self.health.is_empty() || self.health.contains(&r.health))
            && match self.flag.as_str() {
                "drifted" => r.drifted,
                "failed" => r.failed > 0,
                _ => true,
            }
            && (self.needle.is_empty()
                || r.hostname.to_lowercase().contains(&self.needle)
                || r.id.starts_with(&self.needle))
    }
}

/// Sorts `rows` (all of them pass the filter) and cuts them to the page asked for.
fn page_of(rows: Vec<Row>, q: &TableQuery) -> Page {
    let order = |a: &Row, b: &Row| {
        let by = match q.sort.as_str() {
            "kind" => kind_str(a.kind).cmp(kind_str(b.kind)),
            "health" => a.health.cmp(&b.health),
            // Oldest heartbeat first when ascending by age.
            "heartbeat" => b.last_heartbeat.cmp(&a.last_heartbeat),
            "rtt" => a
                .rtt_ms
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.rtt_ms.unwrap_or(f64::INFINITY)),
            "version" => a.agent_version.cmp(&b.agent_version),
            "generation" => (a.generation - a.observed.min(a.generation))
                .cmp(&(b.generation - b.observed.min(b.generation)))
                .then(a.generation.cmp(&b.generation)),
            "containers" => a.containers.cmp(&b.containers),
            "vms" => a.vms.cmp(&b.vms),
            "payloads" => a.payloads.cmp(&b.payloads),
            "attestation" => (a.attest.mismatched + a.attest.missing)
                .cmp(&(b.attest.mismatched + b.attest.missing)),
            _ => std::cmp::Ordering::Equal,
        };
        let by = if q.desc { by.reverse() } else { by };
        by.then_with(|| a.hostname.cmp(&b.hostname))
            .then_with(|| a.id.cmp(&b.id))
    };
    let matching = rows.len();
    let pages = matching.div_ceil(q.per_page).max(1);
    let page = q.page.min(pages);
    // Only the rows up to the end of the page asked for are put in order (the fleet can hold
    // 100,000 nodes; a page shows 100), and by index: rows are large to move.
    let end = (page * q.per_page).min(matching);
    let mut at: Vec<usize> = (0..matching).collect();
    let by = |a: &usize, b: &usize| order(&rows[*a], &rows[*b]);
    if end < matching {
        at.select_nth_unstable_by(end, by);
        at.truncate(end);
    }
    at.sort_unstable_by(by);
    let rows = at
        .iter()
        .skip((page - 1) * q.per_page)
        .take(q.per_page)
        .map(|i| rows[*i].clone())
        .collect();
    Page {
        rows,
        matching,
        page,
        pages,
    }
}

pub fn kind_str(k: NodeKind) -> &'static str {
    match k {
        NodeKind::BareMetal => "bare-metal",
        NodeKind::Vm => "vm",
        NodeKind::Container => "container",
        NodeKind::Unknown => "unknown",
    }
}

/// Nodes by health and the number of drifted nodes, for `/metrics`.
pub fn fleet_gauges(s: &Summary) -> (Vec<(Health, i64)>, i64) {
    let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    (
        vec![
            (Health::Ready, n(s.ready)),
            (Health::Stale, n(s.stale)),
            (Health::Down, n(s.down)),
            (Health::Decommissioned, n(s.decommissioned)),
        ],
        n(s.drifted),
    )
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
