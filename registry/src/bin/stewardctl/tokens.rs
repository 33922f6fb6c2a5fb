//! `stewardctl tokens`: create (the token is shown once), list and revoke enrollment tokens.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use reqwest::Method;
use steward_proto::{CreateEnrollmentToken, EnrollmentTokenCreated, EnrollmentTokenInfo, Labels};

use crate::error::CliError;
use crate::output::{self, ago, relative, ListView};
use crate::{Ctx, Exit};

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Create an enrollment token. The token is printed on stdout, once: the registry keeps
    /// only its hash. Hand it to the agent that enrols the machine.
    Create {
        /// How many enrolments the token allows.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        uses: u32,
        /// Lifetime, e.g. `30m`, `24h`, `7d` (at most 366d).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
        expires_in: String,
        /// Label given to every node enrolled with this token; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Free text shown in `tokens list`.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List enrollment tokens (never the tokens themselves).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke an enrollment token: it can no longer enrol nodes.
    Revoke {
        /// Token id (see `tokens list`; also the part of the token before the dot).
        id: String,
    },
}

pub fn parse_duration(s: &str) -> Result<String, String> {
    humantime::parse_duration(s).map_err(|e| format!("not a duration like 24h: {e}"))?;
    Ok(s.to_string())
}

/// `key=value` for `--label`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} must be KEY=VALUE")),
    }
}

fn labels_map(pairs: Vec<(String, String)>) -> Result<Labels, CliError> {
    let mut out = Labels::new();
    for (k, v) in pairs {
        if out.insert(k.clone(), v).is_some() {
            return Err(CliError::Usage(format!("label {k:?} is given twice")));
        }
    }
    Ok(out)
}

pub async fn run(cmd: TokensCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    match cmd {
        TokensCmd::Create {
            uses,
            expires_in,
            labels,
            description,
        } => {
            let body = CreateEnrollmentToken {
                uses: Some(uses),
                expires_in: Some(expires_in),
                labels: labels_map(labels)?,
                description,
            };
            let created: EnrollmentTokenCreated = client
                .send_json(Method::POST, &["v1", "enrollment-tokens"], &body)
                .await?;
            if ctx.json() {
                output::json(&created)?;
            } else {
                output::line(&created.token);
                let i = &created.info;
                output::note(
                    ctx.quiet,
                    format_args!(
                        "enrollment token {} created: {} use(s), expires {} ({}). \
                         It is shown only once: store it now.",
                        i.id,
                        i.uses_total,
                        i.expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        relative(Utc::now(), i.expires_at),
                    ),
                );
            }
        }
        TokensCmd::List => {
            let tokens: Vec<EnrollmentTokenInfo> =
                client.get(&["v1", "enrollment-tokens"], &[]).await?;
            print_list(ctx, &tokens)?;
        }
        TokensCmd::Revoke { id } => {
            let info: EnrollmentTokenInfo = client
                .call(Method::DELETE, &["v1", "enrollment-tokens", &id])
                .await?;
            if ctx.json() {
                output::json(&info)?;
            } else if !ctx.quiet {
                output::line(format!("enrollment token {} revoked", info.id));
            }
        }
    }
    Ok(Exit::Ok)
}

/// `active`, `revoked`, `expired` or `used up`.
pub fn token_state(t: &EnrollmentTokenInfo, now: DateTime<Utc>) -> &'static str {
    if t.revoked {
        "revoked"
    } else if t.expires_at <= now {
        "expired"
    } else if t.uses_left == 0 {
        "used up"
    } else {
        "active"
    }
}

fn print_list(ctx: &Ctx, tokens: &[EnrollmentTokenInfo]) -> Result<(), CliError> {
    let now = Utc::now();
    let row = |t: &EnrollmentTokenInfo| {
        vec![
            t.id.clone(),
            token_state(t, now).to_string(),
            format!("{}/{}", t.uses_left, t.uses_total),
            ago(now, t.created_at),
            relative(now, t.expires_at),
            output::labels(&t.labels),
            t.description.clone().unwrap_or_else(|| "-".into()),
        ]
    };
    let headers = [
        "ID",
        "STATE",
        "USES LEFT",
        "CREATED",
        "EXPIRES",
        "LABELS",
        "DESCRIPTION",
    ];
    output::list(
        ctx,
        tokens,
        ListView {
            what: "enrollment tokens",
            headers: &headers,
            key: |t| t.id.clone(),
            row: &row,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_flags_need_a_key_and_value() {
        assert_eq!(
            parse_label("role=builder"),
            Ok(("role".to_string(), "builder".to_string()))
        );
        assert!(parse_label("role").is_err());
        assert!(parse_label("=x").is_err());
        let twice = vec![
            ("a".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        assert!(labels_map(twice).is_err());
    }

    #[test]
    fn durations_are_checked_locally() {
        assert_eq!(parse_duration("7d"), Ok("7d".to_string()));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn token_states() {
        let now = Utc::now();
        let mut t = EnrollmentTokenInfo {
            id: "x".into(),
            description: None,
            labels: Labels::new(),
            uses_total: 2,
            uses_left: 1,
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            revoked: false,
        };
        assert_eq!(token_state(&t, now), "active");
        t.uses_left = 0;
        assert_eq!(token_state(&t, now), "used up");
        t.expires_at = now;
        assert_eq!(token_state(&t, now), "expired");
        t.revoked = true;
        assert_eq!(token_state(&t, now), "revoked");
    }
}
