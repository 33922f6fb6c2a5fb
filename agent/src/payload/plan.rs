//! Pure payload planning: from what the spec wants, what is on disk and what the agent
//! recorded having deployed, decide per payload what to do ([`decide`]), and which recorded
//! payloads the spec no longer wants ([`removals`]). Table-tested; the driver does the I/O.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::reconcile::policy::DriftPolicy;

/// What is at a payload's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDisk {
    Missing,
    /// A regular file with this sha256.
    File(String),
    /// Something that is not a regular file (a symbolic link, a directory, ...).
    Other(&'static str),
}

impl OnDisk {
    /// The attested hash: the file's sha256, `None` when there is no regular file.
    pub fn actual(&self) -> Option<String> {
        match self {
            OnDisk::File(h) => Some(h.clone()),
            OnDisk::Missing => None,
            OnDisk::Other(kind) => Some(format!("not-a-file:{kind}")),
        }
    }
}

/// The decision for one payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The expected content is there. `record` is true when the agent must (re)write its
    /// record (a file with the expected hash that was not recorded, or recorded at another hash).
    Converged { record: bool },
    /// Write the expected content (not deployed yet, or a new version).
    Deploy(String),
    /// A deployed payload drifted and policy says restore it.
    Restore(String),
    /// A deployed payload drifted and policy says only report it.
    ReportDrift(String),
    /// Something the agent did not deploy is at the path: left alone.
    Conflict(String),
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// Decides for one payload. `recorded` is the sha256 the agent last deployed at this path
/// (`None`: the agent never deployed anything there).
pub fn decide(
    expected: &str,
    on_disk: &OnDisk,
    recorded: Option<&str>,
    drift: DriftPolicy,
) -> Decision {
    let drifted = |why: String| match drift {
        DriftPolicy::Restore => Decision::Restore(why),
        DriftPolicy::Report => Decision::ReportDrift(why),
    };
    match (on_disk, recorded) {
        (OnDisk::File(a), r) if a == expected => Decision::Converged {
            record: r != Some(expected),
        },
        (OnDisk::Missing, None) => Decision::Deploy("not deployed yet".into()),
        (OnDisk::Missing, Some(r)) if r == expected => {
            drifted("the deployed file is missing".into())
        }
        (OnDisk::Missing, Some(_)) => Decision::Deploy("new version".into()),
        (OnDisk::File(a), None) => Decision::Conflict(format!(
            "a file not deployed by Steward is at this path (sha256 {}…); it is left alone: \
             remove it, or choose another path",
            short(a)
        )),
        (OnDisk::Other(kind), None) => Decision::Conflict(format!(
            "a {kind} not deployed by Steward is at this path; it is left alone: remove it, or \
             choose another path"
        )),
        (OnDisk::File(a), Some(r)) if r == expected => drifted(format!(
            "the deployed file was changed on disk (sha256 {}…, expected {}…)",
            short(a),
            short(expected)
        )),
        (OnDisk::Other(kind), Some(r)) if r == expected => {
            drifted(format!("the deployed file was replaced by a {kind}"))
        }
        (OnDisk::File(a), Some(r)) if a == r => Decision::Deploy("new version".into()),
        (_, Some(_)) => {
            Decision::Deploy("new version (the old one had been changed on disk)".into())
        }
    }
}

/// Recorded paths that no payload of the spec uses any more.
pub fn removals<'a, T>(recorded: &'a BTreeMap<String, T>, wanted: &BTreeSet<&str>) -> Vec<&'a str> {
    recorded
        .keys()
        .map(String::as_str)
        .filter(|p| !wanted.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    const RESTORE: DriftPolicy = DriftPolicy::Restore;
    const REPORT: DriftPolicy = DriftPolicy::Report;

    const E: &str = "eeeeeeeeeeeeeeee";
    const O: &str = "oooooooooooooooo";
    const X: &str = "xxxxxxxxxxxxxxxx";

    #[test]
    fn decisions() {
        let file = |h: &str| OnDisk::File(h.into());
        #[rustfmt::skip]
        let cases: Vec<(&str, OnDisk, Option<&str>, DriftPolicy, &str)> = vec![
            ("fresh node",                 OnDisk::Missing, None,    RESTORE, "deploy"),
            ("converged",                  file(E),         Some(E), RESTORE, "ok"),
            ("adopt identical file",       file(E),         None,    RESTORE, "ok+record"),
            ("after an upgrade crash",     file(E),         Some(O), RESTORE, "ok+record"),
            ("new version",                file(O),         Some(O), RESTORE, "deploy"),
            ("new version, old deleted",   OnDisk::Missing, Some(O), REPORT,  "deploy"),
            ("new version, old edited",    file(X),         Some(O), REPORT,  "deploy"),
            ("foreign file",               file(X),         None,    RESTORE, "conflict"),
            ("foreign symlink",            OnDisk::Other("symbolic link"), None, RESTORE, "conflict"),
            ("edited, restore",            file(X),         Some(E), RESTORE, "restore"),
            ("edited, report",             file(X),         Some(E), REPORT,  "report"),
            ("deleted, restore",           OnDisk::Missing, Some(E), RESTORE, "restore"),
            ("deleted, report",            OnDisk::Missing, Some(E), REPORT,  "report"),
            ("replaced by link, restore",  OnDisk::Other("symbolic link"), Some(E), RESTORE, "restore"),
        ];
        for (what, disk, rec, pol, want) in cases {
            let got = decide(E, &disk, rec, pol);
            let kind = match &got {
                Converged { record: false } => "ok",
                Converged { record: true } => "ok+record",
                Deploy(_) => "deploy",
                Restore(_) => "restore",
                ReportDrift(_) => "report",
                Conflict(_) => "conflict",
            };
            assert_eq!(kind, want, "{what}: {got:?}");
        }
    }

    #[test]
    fn drift_reasons_name_both_hashes() {
        let d = decide(E, &OnDisk::File(X.into()), Some(E), REPORT);
        let ReportDrift(why) = d else { panic!("{d:?}") };
        assert!(
            why.contains("xxxxxxxxxxxx") && why.contains("eeeeeeeeeeee"),
            "{why}"
        );
    }

    #[test]
    fn attested_hash() {
        assert_eq!(OnDisk::Missing.actual(), None);
        assert_eq!(OnDisk::File(E.into()).actual().as_deref(), Some(E));
        assert!(OnDisk::Other("directory")
            .actual()
            .unwrap()
            .contains("directory"));
    }

    #[test]
    fn removals_are_recorded_paths_not_wanted() {
        let rec: BTreeMap<String, ()> = [("/a".to_string(), ()), ("/b".to_string(), ())].into();
        let wanted: BTreeSet<&str> = ["/b", "/c"].into();
        assert_eq!(removals(&rec, &wanted), vec!["/a"]);
    }
}
