//! [`Committed`]: the log's committed units, one at a time. It holds the changes a
//! [`WalReader`] yields until their commit marker follows, drops them on a rollback or a
//! takeover, and hands each unit over whole: what replay applies, what a snapshot gathers.

use crate::error::Result;
use crate::reader::{CommitPoint, Event, ReplayOutcome, WalReader};
use crate::record::OwnedChange;
use crate::sink::WalSource;

/// The changes of one committed unit, in log order with their LSNs, and the commit marker
/// that ends it. Borrowed from [`Committed`] until its next call.
#[derive(Debug)]
pub struct CommittedUnit<'a> {
    changes: &'a mut Vec<(u64, OwnedChange)>,
    point: &'a CommitPoint,
    committed_at_ms: u64,
}

impl<'a> CommittedUnit<'a> {
    /// The unit's changes, with their LSNs, in log order.
    pub fn changes(&self) -> &[(u64, OwnedChange)] {
        self.changes
    }

    /// Moves the changes out (for a caller that hands them on, to other threads say, without
    /// copying them); [`changes`](Self::changes) is empty afterwards.
    pub fn take_changes(&mut self) -> std::vec::Drain<'_, (u64, OwnedChange)> {
        self.changes.drain(..)
    }

    /// The commit marker: its LSN, source offsets and position.
    pub fn point(&self) -> &'a CommitPoint {
        self.point
    }

    /// The writer's clock when the marker was written (ms since the epoch).
    pub fn committed_at_ms(&self) -> u64 {
        self.committed_at_ms
    }
}

/// Reads a log's committed units in order: see the module docs.
///
/// ```
/// use millpond_wal::{open_local, Committed, LocalSegmentSource, SegmentSettings, SourceOffset,
///     WalSettings};
/// use millpond_state::{Change, ChangeOp, StateKind};
/// let dir = tempfile::tempdir().unwrap();
/// let (wal, _) = open_local(dir.path(), 0, WalSettings::default(), SegmentSettings::default(),
///     |_c| Ok::<(), std::io::Error>(())).unwrap();
/// let put = |key: &[u8]| wal.append_change(&Change { state: "s", kind: StateKind::Value,
///     key_group: 0, key, op: ChangeOp::Put { value: b"v", expires_at_ms: 0 } }).unwrap();
/// put(b"a");
/// put(b"b");
/// wal.commit(&[SourceOffset { topic: "t".into(), partition: 0, next_offset: 2 }]).unwrap().wait().unwrap();
/// put(b"c"); // never committed
/// wal.close().unwrap();
///
/// let mut units = Committed::new(LocalSegmentSource::open(dir.path(), 1).unwrap(), 0);
/// let unit = units.next().unwrap().unwrap();
/// let lsns: Vec<u64> = unit.changes().iter().map(|(lsn, _)| *lsn).collect();
/// assert_eq!((lsns, unit.point().lsn), (vec![1, 2], 3));
/// assert!(units.next().unwrap().is_none());
/// assert_eq!(units.outcome().uncommitted, 1);
/// ```
#[derive(Debug)]
pub struct Committed<S> {
    reader: WalReader<S>,
    /// Changes read since the last marker; after a unit was handed out, its changes.
    pending: Vec<(u64, OwnedChange)>,
    handed_out: bool,
}

impl<S: WalSource> Committed<S> {
    /// Reads `source` from after `after_lsn` (the LSN a snapshot covers, 0 for the whole log).
    pub fn new(source: S, after_lsn: u64) -> Self {
        Committed {
            reader: WalReader::new(source, after_lsn),
            pending: Vec::new(),
            handed_out: false,
        }
    }

    /// The next committed unit, `None` at the end of the log. An error ends the reading
    /// (see [`WalReader::next`]).
    #[allow(clippy::should_implement_trait)] // lends its unit: `Iterator` cannot
    pub fn next(&mut self) -> Result<Option<CommittedUnit<'_>>> {
        if std::mem::take(&mut self.handed_out) {
            self.pending.clear();
        }
        let committed_at_ms = loop {
            match self.reader.next()? {
                None => return Ok(None),
                Some(Event::Change { lsn, change }) => self.pending.push((lsn, change)),
                Some(Event::Commit {
                    committed_at_ms, ..
                }) => break committed_at_ms,
                Some(Event::Rollback { .. }) => self.pending.clear(),
                Some(Event::Superseded { from_lsn, .. }) => {
                    self.pending.retain(|(lsn, _)| *lsn < from_lsn)
                }
                Some(_) => {}
            }
        };
        self.handed_out = true;
        // Fetched again rather than kept from the event: a borrow returned from inside the
        // loop would hold the reader for every turn of it.
        let point = self
            .reader
            .outcome()
            .last_commit
            .as_ref()
            .expect("a commit event sets the last commit point");
        Ok(Some(CommittedUnit {
            changes: &mut self.pending,
            point,
            committed_at_ms,
        }))
    }

    /// What was read so far (see [`WalReader::outcome`]).
    pub fn outcome(&self) -> &ReplayOutcome {
        self.reader.outcome()
    }

    /// The outcome, and the reader gone (the source with it).
    pub fn into_outcome(self) -> ReplayOutcome {
        self.reader.into_outcome()
    }
}
