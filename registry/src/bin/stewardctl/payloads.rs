//! `stewardctl payloads`: upload (streamed, hashed locally first), list, show and delete
//! payload versions.

use clap::Subcommand;
use reqwest::Method;
use sha2::{Digest, Sha256};
use steward_proto::{PayloadSummary, PayloadVersion};
use tokio::io::AsyncReadExt;

use crate::error::CliError;
use crate::output::{self, bytes};
use crate::{Ctx, Exit};

#[derive(Subcommand)]
pub enum PayloadsCmd {
    /// List payloads and their versions.
    #[command(visible_alias = "ls")]
    List,
    /// Show the versions of a payload, or one version.
    #[command(visible_alias = "show")]
    Get {
        name: String,
        version: Option<String>,
    },
    /// Upload FILE as NAME@VERSION. The file is hashed locally, then streamed; the registry
    /// checks the hash. Versions are immutable: other content under an existing version is
    /// refused.
    #[command(visible_alias = "push")]
    Upload {
        name: String,
        version: String,
        /// The file to upload.
        file: std::path::PathBuf,
    },
    /// Delete a version (refused while a spec, fragment or active rollout references it).
    #[command(visible_alias = "rm")]
    Delete { name: String, version: String },
}

async fn sha256_file(path: &std::path::Path) -> Result<String, CliError> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::Usage(format!("cannot open {}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn version_rows(vs: &[PayloadVersion]) -> Vec<Vec<String>> {
    vs.iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.version.clone(),
                bytes(v.size),
                v.sha256.clone(),
                v.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ]
        })
        .collect()
}

const VERSION_HEADERS: [&str; 5] = ["NAME", "VERSION", "SIZE", "SHA256", "CREATED"];

pub async fn run(cmd: PayloadsCmd, ctx: &Ctx) -> Result<Exit, CliError> {
    match cmd {
        PayloadsCmd::List => {
            let list: Vec<PayloadSummary> = ctx.client()?.get(&["v1", "payloads"], &[]).await?;
            if ctx.json() {
                output::json(&list)?;
            } else if list.is_empty() {
                output::note(ctx.quiet, "no payloads");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| vec![p.name.clone(), p.versions.join(", "), bytes(p.total_size)])
                    .collect();
                output::table(&["NAME", "VERSIONS", "TOTAL SIZE"], &rows);
            }
        }
        PayloadsCmd::Get { name, version } => {
            let client = ctx.client()?;
            let vs: Vec<PayloadVersion> = match &version {
                Some(v) => vec![client.get(&["v1", "payloads", &name, v], &[]).await?],
                None => client.get(&["v1", "payloads", &name], &[]).await?,
            };
            if ctx.json() {
                match (&version, vs.first()) {
                    (Some(_), Some(v)) => output::json(v)?,
                    _ => output::json(&vs)?,
                }
            } else {
                output::table(&VERSION_HEADERS, &version_rows(&vs));
            }
        }
        PayloadsCmd::Upload {
            name,
            version,
            file,
        } => upload(ctx, &name, &version, &file).await?,
        PayloadsCmd::Delete { name, version } => {
            let v: PayloadVersion = ctx
                .client()?
                .call(Method::DELETE, &["v1", "payloads", &name, &version])
                .await?;
            ctx.answer(&v, |v| format!("payload {}@{} deleted", v.name, v.version))?;
        }
    }
    Ok(Exit::Ok)
}

/// `payloads upload`: streams a file as a new payload version, with its sha256.
async fn upload(
    ctx: &Ctx,
    name: &str,
    version: &str,
    file: &std::path::Path,
) -> Result<(), CliError> {
    let sha = sha256_file(file).await?;
    let f = tokio::fs::File::open(&file)
        .await
        .map_err(|e| CliError::Usage(format!("cannot open {}: {e}", file.display())))?;
    let client = ctx.streaming_client()?;
    // The file is streamed, so it is sent to one URL: one that answers now.
    client.settle().await?;
    let rb = client
        .request(Method::PUT, &["v1", "payloads", name, version])
        .header("content-type", "application/octet-stream")
        .header("x-steward-sha256", &sha)
        .body(reqwest::Body::from(f));
    let resp = client.send(rb).await?;
    let created = resp.status() == reqwest::StatusCode::CREATED;
    let v: PayloadVersion = resp
        .json()
        .await
        .map_err(|e| CliError::Unexpected(format!("unexpected answer: {e}")))?;
    ctx.answer(&v, |v| {
        format!(
            "payload {}@{} {}: sha256 {} ({})",
            v.name,
            v.version,
            if created {
                "uploaded"
            } else {
                "already stored with this content"
            },
            v.sha256,
            bytes(v.size)
        )
    })?;
    Ok(())
}
