//! Snapshots of millpond state in object storage, aligned with the WAL and the Kafka
//! offsets the state reflects, incremental, and restored by reading their files in place.
//!
//! - [`Archive`]: a `file://` directory or an `s3://bucket/prefix` holding manifests and data
//!   files, and the commit protocol: a manifest is committed by a conditional create of the
//!   next sequence number; a writer claims the archive with a higher epoch, which fences
//!   older writers ([`Error::Fenced`]); [`Archive::gc`] keeps the last N snapshots.
//! - [`SnapshotWriter`]: builds the next snapshot from its parent and the changes the WAL
//!   committed since ([`SnapshotWriter::snapshot_from_wal`]), never pausing the live store;
//!   key groups that did not change keep the parent's files.
//! - [`SnapshotBase`]: a restored snapshot as a store's base tier
//!   (`millpond_state::StoreBuilder::base`): reads served from the files in place, fetched
//!   in the background.
//! - [`Manifest`] and data files ([`DataFileWriter`], [`DataFile`]): the formats, byte by
//!   byte in docs/snapshot.md.
//!
//! Limits: one entry (key, value and their length prefixes) is at most
//! [`data_file::MAX_BLOCK_BYTES`] (1 GiB); keys are at least 2 bytes.

mod archive;
pub mod block_cache;
pub mod data_file;
mod error;
mod fetch;
pub mod manifest;
pub mod read_at;
mod restore;
mod writer;

pub use archive::{Archive, GcReport, VerifyReport};
pub use block_cache::{BlockCache, BlockCacheStats};
pub use data_file::DataFileIter;
pub use data_file::{DataFile, DataFileInfo, DataFileSettings, DataFileWriter};
pub use error::{Error, Result};
pub use manifest::{FileRef, Manifest, ManifestKind};
pub use read_at::{InMemory, LocalFile, ReadAt};
pub use restore::{RestoreSettings, SnapshotBase};
pub use writer::{SnapshotBuilder, SnapshotReport, SnapshotSettings, SnapshotWriter};
