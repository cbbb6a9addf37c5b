//! Generator of the version-1 fixture (run once, before the format changed).

mod common;

use std::sync::Arc;

use millpond_snapshot::{Archive, DataFileSettings, SnapshotSettings, SnapshotWriter};
use millpond_state::Store;
use millpond_wal::{open_local, LocalSegmentSource, SegmentSettings, SourceOffset, WalSettings};

use common::{register, store_settings, LogTo, KEY_GROUPS};

#[test]
#[ignore]
fn write_v1_fixture() {
    let to = std::env::var("MILLPOND_V1_FIXTURE").expect("MILLPOND_V1_FIXTURE");
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let (wal, _) = open_local(&wal_dir, 0, WalSettings::default(), SegmentSettings::default(), |_| {
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    let wal = Arc::new(wal);
    let store = Store::builder(dir.path().join("live"))
        .settings(store_settings(16 << 20))
        .change_sink(LogTo(wal.clone()))
        .open()
        .unwrap();
    let states = register(&store);
    for i in 0..40u64 {
        let k = format!("key-{i:03}");
        states.counts.update(&k, &(i * 1000)).unwrap();
        if i % 4 == 0 {
            states.lists.add_all(&k, &[i, i + 1]).unwrap();
        }
    }
    wal.commit(&[SourceOffset { topic: "in".into(), partition: 0, next_offset: 40 }])
        .unwrap()
        .wait()
        .unwrap();
    let schemas = store.schemas();
    wal.close().unwrap();
    store.close().unwrap();
    let archive = Archive::open(&format!("file://{to}")).unwrap();
    let settings = SnapshotSettings {
        target_file_bytes: 512,
        data_file: DataFileSettings { block_bytes: 128, compress: true },
        ..SnapshotSettings::default()
    };
    let mut writer = SnapshotWriter::claim(archive, KEY_GROUPS, settings).unwrap();
    let mut source = LocalSegmentSource::open(&wal_dir, 1).unwrap();
    let m = writer.snapshot_from_wal(&mut source, &schemas).unwrap().unwrap().manifest;
    eprintln!("{} files, {} entries, {} bytes", m.files.len(), m.total_entries(), m.total_bytes());
}
