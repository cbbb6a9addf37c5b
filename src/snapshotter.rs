//! The background thread of an instance: starts a snapshot when a trigger holds (WAL records
//! or bytes since the last snapshot, or time) or on request, truncates the WAL below it and
//! collects old snapshots, and refreshes the metrics gauges. Snapshots are built from the
//! WAL, so the store is never paused for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::state::Clock;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::lower_tiers::LowerTiers;
use crate::metrics::{self, Reporter, SnapshotLag};
use crate::settings::Settings;
use crate::snapshot::compaction::{compact, debt, pick};
use crate::snapshot::{Archive, SnapshotReport, SnapshotWriter};
use crate::state::Store;
use crate::wal::{StoredBatch, UpTo, Wal, WalSource};
use crate::wal_location::WalLocation;

/// How often the snapshot thread checks the triggers (docs/design/incremental-snapshots.md
/// §7.2): the tail past a trigger grows by at most this long's writes before a snapshot
/// starts.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// How long after a failed install of the latest manifest below the store it is tried again
/// (the reads stay correct meanwhile; only the disk holds more).
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// The longest wait after failed snapshots before the next automatic one (the wait doubles
/// from 2 s), so that an unreachable archive is not retried with a whole WAL read each second.
const RETRY_MAX: Duration = Duration::from_secs(64);

/// Why a snapshot started: logged with it, and the `trigger` label of
/// [`metrics::SNAPSHOTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// `Settings::snapshot_after_changes`.
    Changes,
    /// `Settings::snapshot_after_wal_bytes`.
    Bytes,
    /// `Settings::snapshot_interval_max`.
    Interval,
    /// `Millpond::snapshot_now`.
    Requested,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Changes => "changes",
            Trigger::Bytes => "bytes",
            Trigger::Interval => "interval",
            Trigger::Requested => "requested",
        }
    }
}

/// What recovery replayed past the restored snapshot: the WAL writer started after it and
/// knows none of it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Recovered {
    /// The LSN of the restored snapshot.
    pub(crate) snapshot_lsn: u64,
    /// The last commit marker replayed (0: none).
    pub(crate) commit_lsn: u64,
    /// Whether a replayed commit covered a state change.
    pub(crate) changed: bool,
    /// Framed bytes of the batches replayed (from the one holding the snapshot's LSN).
    pub(crate) bytes: u64,
}

/// A [`WalSource`] that counts the bytes of the batches read through it: what recovery
/// replayed, for [`Recovered::bytes`].
pub(crate) struct Counted<S> {
    pub(crate) source: S,
    pub(crate) bytes: u64,
}

impl<S: WalSource> WalSource for Counted<S> {
    fn next_batch(&mut self) -> crate::wal::Result<Option<StoredBatch>> {
        let batch = self.source.next_batch()?;
        self.bytes += batch.as_ref().map_or(0, |b| b.bytes.len() as u64);
        Ok(batch)
    }

    fn torn_tail(&self) -> Option<crate::wal::TornTail> {
        self.source.torn_tail()
    }
}

/// The snapshot thread's memory of when snapshots started, by the instance's clock.
struct Schedule {
    /// When the last snapshot started, committed or not (the floor counts from it).
    last_started_ms: Option<u64>,
    /// When the last snapshot that committed started (the instance's recovery before the
    /// first): the interval and the lag in seconds count from it.
    covered_since_ms: u64,
    /// Snapshots failed in a row.
    failures: u32,
}

impl Schedule {
    /// How long after `last_started_ms` the next automatic snapshot may start.
    fn wait(&self, floor: Duration) -> Duration {
        let retry = match self.failures {
            0 => Duration::ZERO,
            n => RETRY_MAX.min(Duration::from_secs(1 << n.min(6))),
        };
        floor.max(retry)
    }
}

pub(crate) enum Request {
    Snapshot(Reply),
    Stop,
}

/// Where the answer to a requested snapshot goes: a blocking caller or an awaiting one.
pub(crate) enum Reply {
    Blocking(Sender<Result<Option<SnapshotReport>>>),
    Async(tokio::sync::oneshot::Sender<Result<Option<SnapshotReport>>>),
}

impl Reply {
    fn send(self, r: Result<Option<SnapshotReport>>) {
        // A caller that went away (a dropped future) needs no answer.
        let _ = match self {
            Reply::Blocking(tx) => tx.send(r).map_err(|_| ()),
            Reply::Async(tx) => tx.send(r).map_err(|_| ()),
        };
    }
}

/// The first failure of an instance; every later commit reports it.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Fenced(String),
    Failed(String),
}

impl Failure {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            Failure::Fenced(reason) => Error::Fenced {
                reason: reason.clone(),
            },
            Failure::Failed(reason) => Error::Failed {
                reason: reason.clone(),
            },
        }
    }
}

pub(crate) struct Shared {
    pub(crate) failure: Mutex<Option<Failure>>,
    pub(crate) last_snapshot: Mutex<Option<SnapshotReport>>,
    pub(crate) compactions: Mutex<CompactionStats>,
}

/// What this instance's compaction thread committed since the instance opened
/// ([`Millpond::compaction_stats`](crate::Millpond::compaction_stats)).
#[derive(Debug, Clone, Default)]
pub struct CompactionStats {
    /// Jobs committed.
    pub jobs: u64,
    /// Bytes of the runs they merged.
    pub bytes_read: u64,
    /// Bytes of the runs they wrote: with the snapshots' delta bytes, what compaction adds to
    /// the bytes uploaded (its write amplification is this over those).
    pub bytes_written: u64,
    /// Seconds spent in them, start to commit.
    pub seconds: f64,
    /// Keys from which they dropped expired data (docs/snapshot.md, "Expired data").
    pub expired_keys: u64,
    /// The last job committed.
    pub last: Option<crate::snapshot::CompactionReport>,
}

impl Shared {
    pub(crate) fn fail(&self, e: &Error) {
        let mut f = self.failure.lock();
        if f.is_none() {
            *f = Some(match e {
                Error::Fenced { reason } => Failure::Fenced(reason.clone()),
                e => Failure::Failed(e.to_string()),
            });
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        match &*self.failure.lock() {
            Some(f) => Err(f.to_error()),
            None => Ok(()),
        }
    }
}

pub(crate) struct Snapshotter {
    /// Shared with the compaction thread, which takes it only to commit.
    pub(crate) writer: Arc<Mutex<SnapshotWriter>>,
    pub(crate) store: Store,
    pub(crate) wal: Arc<Wal>,
    pub(crate) location: WalLocation,
    pub(crate) settings: Settings,
    pub(crate) shared: Arc<Shared>,
    /// The runs the store reads below redb, and the cold tier's rotation.
    pub(crate) lower: LowerTiers,
    /// A snapshot committed since the last archive GC: collect once every file the store
    /// reads is local (until then some reads go to the archive).
    pub(crate) gc_pending: bool,
    /// When installing the latest manifest last failed: retried after [`REFRESH_RETRY`].
    pub(crate) refresh_failed: Option<Instant>,
    /// The instance's clock: the triggers' time.
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) recovered: Recovered,
}

impl Snapshotter {
    pub(crate) fn spawn(self, requests: Receiver<Request>) -> JoinHandle<()> {
        // Read here, not on the new thread: the lag counts from the recovery, however late
        // the thread gets to run.
        let schedule = Schedule {
            last_started_ms: None,
            covered_since_ms: self.clock.now_ms(),
            failures: 0,
        };
        std::thread::Builder::new()
            .name("millpond-snapshot".into())
            .spawn(move || {
                let compactor = self.settings.compaction.clone().map(|settings| {
                    let archive = self.writer.lock().archive().clone();
                    Compactor {
                        writer: self.writer.clone(),
                        archive,
                        settings,
                        snapshot: self.settings.snapshot.clone(),
                        shared: self.shared.clone(),
                        stop: Arc::new(AtomicBool::new(false)),
                    }
                    .spawn()
                });
                self.run(requests, schedule, compactor.as_ref().map(|c| &c.wake));
                if let Some(c) = compactor {
                    c.stop();
                }
            })
            .expect("spawning the snapshot thread")
    }

    fn run(
        mut self,
        requests: Receiver<Request>,
        mut schedule: Schedule,
        compaction: Option<&Sender<()>>,
    ) {
        let mut reporter = Reporter::default();
        let report_every = self
            .settings
            .metrics_interval
            .max(Duration::from_millis(10));
        let mut next_report = Instant::now();
        loop {
            // Real time paces the checks; what they decide is by the instance's clock.
            let wait = CHECK_EVERY.min(next_report.saturating_duration_since(Instant::now()));
            match requests.recv_timeout(wait) {
                Ok(Request::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return
                }
                Ok(Request::Snapshot(reply)) => {
                    let r = self.snapshot(Trigger::Requested, &mut schedule);
                    if let (Ok(Some(_)), Some(c)) = (&r, compaction) {
                        let _ = c.try_send(());
                    }
                    reply.send(r);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            if let (true, Some(c)) = (self.check(&mut schedule), compaction) {
                let _ = c.try_send(());
            }
            if Instant::now() >= next_report {
                reporter.report(&self.store.stats(), &self.wal.stats());
                next_report = Instant::now() + report_every;
            }
        }
    }

    /// Starts a snapshot if a trigger holds, then reports the lag. A failed snapshot is
    /// retried by the next check that finds a trigger holding, after the floor and the
    /// failures' wait, unless the instance was fenced or failed. Returns whether a snapshot
    /// committed.
    fn check(&mut self, schedule: &mut Schedule) -> bool {
        // One reading of the clock and the WAL per check: the gauges show what it decided on.
        let now = self.clock.now_ms();
        let mut lag = self.lag(schedule, now);
        let mut committed = false;
        if self.shared.check().is_ok() {
            if let Some(trigger) = self.due(schedule, now, &lag) {
                if let Ok(Some(_)) = self.snapshot(trigger, schedule) {
                    lag = self.lag(schedule, now);
                    committed = true;
                }
            }
        }
        metrics::report_snapshot_lag(&lag);
        if self.shared.check().is_ok() {
            let archive = self.writer.lock().archive().clone();
            self.refresh_lower_tiers(&archive);
            self.collect_garbage(&archive);
        }
        committed
    }

    /// Which trigger holds now, if a snapshot may start. Nothing committed since the last
    /// snapshot: none (no empty snapshots). Only offsets committed, no state changed: only
    /// the interval, and the snapshot is a manifest with no new data file, which moves the
    /// offsets and lets the WAL be truncated.
    fn due(&self, schedule: &Schedule, now: u64, lag: &SnapshotLag) -> Option<Trigger> {
        let parent = self.writer.lock().parent().lsn;
        let wal = self.wal.stats();
        let r = &self.recovered;
        let recovered_change = if r.changed { r.commit_lsn } else { 0 };
        // Durable commits only: a snapshot reads the WAL up to what is durable.
        if wal.last_commit_lsn.max(r.commit_lsn) <= parent {
            return None;
        }
        let changed = wal.last_committed_change_lsn.max(recovered_change) > parent;
        if let Some(started) = schedule.last_started_ms {
            let wait = schedule.wait(self.settings.snapshot_interval_min);
            if u128::from(now.saturating_sub(started)) < wait.as_millis() {
                return None;
            }
        }
        let s = &self.settings;
        if changed && lag.records >= s.snapshot_after_changes {
            return Some(Trigger::Changes);
        }
        if changed && lag.bytes >= s.snapshot_after_wal_bytes {
            return Some(Trigger::Bytes);
        }
        let since = now.saturating_sub(schedule.covered_since_ms);
        match s.snapshot_interval_max {
            Some(max) if u128::from(since) >= max.as_millis() => Some(Trigger::Interval),
            _ => None,
        }
    }

    /// What the WAL holds past the last snapshot.
    fn lag(&self, schedule: &Schedule, now: u64) -> SnapshotLag {
        let parent = self.writer.lock().parent().lsn;
        // Until this instance's first snapshot, the tail includes what recovery replayed,
        // which this writer did not write.
        let replayed = if parent == self.recovered.snapshot_lsn {
            self.recovered.bytes
        } else {
            0
        };
        SnapshotLag {
            records: self.wal.next_lsn().saturating_sub(parent + 1),
            bytes: self.wal.bytes_after(parent) + replayed,
            seconds: now.saturating_sub(schedule.covered_since_ms) as f64 / 1000.0,
        }
    }

    /// Writes the next snapshot from what the WAL committed since the last one. `None` if
    /// nothing was committed since.
    fn snapshot(
        &mut self,
        trigger: Trigger,
        schedule: &mut Schedule,
    ) -> Result<Option<SnapshotReport>> {
        self.shared.check()?;
        let span = tracing::info_span!(
            "millpond.snapshot",
            parent_lsn = self.writer.lock().parent().lsn,
            trigger = trigger.as_str()
        );
        let _enter = span.enter();
        let started = Instant::now();
        let started_ms = self.clock.now_ms();
        schedule.last_started_ms = Some(started_ms);
        let result = self.write_snapshot(started_ms);
        match &result {
            Ok(Some(report)) => {
                schedule.covered_since_ms = started_ms;
                schedule.failures = 0;
                let m = &report.manifest;
                ::metrics::histogram!(metrics::SNAPSHOT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                ::metrics::counter!(metrics::SNAPSHOT_BYTES).increment(report.bytes_written);
                ::metrics::histogram!(metrics::SNAPSHOT_DELTA_BYTES)
                    .record(report.bytes_written as f64);
                ::metrics::counter!(metrics::SNAPSHOTS, "trigger" => trigger.as_str()).increment(1);
                tracing::info!(
                    trigger = trigger.as_str(),
                    sequence = m.sequence,
                    lsn = m.lsn,
                    changes = report.changes,
                    files_written = report.files_written,
                    bytes_written = report.bytes_written,
                    seconds = report.seconds,
                    "snapshot committed"
                );
            }
            Ok(None) => {
                schedule.failures = 0;
                tracing::debug!("nothing committed since the last snapshot");
            }
            Err(e) => {
                schedule.failures = schedule.failures.saturating_add(1);
                ::metrics::counter!(metrics::SNAPSHOT_FAILURES).increment(1);
                tracing::warn!(error = %e, "snapshot failed");
                if matches!(e, Error::Fenced { .. }) {
                    self.shared.fail(e);
                }
            }
        }
        result
    }

    /// `captured_at_ms`: the clock read before the WAL's end is fixed below, which the
    /// manifest keeps as its TTL horizon's time.
    fn write_snapshot(&mut self, captured_at_ms: u64) -> Result<Option<SnapshotReport>> {
        // What is durable now, and no further: the writer may append faster than a snapshot
        // reads (Pulsar's source would otherwise follow the log's end for ever).
        let last_lsn = self.wal.durable_below().saturating_sub(1);
        let mut writer = self.writer.lock();
        let mut source = UpTo::new(self.location.source(writer.parent())?, last_lsn);
        let report = writer.snapshot_from_wal_captured(
            &mut source,
            &self.store.schemas(),
            captured_at_ms,
        )?;
        drop(source);
        let archive = writer.archive().clone();
        drop(writer);
        let Some(report) = report else {
            return Ok(None);
        };
        let lsn = report.manifest.lsn;
        *self.shared.last_snapshot.lock() = Some(report.clone());
        // The batch holding the snapshot's commit marker stays: the next recovery starts
        // reading there.
        self.wal.truncate_below(lsn);
        self.refresh_lower_tiers(&archive);
        self.gc_pending = true;
        self.collect_garbage(&archive);
        Ok(Some(report))
    }

    /// Installs the writer's latest manifest (a snapshot's or a compaction's) below the
    /// store, deletes the sealed cold file it covers and rotates the cold tier
    /// ([`LowerTiers::refresh`]). A failure leaves the tiers as they were (reads stay
    /// correct, the disk holds more) and is retried at the next check.
    fn refresh_lower_tiers(&mut self, archive: &Archive) {
        if self
            .refresh_failed
            .is_some_and(|at| at.elapsed() < REFRESH_RETRY)
        {
            return;
        }
        let manifest = {
            let writer = self.writer.lock();
            let installed = self.lower.base.as_ref().map(|b| b.manifest().id.as_str());
            if installed == Some(writer.parent().id.as_str()) && self.lower.sealed_below.is_some() {
                return;
            }
            writer.parent().clone()
        };
        match self
            .lower
            .refresh(archive, &manifest, &self.store, &self.wal)
        {
            Ok(()) => self.refresh_failed = None,
            Err(e) => {
                self.refresh_failed = Some(Instant::now());
                tracing::warn!(error = %e, "installing the latest snapshot below the store failed");
            }
        }
    }

    /// Deletes old snapshots from the archive once a snapshot committed since the last time
    /// and every file the store reads is local.
    fn collect_garbage(&mut self, archive: &Archive) {
        if !self.gc_pending {
            return;
        }
        if !self.lower.is_local() {
            tracing::debug!("old snapshots kept until the files the store reads are local");
            return;
        }
        self.gc_pending = false;
        // Safe beside other writers' snapshots in progress (GC keeps the files of live
        // pending markers); this writer's own is committed by now.
        if let Err(e) = archive.gc(
            // The setting keeps at least one whatever its value; `gc` refuses 0.
            self.settings.snapshot_retain.max(1),
            self.settings.snapshot_gc_grace,
        ) {
            // Old snapshots stay a little longer; the next snapshot retries.
            tracing::warn!(error = %e, "collecting old snapshots failed");
        }
    }
}

/// The compaction thread of an instance: after each snapshot commits (and every few
/// seconds), runs the jobs that are due one at a time (docs/snapshot.md, "Compaction"), at a
/// lower CPU priority than the job's own threads. It takes the snapshot writer only to
/// commit, so snapshots never wait for a merge.
struct Compactor {
    writer: Arc<Mutex<SnapshotWriter>>,
    archive: Archive,
    settings: crate::snapshot::CompactionSettings,
    snapshot: crate::snapshot::SnapshotSettings,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

/// A running compaction thread.
struct CompactorHandle {
    wake: Sender<()>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl CompactorHandle {
    /// Stops the thread: a job in progress is cancelled and nothing of it commits.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.wake);
        let _ = self.thread.join();
    }
}

/// How often the compaction thread looks for due jobs without being woken.
const COMPACTION_CHECK_EVERY: Duration = Duration::from_secs(5);

impl Compactor {
    fn spawn(self) -> CompactorHandle {
        let (wake, woken) = crossbeam_channel::bounded(1);
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name("millpond-compaction".into())
            .spawn(move || self.run(woken))
            .expect("spawning the compaction thread");
        CompactorHandle { wake, stop, thread }
    }

    fn run(self, woken: Receiver<()>) {
        // Best effort: a merge should yield the CPU to the job. SAFETY: setpriority with the
        // calling thread's id changes only this thread's nice value.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
        }
        loop {
            if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
                woken.recv_timeout(COMPACTION_CHECK_EVERY)
            {
                return;
            }
            while !self.stop.load(Ordering::Relaxed) && self.shared.check().is_ok() {
                let parent = self.writer.lock().parent().clone();
                let owed = debt(&parent, &self.settings);
                ::metrics::gauge!(metrics::COMPACTION_DEBT_BYTES).set(owed.bytes as f64);
                ::metrics::gauge!(metrics::SNAPSHOT_RUNS_MAX).set(owed.max_runs as f64);
                let Some(job) = pick(&parent, &self.settings) else {
                    break;
                };
                let kind = job.kind;
                let started = Instant::now();
                let horizon = self.settings.ttl_horizon_ms(&parent);
                let result = compact(
                    &self.archive,
                    &parent,
                    job,
                    horizon,
                    &self.snapshot,
                    &self.stop,
                )
                .and_then(|output| self.writer.lock().commit_compaction(output));
                match result {
                    Ok(report) => {
                        {
                            let mut c = self.shared.compactions.lock();
                            c.jobs += 1;
                            c.bytes_read += report.bytes_read;
                            c.bytes_written += report.bytes_written;
                            c.seconds += report.seconds;
                            c.expired_keys += report.expired_keys;
                            c.last = Some(report.clone());
                        }
                        ::metrics::counter!(metrics::COMPACTION_BYTES)
                            .increment(report.bytes_written);
                        ::metrics::counter!(metrics::COMPACTION_EXPIRED_KEYS)
                            .increment(report.expired_keys);
                        ::metrics::histogram!(metrics::COMPACTION_SECONDS)
                            .record(started.elapsed().as_secs_f64());
                        tracing::info!(
                            kind = ?kind,
                            sequence = report.manifest.sequence,
                            runs_in = report.runs_in,
                            bytes_read = report.bytes_read,
                            bytes_written = report.bytes_written,
                            expired_keys = report.expired_keys,
                            seconds = report.seconds,
                            "compaction committed"
                        );
                    }
                    // Its inputs changed under it: pick again from the new manifest.
                    Err(crate::snapshot::Error::Conflict { .. }) => {}
                    Err(crate::snapshot::Error::Cancelled) => return,
                    Err(e @ crate::snapshot::Error::Fenced { .. }) => {
                        let e = Error::from(e);
                        tracing::warn!(error = %e, "compaction fenced");
                        self.shared.fail(&e);
                        return;
                    }
                    Err(e) => {
                        // Retried when the next snapshot commits.
                        tracing::warn!(error = %e, "compaction failed");
                        break;
                    }
                }
            }
        }
    }
}
