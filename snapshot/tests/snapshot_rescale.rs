//! Rescaling a snapshot by key-group range (`millpond_snapshot::rescale`): a job's snapshot is
//! split for two instances and the halves merged back. Every key must be in exactly one half
//! with its value, the merge must hold exactly the original entries (values, lists and maps),
//! a split instance must go on with a fresh WAL and its own snapshots, and bad input (a
//! non-empty destination, overlapping or missing sources, sources of different jobs or
//! checkpoints) must be refused before anything is written.

mod common;

use std::sync::Arc;

use millpond_snapshot::{
    rescale, Archive, Error, Manifest, ManifestKind, RescaleReport, RescaleSource, RestoreSettings,
    SnapshotBase, SnapshotSettings, SnapshotWriter,
};
use millpond_state::{key_group, KeyGroupRange, StateKind, Store, StoreSettings};
use millpond_wal::{open_local, LocalSegmentSource, SegmentSettings, SourceOffset, WalSettings};

use common::{register, restore_and_check, store_settings, LogTo, Model, States, KEY_GROUPS};

const KEYS: u64 = 2000;
const BUDGET: usize = 64 << 20;

/// Small files, so that many straddle any split point.
fn settings() -> SnapshotSettings {
    SnapshotSettings {
        target_file_bytes: 4 << 10,
        ..SnapshotSettings::default()
    }
}

fn offsets(next: i64) -> Vec<SourceOffset> {
    vec![
        SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: next,
        },
        SourceOffset {
            topic: "in".into(),
            partition: 1,
            next_offset: next + 7,
        },
    ]
}

/// A job's archive with one snapshot of `KEYS` keys in every state, and the model of it.
struct Fixture {
    dir: tempfile::TempDir,
    archive: Archive,
    latest: Manifest,
    model: Model,
}

impl Fixture {
    fn url(&self, name: &str) -> String {
        format!("file://{}", self.dir.path().join(name).display())
    }

    fn archive(&self, name: &str) -> Archive {
        Archive::open(&self.url(name)).unwrap()
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (wal, _) = open_local(
        root.join("wal"),
        0,
        WalSettings::default(),
        SegmentSettings::default(),
        |_| Ok::<(), std::io::Error>(()),
    )
    .unwrap();
    let wal = Arc::new(wal);
    let store = Store::builder(root.join("state"))
        .settings(store_settings(BUDGET))
        .change_sink(LogTo(wal.clone()))
        .open()
        .unwrap();
    let states = register(&store);
    let mut model = Model::default();
    for i in 0..KEYS {
        let k = format!("key-{i}");
        model.touched.insert(k.clone());
        states.counts.update(&k, &i).unwrap();
        model.counts.insert(k.clone(), i);
        if i % 3 == 0 {
            for v in [i, i + 1] {
                states.lists.add(&k, &v).unwrap();
                model.lists.entry(k.clone()).or_default().push(v);
            }
        }
        if i % 4 == 0 {
            for (uk, v) in [("a", i), ("b", i * 2)] {
                states.maps.put(&k, &uk.to_string(), &v).unwrap();
                model
                    .maps
                    .entry(k.clone())
                    .or_default()
                    .insert(uk.to_string(), v);
            }
        }
        if i % 50 == 0 {
            // Some values larger than a whole target file.
            let blob = vec![(i % 251) as u8; (i as usize % 7 + 1) * 1500];
            states.blobs.update(&k, &blob).unwrap();
            model.blobs.insert(k, blob);
        }
    }
    wal.commit(&offsets(100)).unwrap().wait().unwrap();
    let archive = Archive::open(&format!("file://{}", root.join("src").display())).unwrap();
    let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings()).unwrap();
    let mut log = LocalSegmentSource::open(root.join("wal"), 1).unwrap();
    let latest = writer
        .snapshot_from_wal(&mut log, &store.schemas())
        .unwrap()
        .expect("a commit")
        .manifest;
    assert!(
        latest.files().count() > 20,
        "{} files",
        latest.files().count()
    );
    wal.close().unwrap();
    store.close().unwrap();
    Fixture {
        dir,
        archive,
        latest,
        model,
    }
}

/// A split point inside a file of the snapshot, near the middle: that file straddles it.
fn split_point(m: &Manifest) -> u16 {
    let f = m
        .files()
        .find(|f| f.last_key_group >= KEY_GROUPS / 2 && f.first_key_group < f.last_key_group)
        .expect("a file of several key groups past the middle");
    f.first_key_group + 1
}

/// A store restored from `m` alone (LSN 0: nothing to replay), owning `range` (all if None).
struct Restored {
    _dir: tempfile::TempDir,
    store: Store,
    states: States,
    base: Arc<SnapshotBase>,
}

fn restore(archive: &Archive, m: &Manifest, range: Option<KeyGroupRange>) -> Restored {
    let dir = tempfile::tempdir().unwrap();
    let base = SnapshotBase::open(
        archive,
        m,
        dir.path().join("base"),
        &RestoreSettings {
            key_groups: range,
            ..RestoreSettings::default()
        },
    )
    .unwrap();
    let store = Store::builder(dir.path().join("state"))
        .settings(StoreSettings {
            key_groups: range,
            ..store_settings(BUDGET)
        })
        .base(base.clone(), m.states.clone())
        .open()
        .unwrap();
    let states = register(&store);
    Restored {
        _dir: dir,
        store,
        states,
        base,
    }
}

fn owns(range: KeyGroupRange, k: &str) -> bool {
    range.contains(key_group(k.as_bytes(), KEY_GROUPS))
}

/// Every key of `range` has the model's value in all four states.
fn check_owned(r: &Restored, model: &Model, range: KeyGroupRange, what: &str) -> usize {
    let mut n = 0;
    for k in model.touched.iter().filter(|k| owns(range, k)) {
        n += 1;
        let s = &r.states;
        assert_eq!(
            s.counts.get(k).unwrap(),
            model.counts.get(k).copied(),
            "{what}: {k}"
        );
        assert_eq!(
            s.lists.get(k).unwrap(),
            model.lists.get(k).cloned().unwrap_or_default(),
            "{what}: list of {k}"
        );
        let map: std::collections::BTreeMap<String, u64> =
            s.maps.entries(k).unwrap().into_iter().collect();
        assert_eq!(
            map,
            model.maps.get(k).cloned().unwrap_or_default(),
            "{what}: map of {k}"
        );
        assert_eq!(
            s.blobs.get(k).unwrap(),
            model.blobs.get(k).cloned(),
            "{what}: blob of {k}"
        );
    }
    n
}

/// No key outside `range` has anything in any state (`r` owns every key group).
fn check_absent_outside(r: &Restored, model: &Model, range: KeyGroupRange, what: &str) -> usize {
    let mut n = 0;
    for k in model.touched.iter().filter(|k| !owns(range, k)) {
        n += 1;
        let s = &r.states;
        assert_eq!(s.counts.get(k).unwrap(), None, "{what}: {k}");
        assert!(s.lists.get(k).unwrap().is_empty(), "{what}: list of {k}");
        assert!(s.maps.entries(k).unwrap().is_empty(), "{what}: map of {k}");
        assert_eq!(s.blobs.get(k).unwrap(), None, "{what}: blob of {k}");
    }
    n
}

/// Every entry of the snapshot, in key order.
fn all_entries(archive: &Archive, m: &Manifest) -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let base = SnapshotBase::open(
        archive,
        m,
        dir.path(),
        &RestoreSettings {
            download: false,
            ..RestoreSettings::default()
        },
    )
    .unwrap();
    base.entries(KeyGroupRange::all(m.max_key_groups))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// What every rescaled manifest must be: a first snapshot above a claim, no WAL, the
/// sources' offsets and states, files inside `range`.
fn check_manifest(r: &RescaleReport, dest: &Archive, source: &Manifest, range: KeyGroupRange) {
    let m = &r.manifest;
    assert_eq!(dest.latest().unwrap().as_ref(), Some(m));
    assert_eq!(m.kind, ManifestKind::Snapshot);
    assert_eq!(m.sequence, 2);
    let claim = dest.manifest_at(1).unwrap();
    assert_eq!(claim.kind, ManifestKind::Claim);
    assert_eq!(m.parent_id.as_deref(), Some(claim.id.as_str()));
    assert_eq!(m.writer_epoch, claim.writer_epoch);
    assert_eq!((m.lsn, &m.wal_position), (0, &None));
    assert_eq!(m.max_key_groups, source.max_key_groups);
    assert_eq!(m.offsets, source.offsets);
    assert_eq!(m.states, source.states);
    assert!(m.files().all(|f| range.contains(f.first_key_group)
        && range.contains(f.last_key_group)
        && f.written_by == m.sequence));
    assert_eq!(r.files_written + r.files_copied, m.files().count());
    assert_eq!((r.entries, r.bytes), (m.total_entries(), m.total_bytes()));
    dest.verify(m, |_| {}).unwrap();
}

#[test]
fn split_in_two_then_merge_back_loses_and_duplicates_nothing() {
    let f = fixture();
    let split = split_point(&f.latest);
    assert!(f
        .latest
        .files()
        .any(|file| file.first_key_group < split && split <= file.last_key_group));
    let halves = [
        KeyGroupRange::new(0, split),
        KeyGroupRange::new(split, KEY_GROUPS),
    ];
    let original = all_entries(&f.archive, &f.latest);

    // Split: each half from the one source.
    let mut parts = Vec::new();
    let mut entries = 0;
    for (i, range) in halves.into_iter().enumerate() {
        let dest = f.archive(&format!("half-{i}"));
        let report = rescale(
            &[RescaleSource::new(&f.archive, &f.latest)],
            &dest,
            range,
            &settings(),
        )
        .unwrap();
        check_manifest(&report, &dest, &f.latest, range);
        // Files inside the half are copied; the one across the split point is filtered.
        assert!(report.files_copied > 5, "{report:?}");
        assert!(report.files_written >= 1, "{report:?}");
        entries += report.entries;

        // Restored as the instance of the range: every key of it, with its value.
        let r = restore(&dest, &report.manifest, Some(range));
        assert!(check_owned(&r, &f.model, range, "half") > 100);
        r.base.wait_local().unwrap();
        r.store.close().unwrap();
        // Restored owning every key group: nothing of the other half is there.
        let r = restore(&dest, &report.manifest, None);
        assert!(check_owned(&r, &f.model, range, "half, all key groups") > 100);
        assert!(check_absent_outside(&r, &f.model, range, "half, all key groups") > 100);
        r.store.close().unwrap();
        parts.push((dest, report.manifest));
    }
    assert_eq!(entries, f.latest.total_entries());

    // Merge, with each source's range given (so coverage is checked too), and without.
    let all = KeyGroupRange::all(KEY_GROUPS);
    for (name, explicit) in [("merged", true), ("merged-inferred", false)] {
        let sources: Vec<RescaleSource<'_>> = parts
            .iter()
            .zip(halves)
            .map(|((a, m), range)| {
                let s = RescaleSource::new(a, m);
                if explicit {
                    s.with_key_groups(range)
                } else {
                    s
                }
            })
            .collect();
        let dest = f.archive(name);
        let report = rescale(&sources, &dest, all, &settings()).unwrap();
        check_manifest(&report, &dest, &f.latest, all);
        // Exactly the original entries, byte for byte, in order.
        assert_eq!(all_entries(&dest, &report.manifest), original, "{name}");
        let empty_wal = f.dir.path().join(format!("{name}-wal"));
        std::fs::create_dir_all(&empty_wal).unwrap();
        restore_and_check(&dest, &report.manifest, &empty_wal, &f.model, BUDGET, name);
    }
}

#[test]
fn a_split_instance_goes_on_with_a_fresh_wal_and_its_own_snapshots() {
    let f = fixture();
    let range = KeyGroupRange::for_instance(KEY_GROUPS, 2, 1);
    let dest = f.archive("instance-1");
    let first = rescale(
        &[RescaleSource::new(&f.archive, &f.latest)],
        &dest,
        range,
        &settings(),
    )
    .unwrap()
    .manifest;

    // The instance: restored from the rescaled snapshot, logging to a new WAL.
    let root = f.dir.path().join("instance-1-job");
    let (wal, _) = open_local(
        root.join("wal"),
        first.lsn,
        WalSettings::default(),
        SegmentSettings::default(),
        |_| Ok::<(), std::io::Error>(()),
    )
    .unwrap();
    let wal = Arc::new(wal);
    let base = SnapshotBase::open(
        &dest,
        &first,
        root.join("base"),
        &RestoreSettings {
            key_groups: Some(range),
            ..RestoreSettings::default()
        },
    )
    .unwrap();
    let store = Store::builder(root.join("state"))
        .settings(StoreSettings {
            key_groups: Some(range),
            ..store_settings(BUDGET)
        })
        .change_sink(LogTo(wal.clone()))
        .base(base, first.states.clone())
        .open()
        .unwrap();
    let states = register(&store);
    let mut model = f.model.clone();
    let mine: Vec<String> = model
        .touched
        .iter()
        .filter(|k| owns(range, k))
        .take(50)
        .cloned()
        .collect();
    for k in &mine {
        let n = model.counts.get(k).copied().unwrap_or_default() + 1000;
        states.counts.update(k, &n).unwrap();
        model.counts.insert(k.clone(), n);
        states.lists.add(k, &7).unwrap();
        model.lists.entry(k.clone()).or_default().push(7);
    }
    wal.commit(&offsets(300)).unwrap().wait().unwrap();

    // Its writer claims the destination above the rescale and builds on it.
    let mut writer = SnapshotWriter::claim(dest.clone(), KEY_GROUPS, settings()).unwrap();
    assert_eq!(writer.parent().lsn, 0);
    let mut log = LocalSegmentSource::open(root.join("wal"), 1).unwrap();
    let second = writer
        .snapshot_from_wal(&mut log, &store.schemas())
        .unwrap()
        .expect("a commit")
        .manifest;
    assert_eq!(second.offsets, offsets(300));
    assert!(second.files().any(|file| file.written_by == first.sequence));
    wal.close().unwrap();
    store.close().unwrap();

    let r = restore(&dest, &second, Some(range));
    assert!(check_owned(&r, &model, range, "second snapshot") > 100);
    r.store.close().unwrap();
}

/// `Error::Invalid` whose reason contains `needle`; `dest` is still empty.
#[track_caller]
fn assert_refused(result: Result<RescaleReport, Error>, needle: &str, dest: &Archive) {
    match result {
        Err(Error::Invalid { reason }) => {
            assert!(reason.contains(needle), "expected {needle:?} in: {reason}")
        }
        other => panic!("expected Invalid ({needle}), got {other:?}"),
    }
    assert!(
        dest.sequences().unwrap().is_empty(),
        "a manifest was written"
    );
}

#[test]
fn bad_sources_and_destinations_are_refused_before_anything_is_written() {
    let f = fixture();
    let split = split_point(&f.latest);
    let all = KeyGroupRange::all(KEY_GROUPS);
    let one = [RescaleSource::new(&f.archive, &f.latest)];

    // A destination that holds a snapshot already.
    let used = f.archive("used");
    rescale(&one, &used, all, &settings()).unwrap();
    let err = rescale(&one, &used, all, &settings()).unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { reason } if reason.contains("not empty")),
        "{err}"
    );
    assert_eq!(used.sequences().unwrap(), [1, 2]);
    // ...and the source itself.
    assert!(rescale(&one, &f.archive, all, &settings()).is_err());

    let dest = f.archive("dest");
    let src = || RescaleSource::new(&f.archive, &f.latest);
    // Overlapping ranges.
    assert_refused(
        rescale(
            &[
                src().with_key_groups(KeyGroupRange::new(0, split + 3)),
                src().with_key_groups(KeyGroupRange::new(split, KEY_GROUPS)),
            ],
            &dest,
            all,
            &settings(),
        ),
        "both own key groups",
        &dest,
    );
    // Two sources that hold the same key groups, without ranges.
    assert_refused(
        rescale(&[src(), src()], &dest, all, &settings()),
        "both hold key groups",
        &dest,
    );
    // A gap no source owns.
    assert_refused(
        rescale(
            &[
                src().with_key_groups(KeyGroupRange::new(0, split - 1)),
                src().with_key_groups(KeyGroupRange::new(split, KEY_GROUPS)),
            ],
            &dest,
            all,
            &settings(),
        ),
        &format!("no source owns key groups {}..{split}", split - 1),
        &dest,
    );
    // Ranges beyond the job's key groups, or empty.
    assert_refused(
        rescale(&one, &dest, KeyGroupRange::new(0, 200), &settings()),
        "0..128",
        &dest,
    );
    assert_refused(
        rescale(&one, &dest, KeyGroupRange::new(5, 5), &settings()),
        "non-empty",
        &dest,
    );
    assert_refused(rescale(&[], &dest, all, &settings()), "no source", &dest);

    // A source of another job: 64 key groups (its first claim is a manifest like any other).
    let other = f.archive("other-job");
    let claim = other.claim(64).unwrap();
    assert_refused(
        rescale(
            &[
                src().with_key_groups(KeyGroupRange::new(0, 64)),
                RescaleSource::new(&other, &claim).with_key_groups(KeyGroupRange::new(0, 64)),
            ],
            &dest,
            KeyGroupRange::new(0, 64),
            &settings(),
        ),
        "key groups",
        &dest,
    );

    // Sources of different checkpoints: a partition at two offsets.
    let low = KeyGroupRange::new(0, split);
    let high = KeyGroupRange::new(split, KEY_GROUPS);
    let mut later = f.latest.clone();
    later.offsets[1].next_offset += 1;
    assert_refused(
        rescale(
            &[
                src().with_key_groups(low),
                RescaleSource::new(&f.archive, &later).with_key_groups(high),
            ],
            &dest,
            all,
            &settings(),
        ),
        "same checkpoint",
        &dest,
    );
    // A state of two kinds, or two states with one id.
    let mut kind = f.latest.clone();
    kind.states[0].kind = StateKind::Reducing;
    assert_refused(
        rescale(
            &[
                src().with_key_groups(low),
                RescaleSource::new(&f.archive, &kind).with_key_groups(high),
            ],
            &dest,
            all,
            &settings(),
        ),
        "differs between the sources",
        &dest,
    );
    let mut renamed = f.latest.clone();
    renamed.states[0].name = "renamed".into();
    assert_refused(
        rescale(
            &[
                src().with_key_groups(low),
                RescaleSource::new(&f.archive, &renamed).with_key_groups(high),
            ],
            &dest,
            all,
            &settings(),
        ),
        "the same id",
        &dest,
    );

    // Disjoint offsets (instances reading their own partitions) are merged.
    let mut p0 = f.latest.clone();
    p0.offsets.truncate(1);
    let mut p1 = f.latest.clone();
    p1.offsets.remove(0);
    let report = rescale(
        &[
            RescaleSource::new(&f.archive, &p0).with_key_groups(low),
            RescaleSource::new(&f.archive, &p1).with_key_groups(high),
        ],
        &dest,
        all,
        &settings(),
    )
    .unwrap();
    assert_eq!(report.manifest.offsets, f.latest.offsets);
    assert_eq!(report.entries, f.latest.total_entries());
}

#[test]
fn a_source_that_owns_nothing_of_the_range_contributes_nothing() {
    let f = fixture();
    let dest = f.archive("narrow");
    let src = RescaleSource::new(&f.archive, &f.latest);
    let range = KeyGroupRange::new(10, 20);
    // The first source owns 0..10: nothing of 10..20. The second owns the rest.
    let report = rescale(
        &[
            src.with_key_groups(KeyGroupRange::new(0, 10)),
            src.with_key_groups(KeyGroupRange::new(10, KEY_GROUPS)),
        ],
        &dest,
        range,
        &settings(),
    )
    .unwrap();
    check_manifest(&report, &dest, &f.latest, range);
    let expected: Vec<_> = all_entries(&f.archive, &f.latest)
        .into_iter()
        .filter(|(k, _)| range.contains(u16::from_be_bytes([k[0], k[1]])))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(all_entries(&dest, &report.manifest), expected);
}
