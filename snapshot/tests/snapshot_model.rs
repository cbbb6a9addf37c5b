//! Snapshots against a model: random puts, appends, list replaces, map puts and removes and
//! clears over a few keys of value, list and map state, logged to a local WAL, with commit
//! markers at random points and snapshots at random commit markers (often several in a row,
//! so that unchanged files are reused). Then the latest snapshot restored plus the WAL after
//! it must equal a `BTreeMap` model as of the last commit, and the latest snapshot alone the
//! model as of its own commit marker; so must every key-group subset of the latest snapshot
//! plus the WAL, restored as an instance of a rescaled job does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millpond_snapshot::compaction::{self, CompactionKind, CompactionSettings};
use millpond_snapshot::{
    Archive, Manifest, RestoreSettings, SnapshotBase, SnapshotSettings, SnapshotWriter,
};
use millpond_state::{
    key_group, BoxError, Change, ChangeSink, KeyGroupRange, ListState, ListStateDescriptor,
    MapState, MapStateDescriptor, Store, StoreSettings, StringCodec, U64Codec, ValueState,
    ValueStateDescriptor,
};
use millpond_wal::{
    open_local, LocalSegmentSource, SegmentSettings, SourceOffset, Wal, WalSettings,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::{Rng, SeedableRng};

const KEY_GROUPS: u16 = 128;

#[derive(Debug, Clone)]
enum Op {
    Put(u16, u64),
    ClearValue(u16),
    Append(u16, u64),
    ReplaceList(u16, Vec<u64>),
    ClearList(u16),
    MapPut(u16, u8, u64),
    MapRemove(u16, u8),
    ClearMap(u16),
    Commit,
    Snapshot,
    /// Run the due compactions; `true`: majors are due early, `false`: minors only.
    Compact(bool),
}

fn op(keys: u16) -> impl Strategy<Value = Op> {
    let k = 0..keys;
    prop_oneof![
        4 => (k.clone(), any::<u64>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => k.clone().prop_map(Op::ClearValue),
        4 => (k.clone(), 0..1000u64).prop_map(|(k, v)| Op::Append(k, v)),
        1 => (k.clone(), prop::collection::vec(0..1000u64, 0..4))
            .prop_map(|(k, v)| Op::ReplaceList(k, v)),
        1 => k.clone().prop_map(Op::ClearList),
        4 => (k.clone(), 0..4u8, any::<u64>()).prop_map(|(k, uk, v)| Op::MapPut(k, uk, v)),
        2 => (k.clone(), 0..4u8).prop_map(|(k, uk)| Op::MapRemove(k, uk)),
        1 => k.prop_map(Op::ClearMap),
        3 => Just(Op::Commit),
        2 => Just(Op::Snapshot),
        2 => any::<bool>().prop_map(Op::Compact),
    ]
}

struct LogTo(Arc<Wal>);

impl ChangeSink for LogTo {
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError> {
        Ok(self.0.append_change(change)?)
    }
}

struct States {
    values: ValueState<String, u64>,
    lists: ListState<String, u64>,
    maps: MapState<String, String, u64>,
}

fn register(store: &Store) -> States {
    States {
        values: store
            .value_state(ValueStateDescriptor::new("values", StringCodec, U64Codec))
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
    }
}

fn store_settings() -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: 32 << 20,
        max_key_groups: KEY_GROUPS,
        ..StoreSettings::default()
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Model {
    values: BTreeMap<u16, u64>,
    lists: BTreeMap<u16, Vec<u64>>,
    maps: BTreeMap<u16, BTreeMap<String, u64>>,
}

fn key(k: u16) -> String {
    format!("key-{k}")
}

fn uk(u: u8) -> String {
    format!("u{u}")
}

impl Model {
    /// Applies `op` to the model and through `states` to the store.
    fn apply(&mut self, states: &States, op: &Op) {
        match op {
            Op::Put(k, v) => {
                states.values.update(&key(*k), v).unwrap();
                self.values.insert(*k, *v);
            }
            Op::ClearValue(k) => {
                states.values.clear(&key(*k)).unwrap();
                self.values.remove(k);
            }
            Op::Append(k, v) => {
                states.lists.add(&key(*k), v).unwrap();
                self.lists.entry(*k).or_default().push(*v);
            }
            Op::ReplaceList(k, v) => {
                states.lists.update(&key(*k), v).unwrap();
                if v.is_empty() {
                    self.lists.remove(k);
                } else {
                    self.lists.insert(*k, v.clone());
                }
            }
            Op::ClearList(k) => {
                states.lists.clear(&key(*k)).unwrap();
                self.lists.remove(k);
            }
            Op::MapPut(k, u, v) => {
                states.maps.put(&key(*k), &uk(*u), v).unwrap();
                self.maps.entry(*k).or_default().insert(uk(*u), *v);
            }
            Op::MapRemove(k, u) => {
                states.maps.remove(&key(*k), &uk(*u)).unwrap();
                if let Some(m) = self.maps.get_mut(k) {
                    m.remove(&uk(*u));
                    if m.is_empty() {
                        self.maps.remove(k);
                    }
                }
            }
            Op::ClearMap(k) => {
                states.maps.clear(&key(*k)).unwrap();
                self.maps.remove(k);
            }
            Op::Commit | Op::Snapshot | Op::Compact(_) => unreachable!("not a state change"),
        }
    }

    /// Every key of `0..keys` in `part` (all: `None`) in `states` equals the model.
    fn check(
        &self,
        states: &States,
        keys: u16,
        part: Option<KeyGroupRange>,
        what: &str,
    ) -> Result<(), TestCaseError> {
        for k in 0..keys {
            let name = key(k);
            if part.is_some_and(|r| !r.contains(key_group(name.as_bytes(), KEY_GROUPS))) {
                continue;
            }
            prop_assert_eq!(
                states.values.get(&name).unwrap(),
                self.values.get(&k).copied(),
                "{}: value of {}",
                what,
                name
            );
            prop_assert_eq!(
                states.lists.get(&name).unwrap(),
                self.lists.get(&k).cloned().unwrap_or_default(),
                "{}: list of {}",
                what,
                name
            );
            let got: BTreeMap<String, u64> =
                states.maps.entries(&name).unwrap().into_iter().collect();
            prop_assert_eq!(
                got,
                self.maps.get(&k).cloned().unwrap_or_default(),
                "{}: map of {}",
                what,
                name
            );
        }
        Ok(())
    }
}

/// Opens a fresh store over `snapshot` (if any), replays the WAL after it if `replay`, and
/// compares every key with `expected`.
fn restore_and_check(
    archive: &Archive,
    snapshot: Option<&Manifest>,
    wal_dir: &Path,
    replay: bool,
    keys: u16,
    expected: &Model,
    what: &str,
) -> Result<(), TestCaseError> {
    restore_part_and_check(
        archive, snapshot, wal_dir, replay, keys, expected, None, what,
    )
}

/// [`restore_and_check`] for the key groups of `part` only (`None`: all), as an instance of a
/// rescaled job restores them: only their files fetched, only their changes replayed.
#[allow(clippy::too_many_arguments)]
fn restore_part_and_check(
    archive: &Archive,
    snapshot: Option<&Manifest>,
    wal_dir: &Path,
    replay: bool,
    keys: u16,
    expected: &Model,
    part: Option<KeyGroupRange>,
    what: &str,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = Store::builder(dir.path().join("state")).settings(StoreSettings {
        key_groups: part,
        ..store_settings()
    });
    let mut after = 0;
    let mut base = None;
    if let Some(m) = snapshot {
        let b = SnapshotBase::open(
            archive,
            m,
            dir.path().join("base"),
            &RestoreSettings {
                key_groups: part,
                ..RestoreSettings::default()
            },
        )
        .unwrap();
        builder = builder.base(b.clone(), m.states.clone());
        after = m.lsn;
        base = Some(b);
    }
    let store = builder.open().unwrap();
    let states = register(&store);
    if replay {
        let mut source = LocalSegmentSource::open(wal_dir, after + 1).unwrap();
        millpond_wal::replay(&mut source, after, |c| {
            let c = c.as_change();
            if part.is_none_or(|r| r.contains(c.key_group)) {
                store.apply(&c)?;
            }
            Ok::<(), millpond_state::Error>(())
        })
        .unwrap();
    }
    store.replay_done();
    expected.check(&states, keys, part, what)?;
    if let Some(b) = base {
        b.wait_local().unwrap();
    }
    store.close().unwrap();
    Ok(())
}

/// What the runs did, over all cases: the test fails if they never exercised reuse.
#[derive(Default)]
struct Coverage {
    snapshots: AtomicUsize,
    chained: AtomicUsize,
    reused_files: AtomicUsize,
    runs: AtomicUsize,
    majors: AtomicUsize,
    minors: AtomicUsize,
    /// The most delta runs a partition of a snapshot had.
    max_deltas: AtomicUsize,
    /// Snapshots that merged into a partition's newest delta run (at the cap).
    capped: AtomicUsize,
}

/// Runs `ops` against a store logging to a WAL and a model; snapshots where `ops` say so; then
/// restores and compares.
fn run_case(
    ops: &[Op],
    keys: u16,
    settings: SnapshotSettings,
    coverage: &Coverage,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let (wal, _) = open_local(
        &wal_dir,
        0,
        WalSettings::default(),
        SegmentSettings::default(),
        |_| Ok::<(), std::io::Error>(()),
    )
    .unwrap();
    let wal = Arc::new(wal);
    let store = Store::builder(dir.path().join("live"))
        .settings(store_settings())
        .change_sink(LogTo(wal.clone()))
        .open()
        .unwrap();
    let states = register(&store);
    let archive =
        Archive::open(&format!("file://{}", dir.path().join("archive").display())).unwrap();
    let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings).unwrap();

    let mut model = Model::default();
    let mut committed = Model::default();
    let mut last_commit = 0u64;
    let mut next_offset = 0i64;
    // Each snapshot with the model as of its commit marker.
    let mut snapshots: Vec<(Manifest, Model)> = Vec::new();
    let mut previous_was_snapshot = false;
    for op in ops {
        match op {
            Op::Commit => {
                next_offset += 1;
                let ticket = wal
                    .commit(&[SourceOffset {
                        topic: "in".into(),
                        partition: 0,
                        next_offset,
                    }])
                    .unwrap();
                last_commit = ticket.lsn();
                ticket.wait().unwrap();
                committed = model.clone();
            }
            Op::Snapshot => {
                let parent = writer.parent().clone();
                let mut source = LocalSegmentSource::open(&wal_dir, parent.lsn + 1).unwrap();
                let report = writer
                    .snapshot_from_wal(&mut source, &store.schemas())
                    .unwrap();
                match report {
                    None => prop_assert_eq!(
                        last_commit,
                        parent.lsn,
                        "no snapshot although a commit follows the parent"
                    ),
                    Some(r) => {
                        prop_assert!(last_commit > parent.lsn);
                        prop_assert_eq!(r.manifest.lsn, last_commit);
                        prop_assert_eq!(
                            r.manifest.offsets[0].next_offset,
                            next_offset,
                            "the offsets of the last commit"
                        );
                        let reused = r
                            .manifest
                            .files()
                            .filter(|f| f.written_by < r.manifest.sequence)
                            .count();
                        prop_assert_eq!(
                            reused + r.files_written,
                            r.manifest.files().count(),
                            "files are written or reused"
                        );
                        coverage.snapshots.fetch_add(1, Ordering::Relaxed);
                        coverage.reused_files.fetch_add(reused, Ordering::Relaxed);
                        coverage.runs.fetch_add(r.runs, Ordering::Relaxed);
                        let deltas = |m: &Manifest| {
                            m.partitions
                                .iter()
                                .map(|p| {
                                    p.runs
                                        .iter()
                                        .filter(|r| r.kind == millpond_snapshot::RunKind::Delta)
                                        .count()
                                })
                                .collect::<Vec<_>>()
                        };
                        let (before, after) = (deltas(&parent), deltas(&r.manifest));
                        coverage
                            .max_deltas
                            .fetch_max(after.iter().copied().max().unwrap_or(0), Ordering::Relaxed);
                        // A partition whose newest run was replaced, its count unchanged.
                        let merged = (0..after.len()).any(|i| {
                            before.get(i).is_some_and(|b| *b > 0 && *b == after[i])
                                && parent.partitions[i].runs.first()
                                    != r.manifest.partitions[i].runs.first()
                        });
                        if merged {
                            coverage.capped.fetch_add(1, Ordering::Relaxed);
                        }
                        if previous_was_snapshot {
                            coverage.chained.fetch_add(1, Ordering::Relaxed);
                        }
                        previous_was_snapshot = true;
                        snapshots.push((r.manifest, committed.clone()));
                    }
                }
            }
            Op::Compact(majors) => {
                let compaction = CompactionSettings {
                    delta_ratio_percent: if *majors { 100 } else { u32::MAX },
                    max_runs: 2,
                    ..CompactionSettings::default()
                };
                let cancel = std::sync::atomic::AtomicBool::new(false);
                while let Some(job) = compaction::pick(writer.parent(), &compaction) {
                    let parent = writer.parent().clone();
                    let out = compaction::compact(
                        &archive,
                        &parent,
                        job,
                        0,
                        &SnapshotSettings::default(),
                        &cancel,
                    )
                    .unwrap();
                    let r = writer.commit_compaction(out).unwrap();
                    prop_assert_eq!(r.manifest.lsn, parent.lsn);
                    prop_assert_eq!(r.manifest.kind, millpond_snapshot::ManifestKind::Compaction);
                    prop_assert!(r.manifest.files().count() <= parent.files().count());
                    match r.kind {
                        CompactionKind::Major => &coverage.majors,
                        CompactionKind::Minor => &coverage.minors,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    let at = snapshots.last().map(|(_, m)| m.clone()).unwrap_or_default();
                    snapshots.push((r.manifest, at));
                }
            }
            change => model.apply(&states, change),
        }
    }
    wal.close().unwrap();
    // The live store itself agrees with the model (a check of the model).
    model.check(&states, keys, None, "live store")?;
    store.close().unwrap();
    drop(states);

    let latest = archive.latest().unwrap().unwrap();
    match snapshots.last() {
        Some((m, at_snapshot)) => {
            prop_assert_eq!(&latest, m);
            for (m, _) in &snapshots {
                archive.verify(m, |_| {}).unwrap();
            }
            restore_and_check(
                &archive,
                Some(m),
                &wal_dir,
                false,
                keys,
                at_snapshot,
                "snapshot alone",
            )?;
            restore_and_check(
                &archive,
                Some(m),
                &wal_dir,
                true,
                keys,
                &committed,
                "snapshot + WAL",
            )?;
            // Instances of a rescaled job: each restores its key groups only.
            for part in [
                KeyGroupRange::new(0, 40),
                KeyGroupRange::new(40, 97),
                KeyGroupRange::new(97, KEY_GROUPS),
            ] {
                restore_part_and_check(
                    &archive,
                    Some(m),
                    &wal_dir,
                    true,
                    keys,
                    &committed,
                    Some(part),
                    &format!("key groups {part} + WAL"),
                )?;
            }
            // Every older snapshot or compaction: alone, as of its commit marker; plus a
            // longer WAL, the same state.
            for (older, at_older) in &snapshots[..snapshots.len() - 1] {
                restore_and_check(
                    &archive,
                    Some(older),
                    &wal_dir,
                    false,
                    keys,
                    at_older,
                    &format!("manifest {} alone", older.sequence),
                )?;
                restore_and_check(
                    &archive,
                    Some(older),
                    &wal_dir,
                    true,
                    keys,
                    &committed,
                    &format!("manifest {} + WAL", older.sequence),
                )?;
            }
            // GC keeps the latest snapshot whole.
            archive.gc(1, Duration::ZERO).unwrap();
            restore_and_check(
                &archive,
                Some(m),
                &wal_dir,
                true,
                keys,
                &committed,
                "after gc",
            )?;
        }
        None => {
            prop_assert_eq!(latest.kind, millpond_snapshot::ManifestKind::Claim);
            restore_and_check(
                &archive,
                None,
                &wal_dir,
                true,
                keys,
                &committed,
                "WAL alone",
            )?;
        }
    }
    Ok(())
}

fn settings() -> SnapshotSettings {
    SnapshotSettings {
        // Tiny files: about one key group each, so a snapshot rewrites only what changed.
        target_file_bytes: 64,
        sort_buffer_bytes: 1 << 20,
        ..SnapshotSettings::default()
    }
}

#[test]
fn restore_plus_wal_equals_the_model() {
    const KEYS: u16 = 12;
    let coverage = Coverage::default();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(KEYS), 1..120), |ops| {
            run_case(&ops, KEYS, settings(), &coverage)
        })
        .unwrap();
    let snapshots = coverage.snapshots.load(Ordering::Relaxed);
    let chained = coverage.chained.load(Ordering::Relaxed);
    let reused = coverage.reused_files.load(Ordering::Relaxed);
    let majors = coverage.majors.load(Ordering::Relaxed);
    let minors = coverage.minors.load(Ordering::Relaxed);
    eprintln!(
        "{snapshots} snapshots, {chained} on top of another, {reused} files reused, \
         {majors} major and {minors} minor compactions"
    );
    assert!(
        majors >= 5 && minors >= 1,
        "{majors} major, {minors} minor compactions"
    );
    assert!(snapshots >= 24, "only {snapshots} snapshots in all cases");
    assert!(chained >= 10, "only {chained} snapshots on top of another");
    assert!(reused >= 10, "only {reused} files reused");
}

/// Enough changes to spill the snapshot builder's sort buffer (1 MiB at least) to several
/// runs on disk, which are merged with each other and with the parent.
#[test]
fn many_changes_spill_sorted_runs_and_still_equal_the_model() {
    const KEYS: u16 = 3000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut ops = Vec::new();
    for round in 0..3 {
        for _ in 0..25_000 {
            let k = rng.random_range(0..KEYS);
            ops.push(match rng.random_range(0..10) {
                0..=2 => Op::Put(k, rng.random()),
                3..=5 => Op::Append(k, rng.random_range(0..1000)),
                6 | 7 => Op::MapPut(k, rng.random_range(0..4), rng.random()),
                8 => Op::MapRemove(k, rng.random_range(0..4)),
                _ => match round {
                    0 => Op::ClearList(k),
                    1 => Op::ClearValue(k),
                    _ => Op::ClearMap(k),
                },
            });
        }
        ops.push(Op::Commit);
        ops.push(Op::Snapshot);
    }
    ops.push(Op::Put(1, 1));
    ops.push(Op::Commit);
    let coverage = Coverage::default();
    run_case(
        &ops,
        KEYS,
        SnapshotSettings {
            target_file_bytes: 32 << 10,
            sort_buffer_bytes: 1 << 20,
            ..SnapshotSettings::default()
        },
        &coverage,
    )
    .unwrap();
    let runs = coverage.runs.load(Ordering::Relaxed);
    assert!(runs >= 3, "the sort buffer spilled only {runs} runs");
}

/// Without compaction, a partition gets no more than `max_delta_runs` delta runs: a snapshot
/// at the cap merges its changes into the partition's newest delta run, and every restore
/// still equals the model.
#[test]
fn at_the_cap_snapshots_merge_into_the_newest_delta_run() {
    const KEYS: u16 = 12;
    let coverage = Coverage::default();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let no_compaction = prop::collection::vec(op(KEYS), 40..160).prop_map(|ops| {
        ops.into_iter()
            .filter(|o| !matches!(o, Op::Compact(_)))
            .collect()
    });
    runner
        .run(&no_compaction, |ops: Vec<Op>| {
            run_case(
                &ops,
                KEYS,
                SnapshotSettings {
                    max_delta_runs: 2,
                    ..settings()
                },
                &coverage,
            )
        })
        .unwrap();
    let max = coverage.max_deltas.load(Ordering::Relaxed);
    let capped = coverage.capped.load(Ordering::Relaxed);
    eprintln!("at most {max} delta runs in a partition, {capped} snapshots at the cap");
    assert!(max <= 2, "{max} delta runs in a partition");
    assert!(capped >= 5, "only {capped} snapshots merged at the cap");
}
