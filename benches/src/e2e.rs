//! The `e2e` benchmark: a whole millpond job (the facade) fed from a real Kafka topic, with its
//! WAL in Pulsar or local segments and its snapshots in S3 or a directory, and a crash in the
//! middle of the stream.
//!
//! 1. **Produce** (setup, timed apart): a topic of `--partitions` partitions gets `--records`
//!    records over `--keys` keys (uniform, or Zipf with `--zipf`), key `k` in partition
//!    `k % partitions`, `--value-bytes` of text-like value each. The number of records of each
//!    key is kept, for the exactly-once check. Then the same records are read by a bare
//!    consumer, as the ceiling the job cannot beat (`kafka_consume_only_records_per_sec`).
//! 2. **Run** (a child process, this binary's hidden `e2e-job`, so that RSS is the job's own):
//!    an instance opens, seeks an rdkafka `BaseConsumer` to its resume offsets, and for every
//!    record updates a value state of its key (count, offset of the last record, the last
//!    value: a read-modify-write), committing the offsets every `--commit-every` records or
//!    `--commit-ms`. The clock runs from the consumer's first poll until the last commit is
//!    durable: `records_per_sec` is Kafka in, state updated, WAL durable.
//! 3. **Kill** (two more children): a fresh instance runs until it has read `--kill-at`
//!    records and is killed with SIGKILL (mid-batch, perhaps mid-snapshot); a new process opens
//!    the same instance and times, from its first line of `main`, the first record processed
//!    after recovery (open over the latest snapshot, WAL replay, consumer seek, first poll
//!    returning a record): `seconds_to_first_record_after_kill`. It then runs to the end of
//!    the topic and checks every key's count against the producer's: each record counted
//!    exactly once across the crash. Every record also checks that its offset is past the
//!    last one its key saw (Flink's per-key sequence check): a record applied twice fails the
//!    run at once. With `--kill-after-snapshot` the kill also waits for the first background
//!    snapshot, so that the restart opens a snapshot and replays only the WAL after it.
//!
//! Prints one JSON line per WAL (two with `--wal both`), a summary on stderr. Docs and
//! figures: docs/benchmarks.md, "End to end".
//!
//! Needs `scripts/services up kafka pulsar s3` (Pulsar only with `--wal pulsar|both`, S3 only
//! with `--snapshots s3`); fails with the command to run when a service is missing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use millpond::state::{BytesCodec, StoreSettings, U64Codec, ValueState, ValueStateDescriptor};
use millpond::wal::pulsar::{wal_topic, PulsarSettings};
use millpond::wal::{CommitDurability, CommitTicket, SourceOffset, WalSettings};
use millpond::{Millpond, Settings};
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use crate::util::{
    child_json, fill_text, histogram, loadavg_1m, parse_bytes, peak_rss_bytes, rss_bytes,
    s3_delete_prefix, Rng,
};

/// What to run when a service is missing.
const SERVICES_HINT: &str =
    "start the services first: eval \"$(scripts/services up kafka pulsar s3)\" \
     (or out=$(scripts/services up kafka pulsar s3) && eval \"$out\")";
/// The state every record updates.
pub(crate) const STATE_NAME: &str = "e2e";
/// Bytes of the state value before the record's value: its count and the last offset.
pub(crate) const VALUE_HEADER_BYTES: usize = 16;
/// The child prints this, then the position, once it has read `--report-at` records.
const REACHED: &str = "REACHED";
/// Limit on one Kafka admin or metadata call.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(15);
/// Progress on stderr at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WalChoice {
    /// Local segment files in the instance's directory (the embedded default).
    Local,
    /// A Pulsar topic per instance (`$PULSAR_URL`).
    Pulsar,
    /// Pulsar, then local, each with its own instances: one JSON line each.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WalKind {
    Local,
    Pulsar,
}

impl WalKind {
    fn name(self) -> &'static str {
        match self {
            WalKind::Local => "local",
            WalKind::Pulsar => "pulsar",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotStore {
    /// `file://` in the work directory, outside the instance's directory.
    File,
    /// `s3://$S3_BUCKET/e2e-<run>/…`, with the environment of `scripts/services up s3`.
    S3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// `commit` returns once durable (millpond's default); its latency is the call's.
    Wait,
    /// `commit` returns a ticket at once; a second thread waits on each and times it.
    Async,
}

#[derive(Args, Debug)]
pub struct E2eArgs {
    /// Records produced to the topic, then consumed by the job.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) records: u64,
    /// Distinct keys (u64, 8 bytes big-endian in Kafka).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) keys: u64,
    /// Zipf exponent of key choice; 0 = uniform.
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// Bytes of each record's value (text-like, so that compression finds what real records
    /// give it).
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    pub(crate) partitions: i32,
    /// Where the WAL goes.
    #[arg(long, value_enum, default_value = "pulsar")]
    wal: WalChoice,
    /// Where snapshots go.
    #[arg(long, value_enum, default_value = "s3")]
    snapshots: SnapshotStore,
    /// Memory budget of the instance's state.
    #[arg(long, value_parser = parse_bytes, default_value = "1G")]
    pub(crate) memory_budget: u64,
    /// Seconds between background snapshots (0: none; the restart then replays the whole WAL).
    /// The WAL tail a restart replays is what the job wrote since the last snapshot.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) snapshot_interval_s: f64,
    /// Threads that apply the WAL's changes at recovery (0: the facade's default, the
    /// machine's parallelism).
    #[arg(long, default_value_t = 0)]
    replay_threads: usize,
    /// A commit after this many records.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) commit_every: u64,
    /// … or after this many milliseconds with records since the last commit (0: off).
    #[arg(long, default_value_t = 1000)]
    pub(crate) commit_ms: u64,
    /// Whether `commit` waits for durability.
    #[arg(long, value_enum, default_value = "wait")]
    commit_durability: Durability,
    /// Records the job reads before it is killed with SIGKILL (default: half the topic plus
    /// half a commit interval, so that the kill lands between two commits; 0 skips the kill
    /// and restart).
    #[arg(long)]
    kill_at: Option<u64>,
    /// Kill only once the job has also completed a background snapshot (and read `--kill-at`
    /// records): the restart then opens that snapshot and replays the WAL after it, as in a
    /// job that has run for a while. Without it, a kill before the first snapshot replays the
    /// whole WAL.
    #[arg(long)]
    kill_after_snapshot: bool,
    /// Restart after the kill in a new, empty directory, as a replacement machine would:
    /// everything comes from the snapshot archive and the WAL (not with `--wal local`).
    #[arg(long)]
    fresh_dir_on_restart: bool,
    /// Skip the uninterrupted run (measure only the kill and restart).
    #[arg(long)]
    skip_run: bool,
    /// Where the work directory is made (default: the workspace's target/). It is removed at
    /// the end, with the topic, the WAL topics and the S3 prefix, unless --keep.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory, the Kafka topic, the Pulsar topics and the S3 prefix.
    #[arg(long)]
    keep: bool,
    /// librdkafka settings of the job's consumer (and the bare consumer's), `name=value`,
    /// repeatable: e.g. `--consumer-config max.partition.fetch.bytes=8388608`.
    #[arg(long = "consumer-config")]
    consumer_config: Vec<String>,
    /// Run the job as a Kafka consumer group of this many processes (`millpond::kafka`, one
    /// instance per partition; benches/src/group.rs) instead of one process: throughput
    /// against one process, handover times, with kills and graceful leaves. 0: off.
    #[arg(long, default_value_t = 0)]
    pub(crate) group_processes: usize,
    /// Partitions of the topic in group mode (replaces --partitions there).
    #[arg(long, default_value_t = 10)]
    group_partitions: i32,
    /// Kills and graceful leaves (each followed by a restart) during the group run.
    #[arg(long, default_value_t = 10)]
    pub(crate) group_actions: usize,
    /// Mean seconds between two of them.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) group_action_every_s: f64,
    /// The group's session timeout: how long a killed member's partitions wait.
    #[arg(long, default_value_t = 6.0)]
    pub(crate) group_session_timeout_s: f64,
}

/// One job process: opens an instance, consumes the topic to its end (or until killed).
#[derive(Args, Debug)]
pub struct JobArgs {
    #[arg(long)]
    topic: String,
    /// The topic's end offsets, one per partition, comma-separated: the job stops there.
    #[arg(long)]
    end_offsets: String,
    /// The instance's data directory.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, value_enum)]
    wal: WalKind,
    /// The Pulsar WAL topic (with `--wal pulsar`).
    #[arg(long)]
    pulsar_topic: Option<String>,
    #[arg(long)]
    snapshots_url: String,
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: u64,
    #[arg(long)]
    snapshot_interval_s: f64,
    #[arg(long)]
    replay_threads: usize,
    #[arg(long)]
    commit_every: u64,
    #[arg(long)]
    commit_ms: u64,
    #[arg(long, value_enum)]
    commit_durability: Durability,
    /// Print `REACHED <position>` on stdout once this many records of the topic are read.
    #[arg(long)]
    report_at: Option<u64>,
    /// … and a background snapshot has completed.
    #[arg(long)]
    report_after_snapshot: bool,
    /// Note when the position (records of the topic read) reaches this.
    #[arg(long)]
    catch_up_to: Option<u64>,
    /// The expected count of every key (u32 little-endian each): checked at the end.
    #[arg(long)]
    expected: Option<PathBuf>,
    /// librdkafka consumer settings, `name=value`, repeatable.
    #[arg(long = "consumer-config")]
    consumer_config: Vec<String>,
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nanoseconds as milliseconds, to the microsecond.
fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1000.0
}

pub(crate) fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set: {SERVICES_HINT}"))
}

/// Fails unless something listens at `host:port`.
fn reachable(what: &str, host_port: &str) -> Result<(), String> {
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| format!("{what} address {host_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what} address {host_port} resolves to nothing"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map(|_| ())
        .map_err(|e| format!("{what} at {host_port} is not reachable ({e}): {SERVICES_HINT}"))
}

/// `host:port` of a URL like `scheme://host:port/path`.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

// ------------------------------------------------------------------------------- records

/// The value of record `seq`: its number, then words and numbers, `len` bytes.
fn record_value(seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let _ = write!(out, "{{\"seq\":{seq},");
    let mut rng = Rng::new(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    fill_text(&mut rng, len, out);
}

/// The keys of the records, one after the other: uniform, or Zipf-distributed ranks.
struct KeyChooser {
    keys: u64,
    zipf: Option<(Zipf<f64>, rand::rngs::StdRng)>,
    uniform: Rng,
}

impl KeyChooser {
    fn new(keys: u64, zipf: f64) -> Result<KeyChooser, String> {
        let zipf = if zipf > 0.0 {
            Some((
                Zipf::new(keys as f64, zipf).map_err(err)?,
                rand::rngs::StdRng::seed_from_u64(42),
            ))
        } else {
            None
        };
        Ok(KeyChooser {
            keys,
            zipf,
            uniform: Rng::new(0x5eed),
        })
    }

    fn next(&mut self) -> u64 {
        match &mut self.zipf {
            None => self.uniform.below(self.keys),
            // Zipf ranks 1..=n, scattered over the key space so hot keys are not adjacent.
            Some((z, rng)) => {
                let rank = z.sample(rng) as u64 - 1;
                rank.wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.keys
            }
        }
    }
}

// ------------------------------------------------------------------------------- Kafka

pub(crate) fn kafka_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

/// Creates `topic`; fails loudly if Kafka does not answer.
fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(brokers)
        .create()
        .map_err(|e| format!("Kafka admin client for {brokers}: {e}"))?;
    let opts = AdminOptions::new()
        .request_timeout(Some(KAFKA_TIMEOUT))
        .operation_timeout(Some(KAFKA_TIMEOUT));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics([&new], &opts))
        .map_err(|e| format!("Kafka at {brokers} did not create {topic} ({e}): {SERVICES_HINT}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("creating Kafka topic {t}: {code}")),
        }
    }
    Ok(())
}

fn delete_topic(brokers: &str, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(brokers).create().map_err(err)?;
    let opts = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
    for r in futures::executor::block_on(admin.delete_topics(&[topic], &opts)).map_err(err)? {
        r.map_err(|(t, code)| format!("deleting {t}: {code}"))?;
    }
    Ok(())
}

/// Counts failed deliveries.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

struct Produced {
    seconds: f64,
    /// Records of each key.
    counts: Vec<u32>,
}

/// Produces `args.records` records as fast as the producer takes them, then waits for every
/// delivery.
fn produce(brokers: &str, topic: &str, args: &E2eArgs) -> Result<Produced, String> {
    let producer: BaseProducer<Deliveries> = kafka_config(brokers)
        .set("linger.ms", "10")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create_with_context(Deliveries::default())
        .map_err(err)?;
    let mut chooser = KeyChooser::new(args.keys, args.zipf)?;
    let mut counts = vec![0u32; args.keys as usize];
    let mut value = Vec::with_capacity(args.value_bytes);
    let t0 = Instant::now();
    let mut last_note = t0;
    for seq in 0..args.records {
        let k = chooser.next();
        counts[k as usize] += 1;
        let key = k.to_be_bytes();
        record_value(seq, args.value_bytes, &mut value);
        let mut record = BaseRecord::to(topic)
            .key(&key[..])
            .payload(&value[..])
            .partition((k % args.partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("producing to {topic}: {e}")),
            }
        }
        if seq % 1024 == 0 {
            producer.poll(Duration::ZERO);
            if last_note.elapsed() >= PROGRESS_EVERY {
                last_note = Instant::now();
                eprintln!(
                    "e2e: produced {seq} records ({:.0}/s)",
                    seq as f64 / t0.elapsed().as_secs_f64()
                );
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| format!("flushing the producer: {e}"))?;
    let seconds = t0.elapsed().as_secs_f64();
    let ctx = producer.context();
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!(
            "{failed} records were not delivered to {topic}: {}",
            ctx.first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default()
        ));
    }
    Ok(Produced { seconds, counts })
}

fn consumer(brokers: &str, extra: &[String]) -> Result<BaseConsumer, String> {
    let mut c = kafka_config(brokers);
    // Offsets come from millpond: the group is never joined and nothing is committed to Kafka.
    c.set("group.id", "millpond-e2e")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        // librdkafka's default (1000 ms) postpones the next fetch by a second whenever the
        // local queue holds more than `queued.min.messages`: a consumer slower than the fetcher
        // then drains the queue and idles for most of that second (143k records/s here,
        // against 477k with 10 ms).
        .set("fetch.queue.backoff.ms", "10");
    for kv in extra {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--consumer-config {kv}: expected name=value"))?;
        c.set(k, v);
    }
    c.create().map_err(err)
}

fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> Result<Vec<i64>, String> {
    let c = consumer(brokers, &[])?;
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                .map(|(_, high)| high)
                .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))
        })
        .collect()
}

/// Reads every record of the topic with a bare consumer: what Kafka alone delivers.
fn consume_only(brokers: &str, topic: &str, ends: &[i64], extra: &[String]) -> Result<f64, String> {
    let c = consumer(brokers, extra)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..ends.len() {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .map_err(err)?;
    }
    c.assign(&tpl).map_err(err)?;
    let total: i64 = ends.iter().sum();
    let mut n = 0i64;
    let mut bytes = 0usize;
    let t0 = Instant::now();
    while n < total {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                bytes += m.payload().map_or(0, |p| p.len());
                n += 1;
            }
            Some(Err(e)) => return Err(format!("consuming {topic}: {e}")),
            None => {
                return Err(format!(
                    "consuming {topic}: nothing for 10 s at {n} of {total}"
                ))
            }
        }
    }
    std::hint::black_box(bytes);
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

// ------------------------------------------------------------------------------- the job

/// Per key: `[count u64 LE][offset of the last record i64 LE][the last record's value]`.
pub(crate) type KeyState = ValueState<u64, Vec<u8>>;

pub(crate) fn header(v: &[u8]) -> (u64, i64) {
    (
        u64::from_le_bytes(v[0..8].try_into().expect("8 bytes")),
        i64::from_le_bytes(v[8..16].try_into().expect("8 bytes")),
    )
}

/// Times commits: in the job's thread (`wait`), or in a thread that waits on each ticket.
enum Committer {
    Wait(Histogram<u64>),
    Async {
        tickets: Option<crossbeam_channel::Sender<(Instant, CommitTicket)>>,
        waiter: std::thread::JoinHandle<Result<Histogram<u64>, String>>,
    },
}

impl Committer {
    fn new(durability: Durability) -> Committer {
        match durability {
            Durability::Wait => Committer::Wait(histogram()),
            Durability::Async => {
                let (tx, rx) = crossbeam_channel::bounded::<(Instant, CommitTicket)>(1024);
                let waiter = std::thread::spawn(move || {
                    let mut h = histogram();
                    for (t, ticket) in rx {
                        ticket.wait().map_err(err)?;
                        h.record((t.elapsed().as_nanos() as u64).max(1))
                            .expect("in range");
                    }
                    Ok(h)
                });
                Committer::Async {
                    tickets: Some(tx),
                    waiter,
                }
            }
        }
    }

    fn commit(&mut self, job: &Millpond, offsets: &[SourceOffset]) -> Result<(), String> {
        let t = Instant::now();
        let ticket = job.commit(offsets).map_err(err)?;
        match self {
            Committer::Wait(h) => {
                h.record((t.elapsed().as_nanos() as u64).max(1))
                    .expect("in range");
            }
            Committer::Async { tickets, .. } => {
                tickets
                    .as_ref()
                    .expect("open until finish")
                    .send((t, ticket))
                    .map_err(|_| "the commit waiter stopped".to_string())?;
            }
        }
        Ok(())
    }

    /// Waits until every commit is durable; the latencies.
    fn finish(self) -> Result<Histogram<u64>, String> {
        match self {
            Committer::Wait(h) => Ok(h),
            Committer::Async {
                mut tickets,
                waiter,
            } => {
                drop(tickets.take());
                waiter
                    .join()
                    .unwrap_or_else(|_| Err("the commit waiter panicked".into()))
            }
        }
    }
}

/// The job process. `started` is taken first thing in `main`.
pub fn run_job(args: JobArgs, started: Instant) -> Result<String, String> {
    let brokers = env("KAFKA_BROKERS")?;
    let ends: Vec<i64> = args
        .end_offsets
        .split(',')
        .map(|s| s.parse::<i64>().map_err(err))
        .collect::<Result<_, _>>()?;
    let total: i64 = ends.iter().sum();
    let interval =
        (args.snapshot_interval_s > 0.0).then(|| Duration::from_secs_f64(args.snapshot_interval_s));
    let settings = Settings {
        store: StoreSettings {
            memory_budget_bytes: args.memory_budget as usize,
            ..StoreSettings::default()
        },
        wal: WalSettings {
            commit_durability: match args.commit_durability {
                Durability::Wait => CommitDurability::Wait,
                Durability::Async => CommitDurability::Async,
            },
            ..WalSettings::default()
        },
        // Time alone, as before the volume triggers: runs stay comparable with the
        // figures in docs/benchmarks.md.
        snapshot_after_changes: u64::MAX,
        snapshot_after_wal_bytes: u64::MAX,
        snapshot_interval_max: interval,
        snapshot_interval_min: interval
            .map_or(Duration::from_secs(1), |i| i.min(Duration::from_secs(1))),
        replay_threads: match args.replay_threads {
            0 => Settings::default().replay_threads,
            n => n,
        },
        ..Settings::default()
    };
    let mut builder = Millpond::builder(&args.dir)
        .settings(settings)
        .snapshots_url(&args.snapshots_url);
    if args.wal == WalKind::Pulsar {
        let topic = args
            .pulsar_topic
            .clone()
            .ok_or("--wal pulsar needs --pulsar-topic")?;
        builder = builder.pulsar_wal(PulsarSettings::for_topic(env("PULSAR_URL")?, topic));
    }
    let opening = builder.open().map_err(err)?;
    let opened = started.elapsed().as_secs_f64();
    // The snapshot opened (the claim manifest names its files and LSN; `Recovery` reports the
    // claim's own sequence number).
    let snapshot_files = opening.snapshot().files().count();
    let snapshot_lsn = opening.snapshot().lsn;
    let state: KeyState = opening
        .store()
        .value_state(ValueStateDescriptor::new(STATE_NAME, U64Codec, BytesCodec))
        .map_err(err)?;
    let job = opening.recover().map_err(err)?;
    let recovered = started.elapsed().as_secs_f64();
    let recovery = job.recovery().clone();

    // The consumer's positions are millpond's: seek each partition to its resume offset.
    let consumer = consumer(&brokers, &args.consumer_config)?;
    let mut next: Vec<i64> = (0..ends.len())
        .map(|p| job.resume_offset(&args.topic, p as i32).unwrap_or(0))
        .collect();
    let resumed_at: i64 = next.iter().sum();
    let mut tpl = TopicPartitionList::new();
    for (p, &offset) in next.iter().enumerate() {
        tpl.add_partition_offset(&args.topic, p as i32, Offset::Offset(offset))
            .map_err(err)?;
    }
    consumer.assign(&tpl).map_err(err)?;
    let seeked = started.elapsed().as_secs_f64();
    eprintln!(
        "e2e-job: opened in {opened:.2} s (a snapshot of {snapshot_files} files at LSN \
         {snapshot_lsn}), recovered in {recovered:.2} s ({} changes replayed, {} discarded); \
         resuming at {resumed_at} of {total} records",
        recovery.replayed, recovery.discarded
    );

    let offsets = |next: &[i64]| -> Vec<SourceOffset> {
        next.iter()
            .enumerate()
            .map(|(p, &o)| SourceOffset {
                topic: args.topic.clone(),
                partition: p as i32,
                next_offset: o,
            })
            .collect()
    };
    let mut committer = Committer::new(args.commit_durability);
    let commit_every_ms = Duration::from_millis(args.commit_ms);
    let mut processed = 0u64;
    let mut since_commit = 0u64;
    let mut commits = 0u64;
    let mut last_commit = Instant::now();
    let mut first_record: Option<f64> = None;
    let mut caught_up: Option<f64> = None;
    let mut reported = false;
    let mut position = resumed_at;
    let mut last_note = Instant::now();
    let t0 = Instant::now();
    while position < total {
        let got_record = match consumer.poll(Duration::from_millis(100)) {
            None => false,
            Some(Err(e)) => return Err(format!("consuming {}: {e}", args.topic)),
            Some(Ok(msg)) => {
                let p = msg.partition() as usize;
                let offset = msg.offset();
                let key = msg
                    .key()
                    .and_then(|k| <[u8; 8]>::try_from(k).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| format!("record {p}/{offset} has no 8-byte key"))?;
                let payload = msg.payload().unwrap_or_default();
                let mut twice = None;
                state
                    .update_with(&key, |old| {
                        let mut v = old.unwrap_or_else(|| vec![0; VALUE_HEADER_BYTES]);
                        let (count, last) = header(&v);
                        if count > 0 && offset <= last {
                            twice = Some(last);
                            return Some(v);
                        }
                        v.truncate(VALUE_HEADER_BYTES);
                        v[0..8].copy_from_slice(&(count + 1).to_le_bytes());
                        v[8..16].copy_from_slice(&offset.to_le_bytes());
                        v.extend_from_slice(payload);
                        Some(v)
                    })
                    .map_err(err)?;
                if let Some(last) = twice {
                    return Err(format!(
                        "key {key}: record {p}/{offset} came after offset {last} was counted: a \
                         record counted twice"
                    ));
                }
                next[p] = offset + 1;
                position += 1;
                processed += 1;
                since_commit += 1;
                if first_record.is_none() {
                    first_record = Some(started.elapsed().as_secs_f64());
                }
                true
            }
        };
        // The clock is read every 64 records (or when idle), not for each one.
        let check_clock = !got_record || processed.is_multiple_of(64);
        if since_commit > 0
            && (since_commit >= args.commit_every
                || (check_clock && args.commit_ms > 0 && last_commit.elapsed() >= commit_every_ms))
        {
            committer.commit(&job, &offsets(&next))?;
            commits += 1;
            since_commit = 0;
            last_commit = Instant::now();
        }
        if let Some(at) = args.report_at {
            if !reported
                && position >= at as i64
                && (!args.report_after_snapshot || (check_clock && job.last_snapshot().is_some()))
            {
                reported = true;
                let entries = job.store().stats().hot_entries;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{REACHED} {position} {entries}");
                let _ = out.flush();
            }
        }
        if let Some(to) = args.catch_up_to {
            if caught_up.is_none() && position >= to as i64 {
                caught_up = Some(started.elapsed().as_secs_f64());
            }
        }
        if check_clock && last_note.elapsed() >= PROGRESS_EVERY {
            last_note = Instant::now();
            eprintln!(
                "e2e-job: {position} of {total} records ({:.0}/s)",
                processed as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    committer.commit(&job, &offsets(&next))?;
    commits += 1;
    let commit_hist = committer.finish()?;
    let seconds = t0.elapsed().as_secs_f64();
    let ended = started.elapsed().as_secs_f64();
    let rss = rss_bytes();
    let (store_stats, wal_stats) = job.stats();

    // Every key's count against the producer's: each record counted once.
    let t_verify = Instant::now();
    let mut counted = 0u64;
    let mut keys_present = 0u64;
    let mut expected_checked = false;
    if let Some(path) = &args.expected {
        let expected: Vec<u32> = std::fs::read(path)
            .map_err(err)?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        for (k, &want) in expected.iter().enumerate() {
            let got = state
                .get(&(k as u64))
                .map_err(err)?
                .map_or(0, |v| header(&v).0);
            if got != want as u64 {
                return Err(format!(
                    "key {k}: counted {got} records, the topic holds {want}: not exactly once"
                ));
            }
            counted += got;
            keys_present += u64::from(got > 0);
        }
        if counted != total as u64 {
            return Err(format!(
                "counted {counted} records, the topic holds {total}"
            ));
        }
        expected_checked = true;
    }
    let verify_seconds = t_verify.elapsed().as_secs_f64();
    let last_snapshot = job.last_snapshot();
    let t_close = Instant::now();
    drop(state);
    job.close().map_err(err)?;
    let close_seconds = t_close.elapsed().as_secs_f64();

    let h = &commit_hist;
    Ok(json!({
        "records": processed,
        "records_per_sec": (processed as f64 / seconds).round(),
        "seconds": round3(seconds),
        "commits": commits,
        "commit_p50_ms": ms(h.value_at_quantile(0.5)),
        "commit_p99_ms": ms(h.value_at_quantile(0.99)),
        "commit_p999_ms": ms(h.value_at_quantile(0.999)),
        "commit_max_ms": ms(h.max()),
        "open_seconds": round3(opened),
        "recovered_seconds": round3(recovered),
        "seeked_seconds": round3(seeked),
        "seconds_to_first_record": first_record.map(round3),
        "seconds_to_catch_up": caught_up.map(round3),
        "seconds_to_end": round3(ended),
        "resumed_at": resumed_at,
        "snapshot_files": snapshot_files,
        "snapshot_lsn": snapshot_lsn,
        "replayed_changes": recovery.replayed,
        "discarded_changes": recovery.discarded,
        "replay_seconds": round3(recovered - opened),
        "rss_bytes": rss,
        "peak_rss_bytes": peak_rss_bytes(),
        "state_entries": store_stats.hot_entries + store_stats.pending_entries,
        "state_hot_bytes": store_stats.hot_bytes,
        "evictions": store_stats.evictions,
        "wal_bytes": wal_stats.bytes_written,
        "wal_batches": wal_stats.batches_written,
        "last_snapshot_sequence": last_snapshot.as_ref().map(|s| s.manifest.sequence),
        "last_snapshot_seconds": last_snapshot.as_ref().map(|s| round3(s.seconds)),
        "last_snapshot_bytes": last_snapshot.as_ref().map(|s| s.bytes_written),
        "exactly_once_checked": expected_checked,
        "keys_present": keys_present,
        "verify_seconds": round3(verify_seconds),
        "close_seconds": round3(close_seconds),
    })
    .to_string())
}

// ------------------------------------------------------------------------------- the parent

/// Where one instance lives.
struct Instance {
    dir: PathBuf,
    wal: WalKind,
    pulsar_topic: Option<String>,
    snapshots_url: String,
}

struct Setup<'a> {
    args: &'a E2eArgs,
    topic: String,
    ends: Vec<i64>,
    expected: PathBuf,
}

impl Setup<'_> {
    fn command(&self, instance: &Instance, dir: &Path) -> Result<Command, String> {
        let a = self.args;
        let mut c = Command::new(std::env::current_exe().map_err(err)?);
        c.arg("e2e-job")
            .args(["--topic", &self.topic])
            .arg("--end-offsets")
            .arg(
                self.ends
                    .iter()
                    .map(|o| o.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--dir")
            .arg(dir)
            .args(["--wal", instance.wal.name()])
            .args(["--snapshots-url", &instance.snapshots_url])
            .args(["--memory-budget", &a.memory_budget.to_string()])
            .args(["--snapshot-interval-s", &a.snapshot_interval_s.to_string()])
            .args(["--replay-threads", &a.replay_threads.to_string()])
            .args(["--commit-every", &a.commit_every.to_string()])
            .args(["--commit-ms", &a.commit_ms.to_string()])
            .args([
                "--commit-durability",
                match a.commit_durability {
                    Durability::Wait => "wait",
                    Durability::Async => "async",
                },
            ])
            .stderr(Stdio::inherit());
        if let Some(t) = &instance.pulsar_topic {
            c.args(["--pulsar-topic", t]);
        }
        for kv in &a.consumer_config {
            c.args(["--consumer-config", kv]);
        }
        Ok(c)
    }
}

/// The uninterrupted run: a fresh instance, the whole topic.
fn run_through(setup: &Setup<'_>, instance: &Instance) -> Result<Map<String, Value>, String> {
    let out = setup
        .command(instance, &instance.dir)?
        .arg("--expected")
        .arg(&setup.expected)
        .stdout(Stdio::piped())
        .output()
        .map_err(err)?;
    child_json("job", &out)
}

/// What the kill phase did.
enum Killed {
    /// Killed, then restarted and run to the end: the restarted process's figures.
    Restarted(Map<String, Value>),
    /// The job reached the end of the topic before the kill condition (no snapshot yet).
    NotKilled(String),
}

/// The kill: a fresh instance killed at `kill_at` records, then a new process over the same
/// instance, to the end.
fn kill_and_restart(
    setup: &Setup<'_>,
    instance: &Instance,
    kill_at: u64,
    restart_dir: &Path,
) -> Result<Killed, String> {
    let mut command = setup.command(instance, &instance.dir)?;
    command.args(["--report-at", &kill_at.to_string()]);
    if setup.args.kill_after_snapshot {
        command.arg("--report-after-snapshot");
    }
    let mut child = command.stdout(Stdio::piped()).spawn().map_err(err)?;
    let stdout = child.stdout.take().ok_or("no stdout of the job")?;
    let mut lines = BufReader::new(stdout).lines();
    let reached = loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with(REACHED) => break l,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(err(e)),
            None => {
                let status = child.wait().map_err(err)?;
                if !status.success() {
                    return Err(format!("the job to be killed failed: {status}"));
                }
                let snapshot = if setup.args.kill_after_snapshot {
                    " and a completed snapshot"
                } else {
                    ""
                };
                return Ok(Killed::NotKilled(format!(
                    "the job reached the end of the topic before {kill_at} records{snapshot}"
                )));
            }
        }
    };
    // SIGKILL: no close, no flush, no last commit.
    child.kill().map_err(err)?;
    let status = child.wait().map_err(err)?;
    let mut fields = reached.split_whitespace().skip(1);
    let position: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let entries: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    eprintln!("e2e: killed the job at {position} records ({entries} keys in state): {status}");

    let t = Instant::now();
    let out = setup
        .command(instance, restart_dir)?
        .args(["--catch-up-to", &position.to_string()])
        .arg("--expected")
        .arg(&setup.expected)
        .stdout(Stdio::piped())
        .output()
        .map_err(err)?;
    let wall = t.elapsed().as_secs_f64();
    let mut m = child_json("restarted job", &out)?;
    m.insert("killed_at_records".into(), json!(position));
    m.insert("killed_state_entries".into(), json!(entries));
    m.insert("restart_wall_seconds".into(), json!(round3(wall)));
    Ok(Killed::Restarted(m))
}

/// Deletes a Pulsar topic through the admin REST API (best effort: the WAL topics of finished
/// runs would otherwise keep their data in the bookie).
fn delete_pulsar_topic(admin_url: &str, topic: &str) -> Result<(), String> {
    let path = topic
        .strip_prefix("persistent://")
        .ok_or("not a persistent topic")?;
    let hp = host_port(admin_url);
    let mut s = TcpStream::connect(hp).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(err)?;
    write!(
        s,
        "DELETE /admin/v2/persistent/{path}?force=true HTTP/1.1\r\nHost: {hp}\r\n\
         Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(err)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(err)?;
    let status = reply.lines().next().unwrap_or_default();
    if status.contains(" 204") || status.contains(" 200") || status.contains(" 404") {
        Ok(())
    } else {
        Err(status.to_string())
    }
}

pub fn run(mut args: E2eArgs) -> Result<String, String> {
    if args.group_processes > 0 {
        // One instance per partition: the local WAL, whatever --wal says.
        args.partitions = args.group_partitions;
        args.wal = WalChoice::Local;
    }
    if args.records == 0 || args.keys == 0 || args.partitions <= 0 {
        return Err("--records, --keys and --partitions must be positive".into());
    }
    if args.keys > u32::MAX as u64 || args.records > u32::MAX as u64 {
        return Err("--keys and --records are limited to 2^32".into());
    }
    let kill_at = args
        .kill_at
        .unwrap_or(args.records / 2 + (args.commit_every / 2).min(args.records / 4));
    if kill_at >= args.records {
        return Err("--kill-at must be below --records".into());
    }
    let wals: Vec<WalKind> = match args.wal {
        WalChoice::Local => vec![WalKind::Local],
        WalChoice::Pulsar => vec![WalKind::Pulsar],
        WalChoice::Both => vec![WalKind::Pulsar, WalKind::Local],
    };
    if args.fresh_dir_on_restart && wals.contains(&WalKind::Local) {
        return Err(
            "--fresh-dir-on-restart needs --wal pulsar: a local WAL lives in the \
                    instance's directory"
                .into(),
        );
    }

    // The services, before anything is set up.
    let brokers = env("KAFKA_BROKERS")?;
    reachable("Kafka", brokers.split(',').next().unwrap_or(&brokers))?;
    if wals.contains(&WalKind::Pulsar) {
        let url = env("PULSAR_URL")?;
        reachable("Pulsar", host_port(&url))?;
    }
    let bucket = match args.snapshots {
        SnapshotStore::File => None,
        SnapshotStore::S3 => {
            let endpoint = env("S3_ENDPOINT")?;
            reachable("S3", host_port(&endpoint))?;
            Some(env("S3_BUCKET")?)
        }
    };

    let run_id = format!(
        "{}-{:06x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(err)?
            .as_secs(),
        rand::random::<u32>() & 0xff_ffff
    );
    let parent = match &args.dir {
        Some(d) => d.clone(),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
    };
    std::fs::create_dir_all(&parent).map_err(err)?;
    let work = tempfile::Builder::new()
        .prefix("e2e-")
        .tempdir_in(&parent)
        .map_err(err)?;
    let root = work.path().canonicalize().map_err(err)?;
    let topic = format!("millpond-e2e-{run_id}");
    let mut pulsar_topics = Vec::new();
    let result = measure(
        &args,
        &brokers,
        &topic,
        &run_id,
        &root,
        bucket.as_deref(),
        &wals,
        kill_at,
        &mut pulsar_topics,
    );
    if !args.keep {
        if let Err(e) = delete_topic(&brokers, &topic) {
            eprintln!("e2e: could not delete the Kafka topic {topic}: {e}");
        }
        if !pulsar_topics.is_empty() {
            let admin =
                std::env::var("PULSAR_ADMIN_URL").unwrap_or("http://127.0.0.1:18080".into());
            for t in &pulsar_topics {
                if let Err(e) = delete_pulsar_topic(&admin, t) {
                    eprintln!("e2e: could not delete the Pulsar topic {t}: {e}");
                }
            }
        }
        if let Some(bucket) = &bucket {
            let prefix = format!("e2e-{run_id}");
            match s3_delete_prefix(bucket, &prefix) {
                Ok(n) => eprintln!("e2e: deleted {n} objects under s3://{bucket}/{prefix}"),
                Err(e) => eprintln!("e2e: could not delete s3://{bucket}/{prefix}: {e}"),
            }
        }
    } else {
        eprintln!(
            "e2e: kept {}, Kafka topic {topic}, Pulsar topics {pulsar_topics:?}",
            work.keep().display()
        );
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn measure(
    args: &E2eArgs,
    brokers: &str,
    topic: &str,
    run_id: &str,
    root: &Path,
    bucket: Option<&str>,
    wals: &[WalKind],
    kill_at: u64,
    pulsar_topics: &mut Vec<String>,
) -> Result<String, String> {
    let loadavg_at_start = loadavg_1m();
    // 1. Produce.
    create_topic(brokers, topic, args.partitions)?;
    eprintln!(
        "e2e: producing {} records over {} keys to {topic} ({} partitions)",
        args.records, args.keys, args.partitions
    );
    let produced = produce(brokers, topic, args)?;
    let ends = end_offsets(brokers, topic, args.partitions)?;
    let total: i64 = ends.iter().sum();
    if total != args.records as i64 {
        return Err(format!(
            "the topic holds {total} records, {} were produced",
            args.records
        ));
    }
    let expected = root.join("expected-counts.bin");
    let bytes: Vec<u8> = produced
        .counts
        .iter()
        .flat_map(|c| c.to_le_bytes())
        .collect();
    std::fs::write(&expected, bytes).map_err(err)?;
    let keys_used = produced.counts.iter().filter(|&&c| c > 0).count();
    drop(produced.counts);
    eprintln!(
        "e2e: produced in {:.1} s ({:.0} records/s); {keys_used} keys used; reading it back \
         with a bare consumer",
        produced.seconds,
        args.records as f64 / produced.seconds
    );
    let consume_only = consume_only(brokers, topic, &ends, &args.consumer_config)?;
    eprintln!("e2e: bare consumer: {consume_only:.0} records/s");
    if args.group_processes > 0 {
        let counts = std::fs::read(&expected)
            .map_err(err)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect::<Vec<_>>();
        let mut line: Value = serde_json::from_str(&crate::group::measure(
            args,
            brokers,
            topic,
            run_id,
            root,
            bucket,
            &counts,
            consume_only,
        )?)
        .map_err(err)?;
        let out = line.as_object_mut().expect("an object");
        out.insert("loadavg_1m_at_start".into(), json!(loadavg_at_start));
        out.insert("loadavg_1m_at_end".into(), json!(loadavg_1m()));
        return Ok(line.to_string());
    }
    let setup = Setup {
        args,
        topic: topic.to_string(),
        ends,
        expected,
    };

    let mut lines = Vec::new();
    for &wal in wals {
        let instance = |phase: &str| -> Instance {
            let name = format!("{}-{phase}", wal.name());
            let pulsar_topic = (wal == WalKind::Pulsar)
                .then(|| wal_topic("public", "default", "e2e", &format!("{run_id}-{phase}")));
            Instance {
                dir: root.join(&name).join("instance"),
                wal,
                pulsar_topic,
                snapshots_url: match bucket {
                    Some(b) => format!("s3://{b}/e2e-{run_id}/{name}"),
                    None => format!("file://{}", root.join(&name).join("archive").display()),
                },
            }
        };
        let mut line = json!({
            "bench": "e2e",
            "wal": wal.name(),
            "snapshots": format!("{:?}", args.snapshots).to_lowercase(),
            "records": args.records,
            "keys": args.keys,
            "keys_used": keys_used,
            "zipf": args.zipf,
            "value_bytes": args.value_bytes,
            "partitions": args.partitions,
            "memory_budget_bytes": args.memory_budget,
            "snapshot_interval_s": args.snapshot_interval_s,
            "replay_threads": args.replay_threads,
            "commit_every": args.commit_every,
            "commit_ms": args.commit_ms,
            "commit_durability": format!("{:?}", args.commit_durability).to_lowercase(),
            "produce_seconds": round3(produced.seconds),
            "produce_records_per_sec": (args.records as f64 / produced.seconds).round(),
            "kafka_consume_only_records_per_sec": consume_only.round(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "loadavg_1m_at_start": loadavg_at_start,
        });
        let out = line.as_object_mut().expect("an object");

        // 2. The uninterrupted run.
        if !args.skip_run {
            let inst = instance("run");
            pulsar_topics.extend(inst.pulsar_topic.clone());
            eprintln!("e2e: [{}] the job reads the whole topic", wal.name());
            let m = run_through(&setup, &inst)?;
            for k in [
                "records_per_sec",
                "seconds",
                "commits",
                "commit_p50_ms",
                "commit_p99_ms",
                "commit_p999_ms",
                "commit_max_ms",
                "rss_bytes",
                "peak_rss_bytes",
                "state_entries",
                "state_hot_bytes",
                "wal_bytes",
                "last_snapshot_sequence",
                "last_snapshot_seconds",
                "last_snapshot_bytes",
                "exactly_once_checked",
                "open_seconds",
                "close_seconds",
            ] {
                out.insert(k.into(), m.get(k).cloned().unwrap_or(Value::Null));
            }
            out.insert(
                "vs_consume_only".into(),
                json!(round3(
                    m["records_per_sec"].as_f64().unwrap_or(0.0) / consume_only
                )),
            );
            eprintln!(
                "e2e: [{}] {} records/s end to end (bare consumer {consume_only:.0}), commit \
                 p50 {} ms p99 {} ms max {} ms, RSS {} MB",
                wal.name(),
                m["records_per_sec"],
                m["commit_p50_ms"],
                m["commit_p99_ms"],
                m["commit_max_ms"],
                m["rss_bytes"].as_u64().unwrap_or(0) >> 20
            );
        }

        // 3. Kill and restart.
        if kill_at > 0 {
            let inst = instance("kill");
            pulsar_topics.extend(inst.pulsar_topic.clone());
            let restart_dir = if args.fresh_dir_on_restart {
                root.join(format!("{}-kill", wal.name())).join("restarted")
            } else {
                inst.dir.clone()
            };
            eprintln!(
                "e2e: [{}] a job killed with SIGKILL at {kill_at} records, then restarted",
                wal.name()
            );
            let m = match kill_and_restart(&setup, &inst, kill_at, &restart_dir)? {
                Killed::Restarted(m) => m,
                Killed::NotKilled(reason) => {
                    eprintln!("e2e: [{}] not killed: {reason}", wal.name());
                    out.insert("kill_skipped".into(), json!(reason));
                    out.insert("loadavg_1m_at_end".into(), json!(loadavg_1m()));
                    lines.push(line.to_string());
                    continue;
                }
            };
            let g = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
            let killed_at = m["killed_at_records"].as_u64().unwrap_or(0);
            let resumed_at = m["resumed_at"].as_u64().unwrap_or(0);
            for (to, from) in [
                ("kill_at_records", json!(kill_at)),
                ("killed_at_records", g("killed_at_records")),
                ("killed_state_entries", g("killed_state_entries")),
                (
                    "seconds_to_first_record_after_kill",
                    g("seconds_to_first_record"),
                ),
                ("restart_open_seconds", g("open_seconds")),
                ("restart_replay_seconds", g("replay_seconds")),
                ("restart_snapshot_files", g("snapshot_files")),
                ("restart_snapshot_lsn", g("snapshot_lsn")),
                ("restart_replayed_changes", g("replayed_changes")),
                ("restart_discarded_changes", g("discarded_changes")),
                ("restart_resumed_at", g("resumed_at")),
                (
                    "records_read_again",
                    json!(killed_at.saturating_sub(resumed_at)),
                ),
                ("seconds_to_catch_up_after_kill", g("seconds_to_catch_up")),
                ("seconds_to_end_after_kill", g("seconds_to_end")),
                ("restart_records_per_sec", g("records_per_sec")),
                ("restart_rss_bytes", g("rss_bytes")),
                ("restart_fresh_dir", json!(args.fresh_dir_on_restart)),
                ("kill_after_snapshot", json!(args.kill_after_snapshot)),
                ("exactly_once_after_kill", g("exactly_once_checked")),
            ] {
                out.insert(to.into(), from);
            }
            eprintln!(
                "e2e: [{}] killed at {killed_at} records; the new process had its first record \
                 after {} s (open {} s over a snapshot of {} files, replay {} s of {} changes), \
                 caught up in {} s, every key counted exactly once",
                wal.name(),
                m["seconds_to_first_record"],
                m["open_seconds"],
                m["snapshot_files"],
                m["replay_seconds"],
                m["replayed_changes"],
                m["seconds_to_catch_up"],
            );
        }
        out.insert("loadavg_1m_at_end".into(), json!(loadavg_1m()));
        lines.push(line.to_string());
    }
    Ok(lines.join("\n"))
}
