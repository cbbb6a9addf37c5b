//! The store: registry of states, shards of the hot tier, the cold tier, and the one code path
//! ([`Inner::run`]) through which every read, write and replayed change of a key goes.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use millpond_format::entry::HEAVY_ENTRY_BYTES;
use millpond_format::key::{CompositeKeyBuf, MAX_KEY_BYTES};
use millpond_format::ttl::{drop_expired, replay_time};
use millpond_format::{fold, Entry, KeyChanges};
use parking_lot::Mutex;

use crate::base::BaseTier;
use crate::change::{Change, ChangeOp, ChangeSink};
use crate::clock::{Clock, SystemClock};
use crate::descriptor::{StateInfo, StateKind, StateSchema};
use crate::entry::HotEntry;
use crate::error::{Error, Result};
use crate::hot_key::HotKey;
use crate::key_group::{key_group, KeyGroupRange};
use crate::settings::{Budget, StoreSettings};
use crate::shard::{charge, is_chain, Shard};
use crate::spill::{ColdTier, Shards, WriterConfig};
use crate::ttl::{TtlUpdateType, TtlVisibility};

/// The smallest `max_value_bytes` with which list appends and map puts are kept as operands:
/// 85 layers of a key at [`HEAVY_ENTRY_BYTES`] each, folded to 3× their size (docs/state.md,
/// "Blind appends and puts").
const BLIND_MIN_VALUE_BYTES: usize = 256 * HEAVY_ENTRY_BYTES;

thread_local! {
    static THREAD_COLD_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many cold-tier reads the calling thread has made, in any store. Read it before and
/// after a call to tell whether the call went to disk (benchmarks use it to split latency).
///
/// ```
/// assert_eq!(millpond_state::thread_cold_reads(), 0);
/// ```
pub fn thread_cold_reads() -> u64 {
    THREAD_COLD_READS.get()
}

/// Builds a [`Store`]: settings plus components.
///
/// ```
/// use millpond_state::{ManualClock, NullSink, Store, StoreSettings};
/// let dir = tempfile::tempdir().unwrap();
/// let store = Store::builder(dir.path())
///     .settings(StoreSettings { memory_budget_bytes: 64 << 20, ..Default::default() })
///     .clock(ManualClock::new(0))
///     .change_sink(NullSink)
///     .open()
///     .unwrap();
/// store.close().unwrap();
/// ```
pub struct StoreBuilder {
    dir: PathBuf,
    settings: StoreSettings,
    clock: Arc<dyn Clock>,
    sink: Option<Arc<dyn ChangeSink>>,
    base: Option<(Arc<dyn BaseTier>, Vec<StateSchema>)>,
}

impl StoreBuilder {
    /// Opens the store over `base`, the state of a snapshot, whose entries it reads where
    /// its own tiers have nothing (see [`BaseTier`]). `schemas` are the snapshot's states:
    /// registering one of them uses its id, so that the base's keys are found; it must be
    /// registered with the same kind. Default: no base, the store starts empty.
    pub fn base(mut self, base: Arc<dyn BaseTier>, schemas: Vec<StateSchema>) -> Self {
        self.base = Some((base, schemas));
        self
    }

    /// Sets the settings (default: [`StoreSettings::default`]).
    pub fn settings(mut self, settings: StoreSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Sets the clock that TTL uses (default: [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets the change sink that receives every mutation (default: none, which costs nothing).
    pub fn change_sink(mut self, sink: impl ChangeSink) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// Sets a shared change sink.
    pub fn change_sink_arc(mut self, sink: Arc<dyn ChangeSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Opens the store in its directory, creating it if needed. The cold tier starts empty:
    /// state is rebuilt from snapshots and the WAL, not from the cold tier.
    pub fn open(self) -> Result<Store> {
        let budget = self.settings.validate().map_err(Error::invalid)?;
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: self.dir.display().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        Store::start(self, budget, lock)
    }
}

/// Counters and sizes of a store, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Entries in the hot tier (tombstones included).
    pub hot_entries: u64,
    /// Bytes charged to the hot tier.
    pub hot_bytes: u64,
    /// The hot tier's share of the budget.
    pub hot_budget_bytes: u64,
    /// Evicted entries not yet written to the cold tier.
    pub pending_entries: u64,
    /// Bytes of those.
    pub pending_bytes: u64,
    /// Accesses that found their key in the hot tier.
    pub hits: u64,
    /// Accesses that did not.
    pub misses: u64,
    /// Reads that went to the cold tier.
    pub cold_reads: u64,
    /// Entries evicted from the hot tier.
    pub evictions: u64,
    /// Entries (or deletes) queued for the cold tier.
    pub spills: u64,
    /// Bytes of the cold tier's active redb file.
    pub cold_active_bytes: u64,
    /// Bytes of its sealed file (0 when there is none; see [`Store::rotate_cold`]).
    pub cold_sealed_bytes: u64,
    /// List appends, map puts and map removes kept as operands without reading the key
    /// (docs/state.md, "Blind appends and puts").
    pub blind_writes: u64,
    /// Dirty entries evicted without a cold-tier write because the installed base (the
    /// latest snapshot) holds them.
    pub covered_drops: u64,
}

/// Keyed state: the five kinds of Flink's keyed state, sharded by key group, in an LRU hot
/// tier bounded by a memory budget, spilling to redb.
///
/// A `Store` is a cheap handle (`Clone`); the state handles it returns keep it open.
///
/// ```
/// use millpond_state::{Store, StringCodec, U64Codec, ValueStateDescriptor};
/// let dir = tempfile::tempdir().unwrap();
/// let store = Store::builder(dir.path()).open().unwrap();
/// let counts = store
///     .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
///     .unwrap();
/// counts.update_with(&"word".to_string(), |n| Some(n.unwrap_or(0) + 1)).unwrap();
/// assert_eq!(counts.get(&"word".to_string()).unwrap(), Some(1));
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub settings: StoreSettings,
    pub owned: KeyGroupRange,
    pub clock: Arc<dyn Clock>,
    sink: Option<Arc<dyn ChangeSink>>,
    shards: Shards,
    shard_of_kg: Arc<[u16]>,
    registry: Mutex<Registry>,
    has_ttl: Arc<AtomicBool>,
    /// Set by `apply` until `replay_done`: TTL cleanup waits, since the log may still refresh
    /// what today's clock calls expired.
    replaying: Arc<AtomicBool>,
    closed: AtomicBool,
    cold: ColdTier,
    /// Whether list appends and map puts may be kept as operands (the setting, and a value
    /// limit large enough for the bound of docs/state.md, "Blind appends and puts").
    blind: bool,
    /// The newest LSN the store has seen: it numbers changes itself when the sink does not.
    lsn: AtomicU64,
    /// Held while the store is open; released by `close`.
    lock: Mutex<Option<File>>,
}

/// The registered states, and the ids a base snapshot gave to states not registered yet.
struct Registry {
    states: HashMap<String, Arc<StateInfo>>,
    reserved: HashMap<String, StateSchema>,
}

impl Registry {
    fn id_taken(&self, id: u16) -> bool {
        self.states.values().any(|s| s.id == id) || self.reserved.values().any(|s| s.id == id)
    }
}

/// How an access treats TTL and the change sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// A read: may return expired data (visibility permitting) and refresh TTL.
    Read,
    /// A write: changes go to the sink first.
    Write,
    /// A write that does not depend on the old data (a put): a key missing from the hot tier
    /// is not looked up in the cold tier, whose version the new one will overwrite.
    BlindWrite,
    /// A replayed change: applied without the sink, to the data as it was when the change
    /// was made (`at_ms`, derived from the change's expiry; `None`: no TTL filtering).
    /// `blind`: the change does not depend on the old data (put, clear, list replace), so a
    /// key missing from the hot tier is not looked up below, as for `BlindWrite`.
    Replay {
        at_ms: Option<u64>,
        blind: bool,
        lsn: Option<u64>,
    },
}

impl Access {
    /// Whether the access overwrites whatever was there, so the old data need not be read.
    fn is_blind(self) -> bool {
        matches!(
            self,
            Access::BlindWrite | Access::Replay { blind: true, .. }
        )
    }
}

/// Hands changes to the sink, then applies them.
pub(crate) struct Emitter<'a> {
    sink: Option<&'a dyn ChangeSink>,
    state: &'a StateInfo,
    key_group: u16,
    key: &'a [u8],
    max_value_bytes: usize,
    now_ms: u64,
    changed: bool,
    /// The LSN of the newest change applied (see [`Inner::number`]).
    lsn: u64,
    /// The LSN of the replayed change, if this access replays one with its LSN.
    replay_lsn: Option<u64>,
    counter: &'a AtomicU64,
    /// A TTL refresh asked for by a read (`Some(None)`: the whole entry; `Some(Some(k))`: one
    /// map entry), applied once the read is done and expired data is gone.
    touch: Option<Option<Vec<u8>>>,
}

impl Emitter<'_> {
    /// Records `op` in the sink and applies it to `slot`. Nothing changes if either refuses.
    pub fn apply(&mut self, slot: &mut Option<Entry>, op: ChangeOp<'_>) -> Result<()> {
        let size = match op {
            ChangeOp::Put { value, .. } => value.len() + 13,
            ChangeOp::ListReplace { values, .. } => values.iter().map(|v| v.len() + 13).sum(),
            ChangeOp::ListAppend { values, .. } => {
                slot.as_ref().map_or(0, Entry::encoded_size_hint)
                    + values.iter().map(|v| v.len() + 13).sum::<usize>()
            }
            ChangeOp::MapPut {
                user_key, value, ..
            } => {
                slot.as_ref().map_or(0, Entry::encoded_size_hint)
                    + user_key.len()
                    + value.len()
                    + 18
            }
            _ => 0,
        };
        if size > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                state: self.state.name.clone(),
                len: size,
                max: self.max_value_bytes,
            });
        }
        let logged = match (self.replay_lsn, self.sink) {
            (Some(lsn), _) => lsn,
            (None, Some(sink)) => sink
                .append(&Change {
                    state: &self.state.name,
                    kind: self.state.kind,
                    key_group: self.key_group,
                    key: self.key,
                    op,
                })
                .map_err(|source| Error::ChangeSink { source })?,
            (None, None) => 0,
        };
        self.lsn = number(self.counter, logged);
        fold::apply(slot, &op);
        self.changed = true;
        Ok(())
    }

    /// The expiry that a write now gives (0: the state has no TTL).
    pub fn expiry(&self) -> u64 {
        self.state
            .ttl
            .map_or(0, |ttl| self.now_ms.saturating_add(ttl.ttl_ms()))
    }

    /// After a read of a present entry: asks for its TTL to be refreshed, if the state says
    /// reads do. The refresh is a change like any other (the sink records it).
    pub fn touch(&mut self, slot: &Option<Entry>, map_key: Option<&[u8]>) {
        let refresh = self
            .state
            .ttl
            .is_some_and(|t| t.update_type == TtlUpdateType::OnReadAndWrite);
        if refresh && slot.is_some() {
            self.touch = Some(map_key.map(<[u8]>::to_vec));
        }
    }

    fn refresh(&mut self, slot: &mut Option<Entry>, map_key: Option<&[u8]>) -> Result<()> {
        let expires_at_ms = self.expiry();
        match (map_key, &*slot) {
            (Some(user_key), Some(Entry::Map(map))) if map.contains_key(user_key) => self.apply(
                slot,
                ChangeOp::MapTouch {
                    user_key,
                    expires_at_ms,
                },
            ),
            (None, Some(_)) => self.apply(slot, ChangeOp::Touch { expires_at_ms }),
            _ => Ok(()),
        }
    }
}

impl Store {
    /// A builder for a store kept in `dir`.
    pub fn builder(dir: impl AsRef<Path>) -> StoreBuilder {
        StoreBuilder {
            dir: dir.as_ref().to_owned(),
            settings: StoreSettings::default(),
            clock: Arc::new(SystemClock),
            sink: None,
            base: None,
        }
    }

    fn start(b: StoreBuilder, budget: Budget, lock: File) -> Result<Store> {
        let s = &b.settings;
        let n = s.shards;
        let per_shard = budget.hot_bytes / n;
        // Half the queue waits in the channel, half in the shards' unsent batches.
        let send_threshold = (budget.spill_queue_bytes / (2 * n)).max(4096);
        let queue_batches = n.max(1);
        let has_base = b.base.is_some();
        // The installed base's LSN: shards drop dirty entries it holds when they evict them.
        let covered = Arc::new(AtomicU64::new(
            b.base.as_ref().map_or(0, |(base, _)| base.covered_lsn()),
        ));
        let shards: Shards = (0..n)
            .map(|i| {
                let mut shard = Shard::new(i as u16, per_shard, send_threshold, covered.clone());
                // Any key may have an older version in the base: deletes need tombstones and
                // misses a look below.
                shard.spilled_any = has_base;
                CachePadded::new(Mutex::new(shard))
            })
            .collect();
        let max = s.max_key_groups as usize;
        // Contiguous key-group ranges per shard, like instances of a Flink operator.
        let shard_of_kg: Arc<[u16]> = (0..max).map(|kg| (kg * n / max) as u16).collect();
        let replaying = Arc::new(AtomicBool::new(false));
        let has_ttl = Arc::new(AtomicBool::new(false));
        let config = WriterConfig {
            has_ttl: has_ttl.clone(),
            replaying: replaying.clone(),
            ttl_cleanup_interval: (s.ttl_cleanup_interval_ms > 0)
                .then(|| Duration::from_millis(s.ttl_cleanup_interval_ms)),
            ttl_cleanup_entries: s.ttl_cleanup_entries_per_step.max(1),
            shard_of_kg: shard_of_kg.clone(),
            tombstones: Arc::new(AtomicBool::new(has_base)),
            covered: covered.clone(),
        };
        let (base, schemas) = match b.base {
            Some((base, schemas)) => (Some(base), schemas),
            None => (None, Vec::new()),
        };
        let mut reserved = HashMap::new();
        for schema in schemas {
            if reserved.values().any(|s: &StateSchema| s.id == schema.id) {
                return Err(Error::invalid(format!(
                    "two states of the base share id {}",
                    schema.id
                )));
            }
            reserved.insert(schema.name.clone(), schema);
        }
        let base_lsn = base.as_ref().map_or(0, |b| b.covered_lsn());
        let blind = s.blind_writes && s.max_value_bytes >= BLIND_MIN_VALUE_BYTES;
        let cold = ColdTier::create(
            &b.dir,
            budget.cold_cache_bytes,
            queue_batches,
            shards.clone(),
            b.clock.clone(),
            config,
            base,
        )?;
        Ok(Store {
            inner: Arc::new(Inner {
                owned: s.key_groups.unwrap_or(KeyGroupRange::all(s.max_key_groups)),
                settings: b.settings,
                clock: b.clock,
                sink: b.sink,
                shards,
                shard_of_kg,
                registry: Mutex::new(Registry {
                    states: HashMap::new(),
                    reserved,
                }),
                has_ttl,
                replaying,
                closed: AtomicBool::new(false),
                blind,
                lsn: AtomicU64::new(base_lsn),
                cold,
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// The settings the store runs with.
    pub fn settings(&self) -> &StoreSettings {
        &self.inner.settings
    }

    /// The registered states, by id: what a snapshot of this store records.
    pub fn schemas(&self) -> Vec<StateSchema> {
        let mut schemas: Vec<StateSchema> = self
            .inner
            .registry
            .lock()
            .states
            .values()
            .map(|s| StateSchema {
                name: s.name.clone(),
                kind: s.kind,
                ttl: s.ttl,
                id: s.id,
            })
            .collect();
        schemas.sort_by_key(|s| s.id);
        schemas
    }

    /// The key groups this store owns.
    pub fn key_groups(&self) -> KeyGroupRange {
        self.inner.owned
    }

    /// Replays one change (from the write-ahead log) without passing it to the change sink.
    ///
    /// The state must be registered, or be one of the base snapshot's (see
    /// [`StoreBuilder::base`]), which registers it with the snapshot's schema. Replaying the changes a store emitted, in order, into a
    /// fresh store gives the same state. From the first `apply` until [`Store::replay_done`],
    /// TTL cleanup waits: a TTL refresh later in the log may extend data that today's clock
    /// already calls expired (reads still never return expired data).
    pub fn apply(&self, change: &Change<'_>) -> Result<()> {
        self.apply_at(change, None)
    }

    /// [`Store::apply`] of the change the log holds at `lsn`. Knowing its LSN, the store can
    /// keep a list append, map put or map remove on a key that is not in memory as an operand
    /// instead of reading the key first (docs/state.md, "Blind appends and puts"), as it does
    /// for live writes. LSNs of one key must increase, and be above the base's
    /// [`BaseTier::covered_lsn`].
    ///
    /// ```
    /// use millpond_state::{Change, ChangeOp, ListStateDescriptor, StateKind, Store, U64Codec};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = Store::builder(dir.path()).open().unwrap();
    /// let lists = store
    ///     .list_state(ListStateDescriptor::new("l", U64Codec, U64Codec))
    ///     .unwrap();
    /// let (key, one, two) = (7u64.to_be_bytes(), 1u64.to_be_bytes(), 2u64.to_be_bytes());
    /// for (lsn, v) in [(11, &one), (12, &two)] {
    ///     let values = [v.to_vec()];
    ///     let change = Change {
    ///         state: "l",
    ///         kind: StateKind::List,
    ///         key_group: millpond_state::key_group(&key, 128),
    ///         key: &key,
    ///         op: ChangeOp::ListAppend { values: &values, expires_at_ms: 0 },
    ///     };
    ///     store.apply_logged(&change, lsn).unwrap();
    /// }
    /// store.replay_done();
    /// assert_eq!(lists.get(&7).unwrap(), vec![1, 2]);
    /// ```
    pub fn apply_logged(&self, change: &Change<'_>, lsn: u64) -> Result<()> {
        self.apply_at(change, Some(lsn))
    }

    fn apply_at(&self, change: &Change<'_>, lsn: Option<u64>) -> Result<()> {
        if !self.inner.replaying.load(Ordering::Relaxed) {
            self.inner.replaying.store(true, Ordering::SeqCst);
        }
        let found = self.inner.registry.lock().states.get(change.state).cloned();
        let st = match found {
            Some(st) => st,
            None => {
                // A state of the base snapshot needs no registration to be replayed: its
                // schema is known (the job may have dropped it since).
                let reserved = self
                    .inner
                    .registry
                    .lock()
                    .reserved
                    .get(change.state)
                    .cloned();
                match reserved {
                    Some(schema) => self.register(&schema.name, schema.kind, schema.ttl)?,
                    None => {
                        return Err(Error::UnknownState {
                            name: change.state.to_owned(),
                        })
                    }
                }
            }
        };
        if st.kind != change.kind || !st.kind.accepts(&change.op) {
            return Err(Error::invalid(format!(
                "change {:?} does not fit state '{}' of kind {}",
                change.op, st.name, st.kind
            )));
        }
        let mut ck = CompositeKeyBuf::with_key_capacity(change.key.len());
        ck.start(st.id).extend_from_slice(change.key);
        if let Some(lsn) = lsn.filter(|&l| l > 0) {
            let op = match change.op {
                ChangeOp::ListAppend { values, .. } => Some(OperandOp::ListAppend(values)),
                ChangeOp::MapPut {
                    user_key, value, ..
                } => Some(OperandOp::MapPut(user_key, value)),
                ChangeOp::MapRemove { user_key } => Some(OperandOp::MapRemove(user_key)),
                _ => None,
            };
            if let Some(op) = op {
                if self
                    .inner
                    .operand(&st, &mut ck, op, Some((lsn, change.op)))?
                {
                    return Ok(());
                }
            }
        }
        let at_ms = replay_time(&change.op, st.ttl.map(|t| t.ttl_ms()));
        let blind = matches!(
            change.op,
            ChangeOp::Put { .. } | ChangeOp::Clear | ChangeOp::ListReplace { .. }
        );
        self.inner.run(
            &st,
            &mut ck,
            Access::Replay { at_ms, blind, lsn },
            |slot, em| em.apply(slot, change.op),
        )
    }

    /// Ends a replay (see [`Store::apply`]): TTL cleanup resumes.
    pub fn replay_done(&self) {
        self.inner.replaying.store(false, Ordering::SeqCst);
    }

    /// Waits until every evicted entry is written to the cold tier.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.cold.flush()
    }

    /// Seals the cold tier's redb file and starts a new one, unless the file sealed by the
    /// last rotation is still there (then nothing changes and this returns `false`).
    ///
    /// This is how a running instance keeps its cold tier small (docs/state.md, "Cold tier
    /// rotation"): it rotates when a snapshot starts, takes the snapshot's changes up to a
    /// log position read after this returned, installs the snapshot's runs as the store's
    /// base ([`Store::install_base`]), and then deletes the sealed file
    /// ([`Store::drop_sealed_cold`]): everything in it was evicted, hence changed, before
    /// this returned, so the snapshot holds it. From the first rotation on, deletes leave
    /// tombstones, since a base may hold older versions.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use millpond_state::{BaseTier, BoxError, Store};
    ///
    /// /// Stands in for a snapshot's runs (`millpond_snapshot::SnapshotBase`).
    /// struct Runs;
    /// impl BaseTier for Runs {
    ///     fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
    ///         Ok(None)
    ///     }
    ///     fn covered_lsn(&self) -> u64 {
    ///         0
    ///     }
    /// }
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = Store::builder(dir.path()).open().unwrap();
    /// assert!(store.rotate_cold().unwrap());
    /// assert!(!store.rotate_cold().unwrap(), "one sealed file at a time");
    /// // ... a snapshot covering every change made before the rotation commits ...
    /// store.install_base(Arc::new(Runs));
    /// store.drop_sealed_cold().unwrap();
    /// assert_eq!(store.stats().cold_sealed_bytes, 0);
    /// assert!(store.rotate_cold().unwrap());
    /// ```
    pub fn rotate_cold(&self) -> Result<bool> {
        self.inner.check_open()?;
        for shard in self.inner.shards.iter() {
            shard.lock().spilled_any = true;
        }
        self.inner.cold.rotate()
    }

    /// Makes `base` the tier read below the cold tier, in place of the base the store was
    /// opened over (if any). `base` must hold the state as of a log position at or after
    /// every change made before the first [`Store::rotate_cold`] (or be a newer snapshot of
    /// the one the store was opened over), and every state it holds must be registered or
    /// reserved: it is a newer snapshot of this store's own changes. Its
    /// [`BaseTier::covered_lsn`] is in the numbering of the store's change sink (the WAL's
    /// LSNs): operands the store keeps with LSNs at or below it are not applied over it again.
    pub fn install_base(&self, base: Arc<dyn BaseTier>) {
        self.inner.cold.set_base(base);
    }

    /// Deletes the cold tier's sealed file (see [`Store::rotate_cold`]). Call it only once the
    /// installed base holds every change made before the rotation that sealed it.
    pub fn drop_sealed_cold(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.cold.drop_sealed()
    }

    /// Removes wholly expired entries among the `max_per_shard` least recently used of every
    /// shard, now. The background cleanup does this step by step; call it to clean on demand.
    /// Returns how many entries were removed.
    pub fn cleanup_expired(&self, max_per_shard: usize) -> Result<usize> {
        self.inner.check_open()?;
        if self.inner.replaying.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let now = self.inner.clock.now_ms();
        let mut removed = 0;
        for shard in self.inner.shards.iter() {
            let (n, out) = {
                let mut s = shard.lock();
                let n = s.cleanup_expired(max_per_shard, now);
                (n, s.take_outgoing(false))
            };
            removed += n;
            if let Some(batch) = out {
                self.inner.cold.send(batch)?;
            }
        }
        Ok(removed)
    }

    /// Changes the hot tier's share of memory while the store runs, for a process that splits
    /// one budget over several stores (one per Kafka partition it holds, say) and re-splits
    /// it when they come and go. Shards over their new share evict now (dirty entries go to
    /// the spill queue, as any eviction). The cold tier's cache and the spill queue keep the
    /// sizes they were opened with. At least 4 KiB a shard.
    ///
    /// ```
    /// use millpond_state::{Store, StoreSettings};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = Store::builder(dir.path()).settings(StoreSettings::default()).open().unwrap();
    /// store.set_hot_budget(16 << 20).unwrap();
    /// assert!(store.stats().hot_budget_bytes <= 16 << 20);
    /// ```
    pub fn set_hot_budget(&self, hot_bytes: usize) -> Result<()> {
        self.inner.check_open()?;
        let per_shard = (hot_bytes / self.inner.shards.len()).max(4096);
        for shard in self.inner.shards.iter() {
            let mut guard = shard.lock();
            guard.budget = per_shard;
            self.inner.release_shard(guard)?;
        }
        Ok(())
    }

    /// Counters and sizes.
    pub fn stats(&self) -> StoreStats {
        let mut st = StoreStats::default();
        for shard in self.inner.shards.iter() {
            let s = shard.lock();
            st.hot_budget_bytes += s.budget as u64;
            st.hot_entries += s.lru.len() as u64;
            st.hot_bytes += s.used as u64;
            st.pending_entries += s.pending.len() as u64;
            st.pending_bytes += s.pending_bytes as u64;
            st.hits += s.stats.hits;
            st.misses += s.stats.misses;
            st.cold_reads += s.stats.cold_reads;
            st.evictions += s.stats.evictions;
            st.spills += s.stats.spills;
            st.blind_writes += s.stats.blind_writes;
            st.covered_drops += s.stats.covered_drops;
        }
        (st.cold_active_bytes, st.cold_sealed_bytes) = self.inner.cold.file_bytes();
        st
    }

    /// Writes what is queued to the cold tier and stops the background writer. Later calls on
    /// this store or its state handles fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let result = self.inner.cold.shutdown();
        // The directory is free for another store once this one is closed.
        self.inner.lock.lock().take();
        result
    }

    pub(crate) fn register(
        &self,
        name: &str,
        kind: StateKind,
        ttl: Option<crate::TtlConfig>,
    ) -> Result<Arc<StateInfo>> {
        self.inner.check_open()?;
        if name.is_empty() || name.len() > 1024 {
            return Err(Error::invalid("a state name must have 1 to 1024 bytes"));
        }
        let mut reg = self.inner.registry.lock();
        if let Some(existing) = reg.states.get(name) {
            if existing.kind == kind && existing.ttl == ttl {
                return Ok(existing.clone());
            }
            return Err(Error::StateMismatch {
                name: name.to_owned(),
                existing: format!("{} with ttl {:?}", existing.kind, existing.ttl),
                requested: format!("{kind} with ttl {ttl:?}"),
            });
        }
        let id = match reg.reserved.get(name) {
            Some(schema) if schema.kind != kind => {
                return Err(Error::StateMismatch {
                    name: name.to_owned(),
                    existing: format!("{} in the base snapshot", schema.kind),
                    requested: format!("{kind} with ttl {ttl:?}"),
                })
            }
            Some(schema) => schema.id,
            None => (0..=u16::MAX)
                .find(|&id| !reg.id_taken(id))
                .ok_or_else(|| Error::invalid("at most 65536 states per store"))?,
        };
        reg.reserved.remove(name);
        let info = Arc::new(StateInfo {
            id,
            name: name.to_owned(),
            kind,
            ttl,
        });
        if ttl.is_some() {
            self.inner.has_ttl.store(true, Ordering::SeqCst);
        }
        reg.states.insert(name.to_owned(), info.clone());
        Ok(info)
    }
}

impl Inner {
    /// Fails once the store is closed, or once its cold tier's writer failed: then every
    /// call reports that failure, before it changes anything.
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        self.cold.check()
    }

    /// Checks the composite key `ck` and fills in its key group, which it returns.
    fn locate(&self, ck: &mut CompositeKeyBuf) -> Result<u16> {
        self.check_open()?;
        let key_len = ck.key().len();
        if key_len > MAX_KEY_BYTES {
            return Err(Error::KeyTooLarge {
                len: key_len,
                max: MAX_KEY_BYTES,
            });
        }
        let kg = key_group(ck.key(), self.settings.max_key_groups);
        if !self.owned.contains(kg) {
            return Err(Error::KeyGroupNotOwned {
                key_group: kg,
                owned: self.owned,
            });
        }
        ck.set_key_group(kg);
        Ok(kg)
    }

    /// The read fast path: if the key is in the hot tier and reading it changes nothing (no
    /// TTL on the state), runs `f` on its data in place and returns `Some`; otherwise `None`,
    /// and the caller takes [`Inner::run`]. Saves moving the entry out and back, which writes
    /// to its cache lines.
    pub(crate) fn read_hot<R>(
        &self,
        st: &StateInfo,
        ck: &mut CompositeKeyBuf,
        f: impl FnOnce(Option<&Entry>) -> Result<R>,
    ) -> Result<Option<R>> {
        if st.ttl.is_some() {
            return Ok(None);
        }
        let kg = self.locate(ck)?;
        let ck: &[u8] = ck.as_bytes();
        let mut guard = self.shards[self.shard_of_kg[kg as usize] as usize].lock();
        let shard = &mut *guard;
        let Some(entry) = shard.lookup(ck) else {
            return Ok(None);
        };
        match &entry.data {
            Entry::Tombstone => f(None),
            d => f(Some(d)),
        }
        .map(Some)
    }

    /// Runs `f` on the current data of one key, under its shard's lock.
    ///
    /// `ck` holds the composite key (state id and encoded key); this fills in the key group. `f` sees the data after TTL filtering, and
    /// changes it only through the [`Emitter`], so that the sink sees every change first.
    pub(crate) fn run<R>(
        &self,
        st: &StateInfo,
        ck: &mut CompositeKeyBuf,
        access: Access,
        f: impl FnOnce(&mut Option<Entry>, &mut Emitter<'_>) -> Result<R>,
    ) -> Result<R> {
        let kg = self.locate(ck)?;
        let key = ck.key();
        let ck: &[u8] = ck.as_bytes();
        let has_ttl = self.has_ttl.load(Ordering::Relaxed);
        let now_ms = if has_ttl { self.clock.now_ms() } else { 0 };
        let ttl = Ttl::for_access(st, access, now_ms);
        let mut em = Emitter {
            sink: match access {
                Access::Replay { .. } => None,
                _ => self.sink.as_deref(),
            },
            state: st,
            key_group: kg,
            key,
            max_value_bytes: self.settings.max_value_bytes,
            now_ms,
            changed: false,
            lsn: 0,
            replay_lsn: match access {
                Access::Replay { lsn, .. } => lsn,
                _ => None,
            },
            counter: &self.lsn,
            touch: None,
        };

        let mut guard = self.shards[self.shard_of_kg[kg as usize] as usize].lock();
        let shard = &mut *guard;
        let spilled_any = shard.spilled_any;
        let result;
        if shard.lru.peek(ck).is_some_and(|e| e.stub) {
            // An operand stub becomes the key's full entry: its operands folded over what is
            // below (unless this access replaces it all). Dirty: the operands are nowhere else.
            let (data, upto) = if access.is_blind() {
                (None, 0)
            } else {
                let stub = shard.stubs.get(ck).cloned();
                self.below(shard, ck, stub)?
            };
            shard.stubs.remove(ck);
            if let Some(entry) = shard.lru.peek_mut(ck) {
                entry.stub = false;
                entry.dirty = true;
                entry.upto = upto;
                entry.data = data.unwrap_or(Entry::Tombstone);
            }
        }
        if let Some(entry) = shard.lookup(ck) {
            let mut data = match std::mem::replace(&mut entry.data, Entry::Tombstone) {
                Entry::Tombstone => None,
                d => Some(d),
            };
            let (r, expired_removed) = ttl.process(&mut data, &mut em, f);
            result = r;
            entry.data = data.unwrap_or(Entry::Tombstone);
            // Removing expired data a read returned must reach the cold tier too.
            entry.dirty |= em.changed || expired_removed;
            if em.changed {
                entry.upto = em.lsn;
            }
            let old = entry.charged as usize;
            let new = charge(ck.len(), &entry.data);
            entry.charged = new as u32;
            let gone = matches!(entry.data, Entry::Tombstone);
            shard.used = shard.used + new - old;
            if gone && !spilled_any {
                // Nothing older can hide in the cold tier: forget the key entirely.
                shard.lru.pop(ck);
                shard.used -= new;
            }
        } else {
            shard.stats.misses += 1;
            let (mut data, upto) = if access.is_blind() {
                // What is below is replaced: nothing to read.
                (None, 0)
            } else {
                self.below(shard, ck, None)?
            };
            let (r, expired_removed) = ttl.process(&mut data, &mut em, f);
            result = r;
            // Keep what was read (clean) or written (dirty); a tombstone hides older cold data
            // and spares the next miss a cold read.
            if result.is_ok() && (data.is_some() || spilled_any) {
                let data = data.unwrap_or(Entry::Tombstone);
                let charged = charge(ck.len(), &data);
                shard.lru.push(
                    HotKey::from(ck),
                    HotEntry {
                        data,
                        dirty: em.changed || expired_removed,
                        charged: charged as u32,
                        upto: if em.changed { em.lsn } else { upto },
                        stub: false,
                    },
                );
                shard.used += charged;
            }
        }
        self.release_shard(guard)?;
        result
    }
}

impl Inner {
    /// The key's data below the hot tier: its pending version, else the cold tier (the redb
    /// files, then the base), with the operand chains kept above it folded over it, oldest
    /// first: a pending chain, then `stub`, the hot tier's. Operands that the version below
    /// already holds (an LSN at or below the LSN it holds every operand up to) are skipped.
    fn below(
        &self,
        shard: &mut Shard,
        ck: &[u8],
        stub: Option<KeyChanges>,
    ) -> Result<(Option<Entry>, u64)> {
        // One base for the whole read: versions at or below its LSN are skipped in its favour
        // (a dirty entry the base holds may have been dropped above them).
        let base = self.cold.base();
        let covered = base.as_ref().map_or(0, |b| b.covered_lsn());
        let stale = |upto: u64| covered > 0 && upto <= covered;
        let mut chain = KeyChanges::default();
        let found = match shard.pending.get(ck) {
            Some(p) => match p.value.as_deref() {
                Some(bytes) if is_chain(bytes) => {
                    chain = KeyChanges::decode(bytes)?;
                    None
                }
                _ if stale(p.upto) => None,
                None => Some((None, p.upto)),
                Some(bytes) => Some((
                    Some(Entry::decode(bytes, || format!("pending key {ck:02x?}"))?),
                    p.upto,
                )),
            },
            None => None,
        };
        let (entry, upto) = match found {
            Some(found) => found,
            None if shard.spilled_any => {
                shard.stats.cold_reads += 1;
                THREAD_COLD_READS.set(THREAD_COLD_READS.get() + 1);
                self.cold.get(ck, base.as_deref())?
            }
            None => (None, 0),
        };
        if let Some(stub) = stub {
            chain.then(stub);
        }
        let last = chain.last_lsn();
        Ok((chain.fold_over_from(entry, upto), upto.max(last)))
    }

    /// A list append, map put or map remove kept as an operand of `ck` without reading what
    /// is below (docs/state.md, "Blind appends and puts"), if the key allows it: not a full
    /// entry in the hot tier or the pending queue, nothing heavy below, and its operands
    /// within [`HEAVY_ENTRY_BYTES`]. Returns `false`, having changed nothing, where it does
    /// not; the caller then takes [`Inner::run`]. `replay`: the LSN of a replayed change
    /// (not passed to the sink).
    pub(crate) fn operand(
        &self,
        st: &StateInfo,
        ck: &mut CompositeKeyBuf,
        op: OperandOp<'_>,
        replay: Option<(u64, ChangeOp<'_>)>,
    ) -> Result<bool> {
        if !self.blind {
            return Ok(false);
        }
        let kg = self.locate(ck)?;
        let key = ck.key();
        let ck: &[u8] = ck.as_bytes();
        let mut guard = self.shards[self.shard_of_kg[kg as usize] as usize].lock();
        let shard = &mut *guard;
        if !shard.spilled_any {
            // Nothing below: the read path reads nothing either.
            return Ok(false);
        }
        let stub_bytes = match shard.lru.peek(ck) {
            Some(e) if !e.stub => return Ok(false),
            Some(_) => shard.stubs.get(ck).map_or(0, KeyChanges::mem_size),
            None => 0,
        };
        let pending_bytes = match shard.pending.get(ck).map(|p| p.value.as_deref()) {
            // A chain's operands may fold to 3× their encoded size (empty list elements).
            Some(Some(bytes)) if is_chain(bytes) => 3 * bytes.len(),
            Some(_) => return Ok(false),
            None => 0,
        };
        if shard.heavy.contains(ck) || !self.cold.blind_ok(ck) {
            return Ok(false);
        }
        let ttl_ms = st.ttl.map(|t| t.ttl_ms());
        let change_op = match replay {
            Some((_, op)) => op,
            None => {
                let expires_at_ms = ttl_ms.map_or(0, |ttl| self.clock.now_ms().saturating_add(ttl));
                op.with_expiry(expires_at_ms)
            }
        };
        if stub_bytes + pending_bytes + op.bytes() > HEAVY_ENTRY_BYTES {
            return Ok(false);
        }
        let lsn = match replay {
            Some((lsn, _)) => lsn,
            None => {
                let logged = match &self.sink {
                    Some(sink) => sink
                        .append(&Change {
                            state: &st.name,
                            kind: st.kind,
                            key_group: kg,
                            key,
                            op: change_op,
                        })
                        .map_err(|source| Error::ChangeSink { source })?,
                    None => 0,
                };
                number(&self.lsn, logged)
            }
        };
        shard.stats.blind_writes += 1;
        let chain = shard.stubs.entry(Box::from(ck)).or_default();
        // The handles and `apply_logged` pass only changes that fit the state's kind.
        chain.push_logged(st.kind, ttl_ms, &change_op, lsn)?;
        let charged = charge(ck.len(), &Entry::Tombstone) + chain.mem_size();
        match shard.lru.get_mut(ck) {
            Some(entry) => {
                entry.upto = lsn;
                shard.used = shard.used + charged - entry.charged as usize;
                entry.charged = charged as u32;
            }
            None => {
                shard.stats.misses += 1;
                shard.lru.push(
                    HotKey::from(ck),
                    HotEntry {
                        data: Entry::Tombstone,
                        dirty: true,
                        charged: charged as u32,
                        upto: lsn,
                        stub: true,
                    },
                );
                shard.used += charged;
            }
        }
        self.release_shard(guard)?;
        Ok(true)
    }
}

impl Inner {
    /// Ends an access to a shard: evicts down to its budget, releases its lock, and hands
    /// what it queued for the cold tier to the spill writer (which may wait: backpressure).
    fn release_shard(&self, mut guard: parking_lot::MutexGuard<'_, Shard>) -> Result<()> {
        let shard = &mut *guard;
        if shard.used > shard.budget {
            shard.evict();
        }
        let outgoing = shard.take_outgoing(false);
        drop(guard);
        if let Some(batch) = outgoing {
            self.cold.send(batch)?;
        }
        Ok(())
    }
}

/// A change that may be kept as an operand, before the store gives it its expiry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OperandOp<'a> {
    ListAppend(&'a [Vec<u8>]),
    MapPut(&'a [u8], &'a [u8]),
    MapRemove(&'a [u8]),
}

impl<'a> OperandOp<'a> {
    /// An upper bound of what the operand adds to a chain, encoded or in memory (what
    /// `KeyChanges::mem_size` counts for it).
    fn bytes(self) -> usize {
        48 + match self {
            OperandOp::ListAppend(values) => values.iter().map(|v| v.len() + 24).sum(),
            OperandOp::MapPut(k, v) => k.len() + v.len(),
            OperandOp::MapRemove(k) => k.len(),
        }
    }

    fn with_expiry(self, expires_at_ms: u64) -> ChangeOp<'a> {
        match self {
            OperandOp::ListAppend(values) => ChangeOp::ListAppend {
                values,
                expires_at_ms,
            },
            OperandOp::MapPut(user_key, value) => ChangeOp::MapPut {
                user_key,
                value,
                expires_at_ms,
            },
            OperandOp::MapRemove(user_key) => ChangeOp::MapRemove { user_key },
        }
    }
}

/// The LSN a change is known by: `logged`, the LSN its sink or log gave it, or, where that is
/// 0 (a sink that does not number changes, or none), the store's own next number.
fn number(counter: &AtomicU64, logged: u64) -> u64 {
    if logged == 0 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        logged
    }
}

/// How one access treats expired data.
struct Ttl {
    /// Drop data expired at this time before the access sees it.
    before: Option<u64>,
    /// Drop data expired at this time after the access (a read that may return expired data
    /// returns it once).
    after: Option<u64>,
}

impl Ttl {
    fn for_access(st: &StateInfo, access: Access, now_ms: u64) -> Ttl {
        let Some(ttl) = st.ttl else {
            return Ttl {
                before: None,
                after: None,
            };
        };
        match access {
            Access::Read if ttl.visibility == TtlVisibility::ReturnExpiredIfNotCleanedUp => Ttl {
                before: None,
                after: Some(now_ms),
            },
            // Replay sees data as the live store did when it made the change.
            Access::Replay { at_ms, .. } => Ttl {
                before: at_ms,
                after: None,
            },
            _ => Ttl {
                before: Some(now_ms),
                after: None,
            },
        }
    }

    /// Runs `f` on `data` with TTL applied, then the TTL refresh `f` asked for. Returns `f`'s
    /// result and whether expired data was removed after `f` saw it.
    fn process<R>(
        &self,
        data: &mut Option<Entry>,
        em: &mut Emitter<'_>,
        f: impl FnOnce(&mut Option<Entry>, &mut Emitter<'_>) -> Result<R>,
    ) -> (Result<R>, bool) {
        if let Some(t) = self.before {
            drop_expired(data, t);
        }
        let mut result = f(data, em);
        let removed = match self.after {
            Some(t) => drop_expired(data, t),
            None => false,
        };
        // Refresh only what is still live: an expired entry is cleared, not revived.
        if let (Ok(_), Some(map_key)) = (&result, em.touch.take()) {
            if let Err(e) = em.refresh(data, map_key.as_deref()) {
                result = Err(e);
            }
        }
        (result, removed)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.cold.shutdown();
    }
}
