//! Attestation: what is at a payload's path and its sha256, cheaply. Each resync stats the
//! file (without following a link); when size, mtime, ctime, inode and device match what was
//! seen at the last full hash, and that hash is younger than `attest_rehash_secs`, the hash is
//! reused; otherwise the file is hashed again in full ([`hash_reader`], 1 MiB reads; sha2 uses
//! the CPU's SHA extensions when it has them).

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::plan::OnDisk;
use super::PayloadError;

/// Read size of the hashing loop.
pub const HASH_BUF: usize = 1 << 20;

/// What a stat says about a file: enough to notice any change without reading it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileMeta {
    pub fn of(st: &rustix::fs::Stat) -> Self {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        FileMeta {
            size: u64::try_from(st.st_size).unwrap_or(0),
            dev: st.st_dev,
            ino: st.st_ino,
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }

    /// Same content as far as a stat can tell (mode and owner aside).
    pub fn same_content(&self, o: &FileMeta) -> bool {
        (self.size, self.dev, self.ino, self.mtime_ns, self.ctime_ns)
            == (o.size, o.dev, o.ino, o.mtime_ns, o.ctime_ns)
    }
}

/// A full hash of a file, and when it was made (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashed {
    pub sha256: String,
    pub meta: FileMeta,
    pub at: u64,
}

/// Hashes everything `r` yields; returns the hex sha256 and the byte count.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// The sha256 of a file (hex) and its size.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    hash_reader(std::fs::File::open(path)?)
}

/// The result of looking at one payload's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub on_disk: OnDisk,
    /// The fresh hash when one was made or reused (regular files only).
    pub hashed: Option<Hashed>,
    /// True when the file was read in full this time.
    pub rehashed: bool,
}

/// Looks at `name` in the directory `dir` (`None`: the directory does not exist). `last` is the
/// previous full hash of this path; it is reused when the file did not change and is younger
/// than `rehash_secs`.
pub fn observe(
    dir: Option<&OwnedFd>,
    name: &OsStr,
    display: &Path,
    last: Option<&Hashed>,
    rehash_secs: u64,
    now: u64,
) -> Result<Seen, PayloadError> {
    let missing = Seen {
        on_disk: OnDisk::Missing,
        hashed: None,
        rehashed: false,
    };
    let Some(dir) = dir else { return Ok(missing) };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(missing),
        Err(Errno::LOOP) => {
            return Ok(Seen {
                on_disk: OnDisk::Other("symbolic link"),
                hashed: None,
                rehashed: false,
            })
        }
        Err(e) => return Err(PayloadError::io("open", display, e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| PayloadError::io("stat", display, e.into()))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        let what = match kind {
            FileType::Directory => "directory",
            FileType::Fifo => "named pipe",
            FileType::Socket => "socket",
            _ => "device or special file",
        };
        return Ok(Seen {
            on_disk: OnDisk::Other(what),
            hashed: None,
            rehashed: false,
        });
    }
    let meta = FileMeta::of(&st);
    if let Some(l) = last {
        if l.meta.same_content(&meta) && now.saturating_sub(l.at) < rehash_secs {
            return Ok(Seen {
                on_disk: OnDisk::File(l.sha256.clone()),
                hashed: Some(Hashed { meta, ..l.clone() }),
                rehashed: false,
            });
        }
    }
    let file = std::fs::File::from(fd);
    let (sha256, _) = hash_reader(&file).map_err(|e| PayloadError::io("read", display, e))?;
    // A write during the hash shows in a new stat: then the next pass hashes again.
    let after = rustix::fs::fstat(&file)
        .map(|s| FileMeta::of(&s))
        .unwrap_or_default();
    let meta = if after.same_content(&meta) {
        meta
    } else {
        FileMeta::default()
    };
    Ok(Seen {
        on_disk: OnDisk::File(sha256.clone()),
        hashed: Some(Hashed {
            sha256,
            meta,
            at: now,
        }),
        rehashed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dirfd(p: &Path) -> OwnedFd {
        rustix::fs::openat(
            rustix::fs::CWD,
            p,
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn known_hash() {
        let (h, n) = hash_reader(&b"abc"[..]).unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn fast_check_reuses_then_notices_changes_and_ages() {
        let dir = tempfile::tempdir().unwrap();
        let fd = dirfd(dir.path());
        let name = OsStr::new("f");
        let p = dir.path().join("f");
        let obs =
            |last: Option<&Hashed>, now| observe(Some(&fd), name, &p, last, 100, now).unwrap();
        assert_eq!(obs(None, 0).on_disk, OnDisk::Missing);
        std::fs::write(&p, b"one").unwrap();
        let first = obs(None, 1000);
        assert!(first.rehashed);
        let h1 = first.hashed.clone().unwrap();
        let again = obs(Some(&h1), 1050);
        assert!(!again.rehashed, "unchanged and young: no re-hash");
        assert_eq!(again.on_disk, first.on_disk);
        let old = obs(Some(&h1), 1100);
        assert!(old.rehashed, "older than the period: re-hashed");
        // Same size, different content, mtime put back: ctime still moves.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"two").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let changed = obs(Some(&h1), 1010);
        assert!(changed.rehashed);
        assert_ne!(changed.on_disk, first.on_disk);
        // Mode changes alone do not force a re-hash... but they move ctime, so they do.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let h2 = changed.hashed.unwrap();
        assert!(obs(Some(&h2), 1010).rehashed);
    }

    #[test]
    fn links_and_dirs_are_not_files() {
        let dir = tempfile::tempdir().unwrap();
        let fd = dirfd(dir.path());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("l")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let o = |n: &str| {
            observe(Some(&fd), OsStr::new(n), Path::new(n), None, 10, 0)
                .unwrap()
                .on_disk
        };
        assert_eq!(o("l"), OnDisk::Other("symbolic link"));
        assert_eq!(o("d"), OnDisk::Other("directory"));
    }
}
