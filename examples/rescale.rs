//! Rescaling: one instance's state is split into two instances by key-group range, each
//! restored from the same snapshot with only its own key groups, and each continues on its own
//! WAL and archive. Every key ends up in exactly one of them, with its count intact.
//!
//! `cargo run --release --example rescale`

use std::collections::HashMap;
use std::path::Path;

use millpond::snapshot::{rescale, Archive, RescaleSource, SnapshotSettings};
use millpond::state::{
    key_group, KeyGroupRange, StoreSettings, StringCodec, U64Codec, ValueState,
    ValueStateDescriptor, DEFAULT_MAX_KEY_GROUPS,
};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};

type Error = Box<dyn std::error::Error>;

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Opens an instance owning `key_groups`, with its snapshots in `archive`.
fn open(
    dir: &Path,
    archive: &Path,
    key_groups: KeyGroupRange,
) -> Result<(Millpond, ValueState<String, u64>), Error> {
    let settings = Settings {
        store: StoreSettings {
            key_groups: Some(key_groups),
            ..StoreSettings::default()
        },
        snapshot_after_changes: u64::MAX,
        snapshot_after_wal_bytes: u64::MAX,
        snapshot_interval_max: None,
        ..Settings::default()
    };
    let opening = Millpond::builder(dir)
        .settings(settings)
        .snapshots_url(url(archive))
        .open()?;
    let counts = opening.store().value_state(ValueStateDescriptor::new(
        "user-counts",
        StringCodec,
        U64Codec,
    ))?;
    Ok((opening.recover()?, counts))
}

/// Event `i` of the stream: a user id.
fn user(i: u64) -> String {
    format!("user-{}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 50_000)
}

fn main() -> Result<(), Error> {
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let all = KeyGroupRange::all(DEFAULT_MAX_KEY_GROUPS);
    let owner_of = |u: &str| key_group(u.as_bytes(), DEFAULT_MAX_KEY_GROUPS);
    let mut model: HashMap<String, u64> = HashMap::new();
    let offset = |next| {
        [SourceOffset {
            topic: "events".into(),
            partition: 0,
            next_offset: next,
        }]
    };

    // One instance counts the first 500k events, commits and snapshots.
    let (one, counts) = open(&t.join("one"), &t.join("archive-one"), all)?;
    for i in 0..500_000 {
        let u = user(i);
        let c = counts.get(&u)?.unwrap_or(0) + 1;
        counts.update(&u, &c)?;
        *model.entry(u).or_default() += 1;
    }
    let _durable = one.commit(&offset(500_000))?;
    let snap = one.snapshot_now()?.ok_or("nothing to snapshot")?;
    println!(
        "one instance: {} users, snapshot {} ({} files, {} bytes)",
        model.len(),
        snap.manifest.sequence,
        snap.manifest.files().count(),
        snap.manifest.total_bytes()
    );
    one.close()?;

    // Split: each new instance's archive starts with its key groups of that snapshot.
    let source = Archive::open(&url(&t.join("archive-one")))?;
    let manifest = source.latest()?.ok_or("no snapshot")?;
    let halves = [KeyGroupRange::new(0, 64), KeyGroupRange::new(64, 128)];
    let mut instances = Vec::new();
    for (i, range) in halves.iter().enumerate() {
        let archive = t.join(format!("archive-{i}"));
        let report = rescale(
            &[RescaleSource::new(&source, &manifest)],
            &Archive::open(&url(&archive))?,
            *range,
            &SnapshotSettings::default(),
        )?;
        println!(
            "instance {i}: key groups {:?}, {} entries ({} files copied, {} rewritten)",
            range.as_range(),
            report.entries,
            report.files_copied,
            report.files_written
        );
        instances.push(open(&t.join(format!("instance-{i}")), &archive, *range)?);
    }

    // Both resume at the same offset, and each counts the events of its own users.
    for (job, _) in &instances {
        assert_eq!(job.resume_offset("events", 0), Some(500_000));
    }
    for i in 500_000..800_000 {
        let u = user(i);
        let (_, counts) = &instances[usize::from(!halves[0].contains(owner_of(&u)))];
        let c = counts.get(&u)?.unwrap_or(0) + 1;
        counts.update(&u, &c)?;
        *model.entry(u).or_default() += 1;
    }
    for (job, _) in &instances {
        let _durable = job.commit(&offset(800_000))?;
    }

    // Every user is in exactly one instance, with the right count.
    for (u, n) in &model {
        let (_, counts) = &instances[usize::from(!halves[0].contains(owner_of(u)))];
        if counts.get(u)? != Some(*n) {
            return Err(format!("{u}: expected {n}, found {:?}", counts.get(u)?).into());
        }
    }
    println!(
        "two instances: all {} users exact after 800k events, each in the instance owning its key group",
        model.len()
    );
    for (job, _) in instances {
        job.close()?;
    }
    Ok(())
}
