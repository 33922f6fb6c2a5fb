//! Listing nodes: the filter (selector, health, drift) and the pager of `GET /v1/nodes`, served
//! from the fleet view; only the records of the page asked for are read from the store.

use std::collections::BinaryHeap;

use steward_proto::selector::Selector;
use steward_proto::{Health, Node};

use super::{NodeError, Nodes, Result};
use crate::fleet::labels::Memo;
use crate::fleet::Fleet;

/// The most nodes one page holds.
pub const MAX_PAGE: usize = 1_000;
/// The most nodes an unpaged list (no `limit`) answers with; more are refused, naming `limit`.
pub const MAX_UNPAGED: usize = 10_000;

/// Which nodes to list, and which page.
#[derive(Debug, Default)]
pub struct NodeQuery {
    pub selector: Selector,
    pub health: Option<Vec<Health>>,
    pub drifted: Option<bool>,
    /// At most this many (1..=[`MAX_PAGE`]); `None` lists every match (up to [`MAX_UNPAGED`]).
    pub limit: Option<usize>,
    /// The last node id of the previous page.
    pub after: Option<String>,
}

/// One page of nodes, in (hostname, id) order, and the cursor of the next page.
#[derive(Debug)]
pub struct NodePage {
    pub nodes: Vec<Node>,
    /// The `after` of the next page; `None` on the last one.
    pub next: Option<String>,
}

/// The ids of the nodes matching `q` in (hostname, id) order, cut to its page, and the next
/// page's cursor. Pure over the fleet view; a page keeps only its `limit` + 1 first nodes while
/// it looks at the fleet (no copy of every match's name), and the selector is matched once per
/// distinct label set.
pub fn select(fleet: &Fleet, q: &NodeQuery) -> Result<(Vec<String>, Option<String>)> {
    // Position of the cursor: the named node's (hostname, id), wherever it sorts now.
    let from = match &q.after {
        None => None,
        Some(after) => {
            let ln = fleet.live(after).ok_or_else(|| invalid_after(after))?;
            let host = ln.lock().brief.hostname.clone();
            Some((host, after.clone()))
        }
    };
    let after_cursor = |host: &str, id: &str| {
        from.as_ref()
            .is_none_or(|(h, i)| (host, id) > (h.as_str(), i.as_str()))
    };
    let mut memo = Memo::default();
    let mut hits: BinaryHeap<(String, String)> = BinaryHeap::new();
    // With a limit: the first `limit` + 1 in order (one more tells there is a next page).
    let keep = q.limit.map(|n| n + 1);
    fleet.for_each(|id, ln| {
        let l = ln.lock();
        let host = l.brief.hostname.as_str();
        if !(q.health.as_ref().is_none_or(|h| h.contains(&l.health))
            && q.drifted.is_none_or(|d| d == l.brief.drifted)
            && after_cursor(host, id)
            && *memo.get(&l.labels, |labels| q.selector.matches(labels)))
        {
            return;
        }
        match (keep, hits.peek()) {
            (Some(k), Some(last)) if hits.len() >= k => {
                if (host, id) < (last.0.as_str(), last.1.as_str()) {
                    hits.pop();
                    hits.push((host.to_string(), id.to_string()));
                }
            }
            _ => hits.push((host.to_string(), id.to_string())),
        }
    });
    let limit = match q.limit {
        Some(n) => n,
        None if hits.len() > MAX_UNPAGED => {
            return Err(NodeError::Invalid(vec![steward_proto::Problem::new(
                "limit",
                format!(
                    "{} nodes match and lists of more than {MAX_UNPAGED} are served in pages: \
                     give limit (1-{MAX_PAGE}) and then after=<the next cursor>",
                    hits.len()
                ),
            )]))
        }
        None => hits.len(),
    };
    let mut hits = hits.into_sorted_vec();
    let more = hits.len() > limit;
    hits.truncate(limit);
    let next = more.then(|| hits.last().map(|h| h.1.clone())).flatten();
    Ok((hits.into_iter().map(|h| h.1).collect(), next))
}

fn invalid_after(after: &str) -> NodeError {
    NodeError::Invalid(vec![steward_proto::Problem::new(
        "after",
        format!("{after:?} is not a node id: give the cursor a previous page answered with"),
    )])
}

impl Nodes {
    /// `GET /v1/nodes`: the page of nodes matching `q` (filtered and ordered from the fleet
    /// view; the page's records read from the store).
    pub async fn list(&self, q: NodeQuery) -> Result<NodePage> {
        if let Some(n) = q.limit {
            if n == 0 || n > MAX_PAGE {
                return Err(NodeError::Invalid(vec![steward_proto::Problem::new(
                    "limit",
                    format!("{n} is out of range: give 1-{MAX_PAGE}"),
                )]));
            }
        }
        // A look at every node, sorted: CPU work kept off the async workers (heartbeats).
        let fleet = self.fleet.clone();
        let (ids, next) = tokio::task::spawn_blocking(move || select(&fleet, &q))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let recs = self.store.nodes_by_id(&ids).await?;
        let nodes = recs.into_iter().map(|r| self.to_wire(r)).collect();
        Ok(NodePage { nodes, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NodeRecord;

    fn fleet(n: usize) -> Fleet {
        let fleet = Fleet::default();
        for i in 0..n {
            let mut rec = NodeRecord::test(&format!("id-{i:03}"));
            // Hostnames sort in another order than ids.
            rec.facts.hostname = format!("host-{:03}", (i * 7) % n);
            rec.labels.insert("parity".into(), (i % 2).to_string());
            rec.health = if i % 3 == 0 {
                Health::Stale
            } else {
                Health::Ready
            };
            fleet.insert_live(&rec, Some(1));
        }
        fleet
    }

    fn pages(fleet: &Fleet, mut q: NodeQuery) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        loop {
            let (ids, next) = select(fleet, &q).unwrap();
            out.push(ids);
            match next {
                Some(n) => q.after = Some(n),
                None => return out,
            }
        }
    }

    #[test]
    fn pages_cover_every_match_once_in_hostname_order() {
        let f = fleet(50);
        let all = pages(&f, NodeQuery::default());
        assert_eq!(all.len(), 1);
        let whole = &all[0];
        assert_eq!(whole.len(), 50);
        let hosts: Vec<String> = whole
            .iter()
            .map(|id| f.live(id).unwrap().lock().brief.hostname.clone())
            .collect();
        assert!(hosts.windows(2).all(|w| w[0] <= w[1]), "{hosts:?}");
        for limit in [1, 7, 10, 49, 50, 51] {
            let got = pages(
                &f,
                NodeQuery {
                    limit: Some(limit),
                    ..NodeQuery::default()
                },
            );
            assert_eq!(got.len(), 50usize.div_ceil(limit), "limit {limit}");
            assert!(got.iter().all(|p| p.len() <= limit));
            assert_eq!(got.concat(), *whole, "limit {limit}");
        }
    }

    #[test]
    fn pages_keep_hostname_then_id_order_when_hostnames_repeat() {
        let f = Fleet::default();
        for i in 0..40 {
            let mut rec = NodeRecord::test(&format!("id-{:02}", (i * 13) % 40));
            rec.facts.hostname = format!("host-{}", i % 5);
            f.insert_live(&rec, Some(1));
        }
        let mut want: Vec<(String, String)> = Vec::new();
        f.for_each(|id, ln| want.push((ln.lock().brief.hostname.clone(), id.to_string())));
        want.sort();
        let want: Vec<String> = want.into_iter().map(|w| w.1).collect();
        for limit in [1, 3, 8, 39, 40] {
            let q = NodeQuery {
                limit: Some(limit),
                ..NodeQuery::default()
            };
            assert_eq!(pages(&f, q).concat(), want, "limit {limit}");
        }
    }

    #[test]
    fn filters_apply_before_paging() {
        let f = fleet(30);
        let q = || NodeQuery {
            selector: "parity=1".parse().unwrap(),
            health: Some(vec![Health::Ready]),
            limit: Some(4),
            ..NodeQuery::default()
        };
        let got = pages(&f, q()).concat();
        let want = (0..30).filter(|i| i % 2 == 1 && i % 3 != 0).count();
        assert_eq!(got.len(), want);
        for id in &got {
            let ln = f.live(id).unwrap();
            let l = ln.lock();
            assert_eq!(
                (l.labels["parity"].as_str(), l.health),
                ("1", Health::Ready)
            );
        }
        let none = select(
            &f,
            &NodeQuery {
                drifted: Some(true),
                ..NodeQuery::default()
            },
        )
        .unwrap();
        assert_eq!(none, (vec![], None));
    }

    #[test]
    fn an_unknown_cursor_and_a_too_large_unpaged_list_name_their_field() {
        let f = fleet(3);
        let bad = NodeQuery {
            after: Some("nope".into()),
            ..NodeQuery::default()
        };
        match select(&f, &bad) {
            Err(NodeError::Invalid(p)) => assert_eq!(p[0].field, "after"),
            other => panic!("{other:?}"),
        }
        let big = fleet(MAX_UNPAGED + 1);
        match select(&big, &NodeQuery::default()) {
            Err(NodeError::Invalid(p)) => assert_eq!(p[0].field, "limit"),
            other => panic!("{other:?}"),
        }
        let page = NodeQuery {
            limit: Some(MAX_PAGE),
            ..NodeQuery::default()
        };
        let (ids, next) = select(&big, &page).unwrap();
        assert_eq!(ids.len(), MAX_PAGE);
        assert_eq!(next.as_deref(), ids.last().map(String::as_str));
    }
}
