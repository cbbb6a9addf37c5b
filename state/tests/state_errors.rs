//! Every error variant that a caller can provoke, and that a failed call changes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use millpond_state::{
    key_group, AggregateFunction, AggregatingStateDescriptor, BoxError, BytesCodec, Change,
    ChangeOp, Codec, Error, KeyGroupRange, ListStateDescriptor, ManualClock, MapStateDescriptor,
    ReducingStateDescriptor, StateKind, Store, StoreSettings, StringCodec, TtlConfig, U64Codec,
    ValueStateDescriptor, MAX_KEY_BYTES,
};
use tempfile::TempDir;

fn open_with(settings: StoreSettings) -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .settings(settings)
        .clock(ManualClock::new(1_000))
        .open()
        .unwrap();
    (dir, store)
}

fn open() -> (TempDir, Store) {
    open_with(StoreSettings {
        memory_budget_bytes: 64 << 20,
        ..Default::default()
    })
}

// ---- KeyTooLarge ---------------------------------------------------------------------------

#[test]
fn oversized_key_is_refused_and_nothing_is_lost() {
    let (_dir, store) = open();
    let values = store
        .value_state(ValueStateDescriptor::new("v", BytesCodec, U64Codec))
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("l", BytesCodec, U64Codec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new("m", BytesCodec, U64Codec, U64Codec))
        .unwrap();
    let small = b"small".to_vec();
    let largest = vec![7u8; MAX_KEY_BYTES];
    let too_large = vec![7u8; MAX_KEY_BYTES + 1];

    values.update(&small, &1).unwrap();
    values.update(&largest, &2).unwrap();
    lists.add(&small, &3).unwrap();
    maps.put(&small, &4, &5).unwrap();

    let is_key_too_large = |r: Result<(), Error>| match r {
        Err(Error::KeyTooLarge { len, max }) => {
            assert_eq!(len, MAX_KEY_BYTES + 1);
            assert_eq!(max, MAX_KEY_BYTES);
        }
        other => panic!("expected KeyTooLarge, got {other:?}"),
    };
    is_key_too_large(values.update(&too_large, &9));
    is_key_too_large(values.update_with(&too_large, |_| Some(9)));
    is_key_too_large(values.get(&too_large).map(drop));
    is_key_too_large(values.clear(&too_large));
    is_key_too_large(lists.add(&too_large, &9));
    is_key_too_large(lists.get(&too_large).map(drop));
    is_key_too_large(maps.put(&too_large, &1, &9));
    is_key_too_large(maps.contains(&too_large, &1).map(drop));
    is_key_too_large(store.apply(&Change {
        state: "v",
        kind: StateKind::Value,
        key_group: key_group(&too_large, 128),
        key: &too_large,
        op: ChangeOp::Put {
            value: &9u64.to_be_bytes(),
            expires_at_ms: 0,
        },
    }));

    assert_eq!(values.get(&small).unwrap(), Some(1));
    assert_eq!(values.get(&largest).unwrap(), Some(2));
    assert_eq!(lists.get(&small).unwrap(), vec![3]);
    assert_eq!(maps.entries(&small).unwrap(), vec![(4, 5)]);
    // The key at the limit is not confused with the one over it.
    assert_eq!(values.get(&vec![7u8; MAX_KEY_BYTES - 1]).unwrap(), None);
    store.close().unwrap();
}

// ---- ValueTooLarge -------------------------------------------------------------------------

#[test]
fn value_over_max_value_bytes_is_refused_and_nothing_is_lost() {
    const MAX: usize = 1000;
    let (_dir, store) = open_with(StoreSettings {
        memory_budget_bytes: 64 << 20,
        max_value_bytes: MAX,
        ..Default::default()
    });
    let values = store
        .value_state(ValueStateDescriptor::new("v", U64Codec, BytesCodec))
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("l", U64Codec, BytesCodec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new("m", U64Codec, U64Codec, BytesCodec))
        .unwrap();
    let reduce = store
        .reducing_state(ReducingStateDescriptor::new(
            "r",
            U64Codec,
            BytesCodec,
            |mut a: Vec<u8>, b: Vec<u8>| {
                a.extend(b);
                a
            },
        ))
        .unwrap();

    let is_too_large = |what: &str, state: &str, r: Result<(), Error>| match r {
        Err(Error::ValueTooLarge {
            state: s, len, max, ..
        }) => {
            assert_eq!(s, state, "{what}");
            assert_eq!(max, MAX, "{what}");
            assert!(len > MAX, "{what}: {len}");
        }
        other => panic!("{what}: expected ValueTooLarge, got {other:?}"),
    };

    // Value state: one value.
    values.update(&1, &vec![1; 500]).unwrap();
    is_too_large("update", "v", values.update(&1, &vec![2; 2 * MAX]));
    is_too_large("new key", "v", values.update(&2, &vec![2; 2 * MAX]));
    is_too_large(
        "update_with",
        "v",
        values.update_with(&1, |old| {
            let mut v = old.unwrap();
            v.extend(vec![3; MAX]);
            Some(v)
        }),
    );
    assert_eq!(values.get(&1).unwrap(), Some(vec![1; 500]));
    assert_eq!(values.get(&2).unwrap(), None);

    // List state: the whole list counts.
    for _ in 0..3 {
        lists.add(&1, &vec![4; 200]).unwrap();
    }
    is_too_large("list add", "l", lists.add(&1, &vec![5; 500]));
    is_too_large(
        "list add_all",
        "l",
        lists.add_all(&1, &[vec![5; 300], vec![5; 300]]),
    );
    is_too_large("list update", "l", lists.update(&1, &[vec![6; 2 * MAX]]));
    assert_eq!(lists.get(&1).unwrap(), vec![vec![4; 200]; 3]);

    // Map state: the whole map counts.
    maps.put(&1, &1, &vec![7; 400]).unwrap();
    maps.put(&1, &2, &vec![7; 400]).unwrap();
    is_too_large("map put", "m", maps.put(&1, &3, &vec![8; 400]));
    assert_eq!(
        maps.entries(&1).unwrap(),
        vec![(1, vec![7; 400]), (2, vec![7; 400])]
    );
    // Replacing an entry with a smaller one, or removing one, still works.
    maps.put(&1, &2, &vec![9; 10]).unwrap();
    maps.remove(&1, &1).unwrap();
    assert_eq!(maps.entries(&1).unwrap(), vec![(2, vec![9; 10])]);

    // Reducing state: the reduced value counts.
    reduce.add(&1, vec![1; 600]).unwrap();
    is_too_large("reduce add", "r", reduce.add(&1, vec![2; 600]));
    assert_eq!(reduce.get(&1).unwrap(), Some(vec![1; 600]));
    store.close().unwrap();
}

// ---- StateMismatch -------------------------------------------------------------------------

#[test]
fn registering_a_name_with_another_kind_or_ttl_is_a_mismatch() {
    let (_dir, store) = open();
    let ttl = TtlConfig::new(Duration::from_secs(60));
    let first = store
        .value_state(ValueStateDescriptor::new("s", U64Codec, U64Codec))
        .unwrap();
    first.update(&1, &10).unwrap();

    let is_mismatch = |what: &str, e: Error| match e {
        Error::StateMismatch { name, .. } => assert_eq!(name, "s", "{what}"),
        other => panic!("{what}: expected StateMismatch, got {other:?}"),
    };
    is_mismatch(
        "list",
        store
            .list_state(ListStateDescriptor::new("s", U64Codec, U64Codec))
            .err()
            .unwrap(),
    );
    is_mismatch(
        "map",
        store
            .map_state(MapStateDescriptor::new("s", U64Codec, U64Codec, U64Codec))
            .err()
            .unwrap(),
    );
    is_mismatch(
        "reducing",
        store
            .reducing_state(ReducingStateDescriptor::new(
                "s",
                U64Codec,
                U64Codec,
                |a: u64, b: u64| a + b,
            ))
            .err()
            .unwrap(),
    );
    is_mismatch(
        "aggregating",
        store
            .aggregating_state(AggregatingStateDescriptor::new(
                "s", U64Codec, Count, U64Codec,
            ))
            .err()
            .unwrap(),
    );
    is_mismatch(
        "value with a TTL",
        store
            .value_state(ValueStateDescriptor::new("s", U64Codec, U64Codec).with_ttl(ttl))
            .err()
            .unwrap(),
    );

    // The same declaration again is the same state.
    let again = store
        .value_state(ValueStateDescriptor::new("s", U64Codec, U64Codec))
        .unwrap();
    assert_eq!(again.get(&1).unwrap(), Some(10));
    again.update(&2, &20).unwrap();
    assert_eq!(first.get(&2).unwrap(), Some(20));
    store.close().unwrap();
}

struct Count;

impl AggregateFunction<u64, u64, u64> for Count {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _value: u64, acc: u64) -> u64 {
        acc + 1
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
}

// ---- UnknownState --------------------------------------------------------------------------

#[test]
fn applying_a_change_of_an_unknown_state_fails() {
    let (_dir, store) = open();
    let values = store
        .value_state(ValueStateDescriptor::new("known", U64Codec, U64Codec))
        .unwrap();
    let key = 1u64.to_be_bytes();
    let value = 5u64.to_be_bytes();
    let put = ChangeOp::Put {
        value: &value,
        expires_at_ms: 0,
    };
    let change = |state, kind, op| Change {
        state,
        kind,
        key_group: key_group(&key, 128),
        key: &key,
        op,
    };
    match store.apply(&change("ghost", StateKind::Value, put)) {
        Err(Error::UnknownState { name }) => assert_eq!(name, "ghost"),
        other => panic!("expected UnknownState, got {other:?}"),
    }
    // A change that does not fit the state's kind is invalid.
    let list_op = ChangeOp::ListAppend {
        values: &[],
        expires_at_ms: 0,
    };
    for (kind, op) in [(StateKind::List, put), (StateKind::Value, list_op)] {
        match store.apply(&change("known", kind, op)) {
            Err(Error::Invalid { .. }) => {}
            other => panic!("expected Invalid for {kind} {op:?}, got {other:?}"),
        }
    }
    assert_eq!(values.get(&1).unwrap(), None);
    store
        .apply(&change("known", StateKind::Value, put))
        .unwrap();
    assert_eq!(values.get(&1).unwrap(), Some(5));
    store.close().unwrap();
}

// ---- Codec ---------------------------------------------------------------------------------

/// A `u64` codec that fails on demand: encoding while `fail_encode` is set (or for
/// `u64::MAX`), decoding while `fail_decode` is set.
#[derive(Clone, Default)]
struct FlakyCodec {
    fail_encode: Arc<AtomicBool>,
    fail_decode: Arc<AtomicBool>,
}

impl Codec<u64> for FlakyCodec {
    fn encode(&self, value: &u64, out: &mut Vec<u8>) -> Result<(), BoxError> {
        if self.fail_encode.load(Ordering::SeqCst) || *value == u64::MAX {
            return Err("cannot encode".into());
        }
        out.extend_from_slice(&value.to_be_bytes());
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<u64, BoxError> {
        if self.fail_decode.load(Ordering::SeqCst) {
            return Err("cannot decode".into());
        }
        U64Codec.decode(bytes)
    }
}

fn is_codec<T: std::fmt::Debug>(what: &str, state: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Codec { state: s, source }) => {
            assert_eq!(s, state, "{what}");
            let msg = source.to_string();
            assert!(msg.starts_with("cannot "), "{what}: {msg}");
        }
        other => panic!("{what}: expected Error::Codec, got {other:?}"),
    }
}

#[test]
fn a_failing_codec_is_a_codec_error_and_the_stored_value_is_intact() {
    let (_dir, store) = open();
    let codec = FlakyCodec::default();
    let (enc, dec) = (codec.fail_encode.clone(), codec.fail_decode.clone());
    let values = store
        .value_state(ValueStateDescriptor::new("v", U64Codec, codec.clone()))
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("l", U64Codec, codec.clone()))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new(
            "m",
            U64Codec,
            StringCodec,
            codec.clone(),
        ))
        .unwrap();
    let reduce = store
        .reducing_state(ReducingStateDescriptor::new(
            "r",
            U64Codec,
            codec.clone(),
            |a: u64, b: u64| a + b,
        ))
        .unwrap();
    let agg = store
        .aggregating_state(AggregatingStateDescriptor::new(
            "a",
            U64Codec,
            Count,
            codec.clone(),
        ))
        .unwrap();
    let keyed = store
        .value_state(ValueStateDescriptor::new("k", codec.clone(), U64Codec))
        .unwrap();

    values.update(&1, &10).unwrap();
    lists.add_all(&1, &[1, 2]).unwrap();
    maps.put(&1, &"a".to_string(), &3).unwrap();
    reduce.add(&1, 4).unwrap();
    agg.add(&1, 100).unwrap();
    keyed.update(&7, &70).unwrap();

    // Decoding fails: reads and read-modify-writes fail, nothing changes.
    dec.store(true, Ordering::SeqCst);
    is_codec("value get", "v", values.get(&1));
    let mut called = false;
    is_codec(
        "value update_with",
        "v",
        values.update_with(&1, |_| {
            called = true;
            Some(11)
        }),
    );
    assert!(!called, "update_with called f without the old value");
    is_codec("list get", "l", lists.get(&1));
    is_codec("map get", "m", maps.get(&1, &"a".to_string()));
    is_codec("map entries", "m", maps.entries(&1));
    is_codec("reduce get", "r", reduce.get(&1));
    is_codec("reduce add", "r", reduce.add(&1, 5));
    is_codec("agg get", "a", agg.get(&1));
    is_codec("agg add", "a", agg.add(&1, 5));
    dec.store(false, Ordering::SeqCst);

    // Encoding fails: writes fail, nothing changes.
    enc.store(true, Ordering::SeqCst);
    is_codec("value update", "v", values.update(&1, &12));
    is_codec("value update new key", "v", values.update(&2, &12));
    is_codec(
        "value update_with",
        "v",
        values.update_with(&1, |old| old.map(|v| v + 1)),
    );
    is_codec("list add", "l", lists.add(&1, &3));
    is_codec("list update", "l", lists.update(&1, &[9]));
    is_codec("map put", "m", maps.put(&1, &"b".to_string(), &4));
    is_codec("reduce add", "r", reduce.add(&1, 5));
    is_codec("agg add", "a", agg.add(&1, 5));
    // A key codec that fails fails every call of its state.
    is_codec("key encode get", "k", keyed.get(&7));
    is_codec("key encode update", "k", keyed.update(&7, &71));
    is_codec("key encode clear", "k", keyed.clear(&7));
    enc.store(false, Ordering::SeqCst);
    // A value the codec cannot encode, with the codec otherwise working.
    is_codec("unencodable value", "v", values.update(&1, &u64::MAX));
    is_codec(
        "unencodable result",
        "r",
        reduce.add(&1, u64::MAX - 4), // 4 + (MAX - 4) = MAX
    );

    assert_eq!(values.get(&1).unwrap(), Some(10));
    assert_eq!(values.get(&2).unwrap(), None);
    assert_eq!(lists.get(&1).unwrap(), vec![1, 2]);
    assert_eq!(maps.entries(&1).unwrap(), vec![("a".to_string(), 3)]);
    assert_eq!(reduce.get(&1).unwrap(), Some(4));
    assert_eq!(agg.get(&1).unwrap(), Some(1));
    assert_eq!(keyed.get(&7).unwrap(), Some(70));
    store.close().unwrap();
}

// ---- KeyGroupNotOwned ----------------------------------------------------------------------

#[test]
fn keys_of_key_groups_not_owned_are_refused() {
    let owned = KeyGroupRange::for_instance(128, 2, 0);
    assert_eq!(owned, KeyGroupRange::new(0, 64));
    let (_dir, store) = open_with(StoreSettings {
        memory_budget_bytes: 64 << 20,
        key_groups: Some(owned),
        ..Default::default()
    });
    assert_eq!(store.key_groups(), owned);
    let values = store
        .value_state(ValueStateDescriptor::new("v", U64Codec, U64Codec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new("m", U64Codec, U64Codec, U64Codec))
        .unwrap();
    let kg = |k: u64| key_group(&k.to_be_bytes(), 128);
    let mine: Vec<u64> = (0..1000)
        .filter(|k| owned.contains(kg(*k)))
        .take(20)
        .collect();
    let theirs: Vec<u64> = (0..1000)
        .filter(|k| !owned.contains(kg(*k)))
        .take(20)
        .collect();
    assert_eq!((mine.len(), theirs.len()), (20, 20));

    for k in &mine {
        values.update(k, k).unwrap();
    }
    let is_not_owned = |k: u64, r: Result<(), Error>| match r {
        Err(Error::KeyGroupNotOwned {
            key_group,
            owned: o,
        }) => {
            assert_eq!(key_group, kg(k));
            assert_eq!(o, owned);
        }
        other => panic!("key {k}: expected KeyGroupNotOwned, got {other:?}"),
    };
    for k in &theirs {
        is_not_owned(*k, values.update(k, k));
        is_not_owned(*k, values.get(k).map(drop));
        is_not_owned(*k, maps.put(k, &1, &1));
        let key = k.to_be_bytes();
        is_not_owned(
            *k,
            store.apply(&Change {
                state: "v",
                kind: StateKind::Value,
                key_group: kg(*k),
                key: &key,
                op: ChangeOp::Clear,
            }),
        );
    }
    for k in &mine {
        assert_eq!(values.get(k).unwrap(), Some(*k));
    }
    store.close().unwrap();
}

// ---- Locked --------------------------------------------------------------------------------

#[test]
fn a_directory_is_open_in_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::builder(dir.path()).open().unwrap();
    let values = first
        .value_state(ValueStateDescriptor::new("v", U64Codec, U64Codec))
        .unwrap();
    values.update(&1, &1).unwrap();
    match Store::builder(dir.path()).open() {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path().display().to_string()),
        Err(other) => panic!("expected Locked, got {other:?}"),
        Ok(_) => panic!("opened a directory that another store has open"),
    }
    // The first store is unharmed.
    assert_eq!(values.get(&1).unwrap(), Some(1));
    values.update(&1, &2).unwrap();
    assert_eq!(values.get(&1).unwrap(), Some(2));
    // Once every handle of it is gone, the directory can be opened again.
    drop(values);
    drop(first);
    let second = Store::builder(dir.path()).open().unwrap();
    second.close().unwrap();
}

/// `Error::Locked` says "Close it first": a closed store no longer holds its directory.
#[test]
fn a_closed_store_releases_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::builder(dir.path()).open().unwrap();
    first.close().unwrap();
    let second = Store::builder(dir.path()).open();
    assert!(
        second.is_ok(),
        "reopening after close() failed: {:?}",
        second.err()
    );
    drop(first);
}

// ---- Invalid -------------------------------------------------------------------------------

#[test]
fn bad_settings_are_invalid() {
    let cases: Vec<(&str, StoreSettings)> = vec![
        (
            "shards 0",
            StoreSettings {
                shards: 0,
                ..Default::default()
            },
        ),
        (
            "max_key_groups 0",
            StoreSettings {
                max_key_groups: 0,
                shards: 1,
                ..Default::default()
            },
        ),
        (
            "max_key_groups over the limit",
            StoreSettings {
                max_key_groups: millpond_state::MAX_KEY_GROUPS_LIMIT + 1,
                ..Default::default()
            },
        ),
        (
            "more shards than key groups",
            StoreSettings {
                max_key_groups: 8,
                shards: 9,
                ..Default::default()
            },
        ),
        (
            "budget too small",
            StoreSettings {
                memory_budget_bytes: 1 << 20,
                ..Default::default()
            },
        ),
        (
            "budget zero",
            StoreSettings {
                memory_budget_bytes: 0,
                ..Default::default()
            },
        ),
        (
            "empty key group range",
            StoreSettings {
                key_groups: Some(KeyGroupRange::new(5, 5)),
                ..Default::default()
            },
        ),
        (
            "key group range past max_key_groups",
            StoreSettings {
                key_groups: Some(KeyGroupRange::new(64, 129)),
                ..Default::default()
            },
        ),
        (
            "max_value_bytes 0",
            StoreSettings {
                max_value_bytes: 0,
                ..Default::default()
            },
        ),
    ];
    for (what, settings) in cases {
        let dir = tempfile::tempdir().unwrap();
        match Store::builder(dir.path()).settings(settings).open() {
            Err(Error::Invalid { reason }) => assert!(!reason.is_empty(), "{what}"),
            Err(other) => panic!("{what}: expected Invalid, got {other:?}"),
            Ok(_) => panic!("{what}: opened"),
        }
    }
    // The smallest budget that leaves 4 KiB per shard works.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .settings(StoreSettings {
            memory_budget_bytes: (1 << 20) + (256 << 10) + 16 * 4096,
            ..Default::default()
        })
        .open()
        .unwrap();
    store.close().unwrap();
}

#[test]
fn bad_state_names_are_invalid() {
    let (_dir, store) = open();
    for name in [String::new(), "x".repeat(1025)] {
        match store.value_state(ValueStateDescriptor::new(name.clone(), U64Codec, U64Codec)) {
            Err(Error::Invalid { .. }) => {}
            Err(other) => panic!(
                "name of {} bytes: expected Invalid, got {other:?}",
                name.len()
            ),
            Ok(_) => panic!("name of {} bytes was accepted", name.len()),
        }
    }
    store
        .value_state(ValueStateDescriptor::new(
            "x".repeat(1024),
            U64Codec,
            U64Codec,
        ))
        .unwrap();
    store.close().unwrap();
}

// ---- Closed --------------------------------------------------------------------------------

#[test]
fn operations_after_close_fail_with_closed() {
    let (_dir, store) = open();
    let values = store
        .value_state(ValueStateDescriptor::new("v", U64Codec, U64Codec))
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("l", U64Codec, U64Codec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new("m", U64Codec, U64Codec, U64Codec))
        .unwrap();
    let reduce = store
        .reducing_state(ReducingStateDescriptor::new(
            "r",
            U64Codec,
            U64Codec,
            |a: u64, b: u64| a + b,
        ))
        .unwrap();
    let agg = store
        .aggregating_state(AggregatingStateDescriptor::new(
            "a", U64Codec, Count, U64Codec,
        ))
        .unwrap();
    values.update(&1, &1).unwrap();
    let clone = store.clone();
    store.close().unwrap();

    let is_closed = |what: &str, r: Result<(), Error>| match r {
        Err(Error::Closed) => {}
        other => panic!("{what}: expected Closed, got {other:?}"),
    };
    is_closed("value get", values.get(&1).map(drop));
    is_closed("value update", values.update(&1, &2));
    is_closed("value update_with", values.update_with(&1, |_| Some(3)));
    is_closed("value clear", values.clear(&1));
    is_closed("list add", lists.add(&1, &1));
    is_closed("list get", lists.get(&1).map(drop));
    is_closed("map put", maps.put(&1, &1, &1));
    is_closed("map contains", maps.contains(&1, &1).map(drop));
    is_closed("map entries", maps.entries(&1).map(drop));
    is_closed("reduce add", reduce.add(&1, 1));
    is_closed("agg get", agg.get(&1).map(drop));
    is_closed("flush", store.flush());
    is_closed("flush of a clone", clone.flush());
    is_closed("cleanup_expired", store.cleanup_expired(10).map(drop));
    is_closed(
        "register",
        store
            .value_state(ValueStateDescriptor::new("new", U64Codec, U64Codec))
            .map(drop),
    );
    is_closed(
        "apply",
        store.apply(&Change {
            state: "v",
            kind: StateKind::Value,
            key_group: key_group(&1u64.to_be_bytes(), 128),
            key: &1u64.to_be_bytes(),
            op: ChangeOp::Clear,
        }),
    );
    // Closing again is fine; stats still work.
    store.close().unwrap();
    clone.close().unwrap();
    let _ = store.stats();
}
