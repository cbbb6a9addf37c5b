//! Recovery: replay what a log committed, then continue it with a new writer.

use crate::committed::{Committed, CommittedUnit};
use crate::error::{Error, Result};
use crate::reader::ReplayOutcome;
use crate::record::proto;
use crate::settings::WalSettings;
use crate::sink::{TornTail, WalSink, WalSource};
use crate::writer::Wal;
use crate::OwnedChange;

/// Replays the committed changes of `source` after `after_lsn` into `apply` (0: the whole
/// log; after a snapshot restore, the snapshot's LSN), then starts a writer on `sink` that
/// continues the log. [`WalRecovery`] does the same for a caller that pulls the committed units
/// itself.
///
/// - Changes after the last commit marker are not applied, and a `Rollback` marker is written
///   so that no later replay applies them either: their source records will be consumed again
///   from the committed offsets in [`ReplayOutcome::last_commit`].
/// - `epoch`: the new writer's epoch (see [`Wal::start_with_epoch`]). `None` continues with the
///   highest epoch in the log. A takeover passes a higher one than any before, from a fencing
///   token such as a snapshot archive claim; if the log already holds a higher epoch, this
///   writer was itself taken over and the result is [`Error::Fenced`].
///
/// What opening `sink` cut off the log (a torn tail) is in [`ReplayOutcome::torn_tail`].
///
/// Connect `sink` before reading `source`, when the sink fences older writers (Pulsar's
/// exclusive producer): then nothing an older writer appends can land after the replay read it
/// and before the new writer's first batch.
pub fn recover<E>(
    sink: impl WalSink,
    source: &mut dyn WalSource,
    after_lsn: u64,
    epoch: Option<u64>,
    settings: WalSettings,
    mut apply: impl FnMut(&OwnedChange) -> Result<(), E>,
) -> Result<(Wal, ReplayOutcome)>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut recovery = WalRecovery::new(sink, source, after_lsn, epoch, settings);
    while let Some(unit) = recovery.next()? {
        for (_, change) in unit.changes() {
            apply(change).map_err(|source| Error::Apply {
                lsn: unit.point().lsn,
                source: Box::new(source),
            })?;
        }
    }
    recovery.finish()
}

/// [`recover`] in steps: pull the committed units with [`next`](Self::next) and apply them,
/// then [`finish`](Self::finish) starts the writer.
#[derive(Debug)]
pub struct WalRecovery<W, S> {
    sink: W,
    units: Committed<S>,
    cut: Option<TornTail>,
    after_lsn: u64,
    epoch: Option<u64>,
    settings: WalSettings,
}

impl<W: WalSink, S: WalSource> WalRecovery<W, S> {
    /// Recovery of the log that `source` reads from after `after_lsn`, to be continued on
    /// `sink` by a writer of `epoch`: see [`recover`].
    pub fn new(
        mut sink: W,
        source: S,
        after_lsn: u64,
        epoch: Option<u64>,
        settings: WalSettings,
    ) -> Self {
        WalRecovery {
            cut: sink.take_torn_tail(),
            sink,
            units: Committed::new(source, after_lsn),
            after_lsn,
            epoch,
            settings,
        }
    }

    /// The next committed unit to apply, `None` once the log is read.
    #[allow(clippy::should_implement_trait)] // lends its unit: `Iterator` cannot
    pub fn next(&mut self) -> Result<Option<CommittedUnit<'_>>> {
        self.units.next()
    }

    /// Starts the writer that continues the log, once every unit was pulled (otherwise
    /// [`Error::Invalid`]: the units left would never be applied, and the rollback marker
    /// would make sure of it). Returns it with what the replay did.
    pub fn finish(mut self) -> Result<(Wal, ReplayOutcome)> {
        if let Some(unit) = self.units.next()? {
            return Err(Error::Invalid {
                reason: format!(
                    "recovery finished before the log was read to its end: the unit committed \
                     at LSN {} was not applied",
                    unit.point().lsn
                ),
            });
        }
        let mut outcome = self.units.into_outcome();
        if self.cut.is_some() {
            outcome.torn_tail = self.cut;
        }
        let epoch = match self.epoch {
            None => outcome.epoch,
            Some(e) if e >= outcome.epoch => e,
            Some(e) => {
                return Err(Error::Fenced {
                    reason: format!(
                        "the log holds batches of writer epoch {}, newer than this writer's {e}",
                        outcome.epoch
                    ),
                })
            }
        };
        let wal = Wal::start_with_epoch(self.sink, outcome.next_lsn, epoch, self.settings);
        // A new epoch writes a marker at once, so that its first batch lands right after what
        // it replayed (docs/wal.md, "Writer epochs"); the rollback discards the uncommitted
        // tail.
        if outcome.uncommitted > 0 || epoch > outcome.epoch {
            let marker = proto::Record {
                body: Some(proto::record::Body::Rollback(proto::Rollback {
                    last_committed_lsn: outcome
                        .last_commit
                        .as_ref()
                        .map_or(self.after_lsn, |c| c.lsn),
                })),
            };
            wal.append_marker(&marker)?.wait()?;
        }
        Ok((wal, outcome))
    }
}
