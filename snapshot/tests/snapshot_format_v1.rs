//! Archives written before digests and file ids (manifest frame version 1, data-file footer
//! version 1) are still read: `tests/fixtures/v1-archive` (see its README) verifies, with its
//! files counted as checked by CRC-32C only, restores to the values it was written with, and
//! a rescale of it records digests for the files it copies.

// Shared helpers, not all used here.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use millpond_snapshot::{
    rescale, Archive, RescaleSource, RestoreSettings, SnapshotBase, SnapshotSettings,
};
use millpond_state::{KeyGroupRange, Store};

use common::{check, register, store_settings, Model, KEY_GROUPS};

/// What the fixture's generator wrote.
fn model() -> Model {
    let mut model = Model::default();
    for i in 0..40u64 {
        let k = format!("key-{i:03}");
        model.counts.insert(k.clone(), i * 1000);
        if i % 4 == 0 {
            model.lists.insert(k.clone(), vec![i, i + 1]);
        }
        model.touched.insert(k);
    }
    model
}

/// A copy of the fixture (tests must not change it).
fn fixture(dir: &Path) -> Archive {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-archive");
    let to = dir.join("v1-archive");
    copy_dir(&from, &to);
    Archive::open(&format!("file://{}", to.display())).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn restore_and_check(archive: &Archive, what: &str) {
    let m = archive.latest().unwrap().unwrap();
    for download in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let base = SnapshotBase::open(
            archive,
            &m,
            dir.path().join("base"),
            &RestoreSettings {
                download,
                ..RestoreSettings::default()
            },
        )
        .unwrap();
        base.wait_local().unwrap();
        assert_eq!(base.is_local(), download);
        let store = Store::builder(dir.path().join("state"))
            .settings(store_settings(16 << 20))
            .base(base.clone(), m.states.clone())
            .open()
            .unwrap();
        let states = register(&store);
        check(&states, &model(), &format!("{what}, download {download}"));
        store.close().unwrap();
    }
}

#[test]
fn a_version_1_archive_verifies_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let archive = fixture(dir.path());
    let m = archive.latest().unwrap().unwrap();
    assert_eq!(
        (m.sequence, m.files().count(), m.total_entries()),
        (2, 4, 50)
    );
    assert!(m.files().all(|f| f.digest.is_none() && f.file_id.is_none()));
    let report = archive.verify(&m, |_| {}).unwrap();
    assert_eq!(
        (report.files, report.files_crc_only, report.entries),
        (4, 4, 50)
    );
    restore_and_check(&archive, "the version-1 fixture");
}

#[test]
fn a_damaged_version_1_file_is_still_caught_by_its_crc() {
    let dir = tempfile::tempdir().unwrap();
    let archive = fixture(dir.path());
    let m = archive.latest().unwrap().unwrap();
    let f = m.files().nth(1).unwrap();
    let path = archive.local_root().unwrap().join(&f.path);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    match archive.verify(&m, |_| {}) {
        Err(millpond_snapshot::Error::Corrupt { location, .. }) => {
            assert!(location.contains(&f.path), "{location}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rescale_of_a_version_1_archive_records_digests() {
    let dir = tempfile::tempdir().unwrap();
    let archive = fixture(dir.path());
    let m = archive.latest().unwrap().unwrap();
    let dest = Archive::open(&format!("file://{}", dir.path().join("dest").display())).unwrap();
    let report = rescale(
        &[RescaleSource::new(&archive, &m)],
        &dest,
        KeyGroupRange::all(KEY_GROUPS),
        &SnapshotSettings::default(),
    )
    .unwrap();
    assert_eq!(report.files_copied, 4);
    let copied = &report.manifest;
    assert!(copied.files().all(|f| f.digest.is_some()));
    let verified = dest.verify(copied, |_| {}).unwrap();
    assert_eq!((verified.files, verified.files_crc_only), (4, 0));
    // Same entries, read back through the new manifest (version 2, version-1 files).
    let entries = |a: &Archive, m: &millpond_snapshot::Manifest| {
        let d = tempfile::tempdir().unwrap();
        let base = SnapshotBase::open(
            a,
            m,
            d.path(),
            &RestoreSettings {
                download: false,
                ..RestoreSettings::default()
            },
        )
        .unwrap();
        base.entries(KeyGroupRange::all(KEY_GROUPS))
            .map(Result::unwrap)
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(entries(&archive, &m), entries(&dest, copied));
    restore_and_check(&dest, "the rescaled version-1 fixture");
}
