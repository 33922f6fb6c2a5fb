//! The only code that runs `nft`: the agent's own table `inet steward` (planned by
//! `firewall.rs`) observed with `nft -j list table inet steward` and replaced in one
//! `nft -j -f -` transaction, as JSON in the `nftables` crate's schema types (the kernel's own
//! parser reads it; no rule text is built by hand). No other table is ever listed or written.
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

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression};
use nftables::schema::{self, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use steward_proto::{Isolation, NetworksSpec, ResourceState};
use tracing::{debug, info, warn};

use super::firewall::{self, Chain, Dir, Hook, IfMatch, Rule, Ruleset, Verdict, TABLE};
#[cfg(test)]
use super::nft_run::hint;
use super::nft_run::{nft_error, run};
use super::types::TableSeen;
use super::{nft_gen, nft_known, status, NetOutcome, NetworkError, Networks};
use crate::pass::Pass;

fn table() -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    })
}

fn hook(h: Hook) -> NfHook {
    match h {
        Hook::Forward => NfHook::Forward,
        Hook::Input => NfHook::Input,
        Hook::Output => NfHook::Output,
        Hook::Postrouting => NfHook::Postrouting,
    }
}

fn chain_type(h: Hook) -> NfChainType {
    match h {
        Hook::Postrouting => NfChainType::NAT,
        _ => NfChainType::Filter,
    }
}

fn if_match(m: &IfMatch) -> Statement<'static> {
    let key = match m.dir {
        Dir::In => MetaKey::Iifname,
        Dir::Out => MetaKey::Oifname,
    };
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta { key })),
        right: Expression::String(Cow::Owned(m.name.clone())),
        op: if m.negate {
            Operator::NEQ
        } else {
            Operator::EQ
        },
    })
}

fn chain_object(c: &Chain) -> NfListObject<'static> {
    NfListObject::Chain(schema::Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: c.hook.name().into(),
        _type: Some(chain_type(c.hook)),
        hook: Some(hook(c.hook)),
        prio: Some(c.priority),
        policy: Some(if c.accept {
            NfChainPolicy::Accept
        } else {
            NfChainPolicy::Drop
        }),
        ..Default::default()
    })
}

fn rule_object(hook: Hook, r: &Rule) -> Result<NfListObject<'static>, serde_json::Error> {
    let mut expr: Vec<Statement<'static>> = r.matches.iter().map(if_match).collect();
    // The planner's conditions are nft JSON statements.
    for c in &r.conds {
        expr.push(serde_json::from_value(c.clone())?);
    }
    expr.push(match r.verdict {
        Verdict::Accept => Statement::Accept(None),
        Verdict::Drop => Statement::Drop(None),
        Verdict::Masquerade => Statement::Masquerade(None),
    });
    Ok(NfListObject::Rule(schema::Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: hook.name().into(),
        expr: expr.into(),
        comment: r.comment.clone().map(Cow::Owned),
        ..Default::default()
    }))
}

/// One transaction making the table exactly `rs`: `add table` first so that `delete table`
/// cannot fail, then the table afresh with its chains and rules (an error: a condition of the
/// plan that is not an nft statement).
pub fn replace_batch(rs: &Ruleset) -> Result<Nftables<'static>, serde_json::Error> {
    let mut b = Batch::new();
    b.add(table());
    b.delete(table());
    b.add(table());
    fill(b, rs)
}

/// One transaction making the table `rs` where there is none: `create table` (which fails,
/// changing nothing, when the table exists), its chains and rules. The kernel's cost of
/// deleting a table, even one made in the same transaction, is spared: with 300 rules this
/// takes half the time of [`replace_batch`].
pub fn create_batch(rs: &Ruleset) -> Result<Nftables<'static>, serde_json::Error> {
    let mut b = Batch::new();
    b.add_cmd(NfCmd::Create(table()));
    fill(b, rs)
}

/// `b` with `rs`'s chains and rules added.
fn fill(mut b: Batch<'static>, rs: &Ruleset) -> Result<Nftables<'static>, serde_json::Error> {
    for c in &rs.chains {
        b.add(chain_object(c));
    }
    for c in &rs.chains {
        for r in &c.rules {
            b.add(rule_object(c.hook, r)?);
        }
    }
    Ok(b.to_nftables())
}

/// `delete table inet steward`.
pub fn delete_batch() -> Nftables<'static> {
    let mut b = Batch::new();
    b.delete(table());
    b.to_nftables()
}

/// The statement as JSON, for a rule's `extra`.
fn json(s: &Statement) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// `v` with the elements of each anonymous set of names sorted: nft lists them in an order of
/// its own, the planner writes them sorted.
fn sorted_sets(mut v: Value) -> Value {
    if let Some(Value::Array(items)) = v.pointer_mut("/match/right/set") {
        if items.iter().all(Value::is_string) {
            items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
    v
}

/// A rule of the kernel's listing in our terms: its interface matches, its other matches (as
/// JSON), its verdict, and anything else as `extra`.
fn parse_rule(r: &schema::Rule) -> Rule {
    let mut matches = Vec::new();
    let mut conds = Vec::new();
    let mut extra = Vec::new();
    let mut verdict = None;
    for s in r.expr.iter() {
        match s {
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta { key })),
                right: Expression::String(name),
                op: op @ (Operator::EQ | Operator::NEQ),
            }) if matches!(key, MetaKey::Iifname | MetaKey::Oifname) && verdict.is_none() => {
                matches.push(IfMatch {
                    dir: if *key == MetaKey::Iifname {
                        Dir::In
                    } else {
                        Dir::Out
                    },
                    negate: *op == Operator::NEQ,
                    name: name.to_string(),
                });
            }
            Statement::Match(_) if verdict.is_none() => match serde_json::to_value(s) {
                Ok(v) => conds.push(sorted_sets(v)),
                Err(_) => extra.push(json(s)),
            },
            Statement::Accept(_) if verdict.is_none() => verdict = Some(Verdict::Accept),
            Statement::Drop(_) if verdict.is_none() => verdict = Some(Verdict::Drop),
            Statement::Masquerade(None) if verdict.is_none() => verdict = Some(Verdict::Masquerade),
            other => extra.push(json(other)),
        }
    }
    if verdict.is_none() {
        extra.push("no verdict".into());
    }
    Rule {
        matches,
        conds,
        verdict: verdict.unwrap_or(Verdict::Accept),
        extra,
        comment: r.comment.as_ref().map(|c| c.to_string()),
    }
}

/// The agent's table as listed by `nft -j list table inet steward`, in our terms (handles
/// left out; objects of any other table ignored).
pub fn parse(n: &Nftables) -> Ruleset {
    let ours = |family: &NfFamily, table: &str| *family == NfFamily::INet && table == TABLE;
    let mut rs = Ruleset::default();
    let mut foreign = Vec::new();
    for o in n.objects.iter() {
        match o {
            NfObject::ListObject(NfListObject::Chain(c)) if ours(&c.family, &c.table) => {
                let hook = match (c.name.as_ref(), c.hook) {
                    ("forward", Some(NfHook::Forward)) => Hook::Forward,
                    ("input", Some(NfHook::Input)) => Hook::Input,
                    ("output", Some(NfHook::Output)) => Hook::Output,
                    ("postrouting", Some(NfHook::Postrouting)) => Hook::Postrouting,
                    // A chain no plan makes: the table differs from any plan.
                    _ => {
                        foreign.push(c.name.to_string());
                        continue;
                    }
                };
                rs.chains.push(Chain {
                    hook,
                    priority: c.prio.unwrap_or_default(),
                    accept: c.policy == Some(NfChainPolicy::Accept)
                        && c._type == Some(chain_type(hook)),
                    rules: Vec::new(),
                });
            }
            NfObject::ListObject(NfListObject::Rule(r)) if ours(&r.family, &r.table) => {
                let chain = rs.chains.iter_mut().find(|c| c.hook.name() == r.chain);
                match chain {
                    Some(c) => c.rules.push(parse_rule(r)),
                    None => foreign.push(r.chain.to_string()),
                }
            }
            _ => {}
        }
    }
    rs.other = foreign;
    rs
}

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

/// The last policies planned, their table, its batch ([`batch_text`]) and that batch's digest.
pub(super) struct Planned {
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
        let planned = match &self.planned {
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
                self.planned = Some(p.clone());
                p
            }
        };
        let (want, digest) = (&planned.want, &planned.digest);
        let t_batch = t0.elapsed();
        let now = nft_gen::current()
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
        let after = nft_gen::current().ok();
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
