use super::*;
use chrono::Utc;

fn frag(name: &str, selector: &str, revision: u64) -> Fragment {
    Fragment {
        name: name.into(),
        selector: selector.into(),
        spec: NodeSpec::default(),
        revision,
        updated_at: Utc::now(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every change a fragment can go through, and for nodes inside and outside its old and new
/// selectors: whose generation rises (by how much) and whose stays.
#[test]
fn every_fragment_change_raises_exactly_the_nodes_it_can_change() {
    let web = labels(&[("role", "web")]);
    let db = labels(&[("role", "db")]);
    let other = labels(&[("role", "cache")]);
    let start = FragmentSet::new(vec![frag("f", "role=web", 3)], Ghosts::new(), 0);
    type Step = fn(&FragmentSet) -> FragmentSet;
    // (what, change, rise for web, rise for db, rise for cache)
    let table: Vec<(&str, Step, u64, u64, u64)> = vec![
        (
            "content changes",
            |s| s.with(frag("f", "role=web", 4)),
            1,
            0,
            0,
        ),
        (
            "a new fragment for db",
            |s| s.with(frag("g", "role=db", 1)),
            0,
            1,
            0,
        ),
        (
            "selector moves web -> db",
            |s| s.with(frag("f", "role=db", 4)),
            1,
            4,
            0,
        ),
        (
            "selector widens to all",
            |s| s.with(frag("f", "", 4)),
            5,
            4,
            4,
        ),
        ("deleted", |s| s.deleted("f"), 1, 0, 0),
        (
            "deleted, then made again",
            |s| s.deleted("f").with(frag("f", "role=web", 1)),
            2,
            0,
            0,
        ),
        ("an unknown name deleted", |s| s.deleted("nope"), 0, 0, 0),
    ];
    for (what, change, w, d, o) in table {
        let next = change(&start);
        let rise = |l: &Labels| next.weight(l) as i64 - start.weight(l) as i64;
        assert_eq!(
            (rise(&web), rise(&db), rise(&other)),
            (w as i64, d as i64, o as i64),
            "{what}"
        );
    }
}

#[test]
fn a_base_gives_the_generation_asked_for_and_generations_never_go_below_zero() {
    for (target, weight) in [(0, 0), (1, 0), (5, 3), (2, 9), (u64::MAX / 4, 7)] {
        assert_eq!(generation(base_for(target, weight), weight), target);
    }
    assert_eq!(generation(-5, 2), 0);
}

#[test]
fn ghosts_keep_their_weight_and_round_trip_as_stored() {
    let s = FragmentSet::new(vec![frag("f", "role=web", 2)], Ghosts::new(), 0)
        .deleted("f")
        .with(frag("g", "role=web", 1))
        .deleted("g");
    assert_eq!(s.ghosts(), Ghosts::from([("role=web".to_string(), 3 + 2)]));
    let again = FragmentSet::new(Vec::new(), s.ghosts(), 0);
    let web = labels(&[("role", "web")]);
    assert_eq!(again.weight(&web), s.weight(&web));
    assert_eq!(again.weight(&labels(&[])), 0);
}

#[test]
fn the_effective_spec_merges_the_matching_fragments_by_name() {
    let s = FragmentSet::new(
        vec![
            frag("b", "role=web", 1),
            frag("a", "", 1),
            frag("c", "role=db", 1),
        ],
        Ghosts::new(),
        0,
    );
    let (_, names) = s
        .effective(
            &NodeSpec::default(),
            &Default::default(),
            &labels(&[("role", "web")]),
            &SpecLimits::default(),
        )
        .unwrap();
    assert_eq!(names, ["a", "b"]);
}
