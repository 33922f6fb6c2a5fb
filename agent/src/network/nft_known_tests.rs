//! The pass's `nft` decision: list or not, write or not, and what it remembers after.
#![allow(clippy::unwrap_used)]

use super::*;

fn generation(id: u32, at: &str) -> Generation {
    Generation {
        id,
        at: at.to_string(),
    }
}

fn seen(id: u32, at: &str, digest: &str) -> TableSeen {
    TableSeen {
        generation: id,
        at: at.to_string(),
        digest: digest.to_string(),
    }
}

#[test]
fn a_pass_lists_writes_or_does_nothing() {
    let known = seen(7, "boot/ns", "plan");
    // (case, full, seen, now, digest of the plan, want empty, none isolated, step)
    type Case<'a> = (
        &'a str,
        bool,
        Option<&'a TableSeen>,
        Option<Generation>,
        &'a str,
        bool,
        bool,
        Step,
    );
    let g = generation;
    let cases: Vec<Case> = vec![
        (
            "same plan, same generation: no nft at all",
            false,
            Some(&known),
            Some(g(7, "boot/ns")),
            "plan",
            false,
            false,
            Step::Nothing,
        ),
        (
            "same generation, the spec changed: write, no look",
            false,
            Some(&known),
            Some(g(7, "boot/ns")),
            "other",
            false,
            false,
            Step::Write,
        ),
        (
            "same generation, nothing wanted any more: delete, no look",
            false,
            Some(&known),
            Some(g(7, "boot/ns")),
            "none",
            true,
            false,
            Step::Write,
        ),
        (
            "the generation moved (a hand edit, anyone's commit): look",
            false,
            Some(&known),
            Some(g(8, "boot/ns")),
            "plan",
            false,
            false,
            Step::List,
        ),
        (
            "same id after a reboot or in another namespace: look",
            false,
            Some(&known),
            Some(g(7, "boot2/ns")),
            "plan",
            false,
            false,
            Step::List,
        ),
        (
            "the generation cannot be read: look, as every pass",
            false,
            Some(&known),
            None,
            "plan",
            false,
            false,
            Step::List,
        ),
        (
            "full resync: look whatever is known",
            true,
            Some(&known),
            Some(g(7, "boot/ns")),
            "plan",
            false,
            false,
            Step::List,
        ),
        (
            "nothing known, nothing isolated, a table wanted: create, no look",
            false,
            None,
            Some(g(3, "boot/ns")),
            "plan",
            false,
            true,
            Step::Write,
        ),
        (
            "create without a generation either: the batch replaces whatever is there",
            false,
            None,
            None,
            "plan",
            false,
            true,
            Step::Write,
        ),
        (
            "nothing known, bridges isolated: look (drift is reported)",
            false,
            None,
            Some(g(3, "boot/ns")),
            "plan",
            false,
            false,
            Step::List,
        ),
        (
            "nothing known, nothing wanted (a stray table of ours?): look",
            false,
            None,
            Some(g(3, "boot/ns")),
            "none",
            true,
            false,
            Step::List,
        ),
        (
            "full resync, nothing isolated, a table wanted: look",
            true,
            None,
            Some(g(3, "boot/ns")),
            "plan",
            false,
            true,
            Step::List,
        ),
    ];
    for (name, full, seen, now, digest, want_empty, none_isolated, want) in cases {
        let facts = Facts {
            full,
            seen,
            now: now.as_ref(),
            digest,
            want_empty,
            none_isolated,
        };
        assert_eq!(step(&facts), want, "{name}");
    }
}

#[test]
fn what_is_remembered_after_a_look_or_a_write() {
    let g = generation;
    let before = g(7, "boot/ns");
    assert_eq!(looked(Some(&before), "d"), Some(seen(7, "boot/ns", "d")));
    assert_eq!(looked(None, "d"), None);
    let cases = [
        ("our commit was the only one", Some(g(8, "boot/ns")), true),
        ("another commit came between", Some(g(9, "boot/ns")), false),
        ("read elsewhere", Some(g(8, "boot2/ns")), false),
        ("the generation cannot be read", None, false),
    ];
    for (name, after, known) in cases {
        let want = known.then(|| seen(8, "boot/ns", "d"));
        assert_eq!(wrote(Some(&before), after.as_ref(), "d"), want, "{name}");
    }
    assert_eq!(wrote(None, Some(&g(8, "boot/ns")), "d"), None);
    let wrap = g(u32::MAX, "b");
    assert!(wrote(Some(&wrap), Some(&g(1, "b")), "d").is_some());
}

#[test]
fn the_digest_is_of_the_batch_text() {
    assert_eq!(digest("x"), digest("x"));
    assert_ne!(digest("x"), digest("y"));
    assert_eq!(digest("").len(), 64);
}
