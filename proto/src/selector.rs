//! Label selectors: `key=value`, `key!=value`, `key` (exists) and `!key` (absent), comma-joined.

use crate::node::Labels;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed selector; the empty selector matches every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

/// Why a selector could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector term {term:?}: {reason}")]
pub struct SelectorError {
    pub term: String,
    pub reason: String,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 253
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut reqs = Vec::new();
        for raw in s.split(',') {
            let term = raw.trim();
            if term.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(SelectorError {
                    term: raw.to_string(),
                    reason: "empty term".into(),
                });
            }
            let err = |reason: &str| SelectorError {
                term: term.to_string(),
                reason: reason.to_string(),
            };
            let req = if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement::Absent(k.trim().to_string())
            } else {
                Requirement::Exists(term.to_string())
            };
            let (key, value) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::Exists(k) | Requirement::Absent(k) => (k, None),
            };
            if !valid_key(key) {
                return Err(err(
                    "key must be 1-253 characters of letters, digits, '-', '_', '.', '/'",
                ));
            }
            if let Some(v) = value {
                if !valid_value(v) {
                    return Err(err(
                        "value may hold only letters, digits, '-', '_', '.', '/', ':'",
                    ));
                }
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }
}

impl Selector {
    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }

    /// True when every label set this selector matches also matches `wider`, judged term by
    /// term (a selector within a credential's scope). Conservative: `false` may be answered for
    /// a selector that only implies `wider` through a contradiction.
    pub fn implies(&self, wider: &Selector) -> bool {
        wider.0.iter().all(|t| {
            self.0.iter().any(|r| match (t, r) {
                (Requirement::Equals(k, v), Requirement::Equals(k2, v2)) => k == k2 && v == v2,
                (Requirement::NotEquals(k, v), Requirement::Equals(k2, v2)) => k == k2 && v != v2,
                (Requirement::NotEquals(k, v), Requirement::NotEquals(k2, v2)) => {
                    k == k2 && v == v2
                }
                (Requirement::NotEquals(k, _), Requirement::Absent(k2)) => k == k2,
                (Requirement::Exists(k), Requirement::Equals(k2, _) | Requirement::Exists(k2)) => {
                    k == k2
                }
                (Requirement::Absent(k), Requirement::Absent(k2)) => k == k2,
                _ => false,
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn table() {
        let l = labels(&[("role", "builder"), ("env", "prod")]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("role=builder", true),
            ("role==builder", true),
            ("role=web", false),
            ("role!=web", true),
            ("role!=builder", false),
            ("env", true),
            ("gpu", false),
            ("!gpu", true),
            ("!env", false),
            ("role=builder, env=prod", true),
            ("role=builder,env=dev", false),
            ("missing!=x", true),
        ];
        for (sel, want) in cases {
            let s: Selector = sel.parse().unwrap();
            assert_eq!(s.matches(&l), *want, "selector {sel:?}");
        }
    }

    #[test]
    fn implication_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("env=lab", "env=lab", true),
            ("env=lab,role=web", "env=lab", true),
            ("", "env=lab", false),
            ("role=web", "env=lab", false),
            ("env=prod", "env=lab", false),
            ("env!=lab", "env=lab", false),
            ("env", "env=lab", false),
            ("anything", "", true),
            ("", "", true),
            ("env=lab", "env", true),
            ("env", "env", true),
            ("!env", "env", false),
            ("env=dev", "env!=prod", true),
            ("env=prod", "env!=prod", false),
            ("env!=prod", "env!=prod", true),
            ("!env", "env!=prod", true),
            ("!env", "!env", true),
            ("env=lab", "!env", false),
            ("env=lab,team=a", "env=lab,team=a", true),
            ("env=lab", "env=lab,team=a", false),
        ];
        for (narrow, wide, want) in cases {
            let n: Selector = narrow.parse().unwrap();
            let w: Selector = wide.parse().unwrap();
            assert_eq!(n.implies(&w), *want, "{narrow:?} implies {wide:?}");
        }
    }

    #[test]
    fn bad_selectors_are_refused() {
        for bad in ["role=a b", "=x", "a,,b", "ro le"] {
            assert!(
                bad.parse::<Selector>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
