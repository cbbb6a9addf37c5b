//! Keyed state for stream jobs, without Flink's state backends.
//!
//! `millpond-state` keeps the five kinds of Flink's keyed state (value, list, map, reducing,
//! aggregating) for any number of keys:
//!
//! - **Key groups** shard the keys (Flink's "max parallelism"); they are the unit of snapshots
//!   and rescaling. See [`key_group`].
//! - **Hot tier**: one LRU and one lock per shard, bounded by a memory budget in bytes.
//! - **TTL** with Flink's semantics, from an injected [`Clock`].
//! - **Cold tier**: entries evicted from memory spill to a redb file, written in batches by a
//!   background thread, never on the caller's thread.
//! - **Change capture**: every mutation is handed to a [`ChangeSink`] (the write-ahead log)
//!   before it is applied; [`Store::apply`] replays them.
//! - **Base tier**: a store restored from a snapshot reads the snapshot's files in place
//!   ([`BaseTier`], [`StoreBuilder::base`]) instead of loading them; [`KeyChanges`] applies
//!   logged changes to snapshot entries outside a store, for the snapshot writer.
//! - **Formats**: the composite key, the entry encoding, the changes and the rules that apply
//!   them live in `millpond_format`; this crate re-exports what its API always had
//!   ([`ChangeOp`], [`StateKind`], [`composite_key`], [`split_composite_key`],
//!   [`COMPOSITE_PREFIX`], [`decode_entry`], [`EntryView`]).
//!
//! What it is not: a durable database. The cold tier is a cache that starts empty at every
//! open; durability is the write-ahead log's and the snapshots' job (`millpond-wal`,
//! `millpond-snapshot`).
//!
//! Limits: keys up to [`MAX_KEY_BYTES`] (32 KiB) once encoded; values (for lists and maps, the
//! whole entry of one key) up to `StoreSettings::max_value_bytes` (16 MiB by default); 65536
//! states per store; 32768 key groups.
//!
//! ```
//! use std::time::Duration;
//! use millpond_state::*;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let clock = ManualClock::new(0);
//! let store = Store::builder(dir.path()).clock(clock.clone()).open().unwrap();
//! let sessions = store
//!     .list_state(
//!         ListStateDescriptor::new("clicks", StringCodec, U64Codec)
//!             .with_ttl(TtlConfig::new(Duration::from_secs(60))),
//!     )
//!     .unwrap();
//! let user = "ada".to_string();
//! sessions.add(&user, &1).unwrap();
//! sessions.add(&user, &2).unwrap();
//! assert_eq!(sessions.get(&user).unwrap(), vec![1, 2]);
//! clock.advance_ms(60_000);
//! assert!(sessions.get(&user).unwrap().is_empty());
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod base;
mod change;
mod clock;
mod codec;
mod descriptor;
mod entry;
mod error;
mod handles;
mod hot_key;
mod key_group;
mod offline;
mod settings;
mod shard;
mod spill;
mod store;
mod ttl;

pub use base::BaseTier;
pub use change::{Change, ChangeOp, ChangeSink, NullSink};
pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(feature = "serde")]
pub use codec::SerdeCodec;
pub use codec::{
    BytesCodec, Codec, I32Codec, I64Codec, ProstCodec, StringCodec, U32Codec, U64Codec,
};
pub use descriptor::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor,
    ReducingStateDescriptor, StateKind, StateSchema, ValueStateDescriptor,
};
pub use error::{BoxError, Error, Result};
pub use handles::{AggregatingState, ListState, MapState, ReducingState, ValueState};
pub use key_group::{
    key_group, key_group_of_hash, key_hash, KeyGroupRange, DEFAULT_MAX_KEY_GROUPS,
    MAX_KEY_GROUPS_LIMIT,
};
pub use millpond_format::key::MAX_KEY_BYTES;
pub use offline::{
    composite_key, decode_entry, split_composite_key, EntryView, KeyChanges, COMPOSITE_PREFIX,
};
pub use settings::StoreSettings;
pub use store::{thread_cold_reads, Store, StoreBuilder, StoreStats};
pub use ttl::{TtlConfig, TtlUpdateType, TtlVisibility};
