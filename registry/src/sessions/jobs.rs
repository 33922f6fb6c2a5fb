//! The sessions' jobs, run on the jobs leader (`replica::run_jobs`): ending sessions at their
//! deadline, following their state from their node's status (pending, running, failed), trimming
//! ended ones, and the live-sessions gauge.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use steward_proto::{
    Endpoint, EventKind, NodeSpec, ResourceKind, ResourceState, ResourceStatus, Session,
    SessionState, Template,
};

use super::{idle, EndReason, Result, Sessions};

/// How often the jobs run.
pub const EVERY: Duration = Duration::from_secs(1);

/// A session's state from its workloads' statuses: running when every one is converged (and
/// not unhealthy or still starting), failed when one failed, else pending.
pub fn state_of(piece: &NodeSpec, status: &[ResourceStatus]) -> (SessionState, Option<String>) {
    let wanted = (piece
        .containers
        .iter()
        .map(|c| (ResourceKind::Container, &c.name)))
    .chain(piece.vms.iter().map(|v| (ResourceKind::Vm, &v.name)));
    let mut all_running = true;
    for (kind, name) in wanted {
        let Some(r) = status.iter().find(|r| r.kind == kind && &r.name == name) else {
            all_running = false;
            continue;
        };
        match r.state {
            ResourceState::Failed | ResourceState::Conflict => {
                let why = r.error.clone().unwrap_or_else(|| format!("{:?}", r.state));
                return (SessionState::Failed, Some(format!("{name}: {why}")));
            }
            ResourceState::Converged
                if !matches!(r.health.as_deref(), Some("starting" | "unhealthy")) => {}
            _ => all_running = false,
        }
    }
    if all_running {
        (SessionState::Running, None)
    } else {
        (SessionState::Pending, None)
    }
}

/// The addresses the node reports for a session's workloads (VMs, then containers, in the
/// piece's order), each named by its workload.
pub fn addresses_of(piece: &NodeSpec, status: &[ResourceStatus]) -> Vec<Endpoint> {
    let wanted = (piece.vms.iter().map(|v| (ResourceKind::Vm, &v.name))).chain(
        piece
            .containers
            .iter()
            .map(|c| (ResourceKind::Container, &c.name)),
    );
    let mut out = Vec::new();
    for (kind, name) in wanted {
        if let Some(r) = status.iter().find(|r| r.kind == kind && &r.name == name) {
            out.extend(r.addresses.iter().map(|a| Endpoint {
                name: name.clone(),
                address: a.clone(),
            }));
        }
    }
    out
}

impl Sessions {
    /// The jobs, until aborted (the leadership lost).
    pub async fn run_jobs(self) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.jobs_once().await {
                tracing::warn!(error = %e, "session jobs failed; trying again in a second");
            }
        }
    }

    /// One pass of every job.
    /// One pass of every job over one read of the sessions and the templates (what a job
    /// changes, the next ones may see as it was: a write from a stale copy is refused by its
    /// revision and done again next pass, a count is right again a second later).
    pub async fn jobs_once(&self) -> Result<()> {
        let all = self.store.sessions().await?;
        let templates = self.store.templates().await?;
        self.expire_due(&all).await?;
        self.keep_spares(&all, &templates).await?;
        self.follow_states(all.iter().filter(|(s, _)| s.state.is_live()), &templates)
            .await?;
        self.trim_and_count(&all).await
    }

    /// Ends every live session of `all` whose deadline has passed.
    async fn expire_due(&self, all: &[(Session, u64)]) -> Result<usize> {
        let now = self.clock.now();
        let due: Vec<&str> = (all.iter())
            .filter(|(s, _)| s.state.is_live() && s.expires_at <= now)
            .map(|(s, _)| s.id.as_str())
            .collect();
        for id in &due {
            match self.end_as(id, None, EndReason::Expired).await {
                Ok(_) | Err(super::SessionError::Ended(_)) => {}
                Err(super::SessionError::NoSession(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(due.len())
    }

    /// Starts the spares each template lacks (one at a time per template and pass). A spare
    /// that cannot be made (a limit, no room) is logged, at most once a minute per template.
    async fn keep_spares(&self, all: &[(Session, u64)], templates: &[Template]) -> Result<()> {
        if templates.iter().all(|t| t.body.spares.unwrap_or(0) == 0) {
            return Ok(());
        }
        let mut spares: HashMap<&str, u32> = HashMap::new();
        for (s, _) in all {
            if s.spare && s.state.is_live() {
                *spares.entry(s.template.as_str()).or_default() += 1;
            }
        }
        for t in templates {
            let want = t.body.spares.unwrap_or(0);
            if spares.get(t.name.as_str()).copied().unwrap_or(0) >= want {
                continue;
            }
            if let Err(e) = self.start_spare(&t.name).await {
                let mut last = self
                    .spare_warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                if last
                    .get(&t.name)
                    .is_none_or(|at| now - *at > Duration::from_secs(60))
                {
                    last.insert(t.name.clone(), now);
                    tracing::warn!(template = %t.name, error = %e, "cannot start a spare session");
                }
            }
        }
        Ok(())
    }

    /// Moves the `live` sessions between pending, running and failed from their node's status
    /// (and keeps their endpoints), and ends idle ones.
    async fn follow_states(
        &self,
        live: impl Iterator<Item = &(Session, u64)>,
        templates: &[Template],
    ) -> Result<()> {
        let mut by_node: HashMap<String, Vec<(Session, u64)>> = HashMap::new();
        for (s, rev) in live {
            by_node
                .entry(s.node.clone())
                .or_default()
                .push((s.clone(), *rev));
        }
        let timeouts: HashMap<String, Duration> = (templates.iter())
            .filter_map(|t| super::templates::idle_timeout(&t.body).map(|d| (t.name.clone(), d)))
            .collect();
        let mut idle_seen = Vec::new();
        for (node, sessions) in by_node {
            let (Some(rec), Some(spec)) =
                (self.store.node(&node).await?, self.store.spec(&node).await?)
            else {
                continue;
            };
            if rec.health == steward_proto::Health::Decommissioned {
                for (s, _) in &sessions {
                    match self
                        .end_as(&s.id, None, EndReason::NodeDecommissioned)
                        .await
                    {
                        Ok(_)
                        | Err(super::SessionError::Ended(_) | super::SessionError::NoSession(_)) => {
                        }
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let status = rec.status.map(|s| s.resources).unwrap_or_default();
            for (mut s, rev) in sessions {
                let Some(piece) = spec.sessions.get(&s.id) else {
                    continue;
                };
                if let Some(timeout) = timeouts.get(&s.template).filter(|_| !s.spare) {
                    idle_seen.push(s.id.clone());
                    let sum = idle::activity(piece, &status);
                    if self.idle_pass(&s, sum, *timeout).await? {
                        continue;
                    }
                }
                let (state, reason) = state_of(piece, &status);
                let mut endpoints = self.endpoints(&s);
                endpoints.extend(addresses_of(piece, &status));
                let moved = state != s.state || reason != s.reason;
                if !moved && endpoints == s.endpoints {
                    continue;
                }
                if moved {
                    self.moved(&mut s, state, reason);
                }
                s.endpoints = endpoints;
                match self.store.put_session(&s, rev).await {
                    // Changed meanwhile (ended, extended): seen again next pass.
                    Err(crate::store::StoreError::Stale) => continue,
                    Err(e) => return Err(e.into()),
                    Ok(_) => {}
                }
                if !moved {
                    continue;
                }
                let message = match &s.reason {
                    Some(r) => format!("session {} {}: {r}", s.id, s.state.as_str()),
                    None => format!("session {} {}", s.id, s.state.as_str()),
                };
                (self.events)
                    .record(
                        EventKind::Session,
                        Some(&s.node),
                        None,
                        &steward_proto::Actor::SYSTEM,
                        message,
                    )
                    .await?;
            }
        }
        let mut clocks = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        clocks.retain(|id, _| idle_seen.contains(id));
        Ok(())
    }

    /// One pass of a session's idle clock: warns, or ends it (`true`: ended).
    async fn idle_pass(&self, s: &Session, sum: Option<u64>, timeout: Duration) -> Result<bool> {
        let now = self.clock.now();
        let warning = self.config.warning().unwrap_or(Duration::from_secs(60));
        let to = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
        let verdict = {
            let mut clocks = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let prev = clocks.get(&s.id).copied();
            let (next, verdict) = idle::step(prev, sum, now, to(timeout), to(warning.min(timeout)));
            match next {
                Some(c) => clocks.insert(s.id.clone(), c),
                None => clocks.remove(&s.id),
            };
            verdict
        };
        match verdict {
            idle::Verdict::Keep => Ok(false),
            idle::Verdict::Warn => {
                let message = format!(
                    "session {} idle: no network activity for {}; it ends in {} unless its workloads see traffic",
                    s.id,
                    humantime::format_duration(timeout.saturating_sub(warning)),
                    humantime::format_duration(warning.min(timeout))
                );
                let actor = steward_proto::Actor::SYSTEM;
                (self.events)
                    .record(EventKind::Session, Some(&s.node), None, &actor, message)
                    .await?;
                Ok(false)
            }
            idle::Verdict::End => {
                match self.end_as(&s.id, None, EndReason::Idle).await {
                    Ok(_)
                    | Err(super::SessionError::Ended(_) | super::SessionError::NoSession(_)) => {}
                    Err(e) => return Err(e),
                }
                self.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&s.id);
                Ok(true)
            }
        }
    }

    /// Sets a session's new state; the first time it runs: when, and the metric.
    fn moved(&self, s: &mut Session, state: SessionState, reason: Option<String>) {
        s.state = state;
        s.reason = reason;
        if state == SessionState::Running && s.running_at.is_none() {
            let now = self.clock.now();
            s.running_at = Some(now);
            let took = (now - s.created_at).to_std().unwrap_or_default();
            (self.events.metrics().session_start_seconds).observe(took.as_secs_f64());
        }
    }

    /// Deletes sessions ended longer than `ended_kept` ago, and sets the live-sessions gauge.
    async fn trim_and_count(&self, all: &[(Session, u64)]) -> Result<()> {
        let kept = self.config.kept().unwrap_or(Duration::from_secs(86_400));
        let before = self.clock.now() - chrono::Duration::from_std(kept).unwrap_or_default();
        let mut old = Vec::new();
        let mut live: BTreeMap<String, i64> = BTreeMap::new();
        for (s, rev) in all {
            if s.state.is_live() {
                *live.entry(s.template.clone()).or_default() += 1;
            } else if s.ended_at.is_some_and(|t| t < before) {
                old.push((s.id.clone(), *rev));
            }
        }
        if !old.is_empty() {
            self.store.delete_sessions(&old).await?;
        }
        let gauge = &self.events.metrics().sessions_live;
        gauge.clear();
        for (template, n) in live {
            gauge
                .get_or_create(&crate::metrics::TemplateLabel { template })
                .set(n);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status(
        kind: ResourceKind,
        name: &str,
        state: ResourceState,
        health: Option<&str>,
    ) -> ResourceStatus {
        let mut r = ResourceStatus::new(kind, name, state, Some("boom".into()));
        r.health = health.map(str::to_string);
        r
    }

    #[test]
    fn a_sessions_state_follows_its_workloads() {
        let piece: NodeSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "web", "image": "busybox"}],
            "vms": [{"name": "web", "image": "/i", "memory": "1Gi"}]
        }))
        .unwrap();
        use ResourceKind::{Container as C, Vm as V};
        use ResourceState::{Converged as Ok, Failed, Pending};
        // (statuses, expected state)
        let cases: Vec<(Vec<ResourceStatus>, SessionState)> = vec![
            (vec![], SessionState::Pending),
            (vec![status(C, "web", Ok, None)], SessionState::Pending),
            (
                vec![status(C, "web", Ok, None), status(V, "web", Ok, None)],
                SessionState::Running,
            ),
            (
                vec![
                    status(C, "web", Ok, Some("starting")),
                    status(V, "web", Ok, None),
                ],
                SessionState::Pending,
            ),
            (
                vec![
                    status(C, "web", Ok, Some("healthy")),
                    status(V, "web", Ok, None),
                ],
                SessionState::Running,
            ),
            (
                vec![
                    status(C, "web", Failed, None),
                    status(V, "web", Pending, None),
                ],
                SessionState::Failed,
            ),
            // Another kind's workload of the same name does not count.
            (
                vec![status(C, "web", Ok, None), status(C, "web2", Ok, None)],
                SessionState::Pending,
            ),
        ];
        for (statuses, want) in cases {
            let (got, reason) = state_of(&piece, &statuses);
            assert_eq!(got, want, "{statuses:?}");
            assert_eq!(reason.is_some(), want == SessionState::Failed);
        }
    }

    #[test]
    fn a_sessions_addresses_are_its_workloads() {
        let piece: NodeSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "front", "image": "busybox"}],
            "vms": [{"name": "kali", "image": "/i", "memory": "1Gi"}]
        }))
        .unwrap();
        let with = |kind, name: &str, addrs: &[&str]| {
            let mut r = status(kind, name, ResourceState::Converged, None);
            r.addresses = addrs.iter().map(|a| a.to_string()).collect();
            r
        };
        let statuses = vec![
            with(ResourceKind::Container, "front", &["172.17.0.2"]),
            with(ResourceKind::Container, "other", &["172.17.0.3"]),
            with(ResourceKind::Vm, "front", &["10.0.0.9"]),
            with(
                ResourceKind::Vm,
                "kali",
                &["192.168.100.10", "192.168.101.10"],
            ),
        ];
        let got: Vec<(String, String)> = (addresses_of(&piece, &statuses).into_iter())
            .map(|e| (e.name, e.address))
            .collect();
        let want = [
            ("kali", "192.168.100.10"),
            ("kali", "192.168.101.10"),
            ("front", "172.17.0.2"),
        ];
        let want: Vec<(String, String)> = (want.iter())
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(addresses_of(&piece, &[]).is_empty());
    }
}
