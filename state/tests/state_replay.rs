//! Change capture and replay: a recording change sink on store A, random operations, then every
//! recorded change replayed with `Store::apply` into a fresh store B (same states, same clock):
//! every key of every state must read the same in both. Also: a sink that refuses a change
//! leaves the state as it was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millpond_state::{
    key_group, AggregateFunction, AggregatingState, AggregatingStateDescriptor, BoxError,
    BytesCodec, Change, ChangeOp, ChangeSink, Error, ListState, ListStateDescriptor, ManualClock,
    MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor, StateKind, Store,
    StoreSettings, StringCodec, TtlConfig, TtlUpdateType, U64Codec, ValueState,
    ValueStateDescriptor,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tempfile::TempDir;

const KEYS: u64 = 30;
const TTL_MS: u64 = 100;
const START_MS: u64 = 5_000_000;

// ---- the recording sink --------------------------------------------------------------------

/// An owned copy of a [`ChangeOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedOp {
    Put {
        value: Vec<u8>,
        expires_at_ms: u64,
    },
    Clear,
    ListAppend {
        values: Vec<Vec<u8>>,
        expires_at_ms: u64,
    },
    ListReplace {
        values: Vec<Vec<u8>>,
        expires_at_ms: u64,
    },
    MapPut {
        user_key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: u64,
    },
    MapRemove {
        user_key: Vec<u8>,
    },
    Touch {
        expires_at_ms: u64,
    },
    MapTouch {
        user_key: Vec<u8>,
        expires_at_ms: u64,
    },
}

/// An owned copy of a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnedChange {
    state: String,
    kind: StateKind,
    key_group: u16,
    key: Vec<u8>,
    op: OwnedOp,
}

impl OwnedChange {
    fn copy_of(c: &Change<'_>) -> Self {
        let op = match c.op {
            ChangeOp::Put {
                value,
                expires_at_ms,
            } => OwnedOp::Put {
                value: value.to_vec(),
                expires_at_ms,
            },
            ChangeOp::Clear => OwnedOp::Clear,
            ChangeOp::ListAppend {
                values,
                expires_at_ms,
            } => OwnedOp::ListAppend {
                values: values.to_vec(),
                expires_at_ms,
            },
            ChangeOp::ListReplace {
                values,
                expires_at_ms,
            } => OwnedOp::ListReplace {
                values: values.to_vec(),
                expires_at_ms,
            },
            ChangeOp::MapPut {
                user_key,
                value,
                expires_at_ms,
            } => OwnedOp::MapPut {
                user_key: user_key.to_vec(),
                value: value.to_vec(),
                expires_at_ms,
            },
            ChangeOp::MapRemove { user_key } => OwnedOp::MapRemove {
                user_key: user_key.to_vec(),
            },
            ChangeOp::Touch { expires_at_ms } => OwnedOp::Touch { expires_at_ms },
            ChangeOp::MapTouch {
                user_key,
                expires_at_ms,
            } => OwnedOp::MapTouch {
                user_key: user_key.to_vec(),
                expires_at_ms,
            },
            other => panic!("a change op this test does not know: {other:?}"),
        };
        OwnedChange {
            state: c.state.to_owned(),
            kind: c.kind,
            key_group: c.key_group,
            key: c.key.to_vec(),
            op,
        }
    }

    fn as_change(&self) -> Change<'_> {
        let op = match &self.op {
            OwnedOp::Put {
                value,
                expires_at_ms,
            } => ChangeOp::Put {
                value,
                expires_at_ms: *expires_at_ms,
            },
            OwnedOp::Clear => ChangeOp::Clear,
            OwnedOp::ListAppend {
                values,
                expires_at_ms,
            } => ChangeOp::ListAppend {
                values,
                expires_at_ms: *expires_at_ms,
            },
            OwnedOp::ListReplace {
                values,
                expires_at_ms,
            } => ChangeOp::ListReplace {
                values,
                expires_at_ms: *expires_at_ms,
            },
            OwnedOp::MapPut {
                user_key,
                value,
                expires_at_ms,
            } => ChangeOp::MapPut {
                user_key,
                value,
                expires_at_ms: *expires_at_ms,
            },
            OwnedOp::MapRemove { user_key } => ChangeOp::MapRemove { user_key },
            OwnedOp::Touch { expires_at_ms } => ChangeOp::Touch {
                expires_at_ms: *expires_at_ms,
            },
            OwnedOp::MapTouch {
                user_key,
                expires_at_ms,
            } => ChangeOp::MapTouch {
                user_key,
                expires_at_ms: *expires_at_ms,
            },
        };
        Change {
            state: &self.state,
            kind: self.kind,
            key_group: self.key_group,
            key: &self.key,
            op,
        }
    }
}

/// A fake write-ahead log: keeps an owned copy of every change, in order. Clones share the log.
#[derive(Debug, Clone, Default)]
struct RecordingSinkFake {
    changes: Arc<Mutex<Vec<OwnedChange>>>,
}

impl RecordingSinkFake {
    fn changes(&self) -> Vec<OwnedChange> {
        self.changes.lock().unwrap().clone()
    }
}

impl ChangeSink for RecordingSinkFake {
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError> {
        self.changes
            .lock()
            .unwrap()
            .push(OwnedChange::copy_of(change));
        Ok(0)
    }
}

/// A fake write-ahead log that refuses every change while `refuse` is set (as a closed or
/// fenced WAL would), and otherwise counts them.
#[derive(Debug, Clone, Default)]
struct RefusingSinkFake {
    refuse: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<OwnedChange>>>,
}

impl ChangeSink for RefusingSinkFake {
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err("the WAL is fenced".into());
        }
        self.accepted
            .lock()
            .unwrap()
            .push(OwnedChange::copy_of(change));
        Ok(0)
    }
}

// ---- stores and states ---------------------------------------------------------------------

fn sum(a: u64, b: u64) -> u64 {
    a + b
}

/// Count of the inputs and their sum, as the result too.
struct CountSum;

impl AggregateFunction<u64, u64, (u64, u64)> for CountSum {
    fn create_accumulator(&self) -> u64 {
        0
    }
    /// Count in the high 32 bits, sum in the low 32 (inputs are small).
    fn add(&self, value: u64, acc: u64) -> u64 {
        acc + (1 << 32) + value
    }
    fn get_result(&self, acc: &u64) -> (u64, u64) {
        (acc >> 32, acc & 0xffff_ffff)
    }
}

/// A small hot tier (16 KiB), so that replay too goes through eviction and the cold tier.
fn settings() -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: (256 + 64 + 16) << 10,
        cold_cache_bytes: Some(256 << 10),
        spill_queue_bytes: Some(64 << 10),
        shards: 4,
        ttl_cleanup_interval_ms: 0,
        ..Default::default()
    }
}

fn open(clock: &ManualClock, sink: Option<RecordingSinkFake>) -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Store::builder(dir.path())
        .settings(settings())
        .clock(clock.clone());
    if let Some(sink) = sink {
        b = b.change_sink(sink);
    }
    (dir, b.open().unwrap())
}

fn ttl(update_type: TtlUpdateType) -> TtlConfig {
    TtlConfig::new(Duration::from_millis(TTL_MS)).with_update_type(update_type)
}

/// The states of one store. `read_refresh`: the TTL'd states refresh on read
/// (`OnReadAndWrite`); otherwise on writes only.
struct States {
    plain: ValueState<u64, Vec<u8>>,
    value: ValueState<u64, Vec<u8>>,
    list: ListState<u64, Vec<u8>>,
    map: MapState<u64, u64, Vec<u8>>,
    smap: MapState<u64, String, u64>,
    reduce: ReducingState<u64, u64>,
    agg: AggregatingState<u64, u64, (u64, u64)>,
}

impl States {
    fn register(store: &Store, read_refresh: bool) -> States {
        let t = ttl(if read_refresh {
            TtlUpdateType::OnReadAndWrite
        } else {
            TtlUpdateType::OnCreateAndWrite
        });
        States {
            plain: store
                .value_state(ValueStateDescriptor::new("plain", U64Codec, BytesCodec))
                .unwrap(),
            value: store
                .value_state(ValueStateDescriptor::new("value", U64Codec, BytesCodec).with_ttl(t))
                .unwrap(),
            list: store
                .list_state(ListStateDescriptor::new("list", U64Codec, BytesCodec).with_ttl(t))
                .unwrap(),
            map: store
                .map_state(
                    MapStateDescriptor::new("map", U64Codec, U64Codec, BytesCodec).with_ttl(t),
                )
                .unwrap(),
            smap: store
                .map_state(MapStateDescriptor::new(
                    "smap",
                    U64Codec,
                    StringCodec,
                    U64Codec,
                ))
                .unwrap(),
            reduce: store
                .reducing_state(
                    ReducingStateDescriptor::new("reduce", U64Codec, U64Codec, sum).with_ttl(t),
                )
                .unwrap(),
            agg: store
                .aggregating_state(AggregatingStateDescriptor::new(
                    "agg", U64Codec, CountSum, U64Codec,
                ))
                .unwrap(),
        }
    }

    /// Reads every key of every state of `a` and `b` (in the same order, so that refreshing
    /// reads change both alike) and compares.
    fn assert_same(a: &States, b: &States) -> Result<(), TestCaseError> {
        for k in 0..KEYS {
            prop_assert_eq!(
                a.plain.get(&k).unwrap(),
                b.plain.get(&k).unwrap(),
                "plain {}",
                k
            );
            prop_assert_eq!(
                a.value.get(&k).unwrap(),
                b.value.get(&k).unwrap(),
                "value {}",
                k
            );
            prop_assert_eq!(
                a.list.get(&k).unwrap(),
                b.list.get(&k).unwrap(),
                "list {}",
                k
            );
            prop_assert_eq!(
                a.map.entries(&k).unwrap(),
                b.map.entries(&k).unwrap(),
                "map {}",
                k
            );
            prop_assert_eq!(
                a.smap.entries(&k).unwrap(),
                b.smap.entries(&k).unwrap(),
                "smap {}",
                k
            );
            prop_assert_eq!(
                a.reduce.get(&k).unwrap(),
                b.reduce.get(&k).unwrap(),
                "reduce {}",
                k
            );
            prop_assert_eq!(a.agg.get(&k).unwrap(), b.agg.get(&k).unwrap(), "agg {}", k);
        }
        Ok(())
    }
}

// ---- operations ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Plain(u64, Option<(u16, u8)>),
    ValueSet(u64, Option<(u16, u8)>),
    ValueAppend(u64, u8),
    ValueGet(u64),
    ListAdd(u64, Vec<(u16, u8)>),
    ListUpdate(u64, Vec<(u16, u8)>),
    ListGet(u64),
    ListClear(u64),
    MapPut(u64, u64, (u16, u8)),
    MapRemove(u64, u64),
    MapGet(u64, u64),
    MapEntries(u64),
    MapClear(u64),
    SMapPut(u64, String, u64),
    SMapRemove(u64, String),
    ReduceAdd(u64, u64),
    ReduceGet(u64),
    ReduceClear(u64),
    AggAdd(u64, u64),
    AggClear(u64),
}

fn bytes((len, byte): (u16, u8)) -> Vec<u8> {
    vec![byte; len as usize]
}

fn op() -> impl Strategy<Value = Op> {
    let k = || 0..KEYS;
    let blob = || (0u16..300, any::<u8>());
    let blobs = || proptest::collection::vec(blob(), 0..4);
    let skey = || proptest::sample::select(vec!["", "a", "ab", "b", "é"]).prop_map(str::to_owned);
    prop_oneof![
        3 => (0u64..=60).prop_map(Op::Advance),
        3 => (k(), proptest::option::weighted(0.8, blob())).prop_map(|(k, b)| Op::Plain(k, b)),
        3 => (k(), proptest::option::weighted(0.8, blob())).prop_map(|(k, b)| Op::ValueSet(k, b)),
        2 => (k(), any::<u8>()).prop_map(|(k, b)| Op::ValueAppend(k, b)),
        2 => k().prop_map(Op::ValueGet),
        3 => (k(), blobs()).prop_map(|(k, b)| Op::ListAdd(k, b)),
        1 => (k(), blobs()).prop_map(|(k, b)| Op::ListUpdate(k, b)),
        2 => k().prop_map(Op::ListGet),
        1 => k().prop_map(Op::ListClear),
        3 => (k(), 0u64..5, blob()).prop_map(|(k, u, b)| Op::MapPut(k, u, b)),
        1 => (k(), 0u64..5).prop_map(|(k, u)| Op::MapRemove(k, u)),
        2 => (k(), 0u64..5).prop_map(|(k, u)| Op::MapGet(k, u)),
        1 => k().prop_map(Op::MapEntries),
        1 => k().prop_map(Op::MapClear),
        2 => (k(), skey(), 0u64..100).prop_map(|(k, u, v)| Op::SMapPut(k, u, v)),
        1 => (k(), skey()).prop_map(|(k, u)| Op::SMapRemove(k, u)),
        2 => (k(), 0u64..100).prop_map(|(k, v)| Op::ReduceAdd(k, v)),
        1 => k().prop_map(Op::ReduceGet),
        1 => k().prop_map(Op::ReduceClear),
        2 => (k(), 0u64..100).prop_map(|(k, v)| Op::AggAdd(k, v)),
        1 => k().prop_map(Op::AggClear),
    ]
}

fn run(s: &States, clock: &ManualClock, op: &Op) {
    match op {
        Op::Advance(ms) => clock.advance_ms(*ms),
        Op::Plain(k, Some(b)) => s.plain.update(k, &bytes(*b)).unwrap(),
        Op::Plain(k, None) => s.plain.clear(k).unwrap(),
        Op::ValueSet(k, Some(b)) => s.value.update(k, &bytes(*b)).unwrap(),
        Op::ValueSet(k, None) => s.value.clear(k).unwrap(),
        Op::ValueAppend(k, b) => s
            .value
            .update_with(k, |old| {
                let mut v = old.unwrap_or_default();
                v.push(*b);
                Some(v)
            })
            .unwrap(),
        Op::ValueGet(k) => {
            s.value.get(k).unwrap();
        }
        Op::ListAdd(k, bs) => {
            let vs: Vec<_> = bs.iter().map(|b| bytes(*b)).collect();
            s.list.add_all(k, &vs).unwrap()
        }
        Op::ListUpdate(k, bs) => {
            let vs: Vec<_> = bs.iter().map(|b| bytes(*b)).collect();
            s.list.update(k, &vs).unwrap()
        }
        Op::ListGet(k) => {
            s.list.get(k).unwrap();
        }
        Op::ListClear(k) => s.list.clear(k).unwrap(),
        Op::MapPut(k, u, b) => s.map.put(k, u, &bytes(*b)).unwrap(),
        Op::MapRemove(k, u) => s.map.remove(k, u).unwrap(),
        Op::MapGet(k, u) => {
            s.map.get(k, u).unwrap();
        }
        Op::MapEntries(k) => {
            s.map.entries(k).unwrap();
        }
        Op::MapClear(k) => s.map.clear(k).unwrap(),
        Op::SMapPut(k, u, v) => s.smap.put(k, u, v).unwrap(),
        Op::SMapRemove(k, u) => s.smap.remove(k, u).unwrap(),
        Op::ReduceAdd(k, v) => s.reduce.add(k, *v).unwrap(),
        Op::ReduceGet(k) => {
            s.reduce.get(k).unwrap();
        }
        Op::ReduceClear(k) => s.reduce.clear(k).unwrap(),
        Op::AggAdd(k, v) => s.agg.add(k, *v).unwrap(),
        Op::AggClear(k) => s.agg.clear(k).unwrap(),
    }
}

/// Runs `ops` on a store with a recording sink, replays the changes into a fresh store at the
/// end time, and compares the two.
fn record_and_replay(ops: &[Op], read_refresh: bool) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(START_MS);
    let sink = RecordingSinkFake::default();
    let (_dir_a, store_a) = open(&clock, Some(sink.clone()));
    let a = States::register(&store_a, read_refresh);
    for op in ops {
        run(&a, &clock, op);
    }

    let changes = sink.changes();
    let max_key_groups = store_a.settings().max_key_groups;
    for c in &changes {
        prop_assert_eq!(c.key_group, key_group(&c.key, max_key_groups), "{:?}", c);
        let expected_kind = match c.state.as_str() {
            "plain" | "value" => StateKind::Value,
            "list" => StateKind::List,
            "map" | "smap" => StateKind::Map,
            "reduce" => StateKind::Reducing,
            "agg" => StateKind::Aggregating,
            other => panic!("change of unknown state {other}"),
        };
        prop_assert_eq!(c.kind, expected_kind, "{:?}", c);
        prop_assert!(c.kind.accepts(&c.as_change().op), "{:?}", c);
    }

    let (_dir_b, store_b) = open(&clock, None);
    let b = States::register(&store_b, read_refresh);
    for c in &changes {
        store_b.apply(&c.as_change()).unwrap();
    }
    // Replayed with LSNs, appends and puts on keys not in memory are kept as operands.
    let (_dir_c, store_c) = open(&clock, None);
    let c_states = States::register(&store_c, read_refresh);
    for (i, c) in changes.iter().enumerate() {
        store_c.apply_logged(&c.as_change(), i as u64 + 1).unwrap();
    }
    store_a.flush().unwrap();
    store_b.flush().unwrap();
    store_c.flush().unwrap();
    States::assert_same(&a, &b)?;
    States::assert_same(&a, &c_states)?;
    // And again later, when more has expired.
    clock.advance_ms(TTL_MS / 2);
    States::assert_same(&a, &b)?;
    States::assert_same(&a, &c_states)?;
    store_a.close().unwrap();
    store_b.close().unwrap();
    store_c.close().unwrap();
    Ok(())
}

fn config(name: &'static str) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(name))),
        ..ProptestConfig::with_cases(32)
    }
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/state_replay.txt"))]

    /// TTL refreshed on writes only: every change is a write.
    #[test]
    fn replay_rebuilds_the_same_state(ops in proptest::collection::vec(op(), 1..250)) {
        record_and_replay(&ops, false)?;
    }

    /// TTL refreshed on reads too: the refreshing reads are changes that the sink must see
    /// (`TtlUpdateType::OnReadAndWrite` says so), and that replay must apply.
    #[test]
    fn replay_rebuilds_the_same_state_with_read_refreshed_ttl(
        ops in proptest::collection::vec(op(), 1..250),
    ) {
        record_and_replay(&ops, true)?;
    }
}

// ---- deterministic tests -------------------------------------------------------------------

/// `TtlUpdateType::OnReadAndWrite`: "Each refreshing read is a change that the change sink (the
/// WAL) records, so that recovery restores the same expiry."
#[test]
fn read_refresh_is_recorded_in_the_change_sink() {
    let clock = ManualClock::new(START_MS);
    let sink = RecordingSinkFake::default();
    let (_dir, store) = open(&clock, Some(sink.clone()));
    let value = store
        .value_state(
            ValueStateDescriptor::new("v", U64Codec, U64Codec)
                .with_ttl(ttl(TtlUpdateType::OnReadAndWrite)),
        )
        .unwrap();
    let map = store
        .map_state(
            MapStateDescriptor::new("m", U64Codec, U64Codec, U64Codec)
                .with_ttl(ttl(TtlUpdateType::OnReadAndWrite)),
        )
        .unwrap();
    value.update(&1, &10).unwrap();
    map.put(&1, &2, &20).unwrap();
    clock.advance_ms(40);
    assert_eq!(value.get(&1).unwrap(), Some(10));
    assert_eq!(map.get(&1, &2).unwrap(), Some(20));
    let ops: Vec<OwnedOp> = sink.changes().into_iter().map(|c| c.op).collect();
    let refreshed = START_MS + 40 + TTL_MS;
    assert!(
        ops.contains(&OwnedOp::Touch {
            expires_at_ms: refreshed
        }),
        "no Touch recorded for the value read: {ops:?}"
    );
    assert!(
        ops.contains(&OwnedOp::MapTouch {
            user_key: 2u64.to_be_bytes().to_vec(),
            expires_at_ms: refreshed
        }),
        "no MapTouch recorded for the map read: {ops:?}"
    );
    store.close().unwrap();
}

/// Recovery replays the log later than it was written. A value written at 0 (expiring at 100)
/// and refreshed by a read at 90 (to 190) is alive at 150; replaying its `Put` and `Touch` at
/// 150 must give that.
#[test]
fn replaying_a_touch_after_the_original_expiry_keeps_the_entry() {
    let clock = ManualClock::new(START_MS);
    let (_dir, store) = open(&clock, None);
    let value = store
        .value_state(
            ValueStateDescriptor::new("v", U64Codec, U64Codec)
                .with_ttl(ttl(TtlUpdateType::OnReadAndWrite)),
        )
        .unwrap();
    let key = 1u64.to_be_bytes();
    let value_bytes = 10u64.to_be_bytes();
    let change = |op| Change {
        state: "v",
        kind: StateKind::Value,
        key_group: key_group(&key, 128),
        key: &key,
        op,
    };
    clock.advance_ms(150);
    store
        .apply(&change(ChangeOp::Put {
            value: &value_bytes,
            expires_at_ms: START_MS + 100,
        }))
        .unwrap();
    store
        .apply(&change(ChangeOp::Touch {
            expires_at_ms: START_MS + 190,
        }))
        .unwrap();
    assert_eq!(value.get(&1).unwrap(), Some(10));
    store.close().unwrap();
}

/// Replay does not go to the sink of the store replayed into.
#[test]
fn replayed_changes_are_not_recorded_again() {
    let clock = ManualClock::new(START_MS);
    let sink_a = RecordingSinkFake::default();
    let (_dir_a, store_a) = open(&clock, Some(sink_a.clone()));
    let sink_b = RecordingSinkFake::default();
    let (_dir_b, store_b) = open(&clock, Some(sink_b.clone()));
    let a = States::register(&store_a, false);
    let b = States::register(&store_b, false);
    a.plain.update(&1, &vec![1, 2, 3]).unwrap();
    a.list.add(&2, &vec![4]).unwrap();
    a.map.put(&3, &4, &vec![5]).unwrap();
    a.reduce.add(&4, 6).unwrap();
    for c in sink_a.changes() {
        store_b.apply(&c.as_change()).unwrap();
    }
    assert_eq!(sink_a.changes().len(), 4);
    assert!(sink_b.changes().is_empty(), "{:?}", sink_b.changes());
    assert_eq!(b.plain.get(&1).unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(b.list.get(&2).unwrap(), vec![vec![4]]);
    assert_eq!(b.map.get(&3, &4).unwrap(), Some(vec![5]));
    assert_eq!(b.reduce.get(&4).unwrap(), Some(6));
}

fn assert_refused<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::ChangeSink { source }) => {
            assert_eq!(source.to_string(), "the WAL is fenced", "{what}")
        }
        other => panic!("{what}: expected Error::ChangeSink, got {other:?}"),
    }
}

/// A sink that refuses a change refuses the mutation: the call fails with
/// `Error::ChangeSink`, and the state stays as it was, in the hot tier and in the cold tier.
#[test]
fn a_refusing_sink_leaves_the_state_unchanged() {
    let clock = ManualClock::new(START_MS);
    let sink = RefusingSinkFake::default();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .settings(settings())
        .clock(clock.clone())
        .change_sink(sink.clone())
        .open()
        .unwrap();
    let s = States::register(&store, false);
    let filler = store
        .value_state(ValueStateDescriptor::new("filler", U64Codec, BytesCodec))
        .unwrap();

    let populate = |k: u64| {
        s.plain.update(&k, &vec![1; 100]).unwrap();
        s.value.update(&k, &vec![2; 100]).unwrap();
        s.list.add_all(&k, &[vec![3], vec![4]]).unwrap();
        s.map.put(&k, &1, &vec![5]).unwrap();
        s.map.put(&k, &2, &vec![6]).unwrap();
        s.smap.put(&k, &"x".to_string(), &7).unwrap();
        s.reduce.add(&k, 8).unwrap();
        s.agg.add(&k, 9).unwrap();
    };
    let check = |k: u64| {
        assert_eq!(s.plain.get(&k).unwrap(), Some(vec![1; 100]), "key {k}");
        assert_eq!(s.value.get(&k).unwrap(), Some(vec![2; 100]), "key {k}");
        assert_eq!(s.list.get(&k).unwrap(), vec![vec![3], vec![4]], "key {k}");
        assert_eq!(
            s.map.entries(&k).unwrap(),
            vec![(1, vec![5]), (2, vec![6])],
            "key {k}"
        );
        assert_eq!(
            s.smap.entries(&k).unwrap(),
            vec![("x".to_string(), 7)],
            "key {k}"
        );
        assert_eq!(s.reduce.get(&k).unwrap(), Some(8), "key {k}");
        assert_eq!(s.agg.get(&k).unwrap(), Some((1, 9)), "key {k}");
    };
    let try_everything = |k: u64| {
        assert_refused("plain.update", s.plain.update(&k, &vec![0]));
        assert_refused(
            "plain.update_with",
            s.plain.update_with(&k, |_| Some(vec![0])),
        );
        assert_refused("plain.update_with(None)", s.plain.update_with(&k, |_| None));
        assert_refused("plain.clear", s.plain.clear(&k));
        assert_refused("value.update", s.value.update(&k, &vec![0]));
        assert_refused("value.clear", s.value.clear(&k));
        assert_refused("list.add", s.list.add(&k, &vec![0]));
        assert_refused("list.add_all", s.list.add_all(&k, &[vec![0], vec![1]]));
        assert_refused("list.update", s.list.update(&k, &[vec![0]]));
        assert_refused("list.update(empty)", s.list.update(&k, &[]));
        assert_refused("list.clear", s.list.clear(&k));
        assert_refused("map.put", s.map.put(&k, &1, &vec![0]));
        assert_refused("map.put(new)", s.map.put(&k, &3, &vec![0]));
        assert_refused("map.remove", s.map.remove(&k, &1));
        assert_refused("map.clear", s.map.clear(&k));
        assert_refused("smap.put", s.smap.put(&k, &"y".to_string(), &0));
        assert_refused("reduce.add", s.reduce.add(&k, 1));
        assert_refused("reduce.clear", s.reduce.clear(&k));
        assert_refused("agg.add", s.agg.add(&k, 1));
        assert_refused("agg.clear", s.agg.clear(&k));
        // A key without state: refused too, and still absent after.
        assert_refused(
            "plain.update(absent)",
            s.plain.update(&(k + 1000), &vec![0]),
        );
        assert_eq!(s.plain.get(&(k + 1000)).unwrap(), None);
    };

    // In the hot tier.
    populate(1);
    sink.refuse.store(true, Ordering::SeqCst);
    try_everything(1);
    sink.refuse.store(false, Ordering::SeqCst);
    check(1);

    // In the cold tier.
    populate(2);
    for k in 0..2000u64 {
        filler.update(&k, &vec![k as u8; 300]).unwrap();
    }
    store.flush().unwrap();
    sink.refuse.store(true, Ordering::SeqCst);
    let cold_reads = store.stats().cold_reads;
    try_everything(2);
    assert!(
        store.stats().cold_reads > cold_reads,
        "key 2 was not in the cold tier"
    );
    sink.refuse.store(false, Ordering::SeqCst);
    // Push the refused (unchanged) entries out again, and read them back.
    for k in 0..2000u64 {
        filler.update(&k, &vec![k as u8; 300]).unwrap();
    }
    store.flush().unwrap();
    check(2);
    check(1);

    // Nothing that was refused reached the sink, and the accepted log replays to the same state.
    let accepted = sink.accepted.lock().unwrap().clone();
    let (_dir_b, store_b) = open(&clock, None);
    let b = States::register(&store_b, false);
    store_b
        .value_state(ValueStateDescriptor::new("filler", U64Codec, BytesCodec))
        .unwrap();
    for c in &accepted {
        store_b.apply(&c.as_change()).unwrap();
    }
    for k in [1, 2, 1001, 1002] {
        assert_eq!(b.plain.get(&k).unwrap(), s.plain.get(&k).unwrap());
        assert_eq!(b.list.get(&k).unwrap(), s.list.get(&k).unwrap());
        assert_eq!(b.map.entries(&k).unwrap(), s.map.entries(&k).unwrap());
        assert_eq!(b.reduce.get(&k).unwrap(), s.reduce.get(&k).unwrap());
        assert_eq!(b.agg.get(&k).unwrap(), s.agg.get(&k).unwrap());
    }
    store.close().unwrap();
}
