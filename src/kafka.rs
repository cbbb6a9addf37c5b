//! Keyed jobs in a Kafka consumer group (feature `kafka`): partitions come and go with the
//! group's rebalances, and each one's state follows it from process to process.
//!
//! The model is Kafka Streams' (docs/guide.md "Consumer groups"): **one millpond instance per
//! input partition** a process holds, with its own data directory
//! (`{data_root}/{topic}-{partition}`), WAL and snapshot archive (`{archive_root}/{topic}-{partition}`).
//! A key's records all come from one partition, so its state lives in that partition's
//! instance. With cooperative rebalancing (`cooperative-sticky`), a rebalance moves only the
//! partitions that change owner:
//!
//! - **revoked**: the instance commits what was processed, writes a snapshot (so the archive
//!   holds everything committed: a new owner elsewhere cannot read a local WAL), closes, and
//!   its local directory goes; only then does the consumer give the partition up.
//! - **assigned**: the instance opens over the partition's latest snapshot (read in place as it
//!   downloads), replays its WAL, and the consumer starts reading the partition at the resume
//!   offset that snapshot and WAL committed. Kafka's committed group offsets are never used to
//!   position the consumer (they are written only for lag monitoring).
//! - **lost** (the process was too slow, the group gave its partitions away): the same as a
//!   revocation, except that nothing is committed: the new owner claimed the archive, and this
//!   instance's snapshots are fenced.
//!
//! A process killed outright (SIGKILL) hands nothing over: after the group's session timeout
//! the new owner restores the partition's last snapshot and reads again from its offsets;
//! what the dead process committed after that snapshot was in its local WAL and is redone
//! from Kafka. With the WAL in Pulsar ([`GroupJob::customize`]) those commits are replayed.
//!
//! One memory budget covers every partition a process holds: each instance gets a fixed
//! share for its cold cache and spill queue (a tenth of the budget each, divided by the
//! partitions of the subscription), and the rest is split evenly between the hot tiers of the
//! partitions held, re-split at each rebalance ([`Store::set_hot_budget`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::state::{BoxError, Store};
use crate::wal::{CommitDurability, SourceOffset};
use crate::{Builder, Millpond};

/// How a [`GroupJob`] consumes and where its partitions' instances live. Plain data.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// `bootstrap.servers`. Default: `127.0.0.1:9092`.
    pub brokers: String,
    /// The consumer group. Default: `millpond`.
    pub group_id: String,
    /// The input topics. Default: none (required).
    pub topics: Vec<String>,
    /// The process's memory budget, shared by all the partitions it holds. Default: 512 MiB.
    pub memory_budget_bytes: usize,
    /// Commit after this many records of the process. Default: 10,000.
    pub commit_every_records: u64,
    /// Commit at least this often while records come. Default: 1 s.
    pub commit_interval: Duration,
    /// The group's session timeout: how long a killed process holds its partitions.
    /// Default: 10 s (Kafka's is 45 s).
    pub session_timeout: Duration,
    /// How often the consumer tells the group it is alive, which is also how soon it learns
    /// that a rebalance started: a cooperative handover waits for the other members' next
    /// heartbeat. Default: 250 ms (Kafka's is 3 s); at most a third of the session timeout.
    pub heartbeat_interval: Duration,
    /// Settings of each partition's instance; its memory budget is set from
    /// `memory_budget_bytes`. Default: [`Settings::default`].
    pub instance: Settings,
    /// More librdkafka consumer settings (`security.protocol`, `fetch.max.bytes`, …).
    /// Default: none. `enable.auto.commit`, `partition.assignment.strategy` and
    /// `enable.auto.offset.store` are the job's.
    pub consumer: BTreeMap<String, String>,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            brokers: "127.0.0.1:9092".into(),
            group_id: "millpond".into(),
            topics: Vec::new(),
            memory_budget_bytes: 512 << 20,
            commit_every_records: 10_000,
            commit_interval: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(250),
            instance: Settings::default(),
            consumer: BTreeMap::new(),
        }
    }
}

/// What a [`GroupJob::run`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GroupStats {
    /// Records processed.
    pub records: u64,
    /// Partitions assigned and revoked (or lost), over all rebalances.
    pub assigned: u64,
    /// Partitions revoked or lost.
    pub revoked: u64,
    /// For each partition this process took over: seconds from the start of its assignment
    /// (the rebalance callback) to its first record processed (restore, replay, first
    /// fetch). `None` until a record came.
    pub takeovers: Vec<Takeover>,
    /// Seconds each revocation took here (commit, snapshot, close): the old owner's part of
    /// a handover.
    pub release_seconds: Vec<f64>,
}

/// One partition taken over by this process.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Takeover {
    /// The partition.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// When the assignment started (system time, ms since the epoch).
    pub assigned_at_ms: u64,
    /// Seconds from the assignment to the partition's first record processed.
    pub first_record_seconds: Option<f64>,
    /// Seconds the instance took to open and recover.
    pub open_seconds: f64,
}

/// What happens to a partition in this process, for [`GroupJob::on_event`]: logs, metrics,
/// handover measurements. Times are system time, ms since the Unix epoch.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum GroupEvent {
    /// The partition was assigned here and its instance is open, recovered and positioned.
    Assigned {
        /// The partition's topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// When the assignment started.
        at_ms: u64,
        /// Seconds to open and recover its instance.
        open_seconds: f64,
        /// Where reading starts (`None`: the partition's start).
        resume_offset: Option<i64>,
    },
    /// The first record of a partition taken over was processed.
    FirstRecord {
        /// The partition's topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// When.
        at_ms: u64,
        /// Seconds since the assignment started.
        since_assigned_seconds: f64,
    },
    /// The partition left this process: revoked (committed, snapshotted, closed) or lost
    /// (closed).
    Released {
        /// The partition's topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// When the release started.
        at_ms: u64,
        /// Seconds the release took.
        seconds: f64,
        /// Lost (the group gave it away) rather than revoked.
        lost: bool,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type Register<S> = dyn Fn(&Store) -> Result<S> + Send + Sync;
type Customize = dyn Fn(&str, i32, Builder) -> Builder + Send + Sync;
type OnEvent = dyn Fn(&GroupEvent) + Send + Sync;
type BeforeCommit = dyn Fn() -> std::result::Result<(), BoxError> + Send + Sync;

/// A keyed job in a Kafka consumer group: see the [module docs](self).
///
/// ```no_run
/// use millpond::kafka::{GroupJob, GroupSettings};
/// use millpond::state::{StringCodec, U64Codec, ValueStateDescriptor};
/// use rdkafka::Message;
///
/// let settings = GroupSettings {
///     brokers: "kafka:9092".into(),
///     group_id: "word-count".into(),
///     topics: vec!["words".into()],
///     ..GroupSettings::default()
/// };
/// let job = GroupJob::new("/var/lib/word-count", "s3://bucket/word-count", settings, |store| {
///     Ok(store.value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))?)
/// });
/// let stop = std::sync::atomic::AtomicBool::new(false);
/// job.run(&stop, |counts, record| {
///     let word = String::from_utf8_lossy(record.payload().unwrap_or_default()).into_owned();
///     let n = counts.get(&word)?.unwrap_or(0);
///     counts.update(&word, &(n + 1))?;
///     Ok(())
/// })?;
/// # Ok::<(), millpond::Error>(())
/// ```
pub struct GroupJob<S> {
    settings: GroupSettings,
    data_root: PathBuf,
    archive_root: String,
    register: Arc<Register<S>>,
    customize: Option<Arc<Customize>>,
    on_event: Option<Arc<OnEvent>>,
    before_commit: Option<Arc<BeforeCommit>>,
}

impl<S> std::fmt::Debug for GroupJob<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupJob")
            .field("settings", &self.settings)
            .field("data_root", &self.data_root)
            .field("archive_root", &self.archive_root)
            .finish()
    }
}

impl<S: Send + 'static> GroupJob<S> {
    /// A job whose partitions' instances live under `data_root` (local caches and, with the
    /// embedded default, the WAL) and keep snapshots under `archive_root` (`file:///…` shared
    /// by every process of the group, or `s3://bucket/prefix` with the feature `s3`). `register` registers the job's
    /// states on each partition's store and returns their handles.
    pub fn new(
        data_root: impl AsRef<Path>,
        archive_root: impl Into<String>,
        settings: GroupSettings,
        register: impl Fn(&Store) -> Result<S> + Send + Sync + 'static,
    ) -> GroupJob<S> {
        GroupJob {
            settings,
            data_root: data_root.as_ref().to_owned(),
            archive_root: archive_root.into().trim_end_matches('/').to_owned(),
            register: Arc::new(register),
            customize: None,
            on_event: None,
            before_commit: None,
        }
    }

    /// Calls `f` before every commit (periodic, and a revoked partition's last): flush the
    /// job's output producer there, so that output is delivered before the offsets of the
    /// records that made it are committed (at-least-once output; docs/guide.md). An error
    /// stops the job without committing.
    pub fn before_commit(
        mut self,
        f: impl Fn() -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.before_commit = Some(Arc::new(f));
        self
    }

    /// Calls `f` for every [`GroupEvent`] (on the consuming thread or a handover thread:
    /// keep it short).
    pub fn on_event(mut self, f: impl Fn(&GroupEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }

    /// Changes each partition's instance before it opens: a Pulsar WAL per partition
    /// ([`Builder::pulsar_wal`]), an archive configured in code, a clock. Called with the
    /// topic, the partition and the builder the job made.
    pub fn customize(
        mut self,
        f: impl Fn(&str, i32, Builder) -> Builder + Send + Sync + 'static,
    ) -> Self {
        self.customize = Some(Arc::new(f));
        self
    }

    /// Consumes until `stop` is set (checked at least every 100 ms), calling `process` for
    /// each record with the states of the record's partition, and committing every
    /// [`GroupSettings::commit_every_records`] records or [`GroupSettings::commit_interval`].
    /// On return the process has left the group and handed every partition over (committed,
    /// snapshotted, closed). A record `process` fails on stops the job with
    /// [`Error::Process`]; nothing after the last commit is committed then.
    pub fn run<F>(&self, stop: &AtomicBool, mut process: F) -> Result<GroupStats>
    where
        F: FnMut(&S, &BorrowedMessage<'_>) -> std::result::Result<(), BoxError>,
    {
        let context = GroupContext {
            parts: Mutex::new(BTreeMap::new()),
            job: self.instances(),
            stats: Mutex::new(GroupStats::default()),
            failure: Mutex::new(None),
            failing: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<GroupContext<S>> = self.config().create_with_context(context)?;
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        if topics.is_empty() {
            return Err(Error::Invalid {
                reason: "GroupSettings::topics is empty".into(),
            });
        }
        let mut partitions = 0;
        for t in &topics {
            let md = consumer.fetch_metadata(Some(t), Duration::from_secs(30))?;
            partitions += md
                .topics()
                .iter()
                .map(|t| t.partitions().len())
                .sum::<usize>();
        }
        consumer.context().job_partitions(partitions.max(1));
        consumer.subscribe(&topics)?;

        let result = self.consume(&consumer, stop, &mut process);
        if result.is_err() {
            // Nothing uncommitted may count: revocations now only close.
            consumer.context().failing.store(true, Ordering::SeqCst);
        }
        // Leaving the group revokes every partition: the handover runs in the callback.
        consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !consumer.context().parts.lock().is_empty() && Instant::now() < deadline {
            consumer.poll(Duration::from_millis(100));
        }
        let context_failure = consumer.context().failure.lock().take();
        let stats = consumer.context().stats.lock().clone();
        drop(consumer);
        result?;
        if let Some(e) = context_failure {
            return Err(e);
        }
        Ok(stats)
    }

    /// [`GroupJob::run`] for async code: runs on a thread of its own until `stop` is set.
    pub async fn run_async<F>(self, stop: Arc<AtomicBool>, process: F) -> Result<GroupStats>
    where
        S: 'static,
        F: FnMut(&S, &BorrowedMessage<'_>) -> std::result::Result<(), BoxError> + Send + 'static,
    {
        crate::off_thread::off_thread("millpond-group", move || self.run(&stop, process)).await
    }

    fn consume<F>(
        &self,
        consumer: &BaseConsumer<GroupContext<S>>,
        stop: &AtomicBool,
        process: &mut F,
    ) -> Result<()>
    where
        F: FnMut(&S, &BorrowedMessage<'_>) -> std::result::Result<(), BoxError>,
    {
        let ctx = consumer.context();
        let mut since_commit = 0u64;
        let mut last_commit = Instant::now();
        let mut group_behind = false;
        let mut last_group_try = Instant::now()
            .checked_sub(self.settings.commit_interval)
            .unwrap_or_else(Instant::now);
        while !stop.load(Ordering::Relaxed) {
            // Rebalance callbacks run inside poll, on this thread.
            let polled = consumer.poll(Duration::from_millis(100));
            if let Some(e) = ctx.failure.lock().take() {
                return Err(e);
            }
            match polled {
                None => {}
                Some(Err(e)) => {
                    // librdkafka retries by itself; a fatal error stops the job.
                    if let rdkafka::error::KafkaError::MessageConsumptionFatal(_) = e {
                        return Err(e.into());
                    }
                    tracing::warn!(error = %e, "consumer error");
                }
                Some(Ok(msg)) => {
                    let mut parts = ctx.parts.lock();
                    let key = (msg.topic().to_owned(), msg.partition());
                    // A record of a partition already handed over (fetched before the
                    // revocation) is not this process's to apply.
                    // Below the partition's position: fetched before a revocation and
                    // delivered after it came back; its changes are in the state already.
                    let current = parts
                        .get_mut(&key)
                        .filter(|p| p.position.is_none_or(|at| msg.offset() >= at));
                    if let Some(part) = current {
                        process(&part.states, &msg).map_err(|source| Error::Process {
                            topic: key.0.clone(),
                            partition: key.1,
                            offset: msg.offset(),
                            source,
                        })?;
                        part.next = Some(msg.offset() + 1);
                        part.position = Some(msg.offset() + 1);
                        if let Some(t) = part.first_record.take() {
                            let seconds = part.assigned.elapsed().as_secs_f64();
                            if let Some(slot) = ctx.stats.lock().takeovers.get_mut(t) {
                                slot.first_record_seconds = Some(seconds);
                            }
                            ctx.job.event(GroupEvent::FirstRecord {
                                topic: key.0.clone(),
                                partition: key.1,
                                at_ms: now_ms(),
                                since_assigned_seconds: seconds,
                            });
                        }
                        ctx.stats.lock().records += 1;
                        since_commit += 1;
                    }
                }
            }
            if since_commit >= self.settings.commit_every_records
                || (since_commit > 0 && last_commit.elapsed() >= self.settings.commit_interval)
            {
                ctx.job.before_commit()?;
                let committed = commit_all(&mut ctx.parts.lock())?;
                group_behind |= committed.count() > 0;
                since_commit = 0;
                last_commit = Instant::now();
            }
            // The group's offsets, for lag monitoring only (positions come from millpond):
            // a commit refused in a rebalance is tried again a commit interval later, so
            // they catch up even when no record comes any more.
            if group_behind && last_group_try.elapsed() >= self.settings.commit_interval {
                let positions = group_positions(&ctx.parts.lock());
                group_behind =
                    positions.count() > 0 && consumer.commit(&positions, CommitMode::Sync).is_err();
                last_group_try = Instant::now();
            }
        }
        ctx.job.before_commit()?;
        commit_all(&mut ctx.parts.lock())?;
        Ok(())
    }

    fn config(&self) -> ClientConfig {
        let s = &self.settings;
        let mut c = ClientConfig::new();
        for (k, v) in &s.consumer {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &s.brokers)
            .set("group.id", &s.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                s.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                s.heartbeat_interval
                    .min(s.session_timeout / 3)
                    .as_millis()
                    .max(1)
                    .to_string(),
            );
        c
    }

    fn instances(&self) -> Instances<S> {
        Instances {
            settings: self.settings.clone(),
            data_root: self.data_root.clone(),
            archive_root: self.archive_root.clone(),
            register: self.register.clone(),
            customize: self.customize.clone(),
            on_event: self.on_event.clone(),
            before_commit: self.before_commit.clone(),
            partitions: std::sync::atomic::AtomicUsize::new(1),
        }
    }
}

/// Commits every partition that processed records since its last commit, all markers first
/// and then their durability, so the fsyncs of several partitions overlap. Returns the
/// offsets committed.
fn commit_all<S>(parts: &mut BTreeMap<(String, i32), Part<S>>) -> Result<TopicPartitionList> {
    let mut tickets = Vec::new();
    let mut done = TopicPartitionList::new();
    for ((topic, partition), part) in parts.iter_mut() {
        let Some(next) = part.next.take() else {
            continue;
        };
        let offsets = [SourceOffset {
            topic: topic.clone(),
            partition: *partition,
            next_offset: next,
        }];
        tickets.push(part.job.commit(&offsets)?);
        let _ = done.add_partition_offset(topic, *partition, Offset::Offset(next));
    }
    for t in tickets {
        t.wait()?;
    }
    Ok(done)
}

/// The position of every partition held that has one: what the group's offsets should say.
fn group_positions<S>(parts: &BTreeMap<(String, i32), Part<S>>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), part) in parts {
        if let Some(at) = part.position {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(at));
        }
    }
    tpl
}

/// One partition held by this process.
struct Part<S> {
    job: Millpond,
    states: S,
    /// The next offset to commit, once records were processed since the last commit.
    next: Option<i64>,
    /// The next offset to apply (`None`: from the partition's start, whatever it is).
    position: Option<i64>,
    assigned: Instant,
    /// Index in `GroupStats::takeovers` until the first record came.
    first_record: Option<usize>,
}

/// What opens a partition's instance.
struct Instances<S> {
    settings: GroupSettings,
    data_root: PathBuf,
    archive_root: String,
    register: Arc<Register<S>>,
    customize: Option<Arc<Customize>>,
    on_event: Option<Arc<OnEvent>>,
    before_commit: Option<Arc<BeforeCommit>>,
    /// Partitions of the subscription: the fixed per-instance shares divide by it.
    partitions: std::sync::atomic::AtomicUsize,
}

impl<S> Instances<S> {
    fn event(&self, e: GroupEvent) {
        if let Some(f) = &self.on_event {
            f(&e);
        }
    }

    /// The job's hook before a commit.
    fn before_commit(&self) -> Result<()> {
        match &self.before_commit {
            Some(f) => f().map_err(Error::BeforeCommit),
            None => Ok(()),
        }
    }

    fn dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_root.join(format!("{topic}-{partition}"))
    }

    /// The fixed share of each instance (cold cache, spill queue) and the hot share of each
    /// when `held` partitions are held.
    fn shares(&self, held: usize) -> (usize, usize, usize) {
        let budget = self.settings.memory_budget_bytes;
        let n = self.partitions.load(Ordering::Relaxed).max(1);
        let cold = (budget / 10 / n).max(1 << 20);
        let spill = (budget / 10 / n).max(256 << 10);
        let fixed = held * (cold + spill);
        let hot = budget.saturating_sub(fixed) / held.max(1);
        (cold, spill, hot.max(1 << 20))
    }

    /// Opens `topic`-`partition`'s instance over its latest snapshot and replays its WAL.
    fn open(&self, topic: &str, partition: i32, held: usize) -> Result<(Millpond, S)> {
        let dir = self.dir(topic, partition);
        // Whatever is left here (a killed process's, or an earlier ownership's) may not
        // continue the archive's latest snapshot: the archive holds the partition's state.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(crate::error::io(&dir))?;
        }
        let (cold, spill, hot) = self.shares(held);
        let mut settings = self.settings.instance.clone();
        settings.store.cold_cache_bytes = Some(cold);
        settings.store.spill_queue_bytes = Some(spill);
        settings.store.memory_budget_bytes = cold + spill + hot;
        // Commits of several partitions are written together, then waited on.
        settings.wal.commit_durability = CommitDurability::Async;
        let mut builder = Millpond::builder(&dir)
            .settings(settings)
            .snapshots_url(format!("{}/{topic}-{partition}", self.archive_root));
        if let Some(c) = &self.customize {
            builder = c(topic, partition, builder);
        }
        let opening = builder.open()?;
        let states = (self.register)(opening.store())?;
        let job = opening.recover()?;
        Ok((job, states))
    }
}

/// The consumer's context: the rebalance callbacks hand partitions over.
struct GroupContext<S> {
    parts: Mutex<BTreeMap<(String, i32), Part<S>>>,
    job: Instances<S>,
    stats: Mutex<GroupStats>,
    /// A failure in a callback, reported by the consuming loop.
    failure: Mutex<Option<Error>>,
    /// The job failed: revocations close without committing.
    failing: AtomicBool,
}

impl<S> GroupContext<S> {
    fn job_partitions(&self, n: usize) {
        self.job.partitions.store(n, Ordering::Relaxed);
    }

    fn fail(&self, e: Error) {
        tracing::error!(error = %e, "rebalance failed");
        self.failing.store(true, Ordering::SeqCst);
        self.failure.lock().get_or_insert(e);
    }
}

impl<S: Send> GroupContext<S> {
    /// Opens the assigned partitions' instances (in parallel), and sets each one's offset in
    /// `tpl` to its resume offset, where the consumer starts reading it.
    fn assign(&self, tpl: &mut TopicPartitionList) {
        let wanted: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .filter(|k| !self.parts.lock().contains_key(k))
            .collect();
        let held = self.parts.lock().len() + wanted.len();
        let started = Instant::now();
        let assigned_at_ms = now_ms();
        type Opened<S> = (String, i32, Result<(Millpond, S)>, f64);
        let opened: Vec<Opened<S>> = std::thread::scope(|s| {
            let handles: Vec<_> = wanted
                .iter()
                .map(|(topic, partition)| {
                    s.spawn(move || {
                        let t = Instant::now();
                        let r = self.job.open(topic, *partition, held);
                        (topic.clone(), *partition, r, t.elapsed().as_secs_f64())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("an instance's open panicked"))
                .collect()
        });
        let mut parts = self.parts.lock();
        let mut stats = self.stats.lock();
        for (topic, partition, result, open_seconds) in opened {
            match result {
                Ok((job, states)) => {
                    let position = job.resume_offset(&topic, partition);
                    let offset = position.map_or(Offset::Beginning, Offset::Offset);
                    let _ = tpl.set_partition_offset(&topic, partition, offset);
                    tracing::info!(%topic, partition, ?offset, open_seconds, "partition taken over");
                    self.job.event(GroupEvent::Assigned {
                        topic: topic.clone(),
                        partition,
                        at_ms: assigned_at_ms,
                        open_seconds,
                        resume_offset: position,
                    });
                    stats.assigned += 1;
                    stats.takeovers.push(Takeover {
                        topic: topic.clone(),
                        partition,
                        assigned_at_ms,
                        first_record_seconds: None,
                        open_seconds,
                    });
                    parts.insert(
                        (topic, partition),
                        Part {
                            job,
                            states,
                            next: None,
                            position,
                            assigned: started,
                            first_record: Some(stats.takeovers.len() - 1),
                        },
                    );
                }
                Err(e) => {
                    // Nothing may be read without its state: the job stops.
                    let _ = tpl.set_partition_offset(&topic, partition, Offset::End);
                    drop(stats);
                    self.fail(e);
                    stats = self.stats.lock();
                }
            }
        }
        drop(stats);
        self.resplit(&parts);
    }

    /// Hands revoked (or lost) partitions over: commit, snapshot, close, local files gone.
    /// Returns the offsets committed, for the group's offsets.
    fn revoke(&self, tpl: &TopicPartitionList, lost: bool) -> TopicPartitionList {
        let keys: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut commit = !lost && !self.failing.load(Ordering::SeqCst);
        if commit {
            if let Err(e) = self.job.before_commit() {
                self.fail(e);
                commit = false;
            }
        }
        let mut released = Vec::new();
        {
            let mut parts = self.parts.lock();
            for k in keys {
                if let Some(part) = parts.remove(&k) {
                    released.push((k, part));
                }
            }
        }
        let results: Vec<(String, i32, f64, Result<Option<i64>>)> = std::thread::scope(|s| {
            let handles: Vec<_> = released
                .into_iter()
                .map(|((topic, partition), part)| {
                    let dir = self.job.dir(&topic, partition);
                    s.spawn(move || {
                        let (t, at_ms) = (Instant::now(), now_ms());
                        let r = release(part, &topic, partition, commit);
                        // The archive holds the partition now (or a new owner claimed it).
                        let _ = std::fs::remove_dir_all(&dir);
                        let seconds = t.elapsed().as_secs_f64();
                        tracing::info!(%topic, partition, lost, seconds, "partition handed over");
                        self.job.event(GroupEvent::Released {
                            topic: topic.clone(),
                            partition,
                            at_ms,
                            seconds,
                            lost,
                        });
                        (topic, partition, seconds, r)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a handover panicked"))
                .collect()
        });
        let mut stats = self.stats.lock();
        let mut committed = TopicPartitionList::new();
        for (topic, partition, seconds, r) in results {
            stats.revoked += 1;
            stats.release_seconds.push(seconds);
            match r {
                Ok(Some(next)) => {
                    let _ = committed.add_partition_offset(&topic, partition, Offset::Offset(next));
                }
                Ok(None) => {}
                Err(e) if commit => {
                    drop(stats);
                    self.fail(e);
                    stats = self.stats.lock();
                }
                Err(e) => tracing::warn!(error = %e, "closing a lost partition"),
            }
        }
        drop(stats);
        self.resplit(&self.parts.lock());
        committed
    }

    /// Splits the hot share of the budget again over the partitions held.
    fn resplit(&self, parts: &BTreeMap<(String, i32), Part<S>>) {
        let (_, _, hot) = self.job.shares(parts.len());
        for part in parts.values() {
            if let Err(e) = part.job.store().set_hot_budget(hot) {
                tracing::warn!(error = %e, "re-splitting the memory budget");
            }
        }
    }
}

/// Commits what a partition processed, writes a snapshot and closes its instance. Returns
/// the partition's resume offset, if it has one.
fn release<S>(part: Part<S>, topic: &str, partition: i32, commit: bool) -> Result<Option<i64>> {
    let mut resume = None;
    if commit {
        if let Some(next) = part.next {
            part.job
                .commit(&[SourceOffset {
                    topic: topic.to_owned(),
                    partition,
                    next_offset: next,
                }])?
                .wait()?;
        }
        part.job.snapshot_now()?;
        resume = part.position;
    }
    drop(part.states);
    part.job.close()?;
    Ok(resume)
}

impl<S: Send + 'static> ClientContext for GroupContext<S> {}

impl<S: Send + 'static> ConsumerContext for GroupContext<S> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(tpl);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    self.fail(e.into());
                }
                // The group's offsets follow millpond's, for lag monitoring only.
                let mut resume = TopicPartitionList::new();
                for e in tpl.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        let _ = resume.add_partition_offset(
                            e.topic(),
                            e.partition(),
                            Offset::Offset(o),
                        );
                    }
                }
                if resume.count() > 0 {
                    let _ = consumer.commit(&resume, CommitMode::Async);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let committed = self.revoke(tpl, consumer.assignment_lost());
                if committed.count() > 0 {
                    let _ = consumer.commit(&committed, CommitMode::Sync);
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    self.fail(e.into());
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}
