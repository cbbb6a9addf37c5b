//! Rescaling a running job: the state of one instance is restored into two by key-group
//! ranges (each continuing with its own WAL and archive), and the two back into one. No key
//! is lost or duplicated, every record is applied exactly once, and the offsets carry over.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{GeneratedInput, Input, Record, States};
use millpond::snapshot::{rescale, Archive, RescaleSource, SnapshotSettings};
use millpond::state::{key_group, KeyGroupRange, StoreSettings};
use millpond::wal::SourceOffset;
use millpond::Millpond;

const TOPIC: &str = "generated";

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

fn open(dir: &Path, archive: &Path, key_groups: Option<KeyGroupRange>) -> (Millpond, States) {
    let mut settings = common::job_settings();
    settings.snapshot_after_changes = u64::MAX;
    settings.snapshot_after_wal_bytes = u64::MAX;
    settings.snapshot_interval_max = None;
    settings.store = StoreSettings {
        key_groups,
        ..settings.store
    };
    let opening = Millpond::builder(dir)
        .settings(settings)
        .snapshots_url(url(archive))
        .open()
        .unwrap();
    let states = States::register(opening.store());
    (opening.recover().unwrap(), states)
}

/// Applies the records an instance owns, checking each is its key's next, then commits the
/// offsets after all of `records` (the instance read them all, and skipped the others').
fn process(job: &Millpond, states: &States, records: &[Record], owned: KeyGroupRange) {
    let max = job.store().settings().max_key_groups;
    let mut offsets = BTreeMap::new();
    for r in records {
        offsets.insert(r.partition, r.offset + 1);
        if !owned.contains(key_group(r.key.as_bytes(), max)) {
            continue;
        }
        let last = states.last.get(&r.key).unwrap().unwrap_or(0);
        assert_eq!(
            r.seq,
            last + 1,
            "key {} at {}:{}",
            r.key,
            r.partition,
            r.offset
        );
        states.apply(r).unwrap();
    }
    let offsets: Vec<SourceOffset> = offsets
        .into_iter()
        .map(|(partition, next_offset)| SourceOffset {
            topic: TOPIC.into(),
            partition,
            next_offset,
        })
        .collect();
    let _durable = job.commit(&offsets).unwrap();
}

fn latest(archive_dir: &Path) -> (Archive, millpond::snapshot::Manifest) {
    let archive = Archive::open(&url(archive_dir)).unwrap();
    let manifest = archive.latest().unwrap().unwrap();
    (archive, manifest)
}

#[test]
fn one_instance_into_two_and_back_into_one() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut input = GeneratedInput::new(3, 90_000, 4_000);
    let model = input.clone();
    let records: Vec<Record> = std::iter::from_fn(|| input.poll()).collect();
    let (first, rest) = records.split_at(30_000);
    let (second, third) = rest.split_at(30_000);
    let all = KeyGroupRange::all(millpond::state::DEFAULT_MAX_KEY_GROUPS);
    let max = all.as_range().end;
    let halves = [
        KeyGroupRange::new(0, max / 3),
        KeyGroupRange::new(max / 3, max),
    ];
    let small_files = SnapshotSettings {
        target_file_bytes: 16 << 10,
        ..SnapshotSettings::default()
    };

    // One instance.
    let (one, states) = open(&t.join("one"), &t.join("archive-one"), None);
    process(&one, &states, first, all);
    one.snapshot_now().unwrap().unwrap();
    one.close().unwrap();
    let (src, manifest) = latest(&t.join("archive-one"));
    let after_first: BTreeMap<i32, i64> =
        first.iter().map(|r| (r.partition, r.offset + 1)).collect();
    let in_manifest: BTreeMap<i32, i64> = manifest
        .offsets
        .iter()
        .map(|o| (o.partition, o.next_offset))
        .collect();
    assert_eq!(
        in_manifest, after_first,
        "the snapshot holds the committed offsets"
    );

    // Split into two: each archive gets its key groups of the snapshot.
    for (i, range) in halves.iter().enumerate() {
        let dest = Archive::open(&url(&t.join(format!("archive-{i}")))).unwrap();
        rescale(
            &[RescaleSource::new(&src, &manifest)],
            &dest,
            *range,
            &small_files,
        )
        .unwrap();
    }
    for (i, range) in halves.iter().enumerate() {
        let (job, states) = open(
            &t.join(format!("instance-{i}")),
            &t.join(format!("archive-{i}")),
            Some(*range),
        );
        assert_eq!(job.resume_offsets(), manifest.offsets.as_slice());
        process(&job, &states, second, *range);
        // One instance snapshots; the other stops without one, so its last commit lives only
        // in its WAL until it is reopened (replayed) and snapshots.
        if i == 0 {
            job.snapshot_now().unwrap().unwrap();
            job.close().unwrap();
        } else {
            job.close().unwrap();
            let (job, states) = open(
                &t.join(format!("instance-{i}")),
                &t.join(format!("archive-{i}")),
                Some(*range),
            );
            assert!(job.recovery().replayed > 0);
            let key = second
                .iter()
                .rev()
                .find(|r| range.contains(key_group(r.key.as_bytes(), max)))
                .unwrap();
            assert!(states.last.get(&key.key).unwrap().unwrap() >= key.seq);
            job.snapshot_now().unwrap().unwrap();
            job.close().unwrap();
        }
    }

    // And back into one.
    let parts: Vec<_> = (0..2)
        .map(|i| latest(&t.join(format!("archive-{i}"))))
        .collect();
    let sources: Vec<RescaleSource<'_>> = parts
        .iter()
        .zip(halves)
        .map(|((a, m), range)| RescaleSource::new(a, m).with_key_groups(range))
        .collect();
    let merged = Archive::open(&url(&t.join("archive-merged"))).unwrap();
    rescale(&sources, &merged, all, &small_files).unwrap();
    let (job, states) = open(&t.join("merged"), &t.join("archive-merged"), None);
    process(&job, &states, third, all);
    job.close().unwrap();

    let mut settings = common::job_settings();
    settings.snapshot_after_changes = u64::MAX;
    settings.snapshot_after_wal_bytes = u64::MAX;
    settings.snapshot_interval_max = None;
    common::check_exactly_once(
        Millpond::builder(t.join("merged"))
            .settings(settings)
            .snapshots_url(url(&t.join("archive-merged"))),
        &model,
        TOPIC,
    );
}
