//! Where batches go: the [`WalSink`] trait, and [`WalSource`] to read them back.

use crate::error::Result;

/// Where a batch landed in a sink: enough to start reading there again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WalPosition {
    /// A local segment: the segment's first LSN and the byte offset of the batch in it.
    Local {
        /// First LSN of the segment file (its name).
        segment: u64,
        /// Byte offset of the batch in the file.
        offset: u64,
    },
    /// An Apache Pulsar message, as the broker's MessageId (ledger, entry, partition, batch
    /// index).
    Pulsar {
        /// Ledger id.
        ledger_id: u64,
        /// Entry id.
        entry_id: u64,
        /// Partition, -1 for a non-partitioned topic.
        partition: i32,
        /// Index inside a Pulsar batch, -1 if none.
        batch_index: i32,
    },
}

/// As tools show it: `00000000000000000001.wal@44` (segment file, byte) or
/// `pulsar 12:3:-1:-1` (ledger, entry, partition, batch index).
impl std::fmt::Display for WalPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalPosition::Local { segment, offset } => write!(f, "{segment:020}.wal@{offset}"),
            WalPosition::Pulsar {
                ledger_id,
                entry_id,
                partition,
                batch_index,
            } => write!(f, "pulsar {ledger_id}:{entry_id}:{partition}:{batch_index}"),
        }
    }
}

/// The end of a log that a crash cut short inside a batch, found when the log was opened or
/// read: the bytes after the last valid batch of the newest segment, when no valid batch follows
/// them and they lie above the acknowledged LSN (docs/wal.md, "Torn tail"). The batch they
/// started was never acknowledged, so its changes were never committed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TornTail {
    /// Where the valid data ends and the torn bytes start.
    pub position: WalPosition,
    /// Bytes from there to the end of the segment (cut off, if a sink opened the log).
    pub bytes: u64,
    /// The last LSN before them (0 if the log holds none).
    pub last_lsn: u64,
    /// The first LSN the torn batch's header declares, if enough of it survived to read it
    /// (unverified: it failed its checks).
    pub declared_first_lsn: Option<u64>,
    /// The acknowledged LSN that the log's watermark held (`None`: no watermark file, a log
    /// written by an older version).
    pub acknowledged_lsn: Option<u64>,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.position {
            WalPosition::Local { segment, offset } => write!(
                f,
                "{} bytes at byte {offset} of segment {segment:020}.wal",
                self.bytes
            )?,
            other => write!(f, "{} bytes at {other:?}", self.bytes)?,
        }
        write!(f, ", after LSN {}", self.last_lsn)?;
        if let Some(first) = self.declared_first_lsn {
            write!(f, " (a batch declaring LSN {first} on)")?;
        }
        match self.acknowledged_lsn {
            Some(acked) => write!(f, "; acknowledged up to LSN {acked}"),
            None => write!(f, "; no acknowledged-LSN watermark"),
        }
    }
}

/// A framed batch on its way to a sink.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// LSN of the first record.
    pub first_lsn: u64,
    /// LSN of the last record.
    pub last_lsn: u64,
    /// The framed bytes (header and payload), as `batch::encode` wrote them.
    pub bytes: &'a [u8],
}

/// Durable storage for batches. The flusher calls it from one thread, in LSN order.
pub trait WalSink: Send + 'static {
    /// Stores `batch` durably and returns where it is. Returns only when the batch survives a
    /// crash of this process (and, for a remote sink, of this machine). Retries transient
    /// failures itself, within its own limits; an error stops the log.
    fn append(&mut self, batch: Batch<'_>) -> Result<WalPosition>;

    /// Stores consecutive batches, in order, durably, and returns each one's position. A sink
    /// may store them together (the Pulsar sink sends them as one message, one round trip);
    /// by default they are stored one by one. On an error, any prefix may have been stored.
    fn append_all(&mut self, batches: &[Batch<'_>]) -> Result<Vec<WalPosition>> {
        batches.iter().map(|b| self.append(*b)).collect()
    }

    /// Drops what lies wholly below `lsn` (a snapshot covers it), if the sink can.
    fn truncate_below(&mut self, lsn: u64) -> Result<()>;

    /// What opening this sink cut off the end of the log (a torn tail), once: recovery reports
    /// it in [`ReplayOutcome::torn_tail`](crate::ReplayOutcome::torn_tail). `None` by default.
    fn take_torn_tail(&mut self) -> Option<TornTail> {
        None
    }
}

impl<S: WalSink + ?Sized> WalSink for Box<S> {
    fn append(&mut self, batch: Batch<'_>) -> Result<WalPosition> {
        (**self).append(batch)
    }

    fn append_all(&mut self, batches: &[Batch<'_>]) -> Result<Vec<WalPosition>> {
        (**self).append_all(batches)
    }

    fn truncate_below(&mut self, lsn: u64) -> Result<()> {
        (**self).truncate_below(lsn)
    }

    fn take_torn_tail(&mut self) -> Option<TornTail> {
        (**self).take_torn_tail()
    }
}

/// A framed batch read back from a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Where it was read.
    pub position: WalPosition,
    /// The framed bytes.
    pub bytes: Vec<u8>,
}

/// Reads batches back in order, for replay.
pub trait WalSource {
    /// The next batch, or `None` at the end of the log. A torn tail (a batch cut short at the
    /// very end) ends the log; corruption before the end is `Error::Corrupt`.
    fn next_batch(&mut self) -> Result<Option<StoredBatch>>;

    /// The torn tail that ended the log, once [`next_batch`](WalSource::next_batch) returned
    /// `None` because of one. `None` by default.
    fn torn_tail(&self) -> Option<TornTail> {
        None
    }
}

/// Reads `source` up to the batch holding LSN `last_lsn` and stops there, however far the log
/// grows meanwhile: a snapshot reads the log as it was when the snapshot began, instead of
/// chasing a writer that appends faster than it reads.
///
/// A batch that starts at or before `last_lsn` is returned whole (replay then counts what it
/// holds up to its last commit marker); the first batch that starts after it ends the read.
#[derive(Debug)]
pub struct UpTo<S> {
    source: S,
    last_lsn: u64,
    done: bool,
}

impl<S: WalSource> UpTo<S> {
    /// Reads `source` up to LSN `last_lsn`.
    pub fn new(source: S, last_lsn: u64) -> Self {
        UpTo {
            source,
            last_lsn,
            done: false,
        }
    }
}

impl<S: WalSource> WalSource for UpTo<S> {
    fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
        if self.done {
            return Ok(None);
        }
        let Some(batch) = self.source.next_batch()? else {
            return Ok(None);
        };
        // Only the first LSN is looked at here; replay verifies the whole batch.
        match crate::batch::peek_first_lsn(&batch.bytes) {
            Some(first) if first > self.last_lsn => {
                self.done = true;
                Ok(None)
            }
            _ => Ok(Some(batch)),
        }
    }

    fn torn_tail(&self) -> Option<TornTail> {
        self.source.torn_tail()
    }
}

impl<S: WalSource + ?Sized> WalSource for &mut S {
    fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
        (**self).next_batch()
    }

    fn torn_tail(&self) -> Option<TornTail> {
        (**self).torn_tail()
    }
}

impl<S: WalSource + ?Sized> WalSource for Box<S> {
    fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
        (**self).next_batch()
    }

    fn torn_tail(&self) -> Option<TornTail> {
        (**self).torn_tail()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake source: framed batches in memory.
    struct Batches(std::vec::IntoIter<Vec<u8>>);

    impl WalSource for Batches {
        fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
            Ok(self.0.next().map(|bytes| StoredBatch {
                position: WalPosition::Local {
                    segment: 0,
                    offset: 0,
                },
                bytes,
            }))
        }
    }

    fn batch(first_lsn: u64, count: u32) -> Vec<u8> {
        let payload = vec![0u8; count as usize]; // empty records
        let mut out = Vec::new();
        crate::batch::encode(first_lsn, count, 1, &payload, &mut out);
        out
    }

    #[test]
    fn up_to_returns_the_batch_holding_the_bound_and_stops_after() {
        let log = vec![batch(1, 5), batch(6, 5), batch(11, 5), batch(16, 5)];
        let firsts = |last_lsn| {
            let mut src = UpTo::new(Batches(log.clone().into_iter()), last_lsn);
            let mut v = Vec::new();
            while let Some(b) = src.next_batch().unwrap() {
                v.push(crate::batch::peek_first_lsn(&b.bytes).unwrap());
            }
            v
        };
        assert_eq!(firsts(0), Vec::<u64>::new());
        assert_eq!(firsts(5), vec![1]);
        assert_eq!(firsts(6), vec![1, 6]);
        assert_eq!(firsts(12), vec![1, 6, 11]);
        assert_eq!(firsts(100), vec![1, 6, 11, 16]);
    }
}
