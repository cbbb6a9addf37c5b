//! A millpond instance: the keyed state of one job instance, its WAL and its snapshots,
//! opened by [`Builder`], recovered by [`Recovering::recover`], run as [`Millpond`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::error::{io, Error, Result};
use crate::lower_tiers::LowerTiers;
use crate::metrics;
use crate::settings::Settings;
use crate::snapshot::{
    Archive, ArchiveSettings, Manifest, RestoreSettings, SnapshotBase, SnapshotReport,
    SnapshotWriter,
};
use crate::snapshotter::{
    CompactionStats, Counted, Recovered, Reply, Request, Shared, Snapshotter,
};
use crate::state::{
    BoxError, Change, ChangeSink, Clock, KeyGroupRange, Store, StoreStats, SystemClock,
};
use crate::wal::{
    CommitDurability, CommitTicket, OwnedChange, ReplayOutcome, SourceOffset, Wal, WalRecovery,
    WalSink, WalSource, WalStats,
};
use crate::wal_location::WalLocation;

/// Builds a [`Millpond`] instance: a data directory, [`Settings`], and the components that
/// are not plain data: where the WAL and the snapshots live, and the clock.
///
/// The embedded default needs only the data directory: the WAL in local segment files under
/// `{data_dir}/wal`, snapshots in `file://{data_dir}/snapshots`. In production, give a Pulsar
/// WAL ([`Builder::pulsar_wal`], feature `pulsar`) and an S3 archive
/// ([`Builder::snapshots_url`] with `s3://bucket/prefix`).
pub struct Builder {
    dir: PathBuf,
    settings: Settings,
    clock: Arc<dyn Clock>,
    archive: Option<Archive>,
    archive_url: Option<String>,
    archive_settings: ArchiveSettings,
    #[cfg(feature = "pulsar")]
    pulsar: Option<crate::wal::pulsar::PulsarSettings>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("dir", &self.dir)
            .field("settings", &self.settings)
            .field("archive_url", &self.archive_url)
            .field("archive_settings", &self.archive_settings)
            .finish()
    }
}

impl Builder {
    pub(crate) fn new(dir: impl AsRef<Path>) -> Builder {
        Builder {
            dir: dir.as_ref().to_owned(),
            settings: Settings::default(),
            clock: Arc::new(SystemClock),
            archive: None,
            archive_url: None,
            archive_settings: ArchiveSettings::default(),
            #[cfg(feature = "pulsar")]
            pulsar: None,
        }
    }

    /// Sets the settings (default: [`Settings::default`]).
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Sets the clock that TTL uses (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Keeps snapshots at `url`: `file:///absolute/dir` or, with the feature `s3`,
    /// `s3://bucket/prefix` (S3 configured from the `AWS_*` environment variables, see
    /// [`Archive::open`]). Default:
    /// `file://{data_dir}/snapshots`.
    pub fn snapshots_url(self, url: impl Into<String>) -> Self {
        self.snapshots_url_with(url, ArchiveSettings::default())
    }

    /// Keeps snapshots at `url` as [`Builder::snapshots_url`] does, talking to S3 with
    /// `settings`: connect and request timeouts, retries ([`ArchiveSettings`]; a local
    /// archive ignores them). A zero timeout fails [`Builder::open`] with
    /// [`Error::Invalid`]. Default: [`ArchiveSettings::default`] (5 s to connect, 30 s per
    /// request, 3 retries started within 10 s). Flink's S3 file system has the same knobs
    /// as `s3.connection.establish.timeout`, `s3.connection.timeout` and
    /// `s3.attempts.maximum` (passed on to Hadoop's `fs.s3a.*`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use millpond::snapshot::ArchiveSettings;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let slow_link = ArchiveSettings {
    ///     request_timeout: Duration::from_secs(120), // a 16 MiB part needs longer
    ///     ..ArchiveSettings::default()
    /// };
    /// let archive = format!("file://{}", dir.path().join("snapshots").display());
    /// let job = millpond::Millpond::builder(dir.path().join("data"))
    ///     .snapshots_url_with(archive, slow_link)
    ///     .open()?
    ///     .recover()?;
    /// job.close()?;
    ///
    /// let never = ArchiveSettings { request_timeout: Duration::ZERO, ..ArchiveSettings::default() };
    /// let refused = millpond::Millpond::builder(dir.path().join("other"))
    ///     .snapshots_url_with("s3://bucket/job", never)
    ///     .open();
    /// assert!(matches!(refused, Err(millpond::Error::Invalid { reason }) if reason.contains("request_timeout")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn snapshots_url_with(mut self, url: impl Into<String>, settings: ArchiveSettings) -> Self {
        self.archive_url = Some(url.into());
        self.archive_settings = settings;
        self.archive = None;
        self
    }

    /// Keeps snapshots in `archive`, for an object store configured in code
    /// ([`Archive::from_store`]).
    pub fn snapshots(mut self, archive: Archive) -> Self {
        self.archive = Some(archive);
        self.archive_url = None;
        self
    }

    /// Keeps the WAL in Apache Pulsar: one non-partitioned topic per instance
    /// (`settings.topic`, see [`wal_topic`](crate::wal::pulsar::wal_topic)), with TLS
    /// (`pulsar+ssl://`, `tls_trust_cert_file`) and token authentication (`auth_token`) as
    /// `settings` says. On open, the instance takes the topic over: an older instance still
    /// connected is fenced by the broker. Default: local segment files in `{data_dir}/wal`.
    #[cfg(feature = "pulsar")]
    pub fn pulsar_wal(mut self, settings: crate::wal::pulsar::PulsarSettings) -> Self {
        self.pulsar = Some(settings);
        self
    }

    /// Opens the instance: locks the data directory, claims the snapshot archive (which fences
    /// an older instance's snapshots), and opens the store over the latest snapshot, read in
    /// place while its files download. Register the job's states on
    /// [`Recovering::store`], then call [`Recovering::recover`] to replay the WAL.
    pub fn open(self) -> Result<Recovering> {
        self.open_blocking()
    }

    /// [`Builder::open`] for async code: the same work on a thread of its own, so no executor
    /// thread blocks while the snapshot's files are claimed and opened. Works inside any async
    /// runtime (and none is needed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> millpond::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let opening = millpond::Millpond::builder(dir.path()).open_async().await?;
    /// let job = opening.recover_async().await?;
    /// job.close_async().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open_async(self) -> Result<Recovering> {
        crate::off_thread::off_thread("millpond-open", move || self.open_blocking()).await
    }

    fn open_blocking(self) -> Result<Recovering> {
        let started = Instant::now();
        let span = tracing::info_span!("millpond.open", dir = %self.dir.display());
        let _enter = span.enter();
        let mut settings = self.settings;
        settings.resolve_snapshot_triggers()?;
        let dir = self.dir;
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock = DirLock::acquire(&dir.join("LOCK"))?;
        if settings.snapshot.temp_dir.is_none() {
            // Ours alone: sort runs of a snapshot cut short by a crash can go.
            let tmp = dir.join("tmp");
            discard_dir(&dir, "tmp");
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            settings.snapshot.temp_dir = Some(tmp);
        }
        // Compactions link their inputs from the runs the store reads, checked, instead of
        // downloading them again.
        if settings.snapshot.local_files.is_none() {
            settings.snapshot.local_files = Some(dir.join("base"));
        }
        let archive = match (self.archive, self.archive_url) {
            (Some(a), _) => a,
            (None, Some(url)) => Archive::open_with(&url, &self.archive_settings)?,
            (None, None) => Archive::open(&format!(
                "file://{}",
                abs(&dir)?.join("snapshots").display()
            ))?,
        };
        let location = WalLocation::Local {
            dir: dir.join("wal"),
            settings: settings.segments.clone(),
        };
        #[cfg(feature = "pulsar")]
        let location = self.pulsar.map_or(location, WalLocation::Pulsar);

        let max_key_groups = settings.store.max_key_groups;
        let writer =
            SnapshotWriter::claim(archive.clone(), max_key_groups, settings.snapshot.clone())?;
        let parent = writer.parent().clone();
        let owned = settings
            .store
            .key_groups
            .unwrap_or_else(|| KeyGroupRange::all(max_key_groups));
        let sink = Arc::new(LogOnceOpen::default());
        let mut store = Store::builder(dir.join("state"))
            .settings(settings.store.clone())
            .clock(SharedClock(self.clock.clone()))
            .change_sink_arc(sink.clone());
        let base_dir = dir.join("base");
        let restore = RestoreSettings {
            key_groups: Some(owned),
            // A running instance outlives the snapshot it restored (GC), so its files
            // must become local.
            download: true,
            ..settings.restore.clone()
        };
        let mut base = None;
        if parent.files().next().is_none() {
            let _ = std::fs::remove_dir_all(&base_dir);
        } else {
            // Local copies of older snapshots' files go; a download cut short is redone.
            let names = parent.files().map(|f| f.local_name().to_owned()).collect();
            crate::lower_tiers::remove_unnamed(&base_dir, &names, false);
            let opened = SnapshotBase::open(&archive, &parent, &base_dir, &restore)?;
            store = store.base(opened.clone(), parent.states.clone());
            base = Some(opened);
        }
        let store = store.open()?;
        tracing::info!(
            epoch = writer.epoch(),
            snapshot = parent.sequence,
            snapshot_lsn = parent.lsn,
            seconds = started.elapsed().as_secs_f64(),
            "opened over the latest snapshot"
        );
        Ok(Recovering {
            dir,
            lower: LowerTiers::new(base_dir, restore, base),
            settings,
            lock,
            store,
            sink,
            writer,
            location,
            started,
            clock: self.clock,
        })
    }
}

/// An instance opened over its latest snapshot, before the WAL is replayed: register the job's
/// states on [`Recovering::store`], then [`Recovering::recover`].
pub struct Recovering {
    dir: PathBuf,
    /// The restored snapshot, read in place while its files download.
    lower: LowerTiers,
    settings: Settings,
    lock: DirLock,
    store: Store,
    sink: Arc<LogOnceOpen>,
    writer: SnapshotWriter,
    location: WalLocation,
    started: Instant,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Recovering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovering")
            .field("dir", &self.dir)
            .field("snapshot", &self.writer.parent().sequence)
            .finish()
    }
}

impl Recovering {
    /// The store, to register the job's states on before the WAL is replayed: every state
    /// the WAL names since the last snapshot must be registered (a state of the snapshot
    /// itself is known from it). Changing state before [`Recovering::recover`] fails.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The snapshot the store was opened over (a claim manifest with no files when there is
    /// none yet).
    pub fn snapshot(&self) -> &Manifest {
        self.writer.parent()
    }

    /// Replays what the WAL committed after the snapshot, continues the WAL with this
    /// instance's writer, and starts the background snapshots. The returned instance's
    /// [`Millpond::resume_offsets`] are the source offsets to seek the consumer to.
    pub fn recover(self) -> Result<Millpond> {
        self.recover_blocking()
    }

    /// [`Recovering::recover`] for async code: the replay runs on a thread of its own.
    pub async fn recover_async(self) -> Result<Millpond> {
        crate::off_thread::off_thread("millpond-recover", move || self.recover_blocking()).await
    }

    fn recover_blocking(self) -> Result<Millpond> {
        let span = tracing::info_span!("millpond.recover");
        let _enter = span.enter();
        let parent = self.writer.parent().clone();
        let epoch = self.writer.epoch();
        // The sink first: connecting it fences an older writer, so nothing it appends can land
        // after the replay read the log (docs/wal.md, "Writer epochs").
        let sink = self.location.sink()?;
        let mut source = Counted {
            source: self.location.source(&parent)?,
            bytes: 0,
        };
        let recovery = WalRecovery::new(
            sink,
            &mut source,
            parent.lsn,
            Some(epoch),
            self.settings.wal.clone(),
        );
        let (wal, outcome) =
            replay_in_parallel(&self.store, self.settings.replay_threads, recovery)?;
        let recovered = Recovered {
            snapshot_lsn: parent.lsn,
            commit_lsn: outcome.last_commit.as_ref().map_or(0, |c| c.lsn),
            changed: outcome.applied > 0,
            bytes: source.bytes,
        };
        drop(source);
        self.store.replay_done();
        let wal = Arc::new(wal);
        let _ = self.sink.0.set(wal.clone());
        let offsets = match &outcome.last_commit {
            Some(point) => point.offsets.clone(),
            None => parent.offsets.clone(),
        };
        let seconds = self.started.elapsed().as_secs_f64();
        ::metrics::histogram!(metrics::RECOVERY_SECONDS).record(seconds);
        tracing::info!(
            replayed = outcome.applied,
            discarded = outcome.uncommitted,
            fenced_batches = outcome.fenced,
            torn_tail = outcome.torn_tail.as_ref().map(tracing::field::display),
            epoch,
            seconds,
            "recovered"
        );
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            last_snapshot: Mutex::new(None),
            compactions: Mutex::new(Default::default()),
        });
        let (requests, receiver) = crossbeam_channel::unbounded();
        let thread = Snapshotter {
            writer: Arc::new(Mutex::new(self.writer)),
            store: self.store.clone(),
            wal: wal.clone(),
            location: self.location,
            settings: self.settings.clone(),
            shared: shared.clone(),
            lower: self.lower,
            gc_pending: false,
            refresh_failed: None,
            clock: self.clock,
            recovered,
        }
        .spawn(receiver);
        Ok(Millpond {
            store: self.store,
            wal,
            positions: Mutex::new(
                offsets
                    .iter()
                    .map(|o| ((o.topic.clone(), o.partition), o.next_offset))
                    .collect(),
            ),
            resume: offsets,
            recovery: Recovery {
                claim_sequence: parent.sequence,
                snapshot_lsn: parent.lsn,
                replayed: outcome.applied,
                discarded: outcome.uncommitted,
                fenced_batches: outcome.fenced,
                wal_torn_tail: outcome.torn_tail,
                epoch,
                seconds,
            },
            durability: self.settings.wal.commit_durability,
            shared,
            requests,
            thread: Mutex::new(Some(thread)),
            closed: AtomicBool::new(false),
            _lock: self.lock,
        })
    }
}

/// What recovery did at open.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Recovery {
    /// The sequence of this instance's claim manifest in the archive: it holds the state of
    /// the latest snapshot (which is what was restored) under this instance's epoch.
    pub claim_sequence: u64,
    /// The LSN the restored snapshot covers (0: no snapshot yet, the whole WAL was replayed).
    pub snapshot_lsn: u64,
    /// Changes replayed from the WAL.
    pub replayed: u64,
    /// Changes after the WAL's last commit marker, discarded: their source records are read
    /// again from the resume offsets.
    pub discarded: u64,
    /// WAL batches ignored as an older instance's, written after a newer one took over.
    pub fenced_batches: u64,
    /// What recovery cut off the end of a local WAL: a batch that a crash cut short before it
    /// was acknowledged (where, how many bytes, the last LSN kept; logged as a warning too).
    /// Never committed data: damage to acknowledged data fails the open instead
    /// (docs/wal.md, "Torn tail").
    pub wal_torn_tail: Option<crate::wal::TornTail>,
    /// This instance's writer epoch (higher than any instance before it).
    pub epoch: u64,
    /// Seconds from `open` to the end of the replay.
    pub seconds: f64,
}

/// A running millpond instance: keyed state whose every change goes to the WAL, commits that
/// make the changes and the source offsets durable together, and snapshots in the background.
///
/// ```
/// use millpond::state::{StringCodec, U64Codec, ValueStateDescriptor};
/// use millpond::wal::SourceOffset;
///
/// let dir = tempfile::tempdir().unwrap();
/// let counts = || ValueStateDescriptor::new("counts", StringCodec, U64Codec);
///
/// // Open: restore the latest snapshot, register the states, replay the WAL.
/// let opening = millpond::Millpond::builder(dir.path()).open().unwrap();
/// let state = opening.store().value_state(counts()).unwrap();
/// let job = opening.recover().unwrap();
/// assert!(job.resume_offsets().is_empty());
///
/// // Process records, then commit the offsets the state now reflects.
/// state.update(&"ada".to_string(), &3).unwrap();
/// let _durable = job.commit(&[SourceOffset { topic: "in".into(), partition: 0, next_offset: 1 }]).unwrap();
/// job.snapshot_now().unwrap();
/// job.close().unwrap();
///
/// // After a restart (or a crash), the state and the offsets are back.
/// let opening = millpond::Millpond::builder(dir.path()).open().unwrap();
/// let state = opening.store().value_state(counts()).unwrap();
/// let job = opening.recover().unwrap();
/// assert_eq!(job.resume_offset("in", 0), Some(1));
/// assert_eq!(state.get(&"ada".to_string()).unwrap(), Some(3));
/// ```
pub struct Millpond {
    store: Store,
    wal: Arc<Wal>,
    /// The next offset of every source partition, as last committed.
    positions: Mutex<BTreeMap<(String, i32), i64>>,
    resume: Vec<SourceOffset>,
    recovery: Recovery,
    /// How `commit_async` waits: as `commit` does.
    durability: CommitDurability,
    shared: Arc<Shared>,
    requests: Sender<Request>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    _lock: DirLock,
}

impl std::fmt::Debug for Millpond {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Millpond")
            .field("recovery", &self.recovery)
            .finish()
    }
}

impl Millpond {
    /// A builder for the instance whose data directory is `dir`.
    pub fn builder(dir: impl AsRef<Path>) -> Builder {
        Builder::new(dir)
    }

    /// The keyed state. Every change goes to the WAL and counts once a later
    /// [`Millpond::commit`] is durable.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The source offsets the state reflects: seek the consumer to them (each is the next
    /// record to read). Empty for a new job.
    pub fn resume_offsets(&self) -> &[SourceOffset] {
        &self.resume
    }

    /// The resume offset of one source partition.
    pub fn resume_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.resume
            .iter()
            .find(|o| o.topic == topic && o.partition == partition)
            .map(|o| o.next_offset)
    }

    /// What recovery did when this instance opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Commits: the state changes made so far and the source offsets they reflect become
    /// durable together, in one WAL commit marker. `offsets` are the next offsets to read of
    /// the partitions that advanced; partitions not named keep their last committed offset.
    /// With the default [`CommitDurability::Wait`](crate::wal::CommitDurability) it returns
    /// once durable; only then may the job tell the outside world (commit a Kafka transaction,
    /// acknowledge a request).
    ///
    /// Fails with [`Error::Fenced`] once a newer instance took over.
    pub fn commit(&self, offsets: &[SourceOffset]) -> Result<CommitTicket> {
        let started = Instant::now();
        let ticket = self.append_commit(offsets)?;
        if self.durability == CommitDurability::Wait {
            ticket.wait().map_err(|e| self.wal_failed(e))?;
        }
        ::metrics::histogram!(metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(ticket)
    }

    /// [`Millpond::commit`] for async code: appends the commit marker at once and, with the
    /// default [`CommitDurability::Wait`](crate::wal::CommitDurability), resolves when it is
    /// durable, without blocking a thread while it waits (the WAL's flusher wakes it). Like
    /// every state change, appending may wait briefly for room in the WAL's ring when the
    /// sink falls behind (backpressure).
    ///
    /// ```
    /// use millpond::wal::SourceOffset;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> millpond::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let job = millpond::Millpond::builder(dir.path()).open_async().await?.recover_async().await?;
    /// let ticket = job
    ///     .commit_async(&[SourceOffset { topic: "in".into(), partition: 0, next_offset: 7 }])
    ///     .await?;
    /// assert!(ticket.is_durable());
    /// job.close_async().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn commit_async(&self, offsets: &[SourceOffset]) -> Result<CommitTicket> {
        let started = Instant::now();
        let ticket = self.append_commit(offsets)?;
        if self.durability == CommitDurability::Wait {
            ticket.durable().await.map_err(|e| self.wal_failed(e))?;
        }
        ::metrics::histogram!(metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(ticket)
    }

    /// Appends the commit marker covering `offsets` and every partition's last offset.
    fn append_commit(&self, offsets: &[SourceOffset]) -> Result<CommitTicket> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        self.shared.check()?;
        let all: Vec<SourceOffset> = {
            let mut positions = self.positions.lock();
            for o in offsets {
                positions.insert((o.topic.clone(), o.partition), o.next_offset);
            }
            positions
                .iter()
                .map(|((topic, partition), next)| SourceOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    next_offset: *next,
                })
                .collect()
        };
        self.wal.commit_marker(&all).map_err(|e| self.wal_failed(e))
    }

    /// A WAL error of a commit: once fenced, the instance stops (every later call says so).
    fn wal_failed(&self, e: crate::wal::Error) -> Error {
        if matches!(e, crate::wal::Error::Fenced { .. }) {
            self.shared.fail(&Error::Fenced {
                reason: e.to_string(),
            });
        }
        e.into()
    }

    /// Writes a snapshot now, from what the WAL committed since the last one, and waits for
    /// it. `None` if nothing was committed since. Background snapshots do the same on their
    /// own when a trigger holds ([`Settings::snapshot_after_changes`],
    /// [`Settings::snapshot_after_wal_bytes`], [`Settings::snapshot_interval_max`]); a
    /// request ignores the floor ([`Settings::snapshot_interval_min`]) and counts for it.
    pub fn snapshot_now(&self) -> Result<Option<SnapshotReport>> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.requests
            .send(Request::Snapshot(Reply::Blocking(reply)))
            .map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)?
    }

    /// [`Millpond::snapshot_now`] for async code: resolves when the snapshot thread has
    /// written it.
    pub async fn snapshot_now_async(&self) -> Result<Option<SnapshotReport>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests
            .send(Request::Snapshot(Reply::Async(reply)))
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The last snapshot this instance wrote.
    pub fn last_snapshot(&self) -> Option<SnapshotReport> {
        self.shared.last_snapshot.lock().clone()
    }

    /// What the compaction thread committed since the instance opened (docs/snapshot.md,
    /// "Compaction"); all zero with `Settings::compaction` `None`.
    pub fn compaction_stats(&self) -> CompactionStats {
        self.shared.compactions.lock().clone()
    }

    /// The store's and the WAL's counters.
    pub fn stats(&self) -> (StoreStats, WalStats) {
        (self.store.stats(), self.wal.stats())
    }

    /// Closes gracefully: waits for a snapshot in progress, stops the background thread,
    /// writes what the WAL holds, and closes the store. Changes after the last commit are not
    /// committed by closing; they are discarded by the next recovery, like after a crash.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// [`Millpond::close`] for async code: waits for the snapshot thread and the WAL's last
    /// write on a thread of its own.
    pub async fn close_async(self) -> Result<()> {
        crate::off_thread::off_thread("millpond-close", move || self.shutdown()).await
    }

    fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = self.requests.send(Request::Stop);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
        let wal = self.wal.close();
        let store = self.store.close();
        wal?;
        store?;
        Ok(())
    }
}

impl Drop for Millpond {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Pulls the committed units of `recovery` and applies their changes on `threads` threads: a
/// change goes, with its LSN, to the thread of its key group, so the changes of one key are
/// applied in log order, and the changes of different keys are independent. Once every change
/// is applied, starts the writer that continues the log.
fn replay_in_parallel<W: WalSink, S: WalSource>(
    store: &Store,
    threads: usize,
    mut recovery: WalRecovery<W, S>,
) -> Result<(Wal, ReplayOutcome)> {
    const CHUNK: usize = 512;
    if threads <= 1 {
        while let Some(unit) = recovery.next()? {
            for (lsn, change) in unit.changes() {
                store
                    .apply_logged(&change.as_change(), *lsn)
                    .map_err(|source| crate::wal::Error::Apply {
                        lsn: unit.point().lsn,
                        source: Box::new(source),
                    })?;
            }
        }
        return Ok(recovery.finish()?);
    }
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (tx, rx) = crossbeam_channel::bounded::<Vec<(u64, OwnedChange)>>(16);
            senders.push(tx);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("millpond-replay-{i}"))
                    .spawn_scoped(scope, move || -> Result<()> {
                        for chunk in rx {
                            for (lsn, change) in &chunk {
                                store.apply_logged(&change.as_change(), *lsn)?;
                            }
                        }
                        Ok(())
                    })
                    .expect("spawning a replay thread"),
            );
        }
        let mut chunks: Vec<Vec<(u64, OwnedChange)>> = vec![Vec::with_capacity(CHUNK); threads];
        // A worker that stopped on an error drops its receiver: sending fails, and its error
        // is reported after the join below.
        let send = |i: usize, chunk: Vec<(u64, OwnedChange)>| {
            let _ = senders[i].send(chunk);
        };
        let read = (|| -> Result<()> {
            while let Some(mut unit) = recovery.next()? {
                // Moved, not copied: the unit's changes are not needed once routed.
                for (lsn, change) in unit.take_changes() {
                    let i = change.key_group as usize % threads;
                    chunks[i].push((lsn, change));
                    if chunks[i].len() == CHUNK {
                        let full = std::mem::replace(&mut chunks[i], Vec::with_capacity(CHUNK));
                        send(i, full);
                    }
                }
            }
            Ok(())
        })();
        for (i, chunk) in chunks.into_iter().enumerate() {
            if !chunk.is_empty() {
                send(i, chunk);
            }
        }
        drop(senders);
        let mut first_error = None;
        for w in workers {
            if let Err(e) = w.join().expect("a replay thread panicked") {
                first_error.get_or_insert(e);
            }
        }
        read?;
        if let Some(e) = first_error {
            return Err(e);
        }
        // Only once every change is applied: a store that failed gets no writer.
        Ok(recovery.finish()?)
    })
}

/// The store is opened before the WAL is recovered (replay needs the store), so its change
/// sink is connected to the WAL once recovery is done.
#[derive(Default)]
struct LogOnceOpen(OnceLock<Arc<Wal>>);

impl ChangeSink for LogOnceOpen {
    fn append(&self, change: &Change<'_>) -> std::result::Result<u64, BoxError> {
        match self.0.get() {
            Some(wal) => Ok(wal.append_change(change)?),
            None => Err("the instance is not recovered yet: call Recovering::recover first".into()),
        }
    }
}

struct SharedClock(Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
}

/// Moves `dir/name` aside and deletes it (and any older one moved aside) on a background
/// thread: a crashed snapshot's sort runs can be gigabytes, which a restart should not wait
/// to free.
fn discard_dir(dir: &Path, name: &str) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("{name}.discarded-");
    if std::fs::rename(dir.join(name), dir.join(format!("{prefix}{nanos}"))).is_err() {
        // Not there, or not movable: delete it in place.
        let _ = std::fs::remove_dir_all(dir.join(name));
    }
    let dir = dir.to_owned();
    let _ = std::thread::Builder::new()
        .name("millpond-discard".into())
        .spawn(move || {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    // Best effort: what is left goes at the next open.
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        });
}

/// An exclusive lock on the data directory for the life of the instance: two processes never
/// write one WAL or one store.
struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn acquire(path: &Path) -> Result<DirLock> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                return Err(Error::Locked {
                    path: path.display().to_string(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(path)(e)),
        }
        file.set_len(0).map_err(io(path))?;
        let _ = writeln!(file, "pid {}", std::process::id());
        Ok(DirLock(file))
    }
}

fn abs(dir: &Path) -> Result<PathBuf> {
    std::path::absolute(dir).map_err(io(dir))
}
