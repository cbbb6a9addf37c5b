//! The `recovery` benchmark: the first snapshot of a large state, written from the WAL while
//! the job keeps running, and its restore in a fresh process, against a plain copy of the
//! snapshot's files in the same run.
//!
//! 1. Load: every key written once through a store that logs to a local WAL.
//! 2. A job thread reads and updates `--dirty-keys` keys at `--ops-per-sec`, timing each state
//!    call: first alone (the baseline), then while `snapshot_from_wal` builds the snapshot from
//!    the WAL (the live store is neither paused nor read).
//! 3. A child process (this binary, `recovery-restore`) restores into an empty directory: the
//!    snapshot as the store's base tier, the WAL after it replayed; times the first record
//!    served and the end of the background download from its own start, then checks values.
//! 4. The baseline: `cp -r` of the archive's `data/` directory, then `sync` (file), or GETs of
//!    every data file, four at a time like the restore, each written and fsynced (S3).
//!
//! Values are text-like, so that LZ4 finds about as much to compress as in real records: an
//! 8-byte version counter, then words drawn from a 32-word vocabulary and 5-digit numbers,
//! separated by punctuation, all determined by the key, so that any reader can check them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use millpond_snapshot::{
    Archive, FileRef, RestoreSettings, SnapshotBase, SnapshotSettings, SnapshotWriter,
};
use millpond_state::{
    BytesCodec, Store, StoreSettings, U64Codec, ValueState, ValueStateDescriptor,
};
use millpond_wal::{
    open_local, CommitDurability, CommitTicket, LocalSegmentSource, SegmentSettings, SourceOffset,
    Wal, WalSettings,
};
use serde_json::{json, Value};

use crate::util::{
    child_json, copy_dir_synced, dir_bytes, drop_caches, free_bytes, histogram, loadavg_1m,
    parse_bytes, percentiles, rss_bytes, s3_delete_prefix, s3_store, text_value, Rng,
};

/// Bytes a key adds to a value in the logical state size: 8 of key, 4 of key-group and
/// state-id prefix.
const KEY_OVERHEAD_BYTES: u64 = 12;
/// A commit marker after this many writes, during the load and in the job.
const COMMIT_EVERY: u64 = 100_000;
/// Peak disk use per logical byte of state, measured at 1 GB: WAL 1.5, live store's cold tier
/// 1.6, sort runs about 1.3 and the archive 0.65 while the snapshot is written.
pub const DISK_PER_STATE_BYTE: f64 = 5.5;
/// Data files downloaded at once by the S3 baseline: the restore's default.
const PARALLEL_DOWNLOADS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A directory inside the work directory (`file://`).
    File,
    /// `s3://$S3_BUCKET/bench-<random>`, with the environment of `scripts/services up s3`.
    S3,
}

#[derive(Args, Debug)]
pub struct RecoveryArgs {
    /// Logical bytes of state: keys × (value bytes + 12 bytes of key and prefix). E.g. 200M,
    /// 1G, 10G.
    #[arg(long, value_parser = parse_bytes, default_value = "1G")]
    state_bytes: u64,
    /// Bytes per value (at least 16: an 8-byte version, then text).
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Where the snapshot goes.
    #[arg(long, value_enum, default_value = "file")]
    store: StoreKind,
    /// Memory budget of the live store and of the restored one.
    #[arg(long, value_parser = parse_bytes, default_value = "1G")]
    memory_budget: u64,
    /// Keys the job reads and updates during the baseline and the snapshot (its dirty
    /// entries), spread evenly over the key space.
    #[arg(long, default_value_t = 1_000_000)]
    dirty_keys: u64,
    /// State calls per second the job offers (alternately a get and a read-modify-write);
    /// 0 = as fast as its one thread goes.
    #[arg(long, default_value_t = 100_000)]
    ops_per_sec: u64,
    /// Seconds of the job alone before the snapshot: the stall baseline.
    #[arg(long, default_value_t = 10.0)]
    baseline_seconds: f64,
    /// Changes the snapshot writer gathers in memory before it spills a sorted run.
    #[arg(long, value_parser = parse_bytes, default_value = "64M")]
    sort_buffer: u64,
    /// Where the work directory is made (default: the workspace's target/). It is removed at
    /// the end, with the S3 prefix, unless --keep.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory and the S3 prefix.
    #[arg(long)]
    keep: bool,
    /// The steady mode (benches/src/steady.rs): a running instance through `--cycles`
    /// snapshots of its own trigger, killed, then restored with nothing local and on the same
    /// directory. `--ops-per-sec 0` runs the job at full speed. File archives only.
    #[arg(long)]
    steady: bool,
    /// Snapshot cycles before the kill (steady mode).
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Seconds between background snapshots in the steady mode; 0 keeps the instance's
    /// default trigger.
    #[arg(long, default_value_t = 0.0)]
    snapshot_interval_s: f64,
}

/// The restore, run in a child process so that its start and its RSS are its own.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The archive's URL.
    #[arg(long)]
    archive: String,
    /// An empty directory for the restored store and the snapshot's local files.
    #[arg(long)]
    dir: PathBuf,
    /// The WAL directory (replayed after the snapshot's LSN).
    #[arg(long)]
    wal: PathBuf,
    #[arg(long)]
    keys: u64,
    #[arg(long)]
    value_bytes: usize,
    #[arg(long)]
    dirty_keys: u64,
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: u64,
    /// The dirty keys' final versions, u32 little-endian each.
    #[arg(long)]
    versions: PathBuf,
    /// Random gets, checked and timed, after the restore.
    #[arg(long, default_value_t = 100_000)]
    gets: u64,
}

/// The key space: keys `0..n`; dirty key `i` is `i * step`.
#[derive(Debug, Clone, Copy)]
struct Keys {
    n: u64,
    dirty: u64,
    step: u64,
    value_bytes: usize,
}

impl Keys {
    fn new(n: u64, dirty: u64, value_bytes: usize) -> Keys {
        let dirty = dirty.clamp(1, n);
        Keys {
            n,
            dirty,
            step: n / dirty,
            value_bytes,
        }
    }

    fn dirty_key(&self, i: u64) -> u64 {
        i * self.step
    }

    fn dirty_index(&self, k: u64) -> Option<usize> {
        (k.is_multiple_of(self.step) && k / self.step < self.dirty)
            .then_some((k / self.step) as usize)
    }

    /// The value of key `k` at `version` (its number of updates after the load).
    fn value(&self, k: u64, version: u64, out: &mut Vec<u8>) {
        text_value(k, version, self.value_bytes, out);
    }
}

fn version_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().expect("values hold a version"))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn bench_state(store: &Store) -> Result<ValueState<u64, Vec<u8>>, String> {
    store
        .value_state(ValueStateDescriptor::new("bench", U64Codec, BytesCodec))
        .map_err(err)
}

fn store_settings(memory_budget: u64) -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: memory_budget as usize,
        ..StoreSettings::default()
    }
}

/// The job: state calls on the dirty keys, paced, each timed; a commit every 100k updates.
struct Job<'a> {
    state: &'a ValueState<u64, Vec<u8>>,
    wal: &'a Wal,
    keys: Keys,
    /// Updates of each dirty key so far: what the restore must find.
    versions: Vec<u32>,
    rng: Rng,
    writes: u64,
}

impl Job<'_> {
    fn commit(&self) -> Result<CommitTicket, String> {
        self.wal
            .commit(&[SourceOffset {
                topic: "bench".into(),
                partition: 0,
                next_offset: self.writes as i64,
            }])
            .map_err(err)
    }

    /// Reads and updates every dirty key once, as fast as it goes: after the load they are
    /// cold; now they are hot and dirty.
    fn warm(&mut self) -> Result<(), String> {
        for i in 0..self.keys.dirty {
            self.update(i)?;
            self.commit_if_due()?;
        }
        self.commit()?.wait().map_err(err)?;
        Ok(())
    }

    fn update(&mut self, i: u64) -> Result<(), String> {
        let k = self.keys.dirty_key(i);
        self.state
            .update_with(&k, |v| {
                let mut v = v.expect("every key was loaded");
                let next = version_of(&v) + 1;
                v[..8].copy_from_slice(&next.to_le_bytes());
                Some(v)
            })
            .map_err(err)?;
        self.versions[i as usize] += 1;
        self.writes += 1;
        Ok(())
    }

    fn commit_if_due(&self) -> Result<(), String> {
        if self.writes.is_multiple_of(COMMIT_EVERY) {
            let _durable = self.commit()?;
        }
        Ok(())
    }

    /// Runs until `done(elapsed)`, offering `ops_per_sec`; the latency of each state call in
    /// ns (commits are not state calls and are not timed), and the calls made.
    fn run(
        &mut self,
        ops_per_sec: u64,
        done: impl Fn(Duration) -> bool,
    ) -> Result<(Histogram<u64>, u64), String> {
        let mut h = histogram();
        let start = Instant::now();
        let mut n = 0u64;
        while !done(start.elapsed()) {
            if ops_per_sec > 0 {
                let due = Duration::from_secs_f64(n as f64 / ops_per_sec as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            for _ in 0..1000 {
                let i = self.rng.below(self.keys.dirty);
                let t = Instant::now();
                if n.is_multiple_of(2) {
                    let v = self.state.get(&self.keys.dirty_key(i)).map_err(err)?;
                    let ns = t.elapsed().as_nanos() as u64;
                    if v.is_none() {
                        return Err(format!("key {} lost", self.keys.dirty_key(i)));
                    }
                    h.record(ns.max(1)).expect("in range");
                } else {
                    self.update(i)?;
                    h.record((t.elapsed().as_nanos() as u64).max(1))
                        .expect("in range");
                    self.commit_if_due()?;
                }
                n += 1;
            }
        }
        Ok((h, n))
    }
}

/// Nanoseconds as milliseconds, to the microsecond.
fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|ns| (ns as f64 / 1e3).round() / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(PARALLEL_DOWNLOADS)
        .enable_all()
        .build()
        .map_err(err)
}

/// GETs every file under `prefix`, `PARALLEL_DOWNLOADS` at a time, each written to `to` and
/// fsynced; the seconds it took.
fn s3_download(bucket: &str, prefix: &str, files: &[FileRef], to: &Path) -> Result<f64, String> {
    use futures::{StreamExt, TryStreamExt};
    use object_store::ObjectStoreExt;
    use std::io::Write;
    let store = s3_store(bucket)?;
    std::fs::create_dir_all(to).map_err(err)?;
    let rt = runtime()?;
    let t = Instant::now();
    rt.block_on(
        futures::stream::iter(files.iter().map(Ok)).try_for_each_concurrent(
            PARALLEL_DOWNLOADS,
            |f| {
                let store = store.clone();
                let local = to.join(f.path.rsplit('/').next().unwrap_or(&f.path));
                let path = object_store::path::Path::from(format!("{prefix}/{}", f.path));
                async move {
                    let got = store.get(&path).await.map_err(err)?;
                    let mut out = std::io::BufWriter::with_capacity(
                        4 << 20,
                        std::fs::File::create(&local).map_err(err)?,
                    );
                    let mut stream = got.into_stream();
                    while let Some(chunk) = stream.next().await {
                        out.write_all(&chunk.map_err(err)?).map_err(err)?;
                    }
                    out.into_inner().map_err(err)?.sync_all().map_err(err)
                }
            },
        ),
    )?;
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(args: RecoveryArgs) -> Result<String, String> {
    if args.value_bytes < 16 {
        return Err("--value-bytes must be at least 16".into());
    }
    let n = args.state_bytes / (args.value_bytes as u64 + KEY_OVERHEAD_BYTES);
    if n == 0 || args.dirty_keys == 0 {
        return Err("--state-bytes too small for one key, or --dirty-keys 0".into());
    }
    let keys = Keys::new(n, args.dirty_keys, args.value_bytes);
    let s3 = match args.store {
        StoreKind::File => None,
        StoreKind::S3 => {
            if std::env::var_os("S3_ENDPOINT").is_none() {
                let hint = "run `out=$(scripts/services up s3) && eval \"$out\"` first";
                return Err(format!("S3_ENDPOINT is not set: {hint}"));
            }
            let bucket = std::env::var("S3_BUCKET")
                .map_err(|_| "S3_BUCKET is not set (scripts/services up s3 sets it)")?;
            Some((bucket, format!("bench-{:016x}", rand::random::<u64>())))
        }
    };
    let parent = match &args.dir {
        Some(d) => d.clone(),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
    };
    std::fs::create_dir_all(&parent).map_err(err)?;
    let need =
        (keys.n * (keys.value_bytes as u64 + KEY_OVERHEAD_BYTES)) as f64 * DISK_PER_STATE_BYTE;
    if let Some(free) = free_bytes(&parent) {
        if (free as f64) < need {
            return Err(format!(
                "{} has {:.1} GB free; this run needs about {:.1} GB (--dir elsewhere, or less \
                 --state-bytes)",
                parent.display(),
                free as f64 / 1e9,
                need / 1e9
            ));
        }
    }
    let work = tempfile::Builder::new()
        .prefix("recovery-")
        .tempdir_in(&parent)
        .map_err(err)?;
    let root = work.path().canonicalize().map_err(err)?;
    let result = if args.steady {
        if s3.is_some() {
            return Err("--steady writes to a file archive only, for now".into());
        }
        let plan = crate::steady::Plan {
            keys: keys.n,
            value_bytes: keys.value_bytes,
            memory_budget: args.memory_budget,
            ops_per_sec: args.ops_per_sec,
            cycles: args.cycles.max(1),
            snapshot_interval_s: args.snapshot_interval_s,
        };
        let url = format!("file://{}", root.join("archive").display());
        crate::steady::measure(&plan, &root, &url).map(|v| v.to_string())
    } else {
        measure(&args, keys, &root, s3.as_ref())
    };
    if let Some((bucket, prefix)) = &s3 {
        if !args.keep {
            match s3_delete_prefix(bucket, prefix) {
                Ok(n) => eprintln!("recovery: deleted {n} objects under s3://{bucket}/{prefix}"),
                Err(e) => eprintln!("recovery: could not delete s3://{bucket}/{prefix}: {e}"),
            }
        }
    }
    if args.keep {
        eprintln!("recovery: kept {}", work.keep().display());
    }
    result
}

fn measure(
    args: &RecoveryArgs,
    keys: Keys,
    root: &Path,
    s3: Option<&(String, String)>,
) -> Result<String, String> {
    let wal_dir = root.join("wal");
    let archive_url = match s3 {
        Some((bucket, prefix)) => format!("s3://{bucket}/{prefix}"),
        None => format!("file://{}", root.join("archive").display()),
    };
    let loadavg_at_start = loadavg_1m();
    let tmp_dir = root.join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(err)?;

    // 1. Load.
    let (wal, _) = open_local(
        &wal_dir,
        0,
        WalSettings {
            commit_durability: CommitDurability::Async,
            ..WalSettings::default()
        },
        SegmentSettings::default(),
        |_| Ok::<(), std::io::Error>(()),
    )
    .map_err(err)?;
    let wal = Arc::new(wal);
    let store = Store::builder(root.join("live"))
        .settings(store_settings(args.memory_budget))
        .change_sink_arc(wal.clone())
        .open()
        .map_err(err)?;
    let state = bench_state(&store)?;
    let mut job = Job {
        state: &state,
        wal: &wal,
        keys,
        versions: vec![0; keys.dirty as usize],
        rng: Rng::new(0x5eed),
        writes: 0,
    };
    eprintln!(
        "recovery: loading {} keys of {} bytes ({:.2} GB logical)",
        keys.n,
        keys.value_bytes,
        (keys.n * (keys.value_bytes as u64 + KEY_OVERHEAD_BYTES)) as f64 / 1e9
    );
    let t0 = Instant::now();
    let mut last_note = t0;
    let mut value = Vec::with_capacity(keys.value_bytes);
    for k in 0..keys.n {
        keys.value(k, 0, &mut value);
        state.update(&k, &value).map_err(err)?;
        job.writes += 1;
        if job.writes.is_multiple_of(COMMIT_EVERY) {
            let _durable = job.commit()?;
            if last_note.elapsed() >= Duration::from_secs(5) {
                last_note = Instant::now();
                let secs = t0.elapsed().as_secs_f64();
                eprintln!(
                    "recovery: loaded {:.1}% in {secs:.0} s ({:.0} writes/s)",
                    100.0 * k as f64 / keys.n as f64,
                    k as f64 / secs
                );
            }
        }
    }
    job.commit()?.wait().map_err(err)?;
    store.flush().map_err(err)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let wal_bytes_loaded = wal.stats().bytes_written;
    eprintln!("recovery: loaded in {load_seconds:.1} s; WAL {wal_bytes_loaded} bytes");

    // 2. The job alone, then during the snapshot.
    job.warm()?;
    store.flush().map_err(err)?;
    eprintln!(
        "recovery: {} dirty keys warm; baseline for {} s",
        keys.dirty, args.baseline_seconds
    );
    let baseline_for = Duration::from_secs_f64(args.baseline_seconds);
    let (base_hist, base_calls) = job.run(args.ops_per_sec, |t| t >= baseline_for)?;
    let base_ticket = job.commit()?;
    base_ticket.wait().map_err(err)?;

    let archive = Archive::open(&archive_url).map_err(err)?;
    let mut writer = SnapshotWriter::claim(
        archive.clone(),
        store.settings().max_key_groups,
        SnapshotSettings {
            sort_buffer_bytes: args.sort_buffer as usize,
            temp_dir: Some(tmp_dir.clone()),
            ..SnapshotSettings::default()
        },
    )
    .map_err(err)?;
    eprintln!("recovery: snapshot to {archive_url} while the job runs");
    let stop = AtomicBool::new(false);
    let from_lsn = writer.parent().lsn + 1;
    let schemas = store.schemas();
    let (snapshot, during) = std::thread::scope(|s| {
        let job = &mut job;
        let stop = &stop;
        let running = s.spawn(move || job.run(args.ops_per_sec, |_| stop.load(Ordering::Relaxed)));
        let t = Instant::now();
        let report = LocalSegmentSource::open(&wal_dir, from_lsn)
            .map_err(err)
            .and_then(|mut source| writer.snapshot_from_wal(&mut source, &schemas).map_err(err));
        let seconds = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let during = running
            .join()
            .unwrap_or_else(|_| Err("the job thread panicked".into()));
        (report.map(|r| (r, seconds)), during)
    });
    let loadavg_after_snapshot = loadavg_1m();
    let (report, snapshot_seconds) = snapshot?;
    let report = report.ok_or("the snapshot found no commit in the WAL")?;
    let (snap_hist, snap_calls) = during?;
    job.commit()?.wait().map_err(err)?;
    let wal_bytes = wal.stats().bytes_written;
    let versions = std::mem::take(&mut job.versions);
    drop(job);
    drop(state);
    store.close().map_err(err)?;
    drop(store);
    wal.close().map_err(err)?;
    drop(wal);
    // The live store's files are not needed again: free the disk for the restore and copy.
    std::fs::remove_dir_all(root.join("live")).map_err(err)?;
    let snapshot_bytes: u64 = report.manifest.files().map(|f| f.bytes).sum();
    eprintln!(
        "recovery: snapshot of {} files, {snapshot_bytes} bytes, in {snapshot_seconds:.1} s \
         ({} changes, {} runs)",
        report.manifest.files().count(),
        report.changes,
        report.runs
    );
    let versions_path = root.join("versions.bin");
    let bytes: Vec<u8> = versions.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&versions_path, bytes).map_err(err)?;

    // 3. Restore in a fresh process.
    let page_cache_dropped = drop_caches();
    eprintln!("recovery: restoring in a child process (page cache dropped: {page_cache_dropped})");
    let exe = std::env::current_exe().map_err(err)?;
    let started = Instant::now();
    let out = Command::new(exe)
        .arg("recovery-restore")
        .arg("--archive")
        .arg(&archive_url)
        .arg("--dir")
        .arg(root.join("restore"))
        .arg("--wal")
        .arg(&wal_dir)
        .args(["--keys", &keys.n.to_string()])
        .args(["--value-bytes", &keys.value_bytes.to_string()])
        .args(["--dirty-keys", &keys.dirty.to_string()])
        .args(["--memory-budget", &args.memory_budget.to_string()])
        .arg("--versions")
        .arg(&versions_path)
        .stderr(Stdio::inherit())
        .output()
        .map_err(err)?;
    let child_wall_seconds = started.elapsed().as_secs_f64();
    let restored = Value::Object(child_json("restore", &out)?);

    // 4. The baseline: the same files copied plainly.
    let copy_dir = root.join("copy");
    let baseline_dropped = drop_caches();
    let (baseline, baseline_copy_seconds) = match s3 {
        None => (
            "cp -r data/ then sync",
            copy_dir_synced(&root.join("archive").join("data"), &copy_dir)?,
        ),
        Some((bucket, prefix)) => (
            "object_store GETs, 4 at once, each file written and fsynced",
            s3_download(
                bucket,
                prefix,
                &report.manifest.files().cloned().collect::<Vec<_>>(),
                &copy_dir,
            )?,
        ),
    };
    let copied_bytes = dir_bytes(&copy_dir);
    if copied_bytes != snapshot_bytes {
        return Err(format!(
            "the baseline copied {copied_bytes} bytes, the snapshot has {snapshot_bytes}"
        ));
    }

    let (_, bp99, bp999) = percentiles(&base_hist).unzip3();
    let (_, sp99, sp999) = percentiles(&snap_hist).unzip3();
    let logical = keys.n * (keys.value_bytes as u64 + KEY_OVERHEAD_BYTES);
    let full = restored["seconds_to_full_restore"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let mut line = json!({
        "bench": "recovery",
        "store": format!("{:?}", args.store).to_lowercase(),
        "state_bytes": args.state_bytes,
        "logical_state_bytes": logical,
        "keys": keys.n,
        "value_bytes": keys.value_bytes,
        "memory_budget_bytes": args.memory_budget,
        "load_seconds": round3(load_seconds),
        "wal_bytes": wal_bytes,
        "dirty_keys": keys.dirty,
        "job_ops_per_sec_offered": args.ops_per_sec,
        "snapshot_seconds": round3(snapshot_seconds),
        "snapshot_bytes": snapshot_bytes,
        "snapshot_mb_per_sec": (snapshot_bytes as f64 / snapshot_seconds / 1e5).round() / 10.0,
        "snapshot_compression": round3(snapshot_bytes as f64 / logical as f64),
        "snapshot_files": report.manifest.files().count(),
        "snapshot_changes": report.changes,
        "snapshot_runs": report.runs,
        "snapshot_stall_ms_p99": ms(sp99),
        "snapshot_stall_ms_p999": ms(sp999),
        "snapshot_stall_ms_max": ms(Some(snap_hist.max())),
        "snapshot_job_calls": snap_calls,
        "stall_baseline_ms_p99": ms(bp99),
        "stall_baseline_ms_p999": ms(bp999),
        "stall_baseline_ms_max": ms(Some(base_hist.max())),
        "baseline_job_calls": base_calls,
        "restore_child_wall_seconds": round3(child_wall_seconds),
        "baseline": baseline,
        "baseline_copy_seconds": round3(baseline_copy_seconds),
        "full_restore_vs_copy": round3(full / baseline_copy_seconds),
        "files_local_vs_copy": restored["seconds_to_files_local"]
            .as_f64()
            .map(|s| round3(s / baseline_copy_seconds)),
        "page_cache_dropped": page_cache_dropped && baseline_dropped,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_1m_at_start": loadavg_at_start,
        "loadavg_1m_after_snapshot": loadavg_after_snapshot,
        "loadavg_1m_at_end": loadavg_1m(),
    });
    if let (Some(out), Some(child)) = (line.as_object_mut(), restored.as_object()) {
        for (k, v) in child {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(line.to_string())
}

trait Unzip3 {
    fn unzip3(self) -> (Option<u64>, Option<u64>, Option<u64>);
}

impl Unzip3 for Option<(u64, u64, u64)> {
    fn unzip3(self) -> (Option<u64>, Option<u64>, Option<u64>) {
        match self {
            Some((a, b, c)) => (Some(a), Some(b), Some(c)),
            None => (None, None, None),
        }
    }
}

/// The child: restores into an empty directory and prints one JSON line. `started` is taken
/// first thing in `main`.
pub fn run_restore(args: RestoreArgs, started: Instant) -> Result<String, String> {
    let keys = Keys::new(args.keys, args.dirty_keys, args.value_bytes);
    let versions: Vec<u32> = std::fs::read(&args.versions)
        .map_err(err)?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    if versions.len() as u64 != keys.dirty {
        return Err("the versions file does not match --dirty-keys".into());
    }
    let expected = |k: u64, out: &mut Vec<u8>| {
        let version = keys.dirty_index(k).map_or(0, |i| versions[i] as u64);
        keys.value(k, version, out);
    };

    let archive = Archive::open(&args.archive).map_err(err)?;
    let manifest = archive
        .latest()
        .map_err(err)?
        .ok_or("the archive holds no snapshot")?;
    let base = SnapshotBase::open(
        &archive,
        &manifest,
        args.dir.join("base"),
        &RestoreSettings::default(),
    )
    .map_err(err)?;
    let base_opened_seconds = started.elapsed().as_secs_f64();
    // When the background download ends, seen from beside the replay (which may outlast it).
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (base, stop) = (base.clone(), watch_stop.clone());
        std::thread::spawn(move || loop {
            if base.is_local() {
                return Some(started.elapsed().as_secs_f64());
            }
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        })
    };
    let store = Store::builder(args.dir.join("state"))
        .settings(store_settings(args.memory_budget))
        .base(base.clone(), manifest.states.clone())
        .open()
        .map_err(err)?;
    let state = bench_state(&store)?;
    let store_opened_seconds = started.elapsed().as_secs_f64();
    let (wal, replay) = open_local(
        &args.wal,
        manifest.lsn,
        WalSettings::default(),
        SegmentSettings::default(),
        |c| store.apply(&c.as_change()),
    )
    .map_err(err)?;
    store.replay_done();
    let replayed_seconds = started.elapsed().as_secs_f64();
    // The first record: a key the snapshot holds and the WAL tail did not change (the last
    // loaded one, unless it is dirty).
    let first = (0..keys.n)
        .rev()
        .find(|&k| keys.dirty_index(k).is_none())
        .unwrap_or(keys.n - 1);
    let mut want = Vec::with_capacity(keys.value_bytes);
    expected(first, &mut want);
    let got = state.get(&first).map_err(err)?;
    if got.as_deref() != Some(&want[..]) {
        return Err(format!("key {first}: restored {got:?}, expected {want:?}"));
    }
    let seconds_to_first_record = started.elapsed().as_secs_f64();
    let first_progress = base.progress();
    base.wait_local().map_err(err)?;
    let seconds_to_full_restore = started.elapsed().as_secs_f64();
    watch_stop.store(true, Ordering::Relaxed);
    let seconds_to_files_local = watcher.join().unwrap_or(None);
    let (restored_bytes, total_bytes) = base.progress();
    if restored_bytes != total_bytes || !base.is_local() {
        return Err(format!(
            "after wait_local {restored_bytes} of {total_bytes} bytes are local"
        ));
    }
    let rss = rss_bytes();

    // Random gets over the whole key space, each checked.
    let mut h = histogram();
    let mut rng = Rng::new(0xc0ffee);
    for _ in 0..args.gets {
        let k = rng.below(keys.n);
        expected(k, &mut want);
        let t = Instant::now();
        let got = state.get(&k).map_err(err)?;
        let ns = t.elapsed().as_nanos() as u64;
        h.record(ns.max(1)).expect("in range");
        if got.as_deref() != Some(&want[..]) {
            return Err(format!("key {k}: restored {got:?}, expected {want:?}"));
        }
    }
    let (p50, p99, _) = percentiles(&h).unzip3();
    let rss_after_gets = rss_bytes();
    drop(state);
    store.close().map_err(err)?;
    wal.close().map_err(err)?;
    Ok(json!({
        "seconds_to_first_record": round3(seconds_to_first_record),
        "seconds_to_full_restore": round3(seconds_to_full_restore),
        "seconds_to_files_local": seconds_to_files_local.map(round3),
        "restore_base_open_seconds": round3(base_opened_seconds),
        "restore_replay_seconds": round3(replayed_seconds - store_opened_seconds),
        "replayed_changes": replay.applied,
        "bytes_local_at_first_record": first_progress.0,
        "restored_bytes": restored_bytes,
        "restored_files": manifest.files().count(),
        "rss_bytes": rss,
        "rss_after_gets_bytes": rss_after_gets,
        "restored_gets_checked": args.gets,
        "restored_get_p50_ns": p50,
        "restored_get_p99_ns": p99,
    })
    .to_string())
}
