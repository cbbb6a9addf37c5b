//! The embedded default: a WAL in local segment files, recovered and reopened in one call.

use std::path::Path;

use crate::error::Result;
use crate::reader::ReplayOutcome;
use crate::recover::recover;
use crate::segment::{LocalSegmentSink, LocalSegmentSource};
use crate::settings::{SegmentSettings, WalSettings};
use crate::writer::Wal;
use crate::OwnedChange;

/// Opens the local WAL in `dir` (creating it if needed): cuts a torn tail, replays the
/// committed changes after `after_lsn` into `apply` (0: the whole log; after a snapshot
/// restore, the snapshot's LSN), then starts a writer that continues the log.
///
/// Changes after the last commit marker are not applied, and a `Rollback` marker is written so
/// that no later replay applies them either: their source records will be consumed again from
/// the committed offsets in [`ReplayOutcome::last_commit`].
///
/// ```
/// use millpond_wal::{open_local, SegmentSettings, SourceOffset, WalSettings};
/// let dir = tempfile::tempdir().unwrap();
/// let (wal, outcome) = open_local(dir.path(), 0, WalSettings::default(), SegmentSettings::default(),
///     |_change| Ok::<(), std::io::Error>(())).unwrap();
/// assert!(outcome.last_commit.is_none());
/// let _durable = wal.commit(&[SourceOffset { topic: "t".into(), partition: 0, next_offset: 7 }]).unwrap();
/// wal.close().unwrap();
/// let (_wal, outcome) = open_local(dir.path(), 0, WalSettings::default(), SegmentSettings::default(),
///     |_change| Ok::<(), std::io::Error>(())).unwrap();
/// assert_eq!(outcome.last_commit.unwrap().offsets[0].next_offset, 7);
/// ```
pub fn open_local<E>(
    dir: impl AsRef<Path>,
    after_lsn: u64,
    wal_settings: WalSettings,
    segment_settings: SegmentSettings,
    apply: impl FnMut(&OwnedChange) -> Result<(), E>,
) -> Result<(Wal, ReplayOutcome)>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let dir = dir.as_ref();
    let sink = LocalSegmentSink::open(dir, segment_settings)?;
    let mut source = LocalSegmentSource::open(dir, after_lsn + 1)?;
    recover(sink, &mut source, after_lsn, None, wal_settings, apply)
}
