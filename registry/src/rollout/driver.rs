//! The rollout driver: one task per running rollout. Each step (under the rollout lock) either
//! starts the current batch (per-node version overrides, which bump and wake exactly those
//! nodes), or judges it from the nodes' reported status; rollback puts the previous override
//! back on every node touched and waits for them to attest the previous hash.

use std::time::Duration;

use chrono::Utc;

use crate::kv::Revision;
use steward_proto::{Actor, Rollout, RolloutNodeState, RolloutState};

use super::plan::{self, Progress, Verdict};
use super::{Result, RolloutError, Rollouts};

/// How often a running batch is judged.
const POLL: Duration = Duration::from_millis(300);
const CRED: &Actor = &Actor::SYSTEM;

/// Runs rollout `id` until it stops (paused, halted, aborted, done, rolled back), then gives
/// up its driver slot — under the rollout lock, so a command that restarts the rollout either
/// finds the slot free or is seen by this loop.
pub async fn drive(rollouts: &Rollouts, id: &str) {
    loop {
        match step(rollouts, id).await {
            Ok(true) => tokio::time::sleep(POLL).await,
            Err(e) if e.is_store() => {
                tracing::warn!(rollout = id, error = %format!("{e:#}"), "rollout step failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) if !e.is_not_found() => {
                // Not transient (e.g. a node's spec no longer merges): halt, saying why.
                tracing::warn!(rollout = id, error = %format!("{e:#}"), "rollout halted by an error");
                if let Err(e2) = halt_on_error(rollouts, id, &e).await {
                    tracing::warn!(rollout = id, error = %format!("{e2:#}"), "recording the halt failed");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            Ok(false) | Err(_) => {
                let _guard = rollouts.drivers.lock.lock().await;
                let again = rollouts.get(id).await.is_ok_and(|r| {
                    matches!(r.state, RolloutState::Running | RolloutState::RollingBack)
                });
                if !again {
                    rollouts.drivers.release(id);
                    return;
                }
            }
        }
    }
}

async fn halt_on_error(rollouts: &Rollouts, id: &str, e: &RolloutError) -> Result<()> {
    let _guard = rollouts.drivers.lock.lock().await;
    let (mut r, rev) = rollouts.get_rev(id).await?;
    r.state = RolloutState::Halted;
    let msg = format!(
        "halted at batch {}/{}: {e}",
        r.current_batch + 1,
        r.batch_count
    );
    finish(rollouts, &mut r, rev, msg).await
}

/// One step; `Ok(true)` to be called again.
async fn step(rollouts: &Rollouts, id: &str) -> Result<bool> {
    let _guard = rollouts.drivers.lock.lock().await;
    let (mut r, rev) = rollouts.get_rev(id).await?;
    match r.state {
        RolloutState::Running => forward(rollouts, &mut r, rev).await,
        RolloutState::RollingBack => back(rollouts, &mut r, rev).await,
        _ => Ok(false),
    }
}

fn timed_out(r: &Rollout) -> bool {
    r.batch_started_at.is_some_and(|t| {
        (Utc::now() - t).to_std().unwrap_or_default() > Duration::from_secs(r.timeout_secs)
    })
}
async fn progress_of(
    rollouts: &Rollouts,
    r: &Rollout,
    node: &str,
    sha256: Option<&str>,
) -> Result<Progress> {
    let Some(sha) = sha256 else {
        return Ok(Progress::Converged);
    };
    let status = rollouts.store.node(node).await?.and_then(|n| n.status);
    Ok(plan::node_progress(
        rollouts.fleet.generation(node),
        status.as_ref(),
        &r.payload,
        sha,
    ))
}

fn names(halt: &[(String, String)]) -> String {
    halt.iter()
        .map(|(id, why)| format!("node {id}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Records a step: the rollout and its event in one transaction, only if the rollout is still
/// the one this step read (a replica that lost the lead cannot record a step twice).
async fn finish(rollouts: &Rollouts, r: &mut Rollout, rev: Revision, msg: String) -> Result<()> {
    r.message = msg.clone();
    rollouts.save_logged(r, rev, CRED, msg).await
}

async fn forward(rollouts: &Rollouts, r: &mut Rollout, rev: Revision) -> Result<bool> {
    let (b, count) = (r.current_batch, r.batch_count);
    if b >= count {
        r.state = RolloutState::Done;
        let msg = format!("done: {} node(s) at version {}", r.nodes.len(), r.version);
        finish(rollouts, r, rev, msg).await?;
        return Ok(false);
    }
    let batch: Vec<String> = r
        .nodes
        .iter()
        .filter(|n| n.batch == b)
        .map(|n| n.node_id.clone())
        .collect();
    if r.batch_started_at.is_none() {
        let changes: Vec<_> = batch
            .iter()
            .map(|id| (id.clone(), r.payload.clone(), Some(r.version.clone())))
            .collect();
        let why = format!("rollout {} batch {}/{count}", r.id, b + 1);
        rollouts
            .specs
            .set_payload_overrides(&changes, CRED, &why)
            .await?;
        for n in r.nodes.iter_mut().filter(|n| n.batch == b) {
            n.state = RolloutNodeState::Applying;
        }
        r.batch_started_at = Some(Utc::now());
        let msg = format!("batch {}/{count} started: {}", b + 1, batch.join(", "));
        finish(rollouts, r, rev, msg).await?;
        return Ok(true);
    }
    let mut progress = Vec::new();
    for id in &batch {
        progress.push((
            id.clone(),
            progress_of(rollouts, r, id, Some(&r.sha256)).await?,
        ));
    }
    match plan::verdict(&progress, timed_out(r)) {
        Verdict::Waiting => Ok(true),
        Verdict::Converged => {
            for n in r.nodes.iter_mut().filter(|n| n.batch == b) {
                n.state = RolloutNodeState::Converged;
            }
            r.current_batch += 1;
            r.batch_started_at = None;
            let msg = format!(
                "batch {}/{count} converged and attested: {}",
                b + 1,
                batch.join(", ")
            );
            finish(rollouts, r, rev, msg).await?;
            Ok(true)
        }
        Verdict::Halt(failed) => {
            for (id, why) in &failed {
                if let Some(n) = r.nodes.iter_mut().find(|n| &n.node_id == id) {
                    n.state = RolloutNodeState::Failed;
                    n.error = Some(why.clone());
                }
            }
            for (id, p) in &progress {
                if *p == Progress::Converged {
                    if let Some(n) = r.nodes.iter_mut().find(|n| &n.node_id == id) {
                        n.state = RolloutNodeState::Converged;
                    }
                }
            }
            r.state = RolloutState::Halted;
            let msg = format!("halted at batch {}/{count}: {}", b + 1, names(&failed));
            finish(rollouts, r, rev, msg).await?;
            Ok(false)
        }
    }
}

async fn back(rollouts: &Rollouts, r: &mut Rollout, rev: Revision) -> Result<bool> {
    let touched: Vec<usize> = (0..r.nodes.len())
        .filter(|&i| r.nodes[i].state != RolloutNodeState::Waiting)
        .collect();
    if r.batch_started_at.is_none() {
        let changes: Vec<_> = touched
            .iter()
            .map(|&i| {
                let n = &r.nodes[i];
                (
                    n.node_id.clone(),
                    r.payload.clone(),
                    n.previous_override.clone(),
                )
            })
            .collect();
        let why = format!("rollout {} rollback", r.id);
        rollouts
            .specs
            .set_payload_overrides(&changes, CRED, &why)
            .await?;
        r.batch_started_at = Some(Utc::now());
        let ids: Vec<&str> = touched
            .iter()
            .map(|&i| r.nodes[i].node_id.as_str())
            .collect();
        let msg = format!(
            "rollback applied to {} node(s): {}",
            ids.len(),
            ids.join(", ")
        );
        finish(rollouts, r, rev, msg).await?;
        return Ok(true);
    }
    let mut progress = Vec::new();
    for &i in &touched {
        let n = &r.nodes[i];
        progress.push((
            n.node_id.clone(),
            progress_of(rollouts, r, &n.node_id, n.previous_sha256.as_deref()).await?,
        ));
    }
    let failed = match plan::verdict(&progress, timed_out(r)) {
        Verdict::Waiting => return Ok(true),
        Verdict::Converged => vec![],
        Verdict::Halt(f) => f,
    };
    for &i in &touched {
        let n = &mut r.nodes[i];
        match failed.iter().find(|(id, _)| *id == n.node_id) {
            Some((_, why)) => {
                n.state = RolloutNodeState::Failed;
                n.error = Some(format!("rollback: {why}"));
            }
            None => {
                n.state = RolloutNodeState::RolledBack;
                n.error = None;
            }
        }
    }
    r.state = RolloutState::RolledBack;
    let msg = if failed.is_empty() {
        format!(
            "rolled back: {} node(s) attest their previous version",
            touched.len()
        )
    } else {
        format!("rolled back, but not confirmed by {}", names(&failed))
    };
    finish(rollouts, r, rev, msg).await?;
    Ok(false)
}
