//! Blind appends and puts (docs/state.md, "Blind appends and puts"): a list append, map put
//! or map remove on a key that is not in memory is kept as an operand instead of reading the
//! key from disk; reads, eviction and the value limit see the same state as if it had been
//! read first.

use std::collections::BTreeMap;

use millpond_state::{
    thread_cold_reads, BytesCodec, Error, ListStateDescriptor, MapStateDescriptor, Store,
    StoreSettings, U64Codec,
};

/// A hot tier of about 200 KiB over 4 shards: a few thousand small lists do not fit.
fn settings() -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: (200 + 256 + 64) << 10,
        cold_cache_bytes: Some(256 << 10),
        spill_queue_bytes: Some(64 << 10),
        shards: 4,
        ..StoreSettings::default()
    }
}

const KEYS: u64 = 5_000;

#[test]
fn appends_and_puts_on_evicted_keys_read_nothing_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .settings(settings())
        .open()
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("lists", U64Codec, U64Codec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new(
            "maps", U64Codec, U64Codec, U64Codec,
        ))
        .unwrap();
    let mut model_lists: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut model_maps: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    // Round 0 fills the cold tier; later rounds find every key evicted.
    for round in 0..4u64 {
        let reads_before = thread_cold_reads();
        for k in 0..KEYS {
            lists.add(&k, &(round * KEYS + k)).unwrap();
            model_lists.entry(k).or_default().push(round * KEYS + k);
            maps.put(&k, &(round % 3), &round).unwrap();
            model_maps.entry(k).or_default().insert(round % 3, round);
            if round == 3 && k % 2 == 0 {
                maps.remove(&k, &0).unwrap();
                let m = model_maps.get_mut(&k).unwrap();
                m.remove(&0);
            }
        }
        if round > 0 {
            assert_eq!(
                thread_cold_reads(),
                reads_before,
                "round {round}: an append or put read the cold tier"
            );
        }
    }
    let stats = store.stats();
    assert!(stats.blind_writes > 2 * KEYS, "{stats:?}");
    for k in 0..KEYS {
        assert_eq!(lists.get(&k).unwrap(), model_lists[&k], "list {k}");
        let map: BTreeMap<u64, u64> = maps.entries(&k).unwrap().into_iter().collect();
        assert_eq!(map, model_maps[&k], "map {k}");
    }
    store.close().unwrap();
}

#[test]
fn a_list_grows_to_the_value_limit_and_no_further_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let max = 16 << 20;
    let store = Store::builder(dir.path())
        .settings(StoreSettings {
            max_value_bytes: max,
            ..settings()
        })
        .open()
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("big", U64Codec, BytesCodec))
        .unwrap();
    let filler = store
        .list_state(ListStateDescriptor::new("filler", U64Codec, U64Codec))
        .unwrap();
    let element = vec![7u8; 60_000];
    // Pushes the big key out of memory, so that its next append is blind if it may be.
    let mut filled = 0u64;
    let mut fill = || {
        for _ in 0..50 {
            filler.add(&filled, &1).unwrap();
            filled += 1;
        }
    };
    let mut accepted = 0usize;
    for _ in 0..3 {
        fill();
        lists.add(&1, &element).unwrap();
        accepted += 1;
    }
    assert!(store.stats().blind_writes > 0, "{:?}", store.stats());
    // Close to the limit in one go, then on until refused.
    let bulk = vec![element.clone(); 260];
    lists.add_all(&1, &bulk).unwrap();
    accepted += bulk.len();
    let refused = loop {
        fill();
        match lists.add(&1, &element) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000, "the limit was never enforced");
    };
    assert!(
        matches!(refused, Error::ValueTooLarge { .. }),
        "refused with {refused:?}"
    );
    let list = lists.get(&1).unwrap();
    assert_eq!(list.len(), accepted, "every accepted append is there");
    let bytes: usize = list.iter().map(|e| e.len() + 12).sum();
    assert!(bytes <= max, "{bytes} bytes above the limit of {max}");
    assert!(
        bytes > max - 2 * 60_012,
        "refused at {bytes} bytes, far below {max}"
    );
    store.close().unwrap();
}

#[test]
fn with_blind_writes_off_every_append_reads_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .settings(StoreSettings {
            blind_writes: false,
            ..settings()
        })
        .open()
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("lists", U64Codec, U64Codec))
        .unwrap();
    for round in 0..2u64 {
        for k in 0..KEYS {
            lists.add(&k, &round).unwrap();
        }
    }
    assert_eq!(store.stats().blind_writes, 0);
    assert!(store.stats().cold_reads > 0);
    for k in 0..KEYS {
        assert_eq!(lists.get(&k).unwrap(), vec![0, 1]);
    }
    store.close().unwrap();
}
