//! A millpond instance's whole life inside `#[tokio::main]`, fed by a real Kafka
//! `StreamConsumer`: open, recover and close with the async calls, `commit_async` resolving
//! once durable, a snapshot awaited, and a restart that resumes exactly where the last commit
//! left off. Every record carries its key's sequence number; the job checks each is its key's
//! next, and at the end that every key holds all its records, each applied once.
//!
//! Needs Kafka (`eval "$(scripts/services up kafka)"` exports `KAFKA_BROKERS`):
//!
//!     cargo run --release --features kafka --example kafka_async

use std::collections::BTreeMap;
use std::time::Duration;

use millpond::state::{StringCodec, U64Codec, ValueState, ValueStateDescriptor};
use millpond::wal::SourceOffset;
use millpond::Millpond;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;
const KEYS: u64 = 200;
const RECORDS: u64 = 20_000;
/// Records each life processes before it stops (the last life reads to the end).
const PER_LIFE: u64 = 6_000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[allow(dead_code)] // the test includes this file and calls `run`
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let brokers = std::env::var("KAFKA_BROKERS")
        .map_err(|_| "KAFKA_BROKERS is not set: eval \"$(scripts/services up kafka)\"")?;
    let dir = tempfile::tempdir()?;
    let summary = run(&brokers, dir.path()).await?;
    println!("{summary}");
    Ok(())
}

/// Produces the input, then runs lives of the job until it is read to the end; checks the
/// state. Returns a summary line.
pub async fn run(brokers: &str, dir: &std::path::Path) -> Result<String, BoxError> {
    let topic = format!(
        "async-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    produce(brokers, &topic).await?;

    let mut lives = 0;
    loop {
        lives += 1;
        let opening = Millpond::builder(dir).open_async().await?;
        let last = opening.store().value_state(ValueStateDescriptor::new(
            "last-seq",
            StringCodec,
            U64Codec,
        ))?;
        let count = opening.store().value_state(ValueStateDescriptor::new(
            "count",
            StringCodec,
            U64Codec,
        ))?;
        let job = opening.recover_async().await?;

        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("{topic}-job"))
            .set("enable.auto.commit", "false")
            .create()?;
        // Positions come from millpond: each partition at its resume offset.
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            let at = job
                .resume_offset(&topic, p)
                .map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&topic, p, at)?;
        }
        consumer.assign(&tpl)?;

        let done = process(&job, &consumer, &topic, &last, &count, lives).await?;
        if done {
            let report = job.snapshot_now_async().await?;
            check(&last, &count)?;
            job.close_async().await?;
            return Ok(format!(
                "kafka_async: {RECORDS} records over {lives} lives of the job, each applied once \
                 (last snapshot: {:?})",
                report.map(|r| r.manifest.sequence)
            ));
        }
        // Changes after the last commit are discarded by the next recovery, as after a crash.
        job.close_async().await?;
    }
}

/// Processes records until this life's share is done (or the input ends): commits every 500
/// records and at the end. Returns whether the whole input was read.
async fn process(
    job: &Millpond,
    consumer: &StreamConsumer,
    topic: &str,
    last: &ValueState<String, u64>,
    count: &ValueState<String, u64>,
    life: u64,
) -> Result<bool, BoxError> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut seen = 0u64;
    let total = |job: &Millpond| -> u64 {
        job.resume_offsets()
            .iter()
            .map(|o| o.next_offset as u64)
            .sum()
    };
    let before = total(job);
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| "no record for 30 s")??;
        let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
        let seq: u64 = std::str::from_utf8(msg.payload().unwrap_or_default())?.parse()?;
        let had = last.get(&key)?.unwrap_or(0);
        if seq != had + 1 {
            return Err(format!("{key}: seq {seq} after {had}: not applied exactly once").into());
        }
        last.update(&key, &seq)?;
        count.update(&key, &(count.get(&key)?.unwrap_or(0) + 1))?;
        next.insert(msg.partition(), msg.offset() + 1);
        seen += 1;
        let finished = before + seen == RECORDS;
        if seen.is_multiple_of(500) || finished {
            let offsets: Vec<SourceOffset> = next
                .iter()
                .map(|(p, o)| SourceOffset {
                    topic: topic.to_owned(),
                    partition: *p,
                    next_offset: *o,
                })
                .collect();
            let _durable = job.commit_async(&offsets).await?;
        }
        if finished {
            return Ok(true);
        }
        if seen == PER_LIFE + life * 7 {
            // A few records past the last commit: the next life reads them again.
            return Ok(false);
        }
    }
}

fn check(last: &ValueState<String, u64>, count: &ValueState<String, u64>) -> Result<(), BoxError> {
    let mut expected = vec![0u64; KEYS as usize];
    for i in 0..RECORDS {
        expected[(i % KEYS) as usize] += 1;
    }
    for (k, n) in expected.iter().enumerate() {
        let key = format!("key-{k}");
        let (l, c) = (last.get(&key)?, count.get(&key)?);
        if l != Some(*n) || c != Some(*n) {
            return Err(format!("{key}: last {l:?}, count {c:?}, expected {n}").into());
        }
    }
    Ok(())
}

/// `RECORDS` records over `KEYS` keys (key `k % KEYS` for record `k`), each key's records
/// numbered from 1, key `k` in partition `k % PARTITIONS`.
async fn produce(brokers: &str, topic: &str) -> Result<(), BoxError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    let admin: AdminClient<_> = config.create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?
    {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    let producer: FutureProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let mut seqs = vec![0u64; KEYS as usize];
    let mut pending = Vec::new();
    for i in 0..RECORDS {
        let k = i % KEYS;
        seqs[k as usize] += 1;
        let (key, payload) = (format!("key-{k}"), seqs[k as usize].to_string());
        let mut record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .partition((k % PARTITIONS as u64) as i32);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                // The local queue is full: wait for what was sent.
                Err((_, back)) if !pending.is_empty() => {
                    record = back;
                    for d in pending.drain(..) {
                        delivered(d).await?;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        };
        pending.push(delivery);
    }
    for d in pending {
        delivered(d).await?;
    }
    Ok(())
}

async fn delivered(d: rdkafka::producer::DeliveryFuture) -> Result<(), BoxError> {
    d.await
        .map_err(|_| "delivery canceled")?
        .map_err(|(e, _)| e)?;
    Ok(())
}
