//! What the store keeps for one key of one state, in memory and (encoded) in the cold tier.
//!
//! Every mutation, live or replayed, goes through [`apply_op`], so that the state a WAL replay
//! rebuilds is the state that was live.

use std::collections::BTreeMap;

use crate::change::ChangeOp;
use crate::error::{Error, Result};
use crate::ttl::is_expired;

/// Bytes of a value: small ones inside the entry (one cache miss less per access, and no
/// allocation header), larger ones on the heap.
#[derive(Clone)]
pub(crate) enum Bytes {
    Inline { len: u8, buf: [u8; INLINE_VALUE] },
    Heap(Vec<u8>),
}

/// Values up to this many bytes are kept inline. Sized so that an entry with an inline value
/// costs no more than one with a small heap value would (allocator header and rounding).
pub(crate) const INLINE_VALUE: usize = 118;

impl Bytes {
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => &buf[..*len as usize],
            Bytes::Heap(v) => v,
        }
    }

    #[inline]
    pub fn set(&mut self, bytes: &[u8]) {
        match self {
            Bytes::Heap(v) if bytes.len() > INLINE_VALUE => {
                v.clear();
                v.extend_from_slice(bytes);
            }
            _ => *self = Bytes::from(bytes),
        }
    }

    /// Heap bytes held.
    pub fn heap_size(&self) -> usize {
        match self {
            Bytes::Inline { .. } => 0,
            Bytes::Heap(v) => alloc_size(v.capacity()),
        }
    }
}

impl From<&[u8]> for Bytes {
    #[inline]
    fn from(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_VALUE {
            let mut buf = [0; INLINE_VALUE];
            buf[..bytes.len()].copy_from_slice(bytes);
            Bytes::Inline {
                len: bytes.len() as u8,
                buf,
            }
        } else {
            Bytes::Heap(bytes.to_vec())
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Bytes {}

/// One list element or map value with its own expiry (Flink keeps TTL per element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Elem {
    pub value: Vec<u8>,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Data {
    /// Value, reducing and aggregating state.
    Value {
        value: Bytes,
        expires_at_ms: u64,
    },
    List(Vec<Elem>),
    Map(BTreeMap<Vec<u8>, Elem>),
    /// Known absent: hides an older version in the cold tier.
    Tombstone,
}

/// A hot-tier entry.
#[derive(Debug)]
pub(crate) struct Entry {
    pub data: Data,
    /// Differs from the cold tier: must be written there when evicted.
    pub dirty: bool,
    /// Bytes charged to the shard's budget for this entry (key included).
    pub charged: u32,
}

/// Heap bytes that an allocation of `len` bytes costs with a typical malloc (16-byte
/// granularity, 8 bytes of header, 32 bytes minimum).
#[inline]
pub(crate) fn alloc_size(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        ((len + 8 + 15) & !15).max(32)
    }
}

/// Fixed cost of one hot entry beyond its key and payload: the LRU node (key, entry, two
/// links) as its own allocation, and the hash table's slot at its typical load.
pub(crate) const ENTRY_OVERHEAD: usize =
    ((std::mem::size_of::<(crate::hot_key::HotKey, Entry)>() + 16 + 8 + 15) & !15) + 24;

/// Cost of one element in a list or map, beyond its bytes.
const ELEM_OVERHEAD: usize = std::mem::size_of::<Elem>();
/// A BTreeMap node holds up to 11 entries; count its per-entry share.
const MAP_ENTRY_OVERHEAD: usize = std::mem::size_of::<(Vec<u8>, Elem)>() + 8;

impl Data {
    /// Bytes this payload costs in memory.
    pub fn mem_size(&self) -> usize {
        match self {
            Data::Value { value, .. } => value.heap_size(),
            Data::List(elems) => {
                alloc_size(elems.capacity() * ELEM_OVERHEAD)
                    + elems
                        .iter()
                        .map(|e| alloc_size(e.value.capacity()))
                        .sum::<usize>()
            }
            Data::Map(map) => map
                .iter()
                .map(|(k, e)| {
                    MAP_ENTRY_OVERHEAD + alloc_size(k.capacity()) + alloc_size(e.value.capacity())
                })
                .sum(),
            Data::Tombstone => 0,
        }
    }

    /// Bytes of the cold-tier encoding, for the value size limit (cheap upper bound).
    pub fn encoded_size_hint(&self) -> usize {
        match self {
            Data::Value { value, .. } => value.as_slice().len() + 13,
            Data::List(elems) => elems.iter().map(|e| e.value.len() + 13).sum::<usize>() + 9,
            Data::Map(map) => {
                map.iter()
                    .map(|(k, e)| k.len() + e.value.len() + 18)
                    .sum::<usize>()
                    + 9
            }
            Data::Tombstone => 0,
        }
    }

    /// Whether nothing in it is live at `now_ms`.
    pub fn all_expired(&self, now_ms: u64) -> bool {
        match self {
            Data::Value { expires_at_ms, .. } => is_expired(*expires_at_ms, now_ms),
            Data::List(elems) => elems.iter().all(|e| is_expired(e.expires_at_ms, now_ms)),
            Data::Map(map) => map.values().all(|e| is_expired(e.expires_at_ms, now_ms)),
            Data::Tombstone => false,
        }
    }

    /// Drops expired elements of lists and maps. Returns whether anything was dropped.
    pub fn purge_expired(&mut self, now_ms: u64) -> bool {
        match self {
            Data::List(elems) => {
                let before = elems.len();
                elems.retain(|e| !is_expired(e.expires_at_ms, now_ms));
                elems.len() != before
            }
            Data::Map(map) => {
                let before = map.len();
                map.retain(|_, e| !is_expired(e.expires_at_ms, now_ms));
                map.len() != before
            }
            _ => false,
        }
    }
}

/// Applies `op` to the entry's data (`None`: absent). The caller has checked that the op fits
/// the state's kind; an op that does not fit is ignored rather than trusted.
pub(crate) fn apply_op(slot: &mut Option<Data>, op: &ChangeOp<'_>) {
    match *op {
        ChangeOp::Put {
            value,
            expires_at_ms,
        } => match slot {
            // Reuse the allocation: read-modify-write of a value is the hottest path.
            Some(Data::Value {
                value: v,
                expires_at_ms: e,
            }) => {
                v.set(value);
                *e = expires_at_ms;
            }
            _ => {
                *slot = Some(Data::Value {
                    value: Bytes::from(value),
                    expires_at_ms,
                })
            }
        },
        ChangeOp::Clear => *slot = None,
        ChangeOp::ListAppend {
            values,
            expires_at_ms,
        } => {
            if !matches!(slot, Some(Data::List(_))) {
                *slot = Some(Data::List(Vec::with_capacity(values.len())));
            }
            if let Some(Data::List(elems)) = slot {
                elems.extend(values.iter().map(|v| Elem {
                    value: v.clone(),
                    expires_at_ms,
                }));
                if elems.is_empty() {
                    *slot = None;
                }
            }
        }
        ChangeOp::ListReplace {
            values,
            expires_at_ms,
        } => {
            *slot = if values.is_empty() {
                None
            } else {
                Some(Data::List(
                    values
                        .iter()
                        .map(|v| Elem {
                            value: v.clone(),
                            expires_at_ms,
                        })
                        .collect(),
                ))
            };
        }
        ChangeOp::MapPut {
            user_key,
            value,
            expires_at_ms,
        } => {
            if !matches!(slot, Some(Data::Map(_))) {
                *slot = Some(Data::Map(BTreeMap::new()));
            }
            if let Some(Data::Map(map)) = slot {
                match map.get_mut(user_key) {
                    Some(e) => {
                        e.value.clear();
                        e.value.extend_from_slice(value);
                        e.expires_at_ms = expires_at_ms;
                    }
                    None => {
                        map.insert(
                            user_key.to_vec(),
                            Elem {
                                value: value.to_vec(),
                                expires_at_ms,
                            },
                        );
                    }
                }
            }
        }
        ChangeOp::MapRemove { user_key } => {
            if let Some(Data::Map(map)) = slot {
                map.remove(user_key);
                if map.is_empty() {
                    *slot = None;
                }
            }
        }
        ChangeOp::Touch { expires_at_ms } => match slot {
            Some(Data::Value {
                expires_at_ms: e, ..
            }) => *e = expires_at_ms,
            Some(Data::List(elems)) => elems
                .iter_mut()
                .for_each(|e| e.expires_at_ms = expires_at_ms),
            Some(Data::Map(map)) => map
                .values_mut()
                .for_each(|e| e.expires_at_ms = expires_at_ms),
            _ => {}
        },
        ChangeOp::MapTouch {
            user_key,
            expires_at_ms,
        } => {
            if let Some(Data::Map(map)) = slot {
                if let Some(e) = map.get_mut(user_key) {
                    e.expires_at_ms = expires_at_ms;
                }
            }
        }
    }
}

// ---- cold-tier encoding ----------------------------------------------------------------------
//
// value   = tag:u8 body crc32c:u32le          (crc over tag and body)
// tag 1   = expires:u64le bytes...            (value)
// tag 2   = count:u32le { expires:u64le len:u32le bytes }*          (list)
// tag 3   = count:u32le { klen:u32le key expires:u64le vlen:u32le value }*  (map, sorted by key)
// tag 4   = (empty)                           (tombstone: hides an entry of the base snapshot)
// Documented in docs/state.md.

const TAG_VALUE: u8 = 1;
const TAG_LIST: u8 = 2;
const TAG_MAP: u8 = 3;
const TAG_TOMBSTONE: u8 = 4;

/// Encodes data for the cold tier. A tombstone is written only when the store has a base
/// snapshot whose older version it must hide; otherwise deletes remove the key.
pub(crate) fn encode(data: &Data, out: &mut Vec<u8>) {
    // Appends: the checksum covers only this entry's bytes.
    let start = out.len();
    match data {
        Data::Value {
            value,
            expires_at_ms,
        } => {
            out.push(TAG_VALUE);
            out.extend_from_slice(&expires_at_ms.to_le_bytes());
            out.extend_from_slice(value.as_slice());
        }
        Data::List(elems) => {
            out.push(TAG_LIST);
            out.extend_from_slice(&(elems.len() as u32).to_le_bytes());
            for e in elems {
                out.extend_from_slice(&e.expires_at_ms.to_le_bytes());
                out.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
                out.extend_from_slice(&e.value);
            }
        }
        Data::Map(map) => {
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
        Data::Tombstone => out.push(TAG_TOMBSTONE),
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
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

/// Decodes what [`encode`] wrote, verifying the checksum. `location` names the key for errors.
pub(crate) fn decode(bytes: &[u8], location: impl FnOnce() -> String) -> Result<Data> {
    let corrupt = |location: String| Error::Corrupt {
        what: "cold-tier entry",
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
        TAG_VALUE => r.u64().map(|expires_at_ms| Data::Value {
            expires_at_ms,
            value: Bytes::from(r.buf),
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
            r.buf.is_empty().then_some(Data::List(elems))
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
            r.buf.is_empty().then_some(Data::Map(map))
        })(),
        TAG_TOMBSTONE => r.buf.is_empty().then_some(Data::Tombstone),
        _ => None,
    };
    parsed.ok_or_else(|| corrupt(location()))
}

/// Whether `data` has no live element: `None` for a value that has expired, or an empty list.
pub(crate) fn is_empty_data(data: &Data) -> bool {
    match data {
        Data::List(e) => e.is_empty(),
        Data::Map(m) => m.is_empty(),
        Data::Tombstone => true,
        Data::Value { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(data: Data) {
        let mut buf = Vec::new();
        encode(&data, &mut buf);
        assert_eq!(decode(&buf, String::new).unwrap(), data);
        // Every single-bit flip is caught.
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode(&bad, String::new).is_err(), "flip {i} not caught");
        }
        // Every truncation is caught.
        for len in 0..buf.len() {
            assert!(decode(&buf[..len], String::new).is_err());
        }
    }

    proptest::proptest! {
        /// The decoder is fed whatever is on disk: it must answer, never panic.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode(&bytes, String::new);
        }

        /// Valid framing with a matching checksum but arbitrary body: still no panic.
        #[test]
        fn decode_checked_garbage_never_panics(
            tag in 0u8..5,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let mut buf = vec![tag];
            buf.extend_from_slice(&body);
            let crc = crc32c::crc32c(&buf);
            buf.extend_from_slice(&crc.to_le_bytes());
            let _ = decode(&buf, String::new);
        }
    }

    #[test]
    fn encodings_round_trip_and_detect_damage() {
        round_trip(Data::Tombstone);
        round_trip(Data::Value {
            value: Bytes::from(&b"hello"[..]),
            expires_at_ms: 7,
        });
        round_trip(Data::Value {
            value: Bytes::from(&[9u8; 300][..]),
            expires_at_ms: 0,
        });
        round_trip(Data::List(vec![
            Elem {
                value: b"a".to_vec(),
                expires_at_ms: 0,
            },
            Elem {
                value: vec![],
                expires_at_ms: 9,
            },
        ]));
        let mut map = BTreeMap::new();
        map.insert(
            b"k".to_vec(),
            Elem {
                value: b"v".to_vec(),
                expires_at_ms: 3,
            },
        );
        round_trip(Data::Map(map));
    }
}
