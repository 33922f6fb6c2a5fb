//! The link dumps, lean: `RTM_GETLINK` dumps on a plain netlink socket, reading only the
//! attributes wanted straight from the bytes. [`links`] (statistics skipped) reads what the
//! planner needs (name, MTU, alias, master, parent, kind, and the bridge and VLAN settings):
//! decoding every attribute of every link with netlink-packet-route costs several times what
//! the kernel spends on the dump, and the dump is most of what a converged pass does.
//! [`counters`] reads each link's byte counters (`IFLA_STATS64`), kind and peer namespace, and
//! [`nsid_of`] asks (`RTM_GETNSID`) which id this namespace gives another one, for the
//! workloads' activity (`counters.rs`).

use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::error::NetworkError;
use super::types::{ObservedKind, ObservedLink};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_STATS64: u16 = 23;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const IFLA_BR_STP_STATE: u16 = 5;
const IFLA_BR_VLAN_FILTERING: u16 = 7;
const IFLA_BR_VLAN_DEFAULT_PVID: u16 = 39;
const IFLA_VLAN_ID: u16 = 1;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const IFF_UP: u32 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One link before its master's and parent's indexes are resolved to names.
pub(super) struct RawLink {
    pub link: ObservedLink,
    pub master: Option<u32>,
    pub parent: Option<u32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The (type, value) pairs of a run of netlink attributes.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, value))
    })
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|c| *c == 0).next().unwrap_or(&[])).into_owned()
}

/// Whether a link's `IFLA_LINKINFO` says it is a bridge port with the `isolated` flag.
fn port_isolated(info: &[u8]) -> bool {
    let mut bridge_port = false;
    let mut isolated = false;
    for (t, v) in attrs(info) {
        match t {
            IFLA_INFO_SLAVE_KIND => bridge_port = text(v) == "bridge",
            IFLA_INFO_SLAVE_DATA => {
                isolated = attrs(v)
                    .any(|(t, v)| t == IFLA_BRPORT_ISOLATED && v.first().is_some_and(|b| *b != 0))
            }
            _ => {}
        }
    }
    bridge_port && isolated
}

fn kind(info: &[u8]) -> ObservedKind {
    let mut name = String::new();
    let mut data: &[u8] = &[];
    for (t, v) in attrs(info) {
        match t {
            IFLA_INFO_KIND => name = text(v),
            IFLA_INFO_DATA => data = v,
            _ => {}
        }
    }
    match name.as_str() {
        "bridge" => {
            let (mut stp, mut vlan_filtering, mut default_pvid) = (false, false, None);
            for (t, v) in attrs(data) {
                match t {
                    IFLA_BR_STP_STATE => stp = u32_at(v, 0).unwrap_or(0) != 0,
                    IFLA_BR_VLAN_FILTERING => vlan_filtering = v.first().is_some_and(|b| *b != 0),
                    IFLA_BR_VLAN_DEFAULT_PVID => default_pvid = u16_at(v, 0),
                    _ => {}
                }
            }
            ObservedKind::Bridge {
                stp,
                vlan_filtering,
                default_pvid,
            }
        }
        "vlan" => ObservedKind::Vlan {
            parent: None,
            id: attrs(data)
                .find(|(t, _)| *t == IFLA_VLAN_ID)
                .and_then(|(_, v)| u16_at(v, 0))
                .unwrap_or(0),
        },
        _ => ObservedKind::Other(name),
    }
}

/// One `RTM_NEWLINK` payload (ifinfomsg + attributes).
pub(super) fn parse_link(p: &[u8]) -> Option<RawLink> {
    let index = u32_at(p, 4)?;
    let flags = u32_at(p, 8)?;
    let mut l = RawLink {
        link: ObservedLink {
            index,
            name: String::new(),
            kind: ObservedKind::Other(String::new()),
            alias: None,
            mtu: 0,
            up: flags & IFF_UP != 0,
            master: None,
            addresses: Vec::new(),
            vlans: None,
            isolated: false,
        },
        master: None,
        parent: None,
    };
    for (t, v) in attrs(p.get(16..)?) {
        match t {
            IFLA_IFNAME => l.link.name = text(v),
            IFLA_MTU => l.link.mtu = u32_at(v, 0).unwrap_or(0),
            IFLA_LINK => l.parent = u32_at(v, 0).filter(|i| *i != 0),
            IFLA_MASTER => l.master = u32_at(v, 0).filter(|i| *i != 0),
            IFLA_IFALIAS => l.link.alias = Some(text(v)).filter(|s| !s.is_empty()),
            IFLA_LINKINFO => {
                l.link.kind = kind(v);
                l.link.isolated = port_isolated(v);
            }
            _ => {}
        }
    }
    Some(l)
}

/// A link dump request: RTM_GETLINK, dump, with these `IFLA_EXT_MASK` filters.
fn request(seq: u32, ext_mask: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&40u32.to_ne_bytes());
    b.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[0u8; 16]); // ifinfomsg: any family, any link
    b.extend_from_slice(&8u16.to_ne_bytes());
    b.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    b.extend_from_slice(&ext_mask.to_ne_bytes());
    b
}

fn fail(what: &str, reason: impl ToString) -> NetworkError {
    NetworkError::Observe {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// A netlink route socket of the current network namespace, bound and connected to the kernel.
fn socket(what: &str) -> Result<Socket, NetworkError> {
    let mut s = Socket::new(NETLINK_ROUTE).map_err(|e| fail(what, e))?;
    s.bind_auto().map_err(|e| fail(what, e))?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(|e| fail(what, e))?;
    Ok(s)
}

/// Sends `req` on `s` and hands every answer (message type, payload) to `each`, until the end
/// of a dump, an acknowledgement, or `each` returning false (a single answer taken).
fn exchange(
    s: &Socket,
    what: &str,
    req: &[u8],
    mut each: impl FnMut(u16, &[u8]) -> bool,
) -> Result<(), NetworkError> {
    s.send(req, 0).map_err(|e| fail(what, e))?;
    // Large enough for any chunk the kernel sends (it sizes dump chunks to the reader's buffer).
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        buf.clear();
        let n = s.recv(&mut buf, 0).map_err(|e| fail(what, e))?;
        let buf = &buf[..n.min(buf.len())];
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32_at(buf, at).unwrap_or(0) as usize;
            let kind = u16_at(buf, at + 4).unwrap_or(0);
            if len < 16 || at + len > buf.len() {
                return Err(fail(what, "truncated netlink message"));
            }
            let payload = &buf[at + 16..at + len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => match u32_at(payload, 0).unwrap_or(0) as i32 {
                    0 => return Ok(()),
                    code => return Err(fail(what, std::io::Error::from_raw_os_error(code.abs()))),
                },
                _ if !each(kind, payload) => return Ok(()),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// Every link of the current network namespace (blocking; a few milliseconds).
pub(super) fn links() -> Result<Vec<RawLink>, NetworkError> {
    let what = "dump links";
    let mut out = Vec::new();
    let req = request(1, RTEXT_FILTER_SKIP_STATS);
    exchange(&socket(what)?, what, &req, |kind, p| {
        if kind == RTM_NEWLINK {
            out.extend(parse_link(p));
        }
        true
    })?;
    Ok(out)
}

/// One link's byte counters, as the statistics dump shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCounters {
    pub index: u32,
    pub name: String,
    /// `veth`, `tun`, `bridge`, ... (empty for a link without link info).
    pub kind: String,
    /// The id this namespace gives the namespace of the link's peer (a veth's other end), when
    /// it lies in another one.
    pub peer_netns: Option<i32>,
    /// Bytes received on this link. On the host side of a veth or on a tap that is what the
    /// workload behind it sent; what the host sends into it is left out (the host's own IPv6
    /// router solicitations, its neighbours' broadcasts: traffic an idle workload gets too).
    pub bytes: u64,
}

/// One `RTM_NEWLINK` payload of a statistics dump.
fn parse_counters(p: &[u8]) -> Option<LinkCounters> {
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    let mut c = LinkCounters {
        index: u32_at(p, 4)?,
        name: String::new(),
        kind: String::new(),
        peer_netns: None,
        bytes: 0,
    };
    for (t, v) in attrs(p.get(16..)?) {
        match t {
            IFLA_IFNAME => c.name = text(v),
            IFLA_LINKINFO => {
                let kind = attrs(v).find(|(t, _)| *t == IFLA_INFO_KIND);
                c.kind = kind.map(|(_, v)| text(v)).unwrap_or_default();
            }
            IFLA_LINK_NETNSID => c.peer_netns = u32_at(v, 0).map(|n| n as i32),
            // struct rtnl_link_stats64: rx_packets, tx_packets, rx_bytes, tx_bytes, ...
            IFLA_STATS64 => c.bytes = u64_at(v, 16).unwrap_or(0),
            _ => {}
        }
    }
    Some(c)
}

/// Every link of the current network namespace with its byte counters (blocking).
pub(super) fn counters() -> Result<Vec<LinkCounters>, NetworkError> {
    let what = "dump link statistics";
    let mut out = Vec::new();
    exchange(&socket(what)?, what, &request(1, 0), |kind, p| {
        if kind == RTM_NEWLINK {
            out.extend(parse_counters(p));
        }
        true
    })?;
    Ok(out)
}

/// RTM_GETNSID for the namespace open as `fd`.
fn nsid_request(seq: u32, fd: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&28u32.to_ne_bytes());
    b.extend_from_slice(&RTM_GETNSID.to_ne_bytes());
    b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[0u8; 4]); // rtgenmsg: any family, padded
    b.extend_from_slice(&8u16.to_ne_bytes());
    b.extend_from_slice(&NETNSA_FD.to_ne_bytes());
    b.extend_from_slice(&fd.to_ne_bytes());
    b
}

/// The id in an `RTM_NEWNSID` payload; `None` when the namespace has none here (-1).
fn parse_nsid(p: &[u8]) -> Option<i32> {
    let (_, v) = attrs(p.get(4..)?).find(|(t, _)| *t == NETNSA_NSID)?;
    Some(u32_at(v, 0)? as i32).filter(|id| *id >= 0)
}

/// The id the current network namespace gives each namespace in `netns` (files such as
/// `/proc/<pid>/ns/net`), in order; `None` for one it gives no id (nothing of it is seen here).
/// Blocking; one socket for all.
pub(super) fn nsid_of(netns: &[std::fs::File]) -> Result<Vec<Option<i32>>, NetworkError> {
    use std::os::fd::AsRawFd;
    let what = "look up a network namespace id";
    let s = socket(what)?;
    let mut out = Vec::with_capacity(netns.len());
    for (seq, f) in (1..).zip(netns) {
        let mut id = None;
        let fd = f.as_raw_fd() as u32;
        exchange(&s, what, &nsid_request(seq, fd), |kind, p| {
            if kind == RTM_NEWNSID {
                id = parse_nsid(p);
            }
            kind != RTM_NEWNSID
        })?;
        out.push(id);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::Emitable;
    use rtnetlink::packet_route::link::BridgeStpState;
    use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVlan};

    fn bytes(m: rtnetlink::packet_route::link::LinkMessage) -> Vec<u8> {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    #[test]
    fn parses_what_netlink_packet_route_emits() {
        let br = LinkMessageBuilder::<LinkBridge>::new("br0")
            .stp_state(BridgeStpState::KernelStp)
            .vlan_filtering(true)
            .vlan_default_pvid(7)
            .mtu(1400)
            .alias("steward:n1")
            .controller(9)
            .up()
            .index(4)
            .build();
        let l = parse_link(&bytes(br)).unwrap();
        assert_eq!(l.link.index, 4);
        assert_eq!(l.link.name, "br0");
        assert_eq!(l.link.mtu, 1400);
        assert_eq!(l.link.alias.as_deref(), Some("steward:n1"));
        assert!(l.link.up);
        assert_eq!(l.master, Some(9));
        assert_eq!(
            l.link.kind,
            ObservedKind::Bridge {
                stp: true,
                vlan_filtering: true,
                default_pvid: Some(7)
            }
        );

        let v = LinkVlan::new("eth1.5", 2, 5).index(6).build();
        let l = parse_link(&bytes(v)).unwrap();
        assert_eq!(
            l.link.kind,
            ObservedKind::Vlan {
                parent: None,
                id: 5
            }
        );
        assert_eq!(l.parent, Some(2));
        assert!(!l.link.up);

        let plain = LinkUnspec::new_with_name("eth0").index(1).build();
        let l = parse_link(&bytes(plain)).unwrap();
        assert_eq!(l.link.kind, ObservedKind::Other(String::new()));
        assert_eq!(l.link.alias, None);
        assert!(parse_link(&[0u8; 3]).is_none());
    }

    #[test]
    fn request_is_a_link_dump_without_stats() {
        let r = request(7, RTEXT_FILTER_SKIP_STATS);
        assert_eq!(r.len(), 40);
        assert_eq!(u16_at(&r, 4), Some(RTM_GETLINK));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(u32_at(&r, 36), Some(RTEXT_FILTER_SKIP_STATS));
    }

    #[test]
    fn reads_a_veths_counters_and_peer_namespace() {
        use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, Stats64};
        let mut stats = Stats64::default();
        (stats.rx_packets, stats.tx_packets) = (7, 9);
        (stats.rx_bytes, stats.tx_bytes) = (1000, 234);
        let veth = LinkUnspec::new_with_name("veth1")
            .index(12)
            .append_extra_attribute(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]))
            .append_extra_attribute(LinkAttribute::LinkNetNsId(3))
            .append_extra_attribute(LinkAttribute::Stats64(stats))
            .build();
        let c = parse_counters(&bytes(veth)).unwrap();
        let want = LinkCounters {
            index: 12,
            name: "veth1".into(),
            kind: "veth".into(),
            peer_netns: Some(3),
            bytes: 1000,
        };
        assert_eq!(c, want);

        let plain = LinkUnspec::new_with_name("eth0").index(2).build();
        let c = parse_counters(&bytes(plain)).unwrap();
        assert_eq!((c.kind.as_str(), c.peer_netns, c.bytes), ("", None, 0));
        assert!(parse_counters(&[0u8; 3]).is_none());
    }

    #[test]
    fn nsid_request_and_answer_match_netlink_packet_route() {
        use rtnetlink::packet_core::{NetlinkBuffer, Parseable};
        use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
        let r = nsid_request(5, 42);
        assert_eq!(u32_at(&r, 0), Some(r.len() as u32));
        assert_eq!(u16_at(&r, 4), Some(RTM_GETNSID));
        assert_eq!(u32_at(&r, 8), Some(5));
        let nl = NetlinkBuffer::new(&r[..]);
        let m = NsidMessage::parse(nl.payload()).unwrap();
        assert_eq!(m.attributes, vec![NsidAttribute::Fd(42)]);

        let answer = |id: i32| {
            let mut m = NsidMessage::default();
            m.attributes.push(NsidAttribute::Id(id));
            let mut b = vec![0u8; m.buffer_len()];
            m.emit(&mut b);
            b
        };
        assert_eq!(parse_nsid(&answer(4)), Some(4));
        assert_eq!(parse_nsid(&answer(-1)), None, "not assigned");
        assert_eq!(parse_nsid(&[0u8; 2]), None);
    }
}
