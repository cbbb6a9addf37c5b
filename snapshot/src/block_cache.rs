//! A bounded cache of decoded data blocks, shared by every [`DataFile`](crate::DataFile) that
//! is given it, so that hot blocks of files far larger than memory are read, checked and
//! decompressed once.

use std::ops::Range;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

/// A decoded, verified data block: its uncompressed bytes and where each entry's key and value
/// lie in them, so a lookup binary-searches without parsing the framing again.
pub(crate) struct Block {
    data: Vec<u8>,
    /// Key and value ranges into `data`. `u32` halves the table: blocks are at most 1 GiB.
    entries: Vec<(Range<u32>, Range<u32>)>,
}

impl Block {
    /// A block from its bytes and entry ranges (which `parse_block` checked lie in `data`).
    pub(crate) fn new(data: Vec<u8>, entries: Vec<(Range<u32>, Range<u32>)>) -> Self {
        Block { data, entries }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entry `i`'s key and value.
    pub(crate) fn entry(&self, i: usize) -> (&[u8], &[u8]) {
        let (k, v) = &self.entries[i];
        (
            &self.data[k.start as usize..k.end as usize],
            &self.data[v.start as usize..v.end as usize],
        )
    }

    /// The value of `key`, if the block holds it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let i = self.lower_bound(key);
        (i < self.len() && self.entry(i).0 == key).then(|| self.entry(i).1)
    }

    /// The position of the first entry whose key is not below `key`.
    pub(crate) fn lower_bound(&self, key: &[u8]) -> usize {
        self.entries.partition_point(|(k, _)| {
            let k = &self.data[k.start as usize..k.end as usize];
            k < key
        })
    }

    /// Approximate bytes this block holds while cached: both buffers, the block itself, the
    /// `Arc` counts and the cache's node and key (a guess: about 64 bytes).
    fn charge(&self) -> usize {
        const OVERHEAD_BYTES: usize = 64;
        self.data.capacity()
            + self.entries.capacity() * std::mem::size_of::<(Range<u32>, Range<u32>)>()
            + std::mem::size_of::<Self>()
            + OVERHEAD_BYTES
    }
}

impl std::fmt::Debug for Block {
    // Not the bytes: a block is up to 1 GiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("bytes", &self.data.len())
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// Identifies a block: the file id given to [`DataFile::with_cache`](crate::DataFile::with_cache)
/// and the block's number in that file.
type Key = (u64, u32);

/// Most shards, to cut lock contention between lookups on different cores.
const MAX_SHARDS: usize = 16;
/// Least capacity of a shard. A shard only caches blocks within its share, so a small cache is
/// split less, or not at all: 64 KiB blocks need shards many times that.
const MIN_SHARD_BYTES: usize = 4 << 20;

/// What a [`BlockCache`] has done since it was made, and what it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockCacheStats {
    /// Lookups that found their block.
    pub hits: u64,
    /// Lookups that did not, each followed by a read from the source.
    pub misses: u64,
    /// Blocks dropped to make room.
    pub evictions: u64,
    /// Blocks held now.
    pub blocks: usize,
    /// Approximate bytes held now (never above the capacity).
    pub bytes: usize,
}

/// A thread-safe LRU cache of decoded data blocks, bounded in bytes, shared by any number of
/// data files through `Arc` (give each file a distinct id).
///
/// Each block is charged its approximate heap size. The capacity is split between up to 16
/// shards (each at least 4 MiB, so a cache under 8 MiB is one shard), each an LRU behind its
/// own lock; a block larger than a shard's share is not cached. Two lookups that miss the same
/// block at once both read it; the second insert replaces the first.
///
/// Only [`DataFile::get`](crate::DataFile::get) uses the cache. Scans (`iter`, `iter_from`,
/// `verify`) read each block once, so they neither consult nor fill it and cannot evict the
/// blocks point lookups keep hot.
///
/// ```
/// use std::sync::Arc;
/// use millpond_snapshot::{BlockCache, DataFile, DataFileSettings, DataFileWriter};
///
/// let mut bytes = Vec::new();
/// let mut writer = DataFileWriter::new(&mut bytes, DataFileSettings::default());
/// writer.add(b"\x00\x07apple", b"red")?;
/// writer.finish()?;
///
/// let cache = Arc::new(BlockCache::new(64 << 20));
/// let file = DataFile::open(bytes)?.with_cache(Arc::clone(&cache), 1);
/// assert_eq!(file.get(b"\x00\x07apple")?.as_deref(), Some(&b"red"[..]));
/// assert_eq!(file.get(b"\x00\x07apple")?.as_deref(), Some(&b"red"[..]));
/// let stats = cache.stats();
/// assert_eq!((stats.misses, stats.hits, stats.blocks), (1, 1, 1));
/// # Ok::<(), millpond_snapshot::Error>(())
/// ```
pub struct BlockCache {
    shards: Box<[Mutex<Shard>]>,
    capacity_bytes: usize,
}

struct Shard {
    lru: LruCache<Key, Arc<Block>>,
    capacity_bytes: usize,
    bytes: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl BlockCache {
    /// A cache holding at most about `capacity_bytes` of blocks; `0` caches nothing. Same knob
    /// as `block_cache` size in RocksDB (`state.backend.rocksdb.block.cache-size` in Flink).
    pub fn new(capacity_bytes: usize) -> Self {
        let shards = (capacity_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        // A power of two, so a shard is picked with a mask.
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    capacity_bytes: capacity_bytes / shards,
                    bytes: 0,
                    hits: 0,
                    misses: 0,
                    evictions: 0,
                })
            })
            .collect();
        BlockCache {
            shards,
            capacity_bytes,
        }
    }

    /// The capacity given to [`new`](Self::new).
    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Counts summed over the shards (each shard's read under its lock, so not one instant).
    pub fn stats(&self) -> BlockCacheStats {
        let mut stats = BlockCacheStats::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            stats.hits += shard.hits;
            stats.misses += shard.misses;
            stats.evictions += shard.evictions;
            stats.blocks += shard.lru.len();
            stats.bytes += shard.bytes;
        }
        stats
    }

    fn shard(&self, key: Key) -> &Mutex<Shard> {
        // Fibonacci hashing: the top bits of a multiply mix both halves, so consecutive
        // blocks of one file spread over the shards.
        let mixed = (key.0 ^ (u64::from(key.1) << 32) ^ u64::from(key.1))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.shards[(mixed >> 32) as usize & (self.shards.len() - 1)]
    }

    /// The block, if cached; counts a hit or a miss.
    pub(crate) fn get(&self, key: Key) -> Option<Arc<Block>> {
        let mut shard = self.shard(key).lock();
        match shard.lru.get(&key).cloned() {
            Some(block) => {
                shard.hits += 1;
                Some(block)
            }
            None => {
                shard.misses += 1;
                None
            }
        }
    }

    /// Caches `block` as most recently used, evicting least recently used blocks to make
    /// room. A block larger than the shard's share is not cached.
    pub(crate) fn insert(&self, key: Key, block: Arc<Block>) {
        let charge = block.charge();
        let mut shard = self.shard(key).lock();
        if charge > shard.capacity_bytes {
            return;
        }
        if let Some((_, old)) = shard.lru.push(key, block) {
            // The same block, read by a concurrent miss.
            shard.bytes -= old.charge();
        }
        shard.bytes += charge;
        while shard.bytes > shard.capacity_bytes {
            let Some((_, evicted)) = shard.lru.pop_lru() else {
                break;
            };
            shard.bytes -= evicted.charge();
            shard.evictions += 1;
        }
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("shards", &self.shards.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(bytes: usize) -> Arc<Block> {
        Arc::new(Block::new(vec![0; bytes], Vec::new()))
    }

    #[test]
    fn bounded_in_bytes_and_least_recent_goes_first() {
        let one = block(1000).charge();
        let cache = BlockCache::new(3 * one);
        assert_eq!(cache.shards.len(), 1);
        for i in 0..3 {
            cache.insert((7, i), block(1000));
        }
        // Touch block 0 so that block 1 is the least recently used.
        assert!(cache.get((7, 0)).is_some());
        cache.insert((7, 3), block(1000));
        assert!(cache.get((7, 1)).is_none());
        for i in [0, 2, 3] {
            assert!(cache.get((7, i)).is_some(), "{i}");
        }
        let stats = cache.stats();
        assert_eq!(
            (stats.blocks, stats.bytes, stats.evictions),
            (3, 3 * one, 1)
        );
        assert_eq!((stats.hits, stats.misses), (4, 1));
        // Replacing a block does not count it twice.
        cache.insert((7, 3), block(1000));
        assert_eq!(cache.stats().bytes, 3 * one);
        // Too large for the whole cache: not cached, nothing evicted.
        cache.insert((8, 0), block(4 * one));
        assert!(cache.get((8, 0)).is_none());
        assert_eq!(cache.stats().blocks, 3);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = BlockCache::new(0);
        cache.insert((1, 0), block(0));
        assert!(cache.get((1, 0)).is_none());
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn large_caches_are_sharded_and_spread() {
        assert_eq!(BlockCache::new(8 << 20).shards.len(), 2);
        assert_eq!(BlockCache::new(12 << 20).shards.len(), 2);
        let cache = BlockCache::new(1 << 30);
        assert_eq!(cache.shards.len(), MAX_SHARDS);
        let mut used = [0; MAX_SHARDS];
        for i in 0..1600 {
            let shard = cache.shard((3, i)) as *const _;
            let n = cache.shards.iter().position(|s| std::ptr::eq(s, shard));
            used[n.unwrap()] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "{used:?}");
    }
}
