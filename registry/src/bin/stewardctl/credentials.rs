//! `stewardctl credentials`: create (the token is shown once), list and revoke named API
//! credentials.

use chrono::Utc;
use clap::Subcommand;
use reqwest::Method;
use steward_proto::{CreateCredential, CredentialCreated, CredentialInfo, Role};

use crate::error::CliError;
use crate::output::{self, ago, relative, ListView};
use crate::tokens::parse_duration;
use crate::{Ctx, Exit};

#[derive(Subcommand)]
pub enum CredentialsCmd {
    /// Create a named credential (admin only). The token is printed on stdout, once: the
    /// registry keeps only its hash. Use it as the bearer token (`--token`, STEWARD_TOKEN).
    Create {
        /// Unique name, shown in the audit trail and the event log as who did what.
        name: String,
        /// admin (everything), operator (specs, fragments, labels, payloads, rollouts, resets),
        /// viewer (reads), sessions (sessions only).
        #[arg(long, value_name = "ROLE")]
        role: Role,
        /// Narrow it to the nodes matching this label selector, e.g. `env=lab` (reads and
        /// writes; fragments and rollouts must select within it).
        #[arg(long, value_name = "SELECTOR")]
        selector: Option<String>,
        /// Lifetime, e.g. `90d`, `12h` (default: never expires).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<String>,
        /// Free text shown in `credentials list`.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// With `--role sessions`: act for this session owner alone (create, see, extend and
        /// end only its sessions).
        #[arg(long, value_name = "OWNER")]
        owner: Option<String>,
    },
    /// List named credentials: role, scope, created, expires, last used (never the secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a named credential: requests with it are refused from now on.
    Revoke { name: String },
}

pub async fn run(cmd: CredentialsCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    match cmd {
        CredentialsCmd::Create {
            name,
            role,
            selector,
            expires,
            description,
            owner,
        } => {
            let body = CreateCredential {
                name,
                role,
                selector,
                expires_in: expires,
                description,
                owner,
            };
            let made: CredentialCreated = client
                .send_json(Method::POST, &["v1", "credentials"], &body)
                .await?;
            if ctx.json() {
                return output::json(&made).map(|()| Exit::Ok);
            }
            output::line(&made.token);
            let i = &made.info;
            output::note(
                ctx.quiet,
                format_args!(
                    "credential {} created: role {}{}, {}. It is shown only once: store it now.",
                    i.name,
                    i.role,
                    i.selector
                        .as_ref()
                        .map(|s| format!(", scope {s}"))
                        .unwrap_or_default(),
                    i.expires_at
                        .map(|t| format!("expires {}", relative(Utc::now(), t)))
                        .unwrap_or_else(|| "never expires".into()),
                ),
            );
        }
        CredentialsCmd::List => {
            let list: Vec<CredentialInfo> = client.get(&["v1", "credentials"], &[]).await?;
            print_list(ctx, &list)?;
        }
        CredentialsCmd::Revoke { name } => {
            let info: CredentialInfo = client
                .call(Method::DELETE, &["v1", "credentials", &name])
                .await?;
            ctx.answer(&info, |i| format!("credential {} revoked", i.name))?;
        }
    }
    Ok(Exit::Ok)
}

/// `active`, `revoked` or `expired`.
fn state(c: &CredentialInfo, now: chrono::DateTime<Utc>) -> &'static str {
    if c.revoked {
        "revoked"
    } else if c.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    }
}

fn print_list(ctx: &Ctx, list: &[CredentialInfo]) -> Result<(), CliError> {
    let now = Utc::now();
    let row = |c: &CredentialInfo| {
        vec![
            c.name.clone(),
            c.role.to_string(),
            c.selector.clone().unwrap_or_else(|| "-".into()),
            state(c, now).to_string(),
            format!("{} by {}", ago(now, c.created_at), c.created_by),
            c.expires_at.map_or("never".into(), |t| relative(now, t)),
            c.last_used.map_or("never".into(), |t| ago(now, t)),
            c.description.clone().unwrap_or_else(|| "-".into()),
        ]
    };
    let headers = [
        "NAME",
        "ROLE",
        "SCOPE",
        "STATE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "DESCRIPTION",
    ];
    output::list(
        ctx,
        list,
        ListView {
            what: "named credentials",
            headers: &headers,
            key: |c| c.name.clone(),
            row: &row,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let now = Utc::now();
        let mut c = CredentialInfo {
            name: "ci".into(),
            role: Role::Viewer,
            selector: None,
            description: None,
            owner: None,
            created_at: now,
            created_by: "admin-token".into(),
            expires_at: None,
            last_used: None,
            revoked: false,
        };
        assert_eq!(state(&c, now), "active");
        c.expires_at = Some(now);
        assert_eq!(state(&c, now), "expired");
        c.revoked = true;
        assert_eq!(state(&c, now), "revoked");
    }
}
