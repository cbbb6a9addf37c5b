//! The `peer` benchmark: the Flink peer harness's workload (`benches/flink`, its `state`
//! command) run on a millpond instance, phase for phase, printing the same JSON fields, so that
//! `compare` can set the two side by side.
//!
//! A launcher runs two child processes of this binary, as the harness runs two JVMs:
//!
//! 1. `peer-run`: a whole instance (the facade, embedded default: WAL on local segments,
//!    snapshots to a `file://` archive) with the given memory budget:
//!    1. **load** every key once, in key order;
//!    2. **read-modify-write** for S seconds (bump the value's 8-byte counter);
//!    3. **gets** for S seconds, each timed; RSS after them;
//!    4. **timeline**: read-modify-write for S seconds, throughput counted per 100 ms, with a
//!       snapshot requested S/4 into it, written in the background while updates go on (the
//!       harness takes its Flink checkpoint at the same point);
//!    5. **MapState**: puts under random user keys, then timed gets.
//!
//!    The job commits its (made-up) source offset every `--commit-every` updates with
//!    [`CommitDurability::Async`], as a job committing after each poll batch does; the
//!    snapshot holds what was committed when it started.
//! 2. `peer-restore`: a new instance in an empty directory over the same archive, the way a
//!    job restarts on a new machine: the time from `main` to the first get served (the last
//!    key loaded) and to a get of every key, then 100,000 random gets timed and checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use millpond::state::{
    BytesCodec, MapState, MapStateDescriptor, StoreSettings, U64Codec, ValueState,
    ValueStateDescriptor,
};
use millpond::wal::{CommitDurability, CommitTicket, SourceOffset, WalSettings};
use millpond::{Millpond, Recovering, Settings};
use serde_json::{json, Map, Value};

use crate::util::{
    child_json, dir_bytes, drop_caches, histogram, key_sequence, latency_percentiles, loadavg_1m,
    parse_bytes, peak_rss_bytes, rss_bytes, text_value, Rng,
};

/// Random gets checked after the restore's full pass (the harness checks as many).
const RESTORED_GETS: u64 = 100_000;
/// Width of a throughput bucket in the timeline phase.
const BUCKET_MS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Values {
    /// An 8-byte counter, then text determined by the key (compresses like real records).
    Text,
    /// All zeros (the `state` benchmark's values).
    Zeros,
}

#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// Number of distinct keys (`0..N-1`, u64).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes per value (at least 8: the counter the updates bump).
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Zipf exponent of key choice; 0 = uniform.
    #[arg(long, default_value_t = 0.0)]
    pub zipf: f64,
    /// The store's memory budget (the harness gives Flink the same).
    #[arg(long, value_parser = parse_bytes, default_value = "1G")]
    pub memory_budget: u64,
    /// What the values hold.
    #[arg(long, value_enum, default_value = "text")]
    pub values: Values,
    /// User keys per key in the MapState phases; 0 skips them.
    #[arg(long, default_value_t = 16)]
    pub map_entries: u64,
    /// Updates between commits of the source offset.
    #[arg(long, default_value_t = 10_000)]
    pub commit_every: u64,
    /// The snapshot writer's sort buffer (default: the facade's, 64 MiB).
    #[arg(long, value_parser = parse_bytes)]
    pub sort_buffer: Option<u64>,
    /// Bytes per local WAL segment (default: the facade's, 64 MiB).
    #[arg(long, value_parser = parse_bytes)]
    pub segment_bytes: Option<u64>,
    /// Take only the snapshot the timeline phase asks for (no volume or time trigger), so
    /// that it covers every change since the load: what `compare` measured before
    /// 2026-12-07. Default: the instance's own triggers run, as in a job.
    #[arg(long)]
    pub one_snapshot: bool,
    /// Where the work directory is made (default: the system's temporary directory); removed
    /// at the end unless --keep.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    pub keep: bool,
    /// The work directory of a child process (set by the launcher).
    #[arg(long, hide = true)]
    pub work: Option<PathBuf>,
}

impl PeerArgs {
    /// The arguments again, for a child process.
    fn to_argv(&self, work: &Path) -> Vec<String> {
        let mut v = vec![
            format!("--keys={}", self.keys),
            format!("--value-bytes={}", self.value_bytes),
            format!("--seconds={}", self.seconds),
            format!("--zipf={}", self.zipf),
            format!("--memory-budget={}", self.memory_budget),
            format!("--map-entries={}", self.map_entries),
            format!("--commit-every={}", self.commit_every),
            format!("--work={}", work.display()),
        ];
        if let Some(b) = self.sort_buffer {
            v.push(format!("--sort-buffer={b}"));
        }
        if let Some(b) = self.segment_bytes {
            v.push(format!("--segment-bytes={b}"));
        }
        if self.one_snapshot {
            v.push("--one-snapshot".into());
        }
        v.push(
            match self.values {
                Values::Text => "--values=text",
                Values::Zeros => "--values=zeros",
            }
            .into(),
        );
        v
    }

    fn value(&self, k: u64, out: &mut Vec<u8>) {
        match self.values {
            Values::Text => text_value(k, 0, self.value_bytes, out),
            Values::Zeros => {
                out.clear();
                out.resize(self.value_bytes, 0);
            }
        }
    }

    fn work(&self) -> Result<&Path, String> {
        self.work
            .as_deref()
            .ok_or_else(|| "--work is not set".into())
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn settings(args: &PeerArgs) -> Settings {
    let defaults = Settings::default();
    Settings {
        snapshot: millpond::snapshot::SnapshotSettings {
            sort_buffer_bytes: args
                .sort_buffer
                .map_or(defaults.snapshot.sort_buffer_bytes, |b| b as usize),
            ..defaults.snapshot.clone()
        },
        segments: millpond::wal::SegmentSettings {
            segment_bytes: args
                .segment_bytes
                .unwrap_or(defaults.segments.segment_bytes),
            ..defaults.segments.clone()
        },
        store: StoreSettings {
            memory_budget_bytes: args.memory_budget as usize,
            ..StoreSettings::default()
        },
        wal: WalSettings {
            commit_durability: CommitDurability::Async,
            ..WalSettings::default()
        },
        // Snapshots as an instance takes them by default (every 500k changes, 64 MiB of WAL or
        // 60 s): the one the timeline phase asks for then covers what changed since the last,
        // as the deltas of a running job do. `--one-snapshot` keeps only that one (it then
        // covers every change since the load).
        snapshot_after_changes: if args.one_snapshot {
            u64::MAX
        } else {
            defaults.snapshot_after_changes
        },
        snapshot_after_wal_bytes: if args.one_snapshot {
            u64::MAX
        } else {
            defaults.snapshot_after_wal_bytes
        },
        snapshot_interval_max: if args.one_snapshot {
            None
        } else {
            defaults.snapshot_interval_max
        },
        ..defaults
    }
}

fn archive_url(work: &Path) -> String {
    format!("file://{}", work.join("archive").display())
}

struct States {
    value: ValueState<u64, Vec<u8>>,
    map: MapState<u64, u64, Vec<u8>>,
}

fn open(args: &PeerArgs, dir: &Path) -> Result<(Recovering, States), String> {
    let work = args.work()?;
    let opening = Millpond::builder(dir)
        .settings(settings(args))
        .snapshots_url(archive_url(work))
        .open()
        .map_err(err)?;
    let states = States {
        value: opening
            .store()
            .value_state(ValueStateDescriptor::new("value", U64Codec, BytesCodec))
            .map_err(err)?,
        map: opening
            .store()
            .map_state(MapStateDescriptor::new(
                "map", U64Codec, U64Codec, BytesCodec,
            ))
            .map_err(err)?,
    };
    Ok((opening, states))
}

/// The launcher: both children, one merged JSON line.
pub fn run(args: PeerArgs) -> Result<String, String> {
    if args.keys == 0 || args.keys > u32::MAX as u64 || args.value_bytes < 8 || args.seconds <= 0.0
    {
        return Err("need 1 <= keys <= 2^32-1, value-bytes >= 8, seconds > 0".into());
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).map_err(err)?;
    let work = tempfile::Builder::new()
        .prefix("millpond-peer-")
        .tempdir_in(&parent)
        .map_err(err)?;
    eprintln!("peer: work directory {}", work.path().display());
    let load_at_start = loadavg_1m();
    let result = (|| {
        let mut out = child("peer-run", &args, work.path())?;
        let dropped = drop_caches();
        let t = Instant::now();
        let restored = child("peer-restore", &args, work.path())?;
        out.insert(
            "restore_child_wall_seconds".into(),
            json!(round3(t.elapsed().as_secs_f64())),
        );
        out.insert("page_cache_dropped".into(), json!(dropped));
        out.extend(restored);
        out.insert(
            "cpus".into(),
            json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
        );
        out.insert("loadavg_1m_at_start".into(), json!(load_at_start));
        out.insert("loadavg_1m_at_end".into(), json!(loadavg_1m()));
        Ok(Value::Object(out).to_string())
    })();
    if args.keep {
        let kept = work.keep();
        eprintln!("peer: kept {}", kept.display());
    }
    result
}

/// Runs this binary's `command` on the same arguments; its stderr passes through, its last
/// stdout line is the JSON object.
fn child(command: &str, args: &PeerArgs, work: &Path) -> Result<Map<String, Value>, String> {
    let exe = std::env::current_exe().map_err(err)?;
    let output = Command::new(exe)
        .arg(command)
        .args(args.to_argv(work))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(err)?;
    child_json(command, &output)
}

/// Commits a made-up source offset every `every` updates, without waiting for durability.
struct Committer<'a> {
    job: &'a Millpond,
    every: u64,
    updates: u64,
    last: Option<CommitTicket>,
}

impl<'a> Committer<'a> {
    fn new(job: &'a Millpond, every: u64) -> Self {
        Committer {
            job,
            every: every.max(1),
            updates: 0,
            last: None,
        }
    }

    #[inline]
    fn updated(&mut self) -> Result<(), String> {
        self.updates += 1;
        if self.updates.is_multiple_of(self.every) {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        let offset = SourceOffset {
            topic: "input".into(),
            partition: 0,
            next_offset: self.updates as i64,
        };
        self.last = Some(self.job.commit(&[offset]).map_err(err)?);
        Ok(())
    }

    /// Commits what is left and waits until it is durable.
    fn finish(&mut self) -> Result<(), String> {
        self.commit()?;
        if let Some(t) = self.last.take() {
            t.wait().map_err(err)?;
        }
        Ok(())
    }
}

/// Runs `op` over the key sequence for `seconds`, checking the clock every 1,024 ops as the
/// harness does; ops/s.
fn timed(
    seconds: f64,
    seq: &[u32],
    mut op: impl FnMut(u64) -> Result<(), String>,
) -> Result<f64, String> {
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    'outer: loop {
        for chunk in seq.chunks(1024) {
            for &k in chunk {
                op(k as u64)?;
            }
            n += chunk.len() as u64;
            if start.elapsed() >= deadline {
                break 'outer;
            }
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn bump(v: &mut [u8]) {
    let n = u64::from_le_bytes(v[..8].try_into().expect("values hold a counter"));
    v[..8].copy_from_slice(&(n + 1).to_le_bytes());
}

/// Child 1: the workload and the snapshot.
pub fn run_job(args: PeerArgs) -> Result<String, String> {
    let work = args.work()?.to_owned();
    let (opening, states) = open(&args, &work.join("instance"))?;
    let job = opening.recover().map_err(err)?;
    let States { value, map } = states;
    let seq = key_sequence(args.keys, args.zipf, 0);
    let vb = args.value_bytes;
    let mut committer = Committer::new(&job, args.commit_every);

    // 1. Load.
    eprintln!("peer: millpond: loading {} keys of {vb} bytes", args.keys);
    let mut v = Vec::with_capacity(vb);
    let t0 = Instant::now();
    for k in 0..args.keys {
        args.value(k, &mut v);
        value.update(&k, &v).map_err(err)?;
        committer.updated()?;
    }
    committer.finish()?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let (load_rss, load_peak) = (rss_bytes(), peak_rss_bytes());
    eprintln!(
        "peer: loaded in {load_seconds:.1} s; RSS {} MB",
        load_rss >> 20
    );

    // 2. Read-modify-write.
    let rmw = |k: u64| {
        value
            .update_with(&k, |v| {
                let mut v = v.unwrap_or_else(|| vec![0; vb]);
                bump(&mut v);
                Some(v)
            })
            .map_err(err)
    };
    let update_ops = timed(args.seconds, &seq, |k| {
        rmw(k)?;
        committer.updated()
    })?;
    committer.finish()?;
    eprintln!("peer: update {update_ops:.0} ops/s");

    // 3. Gets, each timed.
    let mut gets = histogram();
    let mut found = 0u64;
    let get_ops = timed(args.seconds, &seq, |k| {
        let t = Instant::now();
        let got = value.get(&k).map_err(err)?;
        gets.record((t.elapsed().as_nanos() as u64).max(1))
            .map_err(err)?;
        found += u64::from(got.is_some());
        Ok(())
    })?;
    let (rss, peak) = (rss_bytes(), peak_rss_bytes());
    let local_db_bytes = dir_bytes(&work.join("instance"));
    eprintln!(
        "peer: get {get_ops:.0} ops/s, p99 {} ns; RSS {} MB",
        gets.value_at_quantile(0.99),
        rss >> 20
    );

    // 4. The timeline: updates counted per bucket, a snapshot requested a quarter in.
    let snapshot_at = Duration::from_secs_f64(args.seconds / 4.0);
    let deadline = Duration::from_secs_f64(args.seconds);
    let done_at = AtomicU64::new(0); // ns since the phase start; 0 = not done
    let mut buckets: Vec<u64> = Vec::new();
    let mut snapshot_started: Option<Duration> = None;
    let start = Instant::now();
    let report = std::thread::scope(|s| -> Result<_, String> {
        let mut snapshot = None;
        'outer: loop {
            for chunk in seq.chunks(64) {
                for &k in chunk {
                    rmw(k as u64)?;
                    committer.updated()?;
                }
                let now = start.elapsed();
                let b = (now.as_millis() as u64 / BUCKET_MS) as usize;
                if buckets.len() <= b {
                    buckets.resize(b + 1, 0);
                }
                buckets[b] += chunk.len() as u64;
                if snapshot.is_none() && now >= snapshot_at {
                    snapshot_started = Some(now);
                    let (job, done_at) = (&job, &done_at);
                    snapshot = Some(s.spawn(move || {
                        let r = job.snapshot_now();
                        done_at.store(start.elapsed().as_nanos() as u64, Ordering::Release);
                        r
                    }));
                }
                if now >= deadline && done_at.load(Ordering::Acquire) != 0 {
                    break 'outer;
                }
            }
        }
        let report = snapshot
            .expect("requested in the loop")
            .join()
            .map_err(|_| "the snapshot thread panicked".to_string())?
            .map_err(err)?
            .ok_or("the snapshot found nothing committed")?;
        Ok(report)
    })?;
    let timeline_seconds = start.elapsed().as_secs_f64();
    committer.finish()?;
    let (snapshot_rss, snapshot_peak) = (rss_bytes(), peak_rss_bytes());
    let snap_start = snapshot_started.expect("set with the thread").as_secs_f64();
    let snap_end = done_at.load(Ordering::Acquire) as f64 / 1e9;
    let (during, outside) = split_rate(&buckets, snap_start, snap_end, timeline_seconds);
    let archive = work.join("archive");
    let snapshot_bytes = dir_bytes(&archive);
    let snapshot_seconds = snap_end - snap_start;
    let state_bytes = args.keys * (8 + vb as u64);
    eprintln!(
        "peer: snapshot {snapshot_bytes} bytes in {} files, {snapshot_seconds:.2} s; \
         updates {during:.0}/s during it, {outside:.0}/s outside",
        report.manifest.files().count()
    );

    // 5. MapState.
    let mut map_out = Map::new();
    if args.map_entries > 0 {
        let mut user_keys = Rng::new(0xabcdef);
        let m = args.map_entries;
        let fresh = vec![0u8; vb];
        let put_ops = timed(args.seconds, &seq, |k| {
            map.put(&k, &user_keys.below(m), &fresh).map_err(err)?;
            committer.updated()
        })?;
        committer.finish()?;
        let mut map_gets = histogram();
        let mut hits = 0u64;
        let map_get_ops = timed(args.seconds, &seq, |k| {
            let uk = user_keys.below(m);
            let t = Instant::now();
            let got = map.get(&k, &uk).map_err(err)?;
            map_gets
                .record((t.elapsed().as_nanos() as u64).max(1))
                .map_err(err)?;
            hits += u64::from(got.is_some());
            Ok(())
        })?;
        eprintln!("peer: map put {put_ops:.0} ops/s, get {map_get_ops:.0} ops/s");
        map_out.extend([
            ("map_entries_per_key".into(), json!(m)),
            ("map_put_ops_per_sec".into(), json!(put_ops.round())),
            ("map_get_ops_per_sec".into(), json!(map_get_ops.round())),
            (
                "map_get_ns_p50".into(),
                json!(map_gets.value_at_quantile(0.5)),
            ),
            (
                "map_get_ns_p99".into(),
                json!(map_gets.value_at_quantile(0.99)),
            ),
            (
                "map_get_ns_p999".into(),
                json!(map_gets.value_at_quantile(0.999)),
            ),
            (
                "map_get_hit_ratio".into(),
                json!(round3(hits as f64 / map_gets.len() as f64)),
            ),
            (
                "map_get_latency_percentiles".into(),
                latency_percentiles(&map_gets),
            ),
        ]);
    }
    let (rss_at_end, peak_at_end) = (rss_bytes(), peak_rss_bytes());
    drop((value, map));
    job.close().map_err(err)?;

    let mut out = json!({
        "bench": "state",
        "peer": "millpond",
        "backend": "millpond",
        "millpond_version": env!("CARGO_PKG_VERSION"),
        "keys": args.keys,
        "value_bytes": vb,
        "values": format!("{:?}", args.values).to_lowercase(),
        "threads": 1,
        "zipf": args.zipf,
        "seconds_per_phase": args.seconds,
        "state_bytes": state_bytes,
        "key_groups": settings(&args).store.max_key_groups,
        "memory_budget_bytes": args.memory_budget,
        "wal": "local segments, commit every --commit-every updates, asynchronous durability",
        "commit_every": args.commit_every,
        "load_seconds": round3(load_seconds),
        "load_rss_bytes": load_rss,
        "load_peak_rss_bytes": load_peak,
        "update_ops_per_sec": update_ops.round(),
        "get_ops_per_sec": get_ops.round(),
        "gets": gets.len(),
        "get_misses": gets.len() - found,
        "get_ns_p50": gets.value_at_quantile(0.5),
        "get_ns_p99": gets.value_at_quantile(0.99),
        "get_ns_p999": gets.value_at_quantile(0.999),
        "get_ns_max": gets.max(),
        "get_latency_percentiles": latency_percentiles(&gets),
        "rss_bytes": rss,
        "peak_rss_bytes": peak,
        "rss_bytes_at_end": rss_at_end,
        "peak_rss_bytes_at_end": peak_at_end,
        "local_db_bytes": local_db_bytes,
    });
    let snapshot = json!({
        "snapshot_kind": "from the WAL: what was committed since the last snapshot, merged with it",
        "snapshot_seconds": round3(snapshot_seconds),
        // The job thread is never blocked by a snapshot.
        "snapshot_sync_seconds": 0.0,
        "snapshot_bytes": snapshot_bytes,
        "snapshot_files": report.manifest.files().count(),
        "snapshot_mb_per_sec": (snapshot_bytes as f64 / snapshot_seconds / 1e5).round() / 10.0,
        "snapshot_compression": round3(snapshot_bytes as f64 / state_bytes as f64),
        "snapshot_changes": report.changes,
        "rss_bytes_after_snapshot": snapshot_rss,
        "peak_rss_bytes_after_snapshot": snapshot_peak,
        "timeline_bucket_ms": BUCKET_MS,
        "timeline_ops": buckets,
        "timeline_seconds": round3(timeline_seconds),
        "timeline_snapshot_start_s": round3(snap_start),
        "timeline_snapshot_sync_end_s": round3(snap_start),
        "timeline_snapshot_end_s": round3(snap_end),
        "update_ops_per_sec_during_snapshot": during.round(),
        "update_ops_per_sec_outside_snapshot": outside.round(),
    });
    let fields = out.as_object_mut().expect("an object");
    fields.extend(snapshot.as_object().expect("an object").clone());
    fields.extend(map_out);
    Ok(out.to_string())
}

/// Ops/s of the buckets inside `[start, end]` seconds and of the others (the last, partial
/// bucket counted by its share of `total` seconds).
fn split_rate(buckets: &[u64], start: f64, end: f64, total: f64) -> (f64, f64) {
    let width = BUCKET_MS as f64 / 1000.0;
    let (mut ops_in, mut secs_in, mut ops_out, mut secs_out) = (0u64, 0f64, 0u64, 0f64);
    for (i, &n) in buckets.iter().enumerate() {
        let (b0, b1) = (i as f64 * width, ((i + 1) as f64 * width).min(total));
        let mid = (b0 + b1) / 2.0;
        if mid >= start && mid <= end {
            ops_in += n;
            secs_in += b1 - b0;
        } else {
            ops_out += n;
            secs_out += b1 - b0;
        }
    }
    let rate = |ops: u64, secs: f64| if secs > 0.0 { ops as f64 / secs } else { 0.0 };
    (rate(ops_in, secs_in), rate(ops_out, secs_out))
}

/// Child 2: a new instance over the archive, in an empty directory.
pub fn run_restore(args: PeerArgs, started: Instant) -> Result<String, String> {
    let work = args.work()?.to_owned();
    let setup = started.elapsed().as_secs_f64();
    let (opening, States { value, .. }) = open(&args, &work.join("restored"))?;
    let job = opening.recover().map_err(err)?;
    let built = started.elapsed().as_secs_f64();

    // The first record: the last key loaded.
    let last = args.keys - 1;
    let first = value.get(&last).map_err(err)?;
    if first.as_ref().map(Vec::len) != Some(args.value_bytes) {
        return Err(format!("key {last} was not restored"));
    }
    let first_seconds = started.elapsed().as_secs_f64();
    eprintln!("peer: first record {first_seconds:.3} s after main (open and recover {built:.3} s)");

    // A full pass.
    for k in 0..args.keys {
        let got = value.get(&k).map_err(err)?;
        if got.as_ref().map(Vec::len) != Some(args.value_bytes) {
            return Err(format!("key {k} was not restored"));
        }
    }
    let full_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "peer: full pass over {} keys done {full_seconds:.3} s after main",
        args.keys
    );

    // Random gets, timed, checked after the counter the updates bumped.
    let mut rng = Rng::new(0xc0ffee);
    let mut h = histogram();
    let mut want = Vec::with_capacity(args.value_bytes);
    let checked = RESTORED_GETS.min(args.keys);
    for _ in 0..checked {
        let k = rng.below(args.keys);
        let t = Instant::now();
        let got = value.get(&k).map_err(err)?;
        h.record((t.elapsed().as_nanos() as u64).max(1))
            .map_err(err)?;
        args.value(k, &mut want);
        match got {
            Some(v) if v.len() == want.len() && v[8..] == want[8..] => {}
            _ => {
                return Err(format!(
                    "key {k}: restored value differs from the loaded one"
                ))
            }
        }
    }
    let rss = rss_bytes();
    let recovery = job.recovery().clone();
    drop(value);
    job.close().map_err(err)?;
    Ok(json!({
        "restore_setup_seconds": round3(setup),
        "restore_backend_build_seconds": round3(built - setup),
        "restore_first_record_seconds": round3(first_seconds),
        "restore_full_seconds": round3(full_seconds),
        "restore_replayed_changes": recovery.replayed,
        "restored_get_p50_ns": h.value_at_quantile(0.5),
        "restored_get_p99_ns": h.value_at_quantile(0.99),
        "restored_get_latency_percentiles": latency_percentiles(&h),
        "restore_keys_checked": args.keys,
        "restored_gets_checked": checked,
        "restore_rss_bytes": rss,
        "restore_peak_rss_bytes": peak_rss_bytes(),
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_split_at_the_snapshot() {
        // 10 buckets of 100 ms: 5 inside [0.2, 0.7], 5 outside.
        let buckets = [10, 10, 1, 1, 1, 1, 1, 10, 10, 10];
        let (during, outside) = split_rate(&buckets, 0.2, 0.7, 1.0);
        assert!((during - 10.0).abs() < 1e-9, "{during}");
        assert!((outside - 100.0).abs() < 1e-9, "{outside}");
    }
}
