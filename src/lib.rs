//! millpond: keyed state for stream jobs on Kafka, without Flink's state backends.
//!
//! [`Millpond`] composes the parts into one instance per job instance: keyed state
//! ([`state`]: Flink's five kinds, an LRU hot tier with TTL spilling to redb), whose every
//! change goes to a write-ahead log ([`wal`]: local segment files, or Apache Pulsar with the
//! feature `pulsar`), committed together with the Kafka offsets the state reflects, and
//! snapshots of it in object storage ([`snapshot`]: a local directory, or S3). Opening an
//! instance restores the latest snapshot, replays the WAL after it, and returns the offsets
//! to resume the consumer from: exactly-once state after any crash. docs/guide.md maps
//! Flink's concepts to these.
//!
//! ```
//! use millpond::state::{StringCodec, U64Codec, ValueStateDescriptor};
//! use millpond::wal::SourceOffset;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let opening = millpond::Millpond::builder(dir.path()).open().unwrap();
//! let counts = opening
//!     .store()
//!     .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
//!     .unwrap();
//! let job = opening.recover().unwrap();
//! counts.update(&"a".to_string(), &1).unwrap();
//! let _durable = job.commit(&[SourceOffset { topic: "words".into(), partition: 0, next_offset: 1 }]).unwrap();
//! assert_eq!(counts.get(&"a".to_string()).unwrap(), Some(1));
//! job.close().unwrap();
//! ```
//!
//! The `millpond` binary is the command-line tool for snapshots and WALs (docs/cli.md).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod error;
mod instance;
#[cfg(feature = "kafka")]
pub mod kafka;
mod lower_tiers;
pub mod metrics;
mod off_thread;
mod settings;
mod snapshotter;
mod wal_location;

pub use error::{Error, Result};
pub use instance::{Builder, Millpond, Recovering, Recovery};
pub use settings::Settings;
pub use snapshotter::CompactionStats;

pub use millpond_snapshot as snapshot;
pub use millpond_state as state;
pub use millpond_wal as wal;
