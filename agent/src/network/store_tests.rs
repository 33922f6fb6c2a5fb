//! The network records through the agent's store.

use super::types::{LinkRecord, NetState};
use super::Leases;
use crate::store::{Paths, Store};

#[tokio::test]
async fn network_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(dir.path());
    let mut net = NetState::default();
    net.links.insert(
        "br0".into(),
        LinkRecord {
            index: 7,
            hash: "h".into(),
        },
    );
    net.ports.insert("eth2".into(), "br0".into());
    let mut leases = Leases::new();
    leases
        .entry("br142".into())
        .or_default()
        .insert("container:web".into(), "192.168.142.10".parse().unwrap());
    {
        let store = Store::open(&paths).unwrap();
        assert_eq!(store.load_or_default::<NetState>(), NetState::default());
        assert!(store.load_or_default::<Leases>().is_empty());
        store.save(&net).await.unwrap();
        store.save(&leases).await.unwrap();
    }
    let store = Store::open(&paths).unwrap();
    assert_eq!(store.load_or_default::<NetState>(), net);
    assert_eq!(store.load_or_default::<Leases>(), leases);
}
