//! Container image references: the Docker/OCI grammar `[host[:port]/]path[:tag][@sha256:<hex>]`.

use super::static_regex;
use regex::Regex;
use std::sync::LazyLock;

const DOMAIN_COMPONENT: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";

static IMAGE_DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    static_regex(&format!(
        r"^(?:{DOMAIN_COMPONENT}(?:\.{DOMAIN_COMPONENT})*|\[[a-fA-F0-9:.]+\])(?::[0-9]+)?$"
    ))
});
static IMAGE_PATH_COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| static_regex(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$"));
static IMAGE_TAG: LazyLock<Regex> =
    LazyLock::new(|| static_regex(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"));
static IMAGE_DIGEST: LazyLock<Regex> = LazyLock::new(|| static_regex(r"^sha256:[a-f0-9]{64}$"));

/// Longest repository name (registry and path) Docker accepts.
const IMAGE_NAME_MAX: usize = 255;

/// Why `image` is not a Docker/OCI reference `[host[:port]/]path[:tag][@sha256:<hex>]`.
pub(crate) fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("image is empty; give a reference such as nginx:1.27".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "image {image:?} contains whitespace or control characters"
        ));
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        if !IMAGE_DIGEST.is_match(d) {
            return Some(format!(
                "image digest {d:?} is invalid; write @sha256: followed by 64 lowercase hex \
                 characters"
            ));
        }
    }
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last..].rfind(':') {
        Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        if !IMAGE_TAG.is_match(t) {
            return Some(format!(
                "image tag {t:?} is invalid; a tag is 1-128 letters, digits, '_', '.' or '-' and \
                 does not start with '.' or '-'"
            ));
        }
    }
    if name.is_empty() {
        return Some(format!("image {image:?} has no repository name"));
    }
    if name.len() > IMAGE_NAME_MAX {
        return Some(format!(
            "image name is {} characters; at most {IMAGE_NAME_MAX} are allowed",
            name.len()
        ));
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), path)
        }
        _ => (None, name),
    };
    if let Some(d) = domain {
        if !IMAGE_DOMAIN.is_match(d) {
            return Some(format!(
                "registry {d:?} in image {image:?} is not a valid host[:port]"
            ));
        }
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Some(format!(
            "repository {path:?} in image {image:?} must be lowercase"
        ));
    }
    if let Some(c) = path.split('/').find(|c| !IMAGE_PATH_COMPONENT.is_match(c)) {
        return Some(format!(
            "repository path component {c:?} in image {image:?} is invalid; use lowercase \
             letters and digits separated by '.', '_', '__' or '-'"
        ));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let good = [
            "nginx",
            "nginx:1.27",
            "library/nginx:latest",
            "docker.io/library/nginx:1.27-alpine",
            "localhost:5000/team/app:v1",
            "localhost/app",
            "registry.example.com:443/a/b/c:1.0",
            "ghcr.io/org/my_app__x.y-z:TAG_1",
            "[::1]:5000/app",
            "192.168.1.10:5000/app",
            "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "app:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a--b:1",
        ];
        for g in good {
            assert_eq!(image_problem(g), None, "{g}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("Nginx", "must be lowercase"),
            ("nginx:", "image tag \"\" is invalid"),
            ("nginx:-x", "image tag \"-x\""),
            ("nginx:a/b", "not a valid host"),
            ("app@sha256:abc", "digest"),
            ("app@md5:0123", "digest"),
            ("bad_.name", "path component \"bad_.name\""),
            ("a//b", "path component \"\""),
            ("-x/app", "path component \"-x\""),
            ("reg-.io/app", "registry \"reg-.io\""),
            ("nginx 1", "whitespace"),
            (":tag", "no repository name"),
        ];
        for (s, want) in bad {
            let got = image_problem(s);
            assert!(
                got.as_deref().is_some_and(|r| r.contains(want)),
                "{s:?}: {got:?}"
            );
        }
        let long = format!("{}:1", "a".repeat(256));
        assert!(image_problem(&long).is_some_and(|r| r.contains("at most 255")));
    }
}
