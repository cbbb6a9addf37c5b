//! `recovery --steady`: a running instance (the facade, with its own background snapshots)
//! through many snapshot cycles, killed with SIGKILL, and restored in a fresh process twice:
//! once with nothing local (a new data directory holding only a copy of the WAL, as a Pulsar
//! log would give it) and once on the same data directory.
//!
//! 1. A child process (`recovery-steady-job`) opens an instance over a local WAL and a
//!    `file://` archive, loads every key once, takes the first snapshot, then updates random
//!    keys (read-modify-write of a version counter) at `--ops-per-sec` (0: full speed),
//!    committing every 10,000 updates. Each snapshot the instance's own trigger commits is
//!    printed as a JSON line on its stdout.
//! 2. The parent samples the job's data directory (local disk) and its WAL directory (the WAL
//!    since the last snapshot, to the segment) every 200 ms, and after `--cycles` snapshots
//!    kills the job at 90 % of the median snapshot cycle after the last one: near the longest
//!    tail a crash can leave.
//! 3. Two restores in fresh processes (`recovery-steady-restore`), each timed from its own
//!    `main`: open, replay, the first record served, and every file of the snapshot local.
//!    Each checks random keys against the values the benchmark writes (a key's value is a
//!    function of its key and version).
//! 4. The baseline: `cp -r` of the archive's `data/` directory, then `sync`.
//!
//! The instance's compaction thread runs with its default settings; each snapshot event
//! carries the totals so far (delta bytes the snapshots uploaded, bytes compactions wrote)
//! and the runs per partition of the snapshot's manifest. `compaction_write_amplification`
//! is compaction bytes over delta bytes through the counted cycles (the load's own snapshots
//! and compactions excluded): the bytes uploaded per byte of changes are 1 + that. Majors
//! come in bursts (uniform updates bring the partitions to their trigger together), so it
//! needs many cycles to settle.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;
use millpond::state::{BytesCodec, StoreSettings, U64Codec, ValueState, ValueStateDescriptor};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};
use serde_json::{json, Value};

use crate::util::{
    child_json, copy_dir_synced, dir_bytes, drop_caches, loadavg_1m, parse_bytes, rss_bytes,
    text_value, Rng,
};

/// Updates between two commits of the job.
const COMMIT_EVERY: u64 = 10_000;
/// How often the parent samples the job's disk use.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Random keys each restore reads and checks.
const CHECKED_GETS: u64 = 10_000;
/// The longest a restore may take to make every file local.
const FULL_RESTORE_TIMEOUT: Duration = Duration::from_secs(900);

/// What the parent passes on from `recovery`'s arguments.
pub struct Plan {
    pub keys: u64,
    pub value_bytes: usize,
    pub memory_budget: u64,
    pub ops_per_sec: u64,
    pub cycles: usize,
    pub snapshot_interval_s: f64,
}

/// What both child processes are told.
#[derive(Args, Debug)]
pub struct ChildArgs {
    /// The instance's data directory.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    archive: String,
    #[arg(long)]
    keys: u64,
    #[arg(long)]
    value_bytes: usize,
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: u64,
}

/// The job process.
#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    child: ChildArgs,
    #[arg(long)]
    ops_per_sec: u64,
    /// Seconds between background snapshots; 0 keeps the instance's default trigger.
    #[arg(long)]
    snapshot_interval_s: f64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn version_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().expect("values hold a version"))
}

fn settings(memory_budget: u64, snapshot_interval_s: Option<f64>) -> Settings {
    let mut settings = Settings {
        store: StoreSettings {
            memory_budget_bytes: memory_budget as usize,
            ..StoreSettings::default()
        },
        ..Settings::default()
    };
    match snapshot_interval_s {
        // The interval on top of the volume triggers (the floor may not be above it).
        Some(s) if s > 0.0 => {
            let interval = Duration::from_secs_f64(s);
            settings.snapshot_interval_max = Some(interval);
            settings.snapshot_interval_min = settings.snapshot_interval_min.min(interval);
        }
        Some(_) => {}
        // A restore measures, it does not snapshot or compact. It copies the archive's files
        // as it would download them from S3 (a hard link from the local archive would be free).
        None => {
            settings.restore.hard_links = false;
            settings.compaction = None;
            settings.snapshot_after_changes = u64::MAX;
            settings.snapshot_after_wal_bytes = u64::MAX;
            settings.snapshot_interval_max = None;
        }
    }
    settings
}

fn state_descriptor() -> ValueStateDescriptor<u64, Vec<u8>> {
    ValueStateDescriptor::new("steady", U64Codec, BytesCodec)
}

fn offsets(writes: u64) -> [SourceOffset; 1] {
    [SourceOffset {
        topic: "steady".into(),
        partition: 0,
        next_offset: writes as i64,
    }]
}

/// A value as the benchmark writes it, checked: its version and text match its key.
fn check(k: u64, v: Option<Vec<u8>>, value_bytes: usize, want: &mut Vec<u8>) -> Result<(), String> {
    let v = v.ok_or_else(|| format!("key {k} was not restored"))?;
    if v.len() != value_bytes {
        return Err(format!("key {k}: {} bytes, not {value_bytes}", v.len()));
    }
    text_value(k, version_of(&v), value_bytes, want);
    if *want != v {
        return Err(format!(
            "key {k}: the restored value is not one the job wrote"
        ));
    }
    Ok(())
}

/// Runs the whole benchmark under `root` (the archive at `archive_url`) and returns its JSON.
pub fn measure(plan: &Plan, root: &Path, archive_url: &str) -> Result<Value, String> {
    let job_dir = root.join("job");
    let exe = std::env::current_exe().map_err(err)?;
    let loadavg_at_start = loadavg_1m();
    let mut child = Command::new(&exe)
        .arg("recovery-steady-job")
        .arg("--dir")
        .arg(&job_dir)
        .args(["--archive", archive_url])
        .args(["--keys", &plan.keys.to_string()])
        .args(["--value-bytes", &plan.value_bytes.to_string()])
        .args(["--memory-budget", &plan.memory_budget.to_string()])
        .args(["--ops-per-sec", &plan.ops_per_sec.to_string()])
        .args([
            "--snapshot-interval-s",
            &plan.snapshot_interval_s.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(err)?;
    let stdout = child.stdout.take().ok_or("no stdout from the job")?;
    let (events, received) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if events.send(v).is_err() {
                    return;
                }
            }
        }
    });

    // Disk samples, from the end of the load on (the load's WAL is not the steady state).
    let sampling = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let disk_peak = Arc::new(AtomicU64::new(0));
    let wal_peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, stop) = (sampling.clone(), stop.clone());
        let (disk_peak, wal_peak, job_dir) = (disk_peak.clone(), wal_peak.clone(), job_dir.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if sampling.load(Ordering::Relaxed) {
                    disk_peak.fetch_max(dir_bytes(&job_dir), Ordering::Relaxed);
                    wal_peak.fetch_max(dir_bytes(&job_dir.join("wal")), Ordering::Relaxed);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        })
    };

    let mut loaded = None;
    let mut snapshots: Vec<Value> = Vec::new();
    let mut last_at = Instant::now();
    let outcome = loop {
        let wait = if snapshots.len() >= plan.cycles {
            let mut gaps: Vec<f64> = snapshots
                .iter()
                .filter_map(|s| s["cycle_seconds"].as_f64())
                .collect();
            gaps.sort_by(f64::total_cmp);
            let median = gaps.get(gaps.len() / 2).copied().unwrap_or(1.0);
            let kill_at = Duration::from_secs_f64(0.9 * median);
            match kill_at.checked_sub(last_at.elapsed()) {
                Some(left) => left,
                None => break Ok(()),
            }
        } else {
            Duration::from_secs(3600)
        };
        match received.recv_timeout(wait) {
            Ok(v) => match v["event"].as_str() {
                Some("loaded") => {
                    eprintln!("steady: loaded: {v}");
                    loaded = Some(v);
                    sampling.store(true, Ordering::Relaxed);
                    last_at = Instant::now();
                }
                Some("snapshot") if loaded.is_some() => {
                    let mut v = v;
                    v["cycle_seconds"] = json!(round3(last_at.elapsed().as_secs_f64()));
                    last_at = Instant::now();
                    // The kill waits for 90 % of a cycle after the newest snapshot; those
                    // past `--cycles` are not counted.
                    if snapshots.len() < plan.cycles {
                        eprintln!("steady: snapshot {}: {v}", snapshots.len() + 1);
                        snapshots.push(v);
                    } else {
                        eprintln!("steady: snapshot past the counted cycles: {v}");
                    }
                }
                _ => {}
            },
            Err(mpsc::RecvTimeoutError::Timeout) if snapshots.len() >= plan.cycles => break Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err("no snapshot from the job within an hour".to_string())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(format!("the job ended early: {:?}", child.try_wait()))
            }
        }
    };
    let killed_at_seconds = loaded.as_ref().map(|_| last_at.elapsed().as_secs_f64());
    // SIGKILL: what a crash leaves.
    let _ = child.kill();
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    outcome?;
    let loaded = loaded.ok_or("the job never finished loading")?;
    let loadavg_at_kill = loadavg_1m();

    // 3. Restores: nothing local (a fresh directory with the WAL only), then the same one.
    let fresh = root.join("fresh");
    std::fs::create_dir_all(&fresh).map_err(err)?;
    let cp = Command::new("cp")
        .arg("-r")
        .arg(job_dir.join("wal"))
        .arg(fresh.join("wal"))
        .status()
        .map_err(err)?;
    if !cp.success() {
        return Err("copying the WAL for the fresh restore failed".into());
    }
    let restore = |dir: &Path, what: &str| -> Result<Value, String> {
        let dropped = drop_caches();
        eprintln!("steady: restore, {what} (page cache dropped: {dropped})");
        let out = Command::new(&exe)
            .arg("recovery-steady-restore")
            .arg("--dir")
            .arg(dir)
            .args(["--archive", archive_url])
            .args(["--keys", &plan.keys.to_string()])
            .args(["--value-bytes", &plan.value_bytes.to_string()])
            .args(["--memory-budget", &plan.memory_budget.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .map_err(err)?;
        let mut v = Value::Object(child_json(what, &out)?);
        v["page_cache_dropped"] = json!(dropped);
        Ok(v)
    };
    let nothing_local = restore(&fresh, "nothing local")?;
    let same_dir = restore(&job_dir, "same directory")?;

    // 4. The baseline: the current snapshot's files copied plainly.
    let copy_dir = root.join("copy");
    drop_caches();
    let baseline_copy_seconds = copy_dir_synced(&root.join("archive").join("data"), &copy_dir)?;

    let median = |field: &str| -> Option<f64> {
        let mut xs: Vec<f64> = snapshots.iter().filter_map(|s| s[field].as_f64()).collect();
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied()
    };
    let snapshot_bytes = snapshots.last().and_then(|s| s["snapshot_bytes"].as_u64());
    let compaction_write_amplification = snapshots.last().and_then(|s| {
        let delta = s["delta_bytes_total"].as_u64()?;
        let compacted = s["compaction_bytes_total"]
            .as_u64()?
            .checked_sub(loaded["compaction_bytes_total"].as_u64()?)?;
        (delta > 0).then(|| round3(compacted as f64 / delta as f64))
    });
    let field = |v: &Value, f: &str| v.get(f).cloned().unwrap_or(Value::Null);
    Ok(json!({
        "bench": "recovery",
        "mode": "steady",
        "keys": plan.keys,
        "value_bytes": plan.value_bytes,
        "memory_budget_bytes": plan.memory_budget,
        "job_ops_per_sec_offered": plan.ops_per_sec,
        "snapshot_interval_s": plan.snapshot_interval_s,
        "cycles": snapshots.len(),
        "load": loaded,
        "seconds_to_first_record": field(&nothing_local, "seconds_to_first_record"),
        "open_seconds": field(&nothing_local, "open_seconds"),
        "tail_changes": field(&nothing_local, "tail_changes"),
        "replay_seconds": field(&nothing_local, "replay_seconds"),
        "seconds_to_full_restore": field(&nothing_local, "seconds_to_full_restore"),
        "rss_bytes": field(&nothing_local, "rss_bytes"),
        "same_dir_seconds_to_first_record": field(&same_dir, "seconds_to_first_record"),
        "baseline_copy_seconds": round3(baseline_copy_seconds),
        "snapshot_seconds_p50": median("seconds"),
        "snapshot_delta_bytes_p50": median("bytes_written"),
        "snapshot_changes_p50": median("changes"),
        "snapshot_cycle_seconds_p50": median("cycle_seconds"),
        "compaction_write_amplification": compaction_write_amplification,
        "compaction_jobs": snapshots.last().map(|s| s["compaction_jobs_total"].clone()),
        "runs_per_partition_max": snapshots.iter().filter_map(|s| s["runs_per_partition_max"].as_u64()).max(),
        "local_disk_peak_bytes": disk_peak.load(Ordering::Relaxed),
        "snapshot_bytes": snapshot_bytes,
        "wal_tail_bytes_peak": wal_peak.load(Ordering::Relaxed),
        "killed_seconds_after_last_snapshot": killed_at_seconds.map(round3),
        "snapshots": snapshots,
        "nothing_local": nothing_local,
        "same_dir": same_dir,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg_1m_at_start": loadavg_at_start,
        "loadavg_1m_at_kill": loadavg_at_kill,
        "loadavg_1m_at_end": loadavg_1m(),
    }))
}

/// Prints one event line on stdout, at once (the parent reads them as they come).
fn emit(v: Value) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").map_err(err)?;
    out.flush().map_err(err)
}

/// The job: load, first snapshot, then updates until killed.
pub fn run_job(args: JobArgs) -> Result<String, String> {
    let (ops_per_sec, snapshot_interval_s) = (args.ops_per_sec, args.snapshot_interval_s);
    let args = args.child;
    let opening = Millpond::builder(&args.dir)
        .settings(settings(args.memory_budget, Some(snapshot_interval_s)))
        .snapshots_url(&args.archive)
        .open()
        .map_err(err)?;
    let state: ValueState<u64, Vec<u8>> = opening
        .store()
        .value_state(state_descriptor())
        .map_err(err)?;
    let job = opening.recover().map_err(err)?;
    let mut writes = job.resume_offset("steady", 0).unwrap_or(0).max(0) as u64;
    if writes != 0 {
        return Err("the job's directory is not empty".into());
    }
    let t = Instant::now();
    let mut value = Vec::with_capacity(args.value_bytes);
    for k in 0..args.keys {
        text_value(k, 0, args.value_bytes, &mut value);
        state.update(&k, &value).map_err(err)?;
        writes += 1;
        if writes.is_multiple_of(100_000) {
            let _durable = job.commit(&offsets(writes)).map_err(err)?;
        }
    }
    job.commit(&offsets(writes))
        .map_err(err)?
        .wait()
        .map_err(err)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let first = job
        .snapshot_now()
        .map_err(err)?
        .ok_or("no first snapshot")?;
    let mut last_sequence = first.manifest.sequence;
    emit(json!({
        "event": "loaded",
        "load_seconds": round3(load_seconds),
        "first_snapshot_seconds": round3(t.elapsed().as_secs_f64()),
        "first_snapshot_bytes": first.manifest.files().map(|f| f.bytes).sum::<u64>(),
        // The load's own snapshots and compactions, not counted in the cycles'.
        "compaction_bytes_total": job.compaction_stats().bytes_written,
    }))?;

    let mut rng = Rng::new(0x5eed);
    let start = Instant::now();
    let mut n = 0u64;
    let mut delta_bytes_total = 0u64;
    loop {
        if ops_per_sec > 0 {
            let due = Duration::from_secs_f64(n as f64 / ops_per_sec as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        for _ in 0..1000 {
            let k = rng.below(args.keys);
            state
                .update_with(&k, |v| {
                    let mut v = v.expect("every key was loaded");
                    let next = version_of(&v) + 1;
                    v[..8].copy_from_slice(&next.to_le_bytes());
                    text_value(k, next, args.value_bytes, &mut value);
                    Some(std::mem::take(&mut value))
                })
                .map_err(err)?;
            writes += 1;
            n += 1;
            if writes.is_multiple_of(COMMIT_EVERY) {
                let _durable = job.commit(&offsets(writes)).map_err(err)?;
            }
        }
        if let Some(r) = job.last_snapshot() {
            if r.manifest.sequence != last_sequence {
                last_sequence = r.manifest.sequence;
                delta_bytes_total += r.bytes_written;
                let compactions = job.compaction_stats();
                let runs: Vec<usize> = r.manifest.partitions.iter().map(|p| p.runs.len()).collect();
                emit(json!({
                    "event": "snapshot",
                    "sequence": r.manifest.sequence,
                    "seconds": round3(r.seconds),
                    "changes": r.changes,
                    "bytes_written": r.bytes_written,
                    "files_written": r.files_written,
                    "snapshot_bytes": r.manifest.files().map(|f| f.bytes).sum::<u64>(),
                    "updates_per_sec": round3(n as f64 / start.elapsed().as_secs_f64()),
                    "delta_bytes_total": delta_bytes_total,
                    "compaction_jobs_total": compactions.jobs,
                    "compaction_bytes_total": compactions.bytes_written,
                    "runs_per_partition_max": runs.iter().max(),
                    "runs_per_partition_mean":
                        round3(runs.iter().sum::<usize>() as f64 / runs.len().max(1) as f64),
                }))?;
            }
        }
    }
}

/// One restore: timed from `started` (first thing in `main`).
pub fn run_restore(args: ChildArgs, started: Instant) -> Result<String, String> {
    let opening = Millpond::builder(&args.dir)
        .settings(settings(args.memory_budget, None))
        .snapshots_url(&args.archive)
        .open()
        .map_err(err)?;
    let open_seconds = started.elapsed().as_secs_f64();
    let files: Vec<(String, u64)> = opening
        .snapshot()
        .files()
        .map(|f| {
            (
                f.path.rsplit('/').next().unwrap_or(&f.path).to_owned(),
                f.bytes,
            )
        })
        .collect();
    let state: ValueState<u64, Vec<u8>> = opening
        .store()
        .value_state(state_descriptor())
        .map_err(err)?;
    let job = opening.recover().map_err(err)?;
    let recovered_seconds = started.elapsed().as_secs_f64();
    let mut rng = Rng::new(0xc0ffee);
    let mut want = Vec::with_capacity(args.value_bytes);
    let k = rng.below(args.keys);
    check(k, state.get(&k).map_err(err)?, args.value_bytes, &mut want)?;
    let first_seconds = started.elapsed().as_secs_f64();
    for _ in 1..CHECKED_GETS {
        let k = rng.below(args.keys);
        check(k, state.get(&k).map_err(err)?, args.value_bytes, &mut want)?;
    }
    // Every file of the restored snapshot local (the background download done).
    let base = args.dir.join("base");
    let local = || {
        files.iter().all(|(name, bytes)| {
            std::fs::metadata(base.join(name)).is_ok_and(|m| m.len() == *bytes)
        })
    };
    while !local() {
        if started.elapsed() > FULL_RESTORE_TIMEOUT {
            return Err("the restored snapshot's files were not local in time".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let full_seconds = started.elapsed().as_secs_f64();
    let recovery = job.recovery().clone();
    let line = json!({
        "open_seconds": round3(open_seconds),
        "replay_seconds": round3(recovered_seconds - open_seconds),
        "tail_changes": recovery.replayed,
        "seconds_to_first_record": round3(first_seconds),
        "seconds_to_full_restore": round3(full_seconds),
        "snapshot_files": files.len(),
        "gets_checked": CHECKED_GETS,
        "rss_bytes": rss_bytes(),
    });
    // No close: a restore that only measures leaves the archive and the WAL as the kill did.
    emit(line)?;
    std::process::exit(0);
}
