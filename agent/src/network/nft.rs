//! The agent's own table `inet steward` (planned by `firewall.rs`) observed with `nft -j list
//! table inet steward` and replaced in one `nft -j -f -` transaction (through `nft_run.rs`, the
//! only code running `nft`), as JSON in the `nftables` crate's schema types (`nft_json.rs`;
//! nft's own parser reads it; no rule text is built by hand). No other table is ever listed
//! or written.
//!
//! A pass that has a table to consider (a bridge is isolated, or was — `NetState::isolated` —
//! or a full resync) first decides with what it knows (`nft_known.rs`): the digest of the batch
//! it last wrote or found in place and the kernel's ruleset generation id then, read by netlink
//! (`nft_gen.rs`), kept in `NetState::table` in the data dir. Same plan and same generation:
//! nothing to do, no process at all. Same generation, another plan (the spec changed), or no
//! table known (nothing isolated before): it writes without listing. Otherwise (the generation
//! moved — someone committed, a hand edit included —, a full resync, or no generation to read)
//! it lists and writes only when the table differs from the plan. A write is a replacement
//! (`add table`, `delete table`, `add table`, chains, rules: atomic, whatever was there) or,
//! with nothing isolated any more, `delete table`; where the table is believed absent (nothing
//! isolated before, or listed absent) it is `create table`, chains, rules instead — half the
//! kernel's time of a replacement, whose `delete table` costs as much as the rest; `create`
//! fails as a whole, changing nothing, if the table exists after all, and the replacement
//! follows. A difference in the rules of a bridge the agent had already isolated is drift:
//! restored, logged, and reported on the bridge's status. When `nft` fails, each bridge to
//! isolate is reported failed with the reason and is unusable for workloads in that pass (fail
//! closed: nothing is started on a bridge left open by mistake), and nothing is known of the
//! table any more (the next pass lists).
//!
//! The generation is remembered after a write only when it is the very next one to the
//! generation read before the write: a commit by anyone else in between (a hand edit between
//! the write and the read, say) leaves the table unknown, so the next pass lists; after a list
//! that found the table right, the generation read before the list is kept (a change between
//! the two moves it). What is left: the generation is per network namespace and restarts at a
//! reboot or in a new namespace, so it is kept with the boot id and the namespace's inode; a
//! namespace deleted and another made with the same inode, with the same data dir and the same
//! generation count, would be taken for the old one until the next full resync (the daemon's
//! periodic resync always lists).

use std::collections::BTreeSet;
use std::sync::Arc;

use nftables::schema::Nftables;
use steward_proto::{Isolation, NetworksSpec, ResourceState};
use tracing::{debug, info, warn};

use super::firewall::{self, Ruleset, TABLE};
use super::nft_json::{create_batch, delete_batch, parse, replace_batch};
#[cfg(test)]
use super::nft_run::hint;
use super::nft_run::{nft_error, run};
use super::types::TableSeen;
use super::{nft_gen, nft_known, status, NetOutcome, NetworkError, Networks};
use crate::pass::Pass;

/// The agent's table as it is, `None` when there is none.
pub async fn list() -> Result<Option<Ruleset>, NetworkError> {
    const OP: &str = "list table inet steward";
    match run(OP, &["list", "table", firewall::FAMILY, TABLE], None).await {
        Ok(text) => {
            let n: Nftables = serde_json::from_str(&text)
                .map_err(|e| nft_error(OP, format!("unreadable JSON from nft: {e}")))?;
            Ok(Some(parse(&n)))
        }
        Err(NetworkError::Nft { reason, .. }) if reason.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

const REPLACE: &str = "replace table inet steward";

/// The batch making the table exactly `want` (deleting it when `want` is empty), as the JSON
/// text for `nft -j -f -`.
pub fn batch_text(want: &Ruleset) -> Result<String, NetworkError> {
    let batch = if want.is_empty() {
        delete_batch()
    } else {
        replace_batch(want).map_err(|e| nft_error(REPLACE, format!("bad plan: {e}")))?
    };
    serde_json::to_string(&batch).map_err(|e| nft_error(REPLACE, e.to_string()))
}

/// Makes the table exactly `want` with `text` ([`batch_text`] of `want`). `absent`: the table
/// is believed absent, so it is made with [`create_batch`], and replaced only if it turns out
/// to exist after all.
pub async fn write(want: &Ruleset, text: String, absent: bool) -> Result<(), NetworkError> {
    const OP: &str = "create table inet steward";
    if want.is_empty() {
        return match run("delete table inet steward", &["-f", "-"], Some(text)).await {
            Err(NetworkError::Nft { reason, .. })
                if reason.contains("No such file or directory") =>
            {
                Ok(()) // gone meanwhile
            }
            other => other.map(|_| ()),
        };
    }
    if absent {
        let batch = create_batch(want).map_err(|e| nft_error(OP, format!("bad plan: {e}")))?;
        let create = serde_json::to_string(&batch).map_err(|e| nft_error(OP, e.to_string()))?;
        match run(OP, &["-f", "-"], Some(create)).await {
            Err(NetworkError::Nft { reason, .. }) if reason.contains("File exists") => {
                debug!("nftables table inet steward exists after all: replacing it");
            }
            other => return other.map(|_| ()),
        }
    }
    run(REPLACE, &["-f", "-"], Some(text)).await.map(|_| ())
}

/// Sets the status of each of `bridges` (adding one when a bridge has none).
fn mark(out: &mut NetOutcome, bridges: &BTreeSet<String>, state: ResourceState, why: &str) {
    for b in bridges {
        match out.resources.iter_mut().find(|r| &r.name == b) {
            Some(r) if state == ResourceState::Drifted && r.state != ResourceState::Converged => {}
            Some(r) => {
                r.error = Some(match (&r.error, state) {
                    (Some(e), ResourceState::Failed) => format!("{e}; {why}"),
                    _ => why.to_string(),
                });
                r.state = state;
            }
            None => out.resources.push(status(b, state, Some(why.to_string()))),
        }
    }
}

/// What isolation keeps in memory between passes: the last plan, and the socket generation
/// reads go through.
#[derive(Default)]
pub(super) struct Memo {
    planned: Option<Arc<Planned>>,
    generations: Option<nft_gen::Reader>,
}

impl Memo {
    /// The ruleset generation now (the socket opened on first use, and again after an error).
    fn generation(&mut self) -> std::io::Result<nft_gen::Generation> {
        let reader = match &mut self.generations {
            Some(r) => r,
            None => self.generations.insert(nft_gen::Reader::open()?),
        };
        let now = reader.current();
        if now.is_err() {
            self.generations = None;
        }
        now
    }
}

/// The last policies planned, their table, its batch ([`batch_text`]) and that batch's digest.
struct Planned {
    policies: firewall::Policies,
    want: Ruleset,
    text: String,
    digest: String,
}

impl Networks {
    /// The isolation the spec asks for, in the agent's nftables table: unless the table is
    /// known to be the plan already (`nft_known.rs`), observe, compare with the plan, write
    /// when they differ. Failures go to the isolated bridges' statuses; drift of bridges
    /// already isolated is restored and reported on theirs.
    pub(super) async fn isolate(
        &mut self,
        n: &NetworksSpec,
        full: bool,
        keep_route: bool,
        pass: &Pass,
        out: &mut NetOutcome,
    ) {
        let t0 = std::time::Instant::now();
        let policies = self.policies(n, keep_route, out).await;
        let t_policies = t0.elapsed();
        let bridges = policies.names();
        let before = self.state.get().isolated.clone();
        if (bridges.is_empty() && before.is_empty() && !full) || pass.superseded().is_some() {
            return; // never isolated anything (or a newer pass will)
        }
        // The same policies as the last pass's: its plan, batch and digest (a running agent's
        // re-apply builds no rule and no JSON).
        let planned = match &self.nft.planned {
            Some(p) if p.policies == policies => p.clone(),
            _ => {
                let want = firewall::plan(&policies);
                let text = match batch_text(&want) {
                    Ok(text) => text,
                    Err(e) => return self.isolation_failed(&bridges, &before, e, out).await,
                };
                let digest = nft_known::digest(&text);
                let p = Arc::new(Planned {
                    policies,
                    want,
                    text,
                    digest,
                });
                self.nft.planned = Some(p.clone());
                p
            }
        };
        let (want, digest) = (&planned.want, &planned.digest);
        let t_batch = t0.elapsed();
        let now = (self.nft.generation())
            .inspect_err(|e| {
                debug!(error = %e, "no nftables ruleset generation: the table is listed every pass")
            })
            .ok();
        debug!(
            policies_us = t_policies.as_micros() as u64,
            plan_and_digest_us = (t_batch - t_policies).as_micros() as u64,
            generation_us = (t0.elapsed() - t_batch).as_micros() as u64,
            "isolation planned"
        );
        let seen = self.state.get().table.clone();
        let facts = nft_known::Facts {
            full,
            seen: seen.as_ref(),
            now: now.as_ref(),
            digest,
            want_empty: want.is_empty(),
            none_isolated: before.is_empty(),
        };
        // Bridges restored after drift, and whether the table is believed absent.
        let (restored, absent) = match nft_known::step(&facts) {
            nft_known::Step::Nothing => return self.isolated_now(bridges, seen).await,
            nft_known::Step::Write => (BTreeSet::new(), before.is_empty()),
            nft_known::Step::List => match list().await {
                Err(e) => return self.isolation_failed(&bridges, &before, e, out).await,
                Ok(have) => match firewall::drift(want, have.as_ref()) {
                    None => {
                        let seen = nft_known::looked(now.as_ref(), digest);
                        return self.isolated_now(bridges, seen).await;
                    }
                    Some(d) => (d.intersection(&before).cloned().collect(), have.is_none()),
                },
            },
        };
        out.nft_writes += 1;
        if let Err(e) = write(want, planned.text.clone(), absent).await {
            return self.isolation_failed(&bridges, &before, e, out).await;
        }
        let after = self.nft.generation().ok();
        let seen = nft_known::wrote(now.as_ref(), after.as_ref(), digest);
        if !restored.is_empty() {
            let why = "restored after drift: its isolation rules in nftables table inet \
                       steward were changed or removed";
            warn!(bridges = ?restored, "restored isolation rules after drift");
            mark(out, &restored, ResourceState::Drifted, why);
        }
        info!(isolated = ?bridges, "nftables table inet steward written");
        self.isolated_now(bridges, seen).await;
    }

    /// The spec's policies, less an isolated bridge carrying the route to the registry when
    /// that route is kept (reported failed and unusable).
    async fn policies(
        &mut self,
        n: &NetworksSpec,
        keep_route: bool,
        out: &mut NetOutcome,
    ) -> firewall::Policies {
        let mut policies = firewall::policies(n);
        let egress = (policies.bridges.values()).any(|p| p.isolation == Isolation::EgressOnly);
        if let (Some(d), true) = (&self.driver, egress) {
            policies.uplinks = d.uplinks().await.unwrap_or_else(|e| {
                warn!(error = %e, "cannot look up the routes to the internet: no egress for egress-only bridges");
                BTreeSet::new()
            });
        }
        // Looked up now, after this pass's link changes (a bridge just made may carry it).
        let route = match (&self.driver, policies.bridges.is_empty()) {
            (Some(d), false) => d.registry_route(self.registry_ip).await.ok().flatten(),
            _ => None,
        };
        let route = route.as_ref().map(|r| (r.registry, r.iface.as_str()));
        if let Some((bridge, why)) = firewall::cutting_registry(&policies, route) {
            if keep_route {
                warn!(%bridge, "{why}");
                policies.bridges.remove(&bridge);
                mark(
                    out,
                    &BTreeSet::from([bridge.clone()]),
                    ResourceState::Failed,
                    &why,
                );
                out.unusable.insert(bridge, why);
            }
        }
        policies
    }

    /// Records the bridges isolated now and what is known of the table (persisted on a change).
    async fn isolated_now(&mut self, bridges: BTreeSet<String>, table: Option<TableSeen>) {
        let state = self.state.get();
        if state.isolated != bridges || state.table != table {
            state.isolated = bridges;
            state.table = table;
            self.state.persist().await;
        }
    }

    /// Reports `e` on the bridges to isolate (or, with none left, on those that were); the
    /// bridges to isolate become unusable for workloads in this pass.
    async fn isolation_failed(
        &mut self,
        bridges: &BTreeSet<String>,
        before: &BTreeSet<String>,
        e: NetworkError,
        out: &mut NetOutcome,
    ) {
        let not_installed = e.to_string().contains("nft is not installed");
        if bridges.is_empty() && (not_installed || before.is_empty()) {
            // Nothing isolated, nothing known to be: a resync's look for a stray table of ours
            // (or no nft at all, so no table of ours either).
            debug!(error = %e, "cannot look at nftables table inet steward");
            return self.isolated_now(BTreeSet::new(), None).await;
        }
        // Whatever the table is now, the next pass looks.
        let isolated = before.clone();
        self.isolated_now(isolated, None).await;
        warn!(error = %e, "network isolation failed");
        let why = format!("isolation: {e}");
        let present: BTreeSet<String> = if bridges.is_empty() {
            (before.iter())
                .filter(|b| out.resources.iter().any(|r| &r.name == *b))
                .cloned()
                .collect()
        } else {
            // Fail closed: no workload is started on a bridge whose isolation is not in place.
            for b in bridges {
                (out.unusable.entry(b.clone()))
                    .or_insert_with(|| format!("its isolation is not in place: {e}"));
            }
            bridges.clone()
        };
        mark(out, &present, ResourceState::Failed, &why);
    }
}

#[cfg(test)]
#[path = "nft_tests.rs"]
mod tests;
