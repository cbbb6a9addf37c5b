//! The cold tier: a redb file that holds what the hot tier evicted, written in batches by one
//! background thread so that no state call ever waits on a redb commit (except as backpressure
//! when the spill queue is full).
//!
//! The cold tier is a cache of state, not its durable copy: it is emptied when a store opens.
//! Durability comes from the write-ahead log and snapshots. Hence spill commits use
//! `Durability::None`, with an `Immediate` commit now and then only so that redb can reuse the
//! pages that earlier commits freed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};

use millpond_format::key::key_group_of;
use millpond_format::Entry;

use crate::base::BaseTier;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::shard::{Shard, SpillOp};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");

/// Make a commit durable at least this often, so that redb recycles freed pages.
const DURABLE_COMMIT_INTERVAL: Duration = Duration::from_secs(2);
/// Wake the writer this often to send what the shards have queued but not yet sent.
const TICK: Duration = Duration::from_millis(50);
/// Most batches merged into one redb transaction.
const MAX_BATCHES_PER_COMMIT: usize = 64;

pub(crate) type Shards = Arc<[crossbeam_utils::CachePadded<Mutex<Shard>>]>;

pub(crate) enum Msg {
    Batch(Vec<SpillOp>),
    Flush(Sender<Result<(), Failure>>),
}

/// Why the writer stopped: kept apart from [`Error`] (which holds an `io::Error`, not
/// `Clone`) so that every later call gets its own copy of the same failure.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    step: &'static str,
    os_code: Option<i32>,
    kind: std::io::ErrorKind,
    message: String,
}

impl Failure {
    fn redb<E: Into<redb::Error>>(step: &'static str) -> impl FnOnce(E) -> Failure {
        move |e| match e.into() {
            redb::Error::Io(io) => Failure {
                step,
                os_code: io.raw_os_error(),
                kind: io.kind(),
                message: io.to_string(),
            },
            other => Failure {
                step,
                os_code: None,
                kind: std::io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }

    fn to_error(&self, path: &Path) -> Error {
        let source = match self.os_code {
            // Rebuilt from the code, it displays and classifies as the original did.
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(self.kind, self.message.clone()),
        };
        Error::SpillFailed {
            path: path.display().to_string(),
            step: self.step,
            source,
        }
    }
}

pub(crate) struct WriterConfig {
    pub ttl_cleanup_interval: Option<Duration>,
    pub ttl_cleanup_entries: usize,
    /// Set once any state has a TTL: until then there is nothing to clean.
    pub has_ttl: Arc<std::sync::atomic::AtomicBool>,
    /// Set while the store replays its log: TTL cleanup waits.
    pub replaying: Arc<std::sync::atomic::AtomicBool>,
    /// Key group → shard, to find the shard of a cold-tier key (its first two bytes).
    pub shard_of_kg: Arc<[u16]>,
    /// Write deletes as tombstones (the store has a base tier whose entries they must hide)
    /// instead of removing the key.
    pub tombstones: bool,
}

/// Starts writing the file's dirty pages to disk, without waiting for it. Non-durable commits
/// leave redb's pages in the page cache, where the kernel may keep gigabytes of them; the
/// periodic durable commit then had to write them all at once (0.4–0.7 s on a busy disk,
/// long enough to fill the spill queue and stall the job). Started after every commit, the
/// writeback is spread out and the durable commit finds little left to write.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor for the call's duration; no memory is passed.
    // Failure only means the writeback happens later, at the durable commit.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File) {}

/// The cold-tier encoding of a tombstone.
fn tombstone() -> Vec<u8> {
    let mut buf = Vec::with_capacity(5);
    Entry::Tombstone.encode(&mut buf);
    buf
}

/// A read view of the cold tier, reused until the writer commits again (saves opening a
/// transaction and the table on every cold read).
struct ReadView {
    epoch: u64,
    table: Option<Arc<ReadOnlyTable<&'static [u8], &'static [u8]>>>,
}

pub(crate) struct ColdTier {
    db: Arc<Database>,
    /// Bumped by the writer after each commit, before it releases the committed pending
    /// entries: a reader that misses in `pending` and then sees the new epoch sees the commit.
    epoch: Arc<AtomicU64>,
    view: Mutex<ReadView>,
    path: PathBuf,
    tx: Mutex<Option<Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Set once the writer has failed; every later call reports it.
    failed: Arc<OnceLock<Failure>>,
    /// Read where the cold tier has nothing for a key.
    base: Option<Arc<dyn BaseTier>>,
}

/// Suffix of an old cold tier renamed aside, deleted in the background.
const DISCARDED: &str = ".discarded-";

/// Moves the file at `path` (if any) aside and deletes it, and any older file moved aside
/// next to it, on a background thread: freeing a cold tier of many gigabytes written page by
/// page takes the file system a second or more, which a restart should not wait for. Only the
/// rename is on the caller's path.
fn discard(path: &Path) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = path.with_file_name(format!("{name}{DISCARDED}{nanos}"));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let Some(dir) = path.parent().map(Path::to_owned) else {
        return Ok(());
    };
    let prefix = format!("{name}{DISCARDED}");
    let spawned = std::thread::Builder::new()
        .name("millpond-discard".into())
        .spawn(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    // Best effort: what is left is deleted by the next open.
                    let _ = std::fs::remove_file(e.path());
                }
            }
        });
    // No thread: the next open deletes it.
    drop(spawned);
    Ok(())
}

impl ColdTier {
    /// Creates a fresh cold tier at `path` (an old one is moved aside and deleted in the
    /// background) and starts its writer.
    pub fn create(
        path: &Path,
        cache_bytes: usize,
        queue_batches: usize,
        shards: Shards,
        clock: Arc<dyn Clock>,
        config: WriterConfig,
        base: Option<Arc<dyn BaseTier>>,
    ) -> Result<Self> {
        discard(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match redb::Error::from(e) {
                redb::Error::Io(source) => Error::Io {
                    path: path.display().to_string(),
                    source,
                },
                e => Error::storage(format!("creating {}: {e}", path.display())),
            })?;
        let db = Arc::new(db);
        // A second handle on the file, only to start the writeback of what redb wrote.
        let writeback = std::fs::File::open(path).ok();
        let (tx, rx) = crossbeam_channel::bounded(queue_batches.max(1));
        let failed = Arc::new(OnceLock::new());
        let epoch = Arc::new(AtomicU64::new(1));
        let writer = Writer {
            db: db.clone(),
            epoch: epoch.clone(),
            rx,
            shards,
            clock,
            config,
            failed: failed.clone(),
            last_durable: Instant::now(),
            writeback,
            last_cleanup: Instant::now(),
            cleanup_cursor: Vec::new(),
            cleanup_shard: 0,
        };
        let handle = std::thread::Builder::new()
            .name("millpond-spill".into())
            .spawn(move || writer.run_reporting_panics())
            .map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(ColdTier {
            db,
            epoch,
            view: Mutex::new(ReadView {
                epoch: 0,
                table: None,
            }),
            path: path.to_owned(),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            failed,
            base,
        })
    }

    /// The writer's failure, if it failed: the store reports it on every call from then on.
    pub fn check(&self) -> Result<()> {
        match self.failed.get() {
            Some(failure) => Err(failure.to_error(&self.path)),
            None => Ok(()),
        }
    }

    /// Why the writer's channel is gone: its failure (set before the writer drops its end),
    /// or `Closed` when `shutdown` took the channel.
    fn stopped(&self) -> Error {
        self.check().err().unwrap_or(Error::Closed)
    }

    /// Reads `key` from the cold tier, then from the base tier if the cold tier has nothing
    /// for it. A tombstone reads as `None`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let found = self.get_cold(key)?;
        let data = match (found, &self.base) {
            (Some(data), _) => data,
            (None, Some(base)) => match base.get(key) {
                Ok(Some(bytes)) => {
                    Entry::decode(&bytes, || format!("key {key:02x?} in the base snapshot"))?
                }
                Ok(None) => return Ok(None),
                Err(source) => return Err(Error::Base { source }),
            },
            (None, None) => return Ok(None),
        };
        Ok(match data {
            Entry::Tombstone => None,
            d => Some(d),
        })
    }

    fn get_cold(&self, key: &[u8]) -> Result<Option<Entry>> {
        let location = || format!("key {:02x?} in {}", key, self.path.display());
        let table = {
            let epoch = self.epoch.load(Ordering::Acquire);
            let mut view = self.view.lock();
            if view.epoch != epoch {
                let txn = self
                    .db
                    .begin_read()
                    .map_err(|e| Error::storage(format!("read transaction: {e}")))?;
                view.table = match txn.open_table(TABLE) {
                    Ok(t) => Some(Arc::new(t)),
                    Err(redb::TableError::TableDoesNotExist(_)) => None,
                    Err(e) => return Err(Error::storage(format!("opening table: {e}"))),
                };
                view.epoch = epoch;
            }
            match &view.table {
                Some(t) => t.clone(),
                None => return Ok(None),
            }
        };
        match table.get(key) {
            Ok(Some(v)) => Entry::decode(v.value(), location)
                .map(Some)
                .map_err(Error::from),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::storage(format!("reading {}: {e}", location()))),
        }
    }

    /// Hands a batch to the writer; blocks while the queue is full (backpressure).
    pub fn send(&self, batch: Vec<SpillOp>) -> Result<()> {
        self.check()?;
        let tx = self.tx.lock().clone();
        match tx {
            // The writer may fail while this waits on a full queue.
            Some(tx) => tx.send(Msg::Batch(batch)).map_err(|_| self.stopped()),
            None => Err(Error::Closed),
        }
    }

    /// Waits until everything queued so far (in the shards too) is in the cold tier.
    pub fn flush(&self) -> Result<()> {
        self.check()?;
        let tx = self.tx.lock().clone().ok_or(Error::Closed)?;
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        tx.send(Msg::Flush(ack_tx)).map_err(|_| self.stopped())?;
        loop {
            match ack_rx.recv_timeout(TICK) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(failure)) => return Err(failure.to_error(&self.path)),
                // A writer that failed before it read the request never answers, and the
                // request stays queued (this side holds the channel open): the job hung on
                // a full disk, in the flush of its instance's close.
                Err(RecvTimeoutError::Timeout) => self.check()?,
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped()),
            }
        }
    }

    /// Stops the writer after it has written everything queued.
    pub fn shutdown(&self) -> Result<()> {
        let flushed = self.flush();
        self.tx.lock().take();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
        match flushed {
            Err(Error::Closed) => Ok(()),
            other => other,
        }
    }
}

impl Drop for ColdTier {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct Writer {
    db: Arc<Database>,
    epoch: Arc<AtomicU64>,
    rx: Receiver<Msg>,
    shards: Shards,
    clock: Arc<dyn Clock>,
    config: WriterConfig,
    failed: Arc<OnceLock<Failure>>,
    last_durable: Instant,
    /// The redb file, to start writing back its dirty pages after each non-durable commit.
    writeback: Option<std::fs::File>,
    last_cleanup: Instant,
    /// Where the next cold-tier TTL cleanup step starts.
    cleanup_cursor: Vec<u8>,
    cleanup_shard: usize,
}

impl Writer {
    /// Runs the writer; a panic is recorded as its failure (not reported as `Closed`), before
    /// the channel's end is dropped.
    fn run_reporting_panics(mut self) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
        if let Err(panic) = run {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let _ = self.failed.set(Failure {
                step: "spill writer panicked",
                os_code: None,
                kind: std::io::ErrorKind::Other,
                message,
            });
        }
    }

    fn run(&mut self) {
        loop {
            let msg = self.rx.recv_timeout(TICK);
            let mut batches = Vec::new();
            let mut acks = Vec::new();
            match msg {
                Ok(Msg::Batch(b)) => batches.push(b),
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batches.len() < MAX_BATCHES_PER_COMMIT {
                match self.rx.try_recv() {
                    Ok(Msg::Batch(b)) => batches.push(b),
                    Ok(Msg::Flush(ack)) => acks.push(ack),
                    Err(_) => break,
                }
            }
            // On a tick or a flush, also take what the shards queued but did not send.
            if batches.is_empty() || !acks.is_empty() {
                for shard in self.shards.iter() {
                    if let Some(b) = shard.lock().take_outgoing(true) {
                        batches.push(b);
                    }
                }
            }
            let mut result = if batches.is_empty() {
                Ok(())
            } else {
                self.write(&mut batches)
            };
            if result.is_ok() {
                if let Some(interval) = self.config.ttl_cleanup_interval {
                    if self.last_cleanup.elapsed() >= interval
                        && self.config.has_ttl.load(Ordering::Relaxed)
                        && !self.config.replaying.load(Ordering::SeqCst)
                    {
                        self.last_cleanup = Instant::now();
                        result = self.cleanup_step();
                    }
                }
            }
            if let Err(failure) = &result {
                let _ = self.failed.set(failure.clone());
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
            if result.is_err() {
                // Keep the pending entries in memory (reads still find them) and stop writing.
                return;
            }
        }
    }

    fn write(&mut self, batches: &mut [Vec<SpillOp>]) -> Result<(), Failure> {
        // Batches reach the writer in any order (callers send them after dropping the shard
        // lock), so an op may be older than a version already written. Write only the version
        // that is still the shard's pending one; a newer one comes in a later batch.
        for batch in batches.iter_mut() {
            if let Some(first) = batch.first() {
                let shard = self.shards[first.shard as usize].lock();
                batch.retain(|op| shard.pending.get(&op.key).is_some_and(|p| p.seq == op.seq));
            }
        }
        let mut txn = self
            .db
            .begin_write()
            .map_err(Failure::redb("spill transaction"))?;
        let durable = self.last_durable.elapsed() >= DURABLE_COMMIT_INTERVAL;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(Failure::redb("spill durability"))?;
        {
            let mut table = txn
                .open_table(TABLE)
                .map_err(Failure::redb("spill table"))?;
            // B-tree inserts in key order touch each page once; keep the newest of duplicates.
            let mut ops: Vec<&SpillOp> = batches.iter().flatten().collect();
            ops.sort_by(|a, b| a.key.cmp(&b.key).then(a.seq.cmp(&b.seq)));
            ops.dedup_by(|later, earlier| {
                if later.key == earlier.key {
                    std::mem::swap(later, earlier);
                    true
                } else {
                    false
                }
            });
            let tombstone = tombstone();
            for op in ops {
                let r = match &op.value {
                    Some(v) => table.insert(&*op.key, &**v).map(|_| ()),
                    None if self.config.tombstones => {
                        table.insert(&*op.key, &tombstone[..]).map(|_| ())
                    }
                    None => table.remove(&*op.key).map(|_| ()),
                };
                r.map_err(Failure::redb("spill write"))?;
            }
        }
        txn.commit().map_err(Failure::redb("spill commit"))?;
        self.epoch.fetch_add(1, Ordering::Release);
        if durable {
            self.last_durable = Instant::now();
        } else if let Some(file) = &self.writeback {
            start_writeback(file);
        }
        for batch in batches {
            if let Some(first) = batch.first() {
                self.shards[first.shard as usize].lock().release(batch);
            }
        }
        Ok(())
    }

    /// One bounded step of TTL cleanup: the least recently used entries of one hot shard, and
    /// the next entries of the cold tier from where the last step stopped.
    fn cleanup_step(&mut self) -> Result<(), Failure> {
        let now = self.clock.now_ms();
        let max = self.config.ttl_cleanup_entries;
        if !self.shards.is_empty() {
            self.cleanup_shard = (self.cleanup_shard + 1) % self.shards.len();
            let mut shard = self.shards[self.cleanup_shard].lock();
            shard.cleanup_expired(max, now);
        }
        // Pending versions are newer than what the cold tier holds; clean only keys with none.
        let mut txn = self
            .db
            .begin_write()
            .map_err(Failure::redb("cleanup transaction"))?;
        txn.set_durability(Durability::None)
            .map_err(Failure::redb("cleanup durability"))?;
        let mut rewrites: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut last = None;
        {
            let table = txn
                .open_table(TABLE)
                .map_err(Failure::redb("cleanup table"))?;
            let range = table
                .range::<&[u8]>(&self.cleanup_cursor[..]..)
                .map_err(Failure::redb("cleanup scan"))?;
            for item in range.take(max) {
                let (k, v) = item.map_err(Failure::redb("cleanup scan"))?;
                let key = k.value().to_vec();
                // Damage found here is reported by the read that needs the entry.
                if let Ok(mut data) = Entry::decode(v.value(), String::new) {
                    if data.all_expired(now) {
                        rewrites.push((key.clone(), None));
                    } else if data.purge_expired(now) {
                        let mut buf = Vec::new();
                        data.encode(&mut buf);
                        rewrites.push((key.clone(), Some(buf)));
                    }
                }
                last = Some(key);
            }
        }
        {
            let mut table = txn
                .open_table(TABLE)
                .map_err(Failure::redb("cleanup table"))?;
            let tombstone = tombstone();
            for (key, value) in &rewrites {
                // A key too short for a key group was not written by this store: leave it.
                let Ok(kg) = key_group_of(key) else {
                    continue;
                };
                let kg = kg as usize;
                let shard = self.config.shard_of_kg.get(kg).copied().unwrap_or(0) as usize;
                let shard_has_newer = self.shards[shard].lock().pending.contains_key(&key[..]);
                if shard_has_newer {
                    continue;
                }
                let r = match value {
                    Some(v) => table.insert(&key[..], &v[..]).map(|_| ()),
                    None if self.config.tombstones => {
                        table.insert(&key[..], &tombstone[..]).map(|_| ())
                    }
                    None => table.remove(&key[..]).map(|_| ()),
                };
                r.map_err(Failure::redb("cleanup write"))?;
            }
        }
        txn.commit().map_err(Failure::redb("cleanup commit"))?;
        self.epoch.fetch_add(1, Ordering::Release);
        self.cleanup_cursor = match last {
            Some(mut k) => {
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The old file is gone from its name at once and deleted soon, with any older one moved
    /// aside; other files, including ones whose names merely resemble, are never touched.
    #[test]
    fn discard_moves_aside_and_deletes_only_its_own_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cold.redb");
        std::fs::write(&path, b"old").unwrap();
        let older = dir.path().join(format!("cold.redb{DISCARDED}1"));
        std::fs::write(&older, b"older").unwrap();
        let keep = [
            dir.path().join("cold.redb.discarded"),
            dir.path().join("other.redb.discarded-1"),
            dir.path().join("xcold.redb.discarded-1"),
        ];
        for k in &keep {
            std::fs::write(k, b"keep").unwrap();
        }
        discard(&path).unwrap();
        assert!(!path.exists());
        let started = Instant::now();
        let leftovers = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("cold.redb.discarded-")
                })
                .count()
        };
        while leftovers() > 0 {
            assert!(started.elapsed() < Duration::from_secs(30), "not deleted");
            std::thread::sleep(Duration::from_millis(5));
        }
        for k in &keep {
            assert_eq!(std::fs::read(k).unwrap(), b"keep", "{}", k.display());
        }
        // Nothing there: nothing to do.
        discard(&path).unwrap();
    }
}
