//! Cold tier rotation (docs/state.md, "Cold tier rotation"): a store whose cold tier is
//! rotated, whose base is replaced by the state as of the rotation (a fold of the changes it
//! logged, as a snapshot would hold it) and whose sealed file is then deleted, reads exactly
//! what a model of its changes says, cycle after cycle, with most keys evicted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use millpond_state::*;

/// A fake base tier: folded entries in a map, as a snapshot's runs would give them, and the
/// LSN of the last change they hold.
struct FakeBase(HashMap<Vec<u8>, Vec<u8>>, u64);

impl BaseTier for FakeBase {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(self.0.get(key).cloned())
    }

    fn covered_lsn(&self) -> u64 {
        self.1
    }

    fn blind_ok(&self, _key: &[u8]) -> bool {
        true
    }
}

/// Every change the store logged, as (composite key, the change encoded alone), in order,
/// and the store's schemas (set once the states are registered).
#[derive(Default)]
struct Log {
    changes: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    schemas: std::sync::OnceLock<Vec<StateSchema>>,
}

impl ChangeSink for Log {
    /// The LSN of a change is its place in the log, from 1.
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError> {
        let s = self
            .schemas
            .get()
            .and_then(|all| all.iter().find(|s| s.name == change.state))
            .ok_or("a change before the schemas were known")?;
        let mut ck = Vec::new();
        composite_key(change.key_group, s.id, change.key, &mut ck);
        let mut one = KeyChanges::default();
        one.push(s, &change.op)?;
        let mut bytes = Vec::new();
        one.encode(&mut bytes);
        let mut changes = self.changes.lock();
        changes.push((ck, bytes));
        Ok(changes.len() as u64)
    }
}

/// The state after the first `upto` logged changes: what a snapshot at that position holds.
fn fold(log: &Log, upto: usize) -> FakeBase {
    let mut per_key: BTreeMap<Vec<u8>, KeyChanges> = BTreeMap::new();
    for (ck, bytes) in &log.changes.lock()[..upto] {
        let newer = KeyChanges::decode(bytes).unwrap();
        per_key.entry(ck.clone()).or_default().then(newer);
    }
    FakeBase(
        per_key
            .into_iter()
            .filter_map(|(ck, changes)| changes.resolve(None).unwrap().map(|e| (ck, e)))
            .collect(),
        upto as u64,
    )
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const KEYS: u64 = 20_000;

#[derive(Default)]
struct Model {
    values: HashMap<u64, u64>,
    lists: HashMap<u64, Vec<u64>>,
    maps: HashMap<u64, BTreeMap<u64, u64>>,
}

fn cold_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cold") && n.ends_with(".redb"))
        .collect();
    names.sort();
    names
}

#[test]
fn rotated_cold_tier_over_replaced_bases_reads_as_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::default());
    let store = Store::builder(dir.path())
        .settings(StoreSettings {
            // Small: most keys live below the hot tier.
            memory_budget_bytes: 2 << 20,
            ..StoreSettings::default()
        })
        .change_sink_arc(log.clone())
        .open()
        .unwrap();
    let values = store
        .value_state(ValueStateDescriptor::new("values", U64Codec, U64Codec))
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("lists", U64Codec, U64Codec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new(
            "maps", U64Codec, U64Codec, U64Codec,
        ))
        .unwrap();
    log.schemas.set(store.schemas()).unwrap();
    let mut model = Model::default();
    let mut rng = Rng(0x5eed_1234_abcd);
    let mut step = |model: &mut Model, n: usize| {
        for _ in 0..n {
            let k = rng.below(KEYS);
            let v = rng.below(1 << 40);
            match rng.below(14) {
                10 | 11 => {
                    let uk = rng.below(8);
                    maps.put(&k, &uk, &v).unwrap();
                    model.maps.entry(k).or_default().insert(uk, v);
                }
                12 => {
                    let uk = rng.below(8);
                    maps.remove(&k, &uk).unwrap();
                    if let Some(m) = model.maps.get_mut(&k) {
                        m.remove(&uk);
                        if m.is_empty() {
                            model.maps.remove(&k);
                        }
                    }
                }
                13 => {
                    maps.clear(&k).unwrap();
                    model.maps.remove(&k);
                }
                0..=4 => {
                    values.update(&k, &v).unwrap();
                    model.values.insert(k, v);
                }
                5 => {
                    values.clear(&k).unwrap();
                    model.values.remove(&k);
                }
                6..=8 => {
                    lists.add(&k, &v).unwrap();
                    model.lists.entry(k).or_default().push(v);
                }
                _ => {
                    lists.clear(&k).unwrap();
                    model.lists.remove(&k);
                }
            }
        }
    };
    let check = |model: &Model, when: &str| {
        for k in 0..KEYS {
            assert_eq!(
                values.get(&k).unwrap(),
                model.values.get(&k).copied(),
                "{when}: value of {k}"
            );
            let list = lists.get(&k).unwrap();
            let expected = model.lists.get(&k).cloned().unwrap_or_default();
            assert_eq!(list, expected, "{when}: list of {k}");
            let map: BTreeMap<u64, u64> = maps.entries(&k).unwrap().into_iter().collect();
            let expected = model.maps.get(&k).cloned().unwrap_or_default();
            assert_eq!(map, expected, "{when}: map of {k}");
        }
    };

    step(&mut model, 40_000);
    let mut last_installed: Option<usize> = None;
    for cycle in 0..4 {
        assert!(store.rotate_cold().unwrap(), "cycle {cycle}: rotated");
        // Everything in the sealed file changed before this position.
        let covered = log.changes.lock().len();
        assert!(
            !store.rotate_cold().unwrap(),
            "cycle {cycle}: a second rotation waits for the sealed file to go"
        );
        step(&mut model, 20_000);
        check(&model, &format!("cycle {cycle}, sealed"));
        // Bases only move forward: each is a newer snapshot than the one it replaces.
        if let Some(last) = last_installed.filter(|&l| l < covered) {
            // A base that does not cover the rotation, as a snapshot that started before it
            // would be: the sealed file stays, and versions in it at or below the base's LSN
            // are stale (dirty entries the base holds are dropped when evicted).
            store.install_base(Arc::new(fold(&log, (last + covered) / 2)));
            check(&model, &format!("cycle {cycle}, older base, sealed"));
            step(&mut model, 20_000);
            check(&model, &format!("cycle {cycle}, older base, more changes"));
        }
        store.flush().unwrap();
        assert!(store.stats().cold_sealed_bytes > 0, "cycle {cycle}");
        assert_eq!(cold_files(dir.path()).len(), 2, "cycle {cycle}");

        // A base past the rotation, as a snapshot that started after it: versions written to
        // the active file since are stale too, and so are the dirty entries the hot tier
        // holds now (changed by this step, no read since), which are dropped when evicted.
        step(&mut model, 20_000);
        let now = log.changes.lock().len();
        store.install_base(Arc::new(fold(&log, now)));
        last_installed = Some(now);
        check(&model, &format!("cycle {cycle}, new base, sealed"));
        // Dirty entries the base holds are dropped when evicted, above older versions of
        // theirs that the sealed file may still hold: those must be skipped.
        step(&mut model, 20_000);
        check(
            &model,
            &format!("cycle {cycle}, new base, sealed, more changes"),
        );
        store.flush().unwrap();
        store.drop_sealed_cold().unwrap();
        assert_eq!(store.stats().cold_sealed_bytes, 0, "cycle {cycle}");
        assert_eq!(
            cold_files(dir.path()),
            vec![format!("cold-{}.redb", cycle + 2)],
            "cycle {cycle}: only the active file is left"
        );
        check(&model, &format!("cycle {cycle}, sealed file deleted"));
        step(&mut model, 20_000);
        check(&model, &format!("cycle {cycle}, after more changes"));
    }
    // Most appends and puts on keys not in memory were kept as operands.
    assert!(store.stats().blind_writes > 10_000, "{:?}", store.stats());
    // And dirty entries the bases held were dropped when evicted.
    assert!(store.stats().covered_drops > 1_000, "{:?}", store.stats());
    store.close().unwrap();

    // A new store starts with no cold file but its own.
    let store = Store::builder(dir.path()).open().unwrap();
    assert_eq!(cold_files(dir.path()), vec!["cold-1.redb".to_string()]);
    store.close().unwrap();
}
