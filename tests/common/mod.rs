//! The exactly-once job the end-to-end tests kill and restart, and its checks.
//!
//! Input: records `(partition, offset, key, seq)`, where `seq` numbers the records of each key
//! from 1 (a key lives in one partition, as Kafka's keyed partitioning puts it). The job
//! keeps, per key, the last sequence number applied (value state), every sequence number
//! applied (list state), their sum (reducing state) and the offsets of its last
//! [`MAP_SLOTS`] records (map state, `seq % MAP_SLOTS` → offset); each record must be exactly
//! the last plus one. A duplicate or a gap is a violation: the child reports it and exits at
//! once. Every restart also checks the whole restored state against the model of the input
//! below the resume offsets ([`check_restored`]).
//!
//! The child runs in its own process (the test binary re-executed with `CHILD_ENV` set, see
//! [`child_command`]), so the parent can kill it with SIGKILL at any moment.
//!
//! The tests run at CI size; `scripts/soak` runs the same tests much longer through the
//! `MILLPOND_SOAK_*` variables ([`Soak`]).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use millpond::snapshot::Archive;
use millpond::state::{
    ListState, ListStateDescriptor, MapState, MapStateDescriptor, ReducingState,
    ReducingStateDescriptor, Store, StoreSettings, StringCodec, U64Codec, ValueState,
    ValueStateDescriptor,
};
use millpond::wal::{SegmentSettings, SourceOffset};
use millpond::{Millpond, Settings};
#[cfg(feature = "s3")]
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use rand::Rng;
use std::sync::Arc;

/// Set in a child process: the data directory of the job it runs.
pub const CHILD_ENV: &str = "MILLPOND_E2E_CHILD";
/// Exit code of a child that found a duplicate or a gap.
pub const EXIT_VIOLATION: i32 = 3;
/// Exit code of a child whose instance failed with an error (in [`Soak::full_disk`] mode):
/// the error is on its stderr.
pub const EXIT_FAILED: i32 = 4;
/// Set on the run the kill loop lets finish: it runs at full speed (no `rate`).
const FINAL_RUN_ENV: &str = "MILLPOND_E2E_FINAL_RUN";
/// Records whose offsets the map state keeps per key.
pub const MAP_SLOTS: u64 = 8;

/// How big a run is: the CI test's sizes unless `scripts/soak` sets `MILLPOND_SOAK_*`. The
/// child inherits the parent's environment, so both see the same sizes.
#[derive(Debug, Clone)]
pub struct Soak {
    /// `MILLPOND_SOAK_KILLS`: kills before the job may finish.
    pub kills: Option<u32>,
    /// `MILLPOND_SOAK_RECORDS`: records in the input.
    pub records: Option<usize>,
    /// `MILLPOND_SOAK_ALIVE_MS` (`200..2000`): how long after its start a child is killed.
    pub alive_ms: Option<std::ops::Range<u64>>,
    /// `MILLPOND_SOAK_RATE`: records per second while the child may be killed.
    pub rate: Option<u64>,
    /// `MILLPOND_SOAK_MEMORY_BUDGET`: the store's budget in bytes (small: state spills).
    pub memory_budget: Option<usize>,
    /// `MILLPOND_SOAK_FULL_DIR`: a directory on a small file system, for the full-disk run.
    pub full_dir: Option<std::path::PathBuf>,
}

impl Soak {
    pub fn from_env() -> Soak {
        fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
            let v = std::env::var(name).ok()?;
            Some(
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a valid number")),
            )
        }
        Soak {
            kills: var("MILLPOND_SOAK_KILLS"),
            records: var("MILLPOND_SOAK_RECORDS"),
            alive_ms: std::env::var("MILLPOND_SOAK_ALIVE_MS").ok().map(|v| {
                let (a, b) = v
                    .split_once("..")
                    .unwrap_or_else(|| panic!("MILLPOND_SOAK_ALIVE_MS={v}: expected MIN..MAX"));
                a.parse().unwrap()..b.parse().unwrap()
            }),
            rate: var("MILLPOND_SOAK_RATE"),
            memory_budget: var("MILLPOND_SOAK_MEMORY_BUDGET"),
            full_dir: std::env::var_os("MILLPOND_SOAK_FULL_DIR").map(Into::into),
        }
    }
}

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
    /// `seq % MAP_SLOTS` → the record's offset, for the key's last `MAP_SLOTS` records.
    pub offsets: MapState<String, u64, u64>,
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
            offsets: store
                .map_state(MapStateDescriptor::new(
                    "offsets",
                    StringCodec,
                    U64Codec,
                    U64Codec,
                ))
                .unwrap(),
        }
    }

    /// Applies one record (checked to be its key's next).
    pub fn apply(&self, r: &Record) -> millpond::Result<()> {
        self.last.update(&r.key, &r.seq)?;
        self.seen.add(&r.key, &r.seq)?;
        self.sum.add(&r.key, r.seq)?;
        self.offsets
            .put(&r.key, &(r.seq % MAP_SLOTS), &(r.offset as u64))?;
        Ok(())
    }
}

/// Settings that make a small job exercise everything: state spilling to redb, many WAL
/// segments (truncated after snapshots), frequent snapshots of several files each.
pub fn job_settings() -> Settings {
    let mut settings = Settings {
        store: StoreSettings {
            memory_budget_bytes: Soak::from_env().memory_budget.unwrap_or(4 << 20),
            ..StoreSettings::default()
        },
        segments: SegmentSettings {
            segment_bytes: 256 << 10,
            ..SegmentSettings::default()
        },
        snapshot_interval_max: Some(Duration::from_millis(250)),
        snapshot_interval_min: Duration::from_millis(250),
        snapshot_retain: 2,
        snapshot_gc_grace: Duration::from_secs(1),
        metrics_interval: Duration::from_millis(100),
        // Compactions run all along: a partition's delta runs merge once there are two.
        compaction: Some(millpond::snapshot::CompactionSettings {
            max_runs: 2,
            ..Default::default()
        }),
        ..Settings::default()
    };
    settings.snapshot.target_file_bytes = 32 << 10;
    settings.snapshot.sort_buffer_bytes = 1 << 20;
    settings
}

/// Runs the job to the end of `input` (or until killed): recover, check the restored state
/// against `model` below the resume offsets, seek, process, commit every few records.
/// Returns the number of records processed. Exits the process with [`EXIT_VIOLATION`] on a
/// duplicate, a gap or a restored state that differs from the model, after writing it to
/// `{dir}/violations`; with [`EXIT_FAILED`] on an error of the instance, written to stderr.
///
/// `rate`: at most this many records per second (so that a small input lasts long enough to
/// be killed many times), except on the kill loop's last run.
///
/// With `MILLPOND_E2E_ACKS` set, the offsets of each acknowledged commit are written to that
/// file (the full-disk run keeps it outside the full file system).
pub fn run_job(
    builder: millpond::Builder,
    dir: &Path,
    input: &mut dyn Input,
    model: &GeneratedInput,
    rate: Option<u64>,
) -> u64 {
    match try_run_job(builder, dir, input, model, rate) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("the instance failed: {}", chain(&e));
            eprintln!("{e:?}");
            std::process::exit(EXIT_FAILED);
        }
    }
}

/// An error and its sources, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        // Errors that print their source already are not repeated.
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

fn violation(dir: &Path, line: &str) -> ! {
    // The file may not be writable (a full disk): stderr has it too.
    let _ = std::fs::write(dir.join("violations"), line);
    eprintln!("violation: {line}");
    std::process::exit(EXIT_VIOLATION);
}

fn try_run_job(
    builder: millpond::Builder,
    dir: &Path,
    input: &mut dyn Input,
    model: &GeneratedInput,
    rate: Option<u64>,
) -> millpond::Result<u64> {
    let rate = rate.filter(|_| std::env::var_os(FINAL_RUN_ENV).is_none());
    let acks = std::env::var_os("MILLPOND_E2E_ACKS").map(std::path::PathBuf::from);
    let started = Instant::now();
    let opening = builder.open()?;
    let states = States::register(opening.store());
    let job = opening.recover()?;
    let topic = input.topic().to_owned();
    match check_restored(&states, model, job.resume_offsets(), &topic)? {
        Ok(records) => {
            use std::io::Write;
            // Counted by the kill loop; a run killed before this line was not checked.
            let line = format!("{records} {}\n", started.elapsed().as_millis());
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("checks"))
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
        Err(v) => violation(dir, &format!("restored state: {v}\n")),
    }
    input.seek(job.resume_offsets());
    let mut rng = rand::rng();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut commit_in = rng.random_range(1..400);
    let mut processed = 0;
    let mut compactions = 0;
    while let Some(r) = input.poll() {
        let last = states.last.get(&r.key)?.unwrap_or(0);
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
            violation(dir, &line);
        }
        states.apply(&r)?;
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
            commit(&job, &topic, &mut pending, acks.as_deref())?;
            commit_in = rng.random_range(1..400);
            note_compactions(&job, dir, &mut compactions);
        }
    }
    commit(&job, &topic, &mut pending, acks.as_deref())?;
    note_compactions(&job, dir, &mut compactions);
    job.close()?;
    Ok(processed)
}

fn commit(
    job: &Millpond,
    topic: &str,
    pending: &mut BTreeMap<i32, i64>,
    acks: Option<&Path>,
) -> millpond::Result<()> {
    let offsets: Vec<SourceOffset> = std::mem::take(pending)
        .into_iter()
        .map(|(partition, next_offset)| SourceOffset {
            topic: topic.to_owned(),
            partition,
            next_offset,
        })
        .collect();
    let _durable = job.commit(&offsets)?;
    if let Some(path) = acks {
        // All partitions' committed positions, replaced whole (write, then rename).
        let mut acked = read_acks(path);
        acked.extend(offsets.iter().map(|o| (o.partition, o.next_offset)));
        let text: String = acked.iter().map(|(p, o)| format!("{p} {o}\n")).collect();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    Ok(())
}

/// The positions of the last acknowledged commit (see `MILLPOND_E2E_ACKS`).
pub fn read_acks(path: &Path) -> BTreeMap<i32, i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (p, o) = l.split_once(' ')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

/// Checks every key's restored state against `model` below `offsets` (the resume offsets):
/// each key holds exactly its records there, each once. Returns the number of records
/// checked, or what differs.
pub fn check_restored(
    states: &States,
    model: &GeneratedInput,
    offsets: &[SourceOffset],
    topic: &str,
) -> millpond::Result<Result<u64, String>> {
    let below: BTreeMap<i32, i64> = offsets
        .iter()
        .filter(|o| o.topic == topic)
        .map(|o| (o.partition, o.next_offset))
        .collect();
    let mut records = 0;
    for (key, expected) in model.model_below(&below) {
        let n = expected.n;
        records += n;
        let last = states.last.get(&key)?;
        if last != (n > 0).then_some(n) {
            return Ok(Err(format!("{key}: last seq {last:?}, expected {n}")));
        }
        let seen = states.seen.get(&key)?;
        if !seen.iter().copied().eq(1..=n) {
            return Ok(Err(format!(
                "{key}: applied {} records, expected 1..={n} each once",
                seen.len()
            )));
        }
        let sum = states.sum.get(&key)?;
        if sum != (n > 0).then_some(n * (n + 1) / 2) {
            return Ok(Err(format!("{key}: sum {sum:?} for {n} records")));
        }
        let mut offsets = states.offsets.entries(&key)?;
        offsets.sort();
        if offsets != expected.offsets {
            return Ok(Err(format!(
                "{key}: map of offsets {offsets:?}, expected {:?}",
                expected.offsets
            )));
        }
    }
    Ok(Ok(records))
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
    /// Runs that checked their restored state against the model (the others were killed
    /// before the check ended), and the records those checks covered.
    pub checked_restarts: u32,
    pub records_checked: u64,
    /// Mean time from a child's start to the end of its restart check.
    pub mean_check_ms: u64,
    pub elapsed: Duration,
}

impl KillReport {
    /// One line for `scripts/soak` to print (it greps `SOAK `).
    pub fn summary(&self, name: &str) -> String {
        format!(
            "SOAK {name}: kills={} kills_during_snapshot={} restarts={} restarts_checked={} \
             records_checked={} recovery_and_check_ms_mean={} elapsed_s={:.0} per_cycle_ms={:.0}",
            self.kills,
            self.during_snapshot,
            self.runs,
            self.checked_restarts,
            self.records_checked,
            self.mean_check_ms,
            self.elapsed.as_secs_f64(),
            self.elapsed.as_secs_f64() * 1000.0 / self.runs.max(1) as f64,
        )
    }
}

/// Starts the child job on `dir` again and again, killing it with SIGKILL at a random moment
/// (`kill_after` ms after its start) until it was killed `min_kills` times, then lets it run to
/// the end (in a soak, [`Soak::kills`] set: stops there, and the caller checks the state at
/// the resume offsets instead). Panics on a violation or an unexpected exit.
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
    let run_to_end = Soak::from_env().kills.is_none();
    loop {
        if report.kills >= min_kills && !run_to_end {
            report.elapsed = started.elapsed();
            read_checks(dir, &mut report);
            break;
        }
        report.runs += 1;
        let before = unfinished_snapshot();
        let mut cmd = child_command(test_name, dir, envs);
        if report.kills >= min_kills {
            cmd.env(FINAL_RUN_ENV, "1");
        }
        let mut child = cmd.spawn().unwrap();
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
            report.elapsed = started.elapsed();
            read_checks(dir, &mut report);
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

/// Adds up the restart checks the children logged in `{dir}/checks`.
fn read_checks(dir: &Path, report: &mut KillReport) {
    let checks = std::fs::read_to_string(dir.join("checks")).unwrap_or_default();
    let mut check_ms = 0;
    for line in checks.lines() {
        // A kill may cut the last line short.
        if let Some((records, ms)) = line.split_once(' ') {
            if let (Ok(records), Ok(ms)) = (records.parse::<u64>(), ms.parse::<u64>()) {
                report.checked_restarts += 1;
                report.records_checked += records;
                check_ms += ms;
            }
        }
    }
    report.mean_check_ms = check_ms / u64::from(report.checked_restarts.max(1));
}

/// After a soak's last kill: the state recovered once more equals the model below the resume
/// offsets. Returns the records checked.
pub fn check_at_resume(builder: millpond::Builder, model: &GeneratedInput, topic: &str) -> u64 {
    let opening = builder.open().expect("open for the check");
    let states = States::register(opening.store());
    let job = opening.recover().expect("recover for the check");
    let records = check_restored(&states, model, job.resume_offsets(), topic)
        .unwrap()
        .unwrap_or_else(|v| panic!("state after the last kill: {v}"));
    job.close().unwrap();
    records
}

pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
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

pub fn read_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Checks the recovered state against what was produced: every key holds exactly its records,
/// each once, and the resume offsets are the ends of the partitions.
pub fn check_exactly_once(builder: millpond::Builder, model: &GeneratedInput, topic: &str) {
    let opening = builder.open().expect("open for the check");
    let states = States::register(opening.store());
    let job = opening.recover().expect("recover for the check");
    for (partition, end) in model.ends() {
        assert_eq!(
            job.resume_offset(topic, partition),
            Some(end),
            "resume offset of partition {partition}"
        );
    }
    check_restored(&states, model, job.resume_offsets(), topic)
        .unwrap()
        .unwrap();
    job.close().unwrap();
}

/// A deterministic input in memory, `partitions` partitions of keyed records: the embedded
/// stand-in for a Kafka topic (the same records at the same offsets on every read), and the
/// model the checks compare the state with.
#[derive(Clone)]
pub struct GeneratedInput {
    /// Per partition, (key index, seq) at each offset.
    parts: Vec<Vec<(u32, u64)>>,
    keys: usize,
    next: Vec<usize>,
    turn: usize,
}

/// One key's records below some offsets, as the job's state must hold them.
pub struct KeyModel {
    pub n: u64,
    /// `seq % MAP_SLOTS` → offset of its last `MAP_SLOTS` records, sorted.
    pub offsets: Vec<(u64, u64)>,
}

fn key_name(k: u32) -> String {
    format!("key-{k}")
}

impl GeneratedInput {
    pub fn new(partitions: usize, records: usize, keys: usize) -> GeneratedInput {
        let mut parts: Vec<Vec<(u32, u64)>> = vec![Vec::new(); partitions];
        let mut seqs = vec![0u64; keys];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..records {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % keys as u64) as usize;
            seqs[k] += 1;
            parts[k % partitions].push((k as u32, seqs[k]));
        }
        GeneratedInput {
            next: vec![0; partitions],
            parts,
            keys,
            turn: 0,
        }
    }

    /// Each key's records below `ends` (partition → next offset; a partition not named: none),
    /// for every key of the input.
    pub fn model_below(&self, ends: &BTreeMap<i32, i64>) -> BTreeMap<String, KeyModel> {
        let mut n = vec![0u64; self.keys];
        let mut slots: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); self.keys];
        for (p, part) in self.parts.iter().enumerate() {
            let end = ends.get(&(p as i32)).copied().unwrap_or(0).max(0) as usize;
            for (offset, (k, seq)) in part.iter().enumerate().take(end) {
                n[*k as usize] = *seq;
                slots[*k as usize].insert(seq % MAP_SLOTS, offset as u64);
            }
        }
        (0..self.keys)
            .map(|k| {
                let model = KeyModel {
                    n: n[k],
                    offsets: std::mem::take(&mut slots[k]).into_iter().collect(),
                };
                (key_name(k as u32), model)
            })
            .collect()
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
                    key: key_name(*key),
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
/// Compaction jobs the job's runs committed (each run appends its new ones to
/// `{dir}/compactions` as it goes): a kill test asserts that compactions ran while it killed.
pub fn compactions_committed(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("compactions"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse::<u64>().ok())
        .sum()
}

/// Appends the jobs committed since `noted` to `{dir}/compactions`.
fn note_compactions(job: &Millpond, dir: &Path, noted: &mut u64) {
    use std::io::Write;
    let jobs = job.compaction_stats().jobs;
    if jobs > *noted {
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("compactions"))
            .and_then(|mut f| writeln!(f, "{}", jobs - *noted));
        *noted = jobs;
    }
}

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
        .flat_map(|m| m.files().map(|f| f.path.clone()).collect::<Vec<_>>())
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
#[cfg(feature = "s3")]
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
