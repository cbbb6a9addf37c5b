//! When background snapshots start (docs/snapshot.md, "When a snapshot starts"): after
//! `snapshot_after_changes` WAL records, after `snapshot_after_wal_bytes`, after
//! `snapshot_interval_max` if anything was committed, never before the floor
//! `snapshot_interval_min`, never with nothing committed; and the lag gauges they read.
//!
//! Time is a `ManualClock`. The snapshot thread checks every 100 ms of real time, so a test
//! that expects no snapshot first waits until a check has run on the current clock and WAL:
//! it sets the lag gauges to -1 and waits until a check wrote them back with the values it
//! expects ([`settle`]). The gauges are global (one recorder for this test binary), so the
//! tests run one at a time.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use millpond::metrics::{
    SNAPSHOTS, SNAPSHOT_DELTA_BYTES, SNAPSHOT_LAG_BYTES, SNAPSHOT_LAG_RECORDS, SNAPSHOT_LAG_SECONDS,
};
use millpond::state::{
    BytesCodec, Clock, ManualClock, StringCodec, ValueState, ValueStateDescriptor,
};
use millpond::wal::SourceOffset;
use millpond::{Error, Millpond, Settings};

const T0_MS: u64 = 1_000_000;

/// Held by every test: the gauges are global.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    registry();
    guard
}

/// A recorder whose readings do not reset what they read (metrics-util's debugging recorder
/// swaps every value to 0 when read).
struct Recorder(&'static Registry<Key, AtomicStorage>);

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

fn registry() -> &'static Registry<Key, AtomicStorage> {
    static REGISTRY: OnceLock<&'static Registry<Key, AtomicStorage>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry: &'static _ = Box::leak(Box::new(Registry::atomic()));
        metrics::set_global_recorder(Recorder(registry)).expect("the only recorder here");
        registry
    })
}

fn gauge(name: &str) -> Option<f64> {
    let key = Key::from_name(name.to_owned());
    registry()
        .get_gauge_handles()
        .get(&key)
        .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
}

/// Snapshots committed so far by `trigger`, over the whole test binary.
fn snapshots(trigger: &str) -> u64 {
    let key = Key::from_parts(SNAPSHOTS, vec![Label::new("trigger", trigger.to_owned())]);
    registry()
        .get_counter_handles()
        .get(&key)
        .map_or(0, |c| c.load(Ordering::SeqCst))
}

/// Waits until `trigger` counted `n` snapshots: the counter moves just after
/// `Millpond::last_snapshot` does.
fn counted(trigger: &str, n: u64) {
    wait_for("the snapshot counter", || {
        (snapshots(trigger) >= n).then_some(())
    });
    assert_eq!(snapshots(trigger), n);
}

/// The delta bytes recorded since the last call.
fn delta_bytes() -> Vec<f64> {
    let key = Key::from_name(SNAPSHOT_DELTA_BYTES);
    registry()
        .get_histogram_handles()
        .get(&key)
        .map_or_else(Vec::new, |h| {
            let mut values = Vec::new();
            h.clear_with(|xs| values.extend_from_slice(xs));
            values
        })
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: lag gauges {:?}",
            [
                SNAPSHOT_LAG_RECORDS,
                SNAPSHOT_LAG_BYTES,
                SNAPSHOT_LAG_SECONDS
            ]
            .map(gauge)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Lag {
    records: u64,
    bytes: u64,
    seconds: f64,
}

/// The LSN of the snapshot the instance reads from now on.
fn snapshot_lsn(job: &Millpond) -> u64 {
    job.last_snapshot()
        .map_or(job.recovery().snapshot_lsn, |r| r.manifest.lsn)
}

/// Waits until a check of the snapshot thread ran on the clock as it is and the WAL as it
/// is, whose lag in seconds counts from `covered_ms`, and returns the lag it reported. Any
/// snapshot that check started is then committed (the gauges are written after it).
fn settle(job: &Millpond, clock: &ManualClock, covered_ms: u64) -> Lag {
    for name in [
        SNAPSHOT_LAG_RECORDS,
        SNAPSHOT_LAG_BYTES,
        SNAPSHOT_LAG_SECONDS,
    ] {
        metrics::gauge!(name).set(-1.0);
    }
    let seconds = clock.now_ms().saturating_sub(covered_ms) as f64 / 1000.0;
    wait_for("a check on the current clock", || {
        let records = job.stats().1.next_lsn - 1 - snapshot_lsn(job);
        (gauge(SNAPSHOT_LAG_SECONDS) == Some(seconds)
            && gauge(SNAPSHOT_LAG_RECORDS) == Some(records as f64))
        .then(|| Lag {
            records,
            bytes: gauge(SNAPSHOT_LAG_BYTES).unwrap_or(-1.0) as u64,
            seconds,
        })
    })
}

/// Waits for the instance's next snapshot after `sequence`.
fn next_snapshot(job: &Millpond, sequence: u64) -> millpond::snapshot::SnapshotReport {
    wait_for("a background snapshot", || {
        job.last_snapshot()
            .filter(|r| r.manifest.sequence > sequence)
    })
}

fn sequence(job: &Millpond) -> u64 {
    job.last_snapshot()
        .map_or(job.recovery().claim_sequence, |r| r.manifest.sequence)
}

/// Every automatic trigger off: each test turns on the ones it looks at.
fn quiet() -> Settings {
    Settings {
        snapshot_after_changes: u64::MAX,
        snapshot_after_wal_bytes: u64::MAX,
        snapshot_interval_max: None,
        ..Settings::default()
    }
}

type Values = ValueState<String, Vec<u8>>;

fn open(dir: &std::path::Path, clock: &ManualClock, settings: Settings) -> (Millpond, Values) {
    let opening = Millpond::builder(dir)
        .settings(settings)
        .clock(clock.clone())
        .open()
        .unwrap();
    let state = opening
        .store()
        .value_state(ValueStateDescriptor::new("values", StringCodec, BytesCodec))
        .unwrap();
    (opening.recover().unwrap(), state)
}

fn write(job: &Millpond, state: &Values, from: usize, n: usize, value_bytes: usize) {
    for i in from..from + n {
        state
            .update(&format!("k{i}"), &vec![7; value_bytes])
            .unwrap();
    }
    commit(job, (from + n) as i64);
}

fn commit(job: &Millpond, next_offset: i64) {
    let _durable = job
        .commit(&[SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset,
        }])
        .unwrap();
}

#[test]
fn a_snapshot_starts_after_n_wal_records() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_after_changes: 50,
            ..quiet()
        },
    );
    let before = snapshots("changes");
    delta_bytes();
    write(&job, &state, 0, 20, 10);
    let lag = settle(&job, &clock, T0_MS);
    assert!(job.last_snapshot().is_none(), "{lag:?}");
    assert!((21..50).contains(&lag.records), "{lag:?}");
    assert!(lag.bytes > 20 * 10, "{lag:?}");

    // Past 50 records with the next commit.
    let sequence = sequence(&job);
    write(&job, &state, 20, 40, 10);
    let report = next_snapshot(&job, sequence);
    assert_eq!(report.changes, 60);
    // The TTL horizon's time comes from the instance's clock, not the system's.
    let captured = report.manifest.captured_at_ms;
    assert!(
        (T0_MS..=clock.now_ms()).contains(&captured),
        "captured at {captured}"
    );
    counted("changes", before + 1);
    assert_eq!(delta_bytes(), vec![report.bytes_written as f64]);
    assert!(report.bytes_written > 0);
    let lag = settle(&job, &clock, T0_MS);
    assert_eq!(
        (lag.records, lag.bytes),
        (0, 0),
        "the snapshot covers it all"
    );
    job.close().unwrap();
}

#[test]
fn a_snapshot_starts_after_the_wal_byte_threshold() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_after_wal_bytes: 64 << 10,
            ..quiet()
        },
    );
    let before = snapshots("bytes");
    write(&job, &state, 0, 10, 4096);
    let lag = settle(&job, &clock, T0_MS);
    assert!(job.last_snapshot().is_none());
    assert!((40_000..64 << 10).contains(&lag.bytes), "{lag:?}");

    let sequence = sequence(&job);
    write(&job, &state, 10, 10, 4096);
    let report = next_snapshot(&job, sequence);
    assert_eq!(report.changes, 20);
    counted("bytes", before + 1);
    let lag = settle(&job, &clock, T0_MS);
    assert_eq!((lag.records, lag.bytes), (0, 0));
    job.close().unwrap();
}

#[test]
fn a_snapshot_starts_after_interval_max_when_something_was_committed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_interval_max: Some(Duration::from_secs(60)),
            ..quiet()
        },
    );
    let before = snapshots("interval");
    write(&job, &state, 0, 5, 10);
    clock.advance_ms(59_999);
    let lag = settle(&job, &clock, T0_MS);
    assert!(job.last_snapshot().is_none(), "{lag:?}");
    assert_eq!(lag.seconds, 59.999);

    let sequence = sequence(&job);
    clock.advance_ms(1);
    let report = next_snapshot(&job, sequence);
    assert_eq!(report.changes, 5);
    counted("interval", before + 1);
    // Counted from the start of that snapshot now.
    let started = clock.now_ms();
    assert_eq!(settle(&job, &clock, started).seconds, 0.0);
    clock.advance_ms(30_000);
    assert_eq!(settle(&job, &clock, started).seconds, 30.0);
    job.close().unwrap();
}

#[test]
fn no_snapshot_when_nothing_was_committed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_after_changes: 10,
            snapshot_after_wal_bytes: 1024,
            snapshot_interval_max: Some(Duration::from_secs(60)),
            ..quiet()
        },
    );
    // Idle for ten intervals.
    clock.advance_ms(600_000);
    let lag = settle(&job, &clock, T0_MS);
    assert_eq!(lag.seconds, 600.0);
    assert!(job.last_snapshot().is_none(), "{lag:?}");

    // Past every threshold, but uncommitted: nothing a snapshot could hold.
    for i in 0..100 {
        state.update(&format!("k{i}"), &vec![1; 100]).unwrap();
    }
    let lag = settle(&job, &clock, T0_MS);
    assert!(lag.records >= 100, "{lag:?}");
    assert!(job.last_snapshot().is_none(), "{lag:?}");

    // The commit makes it a snapshot at once.
    let sequence = sequence(&job);
    commit(&job, 100);
    let report = next_snapshot(&job, sequence);
    assert_eq!(report.changes, 100);
    job.close().unwrap();
}

/// Offsets moved, no state changed: the volume triggers do not fire; the interval does, with
/// a snapshot of no data file (today's writer reuses every file of the parent and commits a
/// manifest with the new LSN and offsets), which lets the WAL be truncated.
#[test]
fn only_offsets_moved_the_interval_snapshot_writes_no_data_file() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_after_changes: 5,
            snapshot_interval_max: Some(Duration::from_secs(60)),
            ..quiet()
        },
    );
    let before = snapshots("interval");
    write(&job, &state, 0, 3, 10);
    let first = job.snapshot_now().unwrap().expect("a change was committed");
    assert_eq!(first.changes, 3);
    delta_bytes();
    for offset in 4..20 {
        commit(&job, offset);
    }
    clock.advance_ms(2_000); // past the floor
    let lag = settle(&job, &clock, T0_MS);
    assert!(lag.records >= 16, "{lag:?}");
    assert_eq!(snapshot_lsn(&job), first.manifest.lsn, "{lag:?}");

    clock.advance_ms(58_000);
    let report = next_snapshot(&job, first.manifest.sequence);
    assert_eq!((report.changes, report.files_written), (0, 0));
    assert_eq!(report.manifest.partitions, first.manifest.partitions);
    assert_eq!(report.manifest.offsets[0].next_offset, 19);
    counted("interval", before + 1);
    assert_eq!(delta_bytes(), vec![0.0]);
    let lag = settle(&job, &clock, clock.now_ms());
    assert_eq!(lag.records, 0);
    job.close().unwrap();
}

#[test]
fn the_floor_holds_under_a_burst() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_after_changes: 10,
            snapshot_interval_min: Duration::from_secs(5),
            ..quiet()
        },
    );
    let before = snapshots("changes");
    write(&job, &state, 0, 20, 10);
    let first = next_snapshot(&job, sequence(&job));

    // A burst: every commit passes the threshold again, the floor holds them all back.
    for burst in 1..=10 {
        write(&job, &state, burst * 20, 20, 10);
    }
    clock.advance_ms(4_999);
    let lag = settle(&job, &clock, T0_MS);
    assert!(lag.records >= 200, "{lag:?}");
    assert_eq!(sequence(&job), first.manifest.sequence, "{lag:?}");

    clock.advance_ms(1);
    let second = next_snapshot(&job, first.manifest.sequence);
    assert_eq!(second.changes, 200);
    counted("changes", before + 2);
    job.close().unwrap();
}

#[test]
fn snapshot_now_still_works_and_counts_for_the_floor() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_after_changes: 10,
            snapshot_interval_min: Duration::from_secs(5),
            ..quiet()
        },
    );
    let before = snapshots("requested");
    write(&job, &state, 0, 3, 10);
    let report = job.snapshot_now().unwrap().expect("a change was committed");
    assert_eq!(report.changes, 3);
    assert!(job.snapshot_now().unwrap().is_none(), "nothing new");
    counted("requested", before + 1);

    write(&job, &state, 3, 20, 10);
    let lag = settle(&job, &clock, T0_MS);
    assert!(lag.records >= 20, "{lag:?}");
    assert_eq!(
        sequence(&job),
        report.manifest.sequence,
        "held by the floor"
    );
    clock.advance_ms(5_000);
    let next = next_snapshot(&job, report.manifest.sequence);
    assert_eq!(next.changes, 20);
    job.close().unwrap();
}

/// The WAL tail recovery replayed counts: a restart past the threshold snapshots it without
/// waiting for new writes.
#[test]
fn a_restart_snapshots_a_replayed_tail_past_the_threshold() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(dir.path(), &clock, quiet());
    write(&job, &state, 0, 30, 1000);
    job.close().unwrap();

    let (job, _state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_after_wal_bytes: 16 << 10,
            ..quiet()
        },
    );
    assert_eq!(job.recovery().replayed, 30);
    let report = next_snapshot(&job, sequence(&job));
    assert_eq!(report.changes, 30);
    job.close().unwrap();
}

#[test]
fn settings_that_make_no_sense_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let refused = |settings: Settings, what: &str| {
        let err = Millpond::builder(dir.path())
            .settings(settings)
            .open()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { reason } if reason.contains(what)),
            "{err}"
        );
    };
    refused(
        Settings {
            snapshot_after_changes: 0,
            ..Settings::default()
        },
        "snapshot_after_changes",
    );
    refused(
        Settings {
            snapshot_after_wal_bytes: 0,
            ..Settings::default()
        },
        "snapshot_after_wal_bytes",
    );
    refused(
        Settings {
            snapshot_interval_max: Some(Duration::ZERO),
            ..Settings::default()
        },
        "snapshot_interval_max",
    );
    refused(
        Settings {
            snapshot_interval_max: Some(Duration::from_millis(500)),
            ..Settings::default()
        },
        "snapshot_interval_min",
    );
    #[allow(deprecated)]
    refused(
        Settings {
            snapshot_interval: Some(Duration::from_secs(10)),
            snapshot_interval_max: Some(Duration::from_secs(20)),
            ..Settings::default()
        },
        "snapshot_interval_max",
    );
}

/// Code written for the former `snapshot_interval` keeps its meaning: `None` is snapshots
/// only on request, `Some(d)` is the interval (lowering the default floor).
#[test]
#[allow(deprecated)]
fn the_deprecated_snapshot_interval_keeps_its_meaning() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_interval: None,
            ..Settings::default()
        },
    );
    write(&job, &state, 0, 10, 10);
    clock.advance_ms(3_600_000);
    let lag = settle(&job, &clock, T0_MS);
    assert!(job.last_snapshot().is_none(), "only on request: {lag:?}");
    job.close().unwrap();

    let (job, state) = open(
        dir.path(),
        &clock,
        Settings {
            snapshot_interval: Some(Duration::from_millis(500)),
            ..Settings::default()
        },
    );
    let opened = clock.now_ms();
    write(&job, &state, 10, 1, 10);
    let sequence = sequence(&job);
    clock.advance_ms(499);
    settle(&job, &clock, opened);
    assert!(job.last_snapshot().is_none());
    clock.advance_ms(1);
    next_snapshot(&job, sequence);
    job.close().unwrap();
}
