//! The `wal` benchmark: records/s and MB/s through the ring and flusher into a sink, durable
//! commit latency, mean batch size; for the local sink, against a plain sequential write with
//! `fdatasync` of the same bytes in the same run.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use millpond_state::{Change, ChangeOp, StateKind};
use millpond_wal::{
    CommitDurability, LocalSegmentSink, SegmentSettings, SourceOffset, Wal, WalSettings, WalSink,
};
use serde_json::json;

use crate::util::{histogram, percentiles};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// Local segment files (the embedded default).
    Local,
    /// Apache Pulsar (needs feature `pulsar` and PULSAR_URL, e.g. from `scripts/services up pulsar`).
    Pulsar,
}

#[derive(Args, Debug)]
pub struct WalArgs {
    /// Where batches go.
    #[arg(long, value_enum, default_value = "local")]
    sink: SinkKind,
    /// Bytes of each record's value (the encoded record adds its key and framing).
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Seconds of appending.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// A commit marker after this many records.
    #[arg(long, default_value_t = 10_000)]
    commit_every: u64,
    /// Offered load in records/s; 0 = as fast as the log takes them (then commit latency is
    /// mostly queueing behind a full ring).
    #[arg(long, default_value_t = 0)]
    records_per_sec: u64,
    /// Most bytes per batch.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// Keep the files here instead of a temporary directory.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn make_sink(args: &WalArgs, dir: &std::path::Path) -> Result<Box<dyn WalSink>, String> {
    match args.sink {
        SinkKind::Local => Ok(Box::new(
            LocalSegmentSink::open(dir.join("wal"), SegmentSettings::default())
                .map_err(|e| e.to_string())?,
        )),
        SinkKind::Pulsar => pulsar_sink(),
    }
}

#[cfg(feature = "pulsar")]
fn pulsar_sink() -> Result<Box<dyn WalSink>, String> {
    use millpond_wal::pulsar::{PulsarSettings, PulsarSink};
    let url = std::env::var("PULSAR_URL").map_err(|_| {
        "PULSAR_URL is not set: run `eval \"$(scripts/services up pulsar)\"` first".to_string()
    })?;
    let topic = format!(
        "persistent://public/default/millpond-wal-bench-{}",
        std::process::id()
    );
    let settings = PulsarSettings::for_topic(url, topic);
    Ok(Box::new(
        PulsarSink::connect(settings).map_err(|e| e.to_string())?,
    ))
}

#[cfg(not(feature = "pulsar"))]
fn pulsar_sink() -> Result<Box<dyn WalSink>, String> {
    Err("built without the Pulsar sink: run with `--features pulsar`".into())
}

/// Sequential writes of `bytes` in `chunk`-sized pieces, `fdatasync` after each: the disk's
/// durable bandwidth for the pattern the local sink used (`chunk` = its bytes per fsync).
fn baseline_disk(dir: &std::path::Path, bytes: u64, chunk: usize) -> Result<f64, String> {
    let path = dir.join("baseline.bin");
    let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; chunk];
    let start = Instant::now();
    let mut written = 0u64;
    while written < bytes {
        f.write_all(&buf).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        written += chunk as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(written as f64 / secs / 1e6)
}

pub fn run(args: WalArgs) -> Result<String, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sink = make_sink(&args, &dir)?;
    let wal = Wal::start(
        sink,
        1,
        WalSettings {
            batch_bytes: args.batch_bytes,
            commit_durability: CommitDurability::Async,
            ..WalSettings::default()
        },
    );
    // Pseudo-random values, new for every record, so that Pulsar's compression gains nothing
    // that real data would not give it.
    let mut value = vec![0u8; args.record_bytes];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (tx, rx) = crossbeam_channel::bounded::<(millpond_wal::CommitTicket, Instant)>(1024);
    // Commit latency: from `commit` to durable, measured by a waiter so appends never stop.
    let waiter = std::thread::spawn(move || {
        let mut h = histogram();
        for (ticket, at) in rx {
            ticket.wait().expect("commit");
            h.record(at.elapsed().as_micros().max(1) as u64)
                .expect("in range");
        }
        h
    });
    // Commits asynchronously; the waiter thread times each ticket from here to durable.
    let commit = |n: u64| -> Result<(), String> {
        let t = Instant::now();
        let offsets = [SourceOffset {
            topic: "bench".into(),
            partition: 0,
            next_offset: n as i64,
        }];
        let ticket = wal.commit(&offsets).map_err(|e| e.to_string())?;
        tx.send((ticket, t)).map_err(|e| e.to_string())
    };
    let deadline = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut n = 0u64;
    let mut key = 0u64;
    while start.elapsed() < deadline {
        if args.records_per_sec > 0 {
            let due = Duration::from_secs_f64(n as f64 / args.records_per_sec as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        for _ in 0..1000 {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let k = key.to_be_bytes();
            for chunk in value.chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                chunk.copy_from_slice(&rng.to_le_bytes()[..chunk.len()]);
            }
            wal.append_change(&Change {
                state: "bench",
                kind: StateKind::Value,
                key_group: (key >> 57) as u16,
                key: &k,
                op: ChangeOp::Put {
                    value: &value,
                    expires_at_ms: 0,
                },
            })
            .map_err(|e| e.to_string())?;
            n += 1;
            if n.is_multiple_of(args.commit_every) {
                commit(n)?;
            }
        }
    }
    commit(n)?;
    drop(tx);
    let commits = waiter.join().map_err(|_| "waiter panicked".to_string())?;
    let elapsed = start.elapsed().as_secs_f64();
    let stats = wal.stats();
    wal.close().map_err(|e| e.to_string())?;

    let mb_per_sec = stats.bytes_written as f64 / elapsed / 1e6;
    let baseline = match args.sink {
        SinkKind::Local => Some(baseline_disk(
            &dir,
            stats.bytes_written.min(2 << 30),
            args.batch_bytes,
        )?),
        SinkKind::Pulsar => None,
    };
    let (p50, p99, p999) = match percentiles(&commits) {
        Some((a, b, c)) => (a as f64 / 1000.0, b as f64 / 1000.0, c as f64 / 1000.0),
        None => (f64::NAN, f64::NAN, f64::NAN),
    };
    Ok(json!({
        "bench": "wal",
        "sink": format!("{:?}", args.sink).to_lowercase(),
        "record_value_bytes": args.record_bytes,
        "offered_records_per_sec": args.records_per_sec,
        "seconds": elapsed,
        "records": n,
        "records_per_sec": (n as f64 / elapsed).round(),
        "mb_per_sec": (mb_per_sec * 10.0).round() / 10.0,
        "bytes_per_record": stats.bytes_written as f64 / n.max(1) as f64,
        "batches": stats.batches_written,
        "mean_batch_bytes": stats.bytes_written / stats.batches_written.max(1),
        "sink_calls": stats.sink_calls,
        "mean_bytes_per_sink_call": stats.bytes_written / stats.sink_calls.max(1),
        "commits": commits.len(),
        "commit_ms_p50": p50,
        "commit_ms_p99": p99,
        "commit_ms_p999": p999,
        "baseline_disk_mb_per_sec": baseline.map(|b| (b * 10.0).round() / 10.0),
        "vs_baseline_disk": baseline.map(|b| (mb_per_sec / b * 1000.0).round() / 1000.0),
    })
    .to_string())
}
