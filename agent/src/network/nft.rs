//! The only code that runs `nft`: the agent's own table `inet steward` (planned by
//! `firewall.rs`) observed with `nft -j list table inet steward` and replaced in one
//! `nft -j -f -` transaction, as JSON in the `nftables` crate's schema types (the kernel's own
//! parser reads it; no rule text is built by hand). No other table is ever listed or written.
//!
//! A pass lists the table when a bridge is isolated, or was (`NetState::isolated`), or on a
//! full resync; it writes only when the table differs from the plan: a replacement (`add
//! table`, `delete table`, `add table`, chains, rules: atomic, whatever was there) or, with
//! nothing isolated any more, `delete table`. A difference in the rules of a bridge the agent
//! had already isolated is drift: restored, logged, and reported on the bridge's status. When
//! `nft` fails, each bridge to isolate is reported failed with the reason and is unusable for
//! workloads in that pass (fail closed: nothing is started on a bridge left open by mistake).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression};
use nftables::schema::{self, NfListObject, NfObject, Nftables};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use steward_proto::{NetworksSpec, ResourceState};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::firewall::{self, Chain, Dir, Hook, IfMatch, Rule, Ruleset, Verdict, TABLE};
use super::{status, NetOutcome, NetworkError, Networks};
use crate::pass::Pass;

/// How long one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

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
                Ok(v) => conds.push(v),
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

/// A hint for what `nft` answered (empty when we have none).
fn hint(reason: &str) -> String {
    let r = reason.to_ascii_lowercase();
    let text = if r.contains("operation not permitted") || r.contains("permission denied") {
        "the agent needs CAP_NET_ADMIN (run it as root)"
    } else if r.contains("protocol not supported") || r.contains("not supported") {
        "the kernel has no nf_tables support (modprobe nf_tables)"
    } else {
        return String::new();
    };
    format!(" ({text})")
}

fn nft_error(op: &str, reason: String) -> NetworkError {
    NetworkError::Nft {
        op: op.to_string(),
        hint: hint(&reason),
        reason,
    }
}

/// Runs `nft -j <args>` with `input` on its stdin; its stdout, or an error with its stderr.
async fn run(op: &str, args: &[&str], input: Option<String>) -> Result<String, NetworkError> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.arg("-j")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "nft is not installed (or not on PATH); install the nftables package".to_string()
        } else {
            format!("cannot run nft: {e}")
        };
        nft_error(op, why)
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| nft_error(op, format!("writing to nft: {e}")))?;
    }
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| nft_error(op, format!("nft did not finish in {NFT_TIMEOUT:?}")))?
        .map_err(|e| nft_error(op, format!("waiting for nft: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or("").trim();
    Err(nft_error(op, format!("{} ({})", first, out.status)))
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

/// Sends `batch` to `nft -j -f -` (one transaction: all of it or nothing).
async fn send(op: &str, batch: &Nftables<'_>) -> Result<(), NetworkError> {
    let text = serde_json::to_string(batch).map_err(|e| nft_error(op, e.to_string()))?;
    run(op, &["-f", "-"], Some(text)).await.map(|_| ())
}

/// Makes the table exactly `want`, or deletes it when `want` is empty.
pub async fn write(want: &Ruleset) -> Result<(), NetworkError> {
    if want.is_empty() {
        match send("delete table inet steward", &delete_batch()).await {
            Err(NetworkError::Nft { reason, .. })
                if reason.contains("No such file or directory") =>
            {
                Ok(()) // gone meanwhile
            }
            other => other,
        }
    } else {
        const OP: &str = "replace table inet steward";
        let batch = replace_batch(want).map_err(|e| nft_error(OP, format!("bad plan: {e}")))?;
        send(OP, &batch).await
    }
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

impl Networks {
    /// The isolation the spec asks for, in the agent's nftables table: observe, compare with
    /// the plan, write when they differ. Failures go to the isolated bridges' statuses; drift
    /// of bridges already isolated is restored and reported on theirs.
    pub(super) async fn isolate(
        &mut self,
        n: &NetworksSpec,
        full: bool,
        keep_route: bool,
        pass: &Pass,
        out: &mut NetOutcome,
    ) {
        let mut policies = firewall::policies(n);
        if let (Some(d), false) = (&self.driver, policies.bridges.is_empty()) {
            policies.uplinks = d.uplinks().await.unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the default routes: no egress for egress-only bridges");
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
        let bridges = policies.names();
        let before = self.state.get().isolated.clone();
        if (bridges.is_empty() && before.is_empty() && !full) || pass.superseded().is_some() {
            return; // never isolated anything (or a newer pass will)
        }
        let want = firewall::plan(&policies);
        let have = match list().await {
            Ok(have) => have,
            Err(e) => return self.isolation_failed(&bridges, &before, e, out).await,
        };
        let Some(drifted) = firewall::drift(&want, have.as_ref()) else {
            return self.isolated_now(bridges).await;
        };
        out.nft_writes += 1;
        if let Err(e) = write(&want).await {
            return self.isolation_failed(&bridges, &before, e, out).await;
        }
        let restored: BTreeSet<String> = drifted.intersection(&before).cloned().collect();
        if !restored.is_empty() {
            let why = "restored after drift: its isolation rules in nftables table inet \
                       steward were changed or removed";
            warn!(bridges = ?restored, "restored isolation rules after drift");
            mark(out, &restored, ResourceState::Drifted, why);
        }
        info!(isolated = ?bridges, "nftables table inet steward written");
        self.isolated_now(bridges).await;
    }

    async fn isolated_now(&mut self, bridges: BTreeSet<String>) {
        if self.state.get().isolated != bridges {
            self.state.get().isolated = bridges;
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
            tracing::debug!(error = %e, "cannot look at nftables table inet steward");
            return self.isolated_now(BTreeSet::new()).await;
        }
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
