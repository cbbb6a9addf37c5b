//! Batch framing: how records are grouped, checksummed and numbered on the wire and on disk.
//! Byte by byte in docs/wal.md.
//!
//! ```text
//! 0   4  magic "MPWB"
//! 4   1  format version (2)
//! 5   1  flags (0)
//! 6   2  reserved (0)
//! 8   4  payload length, u32 LE
//! 12  4  record count, u32 LE
//! 16  8  first LSN, u64 LE
//! 24  8  last LSN, u64 LE (= first + count - 1)
//! 32  8  writer epoch, u64 LE (0 for a writer without one)
//! 40  4  CRC-32C of bytes 0..40 and the payload, u32 LE
//! 44  …  payload: `count` length-delimited `Record`s (varint length, protobuf bytes)
//! ```
//!
//! The writer epoch fences a zombie: a writer that took the log over writes with a higher
//! epoch, and replay ignores every batch of a lower epoch that comes after it (docs/wal.md,
//! "Writer epochs").

use crate::error::{Error, Result};

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 44;
/// Bytes of the header the checksum covers (all but the checksum itself).
const CHECKED_BYTES: usize = 40;
const MAGIC: [u8; 4] = *b"MPWB";
const VERSION: u8 = 2;
/// Largest payload a batch may declare; a larger length is corruption, not a batch.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 30;

/// The header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Bytes of records after the header.
    pub payload_len: u32,
    /// Number of records.
    pub count: u32,
    /// LSN of the first record.
    pub first_lsn: u64,
    /// LSN of the last record.
    pub last_lsn: u64,
    /// Epoch of the writer that wrote the batch.
    pub epoch: u64,
}

impl BatchHeader {
    /// Bytes of the whole framed batch.
    pub fn framed_len(&self) -> usize {
        HEADER_BYTES + self.payload_len as usize
    }
}

/// Frames `payload` (`count` records, the first numbered `first_lsn`, written by a writer of
/// `epoch`) into `out`.
pub fn encode(first_lsn: u64, count: u32, epoch: u64, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(count > 0);
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&first_lsn.to_le_bytes());
    out.extend_from_slice(&(first_lsn + (count as u64 - 1)).to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + CHECKED_BYTES]), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Fills in the header of a batch built in place: `buf` holds [`HEADER_BYTES`] reserved bytes
/// and then the payload (`count` records, the first numbered `first_lsn`). Saves copying the
/// payload into a second buffer.
pub fn seal(buf: &mut [u8], first_lsn: u64, count: u32, epoch: u64) {
    debug_assert!(count > 0 && buf.len() >= HEADER_BYTES);
    let payload_len = (buf.len() - HEADER_BYTES) as u32;
    buf[..4].copy_from_slice(&MAGIC);
    buf[4] = VERSION;
    buf[5..8].copy_from_slice(&[0, 0, 0]);
    buf[8..12].copy_from_slice(&payload_len.to_le_bytes());
    buf[12..16].copy_from_slice(&count.to_le_bytes());
    buf[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    buf[24..32].copy_from_slice(&(first_lsn + (count as u64 - 1)).to_le_bytes());
    buf[32..40].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..CHECKED_BYTES]), &buf[HEADER_BYTES..]);
    buf[CHECKED_BYTES..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// The first LSN a framed batch's header declares, unverified (`None` if `buf` is shorter
/// than a header): enough to decide whether to read a batch at all; [`decode`] verifies it.
pub fn peek_first_lsn(buf: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = buf.get(16..24)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// What [`decode`] finds at the start of a buffer.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A whole, valid batch, and its framed length.
    Batch(BatchHeader, &'a [u8]),
    /// The buffer ends inside a batch (a torn tail, if this is the end of the log).
    Incomplete,
}

fn corrupt(location: impl FnOnce() -> String, what: &'static str) -> Error {
    Error::Corrupt {
        what,
        location: location(),
    }
}

/// The header at the start of `buf`, checked (magic, version, lengths, LSNs) but not its
/// checksum, which covers the payload too: `None` if `buf` is shorter than a header and could
/// be the start of one. Lets a reader learn a batch's framed length before reading the rest;
/// [`decode`] verifies the whole batch.
///
/// ```
/// use millpond_wal::batch::{self, HEADER_BYTES};
///
/// let mut framed = Vec::new();
/// batch::encode(7, 1, 0, b"\x03\0\0\0abc", &mut framed);
/// // From the header alone: how many bytes to read for the whole batch.
/// let h = batch::header(&framed[..HEADER_BYTES], String::new).unwrap().unwrap();
/// assert_eq!((h.first_lsn, h.framed_len()), (7, framed.len()));
/// assert_eq!(batch::peek_payload_len(&framed), Some(framed.len() - HEADER_BYTES));
/// // A prefix of a header is not an error yet; a wrong magic is.
/// assert!(batch::header(&framed[..10], String::new).unwrap().is_none());
/// assert!(batch::header(b"nope", String::new).is_err());
/// ```
pub fn header(buf: &[u8], location: impl Fn() -> String) -> Result<Option<BatchHeader>> {
    if buf.len() < HEADER_BYTES {
        // A torn header may be any prefix of a valid one.
        if !MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            return Err(corrupt(location, "WAL batch magic"));
        }
        return Ok(None);
    }
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(b)
    };
    if buf[..4] != MAGIC {
        return Err(corrupt(location, "WAL batch magic"));
    }
    if buf[4] != VERSION || buf[5] != 0 || buf[6] != 0 || buf[7] != 0 {
        return Err(corrupt(location, "WAL batch version"));
    }
    let header = BatchHeader {
        payload_len: u32_at(8),
        count: u32_at(12),
        first_lsn: u64_at(16),
        last_lsn: u64_at(24),
        epoch: u64_at(32),
    };
    if header.payload_len as usize > MAX_PAYLOAD_BYTES
        || header.count == 0
        || header.first_lsn.checked_add(header.count as u64 - 1) != Some(header.last_lsn)
    {
        return Err(corrupt(location, "WAL batch header"));
    }
    Ok(Some(header))
}

/// The payload length a header declares, unverified (`None` if `buf` is shorter than a
/// header): where a damaged batch claims to end.
pub fn peek_payload_len(buf: &[u8]) -> Option<usize> {
    let bytes: [u8; 4] = buf.get(8..12)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes) as usize)
}

/// Reads one batch from the start of `buf`, verifying framing, LSN arithmetic and checksum.
///
/// A buffer that ends before the batch does is `Incomplete`; anything else that is not a valid
/// batch is [`Error::Corrupt`], with `location` for the message.
pub fn decode(buf: &[u8], location: impl Fn() -> String) -> Result<Decoded<'_>> {
    let Some(header) = header(buf, &location)? else {
        return Ok(Decoded::Incomplete);
    };
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let end = header.framed_len();
    if buf.len() < end {
        return Ok(Decoded::Incomplete);
    }
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&buf[..CHECKED_BYTES]),
        &buf[HEADER_BYTES..end],
    );
    if crc != u32_at(CHECKED_BYTES) {
        return Err(corrupt(location, "WAL batch checksum"));
    }
    Ok(Decoded::Batch(header, &buf[HEADER_BYTES..end]))
}

/// The checksum of a batch read in pieces, without holding it whole: start with its header
/// (`HEADER_BYTES` bytes that [`header`] accepted), feed the payload with `crc32c_append`, then
/// compare with [`stored_checksum`]. The same sum as [`decode`] checks.
pub(crate) fn checksum_start(header: &[u8]) -> u32 {
    crc32c::crc32c(&header[..CHECKED_BYTES])
}

/// The checksum a header (`HEADER_BYTES` bytes) carries.
pub(crate) fn stored_checksum(header: &[u8]) -> u32 {
    let b = &header[CHECKED_BYTES..HEADER_BYTES];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Splits a verified payload into its records' bytes. Framing inside a payload whose checksum
/// matched can only be wrong if the writer was; still an error, never a panic.
pub fn records(payload: &[u8], count: u32) -> impl Iterator<Item = Result<&[u8]>> {
    let mut rest = payload;
    let mut left = count;
    std::iter::from_fn(move || {
        if left == 0 {
            return (!rest.is_empty()).then(|| {
                rest = &[];
                Err(Error::Corrupt {
                    what: "WAL batch payload",
                    location: "bytes after the last record".into(),
                })
            });
        }
        left -= 1;
        let index = count - left;
        let bad = || Error::Corrupt {
            what: "WAL record framing",
            location: format!("record {index} of {count}"),
        };
        let Some((record, next)) = split_record(rest, 0) else {
            left = 0;
            rest = &[];
            return Some(Err(bad()));
        };
        rest = &rest[next..];
        Some(Ok(record))
    })
}

/// The record that starts at byte `offset` of a payload (a varint length, then that many
/// bytes) and the offset after it; `None` if the length runs past the payload. The one place
/// that knows how records sit in a payload: [`records`] and the reader both use it.
pub(crate) fn split_record(payload: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let mut cursor = payload.get(offset..)?;
    let len = prost::encoding::decode_varint(&mut cursor).ok()?;
    let record = cursor.get(..usize::try_from(len).ok()?)?;
    let start = payload.len() - cursor.len();
    Some((record, start + record.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut payload = Vec::new();
        for r in [&b"abc"[..], b"", b"hello"] {
            prost::encoding::encode_varint(r.len() as u64, &mut payload);
            payload.extend_from_slice(r);
        }
        let mut out = Vec::new();
        encode(42, 3, 9, &payload, &mut out);
        out
    }

    #[test]
    fn seal_in_place_equals_encode() {
        let payload = b"\x03abc".to_vec();
        let mut a = Vec::new();
        encode(7, 1, 5, &payload, &mut a);
        let mut b = vec![0; HEADER_BYTES];
        b.extend_from_slice(&payload);
        seal(&mut b, 7, 1, 5);
        assert_eq!(a, b);
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        let Decoded::Batch(h, payload) = decode(&buf, String::new).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!((h.first_lsn, h.last_lsn, h.count, h.epoch), (42, 44, 3, 9));
        let recs: Vec<_> = records(payload, h.count).collect::<Result<_>>().unwrap();
        assert_eq!(recs, vec![&b"abc"[..], b"", b"hello"]);
    }

    #[test]
    fn every_prefix_is_incomplete_and_every_flip_is_caught() {
        let buf = sample();
        for len in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..len], String::new), Ok(Decoded::Incomplete)),
                "prefix {len}"
            );
        }
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            // A flip in the length may make the batch look longer (incomplete); never valid.
            assert!(
                !matches!(decode(&bad, String::new), Ok(Decoded::Batch(..))),
                "flip {i}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(Decoded::Batch(h, p)) = decode(&bytes, String::new) {
                for r in records(p, h.count) { let _ = r; }
            }
        }
    }
}
