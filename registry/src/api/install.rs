//! Public downloads for installing agents: `GET /install.sh` (the install script, filled in
//! with this registry's URL, certificate pin and the agent packages it serves),
//! `GET /v1/packages` (the Debian packages in `packages_dir`, with sha256) and
//! `GET /packages/{file}` (any regular file in `packages_dir`).
//!
//! None of these needs a credential: a new host has none yet, and neither the packages nor the
//! script hold a secret (the enrolment token is given on the host's command line). The script
//! carries the sha256 of each package and checks it before installing.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use steward_proto::{ApiError, PackageInfo};
use tokio::io::AsyncReadExt;

use crate::error::RegistryError;
use crate::state::AppState;

/// The install script; `@@NAME@@` placeholders are filled in per request.
const INSTALL_SH: &str = include_str!("../../../packaging/install.sh");
/// The package `/install.sh` installs.
pub const AGENT_PACKAGE: &str = "steward-agent";

/// `GET /install.sh`.
pub async fn install_sh(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let registry = match &state.settings.public_url {
        Some(u) => u.clone(),
        None => {
            let scheme = if state.settings.tls { "https" } else { "http" };
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| uri.authority().map(|a| a.as_str()))
                .unwrap_or("");
            if host.is_empty()
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
            {
                return RegistryError::invalid(
                    "Host",
                    "the Host header must be a host name or address with an optional port \
                     (or set the registry's public_url)",
                )
                .into_response();
            }
            format!("{scheme}://{host}")
        }
    };
    let dir = state.settings.packages_dir.clone();
    let packages = match list_packages(&dir).await {
        Ok(p) => p,
        Err(e) => return io_error(&e, &dir),
    };
    let agents = latest_per_arch(&packages, AGENT_PACKAGE);
    let script = if agents.is_empty() {
        tracing::warn!(packages_dir = %dir.display(), "GET /install.sh: no steward-agent package to offer");
        failing_script(&format!(
            "the registry at {registry} has no {AGENT_PACKAGE} package in its packages_dir ({}); \
             install the steward-registry package (it ships one) or build it with \
             packaging/build-deb.sh and copy it there",
            dir.display()
        ))
    } else {
        render_install_sh(&registry, state.settings.tls_pin.as_deref(), &agents)
    };
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        script,
    )
        .into_response()
}

/// Fills in the install script's placeholders. Every value is made of characters that need no
/// quoting in the script (checked where it comes from: config, Host header, file names, hex).
fn render_install_sh(registry: &str, pin: Option<&str>, agents: &[&PackageInfo]) -> String {
    let lines: Vec<String> = agents
        .iter()
        .map(|p| format!("{} {} {}", p.arch, p.file, p.sha256))
        .collect();
    INSTALL_SH
        .replace("@@REGISTRY@@", registry)
        .replace("@@CA_PIN@@", pin.unwrap_or(""))
        .replace("@@VERSION@@", env!("CARGO_PKG_VERSION"))
        .replace("@@PACKAGES@@", &lines.join("\n"))
}

/// A script that only explains why nothing can be installed, and fails: with a `404`,
/// `curl -f … | sh` would run an empty script and succeed silently.
fn failing_script(reason: &str) -> String {
    let quoted = reason.replace('\'', "'\\''");
    format!("#!/bin/sh\necho 'steward install: error: {quoted}' >&2\nexit 1\n")
}

/// `GET /v1/packages`: the Debian packages in `packages_dir` (none when it does not exist).
pub async fn list(State(state): State<AppState>) -> Response {
    let dir = &state.settings.packages_dir;
    match list_packages(dir).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => io_error(&e, dir),
    }
}

/// `GET /packages/{file}`: a regular file from `packages_dir`, streamed.
pub async fn download(
    State(state): State<AppState>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, RegistryError> {
    let not_found =
        || RegistryError::NotFound(format!("no file {file:?} in the registry's packages_dir"));
    if !safe_file_name(&file) {
        return Err(not_found());
    }
    let path = state.settings.packages_dir.join(&file);
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => m,
        _ => return Err(not_found()),
    };
    let f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return Ok(io_error(&e, &path)),
    };
    let stream = futures_util::stream::try_unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), f)))
    });
    let content_type = if file.ends_with(".deb") {
        "application/vnd.debian.binary-package"
    } else if file.ends_with(".sh") {
        "text/x-shellscript"
    } else {
        "application/octet-stream"
    };
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    Ok(resp)
}

/// Letters, digits and `._+~-`, starting with a letter or digit: no path separators, no `..`
/// escape, nothing hidden.
fn safe_file_name(name: &str) -> bool {
    name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c))
}

/// A 500 for a failure reading `packages_dir`, logged with the path.
fn io_error(e: &std::io::Error, path: &Path) -> Response {
    tracing::error!(path = %path.display(), error = %e, "reading packages_dir failed");
    let body = ApiError {
        error: format!("reading {} failed: {e}", path.display()),
        code: "io".into(),
        problems: Vec::new(),
    };
    (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
}

/// Every `NAME_VERSION_ARCH.deb` in `dir` with its size and sha256, sorted by file name. A
/// missing directory holds nothing.
pub async fn list_packages(dir: &Path) -> std::io::Result<Vec<PackageInfo>> {
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    while let Some(entry) = rd.next_entry().await? {
        let Some(file) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some((package, version, arch)) =
            parse_deb_name(&file).map(|(p, v, a)| (p.to_string(), v.to_string(), a.to_string()))
        else {
            continue;
        };
        // Follows symlinks: the directory is the operator's.
        let meta = match tokio::fs::metadata(entry.path()).await {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        let path = entry.path();
        let size = meta.len();
        let sha256 = tokio::task::spawn_blocking(move || cached_sha256(&path, &meta))
            .await
            .map_err(std::io::Error::other)??;
        out.push(PackageInfo {
            path: format!("/packages/{file}"),
            size,
            file,
            package,
            version,
            arch,
            sha256,
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// `(package, version, arch)` of a Debian file name `NAME_VERSION_ARCH.deb` (the epoch, if
/// any, is not part of file names).
fn parse_deb_name(file: &str) -> Option<(&str, &str, &str)> {
    if !safe_file_name(file) {
        return None;
    }
    let stem = file.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (name, version, arch) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !name.is_empty() && !version.is_empty() && !arch.is_empty())
        .then_some((name, version, arch))
}

/// sha256 of a file, remembered while its size and modification time stay the same.
fn cached_sha256(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<String> {
    type Cache = Mutex<HashMap<PathBuf, (u64, Option<SystemTime>, String)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (meta.len(), meta.modified().ok());
    if let Some((len, mtime, sha)) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        if (*len, *mtime) == key {
            return Ok(sha.clone());
        }
    }
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    let sha = hex::encode(h.finalize());
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_path_buf(), (key.0, key.1, sha.clone()));
    Ok(sha)
}

/// The newest version of `package` per architecture, sorted by architecture.
fn latest_per_arch<'a>(packages: &'a [PackageInfo], package: &str) -> Vec<&'a PackageInfo> {
    let mut best: HashMap<&str, &PackageInfo> = HashMap::new();
    for p in packages.iter().filter(|p| p.package == package) {
        let e = best.entry(p.arch.as_str()).or_insert(p);
        if dpkg_version_cmp(&p.version, &e.version) == Ordering::Greater {
            *e = p;
        }
    }
    let mut v: Vec<_> = best.into_values().collect();
    v.sort_by(|a, b| a.arch.cmp(&b.arch));
    v
}

/// Debian version order (dpkg's `verrevcmp`): runs of non-digits compare with letters before
/// other characters and `~` before everything, even the end; runs of digits compare as numbers.
pub fn dpkg_version_cmp(a: &str, b: &str) -> Ordering {
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::state::Settings;
    use crate::store::Store;

    #[test]
    fn debian_version_order() {
        use Ordering::*;
        for (a, b, want) in [
            ("0.1.0", "0.1.0", Equal),
            ("0.1.1", "0.1.0", Greater),
            ("0.10.0", "0.9.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0a", "1.0", Greater),
            ("1.0-2", "1.0-10", Less),
            ("0.01", "0.1", Equal),
        ] {
            assert_eq!(dpkg_version_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(dpkg_version_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn debian_file_names() {
        assert_eq!(
            parse_deb_name("steward-agent_0.1.0_amd64.deb"),
            Some(("steward-agent", "0.1.0", "amd64"))
        );
        for bad in [
            "x_1.deb",
            "x_1_a_b.deb",
            "_1_amd64.deb",
            ".x_1_a.deb",
            "x_1_a.tar",
        ] {
            assert_eq!(parse_deb_name(bad), None, "{bad}");
        }
    }

    struct Fx {
        _dir: tempfile::TempDir,
        pkgs: PathBuf,
        state: AppState,
    }

    async fn fixture(settings: impl FnOnce(&Path) -> Settings) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let pkgs = dir.path().join("packages");
        std::fs::create_dir(&pkgs).unwrap();
        let store = Store::open_embedded(&dir.path().join("store")).unwrap();
        let state = AppState::new(
            settings(&pkgs),
            store,
            dir.path(),
            "admin-token-0123456789",
            None,
        )
        .await
        .unwrap();
        Fx {
            _dir: dir,
            pkgs,
            state,
        }
    }

    async fn get(
        state: &AppState,
        uri: &str,
        host: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let resp = super::super::router(state.clone(), 64 * 1024)
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn sha(text: &str) -> String {
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// Runs `script` with `sh -s -- args`; (exit code, stdout + stderr).
    fn run_sh(script: &str, args: &[&str]) -> (i32, String) {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-s")
            .arg("--")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    #[tokio::test]
    async fn packages_are_listed_and_served_and_nothing_else() {
        let fx = fixture(|p| Settings {
            packages_dir: p.to_path_buf(),
            ..Default::default()
        })
        .await;
        for (name, body) in [
            ("steward-agent_0.1.0_amd64.deb", "old"),
            ("steward-agent_0.2.0_amd64.deb", "new"),
            ("steward-agent_0.2.0_arm64.deb", "arm"),
            ("steward-registry_0.2.0_amd64.deb", "reg"),
            ("notes.txt", "notes"),
            (".hidden", "secret"),
        ] {
            std::fs::write(fx.pkgs.join(name), body).unwrap();
        }
        std::fs::create_dir(fx.pkgs.join("dir_1_amd64.deb")).unwrap();

        let (st, _, body) = get(&fx.state, "/v1/packages", None).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let list: Vec<PackageInfo> = serde_json::from_str(&body).unwrap();
        let files: Vec<&str> = list.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "steward-agent_0.1.0_amd64.deb",
                "steward-agent_0.2.0_amd64.deb",
                "steward-agent_0.2.0_arm64.deb",
                "steward-registry_0.2.0_amd64.deb"
            ]
        );
        assert_eq!(list[1].sha256, sha("new"));
        assert_eq!(list[1].size, 3);
        assert_eq!(list[1].path, "/packages/steward-agent_0.2.0_amd64.deb");
        assert_eq!(
            (list[2].package.as_str(), list[2].arch.as_str()),
            ("steward-agent", "arm64")
        );

        let (st, h, body) = get(&fx.state, "/packages/steward-agent_0.2.0_amd64.deb", None).await;
        assert_eq!((st, body.as_str()), (StatusCode::OK, "new"));
        assert_eq!(
            h[header::CONTENT_TYPE],
            "application/vnd.debian.binary-package"
        );
        assert_eq!(h[header::CONTENT_LENGTH], "3");
        let (st, _, body) = get(&fx.state, "/packages/notes.txt", None).await;
        assert_eq!((st, body.as_str()), (StatusCode::OK, "notes"));
        for uri in [
            "/packages/.hidden",
            "/packages/..%2Fstore",
            "/packages/%2E%2E",
            "/packages/dir_1_amd64.deb",
            "/packages/missing.deb",
        ] {
            let (st, _, body) = get(&fx.state, uri, None).await;
            assert_eq!(st, StatusCode::NOT_FOUND, "{uri}: {body}");
        }
    }

    #[tokio::test]
    async fn install_script_offers_the_newest_agent_per_arch_with_the_pin() {
        let pin = "ab".repeat(32);
        let fx = fixture(|p| Settings {
            packages_dir: p.to_path_buf(),
            tls: true,
            tls_pin: Some(pin.clone()),
            ..Default::default()
        })
        .await;
        for (name, body) in [
            ("steward-agent_0.9.0_amd64.deb", "old"),
            ("steward-agent_0.10.0_amd64.deb", "new"),
            ("steward-agent_0.1.0_arm64.deb", "arm"),
            ("steward-registry_1.0.0_amd64.deb", "reg"),
        ] {
            std::fs::write(fx.pkgs.join(name), body).unwrap();
        }
        let (st, h, script) = get(&fx.state, "/install.sh", Some("reg.example:7700")).await;
        assert_eq!(st, StatusCode::OK, "{script}");
        assert!(h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/x-shellscript"));
        assert!(
            script.contains("REGISTRY='https://reg.example:7700'"),
            "{script}"
        );
        assert!(script.contains(&format!("CA_PIN='{pin}'")));
        let offered = format!(
            "PACKAGES='amd64 steward-agent_0.10.0_amd64.deb {}\narm64 steward-agent_0.1.0_arm64.deb {}'",
            sha("new"),
            sha("arm")
        );
        assert!(script.contains(&offered), "{script}");
        assert!(!script.contains("@@"), "a placeholder was left: {script}");
        let (code, out) = run_sh(&script, &["--help"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("https://reg.example:7700/install.sh"), "{out}");
        let (code, out) = run_sh(&script, &["--bogus"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("unknown option --bogus"), "{out}");
        let (code, out) = run_sh(&script, &["--token", "a'b"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("the token may hold only"), "{out}");

        // A Host header that could smuggle shell into the script is refused.
        let (st, _, body) = get(&fx.state, "/install.sh", Some("x';id;'")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    }

    #[tokio::test]
    async fn install_script_uses_public_url_and_fails_loudly_without_packages() {
        let fx = fixture(|p| Settings {
            packages_dir: p.join("missing"),
            public_url: Some("http://10.1.2.3:7700".into()),
            ..Default::default()
        })
        .await;
        let (st, _, body) = get(&fx.state, "/v1/packages", None).await;
        assert_eq!((st, body.as_str()), (StatusCode::OK, "[]"));
        let (st, _, script) = get(&fx.state, "/install.sh", Some("ignored:1")).await;
        assert_eq!(st, StatusCode::OK);
        let (code, out) = run_sh(&script, &["--token", "t.x"]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("http://10.1.2.3:7700 has no steward-agent package"),
            "{out}"
        );
        assert!(out.contains("/missing"), "{out}");

        std::fs::create_dir(fx.pkgs.join("missing")).unwrap();
        std::fs::write(fx.pkgs.join("missing/steward-agent_1_amd64.deb"), "x").unwrap();
        let (_, _, script) = get(&fx.state, "/install.sh", None).await;
        assert!(
            script.contains("REGISTRY='http://10.1.2.3:7700'"),
            "{script}"
        );
        assert!(script.contains("CA_PIN=''"), "{script}");
    }
}
