//! State descriptors: how a job declares a state (name, kind, codecs, TTL), as in Flink.

use std::sync::Arc;

pub use millpond_format::StateKind;

use crate::codec::Codec;
use crate::ttl::TtlConfig;

/// A state as a snapshot records it: its name, kind, TTL and the id that prefixes its keys.
///
/// [`Store::schemas`](crate::Store::schemas) lists the registered ones; giving a snapshot's
/// schemas to [`StoreBuilder::base`](crate::StoreBuilder::base) makes a restored store use
/// the ids that the snapshot's keys carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSchema {
    /// The state's name.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Its TTL, if any.
    pub ttl: Option<TtlConfig>,
    /// The id in bytes 2..4 of its composite keys.
    pub id: u16,
}

/// A registered state, as the store knows it.
#[derive(Debug)]
pub(crate) struct StateInfo {
    pub id: u16,
    pub name: String,
    pub kind: StateKind,
    pub ttl: Option<TtlConfig>,
}

/// Folds an input into an accumulator (Flink's `AggregateFunction`, without `merge`).
pub trait AggregateFunction<IN, ACC, OUT>: Send + Sync + 'static {
    /// A new, empty accumulator.
    fn create_accumulator(&self) -> ACC;
    /// Adds `value` to `accumulator`.
    fn add(&self, value: IN, accumulator: ACC) -> ACC;
    /// The result for an accumulator.
    fn get_result(&self, accumulator: &ACC) -> OUT;
}

/// Declares a [`ValueState`](crate::ValueState).
pub struct ValueStateDescriptor<K, V> {
    pub(crate) name: String,
    pub(crate) key_codec: Arc<dyn Codec<K>>,
    pub(crate) value_codec: Arc<dyn Codec<V>>,
    pub(crate) ttl: Option<TtlConfig>,
}

impl<K: 'static, V: 'static> ValueStateDescriptor<K, V> {
    /// A value state named `name`.
    pub fn new(
        name: impl Into<String>,
        key_codec: impl Codec<K>,
        value_codec: impl Codec<V>,
    ) -> Self {
        ValueStateDescriptor {
            name: name.into(),
            key_codec: Arc::new(key_codec),
            value_codec: Arc::new(value_codec),
            ttl: None,
        }
    }

    /// Gives entries a time-to-live.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Declares a [`ListState`](crate::ListState).
pub struct ListStateDescriptor<K, V> {
    pub(crate) name: String,
    pub(crate) key_codec: Arc<dyn Codec<K>>,
    pub(crate) element_codec: Arc<dyn Codec<V>>,
    pub(crate) ttl: Option<TtlConfig>,
}

impl<K: 'static, V: 'static> ListStateDescriptor<K, V> {
    /// A list state named `name`.
    pub fn new(
        name: impl Into<String>,
        key_codec: impl Codec<K>,
        element_codec: impl Codec<V>,
    ) -> Self {
        ListStateDescriptor {
            name: name.into(),
            key_codec: Arc::new(key_codec),
            element_codec: Arc::new(element_codec),
            ttl: None,
        }
    }

    /// Gives each element a time-to-live.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Declares a [`MapState`](crate::MapState).
pub struct MapStateDescriptor<K, UK, UV> {
    pub(crate) name: String,
    pub(crate) key_codec: Arc<dyn Codec<K>>,
    pub(crate) user_key_codec: Arc<dyn Codec<UK>>,
    pub(crate) user_value_codec: Arc<dyn Codec<UV>>,
    pub(crate) ttl: Option<TtlConfig>,
}

impl<K: 'static, UK: 'static, UV: 'static> MapStateDescriptor<K, UK, UV> {
    /// A map state named `name`. Map keys are kept sorted by their encoded bytes.
    pub fn new(
        name: impl Into<String>,
        key_codec: impl Codec<K>,
        user_key_codec: impl Codec<UK>,
        user_value_codec: impl Codec<UV>,
    ) -> Self {
        MapStateDescriptor {
            name: name.into(),
            key_codec: Arc::new(key_codec),
            user_key_codec: Arc::new(user_key_codec),
            user_value_codec: Arc::new(user_value_codec),
            ttl: None,
        }
    }

    /// Gives each map entry a time-to-live.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Declares a [`ReducingState`](crate::ReducingState).
pub struct ReducingStateDescriptor<K, V> {
    pub(crate) name: String,
    pub(crate) key_codec: Arc<dyn Codec<K>>,
    pub(crate) value_codec: Arc<dyn Codec<V>>,
    pub(crate) reduce: Arc<dyn Fn(V, V) -> V + Send + Sync>,
    pub(crate) ttl: Option<TtlConfig>,
}

impl<K: 'static, V: 'static> ReducingStateDescriptor<K, V> {
    /// A reducing state named `name`: `reduce(accumulated, new)` folds each added value.
    pub fn new(
        name: impl Into<String>,
        key_codec: impl Codec<K>,
        value_codec: impl Codec<V>,
        reduce: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> Self {
        ReducingStateDescriptor {
            name: name.into(),
            key_codec: Arc::new(key_codec),
            value_codec: Arc::new(value_codec),
            reduce: Arc::new(reduce),
            ttl: None,
        }
    }

    /// Gives entries a time-to-live.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// An aggregate function with its accumulator's codec, its accumulator type erased.
pub(crate) trait ErasedAggregate<IN, OUT>: Send + Sync {
    fn add(&self, acc: Option<&[u8]>, value: IN, out: &mut Vec<u8>) -> Result<(), crate::BoxError>;
    fn result(&self, acc: &[u8]) -> Result<OUT, crate::BoxError>;
}

struct Aggregate<F, C, ACC> {
    function: F,
    codec: C,
    _acc: std::marker::PhantomData<fn() -> ACC>,
}

impl<IN, ACC, OUT, F, C> ErasedAggregate<IN, OUT> for Aggregate<F, C, ACC>
where
    F: AggregateFunction<IN, ACC, OUT>,
    C: Codec<ACC>,
{
    fn add(&self, acc: Option<&[u8]>, value: IN, out: &mut Vec<u8>) -> Result<(), crate::BoxError> {
        let acc = match acc {
            Some(bytes) => self.codec.decode(bytes)?,
            None => self.function.create_accumulator(),
        };
        let acc = self.function.add(value, acc);
        self.codec.encode(&acc, out)
    }

    fn result(&self, acc: &[u8]) -> Result<OUT, crate::BoxError> {
        Ok(self.function.get_result(&self.codec.decode(acc)?))
    }
}

/// Declares an [`AggregatingState`](crate::AggregatingState).
pub struct AggregatingStateDescriptor<K, IN, OUT> {
    pub(crate) name: String,
    pub(crate) key_codec: Arc<dyn Codec<K>>,
    pub(crate) aggregate: Arc<dyn ErasedAggregate<IN, OUT>>,
    pub(crate) ttl: Option<TtlConfig>,
}

impl<K: 'static, IN: 'static, OUT: 'static> AggregatingStateDescriptor<K, IN, OUT> {
    /// An aggregating state named `name`, whose accumulators of type `ACC` are stored with
    /// `accumulator_codec`.
    pub fn new<ACC: 'static>(
        name: impl Into<String>,
        key_codec: impl Codec<K>,
        function: impl AggregateFunction<IN, ACC, OUT>,
        accumulator_codec: impl Codec<ACC>,
    ) -> Self {
        AggregatingStateDescriptor {
            name: name.into(),
            key_codec: Arc::new(key_codec),
            aggregate: Arc::new(Aggregate {
                function,
                codec: accumulator_codec,
                _acc: std::marker::PhantomData,
            }),
            ttl: None,
        }
    }

    /// Gives entries a time-to-live.
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
}
