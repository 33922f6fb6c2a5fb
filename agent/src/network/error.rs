//! The network driver's one error type. Every message says what was attempted on which link,
//! what the kernel answered, and, for the answers we know, what to do about it.

/// What went wrong talking to the kernel over netlink (or to nftables through `nft`).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket: {reason}")]
    Connect { reason: String },

    /// A dump (links, addresses, bridge VLANs, route lookup) failed.
    #[error("netlink: {what} failed: {reason}")]
    Observe { what: String, reason: String },

    /// A write was refused by the kernel; `hint` says what usually helps.
    #[error("{op} failed: {reason}{hint}")]
    Kernel {
        op: String,
        reason: String,
        hint: String,
        errno: i32,
    },

    /// A link an action needs is not there (e.g. a port or parent removed meanwhile).
    #[error("{op} failed: link {link} does not exist")]
    NoSuchLink { op: String, link: String },

    /// `nft` could not be run or refused the agent's table (`nft.rs`); `hint` as for `Kernel`.
    #[error("nftables: {op} failed: {reason}{hint}")]
    Nft {
        op: String,
        reason: String,
        hint: String,
    },
}

impl NetworkError {
    /// The kernel's error number, for a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetworkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A hint for the errno the kernel answered `op` with (empty when we have none).
pub(super) fn hint(errno: i32, op: &str) -> String {
    use nix::errno::Errno;
    let e = Errno::from_raw(errno);
    let text = match e {
        Errno::EPERM | Errno::EACCES => {
            "the agent needs CAP_NET_ADMIN (run it as root)".to_string()
        }
        Errno::EOPNOTSUPP if op.contains("VLAN interface") => {
            "the kernel has no 802.1Q support; load the 8021q module (modprobe 8021q)".into()
        }
        Errno::EOPNOTSUPP if op.contains("vlan") || op.contains("VLAN") => {
            "the kernel's bridge has no VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)".into()
        }
        Errno::EOPNOTSUPP => "the kernel does not support this operation".into(),
        Errno::EEXIST => "a link or address with that name already exists".into(),
        Errno::ENODEV => "the link does not exist (any more)".into(),
        Errno::ERANGE | Errno::EINVAL if op.contains("MTU") || op.contains("mtu") => {
            "the MTU is out of range for this link (a VLAN's MTU cannot exceed its parent's)".into()
        }
        Errno::EBUSY => "the link is busy (already a port of another bridge or bond?)".into(),
        Errno::ELOOP => "that would make a loop of bridge ports".into(),
        _ => String::new(),
    };
    if text.is_empty() {
        text
    } else {
        format!(" ({text})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_actionable() {
        let e = NetworkError::Kernel {
            op: "create VLAN interface eth1.142".into(),
            reason: "Operation not supported (os error 95)".into(),
            hint: hint(95, "create VLAN interface eth1.142"),
            errno: 95,
        };
        assert_eq!(
            e.to_string(),
            "create VLAN interface eth1.142 failed: Operation not supported (os error 95) (the \
             kernel has no 802.1Q support; load the 8021q module (modprobe 8021q))"
        );
        assert!(hint(1, "create bridge br0").contains("CAP_NET_ADMIN"));
        assert!(hint(95, "add VLAN 20 to port eth2").contains("VLAN filtering"));
        assert_eq!(hint(12345, "x"), "");
        assert_eq!(e.errno(), Some(95));
    }
}
