//! Changes: what one mutation of one key does ([`ChangeOp`]), and which changes a kind of
//! state may carry ([`StateKind`]). A change is what the WAL logs and what replay and the
//! snapshot writer apply (with [`fold`](crate::fold)).

use std::fmt;

/// What a change of one key does (`millpond_state::Change` carries one). Expiry timestamps
/// are milliseconds since the epoch, 0 for none.
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

/// The five kinds of keyed state, as in Flink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// One value per key (`ValueState`).
    Value,
    /// A list per key (`ListState`).
    List,
    /// A map per key (`MapState`).
    Map,
    /// A value folded with a reduce function (`ReducingState`).
    Reducing,
    /// An accumulator folded with an aggregate function (`AggregatingState`).
    Aggregating,
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Aggregating => "aggregating",
        })
    }
}

impl StateKind {
    /// Whether a change of this kind of state may carry `op`.
    pub fn accepts(&self, op: &ChangeOp<'_>) -> bool {
        use ChangeOp::*;
        match self {
            StateKind::Value | StateKind::Reducing | StateKind::Aggregating => {
                matches!(op, Put { .. } | Clear | Touch { .. })
            }
            StateKind::List => matches!(
                op,
                ListAppend { .. } | ListReplace { .. } | Clear | Touch { .. }
            ),
            StateKind::Map => matches!(
                op,
                MapPut { .. } | MapRemove { .. } | MapTouch { .. } | Touch { .. } | Clear
            ),
        }
    }
}
