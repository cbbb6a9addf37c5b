//! Change capture: every mutation of state becomes a [`Change`] handed to a [`ChangeSink`]
//! (the write-ahead log) before it is applied, so that replaying the changes in order rebuilds
//! the state. [`Store::apply`](crate::Store::apply) is that replay.

use crate::descriptor::StateKind;
use crate::error::BoxError;

/// One mutation of one key of one state, borrowed from the store for the duration of a
/// [`ChangeSink::append`] call.
///
/// Changes of one key reach the sink in the order they are applied (the sink is called under
/// the key's shard lock); changes of different shards may interleave in any order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change<'a> {
    /// The state's registered name.
    pub state: &'a str,
    /// The state's kind.
    pub kind: StateKind,
    /// The key's key group.
    pub key_group: u16,
    /// The encoded key.
    pub key: &'a [u8],
    /// What happened.
    pub op: ChangeOp<'a>,
}

/// What a [`Change`] does. Expiry timestamps are milliseconds since the epoch, 0 for none.
///
/// Reducing and aggregating state record the new accumulator as a [`ChangeOp::Put`], so that
/// replay needs no user function and is idempotent per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeOp<'a> {
    /// Value-like state (value, reducing, aggregating) set to `value`.
    Put {
        /// The encoded value.
        value: &'a [u8],
        /// When it expires.
        expires_at_ms: u64,
    },
    /// The key's entry removed (any kind).
    Clear,
    /// List state: `values` appended.
    ListAppend {
        /// The encoded elements, in order.
        values: &'a [Vec<u8>],
        /// When they expire.
        expires_at_ms: u64,
    },
    /// List state: replaced by `values` (empty clears it).
    ListReplace {
        /// The encoded elements, in order.
        values: &'a [Vec<u8>],
        /// When they expire.
        expires_at_ms: u64,
    },
    /// Map state: `user_key` set to `value`.
    MapPut {
        /// The encoded map key.
        user_key: &'a [u8],
        /// The encoded map value.
        value: &'a [u8],
        /// When it expires.
        expires_at_ms: u64,
    },
    /// Map state: `user_key` removed.
    MapRemove {
        /// The encoded map key.
        user_key: &'a [u8],
    },
    /// TTL on read (`OnReadAndWrite`): the expiry of the whole entry (every element of a list
    /// or map) refreshed.
    Touch {
        /// The new expiry.
        expires_at_ms: u64,
    },
    /// TTL on read of one map entry: its expiry refreshed.
    MapTouch {
        /// The encoded map key.
        user_key: &'a [u8],
        /// The new expiry.
        expires_at_ms: u64,
    },
}

/// Receives every change before it is applied. The write-ahead log implements it.
///
/// `append` is called with the key's shard lock held, so it must be quick and must not call
/// back into the store: copy the change into a buffer and return. An error refuses the change,
/// and the state stays as it was.
pub trait ChangeSink: Send + Sync + 'static {
    /// Takes one change.
    fn append(&self, change: &Change<'_>) -> Result<(), BoxError>;
}

/// A sink that drops every change: for jobs without a WAL and for benchmarks.
///
/// ```
/// use millpond_state::{Change, ChangeOp, ChangeSink, NullSink, StateKind};
/// let change = Change { state: "s", kind: StateKind::Value, key_group: 0, key: b"k", op: ChangeOp::Clear };
/// NullSink.append(&change).unwrap();
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl ChangeSink for NullSink {
    #[inline]
    fn append(&self, _change: &Change<'_>) -> Result<(), BoxError> {
        Ok(())
    }
}
