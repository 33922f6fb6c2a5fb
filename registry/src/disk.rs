//! The data dir's disk: free space, "out of space" errors, and the reserve file (a ballast, as
//! CockroachDB keeps one) that the store releases when the disk fills up, so that deletions —
//! the way to free space — can still be written, and that it re-creates once space is back.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the reserve file in the data dir.
pub const RESERVE_FILE: &str = "store.reserve";

/// Room wanted beyond the reserve before the store counts as writable again.
pub const MIN_HEADROOM: u64 = 1024 * 1024;

/// True for "no space left on device" and "disk quota exceeded", including the copies sled
/// makes of an I/O error (same kind, the original in the message).
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    let enospc = nix::errno::Errno::ENOSPC as i32;
    let edquot = nix::errno::Errno::EDQUOT as i32;
    matches!(e.raw_os_error(), Some(c) if c == enospc || c == edquot)
        || e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || e.to_string().contains(&format!("os error {enospc}"))
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(s.blocks_available().saturating_mul(s.fragment_size()))
}

/// The reserve file of a data dir.
#[derive(Debug, Clone)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    pub fn new(data_dir: &Path, bytes: u64) -> Self {
        Self {
            path: data_dir.join(RESERVE_FILE),
            bytes,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// True when the reserve file is in place (or no reserve is configured).
    pub fn held(&self) -> bool {
        self.bytes == 0 || std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.bytes)
    }

    /// Deletes the reserve file, returning its space to the filesystem. True when it existed.
    pub fn release(&self) -> bool {
        let existed = std::fs::remove_file(&self.path).is_ok();
        if existed {
            tracing::warn!(path = %self.path.display(), bytes = self.bytes,
                "released the store's disk reserve: the disk is full");
        }
        existed
    }

    /// Creates the reserve file with its blocks allocated (not a sparse file). A partial file
    /// left by an error is removed.
    pub fn create(&self) -> std::io::Result<()> {
        if self.bytes == 0 || self.held() {
            return Ok(());
        }
        let res = self.allocate();
        if res.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        res
    }

    fn allocate(&self) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&self.path)?;
        use nix::errno::Errno;
        use std::os::fd::AsRawFd;
        let len = i64::try_from(self.bytes).unwrap_or(i64::MAX);
        match nix::fcntl::posix_fallocate(f.as_raw_fd(), 0, len) {
            Ok(()) => {}
            Err(Errno::EOPNOTSUPP | Errno::EINVAL) => self.write_zeros(&mut f)?,
            Err(e) => return Err(e.into()),
        }
        f.sync_all()
    }

    /// Filesystems without fallocate: write the zeros.
    fn write_zeros(&self, f: &mut std::fs::File) -> std::io::Result<()> {
        {
            let chunk = vec![0u8; 1024 * 1024];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
        }
        Ok(())
    }
}
