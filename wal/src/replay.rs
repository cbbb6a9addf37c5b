//! Replay: read batches in order, verify them, and apply the changes of every committed unit.
//!
//! Changes count only once a commit marker after them is read: changes after the last marker
//! belong to source records whose offsets were never committed, so the consumer will process
//! those records again. A `Rollback` record (written when a log is reopened) discards the
//! uncommitted changes before it. Batches wholly at or below the last LSN seen are duplicates
//! (a resend after an ambiguous failure) and are skipped; a gap in LSNs is corruption.
//!
//! Writer epochs (docs/wal.md, "Writer epochs"): a batch whose epoch is lower than that of a
//! batch read before it comes from a writer that was taken over (a zombie) and is ignored. A
//! batch with a higher epoch than all before starts a new writer's history: if it starts at an
//! LSN already read, the records from there on were written by the old writer after the new
//! one had read the log, so they are dropped (they can only be uncommitted ones; a committed
//! one is reported as corruption, since two histories then both claim it).

use prost::Message;

use crate::batch::{self, Decoded};
use crate::error::{Error, Result};
use crate::record::{proto, OwnedChange, SourceOffset};
use crate::sink::{TornTail, WalPosition, WalSource};

/// The last commit marker that replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPoint {
    /// The marker's LSN.
    pub lsn: u64,
    /// The source offsets to resume from.
    pub offsets: Vec<SourceOffset>,
    /// Where the marker's batch is in the sink.
    pub position: WalPosition,
}

/// What replay did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayOutcome {
    /// The last commit marker after `after_lsn`, if any.
    pub last_commit: Option<CommitPoint>,
    /// Changes applied.
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

/// Replays `source` from after `after_lsn` (the LSN a snapshot covers, 0 for the whole log),
/// calling `apply` for each committed change in order.
pub fn replay<E>(
    source: &mut dyn WalSource,
    after_lsn: u64,
    mut apply: impl FnMut(&OwnedChange) -> Result<(), E>,
) -> Result<ReplayOutcome>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut out = ReplayOutcome {
        next_lsn: after_lsn + 1,
        ..Default::default()
    };
    // Highest LSN read so far (or covered by the snapshot).
    let mut seen = after_lsn;
    let mut started = false;
    // Read but not yet committed, with their LSNs.
    let mut pending: Vec<(u64, OwnedChange)> = Vec::new();
    // Highest LSN whose changes count (the snapshot's, then the last commit applied).
    let mut applied_upto = after_lsn;
    while let Some(stored) = source.next_batch()? {
        let location = || format!("{:?}", stored.position);
        let (h, payload) = match batch::decode(&stored.bytes, location)? {
            // A stored batch is exactly one framed batch: trailing bytes are damage too.
            Decoded::Batch(h, p) if h.framed_len() == stored.bytes.len() => (h, p),
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
        if h.epoch < out.epoch {
            out.fenced += 1;
            continue;
        }
        if h.epoch > out.epoch {
            out.epoch = h.epoch;
            if started && h.first_lsn <= seen {
                // A takeover: the new writer read the log up to `first_lsn - 1`; what the old
                // one wrote from there on was never part of the new writer's state.
                if h.first_lsn <= applied_upto {
                    return Err(Error::Corrupt {
                        what: "WAL (conflicting writers)",
                        location: format!(
                            "{}: writer epoch {} starts at LSN {}, but LSN {} was already \
                             committed by an older writer after the takeover",
                            location(),
                            h.epoch,
                            h.first_lsn,
                            applied_upto
                        ),
                    });
                }
                pending.retain(|(lsn, _)| *lsn < h.first_lsn);
                seen = h.first_lsn - 1;
            }
        }
        if h.last_lsn <= seen {
            // Already covered: by the snapshot, or a duplicate of a batch already read.
            if started {
                out.duplicates += 1;
            }
            continue;
        }
        // No batch may skip an LSN: not between batches, and not after what the snapshot
        // covers (a log truncated past it cannot serve that snapshot).
        if h.first_lsn > seen + 1 {
            return Err(Error::Corrupt {
                what: "WAL (LSN gap)",
                location: format!(
                    "{}: expected LSN {}, batch starts at {}",
                    location(),
                    seen + 1,
                    h.first_lsn
                ),
            });
        }
        started = true;
        for (i, record) in batch::records(payload, h.count).enumerate() {
            let lsn = h.first_lsn + i as u64;
            let record = record?;
            if lsn <= seen {
                continue;
            }
            let bad = || Error::Corrupt {
                what: "WAL record",
                location: format!("LSN {lsn} in {}", location()),
            };
            let decoded = proto::Record::decode(record).map_err(|_| bad())?;
            match decoded.body.ok_or_else(bad)? {
                proto::record::Body::Change(c) => {
                    pending.push((lsn, OwnedChange::from_proto(c).ok_or_else(bad)?));
                }
                proto::record::Body::Commit(c) => {
                    for (_, change) in pending.drain(..) {
                        apply(&change).map_err(|source| Error::Apply {
                            lsn,
                            source: Box::new(source),
                        })?;
                        out.applied += 1;
                    }
                    applied_upto = lsn;
                    out.last_commit = Some(CommitPoint {
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
                        position: stored.position.clone(),
                    });
                }
                proto::record::Body::Rollback(_) => pending.clear(),
            }
        }
        seen = h.last_lsn;
    }
    out.uncommitted = pending.len() as u64;
    out.next_lsn = seen + 1;
    out.torn_tail = source.torn_tail();
    Ok(out)
}
