//! Data files: immutable, sorted, block-compressed, checksummed runs of key → value entries.
//! Byte by byte in docs/snapshot.md ("Data files").
//!
//! ```text
//! data block 0 … data block n-1   entries [varint key len][key][varint value len][value],
//!                                  LZ4 (block format) when that is smaller, else raw
//! index                            u32 block count, then per block: u64 offset, u32 stored
//!                                  len, u32 uncompressed len, u32 entries, u8 flags, u32
//!                                  CRC-32C of the stored bytes, varint len + first key,
//!                                  varint len + last key
//! footer (64 bytes, version 2)     16-byte file id, then magic "MPDF", version, index
//!                                  offset/len/CRC, entry count, first/last key group, CRC-32C
//!                                  of footer bytes 0..60
//! ```
//!
//! Version 1 files (before the file id) end in the same 48 bytes without the id, their CRC
//! over footer bytes 0..44; they are still read. Version 3 (docs/design/incremental-snapshots.md
//! §5) puts a filter block ([`Filter`]) between the last data block and the index and a
//! 104-byte footer whose last 64 bytes are version 2's (version 3, CRC over bytes 0..100):
//! filter position and CRC, flags (bit 0: a bottom run, no tombstones or operand chains) and
//! the tombstone and operand-chain counts come first. The version sits 44 bytes before the end
//! in every version, so a reader knows which footer it has before it checks it. The writer
//! writes version 2 unless asked for version 3 ([`DataFileWriter::version_3`]).
//!
//! The writer streams blocks to any `Write`. The reader reads through any [`ReadAt`] (a local
//! file, object-store range reads, memory): footer and index once, when it opens the file
//! (two reads; the index stays in memory, checked), then one block per lookup, checked each
//! time it is read, through a shared [`BlockCache`] if given one. A file never has to fit in
//! memory.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use millpond_format::entry::HEAVY_ENTRY_BYTES;
use millpond_format::key::{key_group_of, KEY_GROUP_BYTES};

use crate::block_cache::{Block, BlockCache};
use crate::digest::{FileDigest, FileHasher};
use crate::error::{Error, Result};
use crate::filter::{Filter, FilterBuilder, DEFAULT_PROBES};
use crate::read_at::{InMemory, ReadAt};

/// Bytes of the footer at the end of a version-2 data file (what the writer writes).
pub const FOOTER_BYTES: usize = FOOTER_V1_BYTES + FILE_ID_BYTES;
/// Bytes of the footer of a version-1 data file (no file id).
pub const FOOTER_V1_BYTES: usize = 48;
/// Bytes of the footer of a version-3 data file.
pub const FOOTER_V3_BYTES: usize = 104;
/// Version 3 added the filter block, the run flags and the tombstone and operand counts.
const VERSION_3: u16 = 3;
/// Footer flag of version 3: the file belongs to a bottom run (full entries only).
const FLAG_BOTTOM: u32 = 1;
/// Entry tags a version-3 footer counts (docs/state.md, "Entry encoding"; tag 5 from
/// docs/design/incremental-snapshots.md §4.1): a value's first byte.
const ENTRY_TAG_TOMBSTONE: u8 = 4;
const ENTRY_TAG_OPERANDS: u8 = 5;
const FILE_ID_BYTES: usize = 16;
const MAGIC: [u8; 4] = *b"MPDF";
/// Version 2 added the file id.
const VERSION: u16 = 2;
const VERSION_1: u16 = 1;
/// Largest uncompressed block (and so largest single entry, framing included). Bounds what a
/// reader allocates for one block, whatever a damaged index says.
pub const MAX_BLOCK_BYTES: usize = 1 << 30;
/// LZ4 cannot expand input by more than this factor (a 1-byte match token covers at most
/// about 255 bytes per input byte), so a larger claimed ratio is corruption; bounds the
/// allocation for a compressed block by the bytes actually present.
const MAX_LZ4_RATIO: usize = 255;
/// Block flag: the stored bytes are LZ4 block-format compressed.
const FLAG_LZ4: u8 = 1;
/// Fixed bytes of an index entry before its keys.
const INDEX_FIXED_BYTES: usize = 25;
/// Smallest possible index entry: fixed part, two 1-byte varints and two 2-byte keys.
const INDEX_MIN_ENTRY_BYTES: usize = INDEX_FIXED_BYTES + 2 + 2 * 2;

/// Tunables of [`DataFileWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFileSettings {
    /// Target uncompressed size of a data block. A block is closed before the entry that
    /// would take it past this size, so blocks hold at most this much unless a single entry
    /// is larger (it then gets a block of its own). Smaller blocks make point lookups read
    /// and decompress less; larger ones compress better and shrink the index. `0` puts every
    /// entry in its own block; values above [`MAX_BLOCK_BYTES`] are treated as that.
    /// Default = 64 KiB (the same knob is `block_size` in RocksDB and
    /// `state.backend.rocksdb.block.blocksize` in Flink, 4 KiB there: our blocks are read
    /// whole from object storage and memory, not paged from disk, so larger ones pay).
    pub block_bytes: usize,
    /// LZ4-compress each block whose compressed form is smaller than its raw form (blocks
    /// that do not shrink are stored raw either way). Default = `true`.
    pub compress: bool,
}

impl Default for DataFileSettings {
    fn default() -> Self {
        DataFileSettings {
            block_bytes: 64 << 10,
            compress: true,
        }
    }
}

/// What a version-3 file records beyond version 2 ([`DataFileWriter::version_3`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version3 {
    /// Bits per key of the filter block; 0 writes no filter. Default = 10 (0.96 % false
    /// positives with 6 probes, 1.25 bytes a key in memory).
    pub filter_bits_per_key: u32,
    /// The file belongs to a bottom run: the writer refuses tombstones (entry tag 4) and
    /// operand chains (tag 5), and the reader reports one as damage. Default = `false`.
    pub bottom: bool,
}

impl Default for Version3 {
    fn default() -> Self {
        Version3 {
            filter_bits_per_key: crate::filter::DEFAULT_BITS_PER_KEY,
            bottom: false,
        }
    }
}

/// The version-3 state of a writer.
#[derive(Debug)]
struct V3Writer {
    filter: Option<FilterBuilder>,
    bottom: bool,
    tombstones: u64,
    operands: u64,
}

/// 16 bytes that name one data file, written in its footer (version 2 on) and recorded in the
/// manifest, so that a reader can tell that the file under a name is the one the manifest
/// means and not another version of it (a stale copy, a file of another snapshot).
///
/// The writer picks 128 random bits; a byte-for-byte copy (a rescale's) keeps them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId(pub [u8; 16]);

impl FileId {
    /// A new random id.
    pub fn random() -> FileId {
        FileId(rand::random::<u128>().to_be_bytes())
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", u128::from_be_bytes(self.0))
    }
}

impl std::fmt::Debug for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileId({self})")
    }
}

/// What [`DataFileWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFileInfo {
    /// Bytes of the whole file.
    pub bytes: u64,
    /// Number of entries.
    pub entries: u64,
    /// The smallest key, if any entry was written.
    pub first_key: Option<Vec<u8>>,
    /// The largest key, if any entry was written.
    pub last_key: Option<Vec<u8>>,
    /// The key groups of the first and last keys (inclusive), if any entry was written.
    pub key_groups: Option<(u16, u16)>,
    /// CRC-32C of the whole file. Not enough alone to tell two versions of a file apart
    /// (see [`digest`](Self::digest)); kept for version-1 readers' tools and as a second check.
    pub crc32c: u32,
    /// XXH3-128 of the whole file, for the manifest: what binds the manifest to this content.
    pub digest: FileDigest,
    /// The id written in the footer.
    pub file_id: FileId,
}

/// Where a block is and what the index says about it.
#[derive(Debug, Clone)]
struct BlockHandle {
    offset: u64,
    stored_len: u32,
    uncompressed_len: u32,
    entries: u32,
    flags: u8,
    crc: u32,
    first_key: Vec<u8>,
    last_key: Vec<u8>,
}

impl BlockHandle {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.uncompressed_len.to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.crc.to_le_bytes());
        put_varint(self.first_key.len() as u64, out);
        out.extend_from_slice(&self.first_key);
        put_varint(self.last_key.len() as u64, out);
        out.extend_from_slice(&self.last_key);
    }
}

/// Appends `v` as an LEB128 varint (7 bits a byte, low first, high bit = more).
fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an LEB128 varint at `*pos` in `buf`, advancing `pos`. `None` if it runs past the end
/// or past 10 bytes, or overflows 64 bits.
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        let bits = u64::from(b & 0x7f);
        // The tenth byte may only hold the top bit of a u64.
        if i == 9 && bits > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Reads a varint length and that many bytes at `*pos`, returning their range.
fn get_slice(buf: &[u8], pos: &mut usize) -> Option<Range<usize>> {
    let len = get_varint(buf, pos)?;
    let len = usize::try_from(len).ok()?;
    let end = pos.checked_add(len).filter(|&e| e <= buf.len())?;
    let range = *pos..end;
    *pos = end;
    Some(range)
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn corrupt(what: &'static str, location: String) -> Error {
    Error::Corrupt { what, location }
}

/// Writes a data file to `W`, entry by entry in strictly ascending key order.
///
/// ```
/// use millpond_snapshot::{DataFile, DataFileSettings, DataFileWriter};
///
/// let mut bytes = Vec::new();
/// let mut writer = DataFileWriter::new(&mut bytes, DataFileSettings::default());
/// writer.add(b"\x00\x07apple", b"red")?;
/// writer.add(b"\x00\x07banana", b"")?;
/// writer.add(b"\x00\x09cherry", b"dark red")?;
/// let info = writer.finish()?;
/// assert_eq!((info.entries, info.key_groups), (3, Some((7, 9))));
/// assert_eq!(info.bytes, bytes.len() as u64);
///
/// let file = DataFile::open(bytes)?;
/// assert_eq!(file.get(b"\x00\x07banana")?, Some(Vec::new()));
/// assert_eq!(file.get(b"\x00\x08durian")?, None);
/// assert_eq!(file.iter().count(), 3);
/// file.verify()?;
/// # Ok::<(), millpond_snapshot::Error>(())
/// ```
#[derive(Debug)]
pub struct DataFileWriter<W: Write> {
    out: W,
    block_bytes: usize,
    compress: bool,
    /// The block being filled, uncompressed.
    block: Vec<u8>,
    block_entries: u32,
    block_first_key: Vec<u8>,
    index: Vec<BlockHandle>,
    /// Bytes written so far.
    offset: u64,
    /// Size, CRC-32C and digest of the bytes written so far.
    hasher: FileHasher,
    file_id: FileId,
    entries: u64,
    first_key: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    /// A write failed: the output is incomplete and takes nothing more.
    failed: bool,
    /// Set: the file is written as version 3.
    v3: Option<V3Writer>,
}

impl<W: Write> DataFileWriter<W> {
    /// A writer that writes to `out`. Nothing is written until a block fills or
    /// [`finish`](Self::finish) is called; wrap a file in a `BufWriter` if blocks are small.
    pub fn new(out: W, settings: DataFileSettings) -> Self {
        DataFileWriter {
            out,
            block_bytes: settings.block_bytes.min(MAX_BLOCK_BYTES),
            compress: settings.compress,
            block: Vec::new(),
            block_entries: 0,
            block_first_key: Vec::new(),
            index: Vec::new(),
            offset: 0,
            hasher: FileHasher::new(),
            file_id: FileId::random(),
            entries: 0,
            first_key: None,
            last_key: None,
            failed: false,
            v3: None,
        }
    }

    /// The same writer writing version 3: a filter block and the run's flags and counts.
    /// Values are then entries (their first byte is the entry tag). Until every reader in use
    /// reads version 3, only tests and tools ask for it.
    pub fn version_3(self, options: Version3) -> Result<Self> {
        let filter = match options.filter_bits_per_key {
            0 => None,
            bits => Some(FilterBuilder::new(bits, DEFAULT_PROBES)?),
        };
        Ok(DataFileWriter {
            v3: Some(V3Writer {
                filter,
                bottom: options.bottom,
                tombstones: 0,
                operands: 0,
            }),
            ..self
        })
    }

    /// Records `key` as heavy in the filter block (besides every entry larger than
    /// `HEAVY_ENTRY_BYTES`, which [`add`](Self::add) records itself;
    /// design §10.2). [`Error::Invalid`] without a version-3 filter.
    pub fn mark_heavy(&mut self, key: &[u8]) -> Result<()> {
        match self.v3.as_mut().and_then(|v| v.filter.as_mut()) {
            Some(filter) => {
                filter.add_heavy(key);
                Ok(())
            }
            None => Err(Error::Invalid {
                reason: "heavy keys need a version-3 file with a filter".into(),
            }),
        }
    }

    /// The same writer with `id` in the footer instead of a random one (tests, tools that
    /// must write the same bytes twice). Two files with the same id are taken for the same
    /// file: give every new file its own.
    pub fn with_file_id(self, id: FileId) -> Self {
        DataFileWriter {
            file_id: id,
            ..self
        }
    }

    /// Adds an entry. Keys must be strictly ascending (bytewise) and at least 2 bytes (the
    /// key group); anything else is [`Error::Invalid`] and leaves the writer as it was.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_usable()?;
        if key.len() < KEY_GROUP_BYTES {
            return Err(Error::Invalid {
                reason: format!(
                    "key of {} bytes: keys start with a 2-byte key group",
                    key.len()
                ),
            });
        }
        if let Some(last) = &self.last_key {
            if key <= last.as_slice() {
                return Err(Error::Invalid {
                    reason: "keys must be added in strictly ascending order".into(),
                });
            }
        }
        let entry_len =
            varint_len(key.len() as u64) + key.len() + varint_len(value.len() as u64) + value.len();
        if entry_len > MAX_BLOCK_BYTES {
            return Err(Error::Invalid {
                reason: format!("entry of {entry_len} bytes; at most {MAX_BLOCK_BYTES}"),
            });
        }
        if let Some(v3) = &mut self.v3 {
            let tag = value.first().copied();
            let chain = tag == Some(ENTRY_TAG_TOMBSTONE) || tag == Some(ENTRY_TAG_OPERANDS);
            if v3.bottom && chain {
                return Err(Error::Invalid {
                    reason: "a bottom run holds full entries only, no tombstone or operand \
                             chain"
                        .into(),
                });
            }
            match tag {
                Some(ENTRY_TAG_TOMBSTONE) => v3.tombstones += 1,
                Some(ENTRY_TAG_OPERANDS) => v3.operands += 1,
                _ => {}
            }
            if let Some(filter) = &mut v3.filter {
                filter.add(key);
                // A store keeps no blind operand over a key this large (docs/state.md,
                // "Blind appends and puts").
                if value.len() > HEAVY_ENTRY_BYTES {
                    filter.add_heavy(key);
                }
            }
        }
        if !self.block.is_empty() && self.block.len() + entry_len > self.block_bytes {
            self.flush_block()?;
        }
        if self.block.is_empty() {
            self.block_first_key.clear();
            self.block_first_key.extend_from_slice(key);
        }
        put_varint(key.len() as u64, &mut self.block);
        self.block.extend_from_slice(key);
        put_varint(value.len() as u64, &mut self.block);
        self.block.extend_from_slice(value);
        self.block_entries += 1;
        self.entries += 1;
        if self.first_key.is_none() {
            self.first_key = Some(key.to_vec());
        }
        match &mut self.last_key {
            Some(last) => {
                last.clear();
                last.extend_from_slice(key);
            }
            None => self.last_key = Some(key.to_vec()),
        }
        Ok(())
    }

    /// Writes the last block, the index and the footer, flushes `W`, and says what was written.
    pub fn finish(self) -> Result<DataFileInfo> {
        self.finish_into().map(|(info, _)| info)
    }

    /// [`finish`](Self::finish), handing back `W` (an upload to complete, a file to sync).
    pub fn finish_into(mut self) -> Result<(DataFileInfo, W)> {
        self.check_usable()?;
        if !self.block.is_empty() {
            self.flush_block()?;
        }
        let filter_offset = self.offset;
        let mut filter_crc = 0;
        if let Some(v3) = &mut self.v3 {
            // An empty file gets no filter: nothing could match it.
            if let Some(filter) = v3.filter.take().filter(|_| self.entries > 0) {
                let bytes = filter.finish();
                filter_crc = crc32c::crc32c(&bytes);
                self.write(&bytes)?;
            }
        }
        let filter_len = self.offset - filter_offset;
        let index_offset = self.offset;
        let mut index = Vec::new();
        index.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for handle in &self.index {
            handle.encode(&mut index);
        }
        let index_crc = crc32c::crc32c(&index);
        self.write(&index)?;
        let key_groups = match (&self.first_key, &self.last_key) {
            (Some(first), Some(last)) => Some((key_group_of(first)?, key_group_of(last)?)),
            _ => None,
        };
        let (first_group, last_group) = key_groups.unwrap_or((0, 0));
        let mut footer = Vec::with_capacity(FOOTER_V3_BYTES);
        let version = match &self.v3 {
            None => VERSION,
            Some(v3) => {
                footer.extend_from_slice(&filter_offset.to_le_bytes());
                footer.extend_from_slice(&filter_len.to_le_bytes());
                footer.extend_from_slice(&filter_crc.to_le_bytes());
                let flags = if v3.bottom { FLAG_BOTTOM } else { 0 };
                footer.extend_from_slice(&flags.to_le_bytes());
                footer.extend_from_slice(&v3.tombstones.to_le_bytes());
                footer.extend_from_slice(&v3.operands.to_le_bytes());
                VERSION_3
            }
        };
        footer.extend_from_slice(&self.file_id.0);
        footer.extend_from_slice(&MAGIC);
        footer.extend_from_slice(&version.to_le_bytes());
        footer.extend_from_slice(&[0, 0]);
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
        footer.extend_from_slice(&self.entries.to_le_bytes());
        footer.extend_from_slice(&index_crc.to_le_bytes());
        footer.extend_from_slice(&first_group.to_le_bytes());
        footer.extend_from_slice(&last_group.to_le_bytes());
        footer.extend_from_slice(&[0; 4]);
        // Covers the id too: a footer is checked whole.
        let footer_crc = crc32c::crc32c(&footer);
        footer.extend_from_slice(&footer_crc.to_le_bytes());
        debug_assert!(footer.len() == FOOTER_BYTES || footer.len() == FOOTER_V3_BYTES);
        self.write(&footer)?;
        self.out.flush().map_err(|source| self.io_error(source))?;
        let info = DataFileInfo {
            bytes: self.offset,
            entries: self.entries,
            first_key: self.first_key,
            last_key: self.last_key,
            key_groups,
            crc32c: self.hasher.crc32c(),
            digest: self.hasher.digest(),
            file_id: self.file_id,
        };
        Ok((info, self.out))
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::Invalid {
                reason: "an earlier write failed: this data file is incomplete".into(),
            });
        }
        Ok(())
    }

    fn io_error(&mut self, source: std::io::Error) -> Error {
        self.failed = true;
        Error::Io {
            path: "data file being written".into(),
            source,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(source) = self.out.write_all(bytes) {
            return Err(self.io_error(source));
        }
        self.offset += bytes.len() as u64;
        self.hasher.update(bytes);
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        let raw = std::mem::take(&mut self.block);
        let compressed = if self.compress {
            Some(lz4_flex::block::compress(&raw)).filter(|c| c.len() < raw.len())
        } else {
            None
        };
        let (stored, flags) = match &compressed {
            Some(c) => (c.as_slice(), FLAG_LZ4),
            None => (raw.as_slice(), 0),
        };
        let handle = BlockHandle {
            offset: self.offset,
            // Both bounded by MAX_BLOCK_BYTES (LZ4 output of a non-expanding block is smaller).
            stored_len: stored.len() as u32,
            uncompressed_len: raw.len() as u32,
            entries: self.block_entries,
            flags,
            crc: crc32c::crc32c(stored),
            first_key: std::mem::take(&mut self.block_first_key),
            last_key: self.last_key.clone().unwrap_or_default(),
        };
        self.write(stored)?;
        self.index.push(handle);
        // Keep the allocation for the next block.
        self.block = raw;
        self.block.clear();
        self.block_entries = 0;
        Ok(())
    }
}

/// What the reader keeps of an index entry. The keys live in [`Index::keys`], first key then
/// last key, so the index costs two allocations in all rather than two per block.
#[derive(Debug, Clone)]
struct BlockMeta {
    offset: u64,
    /// Where the first key starts in [`Index::keys`]; the last key follows it.
    keys_at: usize,
    stored_len: u32,
    uncompressed_len: u32,
    entries: u32,
    crc: u32,
    /// At most `uncompressed_len`, so at most 1 GiB.
    first_len: u32,
    last_len: u32,
    flags: u8,
}

/// The parsed index, held in memory while the file is open.
#[derive(Debug)]
struct Index {
    blocks: Vec<BlockMeta>,
    keys: Vec<u8>,
}

impl Index {
    fn first_key(&self, b: &BlockMeta) -> &[u8] {
        &self.keys[b.keys_at..b.keys_at + b.first_len as usize]
    }

    fn last_key(&self, b: &BlockMeta) -> &[u8] {
        let start = b.keys_at + b.first_len as usize;
        &self.keys[start..start + b.last_len as usize]
    }
}

/// The footer's fields, once its checksum, magic, version and index position are checked.
struct Footer {
    index_offset: u64,
    index_len: u64,
    entries: u64,
    index_crc: u32,
    key_groups: (u16, u16),
    /// `None` in a version-1 file.
    file_id: Option<FileId>,
    /// Where the footer starts: where the index ends.
    at: u64,
    /// Version 3's fields; `None` in versions 1 and 2.
    v3: Option<FooterV3>,
}

/// What a version-3 footer adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FooterV3 {
    filter_offset: u64,
    filter_len: u64,
    filter_crc: u32,
    bottom: bool,
    tombstones: u64,
    operands: u64,
}

impl Footer {
    /// Where the data blocks end: the filter block in version 3, else the index.
    fn blocks_end(&self) -> u64 {
        self.v3.map_or(self.index_offset, |v| v.filter_offset)
    }
}

/// Checks and parses the footer in `tail`, the last `tail.len()` bytes (48 to 104) of a file of
/// `size` bytes. The version, 44 bytes before the end in both versions, says how long the
/// footer is; its checksum is then checked before anything else in it is trusted. A damaged
/// version fails either as an unknown version or as the other version's checksum.
fn parse_footer(tail: &[u8], size: u64) -> Result<Footer> {
    let v1 = &tail[tail.len() - FOOTER_V1_BYTES..];
    let version = u16::from_le_bytes([v1[4], v1[5]]);
    let footer_bytes = match version {
        VERSION_3 => FOOTER_V3_BYTES,
        VERSION => FOOTER_BYTES,
        VERSION_1 => FOOTER_V1_BYTES,
        _ => FOOTER_V1_BYTES.min(tail.len()),
    };
    let footer_at = size - footer_bytes.min(tail.len()) as u64;
    let at = || format!("footer at byte {footer_at}");
    if ![VERSION_1, VERSION, VERSION_3].contains(&version) {
        return Err(corrupt("data file version", at()));
    }
    if tail.len() < footer_bytes {
        return Err(corrupt(
            "data file footer",
            format!("file of {size} bytes, shorter than the {footer_bytes}-byte footer"),
        ));
    }
    let footer = &tail[tail.len() - footer_bytes..];
    // The id is the 16 bytes before version 1's layout, in versions 2 and 3.
    let id_at = footer_bytes.saturating_sub(FOOTER_V1_BYTES + FILE_ID_BYTES);
    let u16_at = |i: usize| u16::from_le_bytes([v1[i], v1[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([v1[i], v1[i + 1], v1[i + 2], v1[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&v1[i..i + 8]);
        u64::from_le_bytes(b)
    };
    // Checksum first: a damaged footer says nothing trustworthy, magic included.
    if crc32c::crc32c(&footer[..footer_bytes - 4]) != u32_at(44) {
        return Err(corrupt("data file footer checksum", at()));
    }
    if v1[..4] != MAGIC {
        return Err(corrupt("data file magic", at()));
    }
    if v1[6..8] != [0, 0] || v1[40..44] != [0; 4] {
        return Err(corrupt("data file version", at()));
    }
    let file_id = (version != VERSION_1).then(|| {
        let mut id = [0; FILE_ID_BYTES];
        id.copy_from_slice(&footer[id_at..id_at + FILE_ID_BYTES]);
        FileId(id)
    });
    let v3 = (version == VERSION_3).then(|| {
        let u64_v3 = |i: usize| u64::from_le_bytes(footer[i..i + 8].try_into().expect("8 bytes"));
        let u32_v3 = |i: usize| u32::from_le_bytes(footer[i..i + 4].try_into().expect("4 bytes"));
        (
            FooterV3 {
                filter_offset: u64_v3(0),
                filter_len: u64_v3(8),
                filter_crc: u32_v3(16),
                bottom: u32_v3(20) & FLAG_BOTTOM != 0,
                tombstones: u64_v3(24),
                operands: u64_v3(32),
            },
            u32_v3(20),
        )
    });
    if let Some((v3, flags)) = v3 {
        if flags & !FLAG_BOTTOM != 0 || (v3.bottom && (v3.tombstones > 0 || v3.operands > 0)) {
            return Err(corrupt("data file footer (flags or counts)", at()));
        }
        // The filter ends where the index starts.
        if v3.filter_offset.checked_add(v3.filter_len) != Some(u64_at(8)) {
            return Err(corrupt("data file footer (filter position)", at()));
        }
    }
    let footer = Footer {
        index_offset: u64_at(8),
        index_len: u64_at(16),
        entries: u64_at(24),
        index_crc: u32_at(32),
        key_groups: (u16_at(36), u16_at(38)),
        file_id,
        at: footer_at,
        v3: v3.map(|(v3, _)| v3),
    };
    // The index ends where the footer starts.
    if footer.index_offset.checked_add(footer.index_len) != Some(footer_at) {
        return Err(corrupt("data file footer (index position)", at()));
    }
    Ok(footer)
}

/// Exactly `len` bytes at `offset` of `source`; a failed or short read is [`Error::Io`].
fn read_source(source: &dyn ReadAt, offset: u64, len: usize) -> Result<Vec<u8>> {
    let io_error = |e| Error::Io {
        path: format!(
            "{source:?}, bytes {offset}..{}",
            offset.saturating_add(len as u64)
        ),
        source: e,
    };
    match source.read_at(offset, len) {
        Ok(bytes) if bytes.len() == len => Ok(bytes),
        // A faulty `ReadAt`; caught here so no caller indexes past what it got.
        Ok(bytes) => Err(io_error(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("read returned {} bytes", bytes.len()),
        ))),
        Err(e) => Err(io_error(e)),
    }
}

/// A data file read through a [`ReadAt`]: footer and index read and verified when opened and
/// then kept in memory ([`index_bytes`](Self::index_bytes)), each block read and verified when
/// needed, through a shared [`BlockCache`] if given one.
///
/// Cheap to clone (the index is shared) and `Send + Sync`: one open file serves any number of
/// threads.
#[derive(Clone)]
pub struct DataFile {
    inner: Arc<Inner>,
    /// The cache and this file's id in it.
    cache: Option<(Arc<BlockCache>, u64)>,
}

struct Inner {
    source: Arc<dyn ReadAt>,
    index: Index,
    entries: u64,
    key_groups: Option<(u16, u16)>,
    size: u64,
    file_id: Option<FileId>,
    version: u16,
    /// Version 3's footer fields.
    v3: Option<FooterV3>,
    /// Version 3's filter, loaded and checked at open.
    filter: Option<Filter>,
}

impl std::fmt::Debug for DataFile {
    // Not the index: it can hold hundreds of thousands of keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataFile")
            .field("source", &self.inner.source)
            .field("bytes", &self.inner.size)
            .field("blocks", &self.inner.index.blocks.len())
            .field("entries", &self.inner.entries)
            .field("key_groups", &self.inner.key_groups)
            .field("file_id", &self.inner.file_id)
            .field("cache_file_id", &self.cache.as_ref().map(|(_, id)| *id))
            .finish()
    }
}

impl DataFile {
    /// Opens a data file held in memory; the same checks as
    /// [`open_source`](Self::open_source), which this calls with an [`InMemory`] source.
    pub fn open(bytes: Vec<u8>) -> Result<DataFile> {
        DataFile::open_source(Arc::new(InMemory::new(bytes)))
    }

    /// Opens a data file through positional reads: the footer (the last 64 bytes, or 48 in a
    /// version-1 file) and then the index, two reads in all. Checks the footer, the index and their checksums and that
    /// the index describes contiguous, ordered blocks. Data blocks are read and checked as
    /// they are needed ([`get`](Self::get), [`iter`](Self::iter)) or all at once by
    /// [`verify`](Self::verify).
    ///
    /// Damage is [`Error::Corrupt`]; a failed read, or a source that yields fewer bytes than
    /// its [`size`](ReadAt::size) promised, is [`Error::Io`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use millpond_snapshot::{DataFile, DataFileSettings, DataFileWriter, LocalFile};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("0001.mpd");
    /// let out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    /// let mut writer = DataFileWriter::new(out, DataFileSettings::default());
    /// writer.add(b"\x00\x07apple", b"red")?;
    /// writer.finish()?;
    ///
    /// let file = DataFile::open_source(Arc::new(LocalFile::open(&path).unwrap()))?;
    /// assert_eq!(file.get(b"\x00\x07apple")?, Some(b"red".to_vec()));
    /// # Ok::<(), millpond_snapshot::Error>(())
    /// ```
    pub fn open_source(source: Arc<dyn ReadAt>) -> Result<DataFile> {
        let size = source.size();
        if size < FOOTER_V1_BYTES as u64 {
            return Err(corrupt(
                "data file footer",
                format!("file of {size} bytes, shorter than the {FOOTER_V1_BYTES}-byte footer"),
            ));
        }
        // Enough for any version's footer, in one read.
        let tail_len = usize::try_from(size).map_or(FOOTER_V3_BYTES, |s| s.min(FOOTER_V3_BYTES));
        let tail = read_source(&*source, size - tail_len as u64, tail_len)?;
        let footer = parse_footer(&tail, size)?;
        let footer_at = footer.at;
        let at = || format!("footer at byte {footer_at}");
        // No larger than the source, which `size` says exists; only a 32-bit target can fail.
        let index_len = usize::try_from(footer.index_len)
            .map_err(|_| corrupt("data file footer (index length)", at()))?;
        let index_offset = footer.index_offset;
        // The filter and the index are adjacent: one read for both.
        let filter_len = footer.v3.map_or(0, |v| v.filter_len);
        let filter_len = usize::try_from(filter_len)
            .map_err(|_| corrupt("data file footer (filter length)", at()))?;
        let both = read_source(&*source, footer.blocks_end(), filter_len + index_len)?;
        let (filter, index) = both.split_at(filter_len);
        let filter = match footer.v3 {
            Some(v3) if filter_len > 0 => {
                let at = format!("filter at byte {}", v3.filter_offset);
                if crc32c::crc32c(filter) != v3.filter_crc {
                    return Err(corrupt("data file filter checksum", at));
                }
                let filter = Filter::decode(filter)?;
                if filter.keys() != footer.entries {
                    return Err(corrupt("data file filter (key count)", at));
                }
                Some(filter)
            }
            _ => None,
        };
        if crc32c::crc32c(index) != footer.index_crc {
            return Err(corrupt(
                "data file index checksum",
                format!("index at byte {index_offset}"),
            ));
        }
        let index = parse_index(index, index_offset, footer.blocks_end())?;
        let block_entries: u64 = index.blocks.iter().map(|b| u64::from(b.entries)).sum();
        let key_groups = match (index.blocks.first(), index.blocks.last()) {
            (Some(first), Some(last)) => Some((
                key_group_of(index.first_key(first))?,
                key_group_of(index.last_key(last))?,
            )),
            _ => None,
        };
        if block_entries != footer.entries || key_groups.unwrap_or((0, 0)) != footer.key_groups {
            return Err(corrupt(
                "data file footer (entry count or key groups disagree with the index)",
                at(),
            ));
        }
        Ok(DataFile {
            inner: Arc::new(Inner {
                source,
                index,
                entries: footer.entries,
                key_groups,
                size,
                file_id: footer.file_id,
                version: if footer.v3.is_some() {
                    VERSION_3
                } else if footer.file_id.is_some() {
                    VERSION
                } else {
                    VERSION_1
                },
                v3: footer.v3,
                filter,
            }),
            cache: None,
        })
    }

    /// This file with [`get`](Self::get) looking blocks up in `cache` first and putting the
    /// blocks it reads there. `file_id` names this file in the cache: every file sharing a
    /// cache needs its own (a manifest's file number, say), or lookups return another file's
    /// blocks. Scans do not use the cache (see [`BlockCache`]).
    pub fn with_cache(self, cache: Arc<BlockCache>, file_id: u64) -> Self {
        DataFile {
            cache: Some((cache, file_id)),
            ..self
        }
    }

    /// The id in the footer; `None` for a version-1 file, which has none.
    pub fn file_id(&self) -> Option<FileId> {
        self.inner.file_id
    }

    /// Number of entries.
    pub fn entries(&self) -> u64 {
        self.inner.entries
    }

    /// The format version of the file: 1, 2 or 3.
    pub fn version(&self) -> u16 {
        self.inner.version
    }

    /// The filter block of a version-3 file that has one.
    pub fn filter(&self) -> Option<&Filter> {
        self.inner.filter.as_ref()
    }

    /// Whether the file belongs to a bottom run (full entries only). Files of versions 1 and 2
    /// are: a snapshot of theirs is read as one bottom run per file.
    pub fn is_bottom(&self) -> bool {
        self.inner.v3.is_none_or(|v| v.bottom)
    }

    /// Tombstones (entry tag 4) and operand chains (tag 5) the footer counts; zero before
    /// version 3.
    pub fn chain_counts(&self) -> (u64, u64) {
        self.inner.v3.map_or((0, 0), |v| (v.tombstones, v.operands))
    }

    /// Key groups of the first and last keys (inclusive); `None` for an empty file.
    pub fn key_groups(&self) -> Option<(u16, u16)> {
        self.inner.key_groups
    }

    /// The smallest key; `None` for an empty file.
    pub fn first_key(&self) -> Option<&[u8]> {
        let index = &self.inner.index;
        index.blocks.first().map(|b| index.first_key(b))
    }

    /// The largest key; `None` for an empty file.
    pub fn last_key(&self) -> Option<&[u8]> {
        let index = &self.inner.index;
        index.blocks.last().map(|b| index.last_key(b))
    }

    /// Bytes of the whole file.
    pub fn len_bytes(&self) -> u64 {
        self.inner.size
    }

    /// Number of data blocks.
    pub fn block_count(&self) -> usize {
        self.inner.index.blocks.len()
    }

    /// Approximate bytes of memory the open file holds for its index (about 48 bytes a block
    /// plus its first and last keys), whatever the size of the file.
    pub fn index_bytes(&self) -> usize {
        let index = &self.inner.index;
        std::mem::size_of::<Inner>()
            + index.blocks.capacity() * std::mem::size_of::<BlockMeta>()
            + index.keys.capacity()
    }

    /// The value of `key`, if present. Reads (or finds in the cache) and verifies the one
    /// block that may hold it; none if the index rules the key out.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.filter().is_some_and(|f| !f.may_contain(key)) {
            return Ok(None);
        }
        let index = &self.inner.index;
        // The first block whose last key is not below `key` is the only one that may hold it.
        let i = index.blocks.partition_point(|b| index.last_key(b) < key);
        let Some(meta) = index.blocks.get(i) else {
            return Ok(None);
        };
        if key < index.first_key(meta) {
            return Ok(None);
        }
        let block = match &self.cache {
            None => Arc::new(self.read_block(i)?),
            Some((cache, file_id)) => {
                // The index holds at most u32::MAX blocks.
                let cache_key = (*file_id, i as u32);
                match cache.get(cache_key) {
                    Some(block) => block,
                    None => {
                        let block = Arc::new(self.read_block(i)?);
                        cache.insert(cache_key, Arc::clone(&block));
                        block
                    }
                }
            }
        };
        Ok(block.get(key).map(<[u8]>::to_vec))
    }

    /// Every entry in key order, one block read and verified at a time. After an error the
    /// iterator ends. It holds its own handle to the file, so it may outlive `self`.
    pub fn iter(&self) -> DataFileIter {
        DataFileIter {
            file: self.clone(),
            next_block: 0,
            start_key: None,
            block: None,
            pos: 0,
            failed: false,
        }
    }

    /// The entries whose key is `start_key` or above, in key order, reading from the first
    /// block that may hold one (found in the index, so blocks before it are never read). How a
    /// key-group range of a file is read: start at the range's first key group and stop at
    /// the first key past its last.
    ///
    /// ```
    /// use millpond_format::key::{key_group_of, range_start};
    /// use millpond_snapshot::{DataFile, DataFileSettings, DataFileWriter};
    ///
    /// let mut bytes = Vec::new();
    /// let mut writer = DataFileWriter::new(&mut bytes, DataFileSettings::default());
    /// for (key, value) in [(&b"\x00\x01a"[..], b"1"), (b"\x00\x02b", b"2"), (b"\x00\x03c", b"3")] {
    ///     writer.add(key, value)?;
    /// }
    /// writer.finish()?;
    ///
    /// let file = DataFile::open(bytes)?;
    /// // Key group 2 only.
    /// let group_2: Vec<_> = file
    ///     .iter_from(&range_start(2))
    ///     .take_while(|e| e.as_ref().map_or(true, |(k, _)| key_group_of(k).is_ok_and(|kg| kg <= 2)))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(group_2, vec![(b"\x00\x02b".to_vec(), b"2".to_vec())]);
    /// # Ok::<(), millpond_snapshot::Error>(())
    /// ```
    pub fn iter_from(&self, start_key: &[u8]) -> DataFileIter {
        let index = &self.inner.index;
        DataFileIter {
            next_block: index
                .blocks
                .partition_point(|b| index.last_key(b) < start_key),
            start_key: Some(start_key.to_vec()),
            ..self.iter()
        }
    }

    /// Reads every block, checking its checksum, framing, entry count and key order; in a
    /// version-3 file also the footer's tombstone and operand-chain counts and that the filter
    /// holds every key.
    pub fn verify(&self) -> Result<()> {
        let (mut tombstones, mut operands) = (0u64, 0u64);
        for i in 0..self.block_count() {
            let block = self.read_block(i)?;
            if self.inner.v3.is_none() {
                continue;
            }
            for j in 0..block.len() {
                let (key, value) = block.entry(j);
                match value.first() {
                    Some(&ENTRY_TAG_TOMBSTONE) => tombstones += 1,
                    Some(&ENTRY_TAG_OPERANDS) => operands += 1,
                    _ => {}
                }
                if self.filter().is_some_and(|f| !f.may_contain(key)) {
                    return Err(corrupt(
                        "data file filter (a key it does not hold)",
                        format!("block {i}, entry {j}"),
                    ));
                }
            }
        }
        if (tombstones, operands) != self.chain_counts() {
            return Err(corrupt(
                "data file footer (tombstone or operand counts disagree with the blocks)",
                format!("file of {} bytes", self.inner.size),
            ));
        }
        Ok(())
    }

    /// Reads block `i` from the source, checks its checksum, decompresses and parses it.
    fn read_block(&self, i: usize) -> Result<Block> {
        let index = &self.inner.index;
        let meta = &index.blocks[i];
        // `open_source` checked that every block lies inside the file.
        let stored = read_source(&*self.inner.source, meta.offset, meta.stored_len as usize)?;
        let at = || format!("block {i} at byte {}", meta.offset);
        if crc32c::crc32c(&stored) != meta.crc {
            return Err(corrupt("data block checksum", at()));
        }
        let data = if meta.flags & FLAG_LZ4 == 0 {
            stored
        } else {
            // `open_source` bounded uncompressed_len by MAX_BLOCK_BYTES and MAX_LZ4_RATIO ×
            // stored_len.
            let mut out = vec![0; meta.uncompressed_len as usize];
            match lz4_flex::block::decompress_into(&stored, &mut out) {
                Ok(n) if n == out.len() => out,
                _ => return Err(corrupt("data block compression", at())),
            }
        };
        let entries = parse_block(&data, meta, index, i)?;
        Ok(Block::new(data, entries))
    }
}

/// The entries of a [`DataFile`] in key order, from [`DataFile::iter`] or
/// [`DataFile::iter_from`]. Reads one block at a time and holds at most one.
#[derive(Debug)]
pub struct DataFileIter {
    file: DataFile,
    next_block: usize,
    /// Where to start in the first block read (`iter_from`); taken when it is read.
    start_key: Option<Vec<u8>>,
    block: Option<Block>,
    /// The next entry of `block`.
    pos: usize,
    failed: bool,
}

impl Iterator for DataFileIter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(block) = &self.block {
                if self.pos < block.len() {
                    let (key, value) = block.entry(self.pos);
                    self.pos += 1;
                    return Some(Ok((key.to_vec(), value.to_vec())));
                }
                self.block = None;
            }
            if self.next_block >= self.file.block_count() {
                return None;
            }
            let i = self.next_block;
            self.next_block += 1;
            match self.file.read_block(i) {
                Ok(block) => {
                    self.pos = match self.start_key.take() {
                        Some(start) => block.lower_bound(&start),
                        None => 0,
                    };
                    self.block = Some(block);
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Parses and checks the index (whose checksum matched): every block contiguous from byte 0 to
/// `blocks_end` (the filter in version 3, else the index), lengths within bounds, keys at
/// least a key group long, no longer than their block, and strictly ascending within and
/// across blocks.
fn parse_index(index: &[u8], index_offset: u64, blocks_end: u64) -> Result<Index> {
    let bad = |what: &'static str, i: usize| {
        corrupt(
            what,
            format!("index entry {i} (index at byte {index_offset})"),
        )
    };
    if index.len() < 4 {
        return Err(bad("data file index (too short)", 0));
    }
    let count = u32::from_le_bytes([index[0], index[1], index[2], index[3]]) as usize;
    // The count is only trusted as far as the bytes present could hold.
    if count > (index.len() - 4) / INDEX_MIN_ENTRY_BYTES {
        return Err(bad("data file index (block count)", 0));
    }
    let mut blocks: Vec<BlockMeta> = Vec::with_capacity(count);
    // Keys take at most the index's bytes.
    let mut keys: Vec<u8> = Vec::with_capacity(index.len());
    let mut prev_last: Option<Range<usize>> = None;
    let mut pos = 4;
    let mut expected_offset = 0u64;
    for i in 0..count {
        let fixed = index
            .get(pos..pos + INDEX_FIXED_BYTES)
            .ok_or_else(|| bad("data file index (truncated entry)", i))?;
        let u32_at =
            |j: usize| u32::from_le_bytes([fixed[j], fixed[j + 1], fixed[j + 2], fixed[j + 3]]);
        let mut b = [0; 8];
        b.copy_from_slice(&fixed[..8]);
        let offset = u64::from_le_bytes(b);
        let stored_len = u32_at(8);
        let uncompressed_len = u32_at(12);
        let entries = u32_at(16);
        let flags = fixed[20];
        let crc = u32_at(21);
        pos += INDEX_FIXED_BYTES;
        let first = get_slice(index, &mut pos).ok_or_else(|| bad("data file index (key)", i))?;
        let last = get_slice(index, &mut pos).ok_or_else(|| bad("data file index (key)", i))?;
        let (first_key, last_key) = (&index[first], &index[last.clone()]);
        if offset != expected_offset {
            return Err(bad("data file index (block offset)", i));
        }
        let stored = stored_len as usize;
        let raw = uncompressed_len as usize;
        let lengths_ok = match flags {
            0 => stored == raw,
            FLAG_LZ4 => raw <= stored.saturating_mul(MAX_LZ4_RATIO),
            _ => false,
        };
        // Every entry takes at least 4 bytes (two 1-byte lengths, a 2-byte key).
        if !lengths_ok || raw > MAX_BLOCK_BYTES || entries == 0 || entries as usize > raw / 4 {
            return Err(bad("data file index (block lengths or flags)", i));
        }
        // A key lies inside its block, so both lengths fit in u32.
        if first_key.len() < KEY_GROUP_BYTES
            || last_key.len() < KEY_GROUP_BYTES
            || first_key > last_key
            || last_key.len() > raw
            || first_key.len() > raw
        {
            return Err(bad("data file index (block keys)", i));
        }
        if let Some(prev) = &prev_last {
            if &index[prev.clone()] >= first_key {
                return Err(bad("data file index (block order)", i));
            }
        }
        if entries == 1 && first_key != last_key {
            return Err(bad("data file index (block keys)", i));
        }
        expected_offset += u64::from(stored_len);
        blocks.push(BlockMeta {
            offset,
            keys_at: keys.len(),
            stored_len,
            uncompressed_len,
            entries,
            crc,
            first_len: first_key.len() as u32,
            last_len: last_key.len() as u32,
            flags,
        });
        keys.extend_from_slice(first_key);
        keys.extend_from_slice(last_key);
        prev_last = Some(last);
    }
    if pos != index.len() {
        return Err(bad("data file index (bytes after the last entry)", count));
    }
    if expected_offset != blocks_end {
        return Err(bad(
            "data file index (blocks do not end at the filter or index)",
            count,
        ));
    }
    keys.shrink_to_fit();
    Ok(Index { blocks, keys })
}

/// Splits a block (whose checksum matched) into its entries' key and value ranges, checking
/// the framing, the entry count, strict key order and that the first and last keys are the
/// ones the index names. Wrong framing under a good checksum means a faulty writer; still an
/// error, never a panic.
fn parse_block(
    data: &[u8],
    meta: &BlockMeta,
    index: &Index,
    i: usize,
) -> Result<Vec<(Range<u32>, Range<u32>)>> {
    // Bounded: `open_source` checked entries ≤ uncompressed_len / 4.
    let mut entries: Vec<(Range<u32>, Range<u32>)> = Vec::with_capacity(meta.entries as usize);
    // Ranges fit in u32: `data` is at most MAX_BLOCK_BYTES.
    let narrow = |r: Range<usize>| r.start as u32..r.end as u32;
    let widen = |r: &Range<u32>| r.start as usize..r.end as usize;
    let mut pos = 0;
    while pos < data.len() {
        let j = entries.len();
        let bad = |what| {
            corrupt(
                what,
                format!("block {i} at byte {}, entry {j}", meta.offset),
            )
        };
        if j == meta.entries as usize {
            return Err(bad("data block (more entries than the index says)"));
        }
        let key = get_slice(data, &mut pos).ok_or_else(|| bad("data block entry framing"))?;
        let value = get_slice(data, &mut pos).ok_or_else(|| bad("data block entry framing"))?;
        if key.len() < KEY_GROUP_BYTES {
            return Err(bad("data block key (shorter than a key group)"));
        }
        if let Some((prev, _)) = entries.last() {
            if data[widen(prev)] >= data[key.clone()] {
                return Err(bad("data block key order"));
            }
        }
        entries.push((narrow(key), narrow(value)));
    }
    let at = || format!("block {i} at byte {}", meta.offset);
    if entries.len() != meta.entries as usize {
        return Err(corrupt(
            "data block (fewer entries than the index says)",
            at(),
        ));
    }
    let (first, last) = (&entries[0].0, &entries[entries.len() - 1].0);
    if data[widen(first)] != *index.first_key(meta) || data[widen(last)] != *index.last_key(meta) {
        return Err(corrupt("data block keys (differ from the index)", at()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_garbage() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(v, &mut buf);
            assert_eq!(buf.len(), varint_len(v));
            let mut pos = 0;
            assert_eq!(get_varint(&buf, &mut pos), Some(v));
            assert_eq!(pos, buf.len());
            // Every proper prefix runs out of bytes.
            for cut in 0..buf.len() {
                assert_eq!(get_varint(&buf[..cut], &mut 0), None);
            }
        }
        // Eleven continuation bytes, and a tenth byte that overflows.
        assert_eq!(get_varint(&[0xff; 11], &mut 0), None);
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over, &mut 0), None);
    }

    #[test]
    fn empty_file_round_trips() {
        let mut bytes = Vec::new();
        let info = DataFileWriter::new(&mut bytes, DataFileSettings::default())
            .finish()
            .unwrap();
        assert_eq!(info.bytes as usize, FOOTER_BYTES + 4);
        assert_eq!(
            (info.entries, info.key_groups, info.first_key),
            (0, None, None)
        );
        assert_eq!(info.crc32c, crc32c::crc32c(&bytes));
        let file = DataFile::open(bytes).unwrap();
        assert_eq!((file.entries(), file.key_groups()), (0, None));
        assert_eq!(file.get(b"\x00\x00").unwrap(), None);
        assert_eq!(file.iter().count(), 0);
        file.verify().unwrap();
    }

    #[test]
    fn the_footer_carries_the_file_id_and_version_1_footers_still_open() {
        let id = FileId(*b"0123456789abcdef");
        let mut bytes = Vec::new();
        let mut w = DataFileWriter::new(&mut bytes, DataFileSettings::default()).with_file_id(id);
        w.add(b"\x00\x01k", b"v").unwrap();
        let info = w.finish().unwrap();
        assert_eq!(info.file_id, id);
        assert_eq!(
            &bytes[bytes.len() - FOOTER_BYTES..][..16],
            b"0123456789abcdef"
        );
        let file = DataFile::open(bytes.clone()).unwrap();
        assert_eq!(file.file_id(), Some(id));
        // The same file as version 1 wrote it: no id, version 1, CRC over footer bytes 0..44.
        let at = bytes.len() - FOOTER_BYTES;
        let mut v1 = bytes[..at].to_vec();
        v1.extend_from_slice(&bytes[at + 16..bytes.len() - 4]);
        let f = v1.len() - 44;
        v1[f + 4..f + 6].copy_from_slice(&VERSION_1.to_le_bytes());
        let crc = crc32c::crc32c(&v1[f..]);
        v1.extend_from_slice(&crc.to_le_bytes());
        let old = DataFile::open(v1.clone()).unwrap();
        assert_eq!(old.file_id(), None);
        assert_eq!(old.get(b"\x00\x01k").unwrap(), Some(b"v".to_vec()));
        old.verify().unwrap();
        // An unknown version is refused.
        v1[f + 4] = 4;
        assert!(matches!(
            DataFile::open(v1),
            Err(Error::Corrupt {
                what: "data file version",
                ..
            })
        ));
    }

    #[test]
    fn incompressible_blocks_are_stored_raw() {
        let mut bytes = Vec::new();
        let mut w = DataFileWriter::new(&mut bytes, DataFileSettings::default());
        // A short entry: LZ4 cannot shrink it.
        w.add(b"\x00\x01k", b"v").unwrap();
        w.finish().unwrap();
        let file = DataFile::open(bytes).unwrap();
        assert_eq!(file.inner.index.blocks[0].flags, 0);
        // A repetitive one: LZ4 does.
        let mut bytes = Vec::new();
        let mut w = DataFileWriter::new(&mut bytes, DataFileSettings::default());
        w.add(b"\x00\x01k", &[7; 4096]).unwrap();
        w.finish().unwrap();
        let file = DataFile::open(bytes).unwrap();
        assert_eq!(file.inner.index.blocks[0].flags, FLAG_LZ4);
        assert_eq!(file.get(b"\x00\x01k").unwrap(), Some(vec![7; 4096]));
    }

    /// A version-3 file of `n` keys: values are entries whose tag is `tags[i % tags.len()]`.
    fn v3_file(n: u8, tags: &[u8], options: Version3) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let settings = DataFileSettings {
            block_bytes: 40,
            compress: true,
        };
        let mut w = DataFileWriter::new(&mut bytes, settings)
            .with_file_id(FileId(*b"v3v3v3v3v3v3v3v3"))
            .version_3(options)?;
        for i in 0..n {
            let tag = tags[usize::from(i) % tags.len()];
            w.add(&[0, i / 4, b'k', i], &[tag, i, i, i, i])?;
        }
        w.finish()?;
        Ok(bytes)
    }

    #[test]
    fn version_3_round_trips_with_its_filter_flags_and_counts() {
        let bytes = v3_file(20, &[1, 4, 5, 2], Version3::default()).unwrap();
        let footer = &bytes[bytes.len() - FOOTER_V3_BYTES..];
        // The version is still 44 bytes before the end; the id follows the v3 fields.
        assert_eq!(&footer[60..62], &3u16.to_le_bytes());
        assert_eq!(&footer[40..56], b"v3v3v3v3v3v3v3v3");
        assert_eq!(&footer[56..60], b"MPDF");
        let file = DataFile::open(bytes.clone()).unwrap();
        assert_eq!(file.version(), 3);
        assert_eq!(file.file_id(), Some(FileId(*b"v3v3v3v3v3v3v3v3")));
        assert_eq!(file.chain_counts(), (5, 5));
        assert!(!file.is_bottom());
        assert_eq!(file.filter().unwrap().keys(), 20);
        for i in 0..20u8 {
            assert!(file.get(&[0, i / 4, b'k', i]).unwrap().is_some());
        }
        assert_eq!(file.get(&[0, 9, b'k', 200]).unwrap(), None);
        assert_eq!(file.iter().count(), 20);
        file.verify().unwrap();
        // Without a filter: still version 3, the filter length 0 at the index.
        let bare = v3_file(
            8,
            &[1],
            Version3 {
                filter_bits_per_key: 0,
                bottom: true,
            },
        )
        .unwrap();
        let file = DataFile::open(bare).unwrap();
        assert!(file.filter().is_none() && file.is_bottom());
        assert_eq!(
            file.get(&[0, 1, b'k', 5]).unwrap(),
            Some(vec![1, 5, 5, 5, 5])
        );
        file.verify().unwrap();
        // Older files are bottom runs without a filter.
        let old = DataFile::open(sample()).unwrap();
        assert!(old.is_bottom() && old.filter().is_none() && old.version() == 2);
    }

    #[test]
    fn version_3_empty_file_is_index_and_footer() {
        let mut bytes = Vec::new();
        let w = DataFileWriter::new(&mut bytes, DataFileSettings::default())
            .version_3(Version3::default())
            .unwrap();
        let info = w.finish().unwrap();
        assert_eq!(info.bytes as usize, 4 + FOOTER_V3_BYTES);
        let file = DataFile::open(bytes).unwrap();
        assert_eq!((file.entries(), file.version()), (0, 3));
        assert!(file.filter().is_none());
        file.verify().unwrap();
    }

    #[test]
    fn a_bottom_run_refuses_tombstones_and_operand_chains() {
        for tag in [ENTRY_TAG_TOMBSTONE, ENTRY_TAG_OPERANDS] {
            let bottom = Version3 {
                bottom: true,
                ..Version3::default()
            };
            assert!(matches!(
                v3_file(3, &[1, tag], bottom),
                Err(Error::Invalid { .. })
            ));
        }
    }

    /// Rewrites footer bytes of a version-3 file with `edit`, fixing the footer CRC so that
    /// the checks behind it are what gets tested.
    fn with_v3_footer_edited(bytes: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let at = bytes.len() - FOOTER_V3_BYTES;
        let mut out = bytes.to_vec();
        edit(&mut out[at..]);
        let crc = crc32c::crc32c(&out[at..at + 100]);
        out[at + 100..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn version_3_damage_is_corrupt() {
        let good = v3_file(20, &[1, 4, 5], Version3::default()).unwrap();
        let footer_at = good.len() - FOOTER_V3_BYTES;
        let filter_at = u64::from_le_bytes(good[footer_at..footer_at + 8].try_into().unwrap());
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut b = good.clone();
        b[filter_at as usize + 20] ^= 1;
        cases.push(("a filter bit flipped", b));
        let mut b = good.clone();
        b[footer_at + 3] ^= 1;
        cases.push(("a footer bit flipped", b));
        cases.push(("unknown flag", with_v3_footer_edited(&good, |f| f[20] = 2)));
        cases.push((
            "bottom with tombstones",
            with_v3_footer_edited(&good, |f| f[20] = 1),
        ));
        cases.push((
            "filter does not end at the index",
            with_v3_footer_edited(&good, |f| f[8] = f[8].wrapping_add(1)),
        ));
        cases.push((
            "filter moved into the blocks",
            with_v3_footer_edited(&good, |f| {
                let o = u64::from_le_bytes(f[0..8].try_into().unwrap()) - 8;
                let l = u64::from_le_bytes(f[8..16].try_into().unwrap()) + 8;
                f[0..8].copy_from_slice(&o.to_le_bytes());
                f[8..16].copy_from_slice(&l.to_le_bytes());
            }),
        ));
        for (what, bytes) in cases {
            assert!(
                matches!(DataFile::open(bytes), Err(Error::Corrupt { .. })),
                "{what}"
            );
        }
        // Counts that disagree with the blocks pass open and fail verify.
        let lied = with_v3_footer_edited(&good, |f| f[24] = f[24].wrapping_add(1));
        let file = DataFile::open(lied).unwrap();
        assert!(matches!(file.verify(), Err(Error::Corrupt { .. })));
    }

    /// A writer that fails after `left` bytes.
    struct Failing {
        left: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.left < buf.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.left -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_poisons_the_writer() {
        let settings = DataFileSettings {
            block_bytes: 8,
            compress: false,
        };
        let mut w = DataFileWriter::new(Failing { left: 12 }, settings);
        w.add(b"\x00\x01aaaa", b"1234").unwrap();
        // Each entry is 12 bytes and a block of its own: the first block fits, the second not.
        w.add(b"\x00\x01bbbb", b"1234").unwrap();
        w.add(b"\x00\x01cccc", b"1234")
            .expect_err("second block fits nowhere");
        assert!(matches!(
            w.add(b"\x00\x01dddd", b""),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(w.finish(), Err(Error::Invalid { .. })));
    }

    /// Rewrites the index of a valid file with `edit`, fixing up both checksums, so that the
    /// structural checks behind them are what gets tested.
    fn with_index_edited(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let footer_at = bytes.len() - FOOTER_BYTES;
        let mut footer = bytes[footer_at..].to_vec();
        // Offsets in the version-2 footer: the 16-byte id, then the version-1 layout.
        let index_offset = u64::from_le_bytes(footer[24..32].try_into().unwrap()) as usize;
        let mut index = bytes[index_offset..footer_at].to_vec();
        edit(&mut index);
        footer[32..40].copy_from_slice(&(index.len() as u64).to_le_bytes());
        footer[48..52].copy_from_slice(&crc32c::crc32c(&index).to_le_bytes());
        let crc = crc32c::crc32c(&footer[..60]);
        footer[60..64].copy_from_slice(&crc.to_le_bytes());
        let mut out = bytes[..index_offset].to_vec();
        out.extend_from_slice(&index);
        out.extend_from_slice(&footer);
        out
    }

    fn sample() -> Vec<u8> {
        sample_with(true)
    }

    fn sample_with(compress: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        let settings = DataFileSettings {
            block_bytes: 40,
            compress,
        };
        let mut w = DataFileWriter::new(&mut bytes, settings);
        for i in 0..20u8 {
            w.add(&[0, i / 4, b'k', i], &vec![i; usize::from(i) * 3])
                .unwrap();
        }
        w.finish().unwrap();
        bytes
    }

    proptest::proptest! {
        #[test]
        fn a_checksummed_but_mangled_index_is_caught_without_panics(
            edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..4),
        ) {
            let bytes = with_index_edited(&sample(), |index| {
                for (at, v) in edits {
                    let at = at % index.len();
                    index[at] = v;
                }
            });
            if let Ok(file) = DataFile::open(bytes) {
                let _ = file.verify();
                for e in file.iter() { let _ = e; }
                for i in 0..20u8 { let _ = file.get(&[0, i / 4, b'k', i]); }
            }
        }

        #[test]
        fn a_checksummed_but_mangled_block_is_caught_without_panics(
            edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..4),
            compress in proptest::bool::ANY,
        ) {
            let original = sample_with(compress);
            let file = DataFile::open(original.clone()).unwrap();
            let index_offset = file.inner.index.blocks.last().map_or(0, |b| b.offset + u64::from(b.stored_len));
            // Damage data blocks, then re-seal: block checksums in the index, index checksum,
            // footer checksum. Only the framing and LZ4 checks can catch this.
            let mut damaged = original[..index_offset as usize].to_vec();
            for (at, v) in &edits {
                let at = at % damaged.len();
                damaged[at] = *v;
            }
            let crcs: Vec<u32> = file
                .inner
                .index
                .blocks
                .iter()
                .map(|b| {
                    let start = b.offset as usize;
                    crc32c::crc32c(&damaged[start..start + b.stored_len as usize])
                })
                .collect();
            damaged.extend_from_slice(&original[index_offset as usize..]);
            let bytes = with_index_edited(&damaged, |index| {
                let mut pos = 4;
                for crc in crcs {
                    index[pos + 21..pos + 25].copy_from_slice(&crc.to_le_bytes());
                    pos += INDEX_FIXED_BYTES;
                    // Skip the first and last keys.
                    get_slice(index, &mut pos).unwrap();
                    get_slice(index, &mut pos).unwrap();
                }
            });
            let file = DataFile::open(bytes).unwrap();
            let _ = file.verify();
            for e in file.iter() { let _ = e; }
            for i in 0..20u8 { let _ = file.get(&[0, i / 4, b'k', i]); }
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = DataFile::open(bytes);
        }
    }
}
