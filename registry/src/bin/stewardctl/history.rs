//! Spec history in `stewardctl spec` and `stewardctl fragments`: the kept versions as a table,
//! a unified diff between two of them, and reverts.

use chrono::Utc;
use reqwest::Method;
use steward_proto::{RevertSpec, SpecVersion};

use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, ago};
use crate::{Ctx, Exit};

/// Whose history: a node's own spec (versions by generation) or a fragment (by revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Of {
    Node,
    Fragment,
}

impl Of {
    /// `/v1/nodes/{name}/spec/{last}` or `/v1/fragments/{name}/{last}`.
    fn path(self, name: &str, last: &'static str) -> Vec<String> {
        let mut p = match self {
            Of::Node => vec!["v1", "nodes", name, "spec"],
            Of::Fragment => vec!["v1", "fragments", name],
        };
        p.push(last);
        p.into_iter().map(str::to_string).collect()
    }

    fn unit(self) -> &'static str {
        match self {
            Of::Node => "generation",
            Of::Fragment => "revision",
        }
    }

    fn what(self, name: &str) -> String {
        match self {
            Of::Node => format!("node {name}"),
            Of::Fragment => format!("fragment {name}"),
        }
    }
}

async fn fetch(client: &Client, of: Of, name: &str) -> Result<Vec<SpecVersion>, CliError> {
    let path = of.path(name, "history");
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    client.get(&path, &[]).await
}

/// `… history`: SEQ, GENERATION/REVISION, WHEN, AUTHOR, NOTE.
pub async fn show(ctx: &Ctx, client: &Client, of: Of, name: &str) -> Result<Exit, CliError> {
    let versions = fetch(client, of, name).await?;
    if ctx.json() {
        output::json(&versions)?;
        return Ok(Exit::Ok);
    }
    if versions.is_empty() {
        output::note(
            ctx.quiet,
            format_args!("no kept versions of {}", of.what(name)),
        );
        return Ok(Exit::Ok);
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.seq.to_string(),
                v.generation.to_string(),
                ago(now, v.time),
                v.author.clone(),
                v.note.clone(),
            ]
        })
        .collect();
    let unit = of.unit().to_uppercase();
    output::table(&["SEQ", &unit, "WHEN", "AUTHOR", "NOTE"], &rows);
    Ok(Exit::Ok)
}

/// The version in force at `at`: for a node the last written at or before that generation,
/// for a fragment the last of that revision.
pub fn pick(versions: &[SpecVersion], of: Of, at: u64) -> Option<&SpecVersion> {
    versions.iter().rev().find(|v| match of {
        Of::Node => v.generation <= at,
        Of::Fragment => v.generation == at,
    })
}

/// A version as the YAML the diff compares (a fragment's selector first).
fn render(v: &SpecVersion) -> Result<String, CliError> {
    let mut out = String::new();
    if let Some(sel) = &v.selector {
        out.push_str(&format!("# selector: {sel:?}\n"));
    }
    match &v.spec {
        Some(s) => out.push_str(&output::to_yaml(s)?),
        None => out.push_str("# (deleted)\n"),
    }
    Ok(out)
}

/// `… diff --from A [--to B]`: exit 0 when equal, 1 when they differ.
pub async fn diff(
    ctx: &Ctx,
    client: &Client,
    of: Of,
    name: &str,
    from: u64,
    to: Option<u64>,
) -> Result<Exit, CliError> {
    let versions = fetch(client, of, name).await?;
    let missing = |at: u64| {
        CliError::Usage(format!(
            "{} has no kept version at {} {at} (see `history`)",
            of.what(name),
            of.unit()
        ))
    };
    let a = pick(&versions, of, from).ok_or_else(|| missing(from))?;
    let b = match to {
        Some(t) => pick(&versions, of, t).ok_or_else(|| missing(t))?,
        None => versions.last().ok_or_else(|| missing(from))?,
    };
    let (ra, rb) = (render(a)?, render(b)?);
    let label = |v: &SpecVersion| {
        format!(
            "{} {} {} (seq {})",
            of.what(name),
            of.unit(),
            v.generation,
            v.seq
        )
    };
    let text = (ra != rb).then(|| {
        similar::TextDiff::from_lines(&ra, &rb)
            .unified_diff()
            .context_radius(3)
            .header(&label(a), &label(b))
            .to_string()
    });
    if ctx.json() {
        output::json(&serde_json::json!({
            "from": a, "to": b, "equal": text.is_none(), "diff": text.clone().unwrap_or_default()
        }))?;
    } else if let Some(t) = &text {
        output::stdout(t);
    } else {
        output::note(ctx.quiet, "no differences");
    }
    Ok(if text.is_some() {
        Exit::Differs
    } else {
        Exit::Ok
    })
}

/// `… revert --to G`: the answer of the revert route, decoded as `T`.
pub async fn revert<T: serde::de::DeserializeOwned>(
    client: &Client,
    of: Of,
    name: &str,
    to: u64,
) -> Result<T, CliError> {
    let path = of.path(name, "revert");
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    client
        .send_json(Method::POST, &path, &RevertSpec { to })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(seq: u64, generation: u64) -> SpecVersion {
        SpecVersion {
            seq,
            generation,
            time: Utc::now(),
            author: "a".into(),
            note: "written".into(),
            spec: Some(Default::default()),
            selector: None,
        }
    }

    #[test]
    fn versions_are_picked_as_in_force_at_a_generation_or_exactly_for_revisions() {
        let kept = [v(1, 2), v(2, 5), v(3, 9)];
        assert_eq!(pick(&kept, Of::Node, 5).unwrap().seq, 2);
        assert_eq!(pick(&kept, Of::Node, 7).unwrap().seq, 2, "in force at 7");
        assert!(pick(&kept, Of::Node, 1).is_none());
        assert_eq!(pick(&kept, Of::Fragment, 9).unwrap().seq, 3);
        assert!(pick(&kept, Of::Fragment, 7).is_none());
    }
}
