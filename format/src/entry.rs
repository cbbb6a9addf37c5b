//! The entry: what is kept for one key of one state, decoded ([`Entry`]) and encoded (the
//! value of every entry in the cold tier, in snapshot data files and in the snapshot
//! writer's sort runs).
//!
//! ```text
//! entry   = tag:u8 body crc32c:u32le              (CRC-32C over tag and body)
//! tag 1   value      expires_at_ms:u64 bytes…
//! tag 2   list       count:u32 { expires_at_ms:u64 len:u32 bytes }*
//! tag 3   map        count:u32 { klen:u32 key expires_at_ms:u64 vlen:u32 value }*   keys ascending
//! tag 4   tombstone  (empty)
//! ```
//!
//! All integers little-endian; `expires_at_ms` is milliseconds since the Unix epoch, 0 for
//! none. Specified in docs/state.md ("Entry encoding"); this module is its only
//! implementation, and its golden-bytes test pins it.

use std::collections::BTreeMap;

use crate::error::{FormatError, Result};

const TAG_VALUE: u8 = 1;
const TAG_LIST: u8 = 2;
const TAG_MAP: u8 = 3;
const TAG_TOMBSTONE: u8 = 4;

/// Entries larger than this are *heavy*: a data file lists their keys in its filter block, and
/// a store takes the read path, not the blind one, for a list append or map put on such a
/// key (docs/state.md, "Blind appends and puts"). 64 KiB: far above a typical list or map,
/// and small enough that a key's layers, each at most this unless listed, stay far below
/// the default 16 MiB value limit.
pub const HEAVY_ENTRY_BYTES: usize = 64 << 10;

/// Values up to this many bytes are kept inline in a [`ValueBytes`]. Sized so that an entry
/// with an inline value costs no more than one with a small heap value would (allocator
/// header and rounding).
pub const INLINE_VALUE: usize = 118;

/// The bytes of a value: small ones inside the entry (one cache miss less per access, and no
/// allocation header), larger ones on the heap.
#[derive(Clone)]
pub struct ValueBytes(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE_VALUE] },
    Heap(Vec<u8>),
}

impl ValueBytes {
    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..*len as usize],
            Repr::Heap(v) => v,
        }
    }

    /// Replaces the bytes, reusing a heap allocation where it can (read-modify-write of a
    /// value is the hottest path).
    #[inline]
    pub fn set(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            Repr::Heap(v) if bytes.len() > INLINE_VALUE => {
                v.clear();
                v.extend_from_slice(bytes);
            }
            _ => *self = ValueBytes::from(bytes),
        }
    }

    /// Heap bytes held, as the allocator counts them (0 when inline).
    pub fn heap_size(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(v) => alloc_size(v.capacity()),
        }
    }
}

impl From<&[u8]> for ValueBytes {
    #[inline]
    fn from(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_VALUE {
            let mut buf = [0; INLINE_VALUE];
            buf[..bytes.len()].copy_from_slice(bytes);
            ValueBytes(Repr::Inline {
                len: bytes.len() as u8,
                buf,
            })
        } else {
            ValueBytes(Repr::Heap(bytes.to_vec()))
        }
    }
}

impl std::fmt::Debug for ValueBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

impl PartialEq for ValueBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for ValueBytes {}

/// One list element or map value with its own expiry (Flink keeps TTL per element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    /// The encoded element or map value.
    pub value: Vec<u8>,
    /// When it expires (ms since the epoch, 0 for never).
    pub expires_at_ms: u64,
}

/// The decoded entry of one key of one state.
///
/// Deliberately not `#[non_exhaustive]`: a new kind of entry must make every `match` in the
/// workspace fail to compile until it handles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Value, reducing and aggregating state.
    Value {
        /// The encoded value.
        value: ValueBytes,
        /// When it expires (ms since the epoch, 0 for never).
        expires_at_ms: u64,
    },
    /// List state: elements in order.
    List(Vec<Elem>),
    /// Map state, by user key.
    Map(BTreeMap<Vec<u8>, Elem>),
    /// Known absent: hides an older version of the key below.
    Tombstone,
}

/// Heap bytes that an allocation of `len` bytes costs with a typical malloc (16-byte
/// granularity, 8 bytes of header, 32 bytes minimum).
#[inline]
pub fn alloc_size(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        ((len + 8 + 15) & !15).max(32)
    }
}

/// Cost of one element in a list or map, beyond its bytes.
const ELEM_OVERHEAD: usize = std::mem::size_of::<Elem>();
/// A BTreeMap node holds up to 11 entries; count its per-entry share.
const MAP_ENTRY_OVERHEAD: usize = std::mem::size_of::<(Vec<u8>, Elem)>() + 8;

impl Entry {
    /// Heap bytes this entry's payload costs in memory.
    pub fn mem_size(&self) -> usize {
        match self {
            Entry::Value { value, .. } => value.heap_size(),
            Entry::List(elems) => {
                alloc_size(elems.capacity() * ELEM_OVERHEAD)
                    + elems
                        .iter()
                        .map(|e| alloc_size(e.value.capacity()))
                        .sum::<usize>()
            }
            Entry::Map(map) => map
                .iter()
                .map(|(k, e)| {
                    MAP_ENTRY_OVERHEAD + alloc_size(k.capacity()) + alloc_size(e.value.capacity())
                })
                .sum(),
            Entry::Tombstone => 0,
        }
    }

    /// Bytes of the encoding, for the value size limit (cheap upper bound).
    pub fn encoded_size_hint(&self) -> usize {
        match self {
            Entry::Value { value, .. } => value.as_slice().len() + 13,
            Entry::List(elems) => elems.iter().map(|e| e.value.len() + 13).sum::<usize>() + 9,
            Entry::Map(map) => {
                map.iter()
                    .map(|(k, e)| k.len() + e.value.len() + 18)
                    .sum::<usize>()
                    + 9
            }
            Entry::Tombstone => 0,
        }
    }

    /// Whether it holds no data: an empty list or map, or a tombstone.
    pub fn is_empty(&self) -> bool {
        match self {
            Entry::List(e) => e.is_empty(),
            Entry::Map(m) => m.is_empty(),
            Entry::Tombstone => true,
            Entry::Value { .. } => false,
        }
    }

    /// Appends the encoding to `out`. A tombstone is written only where it must hide an
    /// older version below (a store with a base snapshot); elsewhere deletes remove the key.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Appends: the checksum covers only this entry's bytes.
        let start = out.len();
        match self {
            Entry::Value {
                value,
                expires_at_ms,
            } => {
                out.push(TAG_VALUE);
                out.extend_from_slice(&expires_at_ms.to_le_bytes());
                out.extend_from_slice(value.as_slice());
            }
            Entry::List(elems) => {
                out.push(TAG_LIST);
                out.extend_from_slice(&(elems.len() as u32).to_le_bytes());
                for e in elems {
                    out.extend_from_slice(&e.expires_at_ms.to_le_bytes());
                    out.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
                    out.extend_from_slice(&e.value);
                }
            }
            Entry::Map(map) => {
                out.push(TAG_MAP);
                out.extend_from_slice(&(map.len() as u32).to_le_bytes());
                for (k, e) in map {
                    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    out.extend_from_slice(k);
                    out.extend_from_slice(&e.expires_at_ms.to_le_bytes());
                    out.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
                    out.extend_from_slice(&e.value);
                }
            }
            Entry::Tombstone => out.push(TAG_TOMBSTONE),
        }
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes what [`encode`](Self::encode) wrote, checking the checksum and the framing (no
    /// trailing bytes, no count or length past the end). Anything else is
    /// [`FormatError::Corrupt`] at `location()`.
    pub fn decode(bytes: &[u8], location: impl FnOnce() -> String) -> Result<Entry> {
        let corrupt = |location: String| FormatError::Corrupt {
            what: "entry",
            location,
        };
        if bytes.len() < 5 {
            return Err(corrupt(location()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != crc {
            return Err(corrupt(location()));
        }
        let mut r = Reader { buf: &body[1..] };
        let parsed = match body[0] {
            TAG_VALUE => r.u64().map(|expires_at_ms| Entry::Value {
                expires_at_ms,
                value: ValueBytes::from(r.buf),
            }),
            TAG_LIST => (|| {
                let n = r.u32()? as usize;
                // Never trust a count for an allocation: each element takes at least 12 bytes.
                let mut elems = Vec::with_capacity(n.min(r.buf.len() / 12));
                for _ in 0..n {
                    let expires_at_ms = r.u64()?;
                    let len = r.u32()? as usize;
                    elems.push(Elem {
                        value: r.take(len)?.to_vec(),
                        expires_at_ms,
                    });
                }
                r.buf.is_empty().then_some(Entry::List(elems))
            })(),
            TAG_MAP => (|| {
                let n = r.u32()? as usize;
                let mut map = BTreeMap::new();
                for _ in 0..n {
                    let klen = r.u32()? as usize;
                    let k = r.take(klen)?.to_vec();
                    let expires_at_ms = r.u64()?;
                    let vlen = r.u32()? as usize;
                    let value = r.take(vlen)?.to_vec();
                    map.insert(
                        k,
                        Elem {
                            value,
                            expires_at_ms,
                        },
                    );
                }
                r.buf.is_empty().then_some(Entry::Map(map))
            })(),
            TAG_TOMBSTONE => r.buf.is_empty().then_some(Entry::Tombstone),
            _ => None,
        };
        parsed.ok_or_else(|| corrupt(location()))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
}

/// A decoded entry with plain fields, for tools that show state (`millpond snapshot dump`).
/// Expiries are milliseconds since the epoch, 0 for none.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryView {
    /// Value, reducing or aggregating state.
    Value {
        /// The encoded value.
        value: Vec<u8>,
        /// Its expiry.
        expires_at_ms: u64,
    },
    /// List state: elements with their expiries, in order.
    List(Vec<(Vec<u8>, u64)>),
    /// Map state: (user key, value, expiry), by user key.
    Map(Vec<(Vec<u8>, Vec<u8>, u64)>),
    /// A delete that hides an older version.
    Tombstone,
}

impl EntryView {
    /// Decodes an encoded entry (of the cold tier or of a snapshot data file), checking its
    /// checksum and framing; a damaged one is [`FormatError::Corrupt`].
    ///
    /// ```
    /// use millpond_format::{Entry, EntryView};
    /// let mut bytes = Vec::new();
    /// Entry::Tombstone.encode(&mut bytes);
    /// assert_eq!(EntryView::decode(&bytes).unwrap(), EntryView::Tombstone);
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<EntryView> {
        Ok(EntryView::from(Entry::decode(bytes, || {
            "entry".to_owned()
        })?))
    }
}

impl From<Entry> for EntryView {
    fn from(entry: Entry) -> Self {
        match entry {
            Entry::Value {
                value,
                expires_at_ms,
            } => EntryView::Value {
                value: value.as_slice().to_vec(),
                expires_at_ms,
            },
            Entry::List(elems) => EntryView::List(
                elems
                    .into_iter()
                    .map(|e| (e.value, e.expires_at_ms))
                    .collect(),
            ),
            Entry::Map(map) => EntryView::Map(
                map.into_iter()
                    .map(|(k, e)| (k, e.value, e.expires_at_ms))
                    .collect(),
            ),
            Entry::Tombstone => EntryView::Tombstone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn elem(value: &[u8], expires_at_ms: u64) -> Elem {
        Elem {
            value: value.to_vec(),
            expires_at_ms,
        }
    }

    /// The four tags as the encoder wrote them before it moved here (state/src/entry.rs at
    /// commit 47b61ca, through `KeyChanges::resolve`), hard-coded: the bytes on disk must
    /// never change.
    fn golden() -> Vec<(Entry, Vec<u8>)> {
        vec![
            (
                Entry::Value {
                    value: ValueBytes::from(&b"hello"[..]),
                    expires_at_ms: 0x0102_0304_0506_0708,
                },
                hex("01080706050403020168656c6c6fe3e4d147"),
            ),
            (
                Entry::List(vec![elem(b"a", 9), elem(b"", 9), elem(b"bc", 0)]),
                // tag 2, count 3, then (expiry, len, bytes) per element, CRC.
                hex("02030000000900000000000000010000006109000000000000000000000000000000000000000200000062635509657a"),
            ),
            (
                Entry::Map(BTreeMap::from([
                    (b"k1".to_vec(), elem(b"v", 3)),
                    (b"k2".to_vec(), elem(b"v2", 0)),
                ])),
                // tag 3, count 2, then (klen, key, expiry, vlen, value) by key, CRC.
                hex("0302000000020000006b3103000000000000000100000076020000006b3200000000000000000200000076322f04f138"),
            ),
            (Entry::Tombstone, hex("044ec4e795")),
        ]
    }

    #[test]
    fn golden_bytes_unchanged() {
        for (entry, bytes) in golden() {
            let mut out = Vec::new();
            entry.encode(&mut out);
            assert_eq!(out, bytes, "{entry:?}");
            assert_eq!(Entry::decode(&bytes, String::new).unwrap(), entry);
        }
    }

    fn round_trip(entry: Entry) {
        let mut buf = Vec::new();
        entry.encode(&mut buf);
        assert_eq!(Entry::decode(&buf, String::new).unwrap(), entry);
        // Every single-bit flip is caught.
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                Entry::decode(&bad, String::new).is_err(),
                "flip {i} not caught"
            );
        }
        // Every truncation is caught.
        for len in 0..buf.len() {
            assert!(Entry::decode(&buf[..len], String::new).is_err());
        }
    }

    proptest::proptest! {
        /// The decoder is fed whatever is on disk: it must answer, never panic.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Entry::decode(&bytes, String::new);
            let _ = EntryView::decode(&bytes);
        }

        /// Valid framing with a matching checksum but arbitrary body: still no panic.
        #[test]
        fn decode_checked_garbage_never_panics(
            tag in 0u8..6,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let mut buf = vec![tag];
            buf.extend_from_slice(&body);
            let crc = crc32c::crc32c(&buf);
            buf.extend_from_slice(&crc.to_le_bytes());
            let _ = Entry::decode(&buf, String::new);
        }
    }

    #[test]
    fn encodings_round_trip_and_detect_damage() {
        round_trip(Entry::Tombstone);
        round_trip(Entry::Value {
            value: ValueBytes::from(&b"hello"[..]),
            expires_at_ms: 7,
        });
        round_trip(Entry::Value {
            value: ValueBytes::from(&[9u8; 300][..]),
            expires_at_ms: 0,
        });
        round_trip(Entry::List(vec![elem(b"a", 0), elem(b"", 9)]));
        round_trip(Entry::Map(BTreeMap::from([(b"k".to_vec(), elem(b"v", 3))])));
    }

    #[test]
    fn value_bytes_move_between_inline_and_heap() {
        let mut v = ValueBytes::from(&b"small"[..]);
        assert_eq!(v.heap_size(), 0);
        v.set(&[1; INLINE_VALUE + 1]);
        assert_eq!(v.as_slice(), &[1; INLINE_VALUE + 1][..]);
        assert!(v.heap_size() > INLINE_VALUE);
        v.set(b"x");
        assert_eq!(v.as_slice(), b"x");
        assert_eq!(v.heap_size(), 0);
    }

    #[test]
    fn views_show_what_was_encoded() {
        let (_, bytes) = &golden()[2];
        assert_eq!(
            EntryView::decode(bytes).unwrap(),
            EntryView::Map(vec![
                (b"k1".to_vec(), b"v".to_vec(), 3),
                (b"k2".to_vec(), b"v2".to_vec(), 0),
            ])
        );
        assert!(matches!(
            EntryView::decode(&bytes[1..]),
            Err(FormatError::Corrupt { .. })
        ));
    }
}
