//! Snapshots of millpond state in object storage, aligned with the WAL and the Kafka
//! offsets the state reflects, incremental, and restored by reading their files in place.
//!
//! - [`Archive`]: a `file://` directory or (feature `s3`) an `s3://bucket/prefix` holding
//!   manifests and data files, and the commit protocol: a manifest is committed by a
//!   conditional create of the next sequence number; a writer claims the archive with a higher
//!   epoch, which fences older writers ([`Error::Fenced`]); [`Archive::gc`] keeps the last N
//!   snapshots and never deletes a file a snapshot being written needs; [`ArchiveSettings`]:
//!   S3 timeouts.
//! - [`SnapshotWriter`]: builds the next snapshot from its parent and the changes the WAL
//!   committed since ([`SnapshotWriter::snapshot_from_wal`]), never pausing the live store;
//!   key groups that did not change keep the parent's files.
//! - [`SnapshotBase`]: a restored snapshot as a store's base tier
//!   (`millpond_state::StoreBuilder::base`): reads served from the files in place, fetched
//!   in the background.
//! - [`rescale`]: the first snapshot of a new archive holding one key-group range of one or
//!   more instances' snapshots, for a job whose parallelism changes (split or merge).
//! - [`Manifest`] and data files ([`DataFileWriter`], [`DataFile`]): the formats, byte by
//!   byte in docs/snapshot.md.
//!
//! ```
//! use std::sync::Arc;
//! use millpond_snapshot::{Archive, RestoreSettings, SnapshotBase, SnapshotSettings, SnapshotWriter};
//! use millpond_state::{Store, StringCodec, U64Codec, ValueStateDescriptor};
//! use millpond_wal::{open_local, LocalSegmentSource, SegmentSettings, SourceOffset, WalSettings};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let counts = || ValueStateDescriptor::new("counts", StringCodec, U64Codec);
//! // A job: state changes go to a local WAL, committed with the offsets they reflect.
//! let (wal, _) = open_local(dir.path().join("wal"), 0, WalSettings::default(),
//!     SegmentSettings::default(), |_c| Ok::<(), std::io::Error>(())).unwrap();
//! let wal = Arc::new(wal);
//! let store = Store::builder(dir.path().join("a")).change_sink_arc(wal.clone()).open().unwrap();
//! let state = store.value_state(counts()).unwrap();
//! state.update(&"ada".to_string(), &3).unwrap();
//! wal.commit(&[SourceOffset { topic: "in".into(), partition: 0, next_offset: 42 }]).unwrap().wait().unwrap();
//!
//! // A snapshot, built from the WAL (the store is not paused).
//! let url = format!("file://{}", dir.path().join("snapshots").display());
//! let archive = Archive::open(&url).unwrap();
//! let mut writer = SnapshotWriter::claim(archive.clone(), 128, SnapshotSettings::default()).unwrap();
//! let mut wal_source = LocalSegmentSource::open(dir.path().join("wal"), 1).unwrap();
//! let report = writer.snapshot_from_wal(&mut wal_source, &store.schemas()).unwrap().unwrap();
//! assert_eq!(report.manifest.offsets[0].next_offset, 42);
//!
//! // Restore elsewhere: the snapshot's files are read in place, as the store's base tier.
//! let latest = archive.latest().unwrap().unwrap();
//! let base = SnapshotBase::open(&archive, &latest, dir.path().join("b/base"),
//!     &RestoreSettings::default()).unwrap();
//! let restored = Store::builder(dir.path().join("b")).base(base, latest.states.clone()).open().unwrap();
//! let state = restored.value_state(counts()).unwrap();
//! assert_eq!(state.get(&"ada".to_string()).unwrap(), Some(3));
//! // ...then replay the WAL after `latest.lsn` and seek the consumer to the last commit's offsets.
//! ```
//!
//! Limits: one entry (key, value and their length prefixes) is at most
//! [`data_file::MAX_BLOCK_BYTES`] (1 GiB); keys are at least 2 bytes.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod archive;
pub mod block_cache;
pub mod compaction;
pub mod data_file;
mod digest;
mod error;
mod fetch;
pub mod filter;
mod gc;
pub mod manifest;
mod names;
mod pending;
pub mod read_at;
mod rescale;
mod restore;
mod runs;
mod writer;

pub use archive::{Archive, ArchiveSettings, VerifyReport};
pub use block_cache::{BlockCache, BlockCacheStats};
pub use compaction::{CompactionDebt, CompactionKind, CompactionReport, CompactionSettings};
pub use data_file::DataFileIter;
pub use data_file::{DataFile, DataFileInfo, DataFileSettings, DataFileWriter, FileId, Version3};
pub use digest::FileDigest;
pub use error::{Error, Result};
pub use filter::{Filter, FilterBuilder};
pub use gc::{GcReport, MAX_GC_GRACE};
pub use manifest::{FileRef, Manifest, ManifestKind, Partition, Run, RunKind};
pub use read_at::{InMemory, LocalFile, ReadAt};
pub use rescale::{rescale, RescaleReport, RescaleSource};
pub use restore::{RestoreSettings, SnapshotBase};
pub use writer::{SnapshotBuilder, SnapshotReport, SnapshotSettings, SnapshotWriter};
