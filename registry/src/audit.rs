//! The audit trail: every write an operator makes (who, when, from where, the route, the
//! target, the outcome and, when refused, why) is stored before the answer goes out; listed
//! with filters (`GET /v1/audit`), a page at a time, and trimmed after [`AUDIT_KEPT`] by the
//! jobs leader.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use steward_proto::{AuditOutcome, AuditRecord};

use crate::clock::Clock;
use crate::store::{audit_id_at, Store, StoreError};

/// How long audit records are kept.
pub const AUDIT_KEPT: Duration = Duration::from_secs(400 * 86400);
/// Records of refused writes by callers that are not people (no valid credential, a node's
/// secret) kept per second at most, and in a burst: a flood of them must not grow the store
/// fast (at most 86,400 a day per replica); the rest are counted, not stored.
const ANONYMOUS_PER_SECOND: f64 = 1.0;
const ANONYMOUS_BURST: f64 = 100.0;
/// Most records one listing reads from the store before it answers with what it found (and
/// the cursor to go on from).
const SCAN_MAX: usize = 20_000;
const PAGE: usize = 1_000;

/// Which records a listing wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// `node/n1` matches that target; `node` every node's.
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Records after this id (the previous page's cursor).
    pub after: Option<String>,
    pub limit: usize,
}

impl AuditFilter {
    fn wants(&self, r: &AuditRecord) -> bool {
        self.actor.as_ref().is_none_or(|a| &r.actor == a)
            && self.target.as_ref().is_none_or(|t| {
                r.target.as_ref().is_some_and(|rt| {
                    rt == t || (rt.starts_with(t.as_str()) && rt[t.len()..].starts_with('/'))
                })
            })
            && self.since.is_none_or(|s| r.time >= s)
    }
}

/// A page of the audit trail.
#[derive(Debug, Default)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Where the next page starts, when the listing stopped before the end.
    pub next: Option<String>,
}

/// The outcome of an answer's status.
pub fn outcome(status: u16) -> AuditOutcome {
    match status {
        500.. => AuditOutcome::Failed,
        400.. => AuditOutcome::Refused,
        _ => AuditOutcome::Done,
    }
}

/// The audit trail service.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    clock: Arc<dyn Clock>,
    /// The last id's nanoseconds.
    last: Arc<AtomicI64>,
    /// Token bucket for records of anonymous requests: (tokens, when last filled).
    anonymous: Arc<Mutex<(f64, Instant)>>,
}

impl Audit {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Audit {
            store,
            clock,
            last: Arc::default(),
            anonymous: Arc::new(Mutex::new((ANONYMOUS_BURST, Instant::now()))),
        }
    }

    /// Whether one more record of a request without a valid credential may be stored now.
    pub fn admit_anonymous(&self) -> bool {
        let mut b = self.anonymous.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * ANONYMOUS_PER_SECOND;
        b.0 = (b.0 + refill).min(ANONYMOUS_BURST);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Stores one record (its time and id are set here: the id is the time in nanoseconds,
    /// made to increase within this process, then a random part so replicas never collide).
    pub async fn record(&self, mut rec: AuditRecord) -> Result<AuditRecord, StoreError> {
        rec.time = self.clock.now();
        let now = rec.time.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let prev = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some(now.max(l + 1))
            })
            .unwrap_or(now);
        let ns = now.max(prev + 1);
        rec.id = format!("{ns:020}-{}", crate::auth::new_id());
        self.store.append_audit(&rec).await?;
        Ok(rec)
    }

    /// Records matching `f`, oldest first.
    pub async fn list(&self, f: &AuditFilter) -> Result<AuditPage, StoreError> {
        let since = f.since.map(audit_id_at);
        let mut after = match (&f.after, since) {
            (Some(a), Some(s)) => Some(a.clone().max(s)),
            (a, s) => a.clone().or(s),
        };
        let until = f.until.map(audit_id_at);
        let mut page = AuditPage::default();
        let mut scanned = 0;
        loop {
            let batch = self.store.audit_after(after.as_deref(), PAGE).await?;
            let full = batch.len() == PAGE;
            for r in batch {
                if until.as_ref().is_some_and(|u| r.id >= *u) {
                    return Ok(page);
                }
                scanned += 1;
                after = Some(r.id.clone());
                if f.wants(&r) {
                    page.records.push(r);
                    if page.records.len() >= f.limit {
                        page.next = after;
                        return Ok(page);
                    }
                }
                if scanned >= SCAN_MAX {
                    page.next = after;
                    return Ok(page);
                }
            }
            if !full {
                return Ok(page);
            }
        }
    }

    /// Deletes records older than [`AUDIT_KEPT`], `batch` at a time; how many went.
    pub async fn trim(&self, batch: usize) -> Result<usize, StoreError> {
        let before = self.clock.now() - chrono::Duration::from_std(AUDIT_KEPT).unwrap_or_default();
        let mut n = 0;
        loop {
            match self.store.trim_audit(before, batch).await? {
                0 => return Ok(n),
                k => n += k,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::kv::sled::SledKv;

    fn rec(actor: &str, target: Option<&str>) -> AuditRecord {
        AuditRecord {
            id: String::new(),
            time: Utc::now(),
            actor: actor.into(),
            role: None,
            credential: None,
            address: None,
            method: "PUT".into(),
            route: "/v1/nodes/{id}/spec".into(),
            target: target.map(str::to_string),
            outcome: AuditOutcome::Done,
            status: 200,
            reason: None,
        }
    }

    #[tokio::test]
    async fn anonymous_records_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Arc::new(SledKv::open(dir.path(), 0).unwrap()));
        let audit = Audit::new(store, ManualClock::new(Utc::now()));
        let admitted = (0..1000).filter(|_| audit.admit_anonymous()).count();
        // The burst, plus what refills while the loop runs (a few at most).
        assert!((100..103).contains(&admitted), "{admitted}");
    }

    #[tokio::test]
    async fn listing_filters_pages_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Arc::new(SledKv::open(dir.path(), 0).unwrap()));
        let clock = ManualClock::new(Utc::now() - chrono::Duration::days(500));
        let audit = Audit::new(store, clock.clone());
        let old = audit.record(rec("alice", Some("node/n1"))).await.unwrap();
        clock.advance(Duration::from_secs(200 * 86400));
        let mid = audit.record(rec("bob", Some("node/n10"))).await.unwrap();
        clock.advance(Duration::from_secs(1));
        audit
            .record(rec("alice", Some("fragment/f1")))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(1));
        audit.record(rec("alice", None)).await.unwrap();

        let all = |f: AuditFilter| {
            let audit = audit.clone();
            async move {
                audit
                    .list(&AuditFilter { limit: 100, ..f })
                    .await
                    .unwrap()
                    .records
            }
        };
        assert_eq!(all(AuditFilter::default()).await.len(), 4);
        let alice = all(AuditFilter {
            actor: Some("alice".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(alice.len(), 3);
        let n1 = all(AuditFilter {
            target: Some("node/n1".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(n1, vec![old.clone()], "node/n1 is not node/n10");
        let nodes = all(AuditFilter {
            target: Some("node".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(nodes.len(), 2);
        let since = all(AuditFilter {
            since: Some(mid.time),
            ..Default::default()
        })
        .await;
        assert_eq!(since.len(), 3);
        let until = all(AuditFilter {
            until: Some(mid.time),
            ..Default::default()
        })
        .await;
        assert_eq!(until, vec![old.clone()]);
        // Pages: two at a time, the cursor goes on from the last one.
        let p1 = audit
            .list(&AuditFilter {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(p1.records.len(), 2);
        let p2 = audit
            .list(&AuditFilter {
                limit: 2,
                after: p1.next.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(p2.records.len(), 2);
        assert_ne!(p1.records[1].id, p2.records[0].id);
        // The oldest (over 400 days) goes.
        clock.advance(Duration::from_secs(250 * 86400));
        assert_eq!(audit.trim(100).await.unwrap(), 1);
        assert_eq!(all(AuditFilter::default()).await.len(), 3);
    }
}
