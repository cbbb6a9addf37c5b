//! A zombie: an old instance that keeps running after a new one took its state over (Pulsar
//! WAL, S3 snapshots, real services) can commit neither a WAL batch nor a snapshot, and a
//! batch it manages to write anyway (after the new owner let go of the topic) is ignored by
//! every later recovery.
//!
//! Without `PULSAR_URL` and `S3_ENDPOINT` the test fails: it never passes without its services.

mod common;

use std::sync::Arc;

use millpond::state::{StringCodec, U64Codec, ValueState, ValueStateDescriptor};
use millpond::wal::pulsar::{wal_topic, PulsarSettings, PulsarSink};
use millpond::wal::{SourceOffset, Wal, WalSettings};
use millpond::{Error, Millpond};

struct Setup {
    pulsar: PulsarSettings,
    prefix: String,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let run = format!(
            "{name}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        Setup {
            pulsar: PulsarSettings::for_topic(
                common::env("PULSAR_URL"),
                wal_topic("public", "default", &run, "0"),
            ),
            prefix: format!("e2e/{run}"),
        }
    }

    fn builder(&self, dir: &std::path::Path) -> millpond::Builder {
        let (archive, _) = common::s3_archive(&self.prefix);
        Millpond::builder(dir)
            .settings(millpond::Settings {
                snapshot_after_changes: u64::MAX,
                snapshot_after_wal_bytes: u64::MAX,
                snapshot_interval_max: None,
                ..millpond::Settings::default()
            })
            .pulsar_wal(self.pulsar.clone())
            .snapshots(archive)
    }

    /// Opens an instance on its own data directory (another machine).
    fn open(&self, dir: &std::path::Path) -> (Millpond, ValueState<String, u64>) {
        let opening = self.builder(dir).open().unwrap();
        let counts = opening
            .store()
            .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
            .unwrap();
        (opening.recover().unwrap(), counts)
    }
}

fn offset(next: i64) -> [SourceOffset; 1] {
    [SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset: next,
    }]
}

#[test]
fn a_zombie_commits_nothing_after_a_takeover() {
    let setup = Setup::new("zombie");
    let tmp = tempfile::tempdir().unwrap();
    let key = "k".to_string();

    let (old, old_counts) = setup.open(&tmp.path().join("old"));
    old_counts.update(&key, &1).unwrap();
    let _durable = old.commit(&offset(1)).unwrap();
    old.snapshot_now().unwrap().expect("a snapshot");
    old_counts.update(&key, &2).unwrap();
    let _durable = old.commit(&offset(2)).unwrap();

    // The new instance takes over while the old one still runs (a long pause, a partition).
    let (new, new_counts) = setup.open(&tmp.path().join("new"));
    assert!(new.recovery().epoch > old.recovery().epoch);
    assert_eq!(new.resume_offset("in", 0), Some(2));
    assert_eq!(new_counts.get(&key).unwrap(), Some(2));

    // The zombie wakes up: its WAL batches are refused by the broker, its snapshot by the
    // archive. Its local change may happen, but it can never be committed.
    let _ = old_counts.update(&key, &100);
    let err = old.commit(&offset(3)).unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "WAL commit: {err}");
    let err = old.snapshot_now().unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "snapshot: {err}");

    new_counts.update(&key, &3).unwrap();
    let _durable = new.commit(&offset(3)).unwrap();
    new.snapshot_now()
        .unwrap()
        .expect("the new owner snapshots");
    new_counts.update(&key, &4).unwrap();
    let _durable = new.commit(&offset(4)).unwrap();
    let next_lsn = new.stats().1.next_lsn;
    let old_epoch = old.recovery().epoch;
    new.close().unwrap();
    drop(old);

    // Worse: with the topic free, a writer of the old epoch appends a committed change right
    // after the new owner's last batch. Recovery must ignore it.
    let sink = PulsarSink::connect(setup.pulsar.clone()).unwrap();
    let zombie = Arc::new(Wal::start_with_epoch(
        sink,
        next_lsn,
        old_epoch,
        WalSettings::default(),
    ));
    let zombie_store = millpond::state::Store::builder(tmp.path().join("zombie-state"))
        .change_sink_arc(zombie.clone())
        .open()
        .unwrap();
    let zombie_counts = zombie_store
        .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
        .unwrap();
    zombie_counts.update(&key, &999).unwrap();
    let _durable = zombie.commit(&offset(999)).unwrap();
    zombie.close().unwrap();

    let (third, third_counts) = setup.open(&tmp.path().join("third"));
    assert_eq!(third_counts.get(&key).unwrap(), Some(4));
    assert_eq!(third.resume_offset("in", 0), Some(4));
    assert!(
        third.recovery().fenced_batches >= 1,
        "{:?}",
        third.recovery()
    );
    third.close().unwrap();
}
