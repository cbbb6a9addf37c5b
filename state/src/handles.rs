//! Typed handles of the five state kinds. Each takes the key as an argument (there is no
//! hidden "current key"), is `Send + Sync`, and is cheap to clone.

use std::cell::RefCell;
use std::sync::Arc;

use millpond_format::{CompositeKeyBuf, Entry};

use crate::change::ChangeOp;
use crate::codec::Codec;
use crate::descriptor::{
    AggregatingStateDescriptor, ErasedAggregate, ListStateDescriptor, MapStateDescriptor,
    ReducingStateDescriptor, StateInfo, StateKind, ValueStateDescriptor,
};
use crate::error::{BoxError, Error, Result};
use crate::store::{Access, Emitter, Inner, OperandOp, Store};

thread_local! {
    /// Reusable encoding buffers, so that the hot path does not allocate for keys and values.
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static KEY_BUFFERS: RefCell<Vec<CompositeKeyBuf>> = const { RefCell::new(Vec::new()) };
}

/// Buffers above this many bytes are dropped after use rather than kept for the next call.
const KEEP_BUFFER_BYTES: usize = 64 << 10;

fn with_buffer<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = BUFFERS.with(|b| b.borrow_mut().pop()).unwrap_or_default();
    buf.clear();
    let r = f(&mut buf);
    if buf.capacity() <= KEEP_BUFFER_BYTES {
        BUFFERS.with(|b| b.borrow_mut().push(buf));
    }
    r
}

fn with_key_buffer<R>(f: impl FnOnce(&mut CompositeKeyBuf) -> R) -> R {
    let mut buf = KEY_BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_default();
    let r = f(&mut buf);
    if buf.capacity() <= KEEP_BUFFER_BYTES {
        KEY_BUFFERS.with(|b| b.borrow_mut().push(buf));
    }
    r
}

fn codec_err(st: &StateInfo) -> impl FnOnce(BoxError) -> Error + '_ {
    move |source| Error::Codec {
        state: st.name.clone(),
        source,
    }
}

/// What every handle holds: the store, the state, the key codec.
struct Handle<K> {
    store: Arc<Inner>,
    st: Arc<StateInfo>,
    key_codec: Arc<dyn Codec<K>>,
}

impl<K> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Handle {
            store: self.store.clone(),
            st: self.st.clone(),
            key_codec: self.key_codec.clone(),
        }
    }
}

impl<K: 'static> Handle<K> {
    fn new(
        store: &Store,
        name: &str,
        kind: StateKind,
        ttl: Option<crate::TtlConfig>,
        key_codec: Arc<dyn Codec<K>>,
    ) -> Result<Self> {
        Ok(Handle {
            st: store.register(name, kind, ttl)?,
            store: store.inner.clone(),
            key_codec,
        })
    }

    /// Reads `key` through the hot tier's fast path if it can ([`Inner::read_hot`]), else
    /// through [`Handle::run`] with `slow`.
    fn read<R>(
        &self,
        key: &K,
        fast: impl FnOnce(Option<&Entry>) -> Result<R>,
        slow: impl FnOnce(&mut Option<Entry>, &mut Emitter<'_>) -> Result<R>,
    ) -> Result<R> {
        with_key_buffer(|ck| {
            self.composite_key(key, ck)?;
            match self.store.read_hot(&self.st, ck, fast)? {
                Some(r) => Ok(r),
                None => self.store.run(&self.st, ck, Access::Read, slow),
            }
        })
    }

    /// Writes the composite key of `key` into `ck`: the prefix (state id; the key group is
    /// filled in later by the store), then the encoded key.
    fn composite_key(&self, key: &K, ck: &mut CompositeKeyBuf) -> Result<()> {
        self.key_codec
            .encode(key, ck.start(self.st.id))
            .map_err(codec_err(&self.st))?;
        if !ck.is_complete() {
            return Err(codec_err(&self.st)(
                "the key codec removed bytes it did not write".into(),
            ));
        }
        Ok(())
    }

    /// Encodes `key` behind the composite prefix and runs `f` on its data.
    fn run<R>(
        &self,
        key: &K,
        access: Access,
        f: impl FnOnce(&mut Option<Entry>, &mut Emitter<'_>) -> Result<R>,
    ) -> Result<R> {
        with_key_buffer(|ck| {
            self.composite_key(key, ck)?;
            self.store.run(&self.st, ck, access, f)
        })
    }

    /// A list append, map put or map remove: kept as an operand when the key is not in memory
    /// (see [`Inner::operand`]), else `f` on the key's data, as a write.
    fn operand(
        &self,
        key: &K,
        op: OperandOp<'_>,
        f: impl FnOnce(&mut Option<Entry>, &mut Emitter<'_>) -> Result<()>,
    ) -> Result<()> {
        with_key_buffer(|ck| {
            self.composite_key(key, ck)?;
            if self.store.operand(&self.st, ck, op, None)? {
                return Ok(());
            }
            self.store.run(&self.st, ck, Access::Write, f)
        })
    }

    fn clear(&self, key: &K) -> Result<()> {
        self.run(key, Access::Write, |slot, em| {
            if slot.is_some() {
                em.apply(slot, ChangeOp::Clear)?;
            }
            Ok(())
        })
    }
}

fn data_value_bytes(data: &Entry) -> Option<&[u8]> {
    match data {
        Entry::Value { value, .. } => Some(value.as_slice()),
        _ => None,
    }
}

fn value_bytes(slot: &Option<Entry>) -> Option<&[u8]> {
    match slot {
        Some(Entry::Value { value, .. }) => Some(value.as_slice()),
        _ => None,
    }
}

/// One value per key. Flink: `ValueState`.
pub struct ValueState<K, V> {
    h: Handle<K>,
    codec: Arc<dyn Codec<V>>,
}

impl<K, V> Clone for ValueState<K, V> {
    fn clone(&self) -> Self {
        ValueState {
            h: self.h.clone(),
            codec: self.codec.clone(),
        }
    }
}

impl<K: 'static, V: 'static> ValueState<K, V> {
    /// The value of `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let decode = |bytes: Option<&[u8]>| {
            bytes
                .map(|b| self.codec.decode(b))
                .transpose()
                .map_err(codec_err(&self.h.st))
        };
        self.h.read(
            key,
            |data| decode(data.and_then(data_value_bytes)),
            |slot, em| {
                let v = decode(value_bytes(slot))?;
                em.touch(slot, None);
                Ok(v)
            },
        )
    }

    /// Sets the value of `key`.
    pub fn update(&self, key: &K, value: &V) -> Result<()> {
        with_buffer(|buf| {
            self.codec
                .encode(value, buf)
                .map_err(codec_err(&self.h.st))?;
            self.h.run(key, Access::BlindWrite, |slot, em| {
                let expires_at_ms = em.expiry();
                em.apply(
                    slot,
                    ChangeOp::Put {
                        value: buf,
                        expires_at_ms,
                    },
                )
            })
        })
    }

    /// Reads, changes and writes the value of `key` under one lock: `f` gets the current value
    /// and returns the new one (`None` clears it). Returns `()`: read the value again (or
    /// keep what `f` computed) if the caller needs it.
    pub fn update_with(&self, key: &K, f: impl FnOnce(Option<V>) -> Option<V>) -> Result<()> {
        with_buffer(|buf| {
            self.h.run(key, Access::Write, |slot, em| {
                let old = value_bytes(slot)
                    .map(|b| self.codec.decode(b))
                    .transpose()
                    .map_err(codec_err(&self.h.st))?;
                match f(old) {
                    Some(new) => {
                        self.codec
                            .encode(&new, buf)
                            .map_err(codec_err(&self.h.st))?;
                        let expires_at_ms = em.expiry();
                        em.apply(
                            slot,
                            ChangeOp::Put {
                                value: buf,
                                expires_at_ms,
                            },
                        )
                    }
                    None if slot.is_some() => em.apply(slot, ChangeOp::Clear),
                    None => Ok(()),
                }
            })
        })
    }

    /// Removes the value of `key`.
    pub fn clear(&self, key: &K) -> Result<()> {
        self.h.clear(key)
    }
}

/// A list per key. Flink: `ListState`. Each element has its own TTL.
pub struct ListState<K, V> {
    h: Handle<K>,
    codec: Arc<dyn Codec<V>>,
}

impl<K, V> Clone for ListState<K, V> {
    fn clone(&self) -> Self {
        ListState {
            h: self.h.clone(),
            codec: self.codec.clone(),
        }
    }
}

impl<K: 'static, V: 'static> ListState<K, V> {
    /// The elements of `key`'s list, in order (empty if none).
    pub fn get(&self, key: &K) -> Result<Vec<V>> {
        self.h.run(key, Access::Read, |slot, em| {
            let out = match slot {
                Some(Entry::List(elems)) => elems
                    .iter()
                    .map(|e| self.codec.decode(&e.value))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(codec_err(&self.h.st))?,
                _ => Vec::new(),
            };
            em.touch(slot, None);
            Ok(out)
        })
    }

    fn encode_all(&self, values: &[V]) -> Result<Vec<Vec<u8>>> {
        values
            .iter()
            .map(|v| {
                let mut buf = Vec::new();
                self.codec.encode(v, &mut buf).map(|_| buf)
            })
            .collect::<Result<_, _>>()
            .map_err(codec_err(&self.h.st))
    }

    /// Appends `value`.
    pub fn add(&self, key: &K, value: &V) -> Result<()> {
        self.add_all(key, std::slice::from_ref(value))
    }

    /// Appends `values`, in order.
    pub fn add_all(&self, key: &K, values: &[V]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let encoded = self.encode_all(values)?;
        self.h
            .operand(key, OperandOp::ListAppend(&encoded), |slot, em| {
                let expires_at_ms = em.expiry();
                em.apply(
                    slot,
                    ChangeOp::ListAppend {
                        values: &encoded,
                        expires_at_ms,
                    },
                )
            })
    }

    /// Replaces the list with `values` (empty: clears it).
    pub fn update(&self, key: &K, values: &[V]) -> Result<()> {
        let encoded = self.encode_all(values)?;
        self.h.run(key, Access::Write, |slot, em| {
            if encoded.is_empty() && slot.is_none() {
                return Ok(());
            }
            let expires_at_ms = em.expiry();
            em.apply(
                slot,
                ChangeOp::ListReplace {
                    values: &encoded,
                    expires_at_ms,
                },
            )
        })
    }

    /// Removes the list of `key`.
    pub fn clear(&self, key: &K) -> Result<()> {
        self.h.clear(key)
    }
}

/// A map per key. Flink: `MapState`. Map keys are kept in the order of their encoded bytes;
/// each map entry has its own TTL.
pub struct MapState<K, UK, UV> {
    h: Handle<K>,
    key_codec: Arc<dyn Codec<UK>>,
    value_codec: Arc<dyn Codec<UV>>,
}

impl<K, UK, UV> Clone for MapState<K, UK, UV> {
    fn clone(&self) -> Self {
        MapState {
            h: self.h.clone(),
            key_codec: self.key_codec.clone(),
            value_codec: self.value_codec.clone(),
        }
    }
}

impl<K: 'static, UK: 'static, UV: 'static> MapState<K, UK, UV> {
    fn encode_user_key<R>(&self, user_key: &UK, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
        with_buffer(|buf| {
            self.key_codec
                .encode(user_key, buf)
                .map_err(codec_err(&self.h.st))?;
            f(buf)
        })
    }

    /// The value under `user_key` in `key`'s map.
    pub fn get(&self, key: &K, user_key: &UK) -> Result<Option<UV>> {
        self.encode_user_key(user_key, |uk| {
            self.h.run(key, Access::Read, |slot, em| {
                let v = match slot {
                    Some(Entry::Map(map)) => map
                        .get(uk)
                        .map(|e| self.value_codec.decode(&e.value))
                        .transpose()
                        .map_err(codec_err(&self.h.st))?,
                    _ => None,
                };
                if v.is_some() {
                    em.touch(slot, Some(uk));
                }
                Ok(v)
            })
        })
    }

    /// Whether `key`'s map has `user_key`.
    pub fn contains(&self, key: &K, user_key: &UK) -> Result<bool> {
        self.encode_user_key(user_key, |uk| {
            self.h.run(key, Access::Read, |slot, em| {
                let found = matches!(slot, Some(Entry::Map(map)) if map.contains_key(uk));
                if found {
                    em.touch(slot, Some(uk));
                }
                Ok(found)
            })
        })
    }

    /// Sets `user_key` to `value` in `key`'s map.
    pub fn put(&self, key: &K, user_key: &UK, value: &UV) -> Result<()> {
        self.encode_user_key(user_key, |uk| {
            with_buffer(|vb| {
                self.value_codec
                    .encode(value, vb)
                    .map_err(codec_err(&self.h.st))?;
                self.h.operand(key, OperandOp::MapPut(uk, vb), |slot, em| {
                    let expires_at_ms = em.expiry();
                    em.apply(
                        slot,
                        ChangeOp::MapPut {
                            user_key: uk,
                            value: vb,
                            expires_at_ms,
                        },
                    )
                })
            })
        })
    }

    /// Removes `user_key` from `key`'s map.
    pub fn remove(&self, key: &K, user_key: &UK) -> Result<()> {
        self.encode_user_key(user_key, |uk| {
            // Kept as an operand, a remove is logged whether or not the map holds the key
            // (removing what is not there changes nothing, in replay too).
            self.h
                .operand(key, OperandOp::MapRemove(uk), |slot, em| match slot {
                    Some(Entry::Map(map)) if map.contains_key(uk) => {
                        em.apply(slot, ChangeOp::MapRemove { user_key: uk })
                    }
                    _ => Ok(()),
                })
        })
    }

    /// All entries of `key`'s map, sorted by encoded map key.
    pub fn entries(&self, key: &K) -> Result<Vec<(UK, UV)>> {
        self.h.run(key, Access::Read, |slot, em| {
            let out = match slot {
                Some(Entry::Map(map)) => map
                    .iter()
                    .map(|(k, e)| {
                        Ok((
                            self.key_codec.decode(k)?,
                            self.value_codec.decode(&e.value)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, BoxError>>()
                    .map_err(codec_err(&self.h.st))?,
                _ => Vec::new(),
            };
            em.touch(slot, None);
            Ok(out)
        })
    }

    /// The map keys of `key`'s map, sorted by encoded bytes.
    pub fn keys(&self, key: &K) -> Result<Vec<UK>> {
        self.h.run(key, Access::Read, |slot, em| {
            let out = match slot {
                Some(Entry::Map(map)) => map
                    .keys()
                    .map(|k| self.key_codec.decode(k))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(codec_err(&self.h.st))?,
                _ => Vec::new(),
            };
            em.touch(slot, None);
            Ok(out)
        })
    }

    /// Whether `key` has no map entries.
    pub fn is_empty(&self, key: &K) -> Result<bool> {
        self.h.run(key, Access::Read, |slot, _| Ok(slot.is_none()))
    }

    /// Removes `key`'s whole map.
    pub fn clear(&self, key: &K) -> Result<()> {
        self.h.clear(key)
    }
}

/// A value that every added value is folded into. Flink: `ReducingState`.
pub struct ReducingState<K, V> {
    h: Handle<K>,
    codec: Arc<dyn Codec<V>>,
    reduce: Arc<dyn Fn(V, V) -> V + Send + Sync>,
}

impl<K, V> Clone for ReducingState<K, V> {
    fn clone(&self) -> Self {
        ReducingState {
            h: self.h.clone(),
            codec: self.codec.clone(),
            reduce: self.reduce.clone(),
        }
    }
}

impl<K: 'static, V: 'static> ReducingState<K, V> {
    /// The reduced value of `key`, if anything was added.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.h.run(key, Access::Read, |slot, em| {
            let v = value_bytes(slot)
                .map(|b| self.codec.decode(b))
                .transpose()
                .map_err(codec_err(&self.h.st))?;
            em.touch(slot, None);
            Ok(v)
        })
    }

    /// Folds `value` into `key`'s value.
    pub fn add(&self, key: &K, value: V) -> Result<()> {
        with_buffer(|buf| {
            self.h.run(key, Access::Write, |slot, em| {
                let old = value_bytes(slot)
                    .map(|b| self.codec.decode(b))
                    .transpose()
                    .map_err(codec_err(&self.h.st))?;
                let new = match old {
                    Some(acc) => (self.reduce)(acc, value),
                    None => value,
                };
                self.codec
                    .encode(&new, buf)
                    .map_err(codec_err(&self.h.st))?;
                let expires_at_ms = em.expiry();
                em.apply(
                    slot,
                    ChangeOp::Put {
                        value: buf,
                        expires_at_ms,
                    },
                )
            })
        })
    }

    /// Removes `key`'s value.
    pub fn clear(&self, key: &K) -> Result<()> {
        self.h.clear(key)
    }
}

/// An accumulator that every added input is folded into. Flink: `AggregatingState`.
pub struct AggregatingState<K, IN, OUT> {
    h: Handle<K>,
    aggregate: Arc<dyn ErasedAggregate<IN, OUT>>,
}

impl<K, IN, OUT> Clone for AggregatingState<K, IN, OUT> {
    fn clone(&self) -> Self {
        AggregatingState {
            h: self.h.clone(),
            aggregate: self.aggregate.clone(),
        }
    }
}

impl<K: 'static, IN: 'static, OUT: 'static> AggregatingState<K, IN, OUT> {
    /// The result for `key`'s accumulator, if anything was added.
    pub fn get(&self, key: &K) -> Result<Option<OUT>> {
        self.h.run(key, Access::Read, |slot, em| {
            let v = value_bytes(slot)
                .map(|b| self.aggregate.result(b))
                .transpose()
                .map_err(codec_err(&self.h.st))?;
            em.touch(slot, None);
            Ok(v)
        })
    }

    /// Folds `value` into `key`'s accumulator.
    pub fn add(&self, key: &K, value: IN) -> Result<()> {
        with_buffer(|buf| {
            self.h.run(key, Access::Write, |slot, em| {
                self.aggregate
                    .add(value_bytes(slot), value, buf)
                    .map_err(codec_err(&self.h.st))?;
                let expires_at_ms = em.expiry();
                em.apply(
                    slot,
                    ChangeOp::Put {
                        value: buf,
                        expires_at_ms,
                    },
                )
            })
        })
    }

    /// Removes `key`'s accumulator.
    pub fn clear(&self, key: &K) -> Result<()> {
        self.h.clear(key)
    }
}

impl Store {
    /// Registers (or finds) a value state.
    pub fn value_state<K: 'static, V: 'static>(
        &self,
        d: ValueStateDescriptor<K, V>,
    ) -> Result<ValueState<K, V>> {
        Ok(ValueState {
            h: Handle::new(self, &d.name, StateKind::Value, d.ttl, d.key_codec)?,
            codec: d.value_codec,
        })
    }

    /// Registers (or finds) a list state.
    pub fn list_state<K: 'static, V: 'static>(
        &self,
        d: ListStateDescriptor<K, V>,
    ) -> Result<ListState<K, V>> {
        Ok(ListState {
            h: Handle::new(self, &d.name, StateKind::List, d.ttl, d.key_codec)?,
            codec: d.element_codec,
        })
    }

    /// Registers (or finds) a map state.
    pub fn map_state<K: 'static, UK: 'static, UV: 'static>(
        &self,
        d: MapStateDescriptor<K, UK, UV>,
    ) -> Result<MapState<K, UK, UV>> {
        Ok(MapState {
            h: Handle::new(self, &d.name, StateKind::Map, d.ttl, d.key_codec)?,
            key_codec: d.user_key_codec,
            value_codec: d.user_value_codec,
        })
    }

    /// Registers (or finds) a reducing state.
    pub fn reducing_state<K: 'static, V: 'static>(
        &self,
        d: ReducingStateDescriptor<K, V>,
    ) -> Result<ReducingState<K, V>> {
        Ok(ReducingState {
            h: Handle::new(self, &d.name, StateKind::Reducing, d.ttl, d.key_codec)?,
            codec: d.value_codec,
            reduce: d.reduce,
        })
    }

    /// Registers (or finds) an aggregating state.
    pub fn aggregating_state<K: 'static, IN: 'static, OUT: 'static>(
        &self,
        d: AggregatingStateDescriptor<K, IN, OUT>,
    ) -> Result<AggregatingState<K, IN, OUT>> {
        Ok(AggregatingState {
            h: Handle::new(self, &d.name, StateKind::Aggregating, d.ttl, d.key_codec)?,
            aggregate: d.aggregate,
        })
    }
}
