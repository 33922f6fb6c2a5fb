//! Template writes: checked (declarations, selector, lifetimes, reservation, and the spec
//! rendered for a sample session through the normal spec validation), stored with a revision,
//! refused for deletion while live sessions use them.

use std::time::Duration;

use chrono::Utc;
use steward_proto::quantity::{parse_cpus, parse_memory};
use steward_proto::selector::Selector;
use steward_proto::{Actor, EventKind, Problem, Template, TemplateWrite};

use super::{render, Result, SessionError, Sessions};
use crate::clock::parse_ttl;
use crate::store::StoreError;

/// Longest lifetime a template may allow.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
const DEFAULT_TTL: Duration = Duration::from_secs(3_600);
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(86_400);

/// A template's idle timeout, if it has one (checked when written).
pub fn idle_timeout(t: &TemplateWrite) -> Option<Duration> {
    (t.idle_timeout.as_deref()).and_then(|d| humantime::parse_duration(d.trim()).ok())
}

/// A template's default lifetime and longest lifetime.
pub fn lifetimes(t: &TemplateWrite) -> std::result::Result<(Duration, Duration), Vec<Problem>> {
    let one = Duration::from_secs(1);
    let max = match &t.max_ttl {
        Some(m) => parse_ttl("max_ttl", m, one, MAX_TTL).map_err(|p| vec![p])?,
        None => DEFAULT_MAX_TTL,
    };
    let ttl = match &t.ttl {
        Some(d) => parse_ttl("ttl", d, one, max).map_err(|p| vec![p])?,
        None => DEFAULT_TTL.min(max),
    };
    Ok((ttl, max))
}

/// Every problem of a template, by field.
fn check(t: &TemplateWrite, limits: &steward_proto::validate::SpecLimits) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Err(e) = t.selector.parse::<Selector>() {
        problems.push(Problem::new("selector", e.to_string()));
    }
    if let Err(p) = lifetimes(t) {
        problems.extend(p);
    }
    if let Some(c) = &t.reserve.cpus {
        if let Err(e) = parse_cpus(c) {
            problems.push(Problem::new("reserve.cpus", e.to_string()));
        }
    }
    if let Some(m) = &t.reserve.memory {
        if let Err(e) = parse_memory(m) {
            problems.push(Problem::new("reserve.memory", e.to_string()));
        }
    }
    for (field, v) in [("per_owner", t.per_owner), ("max_sessions", t.max_sessions)] {
        if v == Some(0) {
            problems.push(Problem::new(
                field,
                "must be 1 or more (leave it out for no limit)",
            ));
        }
    }
    if let Some(idle) = &t.idle_timeout {
        let (min, max) = (Duration::from_secs(10), Duration::from_secs(30 * 86_400));
        if let Err(p) = parse_ttl("idle_timeout", idle, min, max) {
            problems.push(p);
        }
    }
    if t.spares.is_some_and(|n| n > 100) {
        problems.push(Problem::new("spares", "at most 100"));
    }
    if t.spares.is_some_and(|n| n > 0) {
        for name in t
            .params
            .iter()
            .filter(|(_, p)| p.default.is_none())
            .map(|(n, _)| n)
        {
            problems.push(Problem::new(
                format!("params.{name}"),
                "a template with spares needs a default for every parameter (spares are made with the defaults)",
            ));
        }
    }
    if let Err(p) = render::check_template(t, limits) {
        problems.extend(p);
    }
    problems
}

impl Sessions {
    /// `PUT /v1/templates/{name}`: creates or replaces a template (sessions already made from
    /// it keep what they were rendered with).
    #[tracing::instrument(skip(self, body, by))]
    pub async fn put_template(
        &self,
        name: &str,
        body: TemplateWrite,
        by: &Actor,
    ) -> Result<Template> {
        crate::names::check_name("name", name).map_err(|p| SessionError::Invalid(vec![p]))?;
        let problems = check(&body, &self.limits);
        if !problems.is_empty() {
            return Err(SessionError::Invalid(problems));
        }
        for _ in 0..crate::spec_gate::ATTEMPTS {
            let old = self.store.template(name).await?;
            if let Some((same, _)) = old.as_ref().filter(|(t, _)| t.body == body) {
                return Ok(same.clone());
            }
            let t = Template {
                name: name.to_string(),
                body: body.clone(),
                revision: old.as_ref().map_or(0, |(t, _)| t.revision) + 1,
                updated_at: Utc::now(),
                updated_by: by.name.clone().unwrap_or_else(|| "-".into()),
            };
            match self
                .store
                .put_template(&t, old.as_ref().map_or(0, |(_, r)| *r))
                .await
            {
                Ok(_) => {
                    let message = format!("template {name:?} revision {} written", t.revision);
                    (self.events)
                        .record(EventKind::TemplateWritten, None, None, by, message)
                        .await?;
                    return Ok(t);
                }
                Err(StoreError::Stale) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Busy { what: "template" }.into())
    }

    pub async fn template(&self, name: &str) -> Result<Template> {
        (self.store.template(name).await?)
            .map(|(t, _)| t)
            .ok_or_else(|| SessionError::NoTemplate(name.to_string()))
    }

    pub async fn templates(&self) -> Result<Vec<Template>> {
        Ok(self.store.templates().await?)
    }

    /// `DELETE /v1/templates/{name}`: refused while live sessions use it.
    pub async fn delete_template(&self, name: &str, by: &Actor) -> Result<()> {
        let _guard = self.specs.take_gate().await?;
        let (_, rev) = (self.store.template(name).await?)
            .ok_or_else(|| SessionError::NoTemplate(name.to_string()))?;
        let count = (self.store.sessions().await?.iter())
            .filter(|(s, _)| s.template == name && s.state.is_live())
            .count();
        if count > 0 {
            return Err(SessionError::TemplateInUse {
                name: name.to_string(),
                count,
            });
        }
        self.store.delete_template(name, rev).await?;
        let message = format!("template {name:?} deleted");
        (self.events)
            .record(EventKind::TemplateDeleted, None, None, by, message)
            .await?;
        Ok(())
    }
}
