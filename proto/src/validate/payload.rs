//! Payload checks: path, version, mode, owner, sha256 and the resources `on_change` restarts.

use super::{abs_path_problem, check_names, normalize_path, Problems};
use crate::spec::NodeSpec;
use std::collections::{HashMap, HashSet};

const VERSION_MAX: usize = 64;
/// Longest user or group name `useradd` accepts.
const OWNER_NAME_MAX: usize = 32;

pub(super) fn check(spec: &NodeSpec, out: &mut Problems) {
    let payloads = &spec.payloads;
    check_names(
        out,
        "payloads",
        "payload",
        payloads.iter().map(|p| p.name.as_str()),
    );
    let containers: HashSet<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let vms: HashSet<&str> = spec.vms.iter().map(|v| v.name.as_str()).collect();
    // Normalised path -> index of the payload that first used it.
    let mut paths: HashMap<String, usize> = HashMap::new();
    for (i, p) in payloads.iter().enumerate() {
        let f = format!("payloads[{i}]");
        let path_field = format!("{f}.path");
        let path_problem = abs_path_problem("path", &p.path).or_else(|| {
            p.path.ends_with('/').then(|| {
                format!(
                    "path {:?} ends with '/'; give the path of the file itself",
                    p.path
                )
            })
        });
        if out.check(&path_field, path_problem) {
            let norm = normalize_path(&p.path);
            match paths.get(&norm) {
                Some(first) => out.push(
                    path_field,
                    format!(
                        "path {} is already used by payloads[{first}]; each payload needs its \
                         own path",
                        p.path
                    ),
                ),
                None => {
                    paths.insert(norm, i);
                }
            }
        }
        out.check(format!("{f}.version"), version_problem(&p.version));
        if let Some(mode) = &p.mode {
            out.check(format!("{f}.mode"), mode_problem(mode));
        }
        if let Some(owner) = &p.owner {
            out.check(format!("{f}.owner"), owner_problem(owner));
        }
        if let Some(sha) = &p.sha256 {
            out.check(format!("{f}.sha256"), sha256_problem(sha));
        }
        if let Some(on_change) = &p.on_change {
            let lists = [
                (
                    "restart_containers",
                    &on_change.restart_containers,
                    &containers,
                    "container",
                ),
                ("restart_vms", &on_change.restart_vms, &vms, "VM"),
            ];
            for (list, names, known, kind) in lists {
                for (j, name) in names.iter().enumerate() {
                    if !known.contains(name.as_str()) {
                        out.push(
                            format!("{f}.on_change.{list}[{j}]"),
                            format!("there is no {kind} named {name:?} in this spec"),
                        );
                    }
                }
            }
        }
    }
}

/// Why `v` is not a payload version (1–64 of `[A-Za-z0-9._+-]`, not starting with '.').
fn version_problem(v: &str) -> Option<String> {
    if v.is_empty() {
        return Some("version is empty".into());
    }
    if v.len() > VERSION_MAX {
        return Some(format!(
            "version is {} characters; at most {VERSION_MAX} are allowed",
            v.len()
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
    {
        return Some(format!(
            "version {v:?} contains {c:?}; only letters, digits, '.', '_', '+' and '-' are allowed"
        ));
    }
    if v.starts_with('.') {
        return Some(format!("version {v:?} must not start with '.'"));
    }
    None
}

/// Why `m` is not an octal file mode of 3 or 4 digits.
fn mode_problem(m: &str) -> Option<String> {
    let help = "write an octal file mode of 3 or 4 digits, e.g. \"0644\" or \"755\"";
    if !(3..=4).contains(&m.len()) || !m.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!("mode {m:?} is not valid; {help}"));
    }
    if let Some(c) = m.chars().find(|c| matches!(c, '8' | '9')) {
        return Some(format!(
            "mode {m:?} contains {c:?}; octal digits are 0-7 ({help})"
        ));
    }
    None
}

/// Why `o` is not `user` or `user:group` (names or numeric ids).
fn owner_problem(o: &str) -> Option<String> {
    if o.is_empty() {
        return Some("owner is empty; give user or user:group".into());
    }
    let (user, group) = match o.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (o, None),
    };
    let part = |what: &str, s: &str| -> Option<String> {
        let numeric = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if numeric {
            return s
                .parse::<u32>()
                .is_err()
                .then(|| format!("{what} id {s} in owner {o:?} is too large"));
        }
        let name_ok = s.len() <= OWNER_NAME_MAX
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        (!name_ok).then(|| {
            format!(
                "{what} {s:?} in owner {o:?} is neither a numeric id nor a name of at most \
                 {OWNER_NAME_MAX} lowercase letters, digits, '_' and '-' starting with a letter \
                 or '_'"
            )
        })
    };
    part("user", user).or_else(|| group.and_then(|g| part("group", g)))
}

/// Why `s` is not 64 lowercase hex characters.
fn sha256_problem(s: &str) -> Option<String> {
    if s.len() != 64 {
        return Some(format!(
            "sha256 is {} characters; it must be exactly 64 lowercase hex characters",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_digit() || ('a'..='f').contains(c)))
    {
        return Some(if c.is_ascii_hexdigit() {
            "sha256 must be lowercase hex".to_string()
        } else {
            format!("sha256 contains {c:?}; it must be exactly 64 lowercase hex characters")
        });
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::{run_table, run_valid};

    fn p(fields: &str) -> String {
        format!("payloads:\n  - {{name: tc, version: 1.4.2, path: /opt/tc.tar, {fields}}}\n")
    }

    #[test]
    fn payload_rules() {
        let sha = "0123456789abcdef".repeat(4);
        let cases: Vec<(String, &str, &str)> = vec![
            ("payloads:\n  - {name: tc, version: \"1\", path: /a}\n  - {name: tc, version: \"1\", path: /b}\n".into(), "payloads[1].name", "duplicate payload name \"tc\": payloads[0] already uses it"),
            ("payloads:\n  - {name: a, version: \"1\", path: /opt/x}\n  - {name: b, version: \"1\", path: /opt//x}\n".into(), "payloads[1].path", "already used by payloads[0]"),
            ("payloads:\n  - {name: a, version: \"1\", path: opt/x}\n".into(), "payloads[0].path", "is not absolute"),
            ("payloads:\n  - {name: a, version: \"1\", path: /opt/../etc/x}\n".into(), "payloads[0].path", "'..'"),
            ("payloads:\n  - {name: a, version: \"1\", path: /opt/x/}\n".into(), "payloads[0].path", "ends with '/'"),
            ("payloads:\n  - {name: a, version: \"1\", path: \"/opt/x\\0\"}\n".into(), "payloads[0].path", "NUL"),
            ("payloads:\n  - {name: a, version: \"\", path: /opt/x}\n".into(), "payloads[0].version", "version is empty"),
            ("payloads:\n  - {name: a, version: \".1\", path: /opt/x}\n".into(), "payloads[0].version", "must not start with '.'"),
            ("payloads:\n  - {name: a, version: \"1 2\", path: /opt/x}\n".into(), "payloads[0].version", "contains ' '"),
            (format!("payloads:\n  - {{name: a, version: \"{}\", path: /opt/x}}\n", "1".repeat(65)), "payloads[0].version", "at most 64"),
            (p("mode: \"0844\""), "payloads[0].mode", "octal digits are 0-7"),
            (p("mode: \"64\""), "payloads[0].mode", "3 or 4 digits"),
            (p("mode: \"07777\""), "payloads[0].mode", "3 or 4 digits"),
            (p("mode: rw-r--r--"), "payloads[0].mode", "not valid"),
            (p("owner: \"\""), "payloads[0].owner", "owner is empty"),
            (p("owner: Root"), "payloads[0].owner", "user \"Root\""),
            (p("owner: \"root:\""), "payloads[0].owner", "group \"\""),
            (p("owner: \"root:wheel:x\""), "payloads[0].owner", "group \"wheel:x\""),
            (p("owner: \"99999999999\""), "payloads[0].owner", "too large"),
            (p("sha256: abc"), "payloads[0].sha256", "sha256 is 3 characters; it must be exactly 64"),
            (p(&format!("sha256: {}", sha.to_uppercase())), "payloads[0].sha256", "must be lowercase"),
            (p(&format!("sha256: {}g", &sha[1..])), "payloads[0].sha256", "contains 'g'"),
            (p("on_change: {restart_containers: [web]}"), "payloads[0].on_change.restart_containers[0]", "no container named \"web\""),
            ("vms:\n  - {name: kali, image: /k.qcow2, memory: 1Gi}\npayloads:\n  - {name: a, version: \"1\", path: /x, on_change: {restart_vms: [kali, kali2]}}\n".into(), "payloads[0].on_change.restart_vms[1]", "no VM named \"kali2\""),
        ];
        let cases: Vec<(&str, &str, &str)> =
            cases.iter().map(|(y, f, r)| (y.as_str(), *f, *r)).collect();
        run_table(&cases);
    }

    #[test]
    fn valid_payloads() {
        let sha = "0123456789abcdef".repeat(4);
        run_valid(&[
            &p(&format!("mode: \"0644\", owner: \"root:root\", sha256: {sha}")),
            &p("mode: \"755\", owner: \"1000:100\", kind: docker-image"),
            &p("mode: \"7777\", owner: _svc-x"),
            "payloads:\n  - {name: a, version: 1.0.0+build_7-rc1, path: /opt/a}\n  - {name: b, version: \"2\", path: /opt/b}\n",
            "containers:\n  - {name: web, image: nginx}\npayloads:\n  - {name: a, version: \"1\", path: /x, on_change: {restart_containers: [web]}}\n",
        ]);
    }
}
