//! millpond: keyed state for stream jobs on Kafka, without Flink's state backends.
//!
//! This facade composes the parts. Today it holds the keyed state core, re-exported from
//! [`millpond_state`] as [`state`]; the write-ahead log (`millpond-wal`) and snapshots
//! (`millpond-snapshot`) are not built yet.
//!
//! ```
//! use millpond::state::{Store, StringCodec, U64Codec, ValueStateDescriptor};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::builder(dir.path()).open().unwrap();
//! let counts = store.value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec)).unwrap();
//! counts.update(&"a".to_string(), &1).unwrap();
//! assert_eq!(counts.get(&"a".to_string()).unwrap(), Some(1));
//! ```

pub use millpond_state as state;
