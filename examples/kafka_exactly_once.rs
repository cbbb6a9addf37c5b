//! A Kafka stream job with exactly-once keyed state, on the real services: purchases are read
//! from a Kafka topic, a count and a total per user are kept in millpond, every change is
//! logged to a Pulsar WAL and committed together with the Kafka offsets it reflects, and
//! snapshots go to S3.
//!
//! 1. Creates a topic (unique per run) and produces 300,000 purchases to it (`user-NNNNN`
//!    keys, amounts in cents).
//! 2. Runs the job over the whole topic: an rdkafka `BaseConsumer` with no Kafka offset
//!    commits at all (`enable.auto.commit=false`, `enable.auto.offset.store=false`); its
//!    partitions are assigned explicitly and seeked to millpond's resume offsets; every 5,000
//!    records or 200 ms the job commits the offsets with `Millpond::commit`. A snapshot is
//!    written halfway. The job "crashes" 12,345 records after its last commit: those records
//!    were read, counted and written to the WAL, but their offsets were never committed.
//! 3. Reopens the job, in a new empty directory as a replacement machine would (everything
//!    comes from S3 and Pulsar): the state must be exactly what the records before the resume
//!    offsets say, checked against a plain `HashMap` read from the topic by a second consumer.
//! 4. Runs it to the end of the topic: the 12,345 records are read again, and every user's
//!    count and total must equal the topic's: nothing lost, nothing counted twice.
//!
//! The crash here is a drop of the instance without `close()` and without a last commit: its
//! uncommitted changes are discarded by the next recovery, as after a real crash. The `e2e`
//! benchmark (`millpond-bench e2e`) kills a job process with SIGKILL instead.
//!
//! ```sh
//! eval "$(scripts/services up kafka pulsar s3)"
//! cargo run --release --features kafka,pulsar,s3 --example kafka_exactly_once
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use millpond::state::{StoreSettings, StringCodec, U64Codec, ValueState, ValueStateDescriptor};
use millpond::wal::pulsar::{wal_topic, PulsarSettings};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const RECORDS: u64 = 300_000;
const USERS: u64 = 20_000;
const PARTITIONS: i32 = 4;
/// A commit after this many records …
const COMMIT_EVERY: u64 = 5_000;
/// … or this long after the last one.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Records the first run reads after its last commit, before it crashes.
const UNCOMMITTED_TAIL: u64 = 12_345;
const TIMEOUT: Duration = Duration::from_secs(15);

/// What the job keeps per user: purchases and cents spent.
type Totals = HashMap<String, (u64, u64)>;

/// Where everything lives; unique per run, so that every run starts clean.
struct Config {
    brokers: String,
    topic: String,
    pulsar_url: String,
    wal_topic: String,
    snapshots_url: String,
}

impl Config {
    fn from_env() -> Result<Config> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                format!(
                    "{name} is not set. This example needs Kafka, Pulsar and S3: start them with\n\n    \
                     eval \"$(scripts/services up)\"\n\nin this shell (scripts/README.md)"
                )
            })
        };
        let brokers = var("KAFKA_BROKERS")?;
        let pulsar_url = var("PULSAR_URL")?;
        let bucket = var("S3_BUCKET")?;
        // Archive::open reads the endpoint and the credentials from these.
        for name in ["S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            var(name)?;
        }
        let run = format!(
            "{}-{}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
            std::process::id()
        );
        Ok(Config {
            brokers,
            topic: format!("purchases-{run}"),
            pulsar_url,
            wal_topic: wal_topic("public", "default", "kafka-example", &run),
            snapshots_url: format!("s3://{bucket}/kafka-example/{run}"),
        })
    }

    fn kafka(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }
}

/// Runs a future to completion on this thread (rdkafka's admin calls return futures).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

fn create_topic(cfg: &Config) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = cfg.kafka().create()?;
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let topic = NewTopic::new(&cfg.topic, PARTITIONS, TopicReplication::Fixed(1));
    let results = block_on(admin.create_topics([&topic], &opts)).map_err(|e| {
        format!(
            "Kafka at {} did not answer ({e}): is it running? eval \"$(scripts/services up)\"",
            cfg.brokers
        )
    })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("creating topic {t}: {code}").into()),
        }
    }
    Ok(())
}

fn delete_topic(cfg: &Config) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = cfg.kafka().create()?;
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    for r in block_on(admin.delete_topics(&[&cfg.topic], &opts))? {
        r.map_err(|(t, code)| format!("deleting topic {t}: {code}"))?;
    }
    Ok(())
}

/// A consumer whose positions are set by the caller: no group membership, no offsets
/// committed to Kafka (millpond keeps them).
fn consumer(cfg: &Config) -> Result<BaseConsumer> {
    Ok(cfg
        .kafka()
        .set("group.id", "kafka-exactly-once-example")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // librdkafka's default (1 s) stalls a consumer slower than its fetcher: once the local
        // queue is full, the next fetch waits a whole second while the job drains the queue.
        .set("fetch.queue.backoff.ms", "10")
        .create()?)
}

fn end_offsets(cfg: &Config) -> Result<Vec<i64>> {
    let c = consumer(cfg)?;
    (0..PARTITIONS)
        .map(|p| Ok(c.fetch_watermarks(&cfg.topic, p, TIMEOUT)?.1))
        .collect()
}

/// Produces the input if the topic is empty: purchases by 20,000 users, a few of them much
/// more often than the rest; the default partitioner puts each user in one partition.
fn produce(cfg: &Config) -> Result<()> {
    if end_offsets(cfg)?.iter().sum::<i64>() > 0 {
        return Ok(());
    }
    let producer: ThreadedProducer<DefaultProducerContext> = cfg
        .kafka()
        .set("linger.ms", "10")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .create()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..RECORDS {
        let user = if rng.random_bool(0.2) {
            rng.random_range(0..50)
        } else {
            rng.random_range(0..USERS)
        };
        let key = format!("user-{user:05}");
        let cents = rng.random_range(100..20_000u64).to_string();
        let mut record = BaseRecord::to(&cfg.topic).key(&key).payload(&cents);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let produced: i64 = end_offsets(cfg)?.iter().sum();
    if produced != RECORDS as i64 {
        return Err(format!("the topic holds {produced} records after producing {RECORDS}").into());
    }
    Ok(())
}

/// A purchase record: the user, and the amount in cents.
fn purchase(msg: &impl Message) -> Result<(String, u64)> {
    let user = std::str::from_utf8(msg.key().ok_or("a record without a key")?)?.to_owned();
    let cents = std::str::from_utf8(msg.payload().unwrap_or_default())?.parse()?;
    Ok((user, cents))
}

/// The reference: the topic's records below `until` (one offset per partition), summed into a
/// plain map by a consumer of its own.
fn reference(cfg: &Config, until: &[i64]) -> Result<Totals> {
    let c = consumer(cfg)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&cfg.topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut left: i64 = until.iter().sum();
    let mut totals = Totals::new();
    while left > 0 {
        let msg = c.poll(TIMEOUT).ok_or("no record from Kafka for 15 s")??;
        if msg.offset() >= until[msg.partition() as usize] {
            continue;
        }
        let (user, cents) = purchase(&msg)?;
        let t = totals.entry(user).or_default();
        t.0 += 1;
        t.1 += cents;
        left -= 1;
    }
    Ok(totals)
}

/// A running job: the instance, its two states and its consumer.
struct Job {
    instance: Millpond,
    purchases: ValueState<String, u64>,
    cents: ValueState<String, u64>,
    consumer: BaseConsumer,
    /// The next offset to read, per partition.
    next: Vec<i64>,
    /// Files and WAL position of the snapshot the instance was opened over.
    snapshot: (usize, u64),
}

impl Job {
    /// Opens the instance in `dir` (restoring the latest snapshot from S3 and replaying the
    /// Pulsar WAL after it), and seeks a consumer to the offsets the state reflects.
    fn open(cfg: &Config, dir: &Path) -> Result<Job> {
        let settings = Settings {
            store: StoreSettings {
                memory_budget_bytes: 64 << 20,
                ..StoreSettings::default()
            },
            snapshot_interval_max: Some(Duration::from_secs(10)),
            ..Settings::default()
        };
        let opening = Millpond::builder(dir)
            .settings(settings)
            .pulsar_wal(PulsarSettings::for_topic(&cfg.pulsar_url, &cfg.wal_topic))
            .snapshots_url(&cfg.snapshots_url)
            .open()?;
        // Every state the WAL may name must be registered before the replay.
        let purchases = opening.store().value_state(ValueStateDescriptor::new(
            "purchases",
            StringCodec,
            U64Codec,
        ))?;
        let cents = opening.store().value_state(ValueStateDescriptor::new(
            "cents",
            StringCodec,
            U64Codec,
        ))?;
        let snapshot = (opening.snapshot().files().count(), opening.snapshot().lsn);
        let instance = opening.recover()?;

        let consumer = consumer(cfg)?;
        let mut tpl = TopicPartitionList::new();
        let mut next = Vec::new();
        for p in 0..PARTITIONS {
            let offset = instance.resume_offset(&cfg.topic, p);
            next.push(offset.unwrap_or(0));
            let seek = offset.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&cfg.topic, p, seek)?;
        }
        consumer.assign(&tpl)?;
        Ok(Job {
            instance,
            purchases,
            cents,
            consumer,
            next,
            snapshot,
        })
    }

    fn commit(&self, cfg: &Config) -> Result<()> {
        let offsets: Vec<SourceOffset> = (0..PARTITIONS)
            .map(|p| SourceOffset {
                topic: cfg.topic.clone(),
                partition: p,
                next_offset: self.next[p as usize],
            })
            .collect();
        // Returns once the state changes and these offsets are durable in Pulsar, together.
        let _durable = self.instance.commit(&offsets)?;
        Ok(())
    }

    /// Reads up to `ends`. Commits every `COMMIT_EVERY` records or `COMMIT_INTERVAL`, unless
    /// `stop_committing_at` (a total position) is passed; snapshots once at `snapshot_at`.
    /// The records read.
    fn run(
        &mut self,
        cfg: &Config,
        ends: &[i64],
        stop_committing_at: Option<i64>,
        snapshot_at: Option<i64>,
    ) -> Result<u64> {
        let total: i64 = ends.iter().sum();
        let mut position: i64 = self.next.iter().sum();
        let mut read = 0u64;
        let mut since_commit = 0u64;
        let mut last_commit = Instant::now();
        let mut snapshot_at = snapshot_at;
        while position < total {
            // No record within 100 ms: still commit what was read, if it is time.
            if let Some(msg) = self.consumer.poll(Duration::from_millis(100)) {
                let msg = msg?;
                let (user, amount) = purchase(&msg)?;
                self.purchases
                    .update_with(&user, |n| Some(n.unwrap_or(0) + 1))?;
                self.cents
                    .update_with(&user, |c| Some(c.unwrap_or(0) + amount))?;
                self.next[msg.partition() as usize] = msg.offset() + 1;
                position += 1;
                read += 1;
                since_commit += 1;
            }
            let committing = stop_committing_at.is_none_or(|at| position <= at);
            if committing
                && since_commit > 0
                && (since_commit >= COMMIT_EVERY || last_commit.elapsed() >= COMMIT_INTERVAL)
            {
                self.commit(cfg)?;
                since_commit = 0;
                last_commit = Instant::now();
                if snapshot_at.is_some_and(|at| position >= at) {
                    snapshot_at = None;
                    if let Some(r) = self.instance.snapshot_now()? {
                        println!(
                            "  a snapshot written to S3 at {position} records: {} file(s), {} KiB",
                            r.files_written,
                            r.bytes_written >> 10
                        );
                    }
                }
            }
        }
        if stop_committing_at.is_none() {
            self.commit(cfg)?;
        }
        Ok(read)
    }

    /// Every user's state against `expected`: the users it names and all others (never seen).
    fn check(&self, expected: &Totals) -> Result<()> {
        for u in 0..USERS {
            let user = format!("user-{u:05}");
            let want = expected.get(&user).copied();
            let got = match (self.purchases.get(&user)?, self.cents.get(&user)?) {
                (Some(n), Some(c)) => Some((n, c)),
                (None, None) => None,
                other => return Err(format!("{user}: half a state {other:?}").into()),
            };
            if got != want {
                return Err(format!("{user}: the state says {got:?}, the topic {want:?}").into());
            }
        }
        Ok(())
    }

    fn summary(&self) -> Result<Totals> {
        let mut totals = Totals::new();
        for u in 0..USERS {
            let user = format!("user-{u:05}");
            if let (Some(n), Some(c)) = (self.purchases.get(&user)?, self.cents.get(&user)?) {
                totals.insert(user, (n, c));
            }
        }
        Ok(totals)
    }
}

fn print_summary(totals: &Totals) {
    let purchases: u64 = totals.values().map(|t| t.0).sum();
    let cents: u64 = totals.values().map(|t| t.1).sum();
    let mut top: Vec<_> = totals.iter().collect();
    top.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(b.0)));
    println!(
        "  state: {} users, {purchases} purchases, {}.{:02} spent",
        totals.len(),
        cents / 100,
        cents % 100
    );
    for (user, (n, c)) in top.iter().take(3) {
        println!("    {user}: {n} purchases, {}.{:02}", c / 100, c % 100);
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("kafka_exactly_once: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cfg = Config::from_env()?;
    let started = Instant::now();
    println!(
        "topic {}, WAL {}, snapshots {}",
        cfg.topic, cfg.wal_topic, cfg.snapshots_url
    );
    create_topic(&cfg)?;
    produce(&cfg)?;
    let ends = end_offsets(&cfg)?;
    let total: i64 = ends.iter().sum();
    println!("produced {total} purchases in {:.1?}", started.elapsed());

    // Run 1: the whole topic; the job dies 12,345 records after its last commit.
    let first_dir = tempfile::tempdir()?;
    let t = Instant::now();
    let mut job = Job::open(&cfg, first_dir.path())?;
    let last_commit_at = total - UNCOMMITTED_TAIL as i64;
    let read = job.run(&cfg, &ends, Some(last_commit_at), Some(total / 2))?;
    println!(
        "run 1: read {read} records to the end of the topic in {:.1?}",
        t.elapsed()
    );
    let before_crash = job.summary()?;
    print_summary(&before_crash);
    if before_crash != reference(&cfg, &ends)? {
        return Err("run 1: the state differs from the topic".into());
    }
    println!(
        "  (matches the topic; the records after the last commit, at least {UNCOMMITTED_TAIL}, \
         are counted but their offsets were never committed)"
    );
    println!("run 1: crash (dropped without close and without a last commit)");
    drop(job);
    drop(first_dir);

    // Run 2: a new, empty directory; the state comes from the S3 snapshot and the Pulsar WAL.
    let second_dir = tempfile::tempdir()?;
    let t = Instant::now();
    let mut job = Job::open(&cfg, second_dir.path())?;
    let opened = t.elapsed();
    let r = job.instance.recovery().clone();
    let resume: Vec<i64> = job.next.clone();
    let resumed_at: i64 = resume.iter().sum();
    let (files, lsn) = job.snapshot;
    println!(
        "run 2: recovered in {opened:.1?} in an empty directory: a snapshot of {files} file(s) \
         (up to WAL LSN {lsn}) from S3, then {} changes replayed from the Pulsar WAL and {} \
         uncommitted ones discarded",
        r.replayed, r.discarded
    );
    println!("  resume offsets {resume:?} ({resumed_at} of {total} records)");
    let at_resume = job.summary()?;
    print_summary(&at_resume);
    job.check(&reference(&cfg, &resume)?)?;
    let counted: u64 = at_resume.values().map(|t| t.0).sum();
    if counted != resumed_at as u64 {
        return Err(
            format!("{counted} purchases counted, {resumed_at} records below the offsets").into(),
        );
    }
    println!(
        "  the state is exactly the records below the resume offsets ({counted} counted, \
         checked user by user)"
    );

    let read_again = job.run(&cfg, &ends, None, None)?;
    let after = job.summary()?;
    job.check(&reference(&cfg, &ends)?)?;
    if after != before_crash {
        return Err("the state after the rerun differs from the state before the crash".into());
    }
    println!(
        "run 2: read {read_again} records again to the end; every user's count and total equal \
         the topic's and the state before the crash"
    );
    job.instance.close()?;
    drop(second_dir);

    println!();
    println!("report:");
    println!("  records in the topic          {total}");
    println!("  read in run 1                 {read}");
    println!("  uncommitted at the crash      {}", total - resumed_at);
    println!("  read again in run 2           {read_again}");
    println!(
        "  counted in the final state    {}",
        after.values().map(|t| t.0).sum::<u64>()
    );
    println!("  lost / counted twice          0 / 0");
    println!(
        "  recovery                      {opened:.1?} ({files} snapshot file(s), {} changes replayed)",
        r.replayed
    );
    println!("  total time                    {:.1?}", started.elapsed());
    delete_topic(&cfg)?;
    println!(
        "deleted the Kafka topic; the WAL topic and the S3 prefix above are left for inspection \
         (scripts/services down removes them)"
    );
    Ok(())
}
