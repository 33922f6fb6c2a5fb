//! The one-shot commands: `enroll`, `apply --file`, `status`, and the start-up of `run`.

use std::io::Write;

use anyhow::{bail, Context};
use steward_proto::parse::{parse_document, Format};
use steward_proto::validate::{validate_spec, SpecLimits};
use steward_proto::{NodeSpec, NodeStatus, ResourceState};

use crate::client::{ClientError, RegistryClient, TlsOptions};
use crate::config::AgentConfig;
use crate::docker::Docker;
use crate::facts::collect_facts;
use crate::reconciler::Reconciler;
use crate::store::{Identity, Paths};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn tls(cfg: &AgentConfig) -> TlsOptions {
    TlsOptions {
        ca_file: cfg.ca_file.clone(),
        pin_sha256: cfg.ca_pin_sha256.clone(),
    }
}

/// The stored identity, or a fresh enrolment with the configured token. With `force` and a
/// stored identity for the same registry, the enrolment proves to be that node with its
/// current secret (the registry refuses a plain token for an enrolled machine); when the
/// registry no longer accepts that secret (the node was decommissioned), it enrols plainly.
/// With several registry URLs, the enrolment tries each in turn (the error lists each URL's),
/// and the identity records the whole list.
pub async fn ensure_identity(
    cfg: &AgentConfig,
    force: bool,
) -> anyhow::Result<(Identity, RegistryClient)> {
    let paths = Paths::new(&cfg.data_dir);
    paths.ensure_dir()?;
    let stored = paths.load_identity()?;
    if !force {
        if let Some(id) = stored {
            let url = cfg.registry.clone().unwrap_or_else(|| id.registry.clone());
            let client = RegistryClient::new(&url, &tls(cfg))?
                .with_credentials(id.node_id.clone(), id.node_secret.clone());
            return Ok((id, client));
        }
    }
    let Some(registry) = cfg.registry.clone() else {
        bail!("not enrolled and no registry configured: set `registry` in the config, STEWARD_REGISTRY or --registry");
    };
    let Some(token) = cfg.enrollment_token.clone() else {
        bail!("not enrolled: set `enrollment_token` in the config, STEWARD_ENROLLMENT_TOKEN or --token (stewardctl tokens create)");
    };
    let client = RegistryClient::new(&registry, &tls(cfg))?;
    let docker_version = match Docker::connect(cfg.docker_socket.as_deref()).await {
        Ok(d) => d.version().await.ok(),
        Err(_) => None,
    };
    let facts = collect_facts(VERSION, docker_version);
    // The secret goes only to the registry it came from: every URL configured now must have
    // been one of those it was enrolled with.
    let proof = stored
        .filter(|id| same_registry(&id.registry, &registry))
        .map(|id| client.clone().with_credentials(id.node_id, id.node_secret));
    let resp = match proof {
        Some(node) => match node.reenroll(&token, &facts).await {
            Err(ClientError::EnrollmentRefused { message }) => {
                tracing::warn!(%message, "the registry no longer accepts the stored node secret; enrolling as a new node");
                client.enroll(&token, &facts).await
            }
            other => other,
        },
        None => client.enroll(&token, &facts).await,
    }
    .with_context(|| format!("enrolling with {registry}"))?;
    let id = Identity {
        registry: registry.clone(),
        node_id: resp.node_id.clone(),
        node_secret: resp.node_secret.clone(),
        heartbeat_interval_secs: resp.heartbeat_interval_secs,
    };
    paths.save_identity(&id)?;
    tracing::info!(node = %id.node_id, rotated = resp.rotated, path = %paths.identity().display(), "enrolled; node secret stored (0600)");
    let client = client.with_credentials(id.node_id.clone(), id.node_secret.clone());
    Ok((id, client))
}

/// True when every URL of the list `now` is in the list `enrolled_with` (trailing `/` aside).
fn same_registry(enrolled_with: &str, now: &str) -> bool {
    let norm = |l: &str| -> Vec<String> {
        steward_proto::endpoints::split_list(l)
            .unwrap_or_default()
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect()
    };
    let before = norm(enrolled_with);
    let after = norm(now);
    !after.is_empty() && after.iter().all(|u| before.contains(u))
}

/// Reads and validates a spec file (YAML or JSON by extension; `-` is stdin as YAML); a spec
/// over `limits` is refused.
pub fn read_spec(path: &str, limits: &SpecLimits) -> anyhow::Result<NodeSpec> {
    let (bytes, format) = if path == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        (b, Format::Yaml)
    } else {
        (
            std::fs::read(path).with_context(|| format!("reading {path}"))?,
            Format::from_path(path),
        )
    };
    let spec: NodeSpec =
        parse_document(&bytes, format).map_err(|p| anyhow::anyhow!("{path}: {p}"))?;
    if let Err(e) = validate_spec(&spec, limits) {
        let lines: Vec<String> = e.0.iter().map(|p| format!("  {p}")).collect();
        bail!("{path} is not a valid spec:\n{}", lines.join("\n"));
    }
    Ok(spec)
}

/// The reconciler of a registry-less run (`apply --file`, with or without `--watch`), holding
/// the store's lock so that a running daemon and this command never act on one host at once.
/// Payloads come only from blobs already in the cache.
pub fn local_reconciler(cfg: &AgentConfig) -> anyhow::Result<(Reconciler, Paths)> {
    let paths = Paths::new(&cfg.data_dir);
    paths.ensure_dir()?;
    let store = crate::store::Store::open(&paths)?;
    let identity = paths.load_identity()?;
    let registry = cfg
        .registry
        .clone()
        .or_else(|| identity.as_ref().map(|i| i.registry.clone()))
        .and_then(|l| crate::config::first_registry_url(&l));
    let node_id = identity
        .map(|i| i.node_id)
        .unwrap_or_else(|| "local".into());
    let payloads = crate::payload::Payloads::new(&cfg.data_dir, Some(store.clone()), None);
    let rec = Reconciler::new(cfg.docker_socket.clone(), cfg.policy.clone(), node_id)
        .with_networks(cfg.lab_cidr_template.clone(), Some(store.clone()), registry)
        .with_payloads(payloads)
        .with_activity(cfg.activity_interval)
        .with_heal(cfg.heal, Some(store))
        .with_vms(cfg.vms.clone());
    Ok((rec, paths))
}

/// `apply --file`: one reconcile of a local spec, no registry. Returns the status.
pub async fn apply(cfg: &AgentConfig, path: &str) -> anyhow::Result<NodeStatus> {
    let spec = read_spec(path, &cfg.limits)?;
    let (mut rec, paths) = local_reconciler(cfg)?;
    let status = rec.reconcile(0, &spec).await;
    paths.save_status(&status)?;
    Ok(status)
}

/// Prints a status as a table (or JSON).
#[allow(clippy::print_stdout)]
pub fn print_status(status: &NodeStatus, json: bool, header: Option<String>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(status)?)?;
        return Ok(());
    }
    if let Some(h) = header {
        writeln!(out, "{h}")?;
    }
    writeln!(
        out,
        "{:<10} {:<24} {:<10} {:>8}  ERROR",
        "KIND", "NAME", "STATE", "RESTARTS"
    )?;
    for r in &status.resources {
        let kind = serde_json::to_value(r.kind)?
            .as_str()
            .unwrap_or("")
            .to_string();
        let state = serde_json::to_value(r.state)?
            .as_str()
            .unwrap_or("")
            .to_string();
        writeln!(
            out,
            "{:<10} {:<24} {:<10} {:>8}  {}",
            kind,
            r.name,
            state,
            r.restarts,
            r.error.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

/// True when every resource converged.
pub fn all_converged(s: &NodeStatus) -> bool {
    s.resources
        .iter()
        .all(|r| r.state == ResourceState::Converged)
}

#[cfg(test)]
mod tests {
    use super::same_registry;

    #[test]
    fn the_secret_goes_only_to_urls_it_was_enrolled_with() {
        assert!(same_registry("http://a:1", "http://a:1/"));
        assert!(same_registry("http://a:1,http://b:1", "http://b:1"));
        assert!(same_registry(
            "http://a:1,http://b:1",
            "http://b:1,http://a:1"
        ));
        assert!(!same_registry("http://a:1", "http://a:1,http://c:1"));
        assert!(!same_registry("http://a:1", "http://c:1"));
    }
}
