//! A live store logs to a local WAL; snapshots are written from the WAL alone; a fresh store
//! restored from the latest snapshot plus the WAL after it holds exactly the live state.
//! Also: incremental reuse of unchanged key groups, restore of a key-group subset.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

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

#[derive(Default)]
struct LogOnceOpen(OnceLock<Arc<Wal>>);

impl ChangeSink for LogOnceOpen {
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError> {
        Ok(self.0.get().ok_or("log not open")?.append_change(change)?)
    }
}

struct Job {
    store: Store,
    counts: ValueState<String, u64>,
    lists: ListState<String, u64>,
    maps: MapState<String, String, u64>,
    wal: Arc<Wal>,
}

type States = (
    ValueState<String, u64>,
    ListState<String, u64>,
    MapState<String, String, u64>,
);

fn register(store: &Store) -> States {
    (
        store
            .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
            .unwrap(),
        store
            .list_state(ListStateDescriptor::new("lists", StringCodec, U64Codec))
            .unwrap(),
        store
            .map_state(MapStateDescriptor::new(
                "maps",
                StringCodec,
                StringCodec,
                U64Codec,
            ))
            .unwrap(),
    )
}

fn settings(range: Option<KeyGroupRange>) -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: 4 << 20,
        key_groups: range,
        ..StoreSettings::default()
    }
}

/// Opens a job in `state_dir`, restored from the archive's latest snapshot (if any) and the
/// WAL after it.
fn open_job(root: &Path, archive: &Archive, state_dir: &str, range: Option<KeyGroupRange>) -> Job {
    let sink = Arc::new(LogOnceOpen::default());
    let mut builder = Store::builder(root.join(state_dir))
        .settings(settings(range))
        .change_sink_arc(sink.clone());
    let latest = archive.latest().unwrap();
    let mut after = 0;
    if let Some(m) = &latest {
        let base = SnapshotBase::open(
            archive,
            m,
            root.join(state_dir).join("base"),
            &RestoreSettings {
                key_groups: range,
                ..RestoreSettings::default()
            },
        )
        .unwrap();
        after = m.lsn;
        builder = builder.base(base, m.states.clone());
    }
    let store = builder.open().unwrap();
    let (counts, lists, maps) = register(&store);
    let (wal, _) = open_local(
        root.join("wal"),
        after,
        WalSettings::default(),
        SegmentSettings::default(),
        |c| {
            let change = c.as_change();
            let kg = change.key_group;
            if store.key_groups().contains(kg) {
                store.apply(&change)
            } else {
                Ok(())
            }
        },
    )
    .unwrap();
    store.replay_done();
    let wal = Arc::new(wal);
    let _ = sink.0.set(wal.clone());
    Job {
        store,
        counts,
        lists,
        maps,
        wal,
    }
}

#[derive(Default, Clone, PartialEq, Debug)]
struct Model {
    counts: BTreeMap<String, u64>,
    lists: BTreeMap<String, Vec<u64>>,
    maps: BTreeMap<String, BTreeMap<String, u64>>,
}

fn work(job: &Job, model: &mut Model, keys: impl Iterator<Item = u64>, round: u64) {
    for i in keys {
        let k = format!("key-{i}");
        let n = model.counts.entry(k.clone()).or_default();
        *n += 1;
        job.counts.update(&k, n).unwrap();
        if i % 3 == 0 {
            job.lists.add(&k, &round).unwrap();
            model.lists.entry(k.clone()).or_default().push(round);
        }
        if i % 5 == 0 {
            let uk = format!("u{}", round % 4);
            job.maps.put(&k, &uk, &(i * round)).unwrap();
            model
                .maps
                .entry(k.clone())
                .or_default()
                .insert(uk, i * round);
        }
        if i % 7 == 0 && round % 2 == 1 {
            job.maps.clear(&k).unwrap();
            model.maps.remove(&k);
        }
    }
}

fn check(job: &Job, model: &Model, range: Option<KeyGroupRange>) {
    let owned = |k: &String| range.is_none_or(|r| r.contains(key_group(k.as_bytes(), 128)));
    let mut checked = 0;
    for (k, v) in &model.counts {
        if !owned(k) {
            continue;
        }
        checked += 1;
        assert_eq!(job.counts.get(k).unwrap(), Some(*v), "count of {k}");
        assert_eq!(
            job.lists.get(k).unwrap(),
            model.lists.get(k).cloned().unwrap_or_default(),
            "list of {k}"
        );
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        for (uk, v) in job.maps.entries(k).unwrap() {
            got.insert(uk, v);
        }
        assert_eq!(
            got,
            model.maps.get(k).cloned().unwrap_or_default(),
            "map of {k}"
        );
    }
    assert!(checked > 0);
}

fn commit(job: &Job, next: i64) {
    job.wal
        .commit(&[SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: next,
        }])
        .unwrap()
        .wait()
        .unwrap();
}

fn snapshot(
    root: &Path,
    writer: &mut SnapshotWriter,
    job: &Job,
) -> millpond_snapshot::SnapshotReport {
    let mut source = LocalSegmentSource::open(root.join("wal"), writer.parent().lsn + 1).unwrap();
    writer
        .snapshot_from_wal(&mut source, &job.store.schemas())
        .unwrap()
        .expect("a commit after the parent")
}

#[test]
fn restore_plus_wal_equals_the_live_state_and_snapshots_reuse_unchanged_files() {
    round_trip(1 << 20, 0);
}

#[test]
fn changes_spilled_to_many_sort_runs_merge_to_the_same_state() {
    round_trip(16 << 10, 5);
}

fn round_trip(sort_buffer_bytes: usize, min_runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let archive = Archive::open(&format!("file://{}", root.join("archive").display())).unwrap();
    let mut model = Model::default();
    let job = open_job(root, &archive, "a", None);
    let mut writer = SnapshotWriter::claim(
        archive.clone(),
        128,
        SnapshotSettings {
            target_file_bytes: 8 << 10,
            sort_buffer_bytes,
            ..SnapshotSettings::default()
        },
    )
    .unwrap();
    work(&job, &mut model, 0..3000, 1);
    commit(&job, 100);
    let first = snapshot(root, &mut writer, &job);
    assert!(first.files_written > 10, "{first:?}");
    assert!(first.runs >= min_runs, "{} sort runs", first.runs);
    assert_eq!(first.manifest.offsets[0].next_offset, 100);

    // A few keys change: only their files are written again.
    work(&job, &mut model, [7u64, 8, 9].into_iter(), 2);
    commit(&job, 200);
    let second = snapshot(root, &mut writer, &job);
    assert!(
        second.files_written <= 3
            && second.manifest.files().count() >= first.manifest.files().count(),
        "{} written of {}",
        second.files_written,
        second.manifest.files().count()
    );
    assert!(second
        .manifest
        .files()
        .any(|f| f.written_by == first.manifest.sequence));
    assert_eq!(
        second.manifest.parent_id.as_deref(),
        Some(first.manifest.id.as_str())
    );

    // Changes after the snapshot: committed ones are replayed, the last ones are not.
    work(&job, &mut model, 0..500, 3);
    commit(&job, 300);
    let committed = model.clone();
    work(&job, &mut model, 0..100, 4);
    job.wal.close().unwrap();
    job.store.close().unwrap();
    drop(job);

    let restored = open_job(root, &archive, "b", None);
    check(&restored, &committed, None);
    restored.wal.close().unwrap();
    restored.store.close().unwrap();
    drop(restored);

    // Rescaling: two instances, each with half the key groups, from the same snapshot.
    for (i, name) in ["c", "d"].into_iter().enumerate() {
        let range = KeyGroupRange::for_instance(128, 2, i as u16);
        let part = open_job(root, &archive, name, Some(range));
        check(&part, &committed, Some(range));
        part.wal.close().unwrap();
        part.store.close().unwrap();
    }
}

/// A job in `root/a` over a `file://` archive in `root/archive`, with `keys` keys changed,
/// committed and snapshotted once.
fn first_snapshot(root: &Path, keys: u64) -> (Archive, Model, Job, SnapshotWriter, Manifest) {
    let archive = Archive::open(&format!("file://{}", root.join("archive").display())).unwrap();
    let mut model = Model::default();
    let job = open_job(root, &archive, "a", None);
    let mut writer =
        SnapshotWriter::claim(archive.clone(), 128, SnapshotSettings::default()).unwrap();
    work(&job, &mut model, 0..keys, 1);
    commit(&job, 100);
    let m = snapshot(root, &mut writer, &job).manifest;
    (archive, model, job, writer, m)
}

/// A restore into a directory someone else can write to: a `.part` name planted there as a
/// symlink to a file outside must not make the download write through it.
#[cfg(unix)]
#[test]
fn a_part_symlink_in_the_restore_directory_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (archive, _model, job, _writer, m) = first_snapshot(root, 300);
    job.wal.close().unwrap();
    job.store.close().unwrap();
    drop(job);

    let outside = root.join("outside.txt");
    std::fs::write(&outside, b"not yours").unwrap();
    let base_dir = root.join("restore");
    std::fs::create_dir_all(&base_dir).unwrap();
    for f in m.files() {
        let name = f.path.rsplit('/').next().unwrap();
        let part = base_dir.join(Path::new(name).with_extension("part"));
        std::os::unix::fs::symlink(&outside, &part).unwrap();
    }

    let base = SnapshotBase::open(&archive, &m, &base_dir, &RestoreSettings::default()).unwrap();
    base.wait_local().unwrap();
    assert!(base.is_local());
    assert_eq!(std::fs::read(&outside).unwrap(), b"not yours");
    for f in m.files() {
        let name = f.path.rsplit('/').next().unwrap();
        let local = base_dir.join(name);
        let meta = std::fs::symlink_metadata(&local).unwrap();
        assert!(meta.file_type().is_file(), "{}", local.display());
        assert_eq!(meta.len(), f.bytes);
        assert!(
            std::fs::symlink_metadata(local.with_extension("part")).is_err(),
            "no .part left"
        );
    }
}

/// A base that follows the next snapshot (a running instance installs each one) shares the
/// files both name, opens and downloads only the new ones (hard links to a local archive's
/// objects, when asked), and reads as a fresh restore (copies) of the new snapshot does.
#[test]
fn a_base_follows_the_next_snapshot_sharing_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (archive, mut model, job, mut writer, first) = first_snapshot(root, 2_000);
    let base_dir = root.join("base");
    let linked = RestoreSettings {
        hard_links: true,
        ..RestoreSettings::default()
    };
    let base = SnapshotBase::open(&archive, &first, &base_dir, &linked).unwrap();
    base.wait_local().unwrap();

    work(&job, &mut model, 0..200, 2);
    commit(&job, 200);
    let second = snapshot(root, &mut writer, &job).manifest;
    let next = base.next(&archive, &second).unwrap();
    next.wait_local().unwrap();
    assert!(next.is_local());
    assert_eq!(next.progress().0, next.progress().1);
    let on_disk: std::collections::HashSet<String> = std::fs::read_dir(&base_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(next.local_names().is_subset(&on_disk));
    assert!(
        second.files().count() > first.files().count(),
        "the second snapshot adds delta runs over the first's files"
    );
    // Hard links to the local archive's objects, the new files too: no second copy.
    #[cfg(unix)]
    for f in second.files() {
        use std::os::unix::fs::MetadataExt;
        let local = base_dir.join(f.path.rsplit('/').next().unwrap());
        let object = root.join("archive").join(&f.path);
        assert_eq!(
            std::fs::metadata(&local).unwrap().ino(),
            std::fs::metadata(&object).unwrap().ino(),
            "{}",
            local.display()
        );
    }

    let fresh = SnapshotBase::open(
        &archive,
        &second,
        root.join("fresh"),
        &RestoreSettings::default(),
    )
    .unwrap();
    fresh.wait_local().unwrap();
    let all = KeyGroupRange::all(128);
    let followed: Vec<_> = next.entries(all).map(|e| e.unwrap()).collect();
    let restored: Vec<_> = fresh.entries(all).map(|e| e.unwrap()).collect();
    assert!(!followed.is_empty());
    assert_eq!(followed, restored);
    for (key, value) in &restored {
        use millpond_state::BaseTier;
        assert_eq!(next.get(key).unwrap().as_ref(), Some(value));
    }
    job.wal.close().unwrap();
    job.store.close().unwrap();
}

/// A compaction links its inputs from `SnapshotSettings::local_files` (a running instance's
/// `base/`), checked: with an input gone from the archive it still compacts from the local
/// copy, and a damaged local copy is passed over for the archive's. Either way the compacted
/// snapshot reads as the one it replaces.
#[test]
fn a_compaction_links_its_inputs_from_local_copies_and_checks_them() {
    use millpond_snapshot::compaction::{self, CompactionSettings};
    for damaged_local in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (archive, mut model, job, mut writer, _) = first_snapshot(root, 2_000);
        for round in 2..5 {
            work(&job, &mut model, 0..300, round);
            commit(&job, 100 * round as i64);
            snapshot(root, &mut writer, &job);
        }
        let before = writer.parent().clone();
        let base_dir = root.join("base");
        let base =
            SnapshotBase::open(&archive, &before, &base_dir, &RestoreSettings::default()).unwrap();
        base.wait_local().unwrap();
        let all = KeyGroupRange::all(128);
        let expected: Vec<_> = base.entries(all).map(|e| e.unwrap()).collect();
        let policy = CompactionSettings {
            delta_ratio_percent: u32::MAX,
            max_runs: 2,
            ..CompactionSettings::default()
        };
        let job_ = compaction::pick(&before, &policy).expect("a partition with 4 runs");
        let input = job_.inputs[0].files[0].clone();
        let name = input.path.rsplit('/').next().unwrap();
        if damaged_local {
            // A copy (not a link to the archive): flip a byte in its middle.
            let local = base_dir.join(name);
            let mut bytes = std::fs::read(&local).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            std::fs::remove_file(&local).unwrap();
            std::fs::write(&local, bytes).unwrap();
        } else {
            std::fs::remove_file(root.join("archive").join(&input.path)).unwrap();
        }
        let settings = SnapshotSettings {
            local_files: Some(base_dir.clone()),
            ..SnapshotSettings::default()
        };
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let out = compaction::compact(&archive, &before, job_, 0, &settings, &cancel).unwrap();
        let after = writer.commit_compaction(out).unwrap().manifest;
        assert!(after.files().count() < before.files().count());
        let fresh = SnapshotBase::open(
            &archive,
            &after,
            root.join("fresh"),
            &RestoreSettings::default(),
        )
        .unwrap();
        fresh.wait_local().unwrap();
        let got: Vec<_> = fresh.entries(all).map(|e| e.unwrap()).collect();
        assert_eq!(got, expected, "damaged local copy: {damaged_local}");
        job.wal.close().unwrap();
        job.store.close().unwrap();
    }
}
