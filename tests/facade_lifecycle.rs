//! The facade's own contract, on the embedded default: what recovery restores and discards,
//! how offsets merge, what is refused, TTL across a restart with an injected clock, and the
//! metrics it reports.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use millpond::state::{
    ManualClock, StoreSettings, StringCodec, TtlConfig, U64Codec, ValueState, ValueStateDescriptor,
};
use millpond::wal::SourceOffset;
use millpond::{Error, Millpond, Settings};

fn counts() -> ValueStateDescriptor<String, u64> {
    ValueStateDescriptor::new("counts", StringCodec, U64Codec)
}

fn at(partition: i32, next_offset: i64) -> SourceOffset {
    SourceOffset {
        topic: "in".into(),
        partition,
        next_offset,
    }
}

fn open(dir: &std::path::Path) -> (Millpond, ValueState<String, u64>) {
    let opening = Millpond::builder(dir)
        .settings(Settings {
            snapshot_after_changes: u64::MAX,
            snapshot_after_wal_bytes: u64::MAX,
            snapshot_interval_max: None,
            ..Settings::default()
        })
        .open()
        .unwrap();
    let state = opening.store().value_state(counts()).unwrap();
    (opening.recover().unwrap(), state)
}

#[test]
fn uncommitted_changes_are_discarded_and_offsets_merge() {
    let dir = tempfile::tempdir().unwrap();
    let k = |s: &str| s.to_string();
    let (job, state) = open(dir.path());
    state.update(&k("a"), &1).unwrap();
    let _durable = job.commit(&[at(0, 10), at(1, 20)]).unwrap();
    state.update(&k("b"), &2).unwrap();
    // Only partition 1 advanced: partition 0 keeps its offset.
    let _durable = job.commit(&[at(1, 25)]).unwrap();
    state.update(&k("c"), &3).unwrap(); // never committed
    job.close().unwrap();

    let (job, state) = open(dir.path());
    assert_eq!(job.resume_offsets(), &[at(0, 10), at(1, 25)]);
    assert_eq!(state.get(&k("a")).unwrap(), Some(1));
    assert_eq!(state.get(&k("b")).unwrap(), Some(2));
    assert_eq!(state.get(&k("c")).unwrap(), None);
    assert_eq!(job.recovery().discarded, 1);
    assert_eq!(job.recovery().replayed, 2);

    // The same through a snapshot: restored from it, nothing left to replay.
    let report = job
        .snapshot_now()
        .unwrap()
        .expect("commits since the last snapshot");
    assert_eq!(report.manifest.offsets, vec![at(0, 10), at(1, 25)]);
    assert!(
        job.snapshot_now().unwrap().is_none(),
        "nothing new to snapshot"
    );
    job.close().unwrap();
    let (job, state) = open(dir.path());
    assert_eq!(job.recovery().replayed, 0);
    assert_eq!(job.recovery().snapshot_lsn, report.manifest.lsn);
    assert_eq!(state.get(&k("b")).unwrap(), Some(2));
    assert!(job.recovery().epoch > 1);
    job.close().unwrap();
}

#[test]
fn changes_before_recover_and_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opening = Millpond::builder(dir.path()).open().unwrap();
    let state = opening.store().value_state(counts()).unwrap();
    assert!(state.update(&"a".to_string(), &1).is_err());
    let job = opening.recover().unwrap();
    state.update(&"a".to_string(), &1).unwrap();
    let (store_stats, wal_stats) = job.stats();
    assert_eq!(store_stats.hot_entries, 1);
    assert!(wal_stats.next_lsn > 1);
    job.close().unwrap();
    assert!(state.update(&"a".to_string(), &2).is_err());
}

#[test]
fn a_state_the_wal_names_must_be_registered_before_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (job, state) = open(dir.path());
    state.update(&"a".to_string(), &1).unwrap();
    let _durable = job.commit(&[at(0, 1)]).unwrap();
    job.close().unwrap();
    let opening = Millpond::builder(dir.path()).open().unwrap();
    let err = opening.recover().unwrap_err();
    assert!(err.to_string().contains("counts"), "{err}");
}

#[test]
fn key_groups_cannot_change_under_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (job, state) = open(dir.path());
    state.update(&"a".to_string(), &1).unwrap();
    let _durable = job.commit(&[at(0, 1)]).unwrap();
    job.snapshot_now().unwrap().unwrap();
    job.close().unwrap();
    let err = Millpond::builder(dir.path())
        .settings(Settings {
            store: StoreSettings {
                max_key_groups: 256,
                ..StoreSettings::default()
            },
            ..Settings::default()
        })
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

#[test]
fn ttl_survives_a_restart_with_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let sessions = || counts().with_ttl(TtlConfig::new(Duration::from_secs(60)));
    let open_at = |clock: &ManualClock| {
        let opening = Millpond::builder(dir.path())
            .clock(clock.clone())
            .open()
            .unwrap();
        let state = opening.store().value_state(sessions()).unwrap();
        (opening.recover().unwrap(), state)
    };
    let (job, state) = open_at(&clock);
    state.update(&"old".to_string(), &1).unwrap();
    clock.advance_ms(30_000);
    state.update(&"new".to_string(), &2).unwrap();
    let _durable = job.commit(&[at(0, 2)]).unwrap();
    job.snapshot_now().unwrap().unwrap();
    job.close().unwrap();

    clock.advance_ms(40_000); // "old" is 70 s old, "new" 40 s
    let (job, state) = open_at(&clock);
    assert_eq!(state.get(&"old".to_string()).unwrap(), None);
    assert_eq!(state.get(&"new".to_string()).unwrap(), Some(2));
    job.close().unwrap();
}

#[test]
fn metrics_are_reported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let dir = tempfile::tempdir().unwrap();
        let (job, state) = open(dir.path());
        state.update(&"a".to_string(), &1).unwrap();
        let _durable = job.commit(&[at(0, 1)]).unwrap();
        job.close().unwrap();
    });
    let names: Vec<(String, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect();
    let histogram = |name: &str| {
        names.iter().find_map(|(n, v)| match v {
            DebugValue::Histogram(h) if n == name => Some(h.len()),
            _ => None,
        })
    };
    assert_eq!(histogram(millpond::metrics::COMMIT_SECONDS), Some(1));
    assert_eq!(histogram(millpond::metrics::RECOVERY_SECONDS), Some(1));
}
