//! The log writer: a bounded ring of pre-allocated batch buffers that producers append records
//! to, and a background flusher that seals each batch and hands it to the sink.
//!
//! Producers encode their record straight into the current batch buffer under one short lock
//! and get its LSN; nothing is copied again before the sink writes it. When every buffer is
//! full, producers wait (backpressure): nothing is dropped or overwritten.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use millpond_state::{BoxError, Change, ChangeSink};
use parking_lot::{Condvar, Mutex};

use crate::batch::{self, HEADER_BYTES};
use crate::error::{Error, Result};
use crate::record::{self, proto, SourceOffset};
use crate::settings::{CommitDurability, WalSettings};
use crate::sink::{Batch, WalPosition, WalSink};

struct Chunk {
    /// `HEADER_BYTES` reserved, then records.
    buf: Vec<u8>,
    first_lsn: u64,
    count: u32,
    opened: Instant,
}

struct State {
    current: Option<Chunk>,
    full: VecDeque<Chunk>,
    free: Vec<Vec<u8>>,
    next_lsn: u64,
    /// Every LSN below this is durable.
    durable_below: u64,
    last_position: Option<WalPosition>,
    /// A commit is waiting: flush without lingering.
    urgent: bool,
    truncate_below: Option<u64>,
    failed: Option<Failure>,
    closed: bool,
    /// The newest change appended since the last commit or rollback marker.
    pending_change_lsn: Option<u64>,
    /// Commit markers appended and not yet durable, oldest first: (marker LSN, newest change
    /// it covers). Bounded by the ring: a marker leaves once its batch is written.
    commits: VecDeque<(u64, u64)>,
    /// The newest durable commit marker and the newest change it covers (0: none yet).
    committed: (u64, u64),
    /// Async waiters on a commit ticket ([`CommitTicket::durable`]), woken with `durable`.
    wakers: Vec<Waker>,
    /// `(last LSN, bytes_written after it)` for each sink write, oldest first: what
    /// [`Wal::bytes_after`] subtracts. Trimmed at each truncation and thinned past
    /// `WRITTEN_MARKS`, so it stays small whatever the log's length.
    written: VecDeque<(u64, u64)>,
}

/// Most entries of `State::written`. Past it every other entry goes: the answers of
/// `bytes_after` then count a few more batches (never fewer), while memory stays at 64 KiB
/// for a log that is never truncated.
const WRITTEN_MARKS: usize = 4096;

/// What a record appended to the log does to the commit tracking.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Change,
    Commit,
    Rollback,
}

/// Why the flusher stopped: every later call reports it.
enum Failure {
    /// The sink was taken over by a newer writer: stop this instance.
    Fenced(String),
    Other(String),
}

impl Failure {
    fn from(e: &Error) -> Failure {
        match e {
            Error::Fenced { reason } => Failure::Fenced(reason.clone()),
            e => Failure::Other(e.to_string()),
        }
    }

    fn to_error(&self) -> Error {
        match self {
            Failure::Fenced(reason) => Error::Fenced {
                reason: reason.clone(),
            },
            Failure::Other(reason) => Error::Failed {
                reason: reason.clone(),
            },
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Producers wait here for a free buffer.
    space: Condvar,
    /// The flusher waits here for work.
    work: Condvar,
    /// Commit tickets wait here for durability.
    durable: Condvar,
    batch_bytes: usize,
    linger: Duration,
    durability: CommitDurability,
    /// Written into every batch header (see `batch`): fences this writer's batches once a
    /// writer with a higher epoch took the log over.
    epoch: u64,
    batches_written: AtomicU64,
    bytes_written: AtomicU64,
    sink_calls: AtomicU64,
}

/// Counters of a [`Wal`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalStats {
    /// Batches the sink accepted.
    pub batches_written: u64,
    /// Framed bytes the sink accepted.
    pub bytes_written: u64,
    /// Calls to the sink (`append_all`): one fsync each for local segments, one or a few
    /// messages for Pulsar.
    pub sink_calls: u64,
    /// Every LSN below this is durable.
    pub durable_below: u64,
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// The newest durable commit marker this writer appended (0: none yet).
    pub last_commit_lsn: u64,
    /// The newest change that a durable commit marker of this writer covers (0: none yet):
    /// state changed since LSN `x` and was committed exactly when this is above `x`. A
    /// commit marker with no change before it (only offsets moved) leaves it as it was.
    pub last_committed_change_lsn: u64,
}

/// The write-ahead log's writer. Implements [`ChangeSink`], so a `millpond_state::Store` logs
/// every change through it.
///
/// ```
/// use millpond_wal::{LocalSegmentSink, SegmentSettings, SourceOffset, Wal, WalSettings};
/// let dir = tempfile::tempdir().unwrap();
/// let sink = LocalSegmentSink::open(dir.path(), SegmentSettings::default()).unwrap();
/// let wal = Wal::start(sink, 1, WalSettings::default());
/// let ticket = wal
///     .commit(&[SourceOffset { topic: "words".into(), partition: 0, next_offset: 42 }])
///     .unwrap();
/// assert!(ticket.is_durable());
/// wal.close().unwrap();
/// ```
pub struct Wal {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// A commit marker on its way to durability: [`CommitTicket::wait`] blocks until it is
/// durable, [`CommitTicket::durable`] is the same as a future.
#[derive(Clone)]
#[must_use = "a commit counts once durable: with CommitDurability::Async wait on the ticket (`wait`, `durable`); with the default Wait it already is"]
pub struct CommitTicket {
    lsn: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CommitTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitTicket")
            .field("lsn", &self.lsn)
            .field("durable", &self.is_durable())
            .finish()
    }
}

impl CommitTicket {
    /// The commit marker's LSN.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Whether the marker (and everything before it) is durable.
    pub fn is_durable(&self) -> bool {
        self.shared.state.lock().durable_below > self.lsn
    }

    /// Waits until the marker is durable; returns the position of the newest durable batch,
    /// which is the marker's batch or a later one that became durable with it.
    pub fn wait(&self) -> Result<WalPosition> {
        let mut st = self.shared.state.lock();
        loop {
            if let Some(outcome) = self.outcome(&st) {
                return outcome;
            }
            self.shared.durable.wait(&mut st);
        }
    }

    /// A future that resolves as [`CommitTicket::wait`] returns, without blocking a thread:
    /// the flusher wakes it. Works on any executor.
    ///
    /// ```
    /// use millpond_wal::{CommitDurability, LocalSegmentSink, SegmentSettings, SourceOffset, Wal, WalSettings};
    /// let dir = tempfile::tempdir().unwrap();
    /// let sink = LocalSegmentSink::open(dir.path(), SegmentSettings::default()).unwrap();
    /// let settings = WalSettings { commit_durability: CommitDurability::Async, ..WalSettings::default() };
    /// let wal = Wal::start(sink, 1, settings);
    /// let ticket = wal.commit(&[SourceOffset { topic: "t".into(), partition: 0, next_offset: 1 }]).unwrap();
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// rt.block_on(ticket.durable()).unwrap();
    /// assert!(ticket.is_durable());
    /// wal.close().unwrap();
    /// ```
    pub fn durable(&self) -> Durable {
        Durable {
            ticket: self.clone(),
        }
    }

    /// What waiting ends with, once it ends.
    fn outcome(&self, st: &State) -> Option<Result<WalPosition>> {
        if st.durable_below > self.lsn {
            return Some(st.last_position.clone().ok_or(Error::Closed));
        }
        if let Some(failure) = &st.failed {
            return Some(Err(failure.to_error()));
        }
        if st.closed && st.current.is_none() && st.full.is_empty() {
            return Some(Err(Error::Closed));
        }
        None
    }
}

/// The future of [`CommitTicket::durable`]: the position of the newest durable batch once the
/// marker is durable.
#[must_use = "futures do nothing unless awaited"]
pub struct Durable {
    ticket: CommitTicket,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("lsn", &self.ticket.lsn)
            .finish()
    }
}

impl Future for Durable {
    type Output = Result<WalPosition>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.ticket.shared.state.lock();
        if let Some(outcome) = self.ticket.outcome(&st) {
            return Poll::Ready(outcome);
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Wakes every waiter on durability: the blocking ones and the futures.
fn wake_durable(sh: &Shared, st: &mut State) {
    sh.durable.notify_all();
    for w in st.wakers.drain(..) {
        w.wake();
    }
}

impl Wal {
    /// Starts a writer that numbers records from `next_lsn` (1 for a new log; after recovery,
    /// one past the last LSN found) and writes batches to `sink` from a background thread.
    pub fn start(sink: impl WalSink, next_lsn: u64, settings: WalSettings) -> Wal {
        Wal::start_with_epoch(sink, next_lsn, 0, settings)
    }

    /// Like [`Wal::start`], for a writer of `epoch`: every batch carries it, and replay ignores
    /// a batch whose epoch is lower than one read before it. A writer that takes a log over
    /// (after a snapshot archive claim, say) uses an epoch higher than any before, so the
    /// batches an older instance still writes after the takeover never count.
    pub fn start_with_epoch(
        sink: impl WalSink,
        next_lsn: u64,
        epoch: u64,
        settings: WalSettings,
    ) -> Wal {
        let batch_bytes = settings.batch_bytes.max(HEADER_BYTES + 64);
        let buffers = (settings.ring_bytes / batch_bytes).max(2);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                current: None,
                full: VecDeque::with_capacity(buffers),
                // Pre-allocated once: the ring never allocates while running (a record larger
                // than a batch grows its buffer, once).
                free: (0..buffers)
                    .map(|_| Vec::with_capacity(batch_bytes + 4096))
                    .collect(),
                next_lsn: next_lsn.max(1),
                durable_below: next_lsn.max(1),
                last_position: None,
                urgent: false,
                truncate_below: None,
                failed: None,
                closed: false,
                pending_change_lsn: None,
                commits: VecDeque::new(),
                committed: (0, 0),
                written: VecDeque::new(),
                wakers: Vec::new(),
            }),
            space: Condvar::new(),
            work: Condvar::new(),
            durable: Condvar::new(),
            batch_bytes,
            linger: Duration::from_millis(settings.linger_ms),
            durability: settings.commit_durability,
            epoch,
            batches_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            sink_calls: AtomicU64::new(0),
        });
        let flusher_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("millpond-wal-flush".into())
            .spawn(move || flush_loop(&flusher_shared, sink))
            .expect("spawning the WAL flusher thread");
        Wal {
            shared,
            flusher: Mutex::new(Some(handle)),
        }
    }

    /// Appends one record, encoded by `encode` into the current batch; returns its LSN.
    fn append(&self, kind: Kind, encode: impl FnOnce(&mut Vec<u8>) -> bool) -> Result<u64> {
        let sh = &*self.shared;
        let mut st = sh.state.lock();
        loop {
            if let Some(failure) = &st.failed {
                return Err(failure.to_error());
            }
            if st.closed {
                return Err(Error::Closed);
            }
            if st.current.is_some() {
                break;
            }
            match st.free.pop() {
                Some(mut buf) => {
                    buf.clear();
                    buf.resize(HEADER_BYTES, 0);
                    let first_lsn = st.next_lsn;
                    st.current = Some(Chunk {
                        buf,
                        first_lsn,
                        count: 0,
                        opened: Instant::now(),
                    });
                    // The flusher times its linger from the first record of a batch.
                    sh.work.notify_one();
                }
                None => sh.space.wait(&mut st),
            }
        }
        let lsn = st.next_lsn;
        let chunk = st.current.as_mut().expect("current was just ensured");
        if !encode(&mut chunk.buf) {
            return Err(Error::Invalid {
                reason: "a change this version of the WAL cannot encode".into(),
            });
        }
        chunk.count += 1;
        let full = chunk.buf.len() >= sh.batch_bytes;
        st.next_lsn += 1;
        match kind {
            Kind::Change => st.pending_change_lsn = Some(lsn),
            Kind::Commit => {
                let covered = match st.pending_change_lsn.take() {
                    Some(change) => change,
                    None => st.commits.back().map_or(st.committed.1, |c| c.1),
                };
                st.commits.push_back((lsn, covered));
            }
            // Replay discards the changes since the last commit.
            Kind::Rollback => st.pending_change_lsn = None,
        }
        if full {
            let chunk = st.current.take().expect("current exists");
            st.full.push_back(chunk);
            sh.work.notify_one();
        }
        Ok(lsn)
    }

    /// Appends a state change; returns its LSN. It becomes durable with the next batch, and
    /// counts only once a later commit marker is durable.
    pub fn append_change(&self, change: &Change<'_>) -> Result<u64> {
        self.append(Kind::Change, |buf| record::encode_change(change, buf))
    }

    /// Appends a commit marker with the source offsets that the state now reflects, and
    /// flushes at once. With [`CommitDurability::Wait`] (the default) returns once it is
    /// durable; otherwise wait on the ticket.
    pub fn commit(&self, offsets: &[SourceOffset]) -> Result<CommitTicket> {
        let ticket = self.commit_marker(offsets)?;
        if self.shared.durability == CommitDurability::Wait {
            ticket.wait()?;
        }
        Ok(ticket)
    }

    /// Appends a commit marker as [`Wal::commit`] does and returns at once, whatever
    /// [`CommitDurability`] says: the async path awaits [`CommitTicket::durable`] instead of
    /// blocking.
    pub fn commit_marker(&self, offsets: &[SourceOffset]) -> Result<CommitTicket> {
        let record = proto::Record {
            body: Some(proto::record::Body::Commit(proto::CommitMarker {
                offsets: offsets
                    .iter()
                    .map(|o| proto::SourceOffset {
                        topic: o.topic.clone(),
                        partition: o.partition,
                        next_offset: o.next_offset,
                    })
                    .collect(),
                committed_at_ms: now_ms(),
            })),
        };
        self.append_marker(&record)
    }

    /// How [`Wal::commit`] waits, as the settings say.
    pub fn durability(&self) -> CommitDurability {
        self.shared.durability
    }

    /// Appends a marker record and asks for an immediate flush.
    pub(crate) fn append_marker(&self, record: &proto::Record) -> Result<CommitTicket> {
        let kind = match record.body {
            Some(proto::record::Body::Commit(_)) => Kind::Commit,
            _ => Kind::Rollback,
        };
        let lsn = self.append(kind, |buf| {
            record::encode_record(record, buf);
            true
        })?;
        let mut st = self.shared.state.lock();
        st.urgent = true;
        self.shared.work.notify_one();
        drop(st);
        Ok(CommitTicket {
            lsn,
            shared: self.shared.clone(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        let st = self.shared.state.lock();
        WalStats {
            batches_written: self.shared.batches_written.load(Ordering::Relaxed),
            bytes_written: self.shared.bytes_written.load(Ordering::Relaxed),
            sink_calls: self.shared.sink_calls.load(Ordering::Relaxed),
            durable_below: st.durable_below,
            next_lsn: st.next_lsn,
            last_commit_lsn: st.committed.0,
            last_committed_change_lsn: st.committed.1,
        }
    }

    /// Framed bytes this writer's sink accepted for batches holding a record after `lsn`:
    /// what a recovery from a snapshot at `lsn` reads, as far as this writer wrote it (a log
    /// it took over holds more below its first LSN). Counted by batch, so the batch holding
    /// `lsn` counts whole, as recovery reads it whole; after many writes without a
    /// truncation it may count a few batches more.
    pub fn bytes_after(&self, lsn: u64) -> u64 {
        let st = self.shared.state.lock();
        // Read under the lock the flusher updates it under, so it matches `written`.
        let total = self.shared.bytes_written.load(Ordering::Relaxed);
        let below = st.written.partition_point(|&(last, _)| last <= lsn);
        let before = match below {
            0 => 0,
            n => st.written[n - 1].1,
        };
        total - before
    }

    /// The LSN the next record will get.
    pub fn next_lsn(&self) -> u64 {
        self.shared.state.lock().next_lsn
    }

    /// Every LSN below this is durable.
    pub fn durable_below(&self) -> u64 {
        self.shared.state.lock().durable_below
    }

    /// Asks the sink to drop what lies wholly below `lsn` (a snapshot covers it). Done by the
    /// flusher between batches.
    pub fn truncate_below(&self, lsn: u64) {
        let mut st = self.shared.state.lock();
        st.truncate_below = Some(st.truncate_below.map_or(lsn, |t| t.max(lsn)));
        // Nobody asks `bytes_after` below a truncation: keep only the newest mark at or
        // below it.
        while st.written.get(1).is_some_and(|&(last, _)| last <= lsn) {
            st.written.pop_front();
        }
        self.shared.work.notify_one();
    }

    /// Writes everything appended so far and stops the flusher. Later appends fail with
    /// [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        {
            let mut st = self.shared.state.lock();
            st.closed = true;
            self.shared.work.notify_all();
            self.shared.space.notify_all();
        }
        if let Some(handle) = self.flusher.lock().take() {
            let _ = handle.join();
        }
        let mut st = self.shared.state.lock();
        // Whatever was left undurable never will be: waiters learn it now.
        wake_durable(&self.shared, &mut st);
        match &st.failed {
            Some(failure) => Err(failure.to_error()),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl ChangeSink for Wal {
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError> {
        self.append_change(change).map_err(Into::into)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn flush_loop(sh: &Shared, mut sink: impl WalSink) {
    loop {
        let mut batches: Vec<Chunk> = Vec::new();
        let truncate;
        {
            let mut st = sh.state.lock();
            loop {
                let current_ready = st.current.as_ref().is_some_and(|c| {
                    c.count > 0 && (st.urgent || st.closed || c.opened.elapsed() >= sh.linger)
                });
                if !st.full.is_empty() || current_ready || st.truncate_below.is_some() {
                    break;
                }
                if st.closed
                    && st.full.is_empty()
                    && st.current.as_ref().is_none_or(|c| c.count == 0)
                {
                    return;
                }
                match &st.current {
                    Some(c) if c.count > 0 => {
                        let left = sh.linger.saturating_sub(c.opened.elapsed());
                        sh.work
                            .wait_for(&mut st, left.max(Duration::from_micros(50)));
                    }
                    _ => sh.work.wait(&mut st),
                }
            }
            batches.extend(st.full.drain(..));
            if st.current.as_ref().is_some_and(|c| c.count > 0) {
                batches.extend(st.current.take());
            }
            st.urgent = false;
            truncate = st.truncate_below.take();
        }
        if !batches.is_empty() {
            for chunk in batches.iter_mut() {
                batch::seal(&mut chunk.buf, chunk.first_lsn, chunk.count, sh.epoch);
            }
            let framed: Vec<Batch<'_>> = batches
                .iter()
                .map(|c| Batch {
                    first_lsn: c.first_lsn,
                    last_lsn: c.first_lsn + c.count as u64 - 1,
                    bytes: &c.buf,
                })
                .collect();
            let result = sink.append_all(&framed);
            let bytes: u64 = framed.iter().map(|b| b.bytes.len() as u64).sum();
            let last_lsn = framed.last().map_or(0, |b| b.last_lsn);
            drop(framed);
            let mut st = sh.state.lock();
            match result {
                Ok(mut positions) => {
                    sh.batches_written
                        .fetch_add(batches.len() as u64, Ordering::Relaxed);
                    sh.bytes_written.fetch_add(bytes, Ordering::Relaxed);
                    sh.sink_calls.fetch_add(1, Ordering::Relaxed);
                    st.durable_below = last_lsn + 1;
                    st.last_position = positions.pop();
                    while st.commits.front().is_some_and(|&(lsn, _)| lsn <= last_lsn) {
                        st.committed = st.commits.pop_front().expect("front exists");
                    }
                    let total = sh.bytes_written.load(Ordering::Relaxed);
                    st.written.push_back((last_lsn, total));
                    if st.written.len() > WRITTEN_MARKS {
                        let newest = st.written.len() - 1;
                        let mut i = 0;
                        st.written.retain(|_| {
                            i += 1;
                            (i - 1) % 2 == 0 || i - 1 == newest
                        });
                    }
                    for mut chunk in batches {
                        chunk.buf.clear();
                        st.free.push(chunk.buf);
                    }
                    sh.space.notify_all();
                    wake_durable(sh, &mut st);
                }
                Err(e) => {
                    // Nothing after a failed batch may become durable out of order: stop.
                    st.failed = Some(Failure::from(&e));
                    sh.space.notify_all();
                    wake_durable(sh, &mut st);
                    return;
                }
            }
        }
        if let Some(lsn) = truncate {
            if let Err(e) = sink.truncate_below(lsn) {
                let mut st = sh.state.lock();
                st.failed = Some(Failure::from(&e));
                sh.space.notify_all();
                wake_durable(sh, &mut st);
                return;
            }
        }
    }
}
