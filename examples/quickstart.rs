//! Counts words in a generated stream of 4 partitions with a millpond instance on the embedded
//! default: only a data directory (WAL segments and snapshots on local disk), no services. The
//! job is killed six times at awkward moments: after changing state but before committing,
//! right after a commit, while a background snapshot is being written (twice), before a new
//! instance's first commit, and once with a graceful `close()` in the middle of a batch. Each
//! time it is opened again (the latest snapshot restored, the state registered, the WAL
//! replayed), every partition is read again from its resume offset, and the job goes on. At the
//! end every count is compared with a plain `HashMap` computed from the stream: exact, nothing
//! counted twice or lost. That is the exactly-once contract: the state and the source offsets
//! it reflects are committed together, and a restart discards whatever came after the last
//! commit.
//!
//! `cargo run --release --example quickstart`
//!
//! The kills happen in-process: a crash is dropping the instance without `close()`. Dropping
//! still writes out what the WAL buffered and waits for a snapshot in progress, so this example
//! does not cut a snapshot off halfway or lose an unwritten WAL tail. Those real crashes are
//! tested elsewhere: tests/e2e_crash_embedded.rs kills a job process with SIGKILL, and
//! snapshot/tests/snapshot_commit_crash.rs fails every step of a snapshot's upload and commit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use millpond::snapshot::{Archive, ManifestKind};
use millpond::state::{StoreSettings, StringCodec, U64Codec, ValueState, ValueStateDescriptor};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOPIC: &str = "words";
const PARTITIONS: i32 = 4;
const RECORDS_PER_PARTITION: i64 = 250_000;
const TOTAL_RECORDS: i64 = PARTITIONS as i64 * RECORDS_PER_PARTITION;
/// Records read from each partition per poll. Every poll ends with a commit.
const POLL_RECORDS: i64 = 2_500;
/// Small on purpose: about 60k of the 83k distinct words fit, the others spill to redb.
const MEMORY_BUDGET_BYTES: usize = 16 << 20;
/// Often, so that kills land during snapshots and restarts restore recent ones.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(200);

/// Record `offset` of `partition`: the same every time it is read, like a Kafka partition.
fn word(partition: i32, offset: i64) -> String {
    let i = offset as u64 * PARTITIONS as u64 + partition as u64;
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995;
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    // Many rare words and some common ones, like text.
    let rank = (x % 1000) * (x % 200) + (x >> 40) % 200;
    format!("w{}", rank % 100_000)
}

/// Where in its loop the job is killed.
#[derive(Clone, Copy, PartialEq)]
enum Moment {
    /// Half-way through a poll: the state has changed, the offsets are not committed.
    BeforeCommit,
    /// As soon as a commit returned.
    AfterCommit,
    /// Half-way through a poll, once the background thread is writing a snapshot.
    DuringSnapshot,
}

/// How the job is stopped.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// Dropped without `close()`.
    Crash,
    /// `close()`: graceful, but it does not commit what came after the last commit.
    Close,
}

struct Kill {
    /// Once the consumer has read this many records (all partitions together).
    at_records: i64,
    moment: Moment,
    stop: Stop,
    what: &'static str,
}

const KILLS: [Kill; 6] = [
    Kill {
        at_records: TOTAL_RECORDS / 10,
        moment: Moment::BeforeCommit,
        stop: Stop::Crash,
        what: "crash before a commit",
    },
    Kill {
        at_records: TOTAL_RECORDS * 3 / 10,
        moment: Moment::AfterCommit,
        stop: Stop::Crash,
        what: "crash right after a commit",
    },
    Kill {
        at_records: TOTAL_RECORDS * 4 / 10,
        moment: Moment::DuringSnapshot,
        stop: Stop::Crash,
        what: "crash while a snapshot is written",
    },
    Kill {
        at_records: 0,
        moment: Moment::BeforeCommit,
        stop: Stop::Crash,
        what: "crash before the new instance's first commit",
    },
    Kill {
        at_records: TOTAL_RECORDS * 6 / 10,
        moment: Moment::BeforeCommit,
        stop: Stop::Close,
        what: "close() in the middle of a batch",
    },
    Kill {
        at_records: TOTAL_RECORDS * 8 / 10,
        moment: Moment::DuringSnapshot,
        stop: Stop::Crash,
        what: "crash while a snapshot is written",
    },
];

/// One running instance of the job, and its consumer's position.
struct Job {
    instance: Millpond,
    counts: ValueState<String, u64>,
    /// The next offset to read, per partition.
    next: Vec<i64>,
    /// The snapshot this instance was restored from (`None`: none yet).
    restored_snapshot: Option<u64>,
}

/// Opens the job: restores the latest snapshot, registers the state, replays the WAL, and
/// seeks the consumer to the resume offsets.
fn open(dir: &Path) -> Result<Job> {
    let settings = Settings {
        store: StoreSettings {
            memory_budget_bytes: MEMORY_BUDGET_BYTES,
            ..StoreSettings::default()
        },
        snapshot_interval_max: Some(SNAPSHOT_INTERVAL),
        // The floor (1 s by default) may not be above the interval.
        snapshot_interval_min: SNAPSHOT_INTERVAL,
        ..Settings::default()
    };
    let recovering = Millpond::builder(dir).settings(settings).open()?;
    let restored_snapshot = latest_snapshot(dir)?;
    let counts = recovering.store().value_state(ValueStateDescriptor::new(
        "word-counts",
        StringCodec,
        U64Codec,
    ))?;
    let instance = recovering.recover()?;
    let next = (0..PARTITIONS)
        .map(|p| instance.resume_offset(TOPIC, p).unwrap_or(0))
        .collect();
    Ok(Job {
        instance,
        counts,
        next,
        restored_snapshot,
    })
}

/// The sequence number of the newest snapshot in the instance's archive (the embedded default
/// keeps it in `{data dir}/snapshots`): the one `open` restored. `Recovery` has the restored
/// snapshot's LSN but, as a sequence number, only that of the claim `open` writes above it.
fn latest_snapshot(dir: &Path) -> Result<Option<u64>> {
    let archive = Archive::open(&format!("file://{}", dir.join("snapshots").display()))?;
    Ok(archive
        .manifests()?
        .iter()
        .filter(|m| m.kind == ManifestKind::Snapshot)
        .map(|m| m.sequence)
        .max())
}

#[derive(Default)]
struct Totals {
    /// Records counted, including those read again after a kill.
    processed: u64,
    commits: u64,
    snapshots: u64,
    /// The sequence number of the newest snapshot seen.
    last_snapshot: u64,
}

impl Totals {
    fn saw_snapshot(&mut self, sequence: u64) {
        if sequence > self.last_snapshot {
            self.snapshots += 1;
            self.last_snapshot = sequence;
        }
    }
}

/// Runs the job until the end of the stream, or until `kill` says so. Returns how many of the
/// records it counted were not committed when it stopped.
fn run(job: &mut Job, kill: Option<&Kill>, totals: &mut Totals) -> Result<u64> {
    let mut uncommitted = 0;
    while job.next.iter().any(|&n| n < RECORDS_PER_PARTITION) {
        let due = kill
            .filter(|k| job.next.iter().sum::<i64>() >= k.at_records)
            .map(|k| k.moment);
        for p in 0..PARTITIONS {
            if p == PARTITIONS / 2 {
                match due {
                    Some(Moment::BeforeCommit) => return Ok(uncommitted),
                    Some(Moment::DuringSnapshot) => {
                        wait_for_snapshot()?;
                        return Ok(uncommitted);
                    }
                    _ => {}
                }
            }
            let next = &mut job.next[p as usize];
            let end = (*next + POLL_RECORDS).min(RECORDS_PER_PARTITION);
            for offset in *next..end {
                job.counts
                    .update_with(&word(p, offset), |n| Some(n.unwrap_or(0) + 1))?;
            }
            uncommitted += (end - *next) as u64;
            totals.processed += (end - *next) as u64;
            *next = end;
        }
        // The counts above and the offsets they reflect become durable together.
        let _durable = job.instance.commit(&offsets(&job.next))?;
        uncommitted = 0;
        totals.commits += 1;
        if let Some(report) = job.instance.last_snapshot() {
            totals.saw_snapshot(report.manifest.sequence);
        }
        if due == Some(Moment::AfterCommit) {
            return Ok(0);
        }
    }
    if kill.is_some() {
        return Err("the stream ended before the kill".into());
    }
    Ok(uncommitted)
}

fn offsets(next: &[i64]) -> Vec<SourceOffset> {
    (0..PARTITIONS)
        .map(|p| SourceOffset {
            topic: TOPIC.into(),
            partition: p,
            next_offset: next[p as usize],
        })
        .collect()
}

fn report_recovery(job: &Job, totals: &mut Totals, label: &str) {
    let r = job.instance.recovery();
    let snapshot = match job.restored_snapshot {
        Some(sequence) => {
            // A snapshot in progress when the job stopped was finished by the shutdown.
            totals.saw_snapshot(sequence);
            format!("snapshot {sequence} restored")
        }
        None => "no snapshot yet".to_string(),
    };
    let resume: Vec<String> = job.next.iter().map(|n| n.to_string()).collect();
    println!(
        "{label}: recovered in {:.3} s: {snapshot}, {} committed changes replayed, {} \
         uncommitted discarded; resuming at offsets {}",
        r.seconds,
        r.replayed,
        r.discarded,
        resume.join("/")
    );
}

fn main() -> Result<()> {
    let started = Instant::now();
    watch_snapshots()?;
    let dir = tempfile::tempdir()?;
    println!(
        "counting words: {PARTITIONS} partitions x {RECORDS_PER_PARTITION} records, a commit \
         every {} records, a snapshot every {} ms, {} MiB of memory for the state",
        POLL_RECORDS * PARTITIONS as i64,
        SNAPSHOT_INTERVAL.as_millis(),
        MEMORY_BUDGET_BYTES >> 20
    );
    let mut totals = Totals::default();

    let mut job = open(dir.path())?;
    println!("start    : a new job, reading every partition from offset 0");
    for (i, kill) in KILLS.iter().enumerate() {
        let uncommitted = run(&mut job, Some(kill), &mut totals)?;
        println!(
            "  kill {} : {} ({} records read, {uncommitted} of them uncommitted)",
            i + 1,
            kill.what,
            job.next.iter().sum::<i64>(),
        );
        match kill.stop {
            Stop::Crash => drop(job),
            Stop::Close => job.instance.close()?,
        }
        job = open(dir.path())?;
        report_recovery(&job, &mut totals, &format!("restart {}", i + 1));
    }
    let uncommitted = run(&mut job, None, &mut totals)?;
    if uncommitted != 0 {
        return Err("the stream ended with uncommitted records".into());
    }
    if let Some(report) = job.instance.snapshot_now()? {
        totals.saw_snapshot(report.manifest.sequence);
    }
    let (state, _) = job.instance.stats();
    job.instance.close()?;
    println!("end      : the whole stream is counted and committed; closed");

    // Check the counts as a restarted job sees them.
    let job = open(dir.path())?;
    report_recovery(&job, &mut totals, "reopen   ");
    if job.next.iter().any(|&n| n != RECORDS_PER_PARTITION) {
        return Err(format!("resume offsets {:?}, not the end of the stream", job.next).into());
    }
    let mut expected: HashMap<String, u64> = HashMap::new();
    for p in 0..PARTITIONS {
        for offset in 0..RECORDS_PER_PARTITION {
            *expected.entry(word(p, offset)).or_default() += 1;
        }
    }
    let mut wrong = 0;
    for (w, n) in &expected {
        let got = job.counts.get(w)?;
        if got != Some(*n) {
            if wrong < 10 {
                eprintln!("count of {w}: expected {n}, got {got:?}");
            }
            wrong += 1;
        }
    }
    job.instance.close()?;

    println!();
    println!(
        "records processed : {} ({TOTAL_RECORDS} in the stream, {} read again after kills)",
        totals.processed,
        totals.processed as i64 - TOTAL_RECORDS
    );
    println!(
        "restarts          : {} ({} crashes, 1 close mid-batch, 1 clean close)",
        KILLS.len() + 1,
        KILLS.iter().filter(|k| k.stop == Stop::Crash).count()
    );
    println!(
        "commits, snapshots: {} commits, {} snapshots written (the archive numbers them in one \
         sequence with the claims that every open writes)",
        totals.commits, totals.snapshots
    );
    println!(
        "state (last run)  : {} entries in {} KiB of memory, {} evicted, {} read back from \
         disk",
        state.hot_entries,
        state.hot_bytes >> 10,
        state.evictions,
        state.cold_reads
    );
    if wrong > 0 {
        return Err(format!("{wrong} of {} counts are wrong", expected.len()).into());
    }
    println!(
        "counts exact      : {} words, {TOTAL_RECORDS} records",
        expected.len()
    );
    println!("total time        : {:.2?}", started.elapsed());
    Ok(())
}

/// Waits until the instance's background thread is writing a snapshot (it starts one every
/// `SNAPSHOT_INTERVAL`).
fn wait_for_snapshot() -> Result<()> {
    let started = Instant::now();
    while !SNAPSHOT_RUNNING.load(Ordering::SeqCst) {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("no background snapshot started in 10 s".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

static SNAPSHOT_RUNNING: AtomicBool = AtomicBool::new(false);

/// The instance traces each snapshot as a `millpond.snapshot` span (any `tracing` subscriber
/// shows them). This subscriber only notes when that span is entered and left, so that the
/// example can kill the job while a snapshot is being written.
fn watch_snapshots() -> Result<()> {
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata};

    struct SnapshotWatch(AtomicU64);

    impl tracing::Subscriber for SnapshotWatch {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.is_span() && metadata.name() == "millpond.snapshot"
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(self.0.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {
            SNAPSHOT_RUNNING.store(true, Ordering::SeqCst);
        }
        fn exit(&self, _: &Id) {
            SNAPSHOT_RUNNING.store(false, Ordering::SeqCst);
        }
    }

    tracing::subscriber::set_global_default(SnapshotWatch(AtomicU64::new(0)))?;
    Ok(())
}
