//! Model-based tests of a whole store: random operations on all five kinds of state, with TTL
//! through a `ManualClock` and a memory budget small enough that entries keep moving between the
//! hot tier and the redb cold tier, checked against a simple `BTreeMap` model.
//!
//! Semantics modelled:
//! - an entry (a list element, a map entry) written at `t` expires at `t + ttl` and is never
//!   returned from then on (`NeverReturnExpired`); writes treat expired data as absent;
//! - `OnReadAndWrite` also refreshes the expiry on reads of present entries: `ValueState::get`,
//!   `ListState::get` (every element), `MapState::get` (that entry), `MapState::entries` and
//!   `MapState::keys` (every entry), `ReducingState::get`, `AggregatingState::get`;
//! - map keys are sorted by their encoded bytes (big-endian `U64Codec`, `StringCodec`).
//!
//! `ReturnExpiredIfNotCleanedUp` and the TTL refresh of `MapState::contains` are checked by the
//! deterministic tests at the end of the file.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use millpond_state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, BoxError, BytesCodec, Codec,
    ListState, ListStateDescriptor, ManualClock, MapState, MapStateDescriptor, ReducingState,
    ReducingStateDescriptor, Store, StoreSettings, StringCodec, TtlConfig, TtlUpdateType,
    TtlVisibility, U64Codec, ValueState, ValueStateDescriptor,
};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::FileFailurePersistence;
use tempfile::TempDir;

/// Keys of every state are drawn from `0..KEYS`.
const KEYS: u64 = 40;
/// TTL of every state that has one.
const TTL_MS: u64 = 100;

// ---- the model ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ttl {
    None,
    /// `OnCreateAndWrite`, `NeverReturnExpired`.
    Write,
    /// `OnReadAndWrite`, `NeverReturnExpired`.
    ReadWrite,
}

impl Ttl {
    fn config(self) -> Option<TtlConfig> {
        let base = TtlConfig::new(Duration::from_millis(TTL_MS));
        match self {
            Ttl::None => None,
            Ttl::Write => Some(base.with_update_type(TtlUpdateType::OnCreateAndWrite)),
            Ttl::ReadWrite => Some(base.with_update_type(TtlUpdateType::OnReadAndWrite)),
        }
    }

    /// The expiry a write (or a refreshing read) at `now` gives; 0: never.
    fn expiry(self, now: u64) -> u64 {
        match self {
            Ttl::None => 0,
            Ttl::Write | Ttl::ReadWrite => now + TTL_MS,
        }
    }

    fn refreshes_on_read(self) -> bool {
        self == Ttl::ReadWrite
    }
}

fn live(expires_at: u64, now: u64) -> bool {
    expires_at == 0 || expires_at > now
}

/// Value, reducing and aggregating state: one value per key, with its expiry.
#[derive(Debug)]
struct ValueModel<V> {
    ttl: Ttl,
    m: BTreeMap<u64, (V, u64)>,
}

impl<V: Clone> ValueModel<V> {
    fn new(ttl: Ttl) -> Self {
        ValueModel {
            ttl,
            m: BTreeMap::new(),
        }
    }

    fn purge(&mut self, k: u64, now: u64) {
        if self.m.get(&k).is_some_and(|(_, e)| !live(*e, now)) {
            self.m.remove(&k);
        }
    }

    /// What a write sees: no refresh.
    fn current(&mut self, k: u64, now: u64) -> Option<V> {
        self.purge(k, now);
        self.m.get(&k).map(|(v, _)| v.clone())
    }

    /// A read: refreshes a present entry if the TTL says so.
    fn read(&mut self, k: u64, now: u64) -> Option<V> {
        self.purge(k, now);
        let ttl = self.ttl;
        self.m.get_mut(&k).map(|(v, e)| {
            if ttl.refreshes_on_read() {
                *e = ttl.expiry(now);
            }
            v.clone()
        })
    }

    fn write(&mut self, k: u64, v: Option<V>, now: u64) {
        match v {
            Some(v) => {
                self.m.insert(k, (v, self.ttl.expiry(now)));
            }
            None => {
                self.m.remove(&k);
            }
        }
    }
}

/// List state: every element has its own expiry.
#[derive(Debug)]
struct ListModel<V> {
    ttl: Ttl,
    m: BTreeMap<u64, Vec<(V, u64)>>,
}

impl<V: Clone> ListModel<V> {
    fn new(ttl: Ttl) -> Self {
        ListModel {
            ttl,
            m: BTreeMap::new(),
        }
    }

    fn purge(&mut self, k: u64, now: u64) {
        if let Some(l) = self.m.get_mut(&k) {
            l.retain(|(_, e)| live(*e, now));
            if l.is_empty() {
                self.m.remove(&k);
            }
        }
    }

    fn read(&mut self, k: u64, now: u64) -> Vec<V> {
        self.purge(k, now);
        let ttl = self.ttl;
        match self.m.get_mut(&k) {
            Some(l) => {
                if ttl.refreshes_on_read() {
                    l.iter_mut().for_each(|(_, e)| *e = ttl.expiry(now));
                }
                l.iter().map(|(v, _)| v.clone()).collect()
            }
            None => Vec::new(),
        }
    }

    fn add_all(&mut self, k: u64, vs: Vec<V>, now: u64) {
        if vs.is_empty() {
            return;
        }
        self.purge(k, now);
        let e = self.ttl.expiry(now);
        self.m
            .entry(k)
            .or_default()
            .extend(vs.into_iter().map(|v| (v, e)));
    }

    fn update(&mut self, k: u64, vs: Vec<V>, now: u64) {
        self.purge(k, now);
        if vs.is_empty() {
            self.m.remove(&k);
        } else {
            let e = self.ttl.expiry(now);
            self.m.insert(k, vs.into_iter().map(|v| (v, e)).collect());
        }
    }

    fn clear(&mut self, k: u64) {
        self.m.remove(&k);
    }
}

/// Map state: every map entry has its own expiry; map keys sorted (the key types used here
/// sort as their encodings do).
#[derive(Debug)]
struct MapModel<UK, UV> {
    ttl: Ttl,
    m: BTreeMap<u64, BTreeMap<UK, (UV, u64)>>,
}

impl<UK: Ord + Clone, UV: Clone> MapModel<UK, UV> {
    fn new(ttl: Ttl) -> Self {
        MapModel {
            ttl,
            m: BTreeMap::new(),
        }
    }

    fn purge(&mut self, k: u64, now: u64) {
        if let Some(mm) = self.m.get_mut(&k) {
            mm.retain(|_, (_, e)| live(*e, now));
            if mm.is_empty() {
                self.m.remove(&k);
            }
        }
    }

    fn get(&mut self, k: u64, uk: &UK, now: u64) -> Option<UV> {
        self.purge(k, now);
        let ttl = self.ttl;
        let (v, e) = self.m.get_mut(&k)?.get_mut(uk)?;
        if ttl.refreshes_on_read() {
            *e = ttl.expiry(now);
        }
        Some(v.clone())
    }

    /// Only used on states whose reads do not refresh (see
    /// `map_contains_refreshes_ttl_with_on_read_and_write` for the other case).
    fn contains(&mut self, k: u64, uk: &UK, now: u64) -> bool {
        assert!(!self.ttl.refreshes_on_read());
        self.purge(k, now);
        self.m.get(&k).is_some_and(|mm| mm.contains_key(uk))
    }

    fn put(&mut self, k: u64, uk: UK, uv: UV, now: u64) {
        self.purge(k, now);
        let e = self.ttl.expiry(now);
        self.m.entry(k).or_default().insert(uk, (uv, e));
    }

    fn remove(&mut self, k: u64, uk: &UK, now: u64) {
        self.purge(k, now);
        if let Some(mm) = self.m.get_mut(&k) {
            mm.remove(uk);
            if mm.is_empty() {
                self.m.remove(&k);
            }
        }
    }

    fn entries(&mut self, k: u64, now: u64) -> Vec<(UK, UV)> {
        self.purge(k, now);
        let ttl = self.ttl;
        match self.m.get_mut(&k) {
            Some(mm) => {
                if ttl.refreshes_on_read() {
                    mm.values_mut().for_each(|(_, e)| *e = ttl.expiry(now));
                }
                mm.iter()
                    .map(|(uk, (uv, _))| (uk.clone(), uv.clone()))
                    .collect()
            }
            None => Vec::new(),
        }
    }

    fn is_empty(&mut self, k: u64, now: u64) -> bool {
        assert!(!self.ttl.refreshes_on_read());
        self.purge(k, now);
        !self.m.contains_key(&k)
    }

    fn clear(&mut self, k: u64) {
        self.m.remove(&k);
    }
}

// ---- the system under test -----------------------------------------------------------------

/// Sum, for the reducing state.
fn sum(a: u64, b: u64) -> u64 {
    a + b
}

/// Average of the inputs, with a (count, sum) accumulator.
struct Average;

impl AggregateFunction<u64, (u64, u64), f64> for Average {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, value: u64, (count, sum): (u64, u64)) -> (u64, u64) {
        (count + 1, sum + value)
    }
    fn get_result(&self, &(count, sum): &(u64, u64)) -> f64 {
        sum as f64 / count as f64
    }
}

/// (count, sum) as 16 bytes big-endian.
struct PairCodec;

impl Codec<(u64, u64)> for PairCodec {
    fn encode(&self, value: &(u64, u64), out: &mut Vec<u8>) -> Result<(), BoxError> {
        out.extend_from_slice(&value.0.to_be_bytes());
        out.extend_from_slice(&value.1.to_be_bytes());
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<(u64, u64), BoxError> {
        if bytes.len() != 16 {
            return Err(format!("pair of {} bytes", bytes.len()).into());
        }
        let (a, b) = bytes.split_at(8);
        Ok((
            u64::from_be_bytes(a.try_into()?),
            u64::from_be_bytes(b.try_into()?),
        ))
    }
}

fn average(acc: Option<(u64, u64)>) -> Option<f64> {
    acc.map(|(count, sum)| sum as f64 / count as f64)
}

const VALUE_TTLS: [Ttl; 3] = [Ttl::None, Ttl::Write, Ttl::ReadWrite];
const LIST_TTLS: [Ttl; 3] = [Ttl::None, Ttl::Write, Ttl::ReadWrite];
const MAP_TTLS: [Ttl; 2] = [Ttl::Write, Ttl::ReadWrite];
const SMAP_TTL: Ttl = Ttl::None;
const REDUCE_TTL: Ttl = Ttl::ReadWrite;
const AGG_TTL: Ttl = Ttl::Write;

struct Sut {
    _dir: TempDir,
    clock: ManualClock,
    store: Store,
    values: Vec<ValueState<u64, Vec<u8>>>,
    lists: Vec<ListState<u64, Vec<u8>>>,
    maps: Vec<MapState<u64, u64, Vec<u8>>>,
    smap: MapState<u64, String, u64>,
    reduce: ReducingState<u64, u64>,
    agg: AggregatingState<u64, u64, f64>,
}

struct Model {
    now: u64,
    values: Vec<ValueModel<Vec<u8>>>,
    lists: Vec<ListModel<Vec<u8>>>,
    maps: Vec<MapModel<u64, Vec<u8>>>,
    smap: MapModel<String, u64>,
    reduce: ValueModel<u64>,
    agg: ValueModel<(u64, u64)>,
}

impl Model {
    fn new(start: u64) -> Self {
        Model {
            now: start,
            values: VALUE_TTLS.iter().map(|t| ValueModel::new(*t)).collect(),
            lists: LIST_TTLS.iter().map(|t| ListModel::new(*t)).collect(),
            maps: MAP_TTLS.iter().map(|t| MapModel::new(*t)).collect(),
            smap: MapModel::new(SMAP_TTL),
            reduce: ValueModel::new(REDUCE_TTL),
            agg: ValueModel::new(AGG_TTL),
        }
    }
}

/// Settings with the smallest hot tier allowed, 16 KiB (4 KiB per shard): a handful of entries
/// of a few hundred bytes fill a shard, so the random operations keep evicting to the cold tier
/// and reading back.
fn tiny_settings(background_cleanup: bool) -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: (256 + 64 + 16) << 10,
        cold_cache_bytes: Some(256 << 10),
        spill_queue_bytes: Some(64 << 10),
        shards: 4,
        ttl_cleanup_interval_ms: if background_cleanup { 2 } else { 0 },
        ttl_cleanup_entries_per_step: 16,
        ..Default::default()
    }
}

const START_MS: u64 = 1_000_000;

impl Sut {
    fn open(settings: StoreSettings) -> Sut {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START_MS);
        let store = Store::builder(dir.path())
            .settings(settings)
            .clock(clock.clone())
            .open()
            .unwrap();
        fn ttl<D>(d: D, t: Ttl, with: impl FnOnce(D, TtlConfig) -> D) -> D {
            match t.config() {
                Some(c) => with(d, c),
                None => d,
            }
        }
        let values = VALUE_TTLS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let d = ValueStateDescriptor::new(format!("value-{i}"), U64Codec, BytesCodec);
                store
                    .value_state(ttl(d, *t, ValueStateDescriptor::with_ttl))
                    .unwrap()
            })
            .collect();
        let lists = LIST_TTLS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let d = ListStateDescriptor::new(format!("list-{i}"), U64Codec, BytesCodec);
                store
                    .list_state(ttl(d, *t, ListStateDescriptor::with_ttl))
                    .unwrap()
            })
            .collect();
        let maps = MAP_TTLS
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let d = MapStateDescriptor::new(format!("map-{i}"), U64Codec, U64Codec, BytesCodec);
                store
                    .map_state(ttl(d, *t, MapStateDescriptor::with_ttl))
                    .unwrap()
            })
            .collect();
        let smap = store
            .map_state(ttl(
                MapStateDescriptor::new("smap", U64Codec, StringCodec, U64Codec),
                SMAP_TTL,
                MapStateDescriptor::with_ttl,
            ))
            .unwrap();
        let reduce = store
            .reducing_state(ttl(
                ReducingStateDescriptor::new("sum", U64Codec, U64Codec, sum),
                REDUCE_TTL,
                ReducingStateDescriptor::with_ttl,
            ))
            .unwrap();
        let agg = store
            .aggregating_state(ttl(
                AggregatingStateDescriptor::new("avg", U64Codec, Average, PairCodec),
                AGG_TTL,
                AggregatingStateDescriptor::with_ttl,
            ))
            .unwrap();
        Sut {
            _dir: dir,
            clock,
            store,
            values,
            lists,
            maps,
            smap,
            reduce,
            agg,
        }
    }
}

// ---- operations ----------------------------------------------------------------------------

/// A value of `len` bytes `byte` (small to print and to shrink).
#[derive(Debug, Clone, Copy)]
struct Blob {
    len: u16,
    byte: u8,
}

impl Blob {
    fn bytes(self) -> Vec<u8> {
        vec![self.byte; self.len as usize]
    }
}

fn blob(max_len: u16) -> impl Strategy<Value = Blob> + Clone {
    (0..max_len, any::<u8>()).prop_map(|(len, byte)| Blob { len, byte })
}

#[derive(Debug, Clone)]
enum ValOp {
    Get(u64),
    Update(u64, Blob),
    /// `update_with`: `None` clears; `Some(b)` appends `b` to the value, or creates 100 `b`s.
    UpdateWith(u64, Option<u8>),
    Clear(u64),
}

#[derive(Debug, Clone)]
enum ListOp {
    Get(u64),
    Add(u64, Blob),
    AddAll(u64, Vec<Blob>),
    Update(u64, Vec<Blob>),
    Clear(u64),
}

#[derive(Debug, Clone)]
enum MapOp<UK, UV> {
    Get(u64, UK),
    Put(u64, UK, UV),
    Remove(u64, UK),
    Contains(u64, UK),
    Entries(u64),
    Keys(u64),
    IsEmpty(u64),
    Clear(u64),
}

#[derive(Debug, Clone)]
enum AccOp {
    Get(u64),
    Add(u64, u64),
    Clear(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    /// Writes `Blob` (with a byte varying by key) to keys `0..n` of `value-0`: a burst that pushes
    /// most of the hot tier out to the cold tier.
    Fill(u64, Blob),
    Flush,
    Cleanup(usize),
    Value(usize, ValOp),
    List(usize, ListOp),
    Map(usize, MapOp<u64, Blob>),
    SMap(MapOp<String, u64>),
    Reduce(AccOp),
    Agg(AccOp),
}

fn key() -> impl Strategy<Value = u64> + Clone {
    0..KEYS
}

fn val_op() -> impl Strategy<Value = ValOp> {
    prop_oneof![
        3 => key().prop_map(ValOp::Get),
        3 => (key(), blob(400)).prop_map(|(k, b)| ValOp::Update(k, b)),
        2 => (key(), proptest::option::weighted(0.8, any::<u8>()))
            .prop_map(|(k, a)| ValOp::UpdateWith(k, a)),
        1 => key().prop_map(ValOp::Clear),
    ]
}

fn list_op() -> impl Strategy<Value = ListOp> {
    let blobs = proptest::collection::vec(blob(200), 0..4);
    prop_oneof![
        3 => key().prop_map(ListOp::Get),
        3 => (key(), blob(200)).prop_map(|(k, b)| ListOp::Add(k, b)),
        2 => (key(), blobs.clone()).prop_map(|(k, b)| ListOp::AddAll(k, b)),
        1 => (key(), blobs).prop_map(|(k, b)| ListOp::Update(k, b)),
        1 => key().prop_map(ListOp::Clear),
    ]
}

/// Operations of a map state; `probes`: also `contains` and `is_empty`.
fn map_op<UK, UV>(
    uk: impl Strategy<Value = UK> + Clone + 'static,
    uv: impl Strategy<Value = UV> + 'static,
    probes: bool,
) -> BoxedStrategy<MapOp<UK, UV>>
where
    UK: Debug + Clone + 'static,
    UV: Debug + Clone + 'static,
{
    let mut arms: Vec<(u32, BoxedStrategy<MapOp<UK, UV>>)> = vec![
        (
            3,
            (key(), uk.clone())
                .prop_map(|(k, u)| MapOp::Get(k, u))
                .boxed(),
        ),
        (
            4,
            (key(), uk.clone(), uv)
                .prop_map(|(k, u, v)| MapOp::Put(k, u, v))
                .boxed(),
        ),
        (
            2,
            (key(), uk.clone())
                .prop_map(|(k, u)| MapOp::Remove(k, u))
                .boxed(),
        ),
        (1, key().prop_map(MapOp::Entries).boxed()),
        (1, key().prop_map(MapOp::Keys).boxed()),
        (1, key().prop_map(MapOp::Clear).boxed()),
    ];
    if probes {
        arms.push((
            2,
            (key(), uk).prop_map(|(k, u)| MapOp::Contains(k, u)).boxed(),
        ));
        arms.push((1, key().prop_map(MapOp::IsEmpty).boxed()));
    }
    Union::new_weighted(arms).boxed()
}

fn acc_op() -> impl Strategy<Value = AccOp> {
    prop_oneof![
        2 => key().prop_map(AccOp::Get),
        3 => (key(), 0u64..1000).prop_map(|(k, x)| AccOp::Add(k, x)),
        1 => key().prop_map(AccOp::Clear),
    ]
}

fn string_key() -> impl Strategy<Value = String> + Clone {
    // Includes a non-ASCII key and a prefix of another, to check the byte order.
    proptest::sample::select(vec!["", "a", "aa", "ab", "b", "Z", "é", "zz"]).prop_map(str::to_owned)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..=60).prop_map(Op::Advance),
        1 => (1..=KEYS, blob(600)).prop_map(|(n, b)| Op::Fill(n, b)),
        1 => Just(Op::Flush),
        1 => (1usize..20).prop_map(Op::Cleanup),
        8 => (0..VALUE_TTLS.len(), val_op()).prop_map(|(s, o)| Op::Value(s, o)),
        7 => (0..LIST_TTLS.len(), list_op()).prop_map(|(s, o)| Op::List(s, o)),
        3 => map_op(0u64..6, blob(300), true).prop_map(|o| Op::Map(0, o)),
        // No contains/is_empty on the map whose reads refresh the TTL: see
        // `map_contains_refreshes_ttl_with_on_read_and_write`.
        3 => map_op(0u64..6, blob(300), false).prop_map(|o| Op::Map(1, o)),
        3 => map_op(string_key(), 0u64..100, true).prop_map(Op::SMap),
        2 => acc_op().prop_map(Op::Reduce),
        2 => acc_op().prop_map(Op::Agg),
    ]
}

// ---- running them --------------------------------------------------------------------------

fn run_map_op<UK, UV, V>(
    state: &MapState<u64, UK, V>,
    model: &mut MapModel<UK, V>,
    op: &MapOp<UK, UV>,
    to_value: impl Fn(&UV) -> V,
    now: u64,
) -> Result<(), TestCaseError>
where
    UK: Ord + Clone + Debug + 'static,
    V: Clone + PartialEq + Debug + 'static,
{
    match op {
        MapOp::Get(k, uk) => {
            prop_assert_eq!(state.get(k, uk).unwrap(), model.get(*k, uk, now));
        }
        MapOp::Put(k, uk, uv) => {
            let v = to_value(uv);
            state.put(k, uk, &v).unwrap();
            model.put(*k, uk.clone(), v, now);
        }
        MapOp::Remove(k, uk) => {
            state.remove(k, uk).unwrap();
            model.remove(*k, uk, now);
        }
        MapOp::Contains(k, uk) => {
            prop_assert_eq!(state.contains(k, uk).unwrap(), model.contains(*k, uk, now));
        }
        MapOp::Entries(k) => {
            prop_assert_eq!(state.entries(k).unwrap(), model.entries(*k, now));
        }
        MapOp::Keys(k) => {
            let expected: Vec<UK> = model.entries(*k, now).into_iter().map(|e| e.0).collect();
            prop_assert_eq!(state.keys(k).unwrap(), expected);
        }
        MapOp::IsEmpty(k) => {
            prop_assert_eq!(state.is_empty(k).unwrap(), model.is_empty(*k, now));
        }
        MapOp::Clear(k) => {
            state.clear(k).unwrap();
            model.clear(*k);
        }
    }
    Ok(())
}

fn run_op(sut: &Sut, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let now = model.now;
    match op {
        Op::Advance(ms) => {
            sut.clock.advance_ms(*ms);
            model.now += ms;
        }
        Op::Fill(n, b) => {
            for k in 0..*n {
                let v = Blob {
                    len: b.len,
                    byte: b.byte.wrapping_add(k as u8),
                }
                .bytes();
                sut.values[0].update(&k, &v).unwrap();
                model.values[0].write(k, Some(v), now);
            }
        }
        Op::Flush => sut.store.flush().unwrap(),
        Op::Cleanup(n) => {
            sut.store.cleanup_expired(*n).unwrap();
        }
        Op::Value(s, op) => {
            let (state, m) = (&sut.values[*s], &mut model.values[*s]);
            match op {
                ValOp::Get(k) => prop_assert_eq!(state.get(k).unwrap(), m.read(*k, now)),
                ValOp::Update(k, b) => {
                    state.update(k, &b.bytes()).unwrap();
                    m.write(*k, Some(b.bytes()), now);
                }
                ValOp::UpdateWith(k, action) => {
                    let f = |old: Option<Vec<u8>>| {
                        action.map(|b| match old {
                            Some(mut v) => {
                                v.push(b);
                                v
                            }
                            None => vec![b; 100],
                        })
                    };
                    let mut seen = None;
                    state
                        .update_with(k, |old| {
                            seen = Some(old.clone());
                            f(old)
                        })
                        .unwrap();
                    let old = m.current(*k, now);
                    prop_assert_eq!(seen, Some(old.clone()), "update_with saw another value");
                    m.write(*k, f(old), now);
                }
                ValOp::Clear(k) => {
                    state.clear(k).unwrap();
                    m.write(*k, None, now);
                }
            }
        }
        Op::List(s, op) => {
            let (state, m) = (&sut.lists[*s], &mut model.lists[*s]);
            let all = |bs: &[Blob]| bs.iter().map(|b| b.bytes()).collect::<Vec<_>>();
            match op {
                ListOp::Get(k) => prop_assert_eq!(state.get(k).unwrap(), m.read(*k, now)),
                ListOp::Add(k, b) => {
                    state.add(k, &b.bytes()).unwrap();
                    m.add_all(*k, vec![b.bytes()], now);
                }
                ListOp::AddAll(k, bs) => {
                    state.add_all(k, &all(bs)).unwrap();
                    m.add_all(*k, all(bs), now);
                }
                ListOp::Update(k, bs) => {
                    state.update(k, &all(bs)).unwrap();
                    m.update(*k, all(bs), now);
                }
                ListOp::Clear(k) => {
                    state.clear(k).unwrap();
                    m.clear(*k);
                }
            }
        }
        Op::Map(s, op) => {
            run_map_op(&sut.maps[*s], &mut model.maps[*s], op, |b| b.bytes(), now)?;
        }
        Op::SMap(op) => run_map_op(&sut.smap, &mut model.smap, op, |v| *v, now)?,
        Op::Reduce(op) => {
            let m = &mut model.reduce;
            match op {
                AccOp::Get(k) => prop_assert_eq!(sut.reduce.get(k).unwrap(), m.read(*k, now)),
                AccOp::Add(k, x) => {
                    sut.reduce.add(k, *x).unwrap();
                    let new = m.current(*k, now).map_or(*x, |old| sum(old, *x));
                    m.write(*k, Some(new), now);
                }
                AccOp::Clear(k) => {
                    sut.reduce.clear(k).unwrap();
                    m.write(*k, None, now);
                }
            }
        }
        Op::Agg(op) => {
            let m = &mut model.agg;
            match op {
                AccOp::Get(k) => {
                    prop_assert_eq!(sut.agg.get(k).unwrap(), average(m.read(*k, now)))
                }
                AccOp::Add(k, x) => {
                    sut.agg.add(k, *x).unwrap();
                    let (count, total) = m.current(*k, now).unwrap_or((0, 0));
                    m.write(*k, Some((count + 1, total + x)), now);
                }
                AccOp::Clear(k) => {
                    sut.agg.clear(k).unwrap();
                    m.write(*k, None, now);
                }
            }
        }
    }
    Ok(())
}

/// Reads every key of every state from both (reads refresh TTL in both alike).
fn check_everything(sut: &Sut, model: &mut Model) -> Result<(), TestCaseError> {
    let now = model.now;
    for k in 0..KEYS {
        for (s, state) in sut.values.iter().enumerate() {
            prop_assert_eq!(
                state.get(&k).unwrap(),
                model.values[s].read(k, now),
                "value-{} key {}",
                s,
                k
            );
        }
        for (s, state) in sut.lists.iter().enumerate() {
            prop_assert_eq!(
                state.get(&k).unwrap(),
                model.lists[s].read(k, now),
                "list-{} key {}",
                s,
                k
            );
        }
        for (s, state) in sut.maps.iter().enumerate() {
            prop_assert_eq!(
                state.entries(&k).unwrap(),
                model.maps[s].entries(k, now),
                "map-{} key {}",
                s,
                k
            );
        }
        prop_assert_eq!(sut.smap.entries(&k).unwrap(), model.smap.entries(k, now));
        prop_assert_eq!(sut.reduce.get(&k).unwrap(), model.reduce.read(k, now));
        prop_assert_eq!(sut.agg.get(&k).unwrap(), average(model.agg.read(k, now)));
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/state_model.txt",
        ))),
        ..ProptestConfig::with_cases(32)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_matches_model(
        ops in proptest::collection::vec(op(), 1..300),
        background_cleanup in any::<bool>(),
    ) {
        let sut = Sut::open(tiny_settings(background_cleanup));
        let mut model = Model::new(START_MS);
        for (i, op) in ops.iter().enumerate() {
            run_op(&sut, &mut model, op)
                .map_err(|e| TestCaseError::fail(format!("op #{i} {op:?}: {e}")))?;
        }
        check_everything(&sut, &mut model)?;
        // Once more after everything went through the cold tier.
        sut.store.flush().unwrap();
        sut.clock.advance_ms(TTL_MS / 2);
        model.now += TTL_MS / 2;
        check_everything(&sut, &mut model)?;
        let stats = sut.store.stats();
        prop_assert!(stats.hot_bytes <= stats.hot_budget_bytes, "{:?}", stats);
        sut.store.close().unwrap();
    }
}

// ---- deterministic tests -------------------------------------------------------------------

/// The settings of the brief: a 2 MiB budget over 4 shards (768 KiB of hot tier).
fn small_settings() -> StoreSettings {
    StoreSettings {
        memory_budget_bytes: 2 << 20,
        shards: 4,
        ttl_cleanup_interval_ms: 0,
        ..Default::default()
    }
}

fn open(settings: StoreSettings) -> (TempDir, ManualClock, Store) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::builder(dir.path())
        .settings(settings)
        .clock(clock.clone())
        .open()
        .unwrap();
    (dir, clock, store)
}

fn payload(k: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (k as usize * 31 + i) as u8).collect()
}

#[test]
fn eviction_spills_to_the_cold_tier_and_reads_back() {
    let (_dir, _clock, store) = open(small_settings());
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
        .reducing_state(ReducingStateDescriptor::new("r", U64Codec, U64Codec, sum))
        .unwrap();
    let agg = store
        .aggregating_state(AggregatingStateDescriptor::new(
            "a", U64Codec, Average, PairCodec,
        ))
        .unwrap();

    const N: u64 = 4000;
    for k in 0..N {
        values.update(&k, &payload(k, 300)).unwrap();
        if k % 4 == 0 {
            lists.add(&k, &payload(k, 100)).unwrap();
            lists.add(&k, &payload(k + 1, 50)).unwrap();
            maps.put(&k, &(k % 7), &payload(k, 120)).unwrap();
            maps.put(&k, &3, &payload(k + 2, 10)).unwrap();
            reduce.add(&k, k).unwrap();
            reduce.add(&k, 5).unwrap();
            agg.add(&k, k).unwrap();
            agg.add(&k, k + 2).unwrap();
        }
    }
    store.flush().unwrap();
    let before = store.stats();
    assert!(before.evictions > 0, "nothing was evicted: {before:?}");
    assert!(before.spills > 0, "nothing was spilled: {before:?}");
    assert!(before.hot_bytes <= before.hot_budget_bytes, "{before:?}");

    for k in 0..N {
        assert_eq!(values.get(&k).unwrap(), Some(payload(k, 300)), "value {k}");
        if k % 4 == 0 {
            assert_eq!(
                lists.get(&k).unwrap(),
                vec![payload(k, 100), payload(k + 1, 50)],
                "list {k}"
            );
            let mut expected = BTreeMap::new();
            expected.insert(k % 7, payload(k, 120));
            expected.insert(3, payload(k + 2, 10));
            assert_eq!(
                maps.entries(&k).unwrap(),
                expected.into_iter().collect::<Vec<_>>(),
                "map {k}"
            );
            assert_eq!(reduce.get(&k).unwrap(), Some(k + 5), "reducing {k}");
            assert_eq!(
                agg.get(&k).unwrap(),
                Some(k as f64 + 1.0),
                "aggregating {k}"
            );
        } else {
            assert!(lists.get(&k).unwrap().is_empty());
            assert!(maps.is_empty(&k).unwrap());
            assert_eq!(reduce.get(&k).unwrap(), None);
            assert_eq!(agg.get(&k).unwrap(), None);
        }
    }
    let after = store.stats();
    assert!(
        after.cold_reads > before.cold_reads,
        "no read went to the cold tier: {after:?}"
    );
    assert!(after.hot_bytes <= after.hot_budget_bytes, "{after:?}");

    // Changes of entries read back from the cold tier survive another round trip.
    for k in (0..N).step_by(3) {
        values.update(&k, &payload(k + 9, 200)).unwrap();
    }
    store.flush().unwrap();
    for k in 0..N {
        let expected = if k % 3 == 0 {
            payload(k + 9, 200)
        } else {
            payload(k, 300)
        };
        assert_eq!(values.get(&k).unwrap(), Some(expected), "value {k}");
    }
    store.close().unwrap();
}

/// Writes enough filler to push everything else out of the hot tier, then waits until it is in
/// the cold tier.
fn push_out(store: &Store, filler: &ValueState<u64, Vec<u8>>, round: u64) {
    for k in 0..4000 {
        filler.update(&k, &payload(k + round, 400)).unwrap();
    }
    store.flush().unwrap();
}

#[test]
fn ttl_is_kept_through_the_cold_tier() {
    let (_dir, clock, store) = open(small_settings());
    let ttl = TtlConfig::new(Duration::from_millis(TTL_MS));
    let rw = store
        .value_state(
            ValueStateDescriptor::new("rw", U64Codec, U64Codec)
                .with_ttl(ttl.with_update_type(TtlUpdateType::OnReadAndWrite)),
        )
        .unwrap();
    let w = store
        .value_state(ValueStateDescriptor::new("w", U64Codec, U64Codec).with_ttl(ttl))
        .unwrap();
    let list = store
        .list_state(ListStateDescriptor::new("l", U64Codec, U64Codec).with_ttl(ttl))
        .unwrap();
    let filler = store
        .value_state(ValueStateDescriptor::new("filler", U64Codec, BytesCodec))
        .unwrap();

    rw.update(&1, &10).unwrap();
    w.update(&1, &20).unwrap();
    list.add(&1, &1).unwrap();
    clock.advance_ms(50);
    list.add(&1, &2).unwrap();
    push_out(&store, &filler, 0);

    // t = 90: both live; the read of `rw` refreshes it to 190 (from the cold tier).
    clock.advance_ms(40);
    let cold_reads = store.stats().cold_reads;
    assert_eq!(rw.get(&1).unwrap(), Some(10));
    assert_eq!(w.get(&1).unwrap(), Some(20));
    assert_eq!(list.get(&1).unwrap(), vec![1, 2]);
    assert!(
        store.stats().cold_reads >= cold_reads + 3,
        "the reads did not go to the cold tier: {:?}",
        store.stats()
    );
    push_out(&store, &filler, 1);

    // t = 100: `w` and the first list element have expired; `rw` lives until 190.
    clock.advance_ms(10);
    assert_eq!(w.get(&1).unwrap(), None);
    assert_eq!(list.get(&1).unwrap(), vec![2]);
    push_out(&store, &filler, 2);

    // t = 150: `rw` was refreshed at 90 (to 190): alive, refreshed again to 250.
    clock.advance_ms(50);
    assert_eq!(rw.get(&1).unwrap(), Some(10));
    assert_eq!(list.get(&1).unwrap(), Vec::<u64>::new());
    push_out(&store, &filler, 3);

    clock.advance_ms(99); // t = 249
    push_out(&store, &filler, 4);
    assert_eq!(w.get(&1).unwrap(), None);
    // Exactly at the expiry it is gone (expired means `expires_at <= now`).
    clock.advance_ms(1); // t = 250
    assert_eq!(rw.get(&1).unwrap(), None);
    // Writes after expiry start from nothing.
    rw.update_with(&1, |old| {
        assert_eq!(old, None);
        Some(7)
    })
    .unwrap();
    assert_eq!(rw.get(&1).unwrap(), Some(7));
    store.close().unwrap();
}

fn return_expired(update_type: TtlUpdateType) -> TtlConfig {
    TtlConfig::new(Duration::from_millis(TTL_MS))
        .with_update_type(update_type)
        .with_visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp)
}

#[test]
fn return_expired_if_not_cleaned_up_returns_an_expired_entry_once() {
    let (_dir, clock, store) = open(StoreSettings {
        ttl_cleanup_interval_ms: 0,
        ..Default::default()
    });
    let ttl = return_expired(TtlUpdateType::OnCreateAndWrite);
    let value = store
        .value_state(ValueStateDescriptor::new("v", U64Codec, U64Codec).with_ttl(ttl))
        .unwrap();
    let list = store
        .list_state(ListStateDescriptor::new("l", U64Codec, U64Codec).with_ttl(ttl))
        .unwrap();
    let map = store
        .map_state(MapStateDescriptor::new("m", U64Codec, U64Codec, U64Codec).with_ttl(ttl))
        .unwrap();
    let reduce = store
        .reducing_state(ReducingStateDescriptor::new("r", U64Codec, U64Codec, sum).with_ttl(ttl))
        .unwrap();

    value.update(&1, &7).unwrap();
    value.update(&2, &8).unwrap();
    list.add(&1, &1).unwrap();
    map.put(&1, &1, &10).unwrap();
    reduce.add(&1, 5).unwrap();
    clock.advance_ms(50);
    list.add(&1, &2).unwrap();
    map.put(&1, &2, &20).unwrap();

    clock.advance_ms(50); // t = 100: the first writes have expired.
    assert_eq!(value.get(&1).unwrap(), Some(7), "returned once");
    assert_eq!(value.get(&1).unwrap(), None, "then removed");
    assert_eq!(list.get(&1).unwrap(), vec![1, 2]);
    assert_eq!(list.get(&1).unwrap(), vec![2]);
    assert_eq!(map.get(&1, &1).unwrap(), Some(10));
    assert_eq!(map.entries(&1).unwrap(), vec![(2, 20)]);
    assert_eq!(reduce.get(&1).unwrap(), Some(5));
    assert_eq!(reduce.get(&1).unwrap(), None);
    // Writes never see expired data.
    reduce.add(&1, 1).unwrap();
    assert_eq!(reduce.get(&1).unwrap(), Some(1));
    value
        .update_with(&2, |old| {
            assert_eq!(old, None, "a write saw an expired value");
            Some(9)
        })
        .unwrap();
    assert_eq!(value.get(&2).unwrap(), Some(9));

    clock.advance_ms(50); // t = 150: the second writes have expired too.
    assert_eq!(list.get(&1).unwrap(), vec![2]);
    assert_eq!(list.get(&1).unwrap(), Vec::<u64>::new());
    assert_eq!(map.keys(&1).unwrap(), vec![2]);
    assert!(map.is_empty(&1).unwrap());
    store.close().unwrap();
}

/// An expired entry read from the cold tier is returned once, then removed: it must not come
/// back from the cold tier after the hot tier evicted the (clean) tombstone of the removal.
#[test]
fn return_expired_if_not_cleaned_up_returns_once_through_the_cold_tier() {
    let (_dir, clock, store) = open(small_settings());
    let value = store
        .value_state(
            ValueStateDescriptor::new("v", U64Codec, U64Codec)
                .with_ttl(return_expired(TtlUpdateType::OnCreateAndWrite)),
        )
        .unwrap();
    let filler = store
        .value_state(ValueStateDescriptor::new("filler", U64Codec, BytesCodec))
        .unwrap();
    value.update(&1, &7).unwrap();
    push_out(&store, &filler, 0);
    clock.advance_ms(TTL_MS);
    let cold_reads = store.stats().cold_reads;
    assert_eq!(value.get(&1).unwrap(), Some(7), "returned once");
    assert!(
        store.stats().cold_reads > cold_reads,
        "not read from the cold tier"
    );
    push_out(&store, &filler, 1);
    assert_eq!(value.get(&1).unwrap(), None, "then removed");
    store.close().unwrap();
}

/// With `OnReadAndWrite`, the read that returns an expired entry must not refresh it (Flink:
/// expired entries are cleared, only unexpired ones are refreshed on read).
#[test]
fn return_expired_with_read_refresh_returns_an_expired_entry_once() {
    let (_dir, clock, store) = open(StoreSettings {
        ttl_cleanup_interval_ms: 0,
        ..Default::default()
    });
    let value = store
        .value_state(
            ValueStateDescriptor::new("v", U64Codec, U64Codec)
                .with_ttl(return_expired(TtlUpdateType::OnReadAndWrite)),
        )
        .unwrap();
    value.update(&1, &7).unwrap();
    clock.advance_ms(TTL_MS);
    assert_eq!(value.get(&1).unwrap(), Some(7), "returned once");
    assert_eq!(value.get(&1).unwrap(), None, "then removed");
    store.close().unwrap();
}

/// `contains` is a read of a map entry: with `OnReadAndWrite` it refreshes that entry, as
/// Flink's `TtlMapState.contains` does (it goes through `getWithTtlCheckAndUpdate`).
#[test]
fn map_contains_refreshes_ttl_with_on_read_and_write() {
    let (_dir, clock, store) = open(StoreSettings {
        ttl_cleanup_interval_ms: 0,
        ..Default::default()
    });
    let map = store
        .map_state(
            MapStateDescriptor::new("m", U64Codec, U64Codec, U64Codec).with_ttl(
                TtlConfig::new(Duration::from_millis(TTL_MS))
                    .with_update_type(TtlUpdateType::OnReadAndWrite),
            ),
        )
        .unwrap();
    map.put(&1, &1, &10).unwrap();
    clock.advance_ms(90);
    assert!(map.contains(&1, &1).unwrap());
    clock.advance_ms(60); // t = 150: alive only if the `contains` at 90 refreshed it.
    assert_eq!(map.get(&1, &1).unwrap(), Some(10));
    store.close().unwrap();
}
