//! The cold tier: a redb file that holds what the hot tier evicted, written in batches by one
//! background thread so that no state call ever waits on a redb commit (except as backpressure
//! when the spill queue is full).
//!
//! The file is rotated (docs/state.md, "Cold tier rotation"): [`ColdTier::rotate`] seals the
//! active file (still read, never written again) and starts a new one; once a snapshot covers
//! everything the sealed file holds and its runs are the store's base, the sealed file is
//! deleted ([`ColdTier::drop_sealed`]). So redb holds what was evicted during about two
//! snapshot intervals, not everything since the process started.
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
use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};

use millpond_format::entry::HEAVY_ENTRY_BYTES;
use millpond_format::key::key_group_of;
use millpond_format::{Entry, KeyChanges};

use crate::base::BaseTier;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::shard::{is_chain, Shard, SpillOp};

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
    /// Write from now on to this file (the new active one), then answer.
    Rotate(Arc<Database>, Option<std::fs::File>, Sender<()>),
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
    /// Write deletes as tombstones (the store has, or will have, a base tier whose entries
    /// they must hide) instead of removing the key. Set for good by the first rotation.
    pub tombstones: Arc<std::sync::atomic::AtomicBool>,
    /// The installed base's covered LSN (0: none): a full entry in the active file at or below
    /// it is stale (the base holds newer), so an operand chain is not folded over it.
    pub covered: Arc<AtomicU64>,
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

/// A cold-tier value is `upto_lsn:u64le entry` (docs/state.md, "Cold tier"): the entry,
/// and the LSN up to which it holds every operand of the key (0: it was written from the hot
/// tier, newer than anything an operand chain above it could repeat). redb is never read
/// across opens, so this wrapper is no persistent format.
fn put_value(upto: u64, entry: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&upto.to_le_bytes());
    out.extend_from_slice(entry);
}

/// Splits a cold-tier value into its `upto_lsn` and its entry or operand chain, decoded.
fn decode_value(value: &[u8], key: &[u8]) -> Result<(u64, Layer)> {
    let location = || format!("key {key:02x?} in the cold tier");
    let Some((upto, entry)) = value.split_first_chunk::<8>() else {
        return Err(Error::Corrupt {
            what: "cold-tier value shorter than its LSN",
            location: location(),
        });
    };
    let layer = if is_chain(entry) {
        Layer::Chain(KeyChanges::decode(entry)?)
    } else {
        Layer::Full(Entry::decode(entry, location)?)
    };
    Ok((u64::from_le_bytes(*upto), layer))
}

/// The encoding of an operand chain.
fn chain_bytes(chain: &KeyChanges) -> Vec<u8> {
    let mut out = Vec::new();
    chain.encode(&mut out);
    out
}

/// What one cold-tier file holds for a key: a full entry (or tombstone), or operands to fold
/// over what is below it.
enum Layer {
    Full(Entry),
    Chain(KeyChanges),
}

/// The cold-tier encoding of a tombstone.
fn tombstone() -> Vec<u8> {
    let mut buf = Vec::with_capacity(5);
    Entry::Tombstone.encode(&mut buf);
    buf
}

type Table = Arc<ReadOnlyTable<&'static [u8], &'static [u8]>>;

/// A read view of the cold tier, reused until the writer commits again (saves opening a
/// transaction and the table on every cold read): the active file's table, then the sealed
/// one's.
struct ReadView {
    epoch: u64,
    /// Each with its database: a read in progress keeps a sealed file's database open (redb
    /// fails reads of a dropped one) while `drop_sealed` lets it go.
    tables: [Option<(Arc<Database>, Table)>; 2],
}

/// The redb files of the cold tier: the one the writer writes, and the one sealed by the last
/// rotation (read below it until a snapshot covers it).
struct Files {
    active: Arc<Database>,
    active_path: PathBuf,
    sealed: Option<(Arc<Database>, PathBuf)>,
    /// Number of the active file (`cold-<generation>.redb`).
    generation: u64,
}

pub(crate) struct ColdTier {
    files: RwLock<Files>,
    dir: PathBuf,
    cache_bytes: usize,
    /// Bumped by the writer after each commit, before it releases the committed pending
    /// entries: a reader that misses in `pending` and then sees the new epoch sees the commit.
    /// Bumped too when the files change.
    epoch: Arc<AtomicU64>,
    view: Mutex<ReadView>,
    tx: Mutex<Option<Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Set once the writer has failed; every later call reports it.
    failed: Arc<OnceLock<Failure>>,
    /// Read where the cold tier has nothing for a key; replaced when a newer snapshot's runs
    /// are installed.
    base: RwLock<Option<Arc<dyn BaseTier>>>,
    tombstones: Arc<std::sync::atomic::AtomicBool>,
    covered: Arc<AtomicU64>,
}

/// Infix of an old cold-tier file renamed aside, deleted in the background.
const DISCARDED: &str = ".discarded-";

/// Whether `name` is a cold-tier file of a store: `cold.redb` (before rotation) or
/// `cold-<n>.redb`.
fn is_cold_file(name: &str) -> bool {
    name == "cold.redb"
        || name
            .strip_prefix("cold-")
            .and_then(|n| n.strip_suffix(".redb"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Moves every cold-tier file in `dir` aside and deletes them, and any older ones moved aside,
/// on a background thread: freeing a cold tier of many gigabytes written page by page takes
/// the file system a second or more, which a restart should not wait for. Only the renames
/// are on the caller's path.
fn discard(dir: &Path) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut any = false;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_cold_file(&name) {
            std::fs::rename(e.path(), dir.join(format!("{name}{DISCARDED}{nanos}")))?;
            any = true;
        } else if is_discarded(&name) {
            any = true;
        }
    }
    if any {
        spawn_deletion(dir.to_owned());
    }
    Ok(())
}

/// Whether `name` is a cold-tier file moved aside by [`discard`].
fn is_discarded(name: &str) -> bool {
    name.split_once(DISCARDED)
        .is_some_and(|(file, _)| is_cold_file(file))
}

/// Deletes the files of `dir` that [`discard`] moved aside, on a background thread.
fn spawn_deletion(dir: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("millpond-discard".into())
        .spawn(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return;
            };
            for e in entries.flatten() {
                if is_discarded(&e.file_name().to_string_lossy()) {
                    // Best effort: what is left is deleted by the next open.
                    let _ = std::fs::remove_file(e.path());
                }
            }
        });
    // No thread: the next open deletes them.
    drop(spawned);
}

fn create_db(path: &Path, cache_bytes: usize) -> Result<Arc<Database>> {
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
    Ok(Arc::new(db))
}

fn cold_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("cold-{generation}.redb"))
}

impl ColdTier {
    /// Creates a fresh cold tier in `dir` (old files are moved aside and deleted in the
    /// background) and starts its writer.
    pub fn create(
        dir: &Path,
        cache_bytes: usize,
        queue_batches: usize,
        shards: Shards,
        clock: Arc<dyn Clock>,
        config: WriterConfig,
        base: Option<Arc<dyn BaseTier>>,
    ) -> Result<Self> {
        discard(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let generation = 1;
        let path = cold_path(dir, generation);
        let db = create_db(&path, cache_bytes)?;
        // A second handle on the file, only to start the writeback of what redb wrote.
        let writeback = std::fs::File::open(&path).ok();
        let (tx, rx) = crossbeam_channel::bounded(queue_batches.max(1));
        let failed = Arc::new(OnceLock::new());
        let epoch = Arc::new(AtomicU64::new(1));
        let tombstones = config.tombstones.clone();
        let covered = config.covered.clone();
        let writer = Writer {
            scratch: Vec::new(),
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
            files: RwLock::new(Files {
                active: db,
                active_path: path,
                sealed: None,
                generation,
            }),
            dir: dir.to_owned(),
            cache_bytes,
            epoch,
            view: Mutex::new(ReadView {
                epoch: 0,
                tables: [None, None],
            }),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            failed,
            base: RwLock::new(base),
            tombstones,
            covered,
        })
    }

    /// Seals the active file and starts a new one, unless a sealed file is still there (then
    /// nothing changes and this returns `false`). Returns once the writer writes to the new
    /// file: everything in the sealed file was spilled before this returned. From the first
    /// rotation on, deletes are written as tombstones (a base tier may come).
    pub fn rotate(&self) -> Result<bool> {
        self.check()?;
        let (new_db, path) = {
            let files = self.files.read();
            if files.sealed.is_some() {
                return Ok(false);
            }
            let path = cold_path(&self.dir, files.generation + 1);
            (create_db(&path, self.cache_bytes)?, path)
        };
        self.tombstones.store(true, Ordering::SeqCst);
        // Readers see both files before the writer writes to the new one, so that nothing it
        // releases from the pending queue is ever out of their sight.
        {
            let mut files = self.files.write();
            let old = std::mem::replace(&mut files.active, new_db.clone());
            let old_path = std::mem::replace(&mut files.active_path, path.clone());
            files.sealed = Some((old, old_path));
            files.generation += 1;
        }
        self.epoch.fetch_add(1, Ordering::Release);
        let writeback = std::fs::File::open(&path).ok();
        let tx = self.tx.lock().clone().ok_or(Error::Closed)?;
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        tx.send(Msg::Rotate(new_db, writeback, ack_tx))
            .map_err(|_| self.stopped())?;
        loop {
            match ack_rx.recv_timeout(TICK) {
                Ok(()) => return Ok(true),
                Err(RecvTimeoutError::Timeout) => self.check()?,
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped()),
            }
        }
    }

    /// Deletes the sealed file, if any: the caller guarantees that the store's base now holds
    /// everything in it (a snapshot covering every change made before the rotation).
    pub fn drop_sealed(&self) -> Result<()> {
        let sealed = self.files.write().sealed.take();
        let Some((db, path)) = sealed else {
            return Ok(());
        };
        self.epoch.fetch_add(1, Ordering::Release);
        // Views that still hold its table keep the file open until they refresh; unlinking it
        // now is safe.
        drop(db);
        std::fs::remove_file(&path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Replaces the base tier (a newer snapshot's runs). Shards drop dirty entries it holds
    /// once it is in place (never before: a read must find them in it).
    pub fn set_base(&self, base: Arc<dyn BaseTier>) {
        let covered = base.covered_lsn();
        *self.base.write() = Some(base);
        self.covered.fetch_max(covered, Ordering::AcqRel);
    }

    /// The base tier as it is now, for one read.
    pub fn base(&self) -> Option<Arc<dyn BaseTier>> {
        self.base.read().clone()
    }

    /// Bytes of the cold tier's files on disk: the active one and the sealed one.
    pub fn file_bytes(&self) -> (u64, u64) {
        let files = self.files.read();
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        (
            len(&files.active_path),
            files.sealed.as_ref().map_or(0, |(_, p)| len(p)),
        )
    }

    /// The writer's failure, if it failed: the store reports it on every call from then on.
    pub fn check(&self) -> Result<()> {
        match self.failed.get() {
            Some(failure) => Err(failure.to_error(&self.files.read().active_path)),
            None => Ok(()),
        }
    }

    /// Why the writer's channel is gone: its failure (set before the writer drops its end),
    /// or `Closed` when `shutdown` took the channel.
    fn stopped(&self) -> Error {
        self.check().err().unwrap_or(Error::Closed)
    }

    /// Reads `key` from the cold tier (the active file, then the sealed one), then from the
    /// base tier if the cold tier has nothing for it. A tombstone reads as `None`. Returns
    /// too the LSN up to which the result holds every operand of the key (see `put_value`;
    /// the base's [`BaseTier::covered_lsn`]), which operands kept above must be newer than
    /// to apply.
    /// `base` is the base tier the caller took for this read ([`ColdTier::base`]): a full
    /// entry in redb at or below its covered LSN is stale and skipped.
    pub fn get(&self, key: &[u8], base: Option<&dyn BaseTier>) -> Result<(Option<Entry>, u64)> {
        let mut chains = Vec::new();
        let covered = base.map_or(0, |b| b.covered_lsn());
        let (mut data, mut upto) = match self.get_cold(key, covered, &mut chains)? {
            Some((entry, upto)) => (Some(entry), upto),
            None => match base {
                Some(base) => read_base(base, key)?,
                None => (None, 0),
            },
        };
        // Oldest first, each over what is below it.
        for (chain_upto, chain) in chains.into_iter().rev() {
            data = chain.fold_over_from(data, upto);
            upto = upto.max(chain_upto);
        }
        Ok((data.filter(|d| !matches!(d, Entry::Tombstone)), upto))
    }

    /// Whether the base tier lets a list append or map put on `key` be kept as an operand
    /// (true without a base: the cold tier's own heavy keys are the shards').
    pub fn blind_ok(&self, key: &[u8]) -> bool {
        self.base.read().as_ref().is_none_or(|b| b.blind_ok(key))
    }

    /// The key's newest full entry in the redb files (active, then sealed) with its
    /// `upto_lsn`, and in `chains` the operand chains found above it, newest first.
    fn get_cold(
        &self,
        key: &[u8],
        covered: u64,
        chains: &mut Vec<(u64, KeyChanges)>,
    ) -> Result<Option<(Entry, u64)>> {
        let tables = {
            let epoch = self.epoch.load(Ordering::Acquire);
            let mut view = self.view.lock();
            if view.epoch != epoch {
                let files = self.files.read();
                let with_db =
                    |db: &Arc<Database>| open_table(db).map(|t| t.map(|t| (db.clone(), t)));
                view.tables = [
                    with_db(&files.active)?,
                    match &files.sealed {
                        Some((db, _)) => with_db(db)?,
                        None => None,
                    },
                ];
                view.epoch = epoch;
            }
            view.tables.clone()
        };
        for (_db, table) in tables.iter().flatten() {
            match table.get(key) {
                Ok(Some(v)) => match decode_value(v.value(), key)? {
                    // The base holds a newer version (or this one).
                    (upto, Layer::Full(_)) if covered > 0 && upto <= covered => {}
                    (upto, Layer::Full(entry)) => return Ok(Some((entry, upto))),
                    (upto, Layer::Chain(chain)) => chains.push((upto, chain)),
                },
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::storage(format!(
                        "reading key {key:02x?} in the cold tier: {e}"
                    )))
                }
            }
        }
        Ok(None)
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
                Ok(Err(failure)) => return Err(failure.to_error(&self.files.read().active_path)),
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

/// The key's entry in the base and the base's covered LSN.
fn read_base(base: &dyn BaseTier, key: &[u8]) -> Result<(Option<Entry>, u64)> {
    let entry = match base.get(key) {
        Ok(Some(bytes)) => Some(Entry::decode(&bytes, || {
            format!("key {key:02x?} in the base snapshot")
        })?),
        Ok(None) => None,
        Err(source) => return Err(Error::Base { source }),
    };
    Ok((entry, base.covered_lsn()))
}

/// The table of `db` in a new read transaction (`None` before the first write created it).
fn open_table(db: &Database) -> Result<Option<Table>> {
    let txn = db
        .begin_read()
        .map_err(|e| Error::storage(format!("read transaction: {e}")))?;
    match txn.open_table(TABLE) {
        Ok(t) => Ok(Some(Arc::new(t))),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(Error::storage(format!("opening table: {e}"))),
    }
}

impl Drop for ColdTier {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct Writer {
    /// Reused for building cold-tier values.
    scratch: Vec<u8>,
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
            let mut rotate = None;
            match msg {
                Ok(Msg::Batch(b)) => batches.push(b),
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Ok(Msg::Rotate(db, file, ack)) => rotate = Some((db, file, ack)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while rotate.is_none() && batches.len() < MAX_BATCHES_PER_COMMIT {
                match self.rx.try_recv() {
                    Ok(Msg::Batch(b)) => batches.push(b),
                    Ok(Msg::Flush(ack)) => acks.push(ack),
                    Ok(Msg::Rotate(db, file, ack)) => rotate = Some((db, file, ack)),
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
            if let Some((db, file, ack)) = rotate {
                // What came before the request went to the old file, now sealed.
                self.db = db;
                self.writeback = file;
                self.cleanup_cursor.clear();
                let _ = ack.send(());
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
            let mut ops: Vec<&mut SpillOp> = batches.iter_mut().flatten().collect();
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
            let tombstones = self.config.tombstones.load(Ordering::SeqCst);
            let covered = self.config.covered.load(Ordering::Acquire);
            for op in ops {
                let r = match &op.value {
                    // The installed base holds this version (it was evicted before the base
                    // came); reads would skip it, and every older one below it.
                    Some(v) if covered > 0 && op.upto <= covered && !is_chain(v) => Ok(()),
                    None if covered > 0 && op.upto <= covered => Ok(()),
                    Some(v) if is_chain(v) => {
                        let (upto, folded) = self.merge_chain(&table, &op.key, v)?;
                        let entry = folded.as_deref().unwrap_or(&tombstone[..]);
                        op.heavy = Some(entry.len() > HEAVY_ENTRY_BYTES);
                        put_value(upto, entry, &mut self.scratch);
                        table.insert(&*op.key, &self.scratch[..]).map(|_| ())
                    }
                    Some(v) => {
                        put_value(op.upto, v, &mut self.scratch);
                        table.insert(&*op.key, &self.scratch[..]).map(|_| ())
                    }
                    None if tombstones => {
                        put_value(op.upto, &tombstone, &mut self.scratch);
                        table.insert(&*op.key, &self.scratch[..]).map(|_| ())
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

    /// Merges the operand chain `chain` of `key` into the key's value in the active file
    /// (this transaction's `table`): folded over a full entry there, appended to a chain
    /// there, or written alone where the active file has nothing (then it is folded over the
    /// sealed file or the base when read, so the writer reads neither). Operands the value
    /// there already holds (an LSN at or below its own) are left out. Returns the new value's
    /// `upto_lsn` and its encoding (`None`: no data).
    fn merge_chain(
        &self,
        table: &redb::Table<&[u8], &[u8]>,
        key: &[u8],
        chain: &[u8],
    ) -> Result<(u64, Option<Vec<u8>>), Failure> {
        let bad = |e: Error| Failure {
            step: "merging operands",
            os_code: None,
            kind: std::io::ErrorKind::InvalidData,
            message: e.to_string(),
        };
        let covered = self.config.covered.load(Ordering::Acquire);
        let below = match table.get(key).map_err(Failure::redb("spill read"))? {
            Some(v) => match decode_value(v.value(), key).map_err(bad)? {
                // Stale: the base holds newer; the chain goes above it alone and reads fold it
                // over the base.
                (upto, Layer::Full(_)) if covered > 0 && upto <= covered => None,
                layer => Some(layer),
            },
            None => None,
        };
        let mut chain = KeyChanges::decode(chain).map_err(|e| bad(e.into()))?;
        let encode = |e: Entry| {
            let mut out = Vec::with_capacity(e.encoded_size_hint() + 8);
            e.encode(&mut out);
            out
        };
        Ok(match below {
            None => (chain.last_lsn(), Some(chain_bytes(&chain))),
            Some((upto, Layer::Full(entry))) => (
                upto.max(chain.last_lsn()),
                chain.fold_over_from(Some(entry), upto).map(encode),
            ),
            Some((upto, Layer::Chain(mut older))) => {
                chain.drop_through(upto);
                let last = chain.last_lsn();
                older.then(chain);
                (upto.max(last), Some(chain_bytes(&older)))
            }
        })
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
                // Operand chains are left alone: whether they expired depends on what is below.
                if let Ok((upto, Layer::Full(mut data))) = decode_value(v.value(), &key) {
                    if data.all_expired(now) {
                        rewrites.push((key.clone(), None));
                    } else if data.purge_expired(now) {
                        let mut buf = Vec::new();
                        data.encode(&mut buf);
                        let mut value = Vec::new();
                        put_value(upto, &buf, &mut value);
                        rewrites.push((key.clone(), Some(value)));
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
            let tombstones = self.config.tombstones.load(Ordering::SeqCst);
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
                    None if tombstones => {
                        put_value(0, &tombstone, &mut self.scratch);
                        table.insert(&key[..], &self.scratch[..]).map(|_| ())
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

    /// A damaged cold-tier value is `Corrupt`, never read as something else: too short for its
    /// LSN, a flipped bit in the entry, or in an operand chain.
    #[test]
    fn damaged_values_are_corrupt() {
        let key = [0u8, 1, 2];
        assert!(matches!(
            decode_value(&[1, 2, 3], &key),
            Err(Error::Corrupt { .. })
        ));
        let mut entry = Vec::new();
        Entry::Value {
            value: b"v".as_slice().into(),
            expires_at_ms: 0,
        }
        .encode(&mut entry);
        let mut chain = KeyChanges::default();
        let values = [b"x".to_vec()];
        let op = millpond_format::ChangeOp::ListAppend {
            values: &values,
            expires_at_ms: 0,
        };
        chain
            .push_logged(millpond_format::StateKind::List, None, &op, 3)
            .unwrap();
        for body in [entry, chain_bytes(&chain)] {
            let mut value = Vec::new();
            put_value(7, &body, &mut value);
            let (upto, _) = decode_value(&value, &key).unwrap();
            assert_eq!(upto, 7);
            for bit in 64..value.len() * 8 {
                let mut bad = value.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    decode_value(&bad, &key).is_err(),
                    "bit {bit} flipped was not caught"
                );
            }
        }
    }

    /// Every cold-tier file is gone from its name at once and deleted soon, with any older
    /// one moved aside; other files, including ones whose names merely resemble, are never
    /// touched.
    #[test]
    fn discard_moves_aside_and_deletes_only_its_own_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let files = ["cold.redb", "cold-1.redb", "cold-27.redb"];
        for f in files {
            std::fs::write(dir.path().join(f), b"old").unwrap();
        }
        let older = dir.path().join(format!("cold-3.redb{DISCARDED}1"));
        std::fs::write(&older, b"older").unwrap();
        let keep = [
            "cold.redb.discarded",
            "other.redb.discarded-1",
            "xcold.redb.discarded-1",
            "cold-.redb",
            "cold-1x.redb",
            "cold-1.redb.part",
        ]
        .map(|k| dir.path().join(k));
        for k in &keep {
            std::fs::write(k, b"keep").unwrap();
        }
        discard(dir.path()).unwrap();
        for f in files {
            assert!(!dir.path().join(f).exists(), "{f}");
        }
        let started = Instant::now();
        let leftovers = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(DISCARDED))
                .count()
        };
        // The three `keep` names with the infix stay.
        while leftovers() > 2 {
            assert!(started.elapsed() < Duration::from_secs(30), "not deleted");
            std::thread::sleep(Duration::from_millis(5));
        }
        for k in &keep {
            assert_eq!(std::fs::read(k).unwrap(), b"keep", "{}", k.display());
        }
        // Nothing there: nothing to do.
        discard(&dir.path().join("missing")).unwrap();
    }
}
