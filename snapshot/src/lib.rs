//! Snapshots of millpond state to object storage. Only the file format exists so far.
//!
//! What exists now: **data files** ([`DataFileWriter`], [`DataFile`]): immutable, sorted runs
//! of key → value entries (keys are millpond composite keys, a 2-byte big-endian key group
//! first, so a file covers a key-group range), cut into LZ4-compressed blocks with CRC-32C
//! checksums, an index and a footer. Byte by byte in docs/snapshot.md. A reader holds the
//! whole file in memory.
//!
//! What does not exist yet (issue 4): the manifest that names a snapshot's data files and
//! the source offsets it covers, the object-store upload and the commit protocol that makes
//! a snapshot visible exactly once, restore, and garbage collection of unreferenced files.
//! Nothing here talks to object storage.
//!
//! Limits: one entry (key, value and their length prefixes) is at most
//! [`data_file::MAX_BLOCK_BYTES`] (1 GiB); keys are at least 2 bytes.

pub mod data_file;
mod error;

pub use data_file::{DataFile, DataFileInfo, DataFileSettings, DataFileWriter};
pub use error::{Error, Result};
