//! Volume mounts: the typed parser for `name:/path[:ro|rw]` and `/host/path:/path[:ro|rw]`.

use super::{abs_path_problem, normalize_path, static_regex};
use regex::Regex;
use std::path::PathBuf;
use std::sync::LazyLock;

/// Where a volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VolumeSource {
    /// A Docker named volume.
    Named(String),
    /// A bind mount of an absolute host path.
    Host(PathBuf),
}

/// A parsed `name:/container/path[:ro|rw]` or `/host/path:/container/path[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeMount {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
}

const VOLUME_HELP: &str =
    "expected name:/container/path[:ro|rw] or /host/path:/container/path[:ro|rw]";

static VOLUME_NAME: LazyLock<Regex> =
    LazyLock::new(|| static_regex(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"));

/// Parses a volume such as `web-data:/data` or `/srv/web:/usr/share/nginx/html:ro`.
pub fn parse_volume(s: &str) -> Result<VolumeMount, String> {
    if s.contains('\0') {
        return Err(format!("volume {s:?} contains a NUL byte"));
    }
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        [_] => return Err(format!("volume {s:?} has no container path; {VOLUME_HELP}")),
        _ => return Err(format!("volume {s:?} has too many ':'; {VOLUME_HELP}")),
    };
    let source = if source.starts_with('/') {
        if let Some(p) = abs_path_problem("host path", source) {
            return Err(p);
        }
        VolumeSource::Host(PathBuf::from(source))
    } else if source.is_empty() {
        return Err(format!("volume {s:?} has an empty source; {VOLUME_HELP}"));
    } else if source.contains('/') || source == "." || source == ".." || source.starts_with('~') {
        return Err(format!(
            "host path {source:?} is not absolute; host paths must start with '/'"
        ));
    } else if !VOLUME_NAME.is_match(source) {
        return Err(format!(
            "volume name {source:?} must start with a letter or digit and hold only letters, \
             digits, '_', '.' and '-'"
        ));
    } else {
        VolumeSource::Named(source.to_string())
    };
    if let Some(p) = abs_path_problem("container path", target) {
        return Err(p);
    }
    if normalize_path(target) == "/" {
        return Err(format!(
            "container path {target:?} is the container's root; mount below it, e.g. /data"
        ));
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => return Err(format!("volume mode {m:?} is not ro or rw")),
    };
    Ok(VolumeMount {
        source,
        target: target.to_string(),
        read_only,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_volume_forms() {
        let m = parse_volume("web-data:/data").unwrap();
        assert_eq!(m.source, VolumeSource::Named("web-data".into()));
        assert_eq!(m.target, "/data");
        assert!(!m.read_only);
        let m = parse_volume("/srv/web:/usr/share/nginx/html:ro").unwrap();
        assert_eq!(m.source, VolumeSource::Host(PathBuf::from("/srv/web")));
        assert_eq!(m.target, "/usr/share/nginx/html");
        assert!(m.read_only);
        assert!(!parse_volume("v1:/x:rw").unwrap().read_only);
    }

    #[test]
    fn parse_volume_errors() {
        let cases: &[(&str, &str)] = &[
            ("/data", "no container path"),
            ("a:/b:ro:x", "too many ':'"),
            (":/data", "empty source"),
            ("./data:/data", "is not absolute"),
            ("-bad:/data", "volume name \"-bad\""),
            ("v:data", "container path \"data\" is not absolute"),
            ("v:/data/../etc", "'..' component"),
            (
                "/srv/../etc:/data",
                "host path \"/srv/../etc\" contains a '..'",
            ),
            ("v:/", "container's root"),
            ("v:/data:rx", "volume mode \"rx\" is not ro or rw"),
            ("v:/da\0ta", "NUL"),
        ];
        for (s, want) in cases {
            let err = parse_volume(s).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }
}
