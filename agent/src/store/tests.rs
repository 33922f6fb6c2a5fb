use super::*;

#[tokio::test]
async fn identity_is_0600_and_spec_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(&dir.path().join("state"));
    paths.ensure_dir().unwrap();
    assert!(paths.load_identity().unwrap().is_none());
    let id = Identity {
        registry: "http://r".into(),
        node_id: "n1".into(),
        node_secret: "n1.secret".into(),
        heartbeat_interval_secs: 10,
    };
    paths.save_identity(&id).unwrap();
    let mode = std::fs::metadata(paths.identity())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        paths.load_identity().unwrap().unwrap().node_secret,
        "n1.secret"
    );
    assert!(!format!("{id:?}").contains("secret\""));
    assert!(!format!("{id:?}").contains("n1.secret"));

    let s = StoredSpec {
        generation: 4,
        spec: serde_norway::from_str("containers: [{name: a, image: x}]").unwrap(),
    };
    {
        let store = Store::open(&paths).unwrap();
        assert!(
            Store::open(&paths).is_err(),
            "a second process must not open the same store"
        );
        store.save(&s).await.unwrap();
    }
    let store = Store::open(&paths).unwrap();
    assert_eq!(store.load::<StoredSpec>().unwrap(), Some(s));
}

/// A record type of this test only, at a format version above 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u32,
}

impl Record for Counter {
    const KEY: &'static str = "counter";
    const VERSION: u32 = 2;
}

/// The same file read by an agent that knows only version 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct OldCounter {
    n: u32,
}

impl Record for OldCounter {
    const KEY: &'static str = "counter";
}

#[tokio::test]
async fn records_carry_their_version_and_newer_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Paths::new(dir.path())).unwrap();
    assert_eq!(store.load::<Counter>().unwrap(), None);
    store.save(&Counter { n: 3 }).await.unwrap();
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/counter.json")).unwrap())
            .unwrap();
    assert_eq!(raw, serde_json::json!({"n": 3, "_version": 2}));
    assert_eq!(store.load::<Counter>().unwrap(), Some(Counter { n: 3 }));
    assert!(matches!(
        store.load::<OldCounter>(),
        Err(StoreError::Newer {
            found: 2,
            known: 1,
            ..
        })
    ));
    // Version 1 is written without a version field: today's files, readable by older agents.
    store.save(&OldCounter { n: 4 }).await.unwrap();
    let raw = std::fs::read_to_string(dir.path().join("state/counter.json")).unwrap();
    assert_eq!(raw, r#"{"n":4}"#);
    assert_eq!(store.load::<Counter>().unwrap(), Some(Counter { n: 4 }));
}

#[tokio::test]
async fn a_corrupt_record_is_set_aside_and_read_as_default() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Paths::new(dir.path())).unwrap();
    let file = dir.path().join("state/counter.json");
    std::fs::write(&file, b"{not json").unwrap();
    assert!(matches!(
        store.load::<Counter>(),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(store.load_or_default::<Counter>(), Counter::default());
    assert!(!file.exists());
    assert_eq!(
        std::fs::read(dir.path().join("state/counter.json.corrupt")).unwrap(),
        b"{not json"
    );
}

#[tokio::test]
async fn kept_writes_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Paths::new(dir.path())).unwrap();
    let file = dir.path().join("state/counter.json");
    store.save(&Counter { n: 1 }).await.unwrap();
    let mut kept = Kept::<Counter>::new(Some(store.clone()));
    assert_eq!(kept.get().n, 1, "loaded on first use");
    std::fs::remove_file(&file).unwrap();
    kept.persist().await;
    assert!(!file.exists(), "unchanged: nothing written");
    kept.get().n = 2;
    kept.persist().await;
    assert_eq!(store.load::<Counter>().unwrap(), Some(Counter { n: 2 }));
    std::fs::remove_file(&file).unwrap();
    kept.set(Counter { n: 2 });
    kept.persist().await;
    assert!(!file.exists(), "set to what is stored: nothing written");
    let mut memory = Kept::<Counter>::new(None);
    memory.get().n = 5;
    memory.persist().await;
    assert_eq!(memory.get().n, 5);
}

#[tokio::test]
async fn a_failed_write_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Paths::new(dir.path())).unwrap();
    // A directory where the temp file goes makes the write fail.
    let blocker = dir.path().join("state/counter.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let mut kept = Kept::<Counter>::new(Some(store.clone()));
    kept.set(Counter { n: 7 });
    kept.persist().await;
    assert_eq!(store.load::<Counter>().unwrap(), None);
    std::fs::remove_dir(&blocker).unwrap();
    kept.persist().await;
    assert_eq!(store.load::<Counter>().unwrap(), Some(Counter { n: 7 }));
}
