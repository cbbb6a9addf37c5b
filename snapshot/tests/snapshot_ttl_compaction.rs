//! Compaction drops expired data (docs/snapshot.md, "Expired data") without changing what a
//! restore reads: random writes, refreshing reads and clock steps on TTL'd value, list and
//! map state, logged to a WAL, with snapshots that record the clock before their end is
//! fixed and compactions (major and minor) at random moments with a zero margin, the
//! sharpest horizon the rule allows. Every retained manifest restored plus the WAL after it
//! must read as the live store does at the end; and the compactions must have dropped
//! something, or the test proves nothing.
//!
//! A horizon past the parent's `captured_at_ms` (the compactor's own clock, say) makes it
//! fail: a refreshing read logged after the snapshot, at a time the element was live, would
//! find the element gone on replay.

// Shared helpers, not all used here.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{open_wal, LogTo};
use millpond_snapshot::compaction::{self, CompactionKind, CompactionSettings};
use millpond_snapshot::{
    Archive, Manifest, RestoreSettings, SnapshotBase, SnapshotSettings, SnapshotWriter,
};
use millpond_state::{
    Clock, ListState, ListStateDescriptor, ManualClock, MapState, MapStateDescriptor, Store,
    StoreSettings, StringCodec, TtlConfig, TtlUpdateType, U64Codec, ValueState,
    ValueStateDescriptor,
};
use millpond_wal::{LocalSegmentSource, SourceOffset};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const KEY_GROUPS: u16 = 128;
const TTL_MS: u64 = 1_000;
const START_MS: u64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Put(u16, u64),
    Append(u16, u64),
    MapPut(u16, u8, u64),
    /// A read of the map, which refreshes its live values' TTL (a logged touch).
    ReadMap(u16),
    /// A read of the value, which refreshes its TTL.
    ReadValue(u16),
    Advance(u64),
    Commit,
    Snapshot,
    /// Run the due compactions; `true`: majors, `false`: minors only.
    Compact(bool),
}

fn op(keys: u16) -> impl Strategy<Value = Op> {
    let k = 0..keys;
    prop_oneof![
        3 => (k.clone(), any::<u64>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (k.clone(), 0..1000u64).prop_map(|(k, v)| Op::Append(k, v)),
        3 => (k.clone(), 0..4u8, any::<u64>()).prop_map(|(k, u, v)| Op::MapPut(k, u, v)),
        2 => k.clone().prop_map(Op::ReadMap),
        2 => k.prop_map(Op::ReadValue),
        4 => (0..TTL_MS * 4 / 5).prop_map(Op::Advance),
        3 => Just(Op::Commit),
        2 => Just(Op::Snapshot),
        2 => any::<bool>().prop_map(Op::Compact),
    ]
}

struct States {
    values: ValueState<String, u64>,
    lists: ListState<String, u64>,
    maps: MapState<String, String, u64>,
}

fn register(store: &Store) -> States {
    let reads = TtlConfig::new(Duration::from_millis(TTL_MS))
        .with_update_type(TtlUpdateType::OnReadAndWrite);
    let writes = TtlConfig::new(Duration::from_millis(TTL_MS));
    States {
        values: store
            .value_state(ValueStateDescriptor::new("values", StringCodec, U64Codec).with_ttl(reads))
            .unwrap(),
        lists: store
            .list_state(ListStateDescriptor::new("lists", StringCodec, U64Codec).with_ttl(writes))
            .unwrap(),
        maps: store
            .map_state(
                MapStateDescriptor::new("maps", StringCodec, StringCodec, U64Codec).with_ttl(reads),
            )
            .unwrap(),
    }
}

fn store_settings() -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: 32 << 20,
        max_key_groups: KEY_GROUPS,
        ttl_cleanup_interval_ms: 0,
        ..StoreSettings::default()
    }
}

fn key(k: u16) -> String {
    format!("key-{k}")
}

type Seen = (Option<u64>, Vec<u64>, BTreeMap<String, u64>);

/// What `states` read for every key (reads that refresh do so in the same order everywhere).
fn read_all(states: &States, keys: u16) -> Vec<Seen> {
    (0..keys)
        .map(|k| {
            let name = key(k);
            (
                states.values.get(&name).unwrap(),
                states.lists.get(&name).unwrap(),
                states.maps.entries(&name).unwrap().into_iter().collect(),
            )
        })
        .collect()
}

#[derive(Default)]
struct Coverage {
    expired_keys: u64,
    majors: u64,
    minors: u64,
}

fn run_case(ops: &[Op], keys: u16, coverage: &mut Coverage) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let wal = open_wal(&wal_dir);
    let clock = ManualClock::new(START_MS);
    let store = Store::builder(dir.path().join("live"))
        .settings(store_settings())
        .clock(clock.clone())
        .change_sink(LogTo(wal.clone()))
        .open()
        .unwrap();
    let states = register(&store);
    let archive =
        Archive::open(&format!("file://{}", dir.path().join("archive").display())).unwrap();
    let settings = SnapshotSettings {
        target_file_bytes: 64,
        ..SnapshotSettings::default()
    };
    let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings.clone()).unwrap();
    let mut manifests: Vec<Manifest> = Vec::new();
    let mut next_offset = 0i64;
    let commit = |next_offset: &mut i64| {
        *next_offset += 1;
        wal.commit(&[SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: *next_offset,
        }])
        .unwrap()
        .wait()
        .unwrap();
    };
    for op in ops {
        match op {
            Op::Put(k, v) => states.values.update(&key(*k), v).unwrap(),
            Op::Append(k, v) => states.lists.add(&key(*k), v).unwrap(),
            Op::MapPut(k, u, v) => states.maps.put(&key(*k), &format!("u{u}"), v).unwrap(),
            Op::ReadMap(k) => {
                states.maps.entries(&key(*k)).unwrap();
            }
            Op::ReadValue(k) => {
                states.values.get(&key(*k)).unwrap();
            }
            Op::Advance(ms) => clock.advance_ms(*ms),
            Op::Commit => commit(&mut next_offset),
            Op::Snapshot => {
                // As the facade does: the clock first, then the WAL's end.
                let captured_at = clock.now_ms();
                let parent = writer.parent().clone();
                let mut source = LocalSegmentSource::open(&wal_dir, parent.lsn + 1).unwrap();
                if let Some(r) = writer
                    .snapshot_from_wal_captured(&mut source, &store.schemas(), captured_at)
                    .unwrap()
                {
                    prop_assert_eq!(r.manifest.captured_at_ms, captured_at);
                    manifests.push(r.manifest);
                }
            }
            Op::Compact(majors) => {
                let policy = CompactionSettings {
                    delta_ratio_percent: if *majors { 1 } else { u32::MAX },
                    max_runs: 2,
                    ttl_margin_ms: Some(0),
                };
                while let Some(job) = compaction::pick(writer.parent(), &policy) {
                    let parent = writer.parent().clone();
                    let horizon = policy.ttl_horizon_ms(&parent);
                    prop_assert_eq!(horizon, parent.captured_at_ms);
                    let out = compaction::compact(
                        &archive,
                        &parent,
                        job,
                        horizon,
                        &SnapshotSettings::default(),
                        &AtomicBool::new(false),
                    )
                    .unwrap();
                    let r = writer.commit_compaction(out).unwrap();
                    // Compactions keep their parent's state, hence its horizon.
                    prop_assert_eq!(r.manifest.captured_at_ms, parent.captured_at_ms);
                    coverage.expired_keys += r.expired_keys;
                    match r.kind {
                        CompactionKind::Major => coverage.majors += 1,
                        CompactionKind::Minor => coverage.minors += 1,
                    }
                    manifests.push(r.manifest);
                }
            }
        }
    }
    commit(&mut next_offset);
    // Later than anything written: what expired since the last op is filtered by every read.
    clock.advance_ms(TTL_MS / 3);
    let expected = read_all(&states, keys);
    wal.close().unwrap();
    store.close().unwrap();

    for m in &manifests {
        let d = tempfile::tempdir().unwrap();
        let base = SnapshotBase::open(
            &archive,
            m,
            d.path().join("base"),
            &RestoreSettings::default(),
        )
        .unwrap();
        let restored = Store::builder(d.path().join("state"))
            .settings(store_settings())
            .clock(clock.clone())
            .base(base.clone(), m.states.clone())
            .open()
            .unwrap();
        let rs = register(&restored);
        let mut source = LocalSegmentSource::open(&wal_dir, m.lsn + 1).unwrap();
        millpond_wal::replay(&mut source, m.lsn, |c| {
            restored.apply(&c.as_change())?;
            Ok::<(), millpond_state::Error>(())
        })
        .unwrap();
        restored.replay_done();
        let got = read_all(&rs, keys);
        for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
            prop_assert_eq!(
                g,
                e,
                "key {} restored from manifest {} ({:?}, captured at +{} ms)",
                k,
                m.sequence,
                m.kind,
                m.captured_at_ms.saturating_sub(START_MS)
            );
        }
        base.wait_local().unwrap();
        restored.close().unwrap();
    }
    Ok(())
}

#[test]
fn compaction_drops_expired_data_and_restores_still_read_as_the_live_store() {
    const KEYS: u16 = 10;
    let mut coverage = Coverage::default();
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let cov = std::cell::RefCell::new(&mut coverage);
    runner
        .run(&prop::collection::vec(op(KEYS), 1..160), |ops| {
            run_case(&ops, KEYS, &mut cov.borrow_mut())
        })
        .unwrap();
    eprintln!(
        "{} keys with expired data dropped, {} major and {} minor compactions",
        coverage.expired_keys, coverage.majors, coverage.minors
    );
    assert!(
        coverage.expired_keys >= 20,
        "compactions dropped expired data from only {} keys",
        coverage.expired_keys
    );
    assert!(coverage.majors >= 5 && coverage.minors >= 1);
}

/// The margin: nothing expired in the last `ttl_margin_ms` before the capture is dropped, and
/// without a TTL'd state or a captured time there is no horizon at all.
#[test]
fn the_horizon_is_the_capture_less_the_margin() {
    let mut m = Manifest::decode(
        &{
            let dir = tempfile::tempdir().unwrap();
            let archive = Archive::open(&format!("file://{}", dir.path().display())).unwrap();
            let writer =
                SnapshotWriter::claim(archive, KEY_GROUPS, SnapshotSettings::default()).unwrap();
            writer.parent().encode()
        },
        "claim",
    )
    .unwrap();
    let policy = CompactionSettings::default();
    m.captured_at_ms = START_MS;
    assert_eq!(policy.ttl_horizon_ms(&m), 0, "no state has a TTL");
    m.states.push(millpond_state::StateSchema {
        name: "s".into(),
        kind: millpond_state::StateKind::Value,
        ttl: Some(TtlConfig::new(Duration::from_millis(TTL_MS))),
        id: 1,
    });
    assert_eq!(policy.ttl_horizon_ms(&m), START_MS - 300_000);
    let off = CompactionSettings {
        ttl_margin_ms: None,
        ..CompactionSettings::default()
    };
    assert_eq!(off.ttl_horizon_ms(&m), 0);
    m.captured_at_ms = 0;
    assert_eq!(policy.ttl_horizon_ms(&m), 0, "unknown capture");
}
