//! [`WalReader`]: the one implementation of the log's rules (docs/wal.md, "Replay" and "Writer
//! epochs"). It pulls stored batches from a [`WalSource`] and yields, in log order, what each
//! batch and record means; recovery, replay, the snapshot writer and `millpond wal inspect` all
//! read the log through it, so they cannot disagree about what counts.
//!
//! The rules:
//! - A batch whose writer epoch is lower than that of a batch read before it is a zombie's
//!   (a writer that was taken over) and is skipped, whatever its LSNs.
//! - A batch with a higher epoch than all before starts a new writer's history. If it starts at
//!   an LSN already read, the records from there on were written by the old writer after the
//!   new one had read the log: they are superseded. They can only be uncommitted ones; a
//!   committed one is [`Error::Corrupt`], since two histories then both claim it.
//! - A batch wholly at or below the last LSN read (or the LSN a snapshot covers) is a
//!   duplicate, a resend after an ambiguous failure, and is skipped; records at or below it
//!   inside an overlapping batch are skipped too.
//! - A batch that starts after the next expected LSN is a gap: [`Error::Corrupt`].
//! - Changes count once a commit marker follows them; a rollback discards the changes read
//!   since the last marker; changes after the last marker are uncommitted.

use prost::Message;

use crate::batch::{self, BatchHeader, Decoded};
use crate::error::{Error, Result};
use crate::record::{proto, OwnedChange, SourceOffset};
use crate::sink::{StoredBatch, TornTail, WalPosition, WalSource};

/// A commit marker as read: the unit of changes before it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPoint {
    /// The marker's LSN.
    pub lsn: u64,
    /// The source offsets to resume from.
    pub offsets: Vec<SourceOffset>,
    /// Where the marker's batch is in the sink.
    pub position: WalPosition,
}

/// What reading the log found: tallies so far, and at the end the torn tail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayOutcome {
    /// The last commit marker after `after_lsn`, if any.
    pub last_commit: Option<CommitPoint>,
    /// Changes applied: those a commit marker followed.
    pub applied: u64,
    /// Changes read after the last commit marker (not applied).
    pub uncommitted: u64,
    /// Batches skipped as duplicates.
    pub duplicates: u64,
    /// Batches ignored because a writer with a higher epoch had taken the log over before
    /// them (a zombie's writes).
    pub fenced: u64,
    /// The highest writer epoch read.
    pub epoch: u64,
    /// The LSN after the last record in the log (where a writer continues).
    pub next_lsn: u64,
    /// The torn tail that ended the log, if it ended in one: cut off by the sink when
    /// [`recover`](crate::recover) opened it (bytes, position, the last LSN kept), or, for a
    /// plain replay, where the source stopped. Its batch was never acknowledged.
    pub torn_tail: Option<TornTail>,
}

/// Why a batch was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Skip {
    /// Every record in it was read already: a resend after an ambiguous failure.
    Duplicate,
    /// Written by a writer that was taken over: its epoch is below `log_epoch`, the highest
    /// read before it.
    Zombie {
        /// The highest epoch read before the batch.
        log_epoch: u64,
    },
    /// Every record in it is at or below `after_lsn`, which a snapshot covers (read before
    /// the first batch that counts; not a duplicate).
    Covered,
}

/// What the log says next, in log order.
///
/// Lending: an event borrows the reader (the batch being read, the last commit point), so
/// reading a log allocates nothing per event beyond what decoding a record does. A change is
/// handed over owned instead: [`Committed`](crate::Committed) keeps every change until its
/// commit marker, and borrowing it would cost a copy of each.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'r> {
    /// A batch accepted; its records follow as [`Event::Change`], [`Event::Commit`] and
    /// [`Event::Rollback`] (those at or below LSNs already read are left out).
    Batch {
        /// Its header: LSNs, writer epoch.
        header: &'r BatchHeader,
        /// Where it is in the sink.
        position: &'r WalPosition,
        /// Its framed size.
        bytes: usize,
    },
    /// A batch not used, and why.
    Skipped {
        /// Its header: LSNs, writer epoch.
        header: &'r BatchHeader,
        /// Where it is in the sink.
        position: &'r WalPosition,
        /// Its framed size.
        bytes: usize,
        /// Why it does not count.
        why: Skip,
    },
    /// A writer of a higher epoch took the log over at `from_lsn`: the records yielded from
    /// there on no longer count (only uncommitted changes can be among them; a commit is
    /// [`Error::Corrupt`]). The new writer's batch follows as [`Event::Batch`].
    Superseded {
        /// The first LSN of the new writer's history.
        from_lsn: u64,
        /// The new writer's epoch.
        epoch: u64,
        /// Uncommitted changes read from `from_lsn` on, which no longer count.
        discarded: u64,
    },
    /// One state change, with its LSN.
    Change {
        /// Its LSN.
        lsn: u64,
        /// The change.
        change: OwnedChange,
    },
    /// A commit marker: the changes since the last marker count.
    Commit {
        /// Its LSN.
        lsn: u64,
        /// The offsets and position it records.
        point: &'r CommitPoint,
        /// The writer's clock when it was written (ms since the epoch).
        committed_at_ms: u64,
    },
    /// A rollback marker: the changes since the last commit marker never count.
    Rollback {
        /// Its LSN.
        lsn: u64,
        /// Changes it discarded.
        discarded: u64,
    },
}

/// What [`WalReader::next`] does on the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Pull the next batch.
    Pull,
    /// Yield the accepted batch's [`Event::Batch`] (after a [`Event::Superseded`]).
    Announce,
    /// Yield the accepted batch's records.
    Records,
    /// The source ended.
    Done,
    /// An earlier call failed.
    Failed,
}

/// The batch being read.
struct Current {
    stored: StoredBatch,
    header: BatchHeader,
    /// Records of it read so far.
    read: u32,
    /// Where the next record starts in the framed bytes.
    offset: usize,
}

/// Reads a log in order and applies its rules; see the module docs. Pull events with
/// [`WalReader::next`] until it returns `None`; [`WalReader::outcome`] has the tallies.
///
/// ```
/// use millpond_wal::{open_local, Event, LocalSegmentSource, SegmentSettings, SourceOffset,
///     WalReader, WalSettings};
/// let dir = tempfile::tempdir().unwrap();
/// let (wal, _) = open_local(dir.path(), 0, WalSettings::default(), SegmentSettings::default(),
///     |_c| Ok::<(), std::io::Error>(())).unwrap();
/// wal.commit(&[SourceOffset { topic: "t".into(), partition: 0, next_offset: 7 }]).unwrap().wait().unwrap();
/// wal.close().unwrap();
///
/// let mut reader = WalReader::new(LocalSegmentSource::open(dir.path(), 1).unwrap(), 0);
/// let mut commits = Vec::new();
/// while let Some(event) = reader.next().unwrap() {
///     if let Event::Commit { lsn, point, .. } = event {
///         commits.push((lsn, point.offsets[0].next_offset));
///     }
/// }
/// assert_eq!(commits, vec![(1, 7)]);
/// assert_eq!(reader.outcome().next_lsn, 2);
/// ```
pub struct WalReader<S> {
    source: S,
    outcome: ReplayOutcome,
    step: Step,
    current: Option<Current>,
    /// Highest LSN read so far (or covered by the snapshot).
    seen: u64,
    /// Whether a batch was accepted yet (before, batches at or below `seen` are covered by
    /// the snapshot, not duplicates).
    started: bool,
    /// Highest LSN whose changes count: the snapshot's, then the last commit marker's.
    committed_upto: u64,
    /// Changes read since the last commit or rollback marker.
    pending: u64,
}

impl<S> std::fmt::Debug for WalReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("outcome", &self.outcome)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<S: WalSource> WalReader<S> {
    /// Reads `source` from after `after_lsn` (the LSN a snapshot covers, 0 for the whole log).
    pub fn new(source: S, after_lsn: u64) -> Self {
        WalReader {
            source,
            outcome: ReplayOutcome {
                next_lsn: after_lsn.saturating_add(1),
                ..Default::default()
            },
            step: Step::Pull,
            current: None,
            seen: after_lsn,
            started: false,
            committed_upto: after_lsn,
            pending: 0,
        }
    }

    /// What was read so far; once [`next`](Self::next) returned `None`, for the whole log,
    /// with the torn tail that ended it.
    pub fn outcome(&self) -> &ReplayOutcome {
        &self.outcome
    }

    /// The outcome, and the reader gone (the source with it).
    pub fn into_outcome(self) -> ReplayOutcome {
        self.outcome
    }

    /// The next event, `None` at the end of the log (and on every call after). An error
    /// (damage, a gap, conflicting writers, the source failing) ends the reading: later calls
    /// return [`Error::Invalid`].
    #[allow(clippy::should_implement_trait)] // a lending iterator: `Iterator` cannot lend
    pub fn next(&mut self) -> Result<Option<Event<'_>>> {
        match self.advance() {
            Ok(Some(what)) => Ok(Some(self.event(what))),
            Ok(None) => Ok(None),
            Err(e) => {
                self.step = Step::Failed;
                Err(e)
            }
        }
    }

    /// Moves to the next event and says which it is; [`Self::event`] then borrows it. Two
    /// steps, so that nothing borrowed is held while the reader changes.
    fn advance(&mut self) -> Result<Option<Next>> {
        loop {
            match self.step {
                Step::Done => return Ok(None),
                Step::Failed => {
                    return Err(Error::Invalid {
                        reason: "the WAL reader stopped on an earlier error".into(),
                    })
                }
                Step::Announce => {
                    self.step = Step::Records;
                    return Ok(Some(Next::Batch));
                }
                Step::Records => match self.next_record()? {
                    Some(next) => return Ok(Some(next)),
                    None => self.step = Step::Pull,
                },
                Step::Pull => {
                    self.current = None;
                    let Some(stored) = self.source.next_batch()? else {
                        self.step = Step::Done;
                        self.outcome.torn_tail = self.source.torn_tail();
                        return Ok(None);
                    };
                    return self.judge(stored).map(Some);
                }
            }
        }
    }

    /// Verifies a batch and decides what it is (the batch-level rules).
    fn judge(&mut self, stored: StoredBatch) -> Result<Next> {
        let location = || stored.position.to_string();
        let h = match batch::decode(&stored.bytes, location)? {
            // A stored batch is exactly one framed batch: trailing bytes are damage too.
            Decoded::Batch(h, _) if h.framed_len() == stored.bytes.len() => h,
            Decoded::Batch(..) => {
                return Err(Error::Corrupt {
                    what: "WAL batch (trailing bytes)",
                    location: location(),
                })
            }
            Decoded::Incomplete => {
                return Err(Error::Corrupt {
                    what: "WAL batch (incomplete)",
                    location: location(),
                })
            }
        };
        if h.last_lsn == u64::MAX {
            // Nothing could follow it: the next LSN would not exist.
            return Err(Error::Corrupt {
                what: "WAL batch header (LSN out of range)",
                location: location(),
            });
        }
        let mut superseded = None;
        if h.epoch < self.outcome.epoch {
            self.outcome.fenced += 1;
            let log_epoch = self.outcome.epoch;
            self.hold(stored, h);
            return Ok(Next::Skipped(Skip::Zombie { log_epoch }));
        }
        if h.epoch > self.outcome.epoch {
            self.outcome.epoch = h.epoch;
            if self.started && h.first_lsn <= self.seen {
                // A takeover: the new writer read the log up to `first_lsn - 1`; what the old
                // one wrote from there on was never part of the new writer's state.
                if h.first_lsn <= self.committed_upto {
                    return Err(Error::Corrupt {
                        what: "WAL (conflicting writers)",
                        location: format!(
                            "{}: writer epoch {} starts at LSN {}, but LSN {} was already \
                             committed by an older writer after the takeover",
                            location(),
                            h.epoch,
                            h.first_lsn,
                            self.committed_upto
                        ),
                    });
                }
                // The pending changes are the last LSNs read (every record after the last
                // marker is a change), so those from `first_lsn` on are the newest ones.
                let discarded = self.pending.min(self.seen + 1 - h.first_lsn);
                self.pending -= discarded;
                self.outcome.uncommitted = self.pending;
                self.seen = h.first_lsn - 1;
                self.outcome.next_lsn = h.first_lsn;
                superseded = Some(discarded);
            }
        }
        if h.last_lsn <= self.seen {
            // Already covered: by the snapshot, or a duplicate of a batch already read.
            let why = if self.started {
                self.outcome.duplicates += 1;
                Skip::Duplicate
            } else {
                Skip::Covered
            };
            self.hold(stored, h);
            return Ok(Next::Skipped(why));
        }
        // No batch may skip an LSN: not between batches, and not after what the snapshot
        // covers (a log truncated past it cannot serve that snapshot).
        if h.first_lsn > self.seen + 1 {
            return Err(Error::Corrupt {
                what: "WAL (LSN gap)",
                location: format!(
                    "{}: expected LSN {}, batch starts at {}",
                    location(),
                    self.seen + 1,
                    h.first_lsn
                ),
            });
        }
        self.started = true;
        self.hold(stored, h);
        Ok(match superseded {
            Some(discarded) => {
                self.step = Step::Announce;
                Next::Superseded {
                    from_lsn: h.first_lsn,
                    epoch: h.epoch,
                    discarded,
                }
            }
            None => {
                self.step = Step::Records;
                Next::Batch
            }
        })
    }

    fn hold(&mut self, stored: StoredBatch, header: BatchHeader) {
        self.current = Some(Current {
            stored,
            header,
            read: 0,
            offset: batch::HEADER_BYTES,
        });
    }

    /// The next record of the current batch that is not at or below an LSN already read,
    /// decoded and counted (the record-level rules); `None` after its last.
    fn next_record(&mut self) -> Result<Option<Next>> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(None);
        };
        let h = cur.header;
        let location = |position: &WalPosition| position.to_string();
        loop {
            let bytes = &cur.stored.bytes;
            if cur.read == h.count {
                if cur.offset != bytes.len() {
                    return Err(Error::Corrupt {
                        what: "WAL batch payload (bytes after the last record)",
                        location: location(&cur.stored.position),
                    });
                }
                return Ok(None);
            }
            let lsn = h.first_lsn + cur.read as u64;
            let Some((record, next)) = batch::split_record(bytes, cur.offset) else {
                return Err(Error::Corrupt {
                    what: "WAL record framing",
                    location: format!("LSN {lsn} in {}", location(&cur.stored.position)),
                });
            };
            cur.read += 1;
            cur.offset = next;
            if lsn <= self.seen {
                continue; // overlaps records already read
            }
            let bad = || Error::Corrupt {
                what: "WAL record",
                location: format!("LSN {lsn} in {}", location(&cur.stored.position)),
            };
            let body = proto::Record::decode(record)
                .map_err(|_| bad())?
                .body
                .ok_or_else(bad)?;
            self.seen = lsn;
            self.outcome.next_lsn = lsn + 1;
            return Ok(Some(match body {
                proto::record::Body::Change(c) => {
                    let change = OwnedChange::from_proto(c).ok_or_else(bad)?;
                    self.pending += 1;
                    self.outcome.uncommitted = self.pending;
                    Next::Change { lsn, change }
                }
                proto::record::Body::Commit(c) => {
                    self.outcome.applied += self.pending;
                    self.pending = 0;
                    self.outcome.uncommitted = 0;
                    self.committed_upto = lsn;
                    self.outcome.last_commit = Some(CommitPoint {
                        lsn,
                        offsets: c
                            .offsets
                            .into_iter()
                            .map(|o| SourceOffset {
                                topic: o.topic,
                                partition: o.partition,
                                next_offset: o.next_offset,
                            })
                            .collect(),
                        position: cur.stored.position.clone(),
                    });
                    Next::Commit {
                        lsn,
                        committed_at_ms: c.committed_at_ms,
                    }
                }
                proto::record::Body::Rollback(_) => {
                    let discarded = std::mem::take(&mut self.pending);
                    self.outcome.uncommitted = 0;
                    Next::Rollback { lsn, discarded }
                }
            }));
        }
    }

    /// The event `what` names, borrowing what it refers to.
    fn event(&self, what: Next) -> Event<'_> {
        // `advance` holds the batch of a `Batch` or `Skipped` and sets the last commit of a
        // `Commit`; the fallbacks below are never taken.
        match what {
            Next::Batch | Next::Skipped(_) => match &self.current {
                Some(cur) => {
                    let (header, position, bytes) =
                        (&cur.header, &cur.stored.position, cur.stored.bytes.len());
                    match what {
                        Next::Skipped(why) => Event::Skipped {
                            header,
                            position,
                            bytes,
                            why,
                        },
                        _ => Event::Batch {
                            header,
                            position,
                            bytes,
                        },
                    }
                }
                None => unreachable!("a batch event without a batch"),
            },
            Next::Superseded {
                from_lsn,
                epoch,
                discarded,
            } => Event::Superseded {
                from_lsn,
                epoch,
                discarded,
            },
            Next::Change { lsn, change } => Event::Change { lsn, change },
            Next::Commit {
                lsn,
                committed_at_ms,
            } => match &self.outcome.last_commit {
                Some(point) => Event::Commit {
                    lsn,
                    point,
                    committed_at_ms,
                },
                None => unreachable!("a commit event without a commit point"),
            },
            Next::Rollback { lsn, discarded } => Event::Rollback { lsn, discarded },
        }
    }
}

/// An [`Event`] before it borrows the reader.
enum Next {
    Batch,
    Skipped(Skip),
    Superseded {
        from_lsn: u64,
        epoch: u64,
        discarded: u64,
    },
    Change {
        lsn: u64,
        change: OwnedChange,
    },
    Commit {
        lsn: u64,
        committed_at_ms: u64,
    },
    Rollback {
        lsn: u64,
        discarded: u64,
    },
}
