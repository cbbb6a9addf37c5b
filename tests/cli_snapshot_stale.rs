//! The `millpond snapshot` commands refuse an older version of a data file under the newer
//! one's name (same size, same key groups: its CRC-32Cs all match): `verify`, `dump` and
//! `restore` exit 1 naming the file, `dump` printing no entry. And a version-1 archive
//! verifies, with a note that its files were checked by CRC-32C only.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use millpond_snapshot::{Archive, DataFileSettings, Manifest, SnapshotSettings, SnapshotWriter};
use millpond_state::{Store, StoreSettings, StringCodec, U64Codec, ValueStateDescriptor};
use millpond_wal::{open_local, LocalSegmentSource, SegmentSettings, SourceOffset, WalSettings};

mod common {
    pub mod cli;
}
use common::cli::millpond;

const KEY_GROUPS: u16 = 128;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code 1, an `error: …` line containing `needle`, nothing on stdout.
#[track_caller]
fn assert_refused(o: &Output, needle: &str) {
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(out.is_empty(), "printed: {out}");
}

/// Snapshots 2 and 3 of the same keys, every value changed to another of the same length.
fn two_versions(root: &Path) -> (Manifest, Manifest) {
    let (wal, _) = open_local(
        root.join("wal"),
        0,
        WalSettings::default(),
        SegmentSettings::default(),
        |_c| Ok::<(), std::io::Error>(()),
    )
    .unwrap();
    let wal = Arc::new(wal);
    let store = Store::builder(root.join("state"))
        .settings(StoreSettings {
            max_key_groups: KEY_GROUPS,
            ..StoreSettings::default()
        })
        .change_sink_arc(wal.clone())
        .open()
        .unwrap();
    let counts = store
        .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
        .unwrap();
    let archive = Archive::open(&format!("file://{}", root.join("archive").display())).unwrap();
    let settings = SnapshotSettings {
        target_file_bytes: 1 << 10,
        data_file: DataFileSettings {
            block_bytes: 256,
            compress: false,
        },
        ..SnapshotSettings::default()
    };
    let mut writer = SnapshotWriter::claim(archive, KEY_GROUPS, settings).unwrap();
    let mut manifests = Vec::new();
    for round in 0..2u64 {
        for i in 0..100u64 {
            counts
                .update(&format!("key-{i:03}"), &(i * 10_000 + 1000 + round))
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
        let mut log = LocalSegmentSource::open(root.join("wal"), writer.parent().lsn + 1).unwrap();
        manifests.push(
            writer
                .snapshot_from_wal(&mut log, &store.schemas())
                .unwrap()
                .unwrap()
                .manifest,
        );
    }
    wal.close().unwrap();
    store.close().unwrap();
    let newer = manifests.pop().unwrap();
    (manifests.pop().unwrap(), newer)
}

#[test]
fn verify_dump_and_restore_refuse_an_older_version_of_a_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let (older, newer) = two_versions(dir.path());
    let archive = dir.path().join("archive");
    let url = format!("file://{}", archive.display());
    let (old, new) = (older.files().next().unwrap(), newer.files().next().unwrap());
    assert_eq!(
        (old.bytes, old.first_key_group, old.last_key_group),
        (new.bytes, new.first_key_group, new.last_key_group)
    );
    let o = millpond(&["snapshot", "verify", "latest", "--store", &url]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::copy(archive.join(&old.path), archive.join(&new.path)).unwrap();

    let o = millpond(&["snapshot", "verify", "latest", "--store", &url]);
    assert_refused(&o, "file id differs");
    assert!(text(&o.stderr).contains(&new.path), "{}", text(&o.stderr));
    let o = millpond(&[
        "snapshot", "dump", "latest", "--state", "counts", "--store", &url,
    ]);
    assert_refused(&o, "file id differs");
    let to = dir.path().join("restored");
    let o = millpond(&[
        "snapshot",
        "restore",
        "latest",
        "--to",
        to.to_str().unwrap(),
        "--store",
        &url,
    ]);
    assert_refused(&o, "file id differs");
}

/// A copy of the version-1 fixture archive in `dir`; its URL.
fn v1_archive(dir: &Path) -> String {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshot/tests/fixtures/v1-archive");
    let to = dir.join("v1");
    for sub in ["manifests", "data"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(from.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(sub).join(e.file_name())).unwrap();
        }
    }
    format!("file://{}", to.display())
}

#[test]
fn a_version_1_archive_verifies_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let url = v1_archive(dir.path());
    let o = millpond(&["snapshot", "verify", "latest", "--store", &url]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("ok: "), "{out}");
    assert!(out.contains("4 files, 50 entries"), "{out}");
    assert!(
        out.contains("note: 4 of the files were written before digests"),
        "{out}"
    );
}

#[test]
fn inspect_says_crc32c_only_for_version_1_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = v1_archive(dir.path());
    let o = millpond(&["snapshot", "inspect", "latest", "--store", &url]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("data/")).collect();
    assert_eq!(rows.len(), 4, "{out}");
    for row in rows {
        assert!(row.contains("crc32c only"), "{row}");
    }

    let o = millpond(&["snapshot", "inspect", "latest", "--json", "--store", &url]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 4);
    for f in files {
        assert!(f["digest"].is_null() && f["file_id"].is_null(), "{f}");
        assert!(f["crc32c"].is_u64(), "{f}");
    }
}
