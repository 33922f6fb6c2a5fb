//! The fragment set and the arithmetic of generations: which fragments apply to a node, its
//! effective spec (computed when asked, never stored per node) and its generation, derived from
//! the node's own `base` and the revisions of the fragments that match its labels. Pure: no I/O.
//!
//! A node's generation is `base + Σ revision(f)` over the fragments `f` whose selector matches
//! its labels, plus `Σ weight(g)` over the *ghosts* `g` that match them. A ghost is what a
//! fragment leaves behind under its old selector when it is deleted or its selector changes
//! (weight: its last revision + 1), so every node it stops applying to still moves up by at least
//! one. Hence every change that can alter a node's effective spec raises its generation, and a
//! fragment write touches one record however many nodes it matches:
//! - a fragment's content changes: its revision + 1, so each matching node + 1;
//! - a fragment is added: its revision (1 or more) is added to each node it matches;
//! - a fragment is deleted or its selector changes: nodes it left lose `r` and gain `r + 1`;
//! - a node's own spec, payload overrides or labels change: its `base` is set so that its
//!   generation is the old one + 1 (labels: against the fragments that match the new labels).

use std::collections::BTreeMap;

use steward_proto::merge::{merge_specs, Source};
use steward_proto::selector::Selector;
use steward_proto::validate::{validate_spec, SpecLimits};
use steward_proto::{Fragment, Labels, NodeSpec, Problem};

/// Every fragment and ghost, with their selectors parsed once.
#[derive(Debug, Clone, Default)]
pub struct FragmentSet {
    /// Sorted by name.
    fragments: Vec<(Fragment, Option<Selector>)>,
    /// Selector -> weight; a selector that no longer parses matches nothing.
    ghosts: BTreeMap<String, (u64, Option<Selector>)>,
    /// The store revision of the newest change in the set (0: none, or not stored yet).
    pub version: u64,
}

/// Ghost weights by selector, as stored (`meta/fragment-ghosts`).
pub type Ghosts = BTreeMap<String, u64>;

impl FragmentSet {
    pub fn new(mut fragments: Vec<Fragment>, ghosts: Ghosts, version: u64) -> Self {
        fragments.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            fragments: fragments
                .into_iter()
                .map(|f| {
                    let sel = f.selector.parse().ok();
                    (f, sel)
                })
                .collect(),
            ghosts: ghosts
                .into_iter()
                .map(|(s, w)| {
                    let sel = s.parse().ok();
                    (s, (w, sel))
                })
                .collect(),
            version,
        }
    }

    pub fn fragments(&self) -> impl Iterator<Item = &Fragment> {
        self.fragments.iter().map(|(f, _)| f)
    }

    pub fn get(&self, name: &str) -> Option<&Fragment> {
        self.fragments().find(|f| f.name == name)
    }

    /// The ghosts as stored.
    pub fn ghosts(&self) -> Ghosts {
        self.ghosts
            .iter()
            .map(|(s, (w, _))| (s.clone(), *w))
            .collect()
    }

    /// The fragments that apply to a node with these labels, by name.
    pub fn matching<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a Fragment> {
        self.fragments
            .iter()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.matches(labels)))
            .map(|(f, _)| f)
    }

    /// The positions of the fragments that apply to a node with these labels (a cheap key for
    /// "the same fragments apply").
    pub fn mask(&self, labels: &Labels) -> Vec<u16> {
        (0..self.fragments.len())
            .filter(|i| {
                self.fragments[*i]
                    .1
                    .as_ref()
                    .is_some_and(|s| s.matches(labels))
            })
            .map(|i| u16::try_from(i).unwrap_or(u16::MAX))
            .collect()
    }

    /// What the fragments and ghosts add to the generation of a node with these labels.
    pub fn weight(&self, labels: &Labels) -> u64 {
        let live: u64 = self.matching(labels).map(|f| f.revision).sum();
        let ghosts: u64 = self
            .ghosts
            .values()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.matches(labels)))
            .map(|(w, _)| *w)
            .sum();
        live + ghosts
    }

    /// This set with `f` stored (added, or replacing the fragment of that name; an old
    /// selector that differs is left behind as a ghost).
    pub fn with(&self, f: Fragment) -> Self {
        let mut next = self.without(&f.name, false);
        let sel = f.selector.parse().ok();
        if let Some(old) = self.get(&f.name).filter(|o| o.selector != f.selector) {
            next.add_ghost(old);
        }
        let at = next
            .fragments
            .partition_point(|(g, _)| g.name.as_str() < f.name.as_str());
        next.fragments.insert(at, (f, sel));
        next
    }

    /// This set without the fragment `name` (its selector left behind as a ghost).
    pub fn deleted(&self, name: &str) -> Self {
        self.without(name, true)
    }

    fn without(&self, name: &str, ghost: bool) -> Self {
        let mut next = self.clone();
        if let Some(i) = next.fragments.iter().position(|(f, _)| f.name == name) {
            let (old, _) = next.fragments.remove(i);
            if ghost {
                next.add_ghost(&old);
            }
        }
        next
    }

    fn add_ghost(&mut self, old: &Fragment) {
        let entry = self
            .ghosts
            .entry(old.selector.clone())
            .or_insert_with(|| (0, old.selector.parse().ok()));
        entry.0 += old.revision + 1;
    }

    /// The effective spec of a node with this own spec, session pieces and labels, and the
    /// names of the fragments merged in; it must be valid and within `limits` (so fragments cannot add up
    /// past them).
    pub fn effective(
        &self,
        own: &NodeSpec,
        sessions: &BTreeMap<String, NodeSpec>,
        labels: &Labels,
        limits: &SpecLimits,
    ) -> Result<(NodeSpec, Vec<String>), Vec<Problem>> {
        let matching: Vec<&Fragment> = self.matching(labels).collect();
        let mut parts = vec![(Source::Node, own)];
        parts.extend(
            matching
                .iter()
                .map(|f| (Source::Fragment(f.name.as_str()), &f.spec)),
        );
        parts.extend(sessions.iter().map(|(id, s)| (Source::Session(id), s)));
        let merged = merge_specs(&parts)?;
        validate_spec(&merged, limits).map_err(|e| e.0)?;
        Ok((merged, matching.iter().map(|f| f.name.clone()).collect()))
    }
}

/// A node's generation from its `base` and the weight of what matches it (never below 0).
pub fn generation(base: i64, weight: u64) -> u64 {
    u64::try_from(base.saturating_add_unsigned(weight)).unwrap_or(0)
}

/// The `base` that gives a node generation `target` under `weight`.
pub fn base_for(target: u64, weight: u64) -> i64 {
    i64::try_from(target)
        .unwrap_or(i64::MAX)
        .saturating_sub_unsigned(weight)
}

#[cfg(test)]
#[path = "fragment_set_tests.rs"]
mod tests;
