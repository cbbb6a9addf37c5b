//! `e2e --group-processes N`: the job as a Kafka consumer group (`millpond::kafka`), one
//! millpond instance per partition, partitions moving between processes.
//!
//! After the produce and the bare consumer of `e2e`:
//!
//! 1. **One process** (group of one) consumes the topic to its end: `records_per_sec_one_process`.
//! 2. **N processes** in a new group consume it from the start without disruption
//!    (`records_per_sec_no_disruption`); then, in another group, again while members are killed
//!    with SIGKILL or leave gracefully and come back at random moments (`--group-actions`, one
//!    every `--group-action-every-s` on average): `records_per_sec`, from the members' start
//!    to the group's end (the disruptions included).
//! 3. Every handover is timed from the members' events: from a partition's revocation (its
//!    old owner starts releasing it), or from its owner's SIGKILL, to the first record the new
//!    owner processes; the session timeout after every SIGKILL is subtracted from the gaps it
//!    overlaps (a graceful handover waits for it too: the group cannot finish a rebalance while
//!    a killed member counts as alive) and reported apart (`session_timeout_seconds`):
//!    `handover_seconds_p50` / `_p99` (all handovers),
//!    `graceful_handover_seconds_p99`, `kill_handover_seconds_p99`.
//! 4. Each partition's archive is restored on a fresh directory and every key's count is
//!    checked against the producer's (each record applied once across the moves).
//!
//! WAL: local segments in each instance's directory (a partition's state moves through its
//! snapshot archive: a revocation snapshots). Snapshots: `--snapshots file|s3`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use millpond::kafka::{GroupEvent, GroupJob, GroupSettings};
use millpond::state::{BytesCodec, StoreSettings, U64Codec, ValueStateDescriptor};
use millpond::{Millpond, Settings};
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::e2e::{err, header, kafka_config, round3, E2eArgs, KeyState, STATE_NAME};
use crate::util::loadavg_1m;

/// One member of the group, run by `e2e --group-processes` as a child.
#[derive(Args, Debug)]
pub struct GroupJobArgs {
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    member: usize,
    /// The run's directory: members' data under `member-{m}`, events in `events.jsonl`, the
    /// stop file `stop-{m}`.
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    archive: String,
    #[arg(long, value_parser = crate::util::parse_bytes)]
    memory_budget: u64,
    #[arg(long)]
    commit_every: u64,
    #[arg(long)]
    commit_ms: u64,
    #[arg(long)]
    session_timeout_s: f64,
    #[arg(long)]
    snapshot_interval_s: f64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn append(path: &Path, line: &Value) {
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"));
}

fn instance_settings(snapshot_interval_s: f64) -> Settings {
    let interval =
        (snapshot_interval_s > 0.0).then(|| Duration::from_secs_f64(snapshot_interval_s));
    Settings {
        snapshot_interval_max: interval,
        ..Settings::default()
    }
}

/// The member process: a `GroupJob` whose function is `e2e`'s read-modify-write (count and
/// last offset of the key), with the per-key check that a record's offset is past the last
/// one its key saw. Runs until its stop file appears.
pub fn run_member(args: GroupJobArgs) -> Result<String, String> {
    let brokers = crate::e2e::env("KAFKA_BROKERS")?;
    let events = args.root.join("events.jsonl");
    let member = args.member;
    let settings = GroupSettings {
        brokers,
        group_id: args.group.clone(),
        topics: vec![args.topic.clone()],
        memory_budget_bytes: args.memory_budget as usize,
        commit_every_records: args.commit_every,
        commit_interval: Duration::from_millis(args.commit_ms),
        session_timeout: Duration::from_secs_f64(args.session_timeout_s),
        instance: instance_settings(args.snapshot_interval_s),
        ..GroupSettings::default()
    };
    let job = GroupJob::new(
        args.root.join(format!("member-{member}")),
        args.archive.clone(),
        settings,
        |store| Ok(store.value_state(ValueStateDescriptor::new(STATE_NAME, U64Codec, BytesCodec))?),
    )
    .on_event(move |e| {
        let line = match e {
            GroupEvent::Assigned {
                partition,
                at_ms,
                open_seconds,
                ..
            } => json!({"event": "assigned", "member": member, "partition": partition,
                        "at_ms": at_ms, "open_seconds": open_seconds}),
            GroupEvent::FirstRecord {
                partition, at_ms, ..
            } => {
                json!({"event": "first", "member": member, "partition": partition, "at_ms": at_ms})
            }
            GroupEvent::Released {
                partition,
                at_ms,
                seconds,
                lost,
                ..
            } => json!({"event": "released", "member": member, "partition": partition,
                        "at_ms": at_ms, "seconds": seconds, "lost": lost}),
            _ => return,
        };
        append(&events, &line);
    });
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, file) = (stop.clone(), args.root.join(format!("stop-{member}")));
        std::thread::spawn(move || {
            while !file.exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let stats = job
        .run(&stop, |state: &KeyState, msg| {
            let key_bytes: [u8; 8] = msg
                .key()
                .and_then(|k| k.try_into().ok())
                .ok_or("a key of 8 bytes")?;
            let key = u64::from_be_bytes(key_bytes);
            let mut v = state
                .get(&key)?
                .unwrap_or_else(|| vec![0; crate::e2e::VALUE_HEADER_BYTES]);
            let (count, last) = header(&v);
            if count > 0 && msg.offset() <= last {
                return Err(format!(
                    "key {key}: offset {} after {last}: a record applied twice",
                    msg.offset()
                )
                .into());
            }
            v[0..8].copy_from_slice(&(count + 1).to_le_bytes());
            v[8..16].copy_from_slice(&msg.offset().to_le_bytes());
            state.update(&key, &v)?;
            Ok(())
        })
        .map_err(err)?;
    Ok(json!({"member": member, "records": stats.records}).to_string())
}

struct Members<'a> {
    args: &'a E2eArgs,
    topic: &'a str,
    group: String,
    root: PathBuf,
    archive: String,
    children: Vec<Child>,
}

impl Drop for Members<'_> {
    /// No member outlives its run, a failed one included.
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Members<'_> {
    fn spawn(&self, m: usize) -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("member-{m}.log")))
            .map_err(err)?;
        Command::new(std::env::current_exe().map_err(err)?)
            .args([
                "e2e-group-job",
                "--topic",
                self.topic,
                "--group",
                &self.group,
            ])
            .args(["--member", &m.to_string()])
            .arg("--root")
            .arg(&self.root)
            .args(["--archive", &self.archive])
            .args(["--memory-budget", &self.args.memory_budget.to_string()])
            .args(["--commit-every", &self.args.commit_every.to_string()])
            .args(["--commit-ms", &self.args.commit_ms.to_string()])
            .args([
                "--session-timeout-s",
                &self.args.group_session_timeout_s.to_string(),
            ])
            .args([
                "--snapshot-interval-s",
                &self.args.snapshot_interval_s.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(err)
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for (m, c) in self.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait().map_err(err)? {
                let log = std::fs::read_to_string(self.root.join(format!("member-{m}.log")))
                    .unwrap_or_default();
                return Err(format!("member {m} exited on its own ({status}): {log}"));
            }
        }
        Ok(())
    }

    fn leave(&mut self, m: usize) -> Result<(), String> {
        let file = self.root.join(format!("stop-{m}"));
        std::fs::write(&file, b"").map_err(err)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(s) = self.children[m].try_wait().map_err(err)? {
                break s;
            }
            if Instant::now() > deadline {
                return Err(format!("member {m} did not leave in 300 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::fs::remove_file(&file).map_err(err)?;
        if !status.success() {
            let log = std::fs::read_to_string(self.root.join(format!("member-{m}.log")))
                .unwrap_or_default();
            return Err(format!("member {m} failed ({status}): {log}"));
        }
        Ok(())
    }
}

/// The group's committed offsets (members commit them after each durable millpond commit).
fn progress(brokers: &str, topic: &str, group: &str, partitions: i32) -> Result<i64, String> {
    let c: BaseConsumer = kafka_config(brokers)
        .set("group.id", group)
        .create()
        .map_err(err)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(err)?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum())
}

/// Runs `members` processes in group `group` until the group has committed `total` records,
/// with `actions` kills or graceful leaves (each followed by a restart) while it runs.
/// Returns the seconds from the start to the end.
fn run_group(
    members: &mut Members<'_>,
    n: usize,
    actions: usize,
    total: i64,
    brokers: &str,
) -> Result<f64, String> {
    let t0 = Instant::now();
    for m in 0..n {
        let child = members.spawn(m)?;
        members.children.push(child);
    }
    let mut rng = rand::rng();
    let mut done_actions = 0;
    let every = members.args.group_action_every_s;
    let mut next_action = t0 + Duration::from_secs_f64(every * rng.random_range(0.5..1.5));
    let events = members.root.join("events.jsonl");
    loop {
        members.check_alive()?;
        let at = progress(
            brokers,
            members.topic,
            &members.group,
            members.args.partitions,
        )?;
        if at >= total {
            break;
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            return Err(format!("the group is at {at} of {total} after an hour"));
        }
        if done_actions < actions && Instant::now() >= next_action {
            let m = rng.random_range(0..n);
            if rng.random_bool(0.5) {
                append(
                    &events,
                    &json!({"event": "killed", "member": m, "at_ms": now_ms()}),
                );
                members.children[m].kill().map_err(err)?;
                let _ = members.children[m].wait();
                eprintln!("e2e group: killed member {m} at {at} of {total}");
            } else {
                members.leave(m)?;
                eprintln!("e2e group: member {m} left at {at} of {total}");
            }
            members.children[m] = members.spawn(m)?;
            done_actions += 1;
            next_action =
                Instant::now() + Duration::from_secs_f64(every * rng.random_range(0.5..1.5));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let seconds = t0.elapsed().as_secs_f64();
    for m in 0..n {
        members.leave(m)?;
    }
    if done_actions < actions {
        eprintln!(
            "e2e group: the group finished after {done_actions} of {actions} actions: give it more records"
        );
    }
    Ok(seconds)
}

/// Handover times from the events, in seconds: (graceful, after a kill). A gap starts when a
/// partition's owner starts releasing it (graceful) or is killed, and ends at the new owner's
/// first record. The group cannot finish a rebalance while a killed member still counts as
/// alive, so the session-timeout window after every kill (`[kill, kill + timeout]`) is taken
/// off every gap it overlaps, a graceful one included, and reported apart. Also returns how
/// many graceful gaps overlapped such a window.
fn handovers(events: &str, session_timeout_s: f64) -> (Vec<f64>, Vec<f64>, usize) {
    let mut all: Vec<Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    all.sort_by_key(|e| e["at_ms"].as_u64().unwrap_or(0));
    let timeout_ms = (session_timeout_s * 1000.0) as u64;
    let kills: Vec<u64> = all
        .iter()
        .filter(|e| e["event"] == "killed")
        .filter_map(|e| e["at_ms"].as_u64())
        .collect();
    // The part of [a, b] inside the union of the kills' windows.
    let waiting = |a: u64, b: u64| -> u64 {
        let mut covered = 0;
        let mut reach = a;
        for &k in &kills {
            let (from, to) = (k.max(reach), (k + timeout_ms).min(b));
            if to > from {
                covered += to - from;
                reach = to;
            }
        }
        covered
    };
    let mut holder: BTreeMap<i64, u64> = BTreeMap::new();
    // partition → (when its gap started, after a kill)
    let mut gap: BTreeMap<i64, (u64, bool)> = BTreeMap::new();
    let (mut graceful, mut killed, mut overlapped) = (Vec::new(), Vec::new(), 0);
    for e in &all {
        let at = e["at_ms"].as_u64().unwrap_or(0);
        let p = e["partition"].as_i64().unwrap_or(-1);
        let m = e["member"].as_u64().unwrap_or(u64::MAX);
        match e["event"].as_str() {
            Some("assigned") => {
                holder.insert(p, m);
            }
            Some("released") => {
                holder.remove(&p);
                gap.insert(p, (at, false));
            }
            Some("killed") => {
                let held: Vec<i64> = holder
                    .iter()
                    .filter(|(_, &h)| h == m)
                    .map(|(&p, _)| p)
                    .collect();
                for p in held {
                    holder.remove(&p);
                    gap.insert(p, (at, true));
                }
            }
            Some("first") => {
                if let Some((start, after_kill)) = gap.remove(&p) {
                    let waited = waiting(start, at);
                    let s = at.saturating_sub(start).saturating_sub(waited) as f64 / 1000.0;
                    if after_kill {
                        killed.push(s);
                    } else {
                        overlapped += usize::from(waited > 0);
                        graceful.push(s);
                    }
                }
            }
            _ => {}
        }
    }
    (graceful, killed, overlapped)
}

fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    Some(round3(s[i]))
}

/// Restores every partition's archive on a fresh directory and checks each key's count.
fn check_counts(
    root: &Path,
    archive: &str,
    topic: &str,
    partitions: i32,
    expected: &[u32],
) -> Result<u64, String> {
    let mut checked = 0u64;
    for p in 0..partitions {
        let dir = root.join(format!("check-{p}"));
        let opening = Millpond::builder(&dir)
            .settings(Settings {
                store: StoreSettings {
                    memory_budget_bytes: 256 << 20,
                    ..StoreSettings::default()
                },
                ..Settings::default()
            })
            .snapshots_url(format!("{archive}/{topic}-{p}"))
            .open()
            .map_err(err)?;
        let state: KeyState = opening
            .store()
            .value_state(ValueStateDescriptor::new(STATE_NAME, U64Codec, BytesCodec))
            .map_err(err)?;
        let job = opening.recover().map_err(err)?;
        for (k, &want) in expected.iter().enumerate() {
            if k as u64 % partitions as u64 != p as u64 {
                continue;
            }
            let got = state
                .get(&(k as u64))
                .map_err(err)?
                .map_or(0, |v| header(&v).0);
            if got != u64::from(want) {
                return Err(format!(
                    "key {k} in partition {p}: count {got}, produced {want}"
                ));
            }
            checked += 1;
        }
        job.close().map_err(err)?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(checked)
}

/// Steps 1 to 4 of the module docs, after the produce; one JSON line.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    args: &E2eArgs,
    brokers: &str,
    topic: &str,
    run_id: &str,
    root: &Path,
    bucket: Option<&str>,
    expected: &[u32],
    consume_only: f64,
) -> Result<String, String> {
    let total = args.records as i64;
    let archive = |name: &str| match bucket {
        Some(b) => format!("s3://{b}/e2e-{run_id}/{name}"),
        None => format!("file://{}", root.join(name).display()),
    };
    let n = args.group_processes;

    // 1. One process.
    let mut one = Members {
        args,
        topic,
        group: format!("{topic}-one"),
        root: root.join("one"),
        archive: archive("one-archive"),
        children: Vec::new(),
    };
    std::fs::create_dir_all(&one.root).map_err(err)?;
    eprintln!("e2e group: one process consumes the topic");
    let one_seconds = run_group(&mut one, 1, 0, total, brokers)?;
    let one_rate = total as f64 / one_seconds;
    eprintln!("e2e group: one process: {one_rate:.0} records/s");
    let _ = std::fs::remove_dir_all(&one.root);

    // 2a. N processes, nobody leaves: what the group does without disruptions.
    let mut steady = Members {
        args,
        topic,
        group: format!("{topic}-steady"),
        root: root.join("steady"),
        archive: archive("steady-archive"),
        children: Vec::new(),
    };
    std::fs::create_dir_all(&steady.root).map_err(err)?;
    eprintln!("e2e group: {n} processes, no disruption");
    let steady_seconds = run_group(&mut steady, n, 0, total, brokers)?;
    let steady_rate = total as f64 / steady_seconds;
    eprintln!("e2e group: {n} processes: {steady_rate:.0} records/s");
    let _ = std::fs::remove_dir_all(&steady.root);

    // 2b. N processes with kills and leaves.
    let loadavg = loadavg_1m();
    let mut group = Members {
        args,
        topic,
        group: format!("{topic}-group"),
        root: root.join("group"),
        archive: archive("group-archive"),
        children: Vec::new(),
    };
    std::fs::create_dir_all(&group.root).map_err(err)?;
    eprintln!(
        "e2e group: {n} processes, {} kills or leaves",
        args.group_actions
    );
    let seconds = run_group(&mut group, n, args.group_actions, total, brokers)?;
    let rate = total as f64 / seconds;
    let events = std::fs::read_to_string(group.root.join("events.jsonl")).unwrap_or_default();
    let (graceful, killed, overlapped) = handovers(&events, args.group_session_timeout_s);
    let all: Vec<f64> = graceful.iter().chain(&killed).copied().collect();
    let kills = events.lines().filter(|l| l.contains("\"killed\"")).count();

    // 4. Exactly once.
    let checked = check_counts(root, &group.archive, topic, args.partitions, expected)?;
    eprintln!("e2e group: {checked} keys checked: each record applied once");
    Ok(json!({
        "bench": "e2e-group",
        "records": args.records,
        "keys": args.keys,
        "partitions": args.partitions,
        "keys_per_partition": args.keys / args.partitions as u64,
        "group_processes": n,
        "wal": "local",
        "snapshots": if bucket.is_some() { "s3" } else { "file" },
        "records_per_sec": rate.round(),
        "records_per_sec_one_process": one_rate.round(),
        "group_vs_one_process": round3(rate / one_rate),
        "records_per_sec_no_disruption": steady_rate.round(),
        "no_disruption_vs_one_process": round3(steady_rate / one_rate),
        "kafka_consume_only_records_per_sec": consume_only.round(),
        "handovers": all.len(),
        "handover_seconds_p50": percentile(&all, 0.5),
        "handover_seconds_p99": percentile(&all, 0.99),
        "graceful_handovers": graceful.len(),
        "graceful_handovers_during_a_kills_timeout": overlapped,
        "graceful_handover_seconds_p50": percentile(&graceful, 0.5),
        "graceful_handover_seconds_p99": percentile(&graceful, 0.99),
        "kill_handovers": killed.len(),
        "kill_handover_seconds_p50": percentile(&killed, 0.5),
        "kill_handover_seconds_p99": percentile(&killed, 0.99),
        "session_timeout_seconds": args.group_session_timeout_s,
        "kills": kills,
        "actions": args.group_actions,
        "keys_checked": checked,
        "loadavg_1m_at_group_start": loadavg,
    })
    .to_string())
}
