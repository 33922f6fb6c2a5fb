//! Payload path policy: which target paths this node accepts (pure and lexical:
//! [`check_path`]) and the walk to a target's directory that refuses symbolic links on the way
//! ([`open_dir`]: `openat` with `O_NOFOLLOW` one component at a time from the allowed root, so
//! nothing inside the root can redirect a deploy outside it).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::PayloadError;

/// A payload path accepted by the policy: the allowed root it lies under, the directories
/// between the root and the file, and the file's own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The full path, as given in the spec.
    pub path: PathBuf,
    /// The allowed root (from `policy.payload_roots`) the path lies under.
    pub root: PathBuf,
    /// Directory names between the root and the file.
    pub dirs: Vec<OsString>,
    /// The file's name.
    pub file_name: OsString,
}

impl Target {
    /// Name of the temporary file a deploy writes next to the target before renaming it.
    pub fn temp_name(&self) -> OsString {
        let mut n = OsString::from(".");
        n.push(&self.file_name);
        n.push(".steward-tmp");
        n
    }
}

fn refused(path: &str, reason: impl Into<String>) -> PayloadError {
    PayloadError::PathRefused {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Checks `path` against the allowed roots (lexically: absolute, no `..`, strictly under one
/// root; the longest matching root wins). Nothing on disk is read.
pub fn check_path(path: &str, roots: &[PathBuf]) -> Result<Target, PayloadError> {
    if roots.is_empty() {
        return Err(refused(
            path,
            "this node allows no payload paths (policy.payload_roots is empty); add a directory \
             such as \"/opt/payloads\" to policy.payload_roots in the agent's config",
        ));
    }
    if path.contains('\0') {
        return Err(refused(path, "the path contains a NUL byte"));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(refused(path, "the path is not absolute"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refused(path, "the path contains '..'"));
    }
    if path.ends_with('/') {
        return Err(refused(path, "the path ends with '/'"));
    }
    let root = roots
        .iter()
        .filter(|r| r.is_absolute() && !r.components().any(|c| c == Component::ParentDir))
        .filter(|r| p.starts_with(r) && p.components().count() > r.components().count())
        .max_by_key(|r| r.components().count())
        .ok_or_else(|| {
            refused(
                path,
                format!(
                    "the path is not under an allowed payload root (policy.payload_roots = {roots:?})"
                ),
            )
        })?;
    let rel: Vec<OsString> = p
        .strip_prefix(root)
        .map_err(|_| refused(path, "the path is not under its root"))?
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let Some((file_name, dirs)) = rel.split_last() else {
        return Err(refused(path, "the path names no file under its root"));
    };
    Ok(Target {
        path: p.to_path_buf(),
        root: root.clone(),
        dirs: dirs.to_vec(),
        file_name: file_name.clone(),
    })
}

/// Opens the target's directory, walking from its root one component at a time without
/// following symbolic links. With `create`, missing directories are made (0755); without,
/// `Ok(None)` means a directory on the way does not exist (so neither does the file).
///
/// The root itself is opened normally: it is the operator's choice and may be a link.
pub fn open_dir(t: &Target, create: bool) -> Result<Option<OwnedFd>, PayloadError> {
    let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut cur = match rustix::fs::openat(CWD, &t.root, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) if create => {
            return Err(PayloadError::RootMissing {
                root: t.root.clone(),
            })
        }
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(PayloadError::io("open", &t.root, e.into())),
    };
    let mut so_far = t.root.clone();
    for d in &t.dirs {
        so_far.push(d);
        let mut made = false;
        loop {
            match rustix::fs::openat(&cur, d, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(fd) => {
                    cur = fd;
                    break;
                }
                Err(Errno::NOENT) if create && !made => {
                    match rustix::fs::mkdirat(&cur, d, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => made = true,
                        Err(e) => {
                            return Err(PayloadError::io("create directory", &so_far, e.into()))
                        }
                    }
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let st = rustix::fs::statat(&cur, d, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| PayloadError::io("inspect", &so_far, e.into()))?;
                    return Err(
                        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                            PayloadError::SymlinkInPath {
                                path: t.path.clone(),
                                link: so_far,
                            }
                        } else {
                            PayloadError::NotADirectory {
                                path: t.path.clone(),
                                what: so_far,
                            }
                        },
                    );
                }
                Err(e) => return Err(PayloadError::io("open", &so_far, e.into())),
            }
        }
    }
    Ok(Some(cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Vec<PathBuf> {
        vec![PathBuf::from("/opt/payloads"), PathBuf::from("/srv")]
    }

    #[test]
    fn paths_are_checked_lexically() {
        // (path, Ok((root, dirs, file)) or Err(fragment of the reason))
        type Want = Result<(&'static str, &'static [&'static str], &'static str), &'static str>;
        let cases: &[(&str, Want)] = &[
            ("/opt/payloads/a.bin", Ok(("/opt/payloads", &[], "a.bin"))),
            (
                "/opt/payloads/x/y/a",
                Ok(("/opt/payloads", &["x", "y"], "a")),
            ),
            ("/opt/payloads/./x/a", Ok(("/opt/payloads", &["x"], "a"))),
            ("/srv/tool", Ok(("/srv", &[], "tool"))),
            ("/opt/payloads/../etc/passwd", Err("'..'")),
            ("/opt/payloads/x/../../etc/shadow", Err("'..'")),
            ("/etc/passwd", Err("not under an allowed payload root")),
            ("/opt/payloadsX/a", Err("not under an allowed payload root")),
            ("/opt/payloads", Err("not under an allowed payload root")),
            ("/opt/payloads/", Err("ends with '/'")),
            ("opt/payloads/a", Err("not absolute")),
            ("/opt/payloads/a\0b", Err("NUL")),
        ];
        for (path, want) in cases {
            let got = check_path(path, &roots());
            match (want, got) {
                (Ok((root, dirs, file)), Ok(t)) => {
                    assert_eq!(t.root, PathBuf::from(root), "{path}");
                    let d: Vec<OsString> = dirs.iter().map(OsString::from).collect();
                    assert_eq!(t.dirs, d, "{path}");
                    assert_eq!(t.file_name, OsString::from(file), "{path}");
                }
                (Err(frag), Err(e)) => {
                    let s = e.to_string();
                    assert!(s.contains(frag), "{path}: {s}");
                    assert!(s.contains("refused"), "{path}: {s}");
                }
                (w, g) => panic!("{path}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn no_roots_refuses_everything_with_the_setting_named() {
        let e = check_path("/opt/a", &[]).unwrap_err().to_string();
        assert!(e.contains("policy.payload_roots"), "{e}");
    }

    #[test]
    fn longest_root_wins() {
        let r = vec![PathBuf::from("/opt"), PathBuf::from("/opt/deep")];
        assert_eq!(
            check_path("/opt/deep/a", &r).unwrap().root,
            PathBuf::from("/opt/deep")
        );
    }

    #[test]
    fn symlinked_parents_are_refused_and_dirs_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        let roots = vec![root.clone()];

        let t = check_path(root.join("link/a").to_str().unwrap(), &roots).unwrap();
        let e = open_dir(&t, true).unwrap_err();
        assert!(matches!(e, PayloadError::SymlinkInPath { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());

        let t = check_path(root.join("file/a").to_str().unwrap(), &roots).unwrap();
        let e = open_dir(&t, true).unwrap_err();
        assert!(matches!(e, PayloadError::NotADirectory { .. }), "{e}");

        let t = check_path(root.join("new/deeper/a").to_str().unwrap(), &roots).unwrap();
        assert!(open_dir(&t, false).unwrap().is_none());
        assert!(open_dir(&t, true).unwrap().is_some());
        assert!(root.join("new/deeper").is_dir());
    }
}
