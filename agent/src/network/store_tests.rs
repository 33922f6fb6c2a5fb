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

#[test]
fn state_files_without_the_table_still_load() {
    let old: NetState =
        serde_json::from_str(r#"{"links": {}, "ports": {}, "isolated": ["br101"]}"#).unwrap();
    assert_eq!(old.table, None);
    assert_eq!(old.isolated.len(), 1);
    let mut now = old.clone();
    now.table = Some(super::types::TableSeen {
        generation: 42,
        at: "boot/4026531840".into(),
        digest: "ab".repeat(32),
    });
    let text = serde_json::to_string(&now).unwrap();
    assert_eq!(serde_json::from_str::<NetState>(&text).unwrap(), now);
    assert!(!serde_json::to_string(&old).unwrap().contains("table"));
}
