//! Change capture: every mutation of state becomes a [`Change`] handed to a [`ChangeSink`]
//! (the write-ahead log) before it is applied, so that replaying the changes in order rebuilds
//! the state. [`Store::apply`](crate::Store::apply) is that replay. What a change does
//! ([`ChangeOp`]) is part of the formats and lives in `millpond_format`.

pub use millpond_format::{ChangeOp, StateKind};

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

/// Receives every change before it is applied. The write-ahead log implements it.
///
/// `append` is called with the key's shard lock held, so it must be quick and must not call
/// back into the store: copy the change into a buffer and return. An error refuses the change,
/// and the state stays as it was.
pub trait ChangeSink: Send + Sync + 'static {
    /// Takes one change and returns its log position (LSN): greater than the LSN of every
    /// change this sink took before. A sink that does not number changes returns 0; the
    /// store then numbers them itself. The store tags the operands it keeps for a key that is
    /// not in memory (docs/state.md, "Blind appends and puts") with it, so that a snapshot of
    /// the log installed below the store ([`Store::install_base`](crate::Store::install_base))
    /// is not applied twice.
    fn append(&self, change: &Change<'_>) -> Result<u64, BoxError>;
}

/// A sink that drops every change: for jobs without a WAL and for benchmarks.
///
/// ```
/// use millpond_state::{Change, ChangeOp, ChangeSink, NullSink, StateKind};
/// let change = Change { state: "s", kind: StateKind::Value, key_group: 0, key: b"k", op: ChangeOp::Clear };
/// assert_eq!(NullSink.append(&change).unwrap(), 0);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl ChangeSink for NullSink {
    #[inline]
    fn append(&self, _change: &Change<'_>) -> Result<u64, BoxError> {
        Ok(0)
    }
}
