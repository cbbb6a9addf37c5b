//! What several snapshot tests share: a job's states (a store logging to a local WAL), a model
//! of what they hold, and the check that a restored snapshot plus the WAL after it equals the
//! model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path as FsPath;
use std::sync::Arc;

use millpond_snapshot::{Archive, Manifest, RestoreSettings, SnapshotBase};
use millpond_state::{
    BoxError, BytesCodec, Change, ChangeSink, ListState, ListStateDescriptor, MapState,
    MapStateDescriptor, Store, StoreSettings, StringCodec, U64Codec, ValueState,
    ValueStateDescriptor,
};
use millpond_wal::{open_local, LocalSegmentSource, SegmentSettings, Wal, WalSettings};

pub const KEY_GROUPS: u16 = 128;

/// A local WAL in `dir`, new, with default settings.
#[allow(dead_code)] // not every test opens its own WAL
pub fn open_wal(dir: &FsPath) -> Arc<Wal> {
    let (wal, _) = open_local(
        dir,
        0,
        WalSettings::default(),
        SegmentSettings::default(),
        |_| Ok::<(), std::io::Error>(()),
    )
    .unwrap();
    Arc::new(wal)
}

pub struct LogTo(pub Arc<Wal>);

impl ChangeSink for LogTo {
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError> {
        Ok(self.0.append_change(change)?)
    }
}

pub struct States {
    pub counts: ValueState<String, u64>,
    pub lists: ListState<String, u64>,
    pub maps: MapState<String, String, u64>,
    pub blobs: ValueState<String, Vec<u8>>,
}

pub fn register(store: &Store) -> States {
    States {
        counts: store
            .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
            .unwrap(),
        lists: store
            .list_state(ListStateDescriptor::new("lists", StringCodec, U64Codec))
            .unwrap(),
        maps: store
            .map_state(MapStateDescriptor::new(
                "maps",
                StringCodec,
                StringCodec,
                U64Codec,
            ))
            .unwrap(),
        blobs: store
            .value_state(ValueStateDescriptor::new("blobs", StringCodec, BytesCodec))
            .unwrap(),
    }
}

pub fn store_settings(budget: usize) -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: budget,
        max_key_groups: KEY_GROUPS,
        ..StoreSettings::default()
    }
}

/// What the state holds, and every key ever touched (so that cleared keys are checked too).
#[derive(Default, Clone, PartialEq)]
pub struct Model {
    pub counts: BTreeMap<String, u64>,
    pub lists: BTreeMap<String, Vec<u64>>,
    pub maps: BTreeMap<String, BTreeMap<String, u64>>,
    pub blobs: BTreeMap<String, Vec<u8>>,
    pub touched: BTreeSet<String>,
}

pub fn check(states: &States, model: &Model, what: &str) {
    let mut checked = 0;
    for k in &model.touched {
        checked += 1;
        assert_eq!(
            states.counts.get(k).unwrap(),
            model.counts.get(k).copied(),
            "{what}: count of {k}"
        );
        assert_eq!(
            states.lists.get(k).unwrap(),
            model.lists.get(k).cloned().unwrap_or_default(),
            "{what}: list of {k}"
        );
        let got: BTreeMap<String, u64> = states.maps.entries(k).unwrap().into_iter().collect();
        assert_eq!(
            got,
            model.maps.get(k).cloned().unwrap_or_default(),
            "{what}: map of {k}"
        );
        let blob = states.blobs.get(k).unwrap();
        let want = model.blobs.get(k);
        assert!(
            blob.as_ref() == want,
            "{what}: blob of {k}: {:?} bytes, expected {:?}",
            blob.as_ref().map(Vec::len),
            want.map(Vec::len)
        );
    }
    assert!(checked > 0, "{what}: nothing checked");
    // Keys never written are absent.
    let never = "never-written".to_string();
    assert_eq!(states.counts.get(&never).unwrap(), None, "{what}");
    assert_eq!(states.blobs.get(&never).unwrap(), None, "{what}");
}

/// Restores `m` into a fresh store (memory budget `budget`), replays the WAL after it, and compares with `expected`.
pub fn restore_and_check(
    archive: &Archive,
    m: &Manifest,
    wal_dir: &FsPath,
    expected: &Model,
    budget: usize,
    what: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let base = SnapshotBase::open(
        archive,
        m,
        dir.path().join("base"),
        &RestoreSettings::default(),
    )
    .unwrap_or_else(|e| panic!("{what}: opening snapshot {} failed: {e}", m.id));
    let store = Store::builder(dir.path().join("state"))
        .settings(store_settings(budget))
        .base(base.clone(), m.states.clone())
        .open()
        .unwrap();
    let states = register(&store);
    let mut source = LocalSegmentSource::open(wal_dir, m.lsn + 1).unwrap();
    millpond_wal::replay(&mut source, m.lsn, |c| store.apply(&c.as_change()))
        .unwrap_or_else(|e| panic!("{what}: replay after {} failed: {e}", m.id));
    store.replay_done();
    check(&states, expected, what);
    base.wait_local()
        .unwrap_or_else(|e| panic!("{what}: downloading {} failed: {e}", m.id));
    assert!(base.is_local());
    store.close().unwrap();
}
