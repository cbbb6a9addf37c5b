//! Many threads on one store whose memory budget is small enough that entries keep spilling to
//! the cold tier and coming back: read-modify-writes must not lose updates, readers must never
//! see a value go back in time, and lists and maps must keep every element.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use millpond_state::{
    BoxError, Codec, ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, Store,
    StoreSettings, U64Codec, ValueStateDescriptor,
};
use tempfile::TempDir;

/// A counter padded to 256 bytes, so that a few thousand keys overflow the hot tier. The
/// padding depends on the count, so that decoding catches a torn or mixed-up value.
struct PaddedCounterCodec;

const PADDING: usize = 248;

impl Codec<u64> for PaddedCounterCodec {
    fn encode(&self, value: &u64, out: &mut Vec<u8>) -> Result<(), BoxError> {
        out.extend_from_slice(&value.to_be_bytes());
        out.extend((0..PADDING).map(|i| (*value as u8) ^ (i as u8)));
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<u64, BoxError> {
        if bytes.len() != 8 + PADDING {
            return Err(format!("counter of {} bytes", bytes.len()).into());
        }
        let n = u64::from_be_bytes(bytes[..8].try_into()?);
        if bytes[8..]
            .iter()
            .enumerate()
            .any(|(i, b)| *b != (n as u8) ^ (i as u8))
        {
            return Err(format!("padding does not match count {n}").into());
        }
        Ok(n)
    }
}

/// A hot tier of 256 KiB over 4 shards (room for about 600 padded counters), and a small spill
/// queue (4 KiB batches, 4 in flight), so that batches are many and callers often wait for the
/// spill writer. The background TTL cleanup runs often too.
fn settings() -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: (256 + 32 + 256) << 10,
        cold_cache_bytes: Some(256 << 10),
        spill_queue_bytes: Some(32 << 10),
        shards: 4,
        ttl_cleanup_interval_ms: 20,
        ttl_cleanup_entries_per_step: 64,
        ..Default::default()
    }
}

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .settings(settings())
        .open()
        .unwrap();
    (dir, store)
}

/// `0..n` in an order that depends on `seed` (Fisher-Yates with a xorshift generator).
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Runs `work` alongside a thread that calls `flush` and `cleanup_expired` in a loop until
/// `work` ends, so that the spill writer also takes the shards' queued batches while callers
/// run. (The lost updates below happen without this thread too; it only adds interleavings.)
fn with_maintenance<R>(store: &Store, work: impl FnOnce() -> R) -> R {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                store.flush().unwrap();
                store.cleanup_expired(8).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let r = work();
        done.store(true, Ordering::Relaxed);
        r
    })
}

#[test]
fn concurrent_increments_are_exact_while_spilling() {
    const THREADS: u64 = 8;
    const KEYS: u64 = 1500;
    const ROUNDS: u64 = 3;
    let (_dir, store) = open();
    let counters = store
        .value_state(ValueStateDescriptor::new(
            "counters",
            U64Codec,
            PaddedCounterCodec,
        ))
        .unwrap();
    let start = Barrier::new(THREADS as usize);
    with_maintenance(&store, || {
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (counters, start) = (counters.clone(), &start);
                s.spawn(move || {
                    start.wait();
                    for round in 0..ROUNDS {
                        for k in shuffled(KEYS, t * 1000 + round) {
                            counters
                                .update_with(&k, |n| Some(n.unwrap_or(0) + 1))
                                .unwrap();
                        }
                    }
                });
            }
        });
    });

    let stats = store.stats();
    assert!(stats.evictions > 0, "nothing was evicted: {stats:?}");
    assert!(stats.cold_reads > 0, "nothing was read back: {stats:?}");
    let wrong: Vec<(u64, Option<u64>)> = (0..KEYS)
        .map(|k| (k, counters.get(&k).unwrap()))
        .filter(|(_, n)| *n != Some(THREADS * ROUNDS))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {KEYS} counters are not {}: first ones {:?}; {stats:?}",
        wrong.len(),
        THREADS * ROUNDS,
        &wrong[..wrong.len().min(10)]
    );
    store.flush().unwrap();
    for k in 0..KEYS {
        assert_eq!(counters.get(&k).unwrap(), Some(THREADS * ROUNDS), "key {k}");
    }
    store.close().unwrap();
}

#[test]
fn readers_see_monotonic_values_while_writers_increment() {
    const WRITERS: u64 = 4;
    const READERS: u64 = 4;
    const KEYS: u64 = 1200;
    const ROUNDS: u64 = 3;
    let (_dir, store) = open();
    let counters = store
        .value_state(ValueStateDescriptor::new(
            "counters",
            U64Codec,
            PaddedCounterCodec,
        ))
        .unwrap();
    let sums = store
        .reducing_state(ReducingStateDescriptor::new(
            "sums",
            U64Codec,
            PaddedCounterCodec,
            |a, b| a + b,
        ))
        .unwrap();
    let writers_done = AtomicBool::new(false);
    let start = Barrier::new((WRITERS + READERS) as usize);
    let max = WRITERS * ROUNDS;
    with_maintenance(&store, || {
        std::thread::scope(|s| {
            let mut writers = Vec::new();
            for t in 0..WRITERS {
                let (counters, sums, start) = (counters.clone(), sums.clone(), &start);
                writers.push(s.spawn(move || {
                    start.wait();
                    for round in 0..ROUNDS {
                        for k in shuffled(KEYS, 77 + t * 1000 + round) {
                            counters
                                .update_with(&k, |n| Some(n.unwrap_or(0) + 1))
                                .unwrap();
                            sums.add(&k, 1).unwrap();
                        }
                    }
                }));
            }
            for r in 0..READERS {
                let (counters, sums, start, writers_done) =
                    (counters.clone(), sums.clone(), &start, &writers_done);
                s.spawn(move || {
                    start.wait();
                    let mut seen: HashMap<(bool, u64), u64> = HashMap::new();
                    let mut reads = 0u64;
                    let mut pass = 0;
                    while !writers_done.load(Ordering::Relaxed) || pass < 1 {
                        for k in shuffled(KEYS, 5000 + r * 1000 + pass) {
                            let values = [
                                (false, counters.get(&k).unwrap()),
                                (true, sums.get(&k).unwrap()),
                            ];
                            for (which, v) in values {
                                let v = v.unwrap_or(0);
                                assert!(v <= max, "key {k}: {v} is over {max}");
                                let last = seen.entry((which, k)).or_insert(0);
                                assert!(
                                    v >= *last,
                                    "key {k} ({}) went back from {} to {v}",
                                    if which { "sums" } else { "counters" },
                                    *last
                                );
                                *last = v;
                            }
                            reads += 1;
                        }
                        pass += 1;
                    }
                    assert!(reads > 0);
                });
            }
            for w in writers {
                w.join().unwrap();
            }
            writers_done.store(true, Ordering::Relaxed);
        });
    });
    let stats = store.stats();
    assert!(stats.evictions > 0, "nothing was evicted: {stats:?}");
    for k in 0..KEYS {
        assert_eq!(
            counters.get(&k).unwrap(),
            Some(max),
            "counter {k}; {stats:?}"
        );
        assert_eq!(sums.get(&k).unwrap(), Some(max), "sum {k}; {stats:?}");
    }
    store.close().unwrap();
}

/// The rounds thread `t` appended to `list` (elements `t << 32 | round`), in list order.
fn rounds_of(list: &[u64], t: u64) -> Vec<u64> {
    list.iter()
        .filter(|v| *v >> 32 == t)
        .map(|v| v & 0xffff_ffff)
        .collect()
}

#[test]
fn concurrent_list_appends_and_map_puts_keep_every_element() {
    const THREADS: u64 = 8;
    const KEYS: u64 = 600;
    const ROUNDS: u64 = 4;
    let (_dir, store) = open();
    let lists = store
        .list_state(ListStateDescriptor::new("lists", U64Codec, U64Codec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new(
            "maps",
            U64Codec,
            U64Codec,
            PaddedCounterCodec,
        ))
        .unwrap();
    let start = Barrier::new(THREADS as usize + 1);
    let done = AtomicBool::new(false);
    with_maintenance(&store, || {
        std::thread::scope(|s| {
            let mut writers = Vec::new();
            for t in 0..THREADS {
                let (lists, maps, start) = (lists.clone(), maps.clone(), &start);
                writers.push(s.spawn(move || {
                    start.wait();
                    for round in 0..ROUNDS {
                        for k in shuffled(KEYS, 313 + t * 1000 + round) {
                            lists.add(&k, &(t << 32 | round)).unwrap();
                            maps.put(&k, &t, &round).unwrap();
                        }
                    }
                }));
            }
            // A reader folds operands kept for keys not in memory while the spill writer
            // folds the same operands into the cold tier: each element must appear once, in
            // order, whenever it is read.
            let (lists, start, done) = (lists.clone(), &start, &done);
            s.spawn(move || {
                start.wait();
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    for k in shuffled(KEYS, reads) {
                        let list = lists.get(&k).unwrap();
                        for t in 0..THREADS {
                            let mine = rounds_of(&list, t);
                            let prefix: Vec<u64> = (0..mine.len() as u64).collect();
                            assert_eq!(mine, prefix, "list {k} thread {t} while writing");
                        }
                        if k % 7 == 0 || done.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    reads += 1;
                }
            });
            // The reader stops even if a writer failed.
            let joined: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
            done.store(true, Ordering::SeqCst);
            for j in joined {
                j.unwrap();
            }
        });
    });
    let stats = store.stats();
    assert!(stats.evictions > 0, "nothing was evicted: {stats:?}");
    assert!(
        stats.blind_writes > 0,
        "nothing was kept as an operand: {stats:?}"
    );
    for k in 0..KEYS {
        let list = lists.get(&k).unwrap();
        assert_eq!(
            list.len() as u64,
            THREADS * ROUNDS,
            "list {k}: {list:?}; {stats:?}"
        );
        for t in 0..THREADS {
            let mine = rounds_of(&list, t);
            assert_eq!(mine, (0..ROUNDS).collect::<Vec<_>>(), "list {k} thread {t}");
        }
        let expected: Vec<(u64, u64)> = (0..THREADS).map(|t| (t, ROUNDS - 1)).collect();
        assert_eq!(maps.entries(&k).unwrap(), expected, "map {k}; {stats:?}");
    }
    store.close().unwrap();
}
