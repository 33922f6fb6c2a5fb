//! TAP devices for VM NICs, made and removed with the tun driver's ioctls (through nix):
//! `TUNSETIFF` (IFF_TAP | IFF_NO_PI) then `TUNSETPERSIST 1`, so the tap outlives the file
//! descriptor and QEMU opens it by name (`-netdev tap,ifname=...`). Removal is the reverse:
//! attach by name, `TUNSETPERSIST 0`, close. Enslaving a tap to a bridge (and its VLAN) is the
//! network module's job (`network::attach_port`), never done here.
//!
//! This is the agent's only `unsafe` code (the workspace lint is `deny`, relaxed here): an
//! ioctl on a file descriptor we own, with a fully initialised `ifreq`.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::libc;

use super::VmError;

nix::ioctl_write_int!(tun_set_iff, b'T', 202);
nix::ioctl_write_int!(tun_set_persist, b'T', 203);

/// The tap name for NIC `index` of VM `vm` on node `node`: `stv` + 8 hex digits + `n` +
/// index (at most 14 bytes, under the kernel's 15).
pub fn tap_name(node: &str, vm: &str, index: usize) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{node}\0{vm}").as_bytes());
    format!("stv{}n{index}", &hex::encode(h)[..8])
}

/// True when a network interface of this name exists in the agent's namespace.
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The bridge `name` is a port of, if any (from sysfs).
pub fn master(name: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(name).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
}

/// Opens /dev/net/tun attached to the tap `name`; the inner `Err` is TUNSETIFF's errno (EBUSY:
/// another process holds the tap).
fn attach(name: &str) -> Result<Result<std::fs::File, nix::errno::Errno>, VmError> {
    let err = |what: &str, e: std::io::Error| VmError::Tap {
        tap: name.to_string(),
        reason: format!("{what}: {e}"),
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(VmError::Tap {
            tap: name.to_string(),
            reason: "name must be 1-15 bytes".into(),
        });
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| err("opening /dev/net/tun (is the tun driver available?)", e))?;
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the fd is open on /dev/net/tun and `req` lives for the call; TUNSETIFF reads
    // (and may write back the name into) the ifreq it points to.
    Ok(unsafe { tun_set_iff(f.as_raw_fd(), std::ptr::addr_of_mut!(req) as u64) }.map(|_| f))
}

/// Creates the persistent tap `name` (or takes the existing one: the caller checked that it
/// is ours). A tap held by another process (EBUSY) is the inner `Err`: a QEMU that was just
/// killed can still hold it while it exits, so a start waits for it to let go
/// (`vm::create_tap`) rather than failing and costing the VM a rung of its ladder.
pub fn create_or_busy(name: &str) -> Result<Result<(), nix::errno::Errno>, VmError> {
    let f = match attach(name)? {
        Ok(f) => f,
        Err(nix::errno::Errno::EBUSY) => return Ok(Err(nix::errno::Errno::EBUSY)),
        Err(e) => {
            return Err(VmError::Tap {
                tap: name.to_string(),
                reason: format!("TUNSETIFF: {e}"),
            })
        }
    };
    // SAFETY: TUNSETPERSIST takes an integer argument; the fd is ours.
    unsafe { tun_set_persist(f.as_raw_fd(), 1) }.map_err(|e| VmError::Tap {
        tap: name.to_string(),
        reason: format!("TUNSETPERSIST: {e}"),
    })?;
    Ok(Ok(()))
}

/// Removes the tap `name` (succeeds when it does not exist).
pub fn remove(name: &str) -> Result<(), VmError> {
    if !exists(name) {
        return Ok(());
    }
    let f = attach(name)?.map_err(|e| VmError::Tap {
        tap: name.to_string(),
        reason: format!("TUNSETIFF: {e}"),
    })?;
    // SAFETY: as in `create`.
    unsafe { tun_set_persist(f.as_raw_fd(), 0) }.map_err(|e| VmError::Tap {
        tap: name.to_string(),
        reason: format!("TUNSETPERSIST 0: {e}"),
    })?;
    drop(f); // the last reference: the kernel removes the device
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_stable_short_and_distinct() {
        let a = tap_name("node-1", "web", 0);
        assert_eq!(a, tap_name("node-1", "web", 0));
        assert!(a.len() <= 15 && a.starts_with("stv"), "{a}");
        assert_ne!(a, tap_name("node-2", "web", 0));
        assert_ne!(a, tap_name("node-1", "web", 1));
        assert_eq!(tap_name("n", "vm", 12).len(), 14);
    }
}
