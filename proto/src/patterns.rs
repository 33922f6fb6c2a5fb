//! The API document's view of the validators: regular expressions (JSON Schema `pattern`) and
//! bounds for names, labels and hashes, and the label-map schemas. The tests check each pattern
//! accepts exactly what the matching validator in `validate` accepts, so the two cannot drift.

use schemars::{json_schema, Schema, SchemaGenerator};

/// A resource name: container, VM, payload, fragment (`validate::resource_name_problem`).
pub const RESOURCE_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$";
/// A payload version: 1–64 of `[A-Za-z0-9._+-]`, not starting with '.'.
pub const PAYLOAD_VERSION: &str = r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,63}$";
/// A sha256 as the API writes and reads it: 64 lower-case hex characters.
pub const SHA256: &str = r"^[0-9a-f]{64}$";
/// A workload named in `POST /v1/nodes/{id}/workloads/{name}/reset`.
pub const WORKLOAD_NAME: &str = r"^[A-Za-z0-9_.-]{1,128}$";

/// Whether `name` may name a workload to reset ([`WORKLOAD_NAME`]).
pub fn is_workload_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
/// One part of a label (the name of a key, or a value): 1–63 of `[A-Za-z0-9_.-]`, starting and
/// ending with a letter or digit.
const LABEL_PART: &str = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?";
/// One dot-separated part of a DNS name (a label key's prefix).
const DNS_PART: &str = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
/// Most bytes in a label key (prefix, '/' and name together).
pub const LABEL_KEY_MAX: u32 = 253;
/// Most enrolments one enrollment token may allow.
pub const TOKEN_USES_MAX: u32 = 1_000_000;

/// A label key: `name` or `prefix/name`, the prefix a DNS name (at most [`LABEL_KEY_MAX`]
/// bytes in all).
pub fn label_key() -> String {
    format!(r"^(?:{DNS_PART}(?:\.{DNS_PART})*/)?{LABEL_PART}$")
}

/// A label value: empty, or one label part.
pub fn label_value() -> String {
    format!(r"^(?:{LABEL_PART})?$")
}

/// Schema of a label map (`key -> value`).
pub fn labels_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "propertyNames": {"type": "string", "maxLength": LABEL_KEY_MAX, "pattern": label_key()},
        "additionalProperties": {"type": "string", "pattern": label_value()}
    })
}

/// Schema of a label merge patch (`key -> value`, `null` removes the key).
pub fn label_patch_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "propertyNames": {"type": "string", "maxLength": LABEL_KEY_MAX, "pattern": label_key()},
        "additionalProperties": {"type": ["string", "null"], "pattern": label_value()}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{NodeSpec, PayloadSpec};
    use crate::validate::{resource_name_problem, validate_labels, validate_spec};
    use regex::Regex;

    /// Deterministic strings from `alphabet`, lengths 0..=max (a small LCG: no test dependency).
    fn samples(alphabet: &[u8], max: usize, n: usize) -> Vec<String> {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as usize
        };
        (0..n)
            .map(|_| {
                let len = match next() % 4 {
                    0 => next() % 4,
                    1 => max.saturating_sub(2) + next() % 4,
                    _ => next() % (max + 2),
                };
                (0..len)
                    .map(|_| alphabet[next() % alphabet.len()] as char)
                    .collect()
            })
            .collect()
    }

    fn agree(pattern: &str, valid: impl Fn(&str) -> bool, alphabet: &[u8], max: usize) {
        let re = Regex::new(pattern).unwrap();
        let mut accepted = 0;
        for s in samples(alphabet, max, 20_000) {
            assert_eq!(
                re.is_match(&s),
                valid(&s),
                "{pattern} vs validator on {s:?}"
            );
            accepted += usize::from(valid(&s));
        }
        assert!(
            accepted > 10,
            "{pattern}: too few valid samples ({accepted})"
        );
    }

    const CHARS: &[u8] = b"aZ09.-_+/ :xY7.-";

    fn payload(name: &str, version: &str, sha256: Option<&str>) -> NodeSpec {
        NodeSpec {
            payloads: vec![PayloadSpec {
                name: name.into(),
                version: version.into(),
                path: "/payload".into(),
                kind: Default::default(),
                mode: None,
                owner: None,
                sha256: sha256.map(str::to_string),
                size: None,
                on_change: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn patterns_accept_exactly_what_the_validators_accept() {
        agree(WORKLOAD_NAME, is_workload_name, CHARS, 130);
        agree(
            RESOURCE_NAME,
            |s| resource_name_problem("x", s).is_none(),
            CHARS,
            64,
        );
        agree(
            PAYLOAD_VERSION,
            |s| validate_spec(&payload("p", s, None), &Default::default()).is_ok(),
            CHARS,
            65,
        );
        agree(
            SHA256,
            |s| validate_spec(&payload("p", "1", Some(s)), &Default::default()).is_ok(),
            b"0123456789abcdefA",
            65,
        );
        agree(
            &label_value(),
            |s| validate_labels(&[("k".into(), s.into())].into(), "l").is_empty(),
            CHARS,
            64,
        );
        let key_ok = |s: &str| validate_labels(&[(s.into(), "v".into())].into(), "l").is_empty();
        let key_re = Regex::new(&label_key()).unwrap();
        let key = |s: &str| key_re.is_match(s) && s.len() <= LABEL_KEY_MAX as usize;
        for s in samples(b"ab09-./_A", 70, 20_000) {
            assert_eq!(key(&s), key_ok(&s), "label key {s:?}");
        }
        for s in [
            "example.com/role",
            "a.b-c.d/x_y",
            "role",
            "A/b",
            "-a/b",
            "a..b/c",
            "a/b/c",
        ] {
            assert_eq!(key(s), key_ok(s), "label key {s:?}");
        }
        let long = format!("{}/x", vec!["a".repeat(63); 4].join("."));
        assert_eq!(key(&long), key_ok(&long));
    }
}
