//! Recovery's replay on any number of threads: the committed units are pulled from the WAL and
//! each change goes, with its LSN, to the thread of its key group, so every key's changes are
//! applied in log order whatever the thread count; a change that cannot be applied stops the
//! recovery before a writer continues the log (its segments are left as they were).

use std::collections::BTreeMap;
use std::path::Path;

use millpond::state::{ListState, ListStateDescriptor, StringCodec, U64Codec};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};

const KEYS: u64 = 300;
const ROUNDS: u64 = 6;

fn events() -> ListStateDescriptor<String, u64> {
    ListStateDescriptor::new("events", StringCodec, U64Codec)
}

fn settings(replay_threads: usize) -> Settings {
    // Snapshots only on request: every recovery replays the whole log.
    Settings {
        snapshot_after_changes: u64::MAX,
        snapshot_after_wal_bytes: u64::MAX,
        snapshot_interval_max: None,
        replay_threads,
        ..Settings::default()
    }
}

fn open(dir: &Path, replay_threads: usize) -> (Millpond, ListState<String, u64>) {
    let opening = Millpond::builder(dir)
        .settings(settings(replay_threads))
        .open()
        .unwrap();
    let state = opening.store().list_state(events()).unwrap();
    (opening.recover().unwrap(), state)
}

fn key(k: u64) -> String {
    format!("key-{k}")
}

fn segments(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

#[test]
fn every_thread_count_replays_each_keys_changes_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let (job, state) = open(dir.path(), 2);
    // Each round appends its number to every key: a list shows the order it was applied in.
    for round in 0..ROUNDS {
        for k in 0..KEYS {
            state.add(&key(k), &round).unwrap();
        }
        job.commit(&[SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: round as i64 + 1,
        }])
        .unwrap()
        .wait()
        .unwrap();
    }
    state.add(&key(0), &99).unwrap(); // never committed
    job.close().unwrap();
    drop(state);

    for threads in [1, 2, 3, 8] {
        let (job, state) = open(dir.path(), threads);
        assert_eq!(job.recovery().replayed, KEYS * ROUNDS, "{threads} threads");
        assert_eq!(job.resume_offset("in", 0), Some(ROUNDS as i64));
        for k in 0..KEYS {
            assert_eq!(
                state.get(&key(k)).unwrap(),
                (0..ROUNDS).collect::<Vec<_>>(),
                "key {k} with {threads} threads"
            );
        }
        job.close().unwrap();
    }
}

#[test]
fn a_change_that_cannot_be_applied_stops_recovery_before_the_log_is_continued() {
    let dir = tempfile::tempdir().unwrap();
    let (job, state) = open(dir.path(), 2);
    for k in 0..KEYS {
        state.add(&key(k), &1).unwrap();
    }
    job.commit(&[]).unwrap().wait().unwrap();
    state.add(&key(0), &2).unwrap(); // uncommitted: a continued log would roll it back
    job.close().unwrap();
    drop(state);
    let before = segments(dir.path());

    for threads in [1, 4] {
        // The job forgot to register the state the WAL changes.
        let opening = Millpond::builder(dir.path())
            .settings(settings(threads))
            .open()
            .unwrap();
        let err = opening.recover().unwrap_err();
        assert!(
            err.to_string().contains("events"),
            "{threads} threads: {err}"
        );
        assert_eq!(
            segments(dir.path()),
            before,
            "{threads} threads: a failed recovery wrote to the log"
        );
    }
    let (job, state) = open(dir.path(), 4);
    assert_eq!(job.recovery().discarded, 1);
    assert_eq!(state.get(&key(0)).unwrap(), vec![1]);
    job.close().unwrap();
}
