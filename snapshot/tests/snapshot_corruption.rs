//! Damage in a `file://` archive is found, never served: a data file with a flipped byte, a
//! truncated data file, a data file replaced by another one of the same size, a manifest with
//! a flipped byte, and a missing data file. `Archive::verify` reports them (`Error::Corrupt`,
//! `Error::NotFound` for the missing file); a restore (`SnapshotBase::open`, then reads through
//! a store) fails or returns errors for the damaged keys, never wrong data and never a panic;
//! a snapshot built on a damaged parent fails instead of committing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use millpond_snapshot::{
    Archive, DataFileSettings, Error, FileRef, Manifest, RestoreSettings, SnapshotBase,
    SnapshotSettings, SnapshotWriter,
};
use millpond_state::{
    BoxError, Change, ChangeSink, ListState, ListStateDescriptor, MapState, MapStateDescriptor,
    StateSchema, Store, StoreSettings, StringCodec, U64Codec, ValueState, ValueStateDescriptor,
};
use millpond_wal::{
    open_local, LocalSegmentSource, SegmentSettings, SourceOffset, Wal, WalSettings,
};
use object_store::local::LocalFileSystem;

/// Many key groups and fixed-width keys and values: most data files hold the same number of
/// entries of the same sizes, so some have the same length.
const KEY_GROUPS: u16 = 4096;
const KEYS: u64 = 600;

struct LogTo(Arc<Wal>);

impl ChangeSink for LogTo {
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError> {
        Ok(self.0.append_change(change)?)
    }
}

struct States {
    counts: ValueState<String, u64>,
    lists: ListState<String, u64>,
    maps: MapState<String, String, u64>,
}

fn register(store: &Store) -> States {
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
    }
}

fn store_settings() -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: 16 << 20,
        max_key_groups: KEY_GROUPS,
        ..StoreSettings::default()
    }
}

#[derive(Default, Clone)]
struct Model {
    counts: BTreeMap<String, u64>,
    lists: BTreeMap<String, Vec<u64>>,
    maps: BTreeMap<String, BTreeMap<String, u64>>,
}

fn key(i: u64) -> String {
    format!("key-{i:05}")
}

/// An archive with one snapshot of a small state (many small data files of several blocks),
/// and the model it holds.
struct Fixture {
    dir: tempfile::TempDir,
    pristine: PathBuf,
    manifest: Manifest,
    model: Model,
    wal_dir: PathBuf,
    schemas: Vec<StateSchema>,
}

fn settings() -> SnapshotSettings {
    SnapshotSettings {
        target_file_bytes: 2 << 10,
        data_file: DataFileSettings {
            block_bytes: 256,
            compress: false,
        },
        ..SnapshotSettings::default()
    }
}

fn fixture() -> Fixture {
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
    let mut model = Model::default();
    for i in 0..KEYS {
        let k = key(i);
        states.counts.update(&k, &(i * 1000)).unwrap();
        model.counts.insert(k.clone(), i * 1000);
        if i % 4 == 0 {
            states.lists.add_all(&k, &[i, i + 1]).unwrap();
            model.lists.insert(k.clone(), vec![i, i + 1]);
        }
        if i % 6 == 0 {
            states.maps.put(&k, &"a".to_string(), &i).unwrap();
            model
                .maps
                .entry(k.clone())
                .or_default()
                .insert("a".into(), i);
        }
    }
    wal.commit(&[SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset: 1,
    }])
    .unwrap()
    .wait()
    .unwrap();
    let schemas = store.schemas();
    wal.close().unwrap();
    store.close().unwrap();

    let pristine = dir.path().join("pristine");
    let archive = Archive::open(&format!("file://{}", pristine.display())).unwrap();
    let mut writer = SnapshotWriter::claim(archive, KEY_GROUPS, settings()).unwrap();
    let mut source = LocalSegmentSource::open(&wal_dir, 1).unwrap();
    let manifest = writer
        .snapshot_from_wal(&mut source, &schemas)
        .unwrap()
        .expect("a commit")
        .manifest;
    assert!(
        manifest.files().count() >= 8,
        "{} files",
        manifest.files().count()
    );
    Fixture {
        dir,
        pristine,
        manifest,
        model,
        wal_dir,
        schemas,
    }
}

impl Fixture {
    /// A copy of the pristine archive to damage, opened as `access` says.
    fn copy(&self, name: &str, access: Access) -> (Archive, PathBuf) {
        let to = self.dir.path().join(format!("{name}-{access:?}"));
        copy_dir(&self.pristine, &to);
        let archive = match access {
            Access::File => Archive::open(&format!("file://{}", to.display())).unwrap(),
            Access::Store => Archive::from_store(
                Arc::new(LocalFileSystem::new_with_prefix(&to).unwrap()),
                "",
                &format!("store://{}", to.display()),
            )
            .unwrap(),
        };
        (archive, to)
    }

    /// A file with several blocks (so a byte in its middle is inside a data block).
    fn big_file(&self) -> &FileRef {
        self.manifest
            .files()
            .max_by_key(|f| f.bytes)
            .expect("files")
    }

    /// Keys whose entries live in `file`.
    fn keys_in(&self, file: &FileRef) -> BTreeSet<String> {
        (0..KEYS)
            .map(key)
            .filter(|k| {
                let kg = millpond_state::key_group(k.as_bytes(), KEY_GROUPS);
                (file.first_key_group..=file.last_key_group).contains(&kg)
            })
            .collect()
    }

    /// Restores `manifest` of `archive` (downloading in the background or reading by ranges
    /// only) and reads every key through a store. Every read must be the model's value or an
    /// error; returns the keys whose reads failed, or `Err` if the restore itself failed.
    fn restore_reads(
        &self,
        archive: &Archive,
        manifest: &Manifest,
        download: bool,
        damaged: Option<&str>,
        what: &str,
    ) -> Result<BTreeSet<String>, Error> {
        let dir = tempfile::tempdir().unwrap();
        let base = SnapshotBase::open(
            archive,
            manifest,
            dir.path().join("base"),
            &RestoreSettings {
                download,
                // Downloads from the local archive as a running instance makes them: hard
                // links, checked like copies (the copy path: cli_restore's damaged download).
                hard_links: download,
                ..RestoreSettings::default()
            },
        )?;
        if download {
            // Let the downloads finish (or fail), so reads after a failed download are
            // checked too. A damaged file fails its download (size and CRC-32C).
            match (base.wait_local(), damaged) {
                (Ok(()), None) => {}
                (Err(e), Some(path)) => {
                    assert!(e.to_string().contains(path), "{what}: {e}");
                    assert!(!e.is_transient(), "{what}: {e:?}");
                }
                (r, _) => panic!("{what}: the downloads gave {r:?}"),
            }
        }
        let store = Store::builder(dir.path().join("state"))
            .settings(store_settings())
            .base(base.clone(), manifest.states.clone())
            .open()
            .unwrap();
        let states = register(&store);
        let mut failed = BTreeSet::new();
        for i in 0..KEYS {
            let k = key(i);
            let mut ok = true;
            match states.counts.get(&k) {
                Ok(v) => assert_eq!(
                    v,
                    self.model.counts.get(&k).copied(),
                    "{what}: count of {k}"
                ),
                Err(_) => ok = false,
            }
            match states.lists.get(&k) {
                Ok(v) => assert_eq!(
                    v,
                    self.model.lists.get(&k).cloned().unwrap_or_default(),
                    "{what}: list of {k}"
                ),
                Err(_) => ok = false,
            }
            match states.maps.entries(&k) {
                Ok(v) => assert_eq!(
                    v.into_iter().collect::<BTreeMap<_, _>>(),
                    self.model.maps.get(&k).cloned().unwrap_or_default(),
                    "{what}: map of {k}"
                ),
                Err(_) => ok = false,
            }
            if !ok {
                failed.insert(k);
            }
        }
        store.close().unwrap();
        Ok(failed)
    }

    /// A new writer claims `archive` and snapshots a change to `k`. A delta snapshot never
    /// reads its parent's files, so damage there does not stop it; the new snapshot names
    /// the damaged file still, so `verify` and restores keep reporting it.
    fn snapshot_on_top(&self, archive: &Archive, k: &str) -> millpond_snapshot::Result<()> {
        let before = archive.sequences().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        copy_dir(&self.wal_dir, &wal_dir);
        let (wal, _) = open_local(
            &wal_dir,
            self.manifest.lsn,
            WalSettings::default(),
            SegmentSettings::default(),
            |_| Ok::<(), std::io::Error>(()),
        )
        .unwrap();
        let wal = Arc::new(wal);
        // A store logging to the copied WAL changes `k`: its file must be merged again.
        let store = Store::builder(dir.path().join("live"))
            .settings(store_settings())
            .change_sink(LogTo(wal.clone()))
            .open()
            .unwrap();
        let states = register(&store);
        states.counts.update(&k.to_string(), &7).unwrap();
        states.lists.add(&k.to_string(), &7).unwrap();
        wal.commit(&[SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: 2,
        }])
        .unwrap()
        .wait()
        .unwrap();
        wal.close().unwrap();
        store.close().unwrap();
        let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings())?;
        let mut source = LocalSegmentSource::open(&wal_dir, writer.parent().lsn + 1).unwrap();
        let r = writer.snapshot_from_wal(&mut source, &self.schemas);
        let after = archive.sequences().unwrap();
        if r.is_err() {
            // Only the claim was added.
            assert_eq!(after.len(), before.len() + 1, "{after:?}");
        }
        r.map(|_| ())
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

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn manifest_path(root: &Path, m: &Manifest) -> PathBuf {
    root.join("manifests")
        .join(format!("{:020}.mpm", m.sequence))
}

/// A restore of damaged data fails with `Corrupt` (or `NotFound`): never a transient error,
/// which a caller would retry for ever.
fn assert_damage(e: &Error, what: &str) {
    assert!(
        matches!(e, Error::Corrupt { .. } | Error::NotFound { .. }) && !e.is_transient(),
        "{what}: restore failed with {e:?} (transient: {}), not Corrupt",
        e.is_transient()
    );
}

#[test]
fn the_pristine_archive_verifies_and_restores() {
    let fx = fixture();
    for access in ACCESS {
        let (archive, _) = fx.copy("ok", access);
        let latest = archive.latest().unwrap().unwrap();
        assert_eq!(latest, fx.manifest);
        archive.verify(&latest, |_| {}).unwrap();
        for download in [true, false] {
            let failed = fx
                .restore_reads(&archive, &latest, download, None, "pristine")
                .unwrap();
            assert!(failed.is_empty(), "{access:?}: {failed:?}");
        }
    }
}

#[test]
fn a_flipped_byte_in_a_data_file_is_corrupt_everywhere() {
    let fx = fixture();
    let file = fx.big_file().clone();
    // The middle of the file (a data block), its first byte, the index, the footer.
    let positions = [
        file.bytes as usize / 2,
        0,
        file.bytes as usize - 60,
        file.bytes as usize - 10,
    ];
    for access in ACCESS {
        for (n, at) in positions.into_iter().enumerate() {
            let what = format!(
                "{access:?}: byte {at} of {} ({} bytes) flipped",
                file.path, file.bytes
            );
            let (archive, root) = fx.copy(&format!("flip-{n}"), access);
            flip(&root.join(&file.path), at);
            let m = archive.latest().unwrap().unwrap();
            match archive.verify(&m, |_| {}) {
                Err(Error::Corrupt { location, .. }) => {
                    assert!(location.contains(&file.path), "{what}: {location}")
                }
                other => panic!("{what}: verify gave {other:?}"),
            }
            for download in [true, false] {
                let what = format!("{what}, download {download}");
                match fx.restore_reads(&archive, &m, download, Some(&file.path), &what) {
                    // Footer or index damage: the file does not open.
                    Err(e) => assert_damage(&e, &what),
                    Ok(failed) => {
                        // Block damage: the keys of that block fail, and only keys of that
                        // file.
                        assert!(!failed.is_empty(), "{what}: no read failed");
                        let in_file = fx.keys_in(&file);
                        assert!(failed.is_subset(&in_file), "{what}: {failed:?}");
                    }
                }
            }
            let k = fx.keys_in(&file).into_iter().next().unwrap();
            fx.snapshot_on_top(&archive, &k).unwrap();
            let latest = archive.latest().unwrap().unwrap();
            assert!(latest.files().any(|f| f.path == file.path), "{}", what);
        }
    }
}

#[test]
fn a_truncated_data_file_is_corrupt() {
    let fx = fixture();
    let file = fx.big_file().clone();
    for access in ACCESS {
        for (n, keep) in [file.bytes / 2, file.bytes - 1, 0].into_iter().enumerate() {
            let what = format!(
                "{access:?}: {} cut to {keep} of {} bytes",
                file.path, file.bytes
            );
            let (archive, root) = fx.copy(&format!("cut-{n}"), access);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(root.join(&file.path))
                .unwrap();
            f.set_len(keep).unwrap();
            drop(f);
            let m = archive.latest().unwrap().unwrap();
            match archive.verify(&m, |_| {}) {
                Err(Error::Corrupt { .. }) => {}
                other => panic!("{what}: verify gave {other:?}"),
            }
            for download in [true, false] {
                let what = format!("{what}, download {download}");
                match fx.restore_reads(&archive, &m, download, Some(&file.path), &what) {
                    Err(e) => assert_damage(&e, &what),
                    Ok(failed) => assert!(
                        !failed.is_empty() && failed.is_subset(&fx.keys_in(&file)),
                        "{what}: {failed:?}"
                    ),
                }
            }
            let k = fx.keys_in(&file).into_iter().next().unwrap();
            fx.snapshot_on_top(&archive, &k).unwrap();
            let latest = archive.latest().unwrap().unwrap();
            assert!(latest.files().any(|f| f.path == file.path), "{}", what);
        }
    }
}

#[test]
fn a_data_file_replaced_by_another_of_the_same_size_is_corrupt() {
    let fx = fixture();
    let mut by_size: BTreeMap<u64, Vec<&FileRef>> = BTreeMap::new();
    for f in fx.manifest.files() {
        by_size.entry(f.bytes).or_default().push(f);
    }
    let (a, b) = by_size
        .values()
        .find(|v| v.len() >= 2)
        .map(|v| (v[0].clone(), v[1].clone()))
        .expect("two data files of the same size (fixed-width entries)");
    for access in ACCESS {
        let what = format!("{access:?}: {} holds the bytes of {}", b.path, a.path);
        let (archive, root) = fx.copy("swap", access);
        std::fs::copy(root.join(&a.path), root.join(&b.path)).unwrap();
        let m = archive.latest().unwrap().unwrap();
        match archive.verify(&m, |_| {}) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{what}: verify gave {other:?}"),
        }
        for download in [true, false] {
            let what = format!("{what}, download {download}");
            match fx.restore_reads(&archive, &m, download, Some(&b.path), &what) {
                Err(e) => assert_damage(&e, &what),
                Ok(failed) => assert!(
                    fx.keys_in(&b).is_subset(&failed),
                    "{what}: keys of {} read without an error: {:?}",
                    b.path,
                    fx.keys_in(&b).difference(&failed).collect::<Vec<_>>()
                ),
            }
        }
        let k = fx.keys_in(&b).into_iter().next().unwrap();
        fx.snapshot_on_top(&archive, &k).unwrap();
        let latest = archive.latest().unwrap().unwrap();
        assert!(latest.files().any(|f| f.path == b.path), "{}", what);
    }
}

#[test]
fn a_flipped_byte_anywhere_in_a_manifest_is_corrupt() {
    let fx = fixture();
    let (archive, root) = fx.copy("manifest", Access::File);
    let path = manifest_path(&root, &fx.manifest);
    let pristine = std::fs::read(&path).unwrap();
    for at in 0..pristine.len() {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x5a;
        std::fs::write(&path, &bytes).unwrap();
        match archive.latest() {
            Err(Error::Corrupt { location, .. }) => {
                assert!(location.contains("manifests/"), "byte {at}: {location}")
            }
            other => panic!("byte {at} of the manifest flipped: latest() gave {other:?}"),
        }
    }
    // The damaged manifest stops the writer and GC instead of being skipped.
    flip(&path, pristine.len() / 2);
    assert!(matches!(
        archive.manifest_at(fx.manifest.sequence),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(archive.find("latest"), Err(Error::Corrupt { .. })));
    match SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings()) {
        Err(Error::Corrupt { .. }) => {}
        other => panic!(
            "claim over a damaged manifest: {:?}",
            other.map(|w| w.epoch())
        ),
    }
    match archive.gc(1, std::time::Duration::ZERO) {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("gc over a damaged manifest: {other:?}"),
    }
    // Nothing was deleted.
    for f in fx.manifest.files() {
        assert!(root.join(&f.path).exists(), "{} deleted", f.path);
    }
    // A manifest under the wrong name (another sequence) is refused too.
    std::fs::write(&path, &pristine).unwrap();
    let other = root
        .join("manifests")
        .join(format!("{:020}.mpm", fx.manifest.sequence + 1));
    std::fs::copy(&path, &other).unwrap();
    assert!(matches!(archive.latest(), Err(Error::Corrupt { .. })));
}

#[test]
fn a_missing_data_file_is_not_found() {
    let fx = fixture();
    let file = fx.big_file().clone();
    for access in ACCESS {
        let (archive, root) = fx.copy("missing", access);
        std::fs::remove_file(root.join(&file.path)).unwrap();
        let m = archive.latest().unwrap().unwrap();
        match archive.verify(&m, |_| {}) {
            Err(Error::NotFound { what }) => assert!(what.contains(&file.path), "{what}"),
            other => panic!("{access:?}: verify gave {other:?}"),
        }
        for download in [true, false] {
            match fx.restore_reads(&archive, &m, download, Some(&file.path), "missing") {
                Err(Error::NotFound { what }) => assert!(what.contains(&file.path), "{what}"),
                Err(e) => panic!(
                    "{access:?}, download {download}: restoring a snapshot with a missing file \
                     gave {e:?} (transient: {}), not NotFound",
                    e.is_transient()
                ),
                Ok(failed) => panic!(
                    "{access:?}, download {download}: the restore opened; failed reads \
                     {failed:?}"
                ),
            }
        }
        let k = fx.keys_in(&file).into_iter().next().unwrap();
        fx.snapshot_on_top(&archive, &k).unwrap();
        let latest = archive.latest().unwrap().unwrap();
        assert!(
            latest.files().any(|f| f.path == file.path),
            "{}",
            format!("{access:?}")
        );
    }
}
