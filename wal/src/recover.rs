//! Recovery: replay what a log committed, then continue it with a new writer.

use crate::error::{Error, Result};
use crate::record::proto;
use crate::replay::{replay, ReplayOutcome};
use crate::settings::WalSettings;
use crate::sink::{WalSink, WalSource};
use crate::writer::Wal;
use crate::OwnedChange;

/// Replays the committed changes of `source` after `after_lsn` into `apply` (0: the whole
/// log; after a snapshot restore, the snapshot's LSN), then starts a writer on `sink` that
/// continues the log.
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
    apply: impl FnMut(&OwnedChange) -> Result<(), E>,
) -> Result<(Wal, ReplayOutcome)>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut sink = sink;
    let cut = sink.take_torn_tail();
    let mut outcome = replay(source, after_lsn, apply)?;
    if cut.is_some() {
        outcome.torn_tail = cut;
    }
    let epoch = match epoch {
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
    let wal = Wal::start_with_epoch(sink, outcome.next_lsn, epoch, settings);
    // A new epoch writes a marker at once, so that its first batch lands right after what it
    // replayed (see `replay`, takeovers); the rollback discards the uncommitted tail.
    if outcome.uncommitted > 0 || epoch > outcome.epoch {
        let marker = proto::Record {
            body: Some(proto::record::Body::Rollback(proto::Rollback {
                last_committed_lsn: outcome.last_commit.as_ref().map_or(after_lsn, |c| c.lsn),
            })),
        };
        wal.append_marker(&marker)?.wait()?;
    }
    Ok((wal, outcome))
}
