//! Wrong data never passes: an older version of a data file under the newer one's name (same
//! size, same key groups, so every CRC-32C in and over it still matches, since entries carry
//! their own CRCs and cancel out of the CRCs around them) is refused by `Archive::verify`, by
//! a restore's in-place open before anything is served, by its download, and by a rescale; an
//! older manifest under a newer one's name is refused; every flipped byte of a small data file
//! is caught; and an object larger than the manifest says is refused before it is read.

// Shared helpers, not all used here.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use millpond_snapshot::{
    rescale, Archive, DataFileSettings, Error, Manifest, RescaleSource, RestoreSettings,
    SnapshotBase, SnapshotSettings, SnapshotWriter,
};
use millpond_state::{KeyGroupRange, Store};
use millpond_wal::{LocalSegmentSource, SourceOffset};
use object_store::local::LocalFileSystem;

use common::{register, store_settings, LogTo, KEY_GROUPS};

/// Two snapshots (sequences 2 and 3) of the same keys, every value changed between them to
/// another of the same length: each file of 3 has the size and key groups of the file of 2 at
/// the same place.
struct TwoVersions {
    dir: tempfile::TempDir,
    pristine: PathBuf,
    older: Manifest,
    newer: Manifest,
}

fn settings(target_file_bytes: u64) -> SnapshotSettings {
    SnapshotSettings {
        target_file_bytes,
        // Raw blocks: the sizes depend on the entries' lengths only.
        data_file: DataFileSettings {
            block_bytes: 256,
            compress: false,
        },
        // One partition: a snapshot's delta run lines up file for file with its parent's.
        partitions: 1,
        ..SnapshotSettings::default()
    }
}

/// The files `m` wrote itself: its delta run. The files it shares with its parent (the
/// bottom run under it) are the parent's, unchanged.
fn fresh(m: &Manifest) -> impl Iterator<Item = &millpond_snapshot::FileRef> + '_ {
    m.files().filter(move |f| f.written_by == m.sequence)
}

fn two_versions(keys: u64, target_file_bytes: u64) -> TwoVersions {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let wal = common::open_wal(&wal_dir);
    let store = Store::builder(dir.path().join("live"))
        .settings(store_settings(16 << 20))
        .change_sink(LogTo(wal.clone()))
        .open()
        .unwrap();
    let states = register(&store);
    let pristine = dir.path().join("pristine");
    let archive = Archive::open(&format!("file://{}", pristine.display())).unwrap();
    let mut writer =
        SnapshotWriter::claim(archive, KEY_GROUPS, settings(target_file_bytes)).unwrap();
    let mut manifests = Vec::new();
    for round in 0..2u64 {
        for i in 0..keys {
            // 1000 + round: the same encoded length in both rounds.
            states
                .counts
                .update(&format!("key-{i:04}"), &(i * 10_000 + 1000 + round))
                .unwrap();
        }
        wal.commit(&[SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: round as i64 + 1,
        }])
        .unwrap()
        .wait()
        .unwrap();
        let mut source = LocalSegmentSource::open(&wal_dir, writer.parent().lsn + 1).unwrap();
        let m = writer
            .snapshot_from_wal(&mut source, &store.schemas())
            .unwrap()
            .expect("a commit")
            .manifest;
        manifests.push(m);
    }
    wal.close().unwrap();
    store.close().unwrap();
    let newer = manifests.pop().unwrap();
    let older = manifests.pop().unwrap();
    assert_eq!((older.sequence, newer.sequence), (2, 3));
    assert_eq!(older.files().count(), fresh(&newer).count());
    for (o, n) in older.files().zip(fresh(&newer)) {
        // The scenario: only the content differs.
        assert_ne!(o.path, n.path);
        assert_eq!(
            (o.bytes, o.first_key_group, o.last_key_group, o.entries),
            (n.bytes, n.first_key_group, n.last_key_group, n.entries)
        );
        assert_eq!(n.written_by, 3, "every file of the newer snapshot is new");
    }
    TwoVersions {
        dir,
        pristine,
        older,
        newer,
    }
}

/// How an archive is read: a `file://` archive reads whole files from disk directly; one
/// opened over any object store (as S3 is) reads them through the store's API.
#[derive(Debug, Clone, Copy)]
enum Access {
    File,
    Store,
}

const ACCESS: [Access; 2] = [Access::File, Access::Store];

impl TwoVersions {
    /// A copy of the pristine archive to damage, opened as `access` says.
    fn copy(&self, name: &str, access: Access) -> (Archive, PathBuf) {
        let to = self.dir.path().join(format!("{name}-{access:?}"));
        copy_dir(&self.pristine, &to);
        (open(&to, access), to)
    }
}

fn open(root: &Path, access: Access) -> Archive {
    std::fs::create_dir_all(root).unwrap();
    match access {
        Access::File => Archive::open(&format!("file://{}", root.display())).unwrap(),
        Access::Store => Archive::from_store(
            Arc::new(LocalFileSystem::new_with_prefix(root).unwrap()),
            "",
            &format!("store://{}", root.display()),
        )
        .unwrap(),
    }
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

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, Error>, path: &str, what: &str, context: &str) {
    match r {
        Err(Error::Corrupt {
            what: got,
            location,
        }) => {
            assert!(
                location.contains(path),
                "{context}: the error names {location}, not {path}"
            );
            assert!(got.contains(what), "{context}: {got}, expected {what}");
        }
        other => panic!("{context}: expected Corrupt ({what}) at {path}, got {other:?}"),
    }
}

fn restore_settings(download: bool) -> RestoreSettings {
    RestoreSettings {
        download,
        ..RestoreSettings::default()
    }
}

#[test]
fn both_versions_verify_and_restore_before_any_swap() {
    let tv = two_versions(300, 1 << 10);
    for access in ACCESS {
        let (archive, _) = tv.copy("ok", access);
        for m in [&tv.older, &tv.newer] {
            let report = archive.verify(m, |_| {}).unwrap();
            assert_eq!(
                (report.files, report.files_crc_only),
                (m.files().count(), 0)
            );
            assert!(m.files().all(|f| f.digest.is_some() && f.file_id.is_some()));
            let dir = tempfile::tempdir().unwrap();
            let base =
                SnapshotBase::open(&archive, m, dir.path(), &restore_settings(true)).unwrap();
            base.wait_local().unwrap();
            let n = base
                .entries(KeyGroupRange::all(KEY_GROUPS))
                .map(Result::unwrap)
                .count() as u64;
            // Every key once, however many runs hold it.
            assert_eq!(n, 300);
        }
    }
    // Different content, different ids and digests; the CRC-32C alone may not tell.
    for (o, n) in tv.older.files().zip(fresh(&tv.newer)) {
        assert_ne!(o.digest, n.digest);
        assert_ne!(o.file_id, n.file_id);
    }
}

/// The case: snapshot 2's file copied over snapshot 3's.
#[test]
fn an_older_version_of_a_data_file_is_refused_by_verify_restore_and_rescale() {
    let tv = two_versions(300, 1 << 10);
    assert!(
        fresh(&tv.newer).count() >= 3,
        "{} files",
        fresh(&tv.newer).count()
    );
    for access in ACCESS {
        for (i, (old, new)) in tv.older.files().zip(fresh(&tv.newer)).enumerate() {
            let ctx = format!("{access:?}, file {i} ({})", new.path);
            let (archive, root) = tv.copy(&format!("swap-{i}"), access);
            std::fs::copy(root.join(&old.path), root.join(&new.path)).unwrap();

            assert_corrupt(
                archive.verify(&tv.newer, |_| {}),
                &new.path,
                "file id",
                &format!("{ctx}: verify"),
            );
            // A restore refuses it at open, before anything is served: in place (what `dump`
            // does) and with downloads.
            for download in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                assert_corrupt(
                    SnapshotBase::open(
                        &archive,
                        &tv.newer,
                        dir.path(),
                        &restore_settings(download),
                    ),
                    &new.path,
                    "file id",
                    &format!("{ctx}: restore (download {download})"),
                );
            }
            // A rescale downloads the file whole: its digest differs.
            let dest = open(&tv.dir.path().join(format!("dest-{i}-{access:?}")), access);
            assert_corrupt(
                rescale(
                    &[RescaleSource::new(&archive, &tv.newer)],
                    &dest,
                    KeyGroupRange::all(KEY_GROUPS),
                    &settings(1 << 10),
                ),
                &new.path,
                "digest",
                &format!("{ctx}: rescale"),
            );
            assert!(dest.sequences().unwrap().is_empty(), "{ctx}");
        }
    }
}

/// The download's own check, for a manifest entry without a file id (as if the id check at
/// open had passed): the digest refuses the older version, and reads of the file fail from
/// then on, never answering with its old values.
#[test]
fn a_download_refuses_an_older_version_by_its_digest() {
    let tv = two_versions(300, 1 << 10);
    let (old, new) = (
        tv.older.files().nth(1).unwrap(),
        fresh(&tv.newer).nth(1).unwrap(),
    );
    let mut without_ids = tv.newer.clone();
    for f in without_ids
        .partitions
        .iter_mut()
        .flat_map(|p| p.runs.iter_mut().flat_map(|r| r.files.iter_mut()))
    {
        f.file_id = None;
    }
    for access in ACCESS {
        let (archive, root) = tv.copy("download", access);
        std::fs::copy(root.join(&old.path), root.join(&new.path)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let base = SnapshotBase::open(&archive, &without_ids, dir.path(), &restore_settings(true))
            .unwrap();
        assert_corrupt(
            base.wait_local(),
            &new.path,
            "XXH3-128 digest",
            &format!("{access:?}"),
        );
        let entries: Vec<_> = base.entries(KeyGroupRange::all(KEY_GROUPS)).collect();
        assert!(entries.iter().any(Result::is_err), "{access:?}");
        // Nothing of the damaged file was kept locally under its name.
        let local = dir.path().join(new.path.rsplit('/').next().unwrap());
        assert!(!local.exists(), "{access:?}: {}", local.display());
    }
}

#[test]
fn an_older_manifest_under_a_newer_ones_name_is_refused() {
    let tv = two_versions(50, 1 << 10);
    for access in ACCESS {
        let (archive, root) = tv.copy("manifest", access);
        let name = |seq: u64| root.join("manifests").join(format!("{seq:020}.mpm"));
        std::fs::copy(name(2), name(3)).unwrap();
        let what = "sequence differs from its name";
        let path = "manifests/00000000000000000003.mpm";
        assert_corrupt(archive.manifest_at(3), path, what, &format!("{access:?}"));
        assert_corrupt(archive.latest(), path, what, &format!("{access:?}"));
        assert_corrupt(
            archive.find(&tv.newer.id),
            path,
            what,
            &format!("{access:?}"),
        );
    }
}

/// A snapshot of one small data file, every byte of it flipped in turn (xor 0xff and xor 1):
/// `verify` catches each, and a restore reading in place never serves the damaged file's
/// entries as good.
#[test]
fn every_flipped_byte_of_a_small_data_file_is_caught() {
    let tv = two_versions(6, 64 << 20);
    let m = &tv.newer;
    assert_eq!(fresh(m).count(), 1);
    let f = fresh(m).next().unwrap();
    let (archive, root) = tv.copy("flips", Access::File);
    let path = root.join(&f.path);
    let pristine = std::fs::read(&path).unwrap();
    assert!(pristine.len() < 1024, "{} bytes", pristine.len());
    for at in 0..pristine.len() {
        for mask in [0xff, 0x01] {
            let ctx = format!("byte {at} xor {mask:#04x}");
            let mut damaged = pristine.clone();
            damaged[at] ^= mask;
            std::fs::write(&path, &damaged).unwrap();
            assert_corrupt(archive.verify(m, |_| {}), &f.path, "", &ctx);
            let dir = tempfile::tempdir().unwrap();
            if let Ok(base) = SnapshotBase::open(&archive, m, dir.path(), &restore_settings(false))
            {
                let entries: Vec<_> = base.entries(KeyGroupRange::all(KEY_GROUPS)).collect();
                assert!(entries.iter().any(Result::is_err), "{ctx}: served");
            }
        }
    }
    std::fs::write(&path, &pristine).unwrap();
    archive.verify(m, |_| {}).unwrap();
}

/// A data file object far larger than the manifest says (a sparse 3 GiB file) is refused by
/// its size before a byte of it is read: by `verify` and by a download.
#[test]
fn a_data_file_larger_than_the_manifest_says_is_refused_unread() {
    let tv = two_versions(50, 1 << 10);
    let f = fresh(&tv.newer).next().unwrap();
    for access in ACCESS {
        let (archive, root) = tv.copy("large", access);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join(&f.path))
            .unwrap();
        file.set_len(3 << 30).unwrap();
        let started = std::time::Instant::now();
        assert_corrupt(
            archive.verify(&tv.newer, |_| {}),
            &f.path,
            "size differs",
            &format!("{access:?}: verify"),
        );
        // Reading 3 GiB would take far longer (and hashing it in a debug build, minutes).
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
        let dir = tempfile::tempdir().unwrap();
        match SnapshotBase::open(&archive, &tv.newer, dir.path(), &restore_settings(true)) {
            Ok(base) => assert_corrupt(
                base.wait_local(),
                &f.path,
                "size differs",
                &format!("{access:?}: download"),
            ),
            Err(e) => panic!("{access:?}: the in-place open reads the manifest's bytes: {e}"),
        }
    }
}
