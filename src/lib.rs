//! millpond: keyed state for stream jobs on Kafka, without Flink's state backends.
//!
//! This facade composes the parts. Today it re-exports the keyed state core
//! ([`millpond_state`] as [`state`]), the write-ahead log ([`millpond_wal`] as [`wal`]) and
//! snapshots ([`millpond_snapshot`] as [`snapshot`]); the builder that composes all three is
//! not built yet. The `millpond` binary is the command-line tool (docs/cli.md).
//!
//! ```
//! use millpond::state::{Store, StringCodec, U64Codec, ValueStateDescriptor};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::builder(dir.path()).open().unwrap();
//! let counts = store.value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec)).unwrap();
//! counts.update(&"a".to_string(), &1).unwrap();
//! assert_eq!(counts.get(&"a".to_string()).unwrap(), Some(1));
//! ```

pub use millpond_snapshot as snapshot;
pub use millpond_state as state;
pub use millpond_wal as wal;
