//! Counts words over a generated stream with millpond's keyed state and write-ahead log, on the
//! embedded default (local directories, no services). The job "crashes" partway (its last
//! changes are logged but not committed), recovers by replaying the log into a fresh store,
//! resumes from the committed offset, and every count is checked against a plain map: exact,
//! no word counted twice or lost.
//!
//! `cargo run --release --example word_count`

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use millpond::state::{
    BoxError, Change, ChangeSink, Store, StoreSettings, StringCodec, U64Codec, ValueState,
    ValueStateDescriptor,
};
use millpond::wal::{open_local, OwnedChange, SegmentSettings, SourceOffset, Wal, WalSettings};

const WORDS: u64 = 2_000_000;
const COMMIT_EVERY: u64 = 10_000;

/// Word number `i` of the stream: the same every time it is read, like a Kafka partition.
fn word(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995;
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    // Many rare words and some common ones, like text.
    let rank = (x % 1000) * (x % 200) + (x >> 40) % 200;
    format!("w{}", rank % 200_000)
}

/// The store is built before the log is recovered (replay needs the store), so its change sink
/// is connected to the log once the log is open.
#[derive(Default)]
struct LogOnceOpen(OnceLock<Arc<Wal>>);

impl ChangeSink for LogOnceOpen {
    fn append(&self, change: &Change<'_>) -> Result<(), BoxError> {
        match self.0.get() {
            Some(wal) => Ok(wal.append_change(change).map(|_| ())?),
            None => Err("the log is not open yet".into()),
        }
    }
}

struct Job {
    store: Store,
    counts: ValueState<String, u64>,
    wal: Arc<Wal>,
    /// The stream offset to resume from.
    next: u64,
}

/// Opens the job: a fresh state directory, the committed log replayed into it, the offset to
/// resume from.
fn open(dir: &Path, run: u32) -> Result<Job, Box<dyn std::error::Error>> {
    let sink = Arc::new(LogOnceOpen::default());
    let store = Store::builder(dir.join(format!("state-{run}")))
        .settings(StoreSettings {
            // Small on purpose: the 110k distinct words do not all fit, so some live on disk.
            memory_budget_bytes: 16 << 20,
            ..StoreSettings::default()
        })
        .change_sink_arc(sink.clone())
        .open()?;
    let counts = store.value_state(ValueStateDescriptor::new(
        "word-counts",
        StringCodec,
        U64Codec,
    ))?;
    let (wal, outcome) = open_local(
        dir.join("wal"),
        0,
        WalSettings::default(),
        SegmentSettings::default(),
        |change: &OwnedChange| store.apply(&change.as_change()),
    )?;
    store.replay_done();
    let wal = Arc::new(wal);
    let _ = sink.0.set(wal.clone());
    let next = outcome
        .last_commit
        .map_or(0, |c| c.offsets[0].next_offset as u64);
    println!(
        "run {run}: replayed {} committed changes, dropped {} uncommitted ones, resuming at word {next}",
        outcome.applied, outcome.uncommitted
    );
    Ok(Job {
        store,
        counts,
        wal,
        next,
    })
}

/// Processes words `job.next..until`, committing every `COMMIT_EVERY`; with `crash`, stops
/// after logging (but not committing) some more words.
fn process(job: &mut Job, until: u64, crash: bool) -> Result<(), Box<dyn std::error::Error>> {
    for i in job.next..until {
        job.counts
            .update_with(&word(i), |n| Some(n.unwrap_or(0) + 1))?;
        if (i + 1) % COMMIT_EVERY == 0 {
            job.wal.commit(&[SourceOffset {
                topic: "words".into(),
                partition: 0,
                next_offset: i as i64 + 1,
            }])?;
        }
    }
    if crash {
        // Counted and logged, but their offsets never committed: recovery must drop them.
        for i in until..until + COMMIT_EVERY / 2 {
            job.counts
                .update_with(&word(i), |n| Some(n.unwrap_or(0) + 1))?;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let start = Instant::now();

    let mut job = open(dir.path(), 1)?;
    process(&mut job, WORDS * 6 / 10 - 3_000, true)?;
    drop(job); // the crash: nothing is flushed or committed beyond what already was

    let mut job = open(dir.path(), 2)?;
    process(&mut job, WORDS, false)?;

    let mut expected: HashMap<String, u64> = HashMap::new();
    for i in 0..WORDS {
        *expected.entry(word(i)).or_default() += 1;
    }
    for (w, n) in &expected {
        let got = job.counts.get(w)?;
        if got != Some(*n) {
            return Err(format!("count of {w}: expected {n}, got {got:?}").into());
        }
    }
    let stats = job.store.stats();
    println!(
        "counted {WORDS} words ({} distinct) across a crash in {:.2?}: every count exact",
        expected.len(),
        start.elapsed()
    );
    println!(
        "hot tier: {} entries, {} KiB; evicted {}; cold reads {}; WAL: {} batches, {} MiB",
        stats.hot_entries,
        stats.hot_bytes / 1024,
        stats.evictions,
        stats.cold_reads,
        job.wal.stats().batches_written,
        job.wal.stats().bytes_written >> 20
    );
    job.store.close()?;
    job.wal.close()?;
    Ok(())
}
