//! Exactly-once in production form: Kafka in, state in millpond, the WAL in Apache Pulsar,
//! snapshots in S3, all real and on loopback (`eval "$(scripts/services up)"`). A producer
//! writes records with per-key sequence numbers into a 4-partition topic; the job (a child
//! process) is killed with SIGKILL at random moments, at least 20 times, and restarted each
//! time. At the end every key holds exactly the records produced, each applied once.
//!
//! Without `KAFKA_BROKERS`, `PULSAR_URL` and `S3_ENDPOINT` the test fails: it never passes
//! without its services.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{GeneratedInput, Input, Record, Soak, CHILD_ENV};
use millpond::wal::pulsar::{wal_topic, PulsarSettings};
use millpond::wal::SourceOffset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const RECORDS: usize = 500_000;
const KEYS: usize = 3_000;

/// The records produced, and the model the checks compare the state with.
fn model() -> GeneratedInput {
    GeneratedInput::new(
        PARTITIONS as usize,
        Soak::from_env().records.unwrap_or(RECORDS),
        KEYS,
    )
}
/// Records per second the child processes at most: the input (62 s of it at this rate) lasts
/// long enough for 20 kills 1.5–4 s apart, with restarts that take well under a second.
const RATE: u64 = 8_000;

fn builder(dir: &std::path::Path, run: &str) -> millpond::Builder {
    let (archive, _) = common::s3_archive(&format!("e2e/{run}"));
    millpond::Millpond::builder(dir)
        .settings(common::job_settings())
        .pulsar_wal(PulsarSettings::for_topic(
            common::env("PULSAR_URL"),
            wal_topic("public", "default", run, "0"),
        ))
        .snapshots(archive)
}

struct KafkaInput {
    consumer: BaseConsumer,
    topic: String,
    ends: BTreeMap<i32, i64>,
    positions: BTreeMap<i32, i64>,
}

impl KafkaInput {
    fn new(topic: &str) -> KafkaInput {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", common::env("KAFKA_BROKERS"))
            .set("group.id", "millpond-e2e")
            // Positions come from millpond, never from Kafka's group offsets.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let ends = (0..PARTITIONS)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap();
                (p, high)
            })
            .collect();
        KafkaInput {
            consumer,
            topic: topic.to_owned(),
            ends,
            positions: BTreeMap::new(),
        }
    }
}

impl Input for KafkaInput {
    fn seek(&mut self, offsets: &[SourceOffset]) {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            let next = offsets
                .iter()
                .find(|o| o.topic == self.topic && o.partition == p)
                .map_or(0, |o| o.next_offset);
            self.positions.insert(p, next);
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                .unwrap();
        }
        self.consumer.assign(&tpl).unwrap();
    }

    fn poll(&mut self) -> Option<Record> {
        let mut empty_polls = 0;
        loop {
            if self.positions.iter().all(|(p, at)| *at >= self.ends[p]) {
                return None;
            }
            match self.consumer.poll(Duration::from_secs(1)) {
                Some(Ok(m)) => {
                    let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                    let seq: u64 = std::str::from_utf8(m.payload().unwrap())
                        .unwrap()
                        .parse()
                        .unwrap();
                    self.positions.insert(m.partition(), m.offset() + 1);
                    return Some(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key,
                        seq,
                    });
                }
                Some(Err(e)) => panic!("consuming: {e}"),
                None => {
                    empty_polls += 1;
                    assert!(empty_polls < 60, "no record for a minute before the end");
                }
            }
        }
    }

    fn topic(&self) -> &str {
        &self.topic
    }
}

/// Creates the topic and produces the input: the records of [`model`] (key `k` always in
/// partition `k % 4`, its records numbered from 1), each at the offset the model gives it.
fn produce(topic: &str) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", common::env("KAFKA_BROKERS"));
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    let created = common::block_on(admin.create_topics(
        &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .unwrap();
    for r in created {
        r.unwrap();
    }
    let producer: BaseProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut input = model();
    while let Some(r) = input.poll() {
        let payload = r.seq.to_string();
        let mut record = BaseRecord::to(topic)
            .key(&r.key)
            .payload(&payload)
            .partition(r.partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    // The local queue is full: let deliveries drain.
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// The job, when this binary runs as a child; a no-op test otherwise.
#[test]
fn child() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let run = common::env("MILLPOND_E2E_RUN");
    let mut input = KafkaInput::new(&run);
    let rate = Soak::from_env().rate.unwrap_or(RATE);
    common::run_job(builder(&dir, &run), &dir, &mut input, &model(), Some(rate));
}

#[test]
fn killed_at_random_moments_kafka_pulsar_s3_state_is_exactly_once() {
    let run = format!(
        "crash-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    produce(&run);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("job");
    let prefix = format!("e2e/{run}");
    let (listing_archive, store) = common::s3_archive(&prefix);
    let soak = Soak::from_env();
    let kills = soak.kills.unwrap_or(20);
    let report = common::kill_loop(
        "child",
        &dir,
        &[("MILLPOND_E2E_RUN", run.clone())],
        kills,
        soak.alive_ms.unwrap_or(1500..4000),
        || common::unfinished_snapshot(&dir, &store, &prefix, &listing_archive),
    );
    eprintln!("{}", report.summary("kafka-pulsar-s3"));
    assert!(report.kills >= kills);
    assert!(
        common::compactions_committed(&dir) > 0,
        "no compaction committed while the job ran"
    );
    // Restored on another machine: a fresh data directory, everything from Pulsar and S3.
    let elsewhere = tmp.path().join("elsewhere");
    if soak.kills.is_some() {
        let records = common::check_at_resume(builder(&elsewhere, &run), &model(), &run);
        eprintln!("SOAK kafka-pulsar-s3: after the last kill, {records} records checked at resume");
    } else {
        common::check_exactly_once(builder(&elsewhere, &run), &model(), &run);
    }
    let latest = listing_archive
        .latest()
        .unwrap()
        .expect("snapshots were written");
    listing_archive
        .verify(&latest, |_| {})
        .expect("the latest snapshot verifies");
}
