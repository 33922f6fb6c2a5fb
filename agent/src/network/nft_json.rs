//! The agent's table in nft's JSON (the `nftables` crate's schema types): the batches that
//! write it and the listing (`nft -j list table inet steward`) read back into a `Ruleset`.
//! Pure; `nft.rs` runs `nft` with them.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::Value;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression};
use nftables::schema::{self, NfCmd, NfListObject, NfObject, Nftables, SetType, SetTypeValue};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::firewall::{Chain, Dir, Hook, IfMatch, Rule, Ruleset, Set, Verdict, TABLE};

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

/// A set of names (`ifname`), or of each name paired with itself (`ifname . ifname`).
fn set_object(s: &Set) -> NfListObject<'static> {
    let name = |b: &String| Expression::String(Cow::Owned(b.clone()));
    let (set_type, elem): (_, Vec<Expression<'static>>) = if s.pairs {
        let pair = |b| Expression::Named(NamedExpression::Concat(vec![name(b), name(b)]));
        let types = Cow::Borrowed(&[SetType::Ifname, SetType::Ifname][..]);
        (
            SetTypeValue::Concatenated(types),
            s.bridges.iter().map(pair).collect(),
        )
    } else {
        (
            SetTypeValue::Single(SetType::Ifname),
            s.bridges.iter().map(name).collect(),
        )
    };
    NfListObject::Set(Box::new(schema::Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: Cow::Owned(s.name.clone()),
        handle: None,
        set_type,
        policy: None,
        flags: None,
        elem: Some(elem.into()),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

/// A set of the kernel's listing in our terms.
fn parse_set(s: &schema::Set) -> Set {
    let pairs = s.set_type
        == SetTypeValue::Concatenated(Cow::Borrowed(&[SetType::Ifname, SetType::Ifname][..]));
    let mut other = Vec::new();
    if !pairs && s.set_type != SetTypeValue::Single(SetType::Ifname) {
        other.push(format!("type {:?}", s.set_type));
    }
    let flags = s.flags.as_ref().is_some_and(|f| !f.is_empty());
    if flags || s.timeout.is_some() || s.size.is_some() || s.policy.is_some() {
        other.push("flags, timeout, size or policy".into());
    }
    let mut bridges = BTreeSet::new();
    for e in s.elem.iter().flat_map(|e| e.iter()) {
        match (pairs, e) {
            (false, Expression::String(b)) => {
                bridges.insert(b.to_string());
            }
            (true, Expression::Named(NamedExpression::Concat(v))) => match &v[..] {
                [Expression::String(a), Expression::String(b)] if a == b => {
                    bridges.insert(a.to_string());
                }
                _ => other.push(serde_json::to_string(e).unwrap_or_default()),
            },
            _ => other.push(serde_json::to_string(e).unwrap_or_default()),
        }
    }
    Set {
        name: s.name.to_string(),
        pairs,
        bridges,
        other,
    }
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
/// cannot fail, then the table afresh with its sets, chains and rules (an error: a condition of the
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

/// `b` with `rs`'s sets, chains and rules added.
fn fill(mut b: Batch<'static>, rs: &Ruleset) -> Result<Nftables<'static>, serde_json::Error> {
    for s in &rs.sets {
        b.add(set_object(s));
    }
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
            NfObject::ListObject(NfListObject::Set(s)) if ours(&s.family, &s.table) => {
                rs.sets.push(parse_set(s));
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
    rs.sets.sort_by(|a, b| a.name.cmp(&b.name));
    rs
}
