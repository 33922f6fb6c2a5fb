//! Installing a payload from the blob cache: copy into a temporary file next to the target
//! (same directory, so the rename is atomic), hashing every byte written and refusing on a
//! mismatch, fsync, owner and mode on the still-private temp file, atomic `renameat` over the
//! target, fsync of the directory. A crash at any point leaves the target as it was or
//! complete; the temp file has a fixed name and is cleared by the next attempt.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::attest::{FileMeta, HASH_BUF};
use super::policy::Target;
use super::PayloadError;

/// Mode when the spec gives none.
pub const DEFAULT_MODE: u32 = 0o644;

/// Parses an octal mode such as `"0644"` (validated by the registry already).
pub fn parse_mode(m: Option<&str>) -> Result<u32, PayloadError> {
    match m {
        None => Ok(DEFAULT_MODE),
        Some(s) => u32::from_str_radix(s, 8)
            .ok()
            .filter(|v| *v <= 0o7777)
            .ok_or_else(|| PayloadError::BadMode(s.to_string())),
    }
}

/// Resolves `user` or `user:group` (names or numeric ids) on this host.
pub fn resolve_owner(o: Option<&str>) -> Result<(Option<u32>, Option<u32>), PayloadError> {
    let Some(o) = o else { return Ok((None, None)) };
    let fail = |reason: String| PayloadError::BadOwner {
        owner: o.to_string(),
        reason,
    };
    let (user, group) = match o.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (o, None),
    };
    let uid = match user.parse::<u32>() {
        Ok(n) => n,
        Err(_) => nix::unistd::User::from_name(user)
            .map_err(|e| fail(format!("looking up user {user}: {e}")))?
            .ok_or_else(|| fail(format!("there is no user {user:?} on this host")))?
            .uid
            .as_raw(),
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(g)
                .map_err(|e| fail(format!("looking up group {g}: {e}")))?
                .ok_or_else(|| fail(format!("there is no group {g:?} on this host")))?
                .gid
                .as_raw(),
        }),
    };
    Ok((Some(uid), gid))
}

/// How to install one file.
pub struct Install<'a> {
    pub target: &'a Target,
    /// The verified blob in the cache.
    pub blob: &'a Path,
    pub sha256: &'a str,
    pub mode: u32,
    pub owner: (Option<u32>, Option<u32>),
}

/// Copies the blob to the target as described in the module docs; returns the installed
/// file's metadata. On a hash mismatch nothing is replaced.
pub fn install(dir: &OwnedFd, i: &Install<'_>) -> Result<FileMeta, PayloadError> {
    let tmp = i.target.temp_name();
    let tmp_path = i.target.path.with_file_name(&tmp);
    let path = &i.target.path;
    clear(dir, &tmp, &tmp_path)?;
    let fd = rustix::fs::openat(
        dir,
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| PayloadError::io("create", &tmp_path, e.into()))?;
    let mut out = std::fs::File::from(fd);
    let res = (|| {
        let mut src =
            std::fs::File::open(i.blob).map_err(|e| PayloadError::io("open", i.blob, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; HASH_BUF];
        let mut n = 0u64;
        loop {
            let k = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PayloadError::io("read", i.blob, e)),
            };
            h.update(&buf[..k]);
            out.write_all(&buf[..k])
                .map_err(|e| PayloadError::io("write", &tmp_path, e))?;
            n += k as u64;
        }
        let actual = hex::encode(h.finalize());
        if actual != i.sha256 {
            return Err(PayloadError::HashMismatch {
                what: "cached blob",
                expected: i.sha256.to_string(),
                actual,
                bytes: n,
            });
        }
        out.sync_all()
            .map_err(|e| PayloadError::io("fsync", &tmp_path, e))?;
        if i.owner.0.is_some() || i.owner.1.is_some() {
            std::os::unix::fs::fchown(&out, i.owner.0, i.owner.1)
                .map_err(|e| PayloadError::io("chown", &tmp_path, e))?;
        }
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(&out, Mode::from_raw_mode(i.mode))
            .map_err(|e| PayloadError::io("chmod", &tmp_path, e.into()))?;
        rustix::fs::renameat(dir, &tmp, dir, &i.target.file_name)
            .map_err(|e| PayloadError::io("rename over", path, e.into()))?;
        rustix::fs::fsync(dir)
            .map_err(|e| PayloadError::io("fsync the directory of", path, e.into()))?;
        let st = rustix::fs::fstat(&out).map_err(|e| PayloadError::io("stat", path, e.into()))?;
        Ok(FileMeta::of(&st))
    })();
    if res.is_err() {
        let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
    }
    res
}

/// Removes `name` from `dir` when it is there (and a leftover temp file of it).
pub fn remove(dir: &OwnedFd, t: &Target) -> Result<(), PayloadError> {
    clear(dir, &t.temp_name(), &t.path.with_file_name(t.temp_name()))?;
    clear(dir, &t.file_name, &t.path)?;
    rustix::fs::fsync(dir)
        .map_err(|e| PayloadError::io("fsync the directory of", &t.path, e.into()))
}

fn clear(dir: &OwnedFd, name: &OsStr, display: &Path) -> Result<(), PayloadError> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(PayloadError::io("remove", display, e.into())),
    }
}

/// Puts mode and owner back on an installed file when they differ; true when it changed them.
pub fn fix_mode_owner(
    dir: &OwnedFd,
    name: &OsStr,
    display: &Path,
    mode: u32,
    owner: (Option<u32>, Option<u32>),
    meta: &FileMeta,
) -> Result<bool, PayloadError> {
    let owner_ok = owner.0.is_none_or(|u| u == meta.uid) && owner.1.is_none_or(|g| g == meta.gid);
    if meta.mode == mode && owner_ok {
        return Ok(false);
    }
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| PayloadError::io("open", display, e.into()))?;
    let f = std::fs::File::from(fd);
    if !owner_ok {
        std::os::unix::fs::fchown(&f, owner.0, owner.1)
            .map_err(|e| PayloadError::io("chown", display, e))?;
    }
    rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
        .map_err(|e| PayloadError::io("chmod", display, e.into()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::policy::{check_path, open_dir};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn modes_and_owners() {
        assert_eq!(parse_mode(None).unwrap(), 0o644);
        assert_eq!(parse_mode(Some("0755")).unwrap(), 0o755);
        assert_eq!(parse_mode(Some("4750")).unwrap(), 0o4750);
        assert!(parse_mode(Some("99")).is_err());
        assert_eq!(resolve_owner(None).unwrap(), (None, None));
        assert_eq!(resolve_owner(Some("0:0")).unwrap(), (Some(0), Some(0)));
        assert_eq!(resolve_owner(Some("root")).unwrap(), (Some(0), None));
        let e = resolve_owner(Some("no-such-user-xyz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-user-xyz"), "{e}");
    }

    #[test]
    fn installs_atomically_and_refuses_a_bad_blob() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, b"hello").unwrap();
        let sha = super::super::attest::hash_file(&blob).unwrap().0;
        let t = check_path(
            root.join("sub/f").to_str().unwrap(),
            std::slice::from_ref(&root),
        )
        .unwrap();
        let d = open_dir(&t, true).unwrap().unwrap();
        std::fs::write(root.join("sub/f"), b"old").unwrap();
        let mut i = Install {
            target: &t,
            blob: &blob,
            sha256: &sha,
            mode: 0o640,
            owner: (None, None),
        };
        let bad = "0".repeat(64);
        i.sha256 = &bad;
        let e = install(&d, &i).unwrap_err();
        assert!(matches!(e, PayloadError::HashMismatch { .. }), "{e}");
        assert_eq!(std::fs::read(root.join("sub/f")).unwrap(), b"old");
        assert!(!root.join("sub/.f.steward-tmp").exists(), "no temp left");
        i.sha256 = &sha;
        let meta = install(&d, &i).unwrap();
        assert_eq!(std::fs::read(root.join("sub/f")).unwrap(), b"hello");
        let m = std::fs::metadata(root.join("sub/f")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta.size, 5);
        assert_eq!(meta.mode, 0o640);
        std::fs::set_permissions(root.join("sub/f"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        let mut changed = meta;
        changed.mode = 0o666;
        assert!(fix_mode_owner(&d, &t.file_name, &t.path, 0o640, (None, None), &changed).unwrap());
        let m = std::fs::metadata(root.join("sub/f")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
        remove(&d, &t).unwrap();
        assert!(!root.join("sub/f").exists());
    }
}
