//! The write-ahead log of millpond: every state change, in order, durable before the source
//! offsets that produced it are committed.
//!
//! - [`Wal`]: a bounded ring of batch buffers that state changes are appended to (it is a
//!   `millpond_state::ChangeSink`), and a background flusher that writes batches to a
//!   [`WalSink`]: [`LocalSegmentSink`] (the embedded default) or, with feature `pulsar`,
//!   `pulsar::PulsarSink`.
//! - [`Wal::commit`] appends a commit marker with the Kafka offsets the state reflects.
//! - [`WalReader`] reads a [`WalSource`] back and applies the log's rules (duplicates, gaps,
//!   writer epochs, commit and rollback markers), event by event; it is their one
//!   implementation. [`Committed`] yields the committed units on top of it, [`replay`] applies
//!   them with a closure, [`recover`] (or [`WalRecovery`], step by step) then continues the log
//!   with a new writer, and [`open_local`] does recovery and reopening in one call. A torn tail (a batch a crash cut
//!   short before it was acknowledged) is cut and reported ([`TornTail`]); damage to anything
//!   acknowledged, which the local sink records in a [`watermark`] beside its segments, is
//!   [`Error::Corrupt`] and is never cut.
//!
//! Record format: this crate's `proto/millpond/wal/v1/wal.proto`; batch framing: [`batch`];
//! both byte by byte, and why replay is exactly-once, in `docs/wal.md`.
//!
//! ```
//! use millpond_state::{Store, StringCodec, U64Codec, ValueStateDescriptor};
//! use millpond_wal::{open_local, SegmentSettings, SourceOffset, WalSettings};
//! let dir = tempfile::tempdir().unwrap();
//! let (wal, _) = open_local(dir.path().join("wal"), 0, WalSettings::default(),
//!     SegmentSettings::default(), |_c| Ok::<(), std::io::Error>(())).unwrap();
//! let wal = std::sync::Arc::new(wal);
//! let store = Store::builder(dir.path().join("state")).change_sink_arc(wal.clone()).open().unwrap();
//! let counts = store.value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec)).unwrap();
//! counts.update(&"a".to_string(), &1).unwrap();
//! let _durable = wal.commit(&[SourceOffset { topic: "words".into(), partition: 0, next_offset: 1 }]).unwrap();
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod batch;
mod committed;
mod error;
mod local;
mod reader;
mod record;
mod recover;
mod replay;
#[cfg(feature = "tokio")]
pub mod runtime;
mod segment;
mod settings;
mod sink;
pub mod watermark;
mod writer;

#[cfg(feature = "pulsar")]
pub mod pulsar;

pub use committed::{Committed, CommittedUnit};
pub use error::{Error, Result};
pub use local::open_local;
pub use reader::{CommitPoint, Event, ReplayOutcome, Skip, WalReader};
pub use record::{proto, OwnedChange, SourceOffset};
pub use recover::{recover, WalRecovery};
pub use replay::replay;
pub use segment::{LocalSegmentSink, LocalSegmentSource};
pub use settings::{CommitDurability, SegmentSettings, WalSettings};
pub use sink::{Batch, StoredBatch, TornTail, UpTo, WalPosition, WalSink, WalSource};
pub use writer::{CommitTicket, Durable, Wal, WalStats};
