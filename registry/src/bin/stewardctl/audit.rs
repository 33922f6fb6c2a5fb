//! `stewardctl audit`: the registry's audit trail of writes, filtered.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use steward_proto::{AuditOutcome, AuditRecord};

use crate::error::CliError;
use crate::output;
use crate::{Ctx, Exit};

#[derive(Args)]
pub struct AuditArgs {
    /// Only writes by this actor (a credential's name, `admin-token`, a node id).
    #[arg(long, value_name = "NAME")]
    actor: Option<String>,
    /// Only writes to this target: `node/ID`, `fragment/NAME`, ... or a kind (`node`).
    #[arg(long, value_name = "TARGET")]
    target: Option<String>,
    /// Only writes at or after this time (RFC 3339, or an age such as `2h`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only writes before this time (RFC 3339, or an age such as `30m`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
}

/// RFC 3339, or a duration meaning that long ago.
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor an age like 2h"))?;
    Ok(Utc::now() - chrono::Duration::from_std(d).map_err(|e| e.to_string())?)
}

pub async fn run(args: AuditArgs, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let fmt = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let q = [
        ("actor", args.actor.unwrap_or_default()),
        ("target", args.target.unwrap_or_default()),
        ("since", fmt(args.since)),
        ("until", fmt(args.until)),
    ];
    let records: Vec<AuditRecord> = client.get_pages(&["v1", "audit"], &q).await?;
    if ctx.json() {
        return output::json(&records).map(|()| Exit::Ok);
    }
    if records.is_empty() {
        output::note(ctx.quiet, "no audit records");
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = records.iter().map(row).collect();
    output::table(
        &[
            "TIME", "ACTOR", "FROM", "METHOD", "ROUTE", "TARGET", "OUTCOME", "REASON",
        ],
        &rows,
    );
    Ok(Exit::Ok)
}

fn row(r: &AuditRecord) -> Vec<String> {
    let outcome = match r.outcome {
        AuditOutcome::Done => format!("done {}", r.status),
        AuditOutcome::Refused => format!("refused {}", r.status),
        AuditOutcome::Failed => format!("failed {}", r.status),
    };
    vec![
        r.time.to_rfc3339_opts(SecondsFormat::Secs, true),
        match r.role {
            Some(role) => format!("{} ({role})", r.actor),
            None => r.actor.clone(),
        },
        r.address.clone().unwrap_or_else(|| "-".into()),
        r.method.clone(),
        r.route.clone(),
        r.target.clone().unwrap_or_else(|| "-".into()),
        outcome,
        r.reason.clone().unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        assert_eq!(
            parse_time("2026-12-01T10:00:00Z").unwrap().to_rfc3339(),
            "2026-12-01T10:00:00+00:00"
        );
        let t = parse_time("2h").unwrap();
        let age = Utc::now() - t;
        assert!(age.num_minutes() >= 119 && age.num_minutes() <= 121);
        assert!(parse_time("yesterday").is_err());
    }
}
