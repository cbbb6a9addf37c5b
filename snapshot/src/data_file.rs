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
//! footer (48 bytes)                magic "MPDF", version, index offset/len/CRC, entry count,
//!                                  first/last key group, CRC-32C of footer bytes 0..44
//! ```
//!
//! The writer streams blocks to any `Write`; the reader holds the whole file in memory,
//! checks footer and index when it opens it and a block's checksum each time it decodes it.

use std::io::Write;
use std::ops::Range;

use crate::error::{Error, Result};

/// Bytes of the footer at the end of every data file.
pub const FOOTER_BYTES: usize = 48;
const MAGIC: [u8; 4] = *b"MPDF";
const VERSION: u16 = 1;
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
/// Keys start with a 2-byte big-endian key group.
const KEY_GROUP_BYTES: usize = 2;

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
    /// CRC-32C of the whole file, for the manifest and for checking a download end to end.
    pub crc32c: u32,
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

fn key_group(key: &[u8]) -> u16 {
    u16::from_be_bytes([key[0], key[1]])
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
    /// CRC-32C of the bytes written so far.
    file_crc: u32,
    entries: u64,
    first_key: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    /// A write failed: the output is incomplete and takes nothing more.
    failed: bool,
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
            file_crc: 0,
            entries: 0,
            first_key: None,
            last_key: None,
            failed: false,
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
    pub fn finish(mut self) -> Result<DataFileInfo> {
        self.check_usable()?;
        if !self.block.is_empty() {
            self.flush_block()?;
        }
        let index_offset = self.offset;
        let mut index = Vec::new();
        index.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for handle in &self.index {
            handle.encode(&mut index);
        }
        let index_crc = crc32c::crc32c(&index);
        self.write(&index)?;
        let key_groups = match (&self.first_key, &self.last_key) {
            (Some(first), Some(last)) => Some((key_group(first), key_group(last))),
            _ => None,
        };
        let (first_group, last_group) = key_groups.unwrap_or((0, 0));
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        footer.extend_from_slice(&MAGIC);
        footer.extend_from_slice(&VERSION.to_le_bytes());
        footer.extend_from_slice(&[0, 0]);
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
        footer.extend_from_slice(&self.entries.to_le_bytes());
        footer.extend_from_slice(&index_crc.to_le_bytes());
        footer.extend_from_slice(&first_group.to_le_bytes());
        footer.extend_from_slice(&last_group.to_le_bytes());
        footer.extend_from_slice(&[0; 4]);
        let footer_crc = crc32c::crc32c(&footer);
        footer.extend_from_slice(&footer_crc.to_le_bytes());
        debug_assert_eq!(footer.len(), FOOTER_BYTES);
        self.write(&footer)?;
        self.out.flush().map_err(|source| self.io_error(source))?;
        Ok(DataFileInfo {
            bytes: self.offset,
            entries: self.entries,
            first_key: self.first_key,
            last_key: self.last_key,
            key_groups,
            crc32c: self.file_crc,
        })
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
        self.file_crc = crc32c::crc32c_append(self.file_crc, bytes);
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

/// A data file held in memory: footer and index verified when opened, each block verified
/// when it is read.
#[derive(Debug, Clone)]
pub struct DataFile {
    bytes: Vec<u8>,
    blocks: Vec<BlockHandle>,
    entries: u64,
    key_groups: Option<(u16, u16)>,
}

impl DataFile {
    /// Opens a data file, checking the footer, the index and their checksums and that the
    /// index describes contiguous, ordered blocks. Data blocks are checked as they are read
    /// ([`get`](Self::get), [`iter`](Self::iter)) or all at once by [`verify`](Self::verify).
    pub fn open(bytes: Vec<u8>) -> Result<DataFile> {
        let len = bytes.len();
        if len < FOOTER_BYTES {
            return Err(corrupt(
                "data file footer",
                format!("file of {len} bytes, shorter than the {FOOTER_BYTES}-byte footer"),
            ));
        }
        let footer_at = len - FOOTER_BYTES;
        let footer = &bytes[footer_at..];
        let at = || format!("footer at byte {footer_at}");
        let u16_at = |i: usize| u16::from_le_bytes([footer[i], footer[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([footer[i], footer[i + 1], footer[i + 2], footer[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&footer[i..i + 8]);
            u64::from_le_bytes(b)
        };
        // Checksum first: a damaged footer says nothing trustworthy, magic included.
        if crc32c::crc32c(&footer[..44]) != u32_at(44) {
            return Err(corrupt("data file footer checksum", at()));
        }
        if footer[..4] != MAGIC {
            return Err(corrupt("data file magic", at()));
        }
        if u16_at(4) != VERSION || footer[6..8] != [0, 0] || footer[40..44] != [0; 4] {
            return Err(corrupt("data file version", at()));
        }
        let index_offset = u64_at(8);
        let index_len = u64_at(16);
        let entries = u64_at(24);
        let index_crc = u32_at(32);
        let groups = (u16_at(36), u16_at(38));
        // The index ends where the footer starts.
        if index_offset.checked_add(index_len) != Some(footer_at as u64) {
            return Err(corrupt("data file footer (index position)", at()));
        }
        let index_range = index_offset as usize..footer_at;
        let index = &bytes[index_range.clone()];
        if crc32c::crc32c(index) != index_crc {
            return Err(corrupt(
                "data file index checksum",
                format!("index at byte {index_offset}"),
            ));
        }
        let blocks = parse_index(index, index_offset)?;
        let block_entries: u64 = blocks.iter().map(|b| u64::from(b.entries)).sum();
        let key_groups = match (blocks.first(), blocks.last()) {
            (Some(first), Some(last)) => {
                Some((key_group(&first.first_key), key_group(&last.last_key)))
            }
            _ => None,
        };
        if block_entries != entries || key_groups.unwrap_or((0, 0)) != groups {
            return Err(corrupt(
                "data file footer (entry count or key groups disagree with the index)",
                at(),
            ));
        }
        Ok(DataFile {
            bytes,
            blocks,
            entries,
            key_groups,
        })
    }

    /// Number of entries.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Key groups of the first and last keys (inclusive); `None` for an empty file.
    pub fn key_groups(&self) -> Option<(u16, u16)> {
        self.key_groups
    }

    /// The smallest key; `None` for an empty file.
    pub fn first_key(&self) -> Option<&[u8]> {
        self.blocks.first().map(|b| b.first_key.as_slice())
    }

    /// The largest key; `None` for an empty file.
    pub fn last_key(&self) -> Option<&[u8]> {
        self.blocks.last().map(|b| b.last_key.as_slice())
    }

    /// Bytes of the whole file.
    pub fn len_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The value of `key`, if present. Decodes and verifies the one block that may hold it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // The first block whose last key is not below `key` is the only one that may hold it.
        let i = self.blocks.partition_point(|b| b.last_key.as_slice() < key);
        let Some(handle) = self.blocks.get(i) else {
            return Ok(None);
        };
        if key < handle.first_key.as_slice() {
            return Ok(None);
        }
        let data = self.read_block(i)?;
        let entries = parse_block(&data, handle, i)?;
        Ok(entries
            .binary_search_by(|(k, _)| data[k.clone()].cmp(key))
            .ok()
            .map(|j| data[entries[j].1.clone()].to_vec()))
    }

    /// Every entry in key order, one block decoded and verified at a time. After an error
    /// the iterator ends.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        let mut next_block = 0;
        let mut pending = std::collections::VecDeque::new();
        let mut failed = false;
        std::iter::from_fn(move || loop {
            if failed {
                return None;
            }
            if let Some(entry) = pending.pop_front() {
                return Some(Ok(entry));
            }
            if next_block == self.blocks.len() {
                return None;
            }
            let i = next_block;
            next_block += 1;
            match self.block_entries(i) {
                Ok(entries) => pending.extend(entries),
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        })
    }

    /// Reads every block, checking its checksum, framing, entry count and key order.
    pub fn verify(&self) -> Result<()> {
        for i in 0..self.blocks.len() {
            let data = self.read_block(i)?;
            parse_block(&data, &self.blocks[i], i)?;
        }
        Ok(())
    }

    fn block_entries(&self, i: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let data = self.read_block(i)?;
        let entries = parse_block(&data, &self.blocks[i], i)?;
        Ok(entries
            .into_iter()
            .map(|(k, v)| (data[k].to_vec(), data[v].to_vec()))
            .collect())
    }

    /// The uncompressed bytes of block `i`, after checking its stored bytes' checksum.
    fn read_block(&self, i: usize) -> Result<std::borrow::Cow<'_, [u8]>> {
        let handle = &self.blocks[i];
        // `open` checked that every block lies inside the file.
        let start = handle.offset as usize;
        let stored = &self.bytes[start..start + handle.stored_len as usize];
        let at = || format!("block {i} at byte {}", handle.offset);
        if crc32c::crc32c(stored) != handle.crc {
            return Err(corrupt("data block checksum", at()));
        }
        if handle.flags & FLAG_LZ4 == 0 {
            return Ok(std::borrow::Cow::Borrowed(stored));
        }
        // `open` bounded uncompressed_len by MAX_BLOCK_BYTES and MAX_LZ4_RATIO × stored_len.
        let mut out = vec![0; handle.uncompressed_len as usize];
        match lz4_flex::block::decompress_into(stored, &mut out) {
            Ok(n) if n == out.len() => Ok(std::borrow::Cow::Owned(out)),
            _ => Err(corrupt("data block compression", at())),
        }
    }
}

/// Parses and checks the index (whose checksum matched): every block contiguous from byte 0 to
/// the index, lengths within bounds, keys at least a key group long and strictly ascending
/// within and across blocks.
fn parse_index(index: &[u8], index_offset: u64) -> Result<Vec<BlockHandle>> {
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
    let mut blocks: Vec<BlockHandle> = Vec::with_capacity(count);
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
        let (first_key, last_key) = (&index[first], &index[last]);
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
        if first_key.len() < KEY_GROUP_BYTES
            || last_key.len() < KEY_GROUP_BYTES
            || first_key > last_key
        {
            return Err(bad("data file index (block keys)", i));
        }
        if let Some(prev) = blocks.last() {
            if prev.last_key.as_slice() >= first_key {
                return Err(bad("data file index (block order)", i));
            }
        }
        if entries == 1 && first_key != last_key {
            return Err(bad("data file index (block keys)", i));
        }
        expected_offset += u64::from(stored_len);
        blocks.push(BlockHandle {
            offset,
            stored_len,
            uncompressed_len,
            entries,
            flags,
            crc,
            first_key: first_key.to_vec(),
            last_key: last_key.to_vec(),
        });
    }
    if pos != index.len() {
        return Err(bad("data file index (bytes after the last entry)", count));
    }
    if expected_offset != index_offset {
        return Err(bad(
            "data file index (blocks do not end at the index)",
            count,
        ));
    }
    Ok(blocks)
}

/// Splits a block (whose checksum matched) into its entries' key and value ranges, checking
/// the framing, the entry count, strict key order and that the first and last keys are the
/// ones the index names. Wrong framing under a good checksum means a faulty writer; still an
/// error, never a panic.
fn parse_block(
    data: &[u8],
    handle: &BlockHandle,
    i: usize,
) -> Result<Vec<(Range<usize>, Range<usize>)>> {
    // Bounded: `open` checked entries ≤ uncompressed_len / 4.
    let mut entries: Vec<(Range<usize>, Range<usize>)> =
        Vec::with_capacity(handle.entries as usize);
    let mut pos = 0;
    while pos < data.len() {
        let j = entries.len();
        let bad = |what| {
            corrupt(
                what,
                format!("block {i} at byte {}, entry {j}", handle.offset),
            )
        };
        if j == handle.entries as usize {
            return Err(bad("data block (more entries than the index says)"));
        }
        let key = get_slice(data, &mut pos).ok_or_else(|| bad("data block entry framing"))?;
        let value = get_slice(data, &mut pos).ok_or_else(|| bad("data block entry framing"))?;
        if key.len() < KEY_GROUP_BYTES {
            return Err(bad("data block key (shorter than a key group)"));
        }
        if let Some((prev, _)) = entries.last() {
            if data[prev.clone()] >= data[key.clone()] {
                return Err(bad("data block key order"));
            }
        }
        entries.push((key, value));
    }
    let at = || format!("block {i} at byte {}", handle.offset);
    if entries.len() != handle.entries as usize {
        return Err(corrupt(
            "data block (fewer entries than the index says)",
            at(),
        ));
    }
    let (first, last) = (&entries[0].0, &entries[entries.len() - 1].0);
    if data[first.clone()] != handle.first_key[..] || data[last.clone()] != handle.last_key[..] {
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
    fn incompressible_blocks_are_stored_raw() {
        let mut bytes = Vec::new();
        let mut w = DataFileWriter::new(&mut bytes, DataFileSettings::default());
        // A short entry: LZ4 cannot shrink it.
        w.add(b"\x00\x01k", b"v").unwrap();
        w.finish().unwrap();
        let file = DataFile::open(bytes).unwrap();
        assert_eq!(file.blocks[0].flags, 0);
        // A repetitive one: LZ4 does.
        let mut bytes = Vec::new();
        let mut w = DataFileWriter::new(&mut bytes, DataFileSettings::default());
        w.add(b"\x00\x01k", &[7; 4096]).unwrap();
        w.finish().unwrap();
        let file = DataFile::open(bytes).unwrap();
        assert_eq!(file.blocks[0].flags, FLAG_LZ4);
        assert_eq!(file.get(b"\x00\x01k").unwrap(), Some(vec![7; 4096]));
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
        let index_offset = u64::from_le_bytes(footer[8..16].try_into().unwrap()) as usize;
        let mut index = bytes[index_offset..footer_at].to_vec();
        edit(&mut index);
        footer[16..24].copy_from_slice(&(index.len() as u64).to_le_bytes());
        footer[32..36].copy_from_slice(&crc32c::crc32c(&index).to_le_bytes());
        let crc = crc32c::crc32c(&footer[..44]);
        footer[44..48].copy_from_slice(&crc.to_le_bytes());
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
            let index_offset = file.blocks.last().map_or(0, |b| b.offset + u64::from(b.stored_len));
            // Damage data blocks, then re-seal: block checksums in the index, index checksum,
            // footer checksum. Only the framing and LZ4 checks can catch this.
            let mut damaged = original[..index_offset as usize].to_vec();
            for (at, v) in &edits {
                let at = at % damaged.len();
                damaged[at] = *v;
            }
            let crcs: Vec<u32> = file
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
