//! Keyed state in a Kafka consumer group (`millpond::kafka`), on the real Kafka of
//! `scripts/services`: three job processes in one group read a topic of 8 partitions whose
//! records carry per-key sequence numbers. Processes are killed with SIGKILL and leave
//! gracefully at random moments, and come back, so partitions move between them again and
//! again (at least 20 rebalances). Each process checks every record is its key's next (a
//! duplicate or a gap exits with a violation); at the end every partition's state, restored
//! from its archive on a fresh directory, equals its records, each applied once. The job also
//! produces one output record per input record, flushed in `before_commit`: the output topic
//! must hold every one at least once (output is at least once; duplicates are counted).
//!
//! Without `KAFKA_BROKERS` the test fails: it never passes without Kafka.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{GeneratedInput, CHILD_ENV, EXIT_VIOLATION};
use millpond::kafka::{GroupEvent, GroupJob, GroupSettings};
use millpond::state::{Store, StringCodec, U64Codec, ValueState, ValueStateDescriptor};
use millpond::{Millpond, Settings};
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 8;
const RECORDS: usize = 240_000;
const KEYS: usize = 4_000;
const MEMBERS: usize = 3;
/// Records per second each process applies at most: the input lasts long enough for the
/// rebalances.
const RATE: u64 = 2_500;
/// Joins and leaves (each a kill or a graceful leave, then a restart): two rebalances each.
const ACTIONS: usize = 12;

fn model() -> GeneratedInput {
    GeneratedInput::new(PARTITIONS as usize, RECORDS, KEYS)
}

struct States {
    last: ValueState<String, u64>,
    count: ValueState<String, u64>,
}

fn register(store: &Store) -> millpond::Result<States> {
    Ok(States {
        last: store.value_state(ValueStateDescriptor::new("last-seq", StringCodec, U64Codec))?,
        count: store.value_state(ValueStateDescriptor::new("count", StringCodec, U64Codec))?,
    })
}

fn instance_settings() -> Settings {
    Settings {
        snapshot_interval_max: Some(Duration::from_millis(500)),
        snapshot_interval_min: Duration::from_millis(250),
        snapshot_retain: 2,
        snapshot_gc_grace: Duration::from_secs(1),
        ..Settings::default()
    }
}

fn group_settings(topic: &str) -> GroupSettings {
    GroupSettings {
        brokers: common::env("KAFKA_BROKERS"),
        group_id: format!("{topic}-job"),
        topics: vec![topic.to_owned()],
        memory_budget_bytes: 64 << 20,
        commit_every_records: 1_000,
        commit_interval: Duration::from_millis(200),
        // The broker's lowest (group.min.session.timeout.ms): a killed member's partitions
        // wait this long.
        session_timeout: Duration::from_secs(6),
        instance: instance_settings(),
        ..GroupSettings::default()
    }
}

/// One member of the group, when this binary runs as a child; a no-op test otherwise.
#[test]
fn child() {
    let Some(root) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let member = common::env("MILLPOND_GROUP_MEMBER");
    let topic = common::env("MILLPOND_E2E_RUN");
    let archive = format!("file://{}", root.join("archive").display());
    let events = root.join("events");
    let who = member.clone();
    let job = GroupJob::new(
        root.join(format!("member-{member}")),
        archive,
        group_settings(&topic),
        register,
    )
    .on_event(move |e| {
        // One line per event, appended at once: a member killed later keeps its lines.
        use std::io::Write;
        let line = match e {
            GroupEvent::Assigned { partition, .. } => format!("assigned {who} {partition}\n"),
            GroupEvent::Released {
                partition, lost, ..
            } => {
                format!("released {who} {partition} lost={lost}\n")
            }
            _ => return,
        };
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&events)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    });
    let stop = Arc::new(AtomicBool::new(false));
    {
        // A graceful leave is asked for with a file.
        let (stop, file) = (stop.clone(), root.join(format!("stop-{member}")));
        std::thread::spawn(move || loop {
            if file.exists() {
                stop.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::env("KAFKA_BROKERS"))
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let producer = Arc::new(producer);
    let flushing = producer.clone();
    let job = job.before_commit(move || Ok(flushing.flush(Duration::from_secs(30))?));
    let out_topic = format!("{topic}-out");
    let started = Instant::now();
    let mut applied = 0u64;
    let violations = root.join("violations");
    let result = job.run(&stop, |st: &States, msg| {
        let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
        let seq: u64 = std::str::from_utf8(msg.payload().unwrap_or_default())?.parse()?;
        let last = st.last.get(&key)?.unwrap_or(0);
        if seq != last + 1 {
            let line = format!(
                "member {member}: {key} at {}-{} offset {}: seq {seq} after {last}\n",
                msg.topic(),
                msg.partition(),
                msg.offset()
            );
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&violations)?;
            f.write_all(line.as_bytes())?;
            std::process::exit(EXIT_VIOLATION);
        }
        st.last.update(&key, &seq)?;
        let payload = seq.to_string();
        let mut out = BaseRecord::to(&out_topic).key(&key).payload(&payload);
        while let Err((e, back)) = producer.send(out) {
            if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                return Err(e.into());
            }
            std::thread::sleep(Duration::from_millis(5));
            out = back;
        }
        let n = st.count.get(&key)?.unwrap_or(0);
        st.count.update(&key, &(n + 1))?;
        applied += 1;
        let due = Duration::from_secs_f64(applied as f64 / RATE as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
        Ok(())
    });
    match result {
        Ok(stats) => {
            let line = format!(
                "member {member}: {} records, {} taken over, {} handed over\n",
                stats.records,
                stats.takeovers.len(),
                stats.revoked
            );
            use std::io::Write;
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(root.join("members"))
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
        Err(e) => {
            eprintln!("member {member} failed: {e}");
            std::process::exit(4);
        }
    }
}

fn spawn(root: &Path, topic: &str, member: usize) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join(format!("member-{member}.log")))
        .unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, root)
        .env("MILLPOND_GROUP_MEMBER", member.to_string())
        .env("MILLPOND_E2E_RUN", topic)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Panics if a member exited on its own: a violation or a failure.
fn check_alive(root: &Path, members: &mut [Child]) {
    for (i, c) in members.iter_mut().enumerate() {
        if let Some(status) = c.try_wait().unwrap() {
            let v = std::fs::read_to_string(root.join("violations")).unwrap_or_default();
            let log =
                std::fs::read_to_string(root.join(format!("member-{i}.log"))).unwrap_or_default();
            panic!("member {i} exited ({status}) on its own; violations: {v}\nlog:\n{log}");
        }
    }
}

/// Asks member `i` to leave gracefully and waits for it.
fn leave(root: &Path, members: &mut [Child], i: usize) {
    let file = root.join(format!("stop-{i}"));
    std::fs::write(&file, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = members[i].try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} did not leave in 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::fs::remove_file(&file).unwrap();
    let log = std::fs::read_to_string(root.join(format!("member-{i}.log"))).unwrap_or_default();
    assert!(
        status.success(),
        "member {i} failed to leave ({status}): {}\n{log}",
        std::fs::read_to_string(root.join("violations")).unwrap_or_default()
    );
}

fn produce(topic: &str) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", common::env("KAFKA_BROKERS"));
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    let out = format!("{topic}-out");
    for r in common::block_on(admin.create_topics(
        &[
            NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1)),
            NewTopic::new(&out, PARTITIONS, TopicReplication::Fixed(1)),
        ],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .unwrap()
    {
        r.unwrap();
    }
    let producer: BaseProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut input = model();
    while let Some(r) = common::Input::poll(&mut input) {
        let payload = r.seq.to_string();
        let mut record = BaseRecord::to(topic)
            .key(&r.key)
            .payload(&payload)
            .partition(r.partition);
        while let Err((_, back)) = producer.send(record) {
            producer.poll(Duration::from_millis(10));
            record = back;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// The group's committed offsets (the job commits them after each durable millpond commit,
/// for monitoring): how far the group got.
fn group_progress(topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::env("KAFKA_BROKERS"))
        .set("group.id", format!("{topic}-job"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The members: killed when the test ends, a failed one included, so none outlives it.
struct KillOnDrop(Vec<Child>);

impl std::ops::Deref for KillOnDrop {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every record of the output topic: (key, seq) → how many times.
fn read_output(topic: &str) -> BTreeMap<(String, u64), u32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::env("KAFKA_BROKERS"))
        .set("group.id", format!("{topic}-check"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut left = 0i64;
    for p in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        left += high;
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = BTreeMap::new();
    while left > 0 {
        let m = consumer
            .poll(Duration::from_secs(30))
            .expect("the output topic stalled")
            .unwrap();
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let seq: u64 = std::str::from_utf8(m.payload().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        *out.entry((key, seq)).or_insert(0) += 1;
        left -= 1;
    }
    out
}

#[test]
fn three_processes_with_joins_leaves_and_kills_apply_each_record_once() {
    let topic = format!(
        "group-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    produce(&topic);
    let tmp = tempfile::tempdir().unwrap();
    // MILLPOND_KEEP=1 keeps the members' logs and directories for a look after a failure.
    let (root, _tmp) = match std::env::var_os("MILLPOND_KEEP") {
        Some(_) => (tmp.keep(), None),
        None => (tmp.path().to_owned(), Some(tmp)),
    };
    let root = root.as_path();
    eprintln!("kafka group: in {}", root.display());
    let mut members = KillOnDrop((0..MEMBERS).map(|i| spawn(root, &topic, i)).collect());
    let mut rng = rand::rng();
    let (mut kills, mut leaves) = (0, 0);
    for _ in 0..ACTIONS {
        std::thread::sleep(Duration::from_millis(rng.random_range(1_500..4_000)));
        check_alive(root, &mut members);
        let i = rng.random_range(0..MEMBERS);
        if rng.random_bool(0.5) {
            // SIGKILL: no handover; the group notices after the session timeout.
            members[i].kill().unwrap();
            let _ = members[i].wait();
            kills += 1;
        } else {
            leave(root, &mut members, i);
            leaves += 1;
        }
        members[i] = spawn(root, &topic, i);
    }
    // Every action is a member leaving and one joining: two rebalances.
    let rebalances = 2 * ACTIONS;
    assert!(rebalances >= 20);

    let ends = model().ends();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        check_alive(root, &mut members);
        let progress = group_progress(&topic);
        if ends.iter().all(|(p, end)| progress.get(p) == Some(end)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not reach the end: {progress:?} of {ends:?}; events:\n{}",
            std::fs::read_to_string(root.join("events")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 0..MEMBERS {
        leave(root, &mut members, i);
    }
    let summary = std::fs::read_to_string(root.join("members")).unwrap_or_default();
    eprintln!(
        "kafka group: {kills} kills, {leaves} graceful leaves, {rebalances} rebalances\n{summary}"
    );
    let events = std::fs::read_to_string(root.join("events")).unwrap_or_default();
    let takeovers = events.lines().filter(|l| l.starts_with("assigned")).count();
    let handed = events.lines().filter(|l| l.starts_with("released")).count();
    eprintln!("{takeovers} partitions taken over, {handed} handed over");
    // 8 at the start, and the partitions of every member that left, at least once each.
    assert!(
        takeovers >= 8 + ACTIONS,
        "partitions were taken over only {takeovers} times"
    );

    // The output: every input record's result at least once.
    let produced = read_output(&format!("{topic}-out"));
    let mut missing = 0u64;
    let mut duplicates = 0u64;
    let model_keys = model().model_below(&ends);
    for (key, m) in &model_keys {
        for seq in 1..=m.n {
            match produced.get(&(key.clone(), seq)).copied().unwrap_or(0) {
                0 => missing += 1,
                1 => {}
                n => duplicates += u64::from(n) - 1,
            }
        }
    }
    eprintln!(
        "kafka group: output has {} records, {duplicates} duplicates",
        produced.values().map(|&n| u64::from(n)).sum::<u64>()
    );
    assert_eq!(missing, 0, "output records missing");

    // Every partition restored from its archive on a fresh directory, as another machine
    // would: each key holds its records, each applied once.
    let model = model().model_below(&ends);
    for p in 0..PARTITIONS {
        let dir = root.join(format!("check-{p}"));
        let opening = Millpond::builder(&dir)
            .snapshots_url(format!(
                "file://{}/{topic}-{p}",
                root.join("archive").display()
            ))
            .open()
            .unwrap();
        let states = register(opening.store()).unwrap();
        let job = opening.recover().unwrap();
        assert_eq!(job.resume_offset(&topic, p), ends.get(&p).copied());
        for (key, m) in &model {
            let k: usize = key.trim_start_matches("key-").parse().unwrap();
            if k % PARTITIONS as usize != p as usize {
                continue;
            }
            let last = states.last.get(key).unwrap();
            let count = states.count.get(key).unwrap();
            let expect = (m.n > 0).then_some(m.n);
            assert_eq!((last, count), (expect, expect), "{key} in partition {p}");
        }
        job.close().unwrap();
    }
}
