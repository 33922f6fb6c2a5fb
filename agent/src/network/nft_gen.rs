//! The kernel's nftables ruleset generation id: one `NFT_MSG_GETGEN` request (subsystem
//! `NFNL_SUBSYS_NFTABLES`) on a `NETLINK_NETFILTER` socket, answered by `NFT_MSG_NEWGEN` with
//! `NFTA_GEN_ID`. Every committed nftables transaction in the network namespace moves it, by
//! anyone (`nft`, `iptables-nft`, Docker), so an id equal to the one read after the agent's own
//! write or look says nobody changed any table since (`nft_known.rs` decides with it).
//!
//! The message types are `netlink-packet-netfilter`'s (rust-netlink, the family of the
//! `rtnetlink` crate the agent already uses; it has `NfTablesMessage::GetGen`), sent through
//! `netlink-sys` on a socket the agent keeps open ([`Reader`]): no process is spawned, a few
//! microseconds in all.

use std::io;
use std::os::unix::fs::MetadataExt;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{GenAttribute, GenMessage, NfTablesMessage};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// The ruleset generation now, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub id: u32,
    /// This boot and this network namespace (`<boot id>/<netns inode>`): a generation id only
    /// means something within them (it starts afresh in a new namespace and after a reboot,
    /// when the table is gone).
    pub at: String,
}

/// The id the kernel gives the commit after the one with id `id` (it skips 0).
pub fn next(id: u32) -> u32 {
    match id.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// A `NETLINK_NETFILTER` socket kept open for generation reads (a running agent reads two a
/// pass), and the place it reads in.
pub struct Reader {
    socket: Socket,
    at: String,
    seq: u32,
}

impl Reader {
    pub fn open() -> io::Result<Reader> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // The kernel answers within `send` (nfnetlink handles a request in the sender's
        // context), so the answer is already queued: a non-blocking read never waits.
        socket.set_non_blocking(true)?;
        Ok(Reader {
            socket,
            at: place()?,
            seq: 0,
        })
    }

    /// The current generation (an error: no nf_tables, no `CAP_NET_ADMIN`, no such netlink
    /// family).
    pub fn current(&mut self) -> io::Result<Generation> {
        self.seq = self.seq.wrapping_add(1);
        let id = request(&self.socket, self.seq)?;
        Ok(Generation {
            id,
            at: self.at.clone(),
        })
    }
}

/// `<boot id>/<netns inode>` of this process.
fn place() -> io::Result<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let netns = std::fs::metadata("/proc/self/ns/net")?.ino();
    Ok(format!("{}/{netns}", boot.trim()))
}

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One `NFT_MSG_GETGEN` with sequence number `seq` and its answer's `NFTA_GEN_ID` (answers to
/// earlier requests left unread, after an error, are skipped).
fn request(socket: &Socket, seq: u32) -> io::Result<u32> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let get = NfTablesMessage::GetGen(GenMessage { attributes: vec![] });
    let nf = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0);
    let mut msg = NetlinkMessage::new(header, NetfilterMessage::new(nf, get).into());
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;
    loop {
        let mut rx = Vec::with_capacity(4096);
        let n = socket.recv(&mut rx, 0)?;
        let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&rx[..n.min(rx.len())])
            .map_err(|e| bad(format!("unreadable NFT_MSG_NEWGEN: {e}")))?;
        if reply.header.sequence_number == seq {
            return generation_id(reply.payload);
        }
    }
}

fn generation_id(payload: NetlinkPayload<NetfilterMessage>) -> io::Result<u32> {
    match payload {
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewGen(g)),
            ..
        }) => (g.attributes.iter())
            .find_map(|a| match a {
                GenAttribute::Id(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| bad("NFT_MSG_NEWGEN without NFTA_GEN_ID")),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(bad(format!(
            "unexpected answer to NFT_MSG_GETGEN: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_after_the_last_is_one() {
        assert_eq!(next(7), 8);
        assert_eq!(next(u32::MAX), 1);
    }
}
