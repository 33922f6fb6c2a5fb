//! Session volumes (pure, table-tested): the Docker volumes the live sessions' leases name,
//! against the volumes the engine has, as a [`VolumePlan`]: the volumes to create (labelled
//! for this node and the session), the problems (a name held by a volume that is not this
//! session's: never taken over) and the removals (volumes this node created for a session that
//! is no longer live, unless kept; one still used by a container waits for a later pass).

use std::collections::{BTreeMap, BTreeSet};

use steward_proto::SessionLease;

use super::types::{LABEL_MANAGED, LABEL_NODE, LABEL_SESSION};

/// One Docker volume as the driver observed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedVolume {
    pub name: String,
    /// Carries `io.steward.managed=true`.
    pub managed: bool,
    /// `io.steward.node`: the node that created it.
    pub node: Option<String>,
    /// `io.steward.session`: the session it was created for.
    pub session: Option<String>,
    /// Carries `io.steward.keep=true`: kept when its session ends.
    pub keep: bool,
    /// A container (running or not) uses it, so the engine would refuse to remove it.
    pub in_use: bool,
}

impl ObservedVolume {
    /// Created by this node's agent (managed label and this node's id).
    fn ours(&self, node_id: &str) -> bool {
        self.managed && self.node.as_deref() == Some(node_id)
    }
}

/// A session volume to create, or to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionVolume {
    pub name: String,
    pub session: String,
    /// Labelled `io.steward.keep=true` (creations only).
    pub keep: bool,
}

/// What to do about session volumes in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumePlan {
    /// Volumes of live sessions that do not exist yet, in lease order.
    pub create: Vec<SessionVolume>,
    /// Why a live session's volumes cannot be used, by session id (its containers are not
    /// created and report it).
    pub problems: BTreeMap<String, Vec<String>>,
    /// Volumes of this node's sessions that ended, no longer used: removed after the
    /// containers' pass.
    pub remove: Vec<SessionVolume>,
    /// Volumes of ended sessions a container still uses: left for a later pass.
    pub in_use: Vec<SessionVolume>,
}

impl VolumePlan {
    /// Some volume of an ended session waits to be removed, now or once no container uses it.
    pub fn has_removals(&self) -> bool {
        !self.remove.is_empty() || !self.in_use.is_empty()
    }
}

/// Plans the session volumes of `leases` (the live ones: the pass's spec, expired sessions
/// already dropped) against `observed`, for the agent whose identity is `node_id`. Only volumes
/// this node created for a session are ever removed, and only once that session is not live.
pub fn plan_volumes(
    leases: &[SessionLease],
    observed: &[ObservedVolume],
    node_id: &str,
) -> VolumePlan {
    let by_name: BTreeMap<&str, &ObservedVolume> =
        observed.iter().map(|o| (o.name.as_str(), o)).collect();
    let mut plan = VolumePlan::default();
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    for lease in leases {
        for name in &lease.volumes {
            let problem = match claimed.insert(name, &lease.id) {
                Some(first) if first != lease.id => Some(format!(
                    "volume {name} is also a volume of session {first}; a volume belongs to one \
                     session"
                )),
                Some(_) => None, // named twice by the same lease
                None => match by_name.get(name.as_str()) {
                    None => {
                        plan.create.push(SessionVolume {
                            name: name.clone(),
                            session: lease.id.clone(),
                            keep: lease.keep_volumes,
                        });
                        None
                    }
                    Some(o) => not_this_sessions(o, &lease.id, node_id),
                },
            };
            if let Some(why) = problem {
                plan.problems.entry(lease.id.clone()).or_default().push(why);
            }
        }
    }
    let live: BTreeSet<&str> = leases.iter().map(|l| l.id.as_str()).collect();
    for o in observed.iter().filter(|o| o.ours(node_id) && !o.keep) {
        let Some(session) = o.session.as_deref().filter(|s| !live.contains(s)) else {
            continue;
        };
        let v = SessionVolume {
            name: o.name.clone(),
            session: session.to_string(),
            keep: false,
        };
        match o.in_use {
            true => plan.in_use.push(v),
            false => plan.remove.push(v),
        }
    }
    plan
}

/// Why the existing volume `o` is not session `session`'s on this node, if it is not.
fn not_this_sessions(o: &ObservedVolume, session: &str, node_id: &str) -> Option<String> {
    let name = &o.name;
    let why = match (&o.node, &o.session) {
        _ if !o.managed => format!(
            "volume {name} exists but Steward did not create it (no {LABEL_MANAGED} label); it \
             is not taken over: remove it or choose another volume name"
        ),
        (Some(node), _) if node != node_id => {
            format!("volume {name} belongs to another Steward node ({node}); left alone")
        }
        (None, _) => format!("volume {name} has no {LABEL_NODE} label; left alone"),
        (_, Some(other)) if other == session => return None,
        (_, Some(other)) => format!("volume {name} belongs to session {other}; left alone"),
        (_, None) => format!(
            "volume {name} was not created for a session (no {LABEL_SESSION} label); left alone"
        ),
    };
    Some(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "n1";

    fn lease(id: &str, volumes: &[&str], keep: bool) -> SessionLease {
        SessionLease {
            id: id.into(),
            expires_at: "2030-01-01T00:00:00Z".parse().unwrap(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            keep_volumes: keep,
        }
    }

    /// A volume this node's agent created for `session`.
    fn ours(name: &str, session: &str) -> ObservedVolume {
        ObservedVolume {
            name: name.into(),
            managed: true,
            node: Some(NODE.into()),
            session: Some(session.into()),
            ..Default::default()
        }
    }

    fn foreign(name: &str) -> ObservedVolume {
        ObservedVolume {
            name: name.into(),
            ..Default::default()
        }
    }

    fn vol(name: &str, session: &str, keep: bool) -> SessionVolume {
        SessionVolume {
            name: name.into(),
            session: session.into(),
            keep,
        }
    }

    struct Row {
        what: &'static str,
        leases: Vec<SessionLease>,
        observed: Vec<ObservedVolume>,
        create: Vec<SessionVolume>,
        /// (session, a word its problem must contain)
        problems: Vec<(&'static str, &'static str)>,
        remove: Vec<&'static str>,
        in_use: Vec<&'static str>,
    }

    fn row(what: &'static str) -> Row {
        Row {
            what,
            leases: vec![],
            observed: vec![],
            create: vec![],
            problems: vec![],
            remove: vec![],
            in_use: vec![],
        }
    }

    fn rows() -> Vec<Row> {
        let kept = ObservedVolume {
            keep: true,
            ..ours("old", "gone")
        };
        let used = ObservedVolume {
            in_use: true,
            ..ours("old", "gone")
        };
        let other_node = ObservedVolume {
            node: Some("n2".into()),
            ..ours("d", "s1")
        };
        let no_session = ObservedVolume {
            session: None,
            ..ours("d", "s1")
        };
        vec![
            Row {
                leases: vec![lease("s1", &["d", "e"], false), lease("s2", &["f"], true)],
                create: vec![
                    vol("d", "s1", false),
                    vol("e", "s1", false),
                    vol("f", "s2", true),
                ],
                ..row("missing volumes are created, labelled keep when the lease says so")
            },
            Row {
                leases: vec![lease("s1", &["d"], false)],
                observed: vec![ours("d", "s1")],
                ..row("a volume already the session's: nothing to do")
            },
            Row {
                leases: vec![lease("s1", &["d", "e"], false)],
                observed: vec![foreign("d")],
                create: vec![vol("e", "s1", false)],
                problems: vec![("s1", "not taken over")],
                ..row("an unlabelled volume of that name is not taken over (nor removed)")
            },
            Row {
                leases: vec![lease("s1", &["d"], false)],
                observed: vec![other_node],
                problems: vec![("s1", "another Steward node (n2)")],
                ..row("a volume of another node is not taken over")
            },
            Row {
                leases: vec![lease("s1", &["d"], false)],
                observed: vec![no_session],
                problems: vec![("s1", "not created for a session")],
                ..row("a managed volume of no session is not taken over")
            },
            Row {
                leases: vec![lease("s1", &["d"], false)],
                observed: vec![ours("d", "s0")],
                problems: vec![("s1", "belongs to session s0")],
                remove: vec!["d"],
                ..row("a volume of an ended session: not this one's; removed, created next pass")
            },
            Row {
                leases: vec![lease("s1", &["d"], false), lease("s2", &["d"], false)],
                create: vec![vol("d", "s1", false)],
                problems: vec![("s2", "also a volume of session s1")],
                ..row("two sessions naming one volume: the first has it")
            },
            Row {
                leases: vec![lease("s1", &["d"], false)],
                observed: vec![ours("d", "s1"), ours("old", "gone"), foreign("x")],
                remove: vec!["old"],
                ..row("an ended session's volume is removed; foreign ones are never")
            },
            Row {
                observed: vec![kept],
                ..row("an ended session's volume labelled keep stays")
            },
            Row {
                observed: vec![used],
                in_use: vec!["old"],
                ..row("an ended session's volume still in use waits for a later pass")
            },
            Row {
                observed: vec![ObservedVolume {
                    node: Some("n2".into()),
                    ..ours("old", "gone")
                }],
                ..row("another node's session volume is never removed")
            },
        ]
    }

    #[test]
    fn the_volume_table() {
        let mut failures = Vec::new();
        for r in rows() {
            let p = plan_volumes(&r.leases, &r.observed, NODE);
            let names = |v: &[SessionVolume]| v.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
            let problems_ok = p.problems.len() == r.problems.len()
                && r.problems.iter().all(|(s, word)| {
                    p.problems
                        .get(*s)
                        .is_some_and(|w| w.iter().any(|w| w.contains(word)))
                });
            if p.create != r.create
                || !problems_ok
                || names(&p.remove) != r.remove
                || names(&p.in_use) != r.in_use
            {
                failures.push(format!("{}: got {p:#?}", r.what));
            }
            assert_eq!(
                p.has_removals(),
                !r.remove.is_empty() || !r.in_use.is_empty()
            );
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }
}
