//! Netlink link and address events (multicast groups RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR and
//! RTNLGRP_IPV6_IFADDR), converted to [`LinkEvent`]s. The daemon wakes the reconciler on each,
//! so a managed link deleted or changed by hand is restored at once instead of at the next
//! periodic resync.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;

use super::error::NetworkError;

/// One change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    /// `new-link`, `del-link`, `new-address`, `del-address`, or `other`.
    pub what: &'static str,
    pub index: u32,
    /// The link's name, when the message carries it (link events do).
    pub name: Option<String>,
}

fn convert(m: RouteNetlinkMessage) -> LinkEvent {
    let link_name = |attrs: &[LinkAttribute]| {
        attrs.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
    };
    match m {
        RouteNetlinkMessage::NewLink(l) => LinkEvent {
            what: "new-link",
            index: l.header.index,
            name: link_name(&l.attributes),
        },
        RouteNetlinkMessage::DelLink(l) => LinkEvent {
            what: "del-link",
            index: l.header.index,
            name: link_name(&l.attributes),
        },
        RouteNetlinkMessage::NewAddress(a) => LinkEvent {
            what: "new-address",
            index: a.header.index,
            name: None,
        },
        RouteNetlinkMessage::DelAddress(a) => LinkEvent {
            what: "del-address",
            index: a.header.index,
            name: None,
        },
        _ => LinkEvent {
            what: "other",
            index: 0,
            name: None,
        },
    }
}

/// What the event listener tells the observer: an epoch that moves on every event (and on every
/// (re)subscription), valid only while the listener is subscribed. Two equal snapshots with no
/// write of the agent's own in between mean the kernel announced no link or address change, so
/// the links observed at the first are still exact (see `Networks` in `mod.rs`).
#[derive(Debug, Default)]
pub struct EventFeed {
    epoch: AtomicU64,
    live: AtomicBool,
}

impl EventFeed {
    /// The current epoch, or `None` while no listener is subscribed (nothing may be cached).
    pub fn snapshot(&self) -> Option<u64> {
        // `live` first: an epoch read while live can only be invalidated by a later bump.
        self.live
            .load(Ordering::Acquire)
            .then(|| self.epoch.load(Ordering::Acquire))
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn set_live(&self, live: bool) {
        self.bump();
        self.live.store(live, Ordering::Release);
        self.bump();
    }
}

/// Follows link and address events of the agent's network namespace, calling `on_event` for
/// each, until the socket fails. Returns the reason it stopped. `feed` is live from the moment
/// the subscription exists until this returns, and its epoch moves on every message.
pub async fn follow(feed: &EventFeed, mut on_event: impl FnMut(LinkEvent)) -> NetworkError {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ];
    let (conn, _handle, mut messages) = match rtnetlink::new_multicast_connection(&groups) {
        Ok(c) => c,
        Err(e) => {
            return NetworkError::Connect {
                reason: format!("subscribing to link and address events: {e}"),
            }
        }
    };
    let conn = tokio::spawn(conn);
    feed.set_live(true);
    while let Some((msg, _)) = messages.next().await {
        // Any message, even one we cannot read (an overrun error among them), moves the epoch.
        feed.bump();
        if let NetlinkPayload::InnerMessage(m) = msg.payload {
            on_event(convert(m));
        }
    }
    feed.set_live(false);
    conn.abort();
    NetworkError::Observe {
        what: "follow link events".into(),
        reason: "the netlink socket closed".into(),
    }
}
