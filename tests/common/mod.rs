//! The exactly-once job the end-to-end tests kill and restart, and its checks.
//!
//! Input: records `(partition, offset, key, seq)`, where `seq` numbers the records of each key
//! from 1 (a key lives in one partition, as Kafka's keyed partitioning puts it). The job
//! keeps, per key, the last sequence number applied (value state), every sequence number
//! applied (list state) and their sum (reducing state); each record must be exactly the last
//! plus one. A duplicate or a gap is a violation: the child reports it and exits at once.
//!
//! The child runs in its own process (the test binary re-executed with `CHILD_ENV` set, see
//! [`child_command`]), so the parent can kill it with SIGKILL at any moment.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use millpond::snapshot::Archive;
use millpond::state::{
    ListState, ListStateDescriptor, ReducingState, ReducingStateDescriptor, Store, StoreSettings,
    StringCodec, U64Codec, ValueState, ValueStateDescriptor,
};
use millpond::wal::{SegmentSettings, SourceOffset};
use millpond::{Millpond, Settings};
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use rand::Rng;
use std::sync::Arc;

/// Set in a child process: the data directory of the job it runs.
pub const CHILD_ENV: &str = "MILLPOND_E2E_CHILD";
/// Exit code of a child that found a duplicate or a gap.
pub const EXIT_VIOLATION: i32 = 3;

/// One input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub seq: u64,
}

/// Where the job reads from: positioned at the resume offsets, then polled in order.
pub trait Input {
    /// Positions every partition at `offsets` (the next record to read; absent: the start).
    fn seek(&mut self, offsets: &[SourceOffset]);
    /// The next record, or `None` once every partition is read to its end.
    fn poll(&mut self) -> Option<Record>;
    /// The topic name used in offsets.
    fn topic(&self) -> &str;
}

/// The job's states, registered on a store.
pub struct States {
    pub last: ValueState<String, u64>,
    pub seen: ListState<String, u64>,
    pub sum: ReducingState<String, u64>,
}

impl States {
    pub fn register(store: &Store) -> States {
        States {
            last: store
                .value_state(ValueStateDescriptor::new("last-seq", StringCodec, U64Codec))
                .unwrap(),
            seen: store
                .list_state(ListStateDescriptor::new("seen", StringCodec, U64Codec))
                .unwrap(),
            sum: store
                .reducing_state(ReducingStateDescriptor::new(
                    "seq-sum",
                    StringCodec,
                    U64Codec,
                    |a, b| a + b,
                ))
                .unwrap(),
        }
    }
}

/// Settings that make a small job exercise everything: state spilling to redb, many WAL
/// segments (truncated after snapshots), frequent snapshots of several files each.
pub fn job_settings() -> Settings {
    let mut settings = Settings {
        store: StoreSettings {
            memory_budget_bytes: 4 << 20,
            ..StoreSettings::default()
        },
        segments: SegmentSettings {
            segment_bytes: 256 << 10,
            ..SegmentSettings::default()
        },
        snapshot_interval: Some(Duration::from_millis(250)),
        snapshot_retain: 2,
        snapshot_gc_grace: Duration::from_secs(1),
        metrics_interval: Duration::from_millis(100),
        ..Settings::default()
    };
    settings.snapshot.target_file_bytes = 32 << 10;
    settings.snapshot.sort_buffer_bytes = 1 << 20;
    settings
}

/// Runs the job to the end of `input` (or until killed): recover, seek, process, commit every
/// few records. Returns the number of records processed. Exits the process with
/// [`EXIT_VIOLATION`] on a duplicate or a gap, after writing it to `{dir}/violations`.
///
/// `rate`: at most this many records per second (so that a small input lasts long enough to
/// be killed many times).
pub fn run_job(
    builder: millpond::Builder,
    dir: &Path,
    input: &mut dyn Input,
    rate: Option<u64>,
) -> u64 {
    let started = Instant::now();
    let opening = builder.open().expect("open");
    let states = States::register(opening.store());
    let job = opening.recover().expect("recover");
    input.seek(job.resume_offsets());
    let topic = input.topic().to_owned();
    let mut rng = rand::rng();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut commit_in = rng.random_range(1..400);
    let mut processed = 0;
    while let Some(r) = input.poll() {
        let last = states.last.get(&r.key).unwrap().unwrap_or(0);
        if r.seq != last + 1 {
            let line = format!(
                "key {} at {}:{}: seq {} after {} ({})\n",
                r.key,
                r.partition,
                r.offset,
                r.seq,
                last,
                if r.seq <= last { "duplicate" } else { "gap" }
            );
            std::fs::write(dir.join("violations"), line).unwrap();
            std::process::exit(EXIT_VIOLATION);
        }
        states.last.update(&r.key, &r.seq).unwrap();
        states.seen.add(&r.key, &r.seq).unwrap();
        states.sum.add(&r.key, r.seq).unwrap();
        pending.insert(r.partition, r.offset + 1);
        processed += 1;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(processed as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        commit_in -= 1;
        if commit_in == 0 {
            commit(&job, &topic, &mut pending);
            commit_in = rng.random_range(1..400);
        }
    }
    commit(&job, &topic, &mut pending);
    job.close().expect("close");
    processed
}

fn commit(job: &Millpond, topic: &str, pending: &mut BTreeMap<i32, i64>) {
    let offsets: Vec<SourceOffset> = std::mem::take(pending)
        .into_iter()
        .map(|(partition, next_offset)| SourceOffset {
            topic: topic.to_owned(),
            partition,
            next_offset,
        })
        .collect();
    job.commit(&offsets).expect("commit");
}

/// The command that runs this test binary's `child` test as a child job on `dir`.
pub fn child_command(test_name: &str, dir: &Path, envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// What the kill loop saw.
#[derive(Debug, Default)]
pub struct KillReport {
    pub kills: u32,
    /// Kills that found a snapshot half written (sort runs in the temporary directory, or data
    /// files in the archive that no manifest names yet).
    pub during_snapshot: u32,
    pub runs: u32,
}

/// Starts the child job on `dir` again and again, killing it with SIGKILL at a random moment
/// (`kill_after` ms after its start) until it was killed `min_kills` times, then lets it run to
/// the end. Panics on a violation or an unexpected exit.
///
/// `unfinished_snapshot` lists what a snapshot in progress leaves behind (data files no
/// manifest names, sort runs): a kill that leaves a new one behind landed during a snapshot.
pub fn kill_loop(
    test_name: &str,
    dir: &Path,
    envs: &[(&str, String)],
    min_kills: u32,
    kill_after: std::ops::Range<u64>,
    unfinished_snapshot: impl Fn() -> BTreeSet<String>,
) -> KillReport {
    let mut report = KillReport::default();
    let mut rng = rand::rng();
    let started = Instant::now();
    loop {
        report.runs += 1;
        let before = unfinished_snapshot();
        let mut child = child_command(test_name, dir, envs).spawn().unwrap();
        if report.kills < min_kills {
            let deadline =
                Instant::now() + Duration::from_millis(rng.random_range(kill_after.clone()));
            if wait_until(&mut child, deadline).is_none() {
                // SIGKILL: no destructor, no flush, no close.
                child.kill().unwrap();
                let _ = child.wait();
                report.kills += 1;
                if unfinished_snapshot().difference(&before).next().is_some() {
                    report.during_snapshot += 1;
                }
                continue;
            }
        }
        let status = child.wait().unwrap();
        let stderr = read_stderr(&mut child);
        if status.code() == Some(EXIT_VIOLATION) {
            let v = std::fs::read_to_string(dir.join("violations")).unwrap_or_default();
            panic!("exactly-once violated after {} kills: {v}", report.kills);
        }
        assert!(status.success(), "the child failed ({status}):\n{stderr}");
        if report.kills >= min_kills {
            break;
        }
        // Finished before it was killed often enough: the input is too small for the timing.
        panic!(
            "the job finished after {} kills (of {min_kills}) in {:?}: give it more input",
            report.kills,
            started.elapsed()
        );
    }
    report
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Checks the recovered state against what was produced: every key holds exactly its records,
/// each once, and the resume offsets are the ends of the partitions.
pub fn check_exactly_once(
    builder: millpond::Builder,
    expected: &BTreeMap<String, u64>,
    ends: &BTreeMap<i32, i64>,
    topic: &str,
) {
    let opening = builder.open().expect("open for the check");
    let states = States::register(opening.store());
    let job = opening.recover().expect("recover for the check");
    for (partition, end) in ends {
        assert_eq!(
            job.resume_offset(topic, *partition),
            Some(*end),
            "resume offset of partition {partition}"
        );
    }
    for (key, n) in expected {
        assert_eq!(states.last.get(key).unwrap(), Some(*n), "last seq of {key}");
        let seen = states.seen.get(key).unwrap();
        assert!(
            seen.iter().copied().eq(1..=*n),
            "key {key}: applied {} records, expected 1..={n} each once",
            seen.len()
        );
        assert_eq!(
            states.sum.get(key).unwrap(),
            Some(n * (n + 1) / 2),
            "sum of {key}"
        );
    }
    job.close().unwrap();
}

/// A deterministic input in memory, `partitions` partitions of keyed records: the embedded
/// stand-in for a Kafka topic (the same records at the same offsets on every read).
pub struct GeneratedInput {
    parts: Vec<Vec<(String, u64)>>,
    next: Vec<usize>,
    turn: usize,
}

impl GeneratedInput {
    pub fn new(partitions: usize, records: usize, keys: usize) -> GeneratedInput {
        let mut parts: Vec<Vec<(String, u64)>> = vec![Vec::new(); partitions];
        let mut seqs = vec![0u64; keys];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..records {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % keys as u64) as usize;
            seqs[k] += 1;
            parts[k % partitions].push((format!("key-{k}"), seqs[k]));
        }
        GeneratedInput {
            next: vec![0; partitions],
            parts,
            turn: 0,
        }
    }

    /// Each key's record count.
    pub fn expected(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for p in &self.parts {
            for (k, s) in p {
                m.insert(k.clone(), *s);
            }
        }
        m
    }

    /// Each partition's end offset.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        self.parts
            .iter()
            .enumerate()
            .map(|(i, p)| (i as i32, p.len() as i64))
            .collect()
    }
}

impl Input for GeneratedInput {
    fn seek(&mut self, offsets: &[SourceOffset]) {
        self.next = vec![0; self.parts.len()];
        for o in offsets {
            self.next[o.partition as usize] = o.next_offset as usize;
        }
    }

    fn poll(&mut self) -> Option<Record> {
        for _ in 0..self.parts.len() {
            let p = self.turn % self.parts.len();
            self.turn += 1;
            let i = self.next[p];
            if let Some((key, seq)) = self.parts[p].get(i) {
                self.next[p] += 1;
                return Some(Record {
                    partition: p as i32,
                    offset: i as i64,
                    key: key.clone(),
                    seq: *seq,
                });
            }
        }
        None
    }

    fn topic(&self) -> &str {
        "generated"
    }
}

/// What unfinished snapshots left in an archive and a data directory: data files that no
/// manifest names (listed through `store`, the archive's object store at `prefix`), and sort
/// runs in `{dir}/tmp`.
pub fn unfinished_snapshot(
    dir: &Path,
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    archive: &Archive,
) -> BTreeSet<String> {
    let named: BTreeSet<String> = archive
        .manifests()
        .unwrap_or_default()
        .into_iter()
        .flat_map(|m| m.files.into_iter().map(|f| f.path))
        .collect();
    let data = object_store::path::Path::from(format!("{prefix}/data").trim_start_matches('/'));
    let listed: Vec<String> = block_on(async {
        use futures::TryStreamExt;
        store
            .list(Some(&data))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap_or_default()
    });
    let mut out: BTreeSet<String> = listed
        .into_iter()
        .map(|p| {
            p.strip_prefix(prefix.trim_matches('/'))
                .map(|r| r.trim_start_matches('/').to_owned())
                .unwrap_or(p)
        })
        .filter(|p| !named.contains(p))
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
        out.extend(
            entries
                .flatten()
                .map(|e| format!("tmp/{}", e.file_name().to_string_lossy())),
        );
    }
    out
}

/// Runs a future to completion on a small runtime of its own (the tests' object store calls).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A variable `scripts/services up` exports; a test without it fails, never passes.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the services with `eval \"$(scripts/services up)\"`")
    })
}

/// The S3 archive at `prefix` of the test bucket (from `scripts/services`), and its object
/// store, for listing what a snapshot left behind.
pub fn s3_archive(prefix: &str) -> (Archive, Arc<dyn ObjectStore>) {
    env("S3_ENDPOINT");
    let bucket = env("S3_BUCKET");
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .unwrap(),
    );
    let url = format!("s3://{bucket}/{prefix}");
    (
        Archive::from_store(store.clone(), prefix, &url).unwrap(),
        store,
    )
}
