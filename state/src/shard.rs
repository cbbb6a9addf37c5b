//! One shard of the hot tier: an LRU of entries under one lock, bounded in bytes, and the
//! entries it evicted that the spill writer has not yet put into the cold tier.

use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use lru::LruCache;

use millpond_format::entry::{alloc_size, HEAVY_ENTRY_BYTES};
use millpond_format::fold::TAG_OPERANDS;
use millpond_format::{Entry, KeyChanges};

use crate::entry::{HotEntry, ENTRY_OVERHEAD};
use crate::hot_key::HotKey;

/// An evicted dirty entry on its way to the cold tier. `value: None` deletes; a value with
/// tag 5 is an operand chain, which the spill writer folds over what the cold tier holds.
#[derive(Debug)]
pub(crate) struct SpillOp {
    pub shard: u16,
    pub key: Box<[u8]>,
    pub value: Option<Arc<[u8]>>,
    pub seq: u64,
    /// The LSN up to which `value` holds the key's changes.
    pub upto: u64,
    /// Set by the spill writer for a chain it folded: whether the result is heavy.
    pub heavy: Option<bool>,
}

/// Whether encoded pending bytes are an operand chain rather than a full entry.
pub(crate) fn is_chain(bytes: &[u8]) -> bool {
    bytes.first() == Some(&TAG_OPERANDS)
}

/// The newest version of a key that is queued for (or being written to) the cold tier.
#[derive(Debug)]
pub(crate) struct Pending {
    pub seq: u64,
    pub value: Option<Arc<[u8]>>,
    /// The LSN up to which `value` holds the key's changes.
    pub upto: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShardStats {
    pub hits: u64,
    pub misses: u64,
    pub cold_reads: u64,
    pub evictions: u64,
    pub spills: u64,
    pub blind_writes: u64,
    pub covered_drops: u64,
}

pub(crate) struct Shard {
    pub index: u16,
    pub lru: LruCache<HotKey, HotEntry>,
    /// Bytes charged by the entries in `lru`.
    pub used: usize,
    pub budget: usize,
    pub pending: HashMap<Box<[u8]>, Pending>,
    pub pending_bytes: usize,
    pub outgoing: Vec<SpillOp>,
    pub outgoing_bytes: usize,
    /// Send `outgoing` to the spill writer once it holds this many bytes.
    pub send_threshold: usize,
    next_seq: u64,
    /// Whether the cold tier may hold anything of this shard. Until it does, deletes need no
    /// tombstones and misses need no cold read.
    pub spilled_any: bool,
    pub stats: ShardStats,
    /// The operands of the hot tier's stubs (entries with `stub` set), by key.
    pub stubs: HashMap<Box<[u8]>, KeyChanges>,
    /// Keys whose newest cold-tier version is larger than [`HEAVY_ENTRY_BYTES`]: a list append
    /// or map put on them reads first (docs/state.md, "Blind appends and puts").
    pub heavy: HashSet<Box<[u8]>>,
    /// The covered LSN of the store's installed base (0: none): evicting a dirty entry at or
    /// below it drops the entry, which the base holds.
    pub covered: Arc<std::sync::atomic::AtomicU64>,
    /// Reused for encoding evicted entries.
    scratch: Vec<u8>,
}

/// Bytes that a key plus payload cost in the hot tier.
#[inline]
pub(crate) fn charge(key_len: usize, data: &Entry) -> usize {
    ENTRY_OVERHEAD + alloc_size(HotKey::heap_len(key_len)) + data.mem_size()
}

impl Shard {
    pub fn new(
        index: u16,
        budget: usize,
        send_threshold: usize,
        covered: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Shard {
            index,
            lru: LruCache::unbounded(),
            used: 0,
            budget,
            pending: HashMap::new(),
            pending_bytes: 0,
            outgoing: Vec::new(),
            outgoing_bytes: 0,
            send_threshold,
            next_seq: 0,
            spilled_any: false,
            stats: ShardStats::default(),
            stubs: HashMap::new(),
            heavy: HashSet::new(),
            covered,
            scratch: Vec::new(),
        }
    }

    /// Finds `key` in the hot tier, counting a hit. Recency matters only to pick what to
    /// evict: below half the budget nothing will be evicted soon, so the LRU relink (two cache
    /// misses on large state) is skipped until then.
    pub fn lookup(&mut self, key: &[u8]) -> Option<&mut HotEntry> {
        let found = if self.used > self.budget / 2 {
            self.lru.get_mut(key)
        } else {
            self.lru.peek_mut(key)
        };
        if found.is_some() {
            self.stats.hits += 1;
        }
        found
    }

    /// Queues `key` for the cold tier: its encoded value, or a delete.
    pub fn spill(&mut self, key: Box<[u8]>, value: Option<Arc<[u8]>>, upto: u64) {
        // A full version decides at once whether the key is heavy below; a chain's weight is
        // known once the writer has folded it.
        match value.as_deref() {
            Some(v) if is_chain(v) => {}
            Some(v) if v.len() > HEAVY_ENTRY_BYTES => {
                self.heavy.insert(key.clone());
            }
            _ => {
                if !self.heavy.is_empty() {
                    self.heavy.remove(&key);
                }
            }
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        let bytes = pending_size(&key, value.as_deref());
        if let Some(old) = self.pending.insert(
            key.clone(),
            Pending {
                seq,
                value: value.clone(),
                upto,
            },
        ) {
            self.pending_bytes -= pending_size(&key, old.value.as_deref());
        }
        self.pending_bytes += bytes;
        self.outgoing_bytes += bytes;
        self.outgoing.push(SpillOp {
            shard: self.index,
            key,
            value,
            seq,
            upto,
            heavy: None,
        });
        self.spilled_any = true;
        self.stats.spills += 1;
    }

    /// Forgets the pending versions that the spill writer has committed (unless a newer one
    /// was queued meanwhile).
    pub fn release(&mut self, ops: &[SpillOp]) {
        for op in ops {
            if let Some(p) = self.pending.get(&op.key) {
                if p.seq == op.seq {
                    self.pending_bytes -= pending_size(&op.key, p.value.as_deref());
                    self.pending.remove(&op.key);
                    match op.heavy {
                        Some(true) => {
                            self.heavy.insert(op.key.clone());
                        }
                        Some(false) => {
                            self.heavy.remove(&op.key);
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Takes the queued spills if there are enough of them to send (or any, with `all`).
    pub fn take_outgoing(&mut self, all: bool) -> Option<Vec<SpillOp>> {
        if self.outgoing.is_empty() || (!all && self.outgoing_bytes < self.send_threshold) {
            return None;
        }
        self.outgoing_bytes = 0;
        Some(std::mem::take(&mut self.outgoing))
    }

    /// Evicts least recently used entries until the shard is within budget. Dirty entries go
    /// to the spill queue; clean ones are dropped (the cold tier has them); expired ones are
    /// written as they are (see [`Shard::write_back`]).
    pub fn evict(&mut self) {
        while self.used > self.budget {
            let Some((key, entry)) = self.lru.pop_lru() else {
                break;
            };
            self.used -= entry.charged as usize;
            self.stats.evictions += 1;
            self.write_back(key.into_boxed(), &entry);
        }
    }

    /// What eviction does with one entry already removed from the LRU: a dirty entry goes to
    /// the cold tier as it is. Expired data is not dropped here: while a store replays its log,
    /// a later TTL refresh in the log may still extend it (replay runs at today's clock, the
    /// refresh was made when the data was live). Reads filter expired data anyway, and the TTL
    /// cleanup removes it from the cold tier.
    fn write_back(&mut self, key: Box<[u8]>, entry: &HotEntry) {
        if entry.stub {
            self.spill_stub(key);
            return;
        }
        if !entry.dirty {
            return;
        }
        let covered = self.covered.load(std::sync::atomic::Ordering::Acquire);
        if covered > 0 && entry.upto <= covered {
            // The installed base holds this version; reads skip older ones below (their LSN
            // is at or below the base's too).
            self.stats.covered_drops += 1;
            return;
        }
        // Tombstones and emptied lists or maps are deletes.
        if entry.data.is_empty() {
            if self.spilled_any {
                self.spill(key, None, entry.upto);
            }
        } else {
            self.scratch.clear();
            entry.data.encode(&mut self.scratch);
            let bytes = Arc::from(&self.scratch[..]);
            self.spill(key, Some(bytes), entry.upto);
        }
    }

    /// Queues the operands of the evicted stub of `key`. A pending chain of the same key is
    /// older (the stub was made over it): the new pending version is both, oldest first, since
    /// it supersedes the old one.
    fn spill_stub(&mut self, key: Box<[u8]>) {
        let Some(mut chain) = self.stubs.remove(&key) else {
            return;
        };
        let covered = self.covered.load(std::sync::atomic::Ordering::Acquire);
        if covered > 0 && chain.last_lsn() <= covered {
            // Every operand is in the installed base. An older pending chain is too.
            self.stats.covered_drops += 1;
            return;
        }
        if let Some(Pending {
            value: Some(older), ..
        }) = self.pending.get(&key)
        {
            if is_chain(older) {
                // This shard encoded it (`KeyChanges`' round trip is tested), so it decodes.
                if let Ok(mut older) = KeyChanges::decode(older) {
                    older.then(chain);
                    chain = older;
                }
            }
        }
        self.scratch.clear();
        chain.encode(&mut self.scratch);
        let bytes = Arc::from(&self.scratch[..]);
        let upto = chain.last_lsn();
        self.spill(key, Some(bytes), upto);
    }

    /// Removes wholly expired entries among the `max` least recently used. Returns how many.
    pub fn cleanup_expired(&mut self, max: usize, now_ms: u64) -> usize {
        let expired: Vec<HotKey> = self
            .lru
            .iter()
            .rev()
            .take(max)
            .filter(|(_, e)| !e.stub && e.data.all_expired(now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            if let Some((key, entry)) = self.lru.pop_entry(key.as_slice()) {
                self.used -= entry.charged as usize;
                // Expired is dead, dirty or not: delete any older cold copy too.
                if self.spilled_any {
                    self.spill(key.into_boxed(), None, entry.upto);
                }
            }
        }
        expired.len()
    }
}

fn pending_size(key: &[u8], value: Option<&[u8]>) -> usize {
    // Key twice (map and queue), the value once (shared), map slot and queue slot.
    2 * alloc_size(key.len()) + value.map_or(0, |v| alloc_size(v.len() + 16)) + 96
}
