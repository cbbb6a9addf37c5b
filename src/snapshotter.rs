//! The background thread of an instance: writes a snapshot every `snapshot_interval` (or on
//! request), truncates the WAL below it and collects old snapshots, and refreshes the metrics
//! gauges. Snapshots are built from the WAL, so the store is never paused for one.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::metrics::{self, Reporter};
use crate::settings::Settings;
use crate::snapshot::{SnapshotBase, SnapshotReport, SnapshotWriter};
use crate::state::Store;
use crate::wal::{UpTo, Wal};
use crate::wal_location::WalLocation;

pub(crate) enum Request {
    Snapshot(Sender<Result<Option<SnapshotReport>>>),
    Stop,
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
    /// The LSN of the last snapshot (what recovery would replay from).
    pub(crate) snapshot_lsn: std::sync::atomic::AtomicU64,
    pub(crate) last_snapshot: Mutex<Option<SnapshotReport>>,
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
    pub(crate) writer: SnapshotWriter,
    pub(crate) store: Store,
    pub(crate) wal: Arc<Wal>,
    pub(crate) location: WalLocation,
    pub(crate) settings: Settings,
    pub(crate) shared: Arc<Shared>,
    /// The snapshot this instance restored, until its files are all local: its files may not
    /// be collected before, since reads go to the archive until then.
    pub(crate) base: Option<Arc<SnapshotBase>>,
}

impl Snapshotter {
    pub(crate) fn spawn(self, requests: Receiver<Request>) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("millpond-snapshot".into())
            .spawn(move || self.run(requests))
            .expect("spawning the snapshot thread")
    }

    fn run(mut self, requests: Receiver<Request>) {
        let mut reporter = Reporter::default();
        let tick = self
            .settings
            .metrics_interval
            .max(Duration::from_millis(10));
        let mut next_snapshot = self.settings.snapshot_interval.map(|i| Instant::now() + i);
        loop {
            let wait = match next_snapshot {
                Some(at) => tick.min(at.saturating_duration_since(Instant::now())),
                None => tick,
            };
            match requests.recv_timeout(wait) {
                Ok(Request::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return
                }
                Ok(Request::Snapshot(reply)) => {
                    let _ = reply.send(self.snapshot());
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            if next_snapshot.is_some_and(|at| Instant::now() >= at) {
                // A failed background snapshot is retried at the next interval, unless the
                // instance was fenced or failed (then `snapshot` refuses).
                let _ = self.snapshot();
                next_snapshot = self.settings.snapshot_interval.map(|i| Instant::now() + i);
            }
            reporter.report(
                &self.store.stats(),
                &self.wal.stats(),
                self.shared
                    .snapshot_lsn
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }

    /// Writes the next snapshot from what the WAL committed since the last one. `None` if
    /// nothing was committed since.
    fn snapshot(&mut self) -> Result<Option<SnapshotReport>> {
        self.shared.check()?;
        let span = tracing::info_span!("millpond.snapshot", parent_lsn = self.writer.parent().lsn);
        let _enter = span.enter();
        let started = Instant::now();
        let result = self.write_snapshot();
        match &result {
            Ok(Some(report)) => {
                let m = &report.manifest;
                ::metrics::histogram!(metrics::SNAPSHOT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                ::metrics::counter!(metrics::SNAPSHOT_BYTES).increment(report.bytes_written);
                tracing::info!(
                    sequence = m.sequence,
                    lsn = m.lsn,
                    changes = report.changes,
                    files_written = report.files_written,
                    bytes_written = report.bytes_written,
                    seconds = report.seconds,
                    "snapshot committed"
                );
            }
            Ok(None) => tracing::debug!("nothing committed since the last snapshot"),
            Err(e) => {
                ::metrics::counter!(metrics::SNAPSHOT_FAILURES).increment(1);
                tracing::warn!(error = %e, "snapshot failed");
                if matches!(e, Error::Fenced { .. }) {
                    self.shared.fail(e);
                }
            }
        }
        result
    }

    fn write_snapshot(&mut self) -> Result<Option<SnapshotReport>> {
        // What is durable now, and no further: the writer may append faster than a snapshot
        // reads (Pulsar's source would otherwise follow the log's end for ever).
        let last_lsn = self.wal.durable_below().saturating_sub(1);
        let mut source = UpTo::new(self.location.source(self.writer.parent())?, last_lsn);
        let report = self
            .writer
            .snapshot_from_wal(&mut source, &self.store.schemas())?;
        drop(source);
        let Some(report) = report else {
            return Ok(None);
        };
        let lsn = report.manifest.lsn;
        self.shared
            .snapshot_lsn
            .store(lsn, std::sync::atomic::Ordering::Relaxed);
        *self.shared.last_snapshot.lock() = Some(report.clone());
        // The batch holding the snapshot's commit marker stays: the next recovery starts
        // reading there.
        self.wal.truncate_below(lsn);
        if self.base.as_ref().is_some_and(|b| !b.is_local()) {
            tracing::info!("old snapshots kept until the restored one is downloaded");
            return Ok(Some(report));
        }
        self.base = None;
        // Safe beside other writers' snapshots in progress (GC keeps the files of live
        // pending markers); this writer's own is committed by now.
        if let Err(e) = self.writer.archive().gc(
            // The setting keeps at least one whatever its value; `gc` refuses 0.
            self.settings.snapshot_retain.max(1),
            self.settings.snapshot_gc_grace,
        ) {
            // Old snapshots stay a little longer; the next snapshot retries.
            tracing::warn!(error = %e, "collecting old snapshots failed");
        }
        Ok(Some(report))
    }
}
