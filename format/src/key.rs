//! The composite key: `key group (u16 BE) | state id (u16 BE) | encoded key`.
//!
//! It is the key of every entry in the cold tier and in snapshot data files. Big-endian and
//! key group first, so that keys sort by key group, then state, then key bytes: each key
//! group is one contiguous range of a sorted file, which is what snapshots cut and restores
//! pick. Specified in docs/state.md ("Key groups"); this module is its only implementation.

use crate::error::{FormatError, Result};

/// Bytes before the encoded key: key group, then state id.
pub const PREFIX_BYTES: usize = 4;

/// Bytes of the key group at the start of every composite key (all that a data file needs
/// to cut by key group).
pub const KEY_GROUP_BYTES: usize = 2;

/// Longest encoded key (without the prefix), in bytes. A store refuses longer keys.
pub const MAX_KEY_BYTES: usize = 32 << 10;

/// A composite key, borrowed: what [`CompositeKey::parse`] reads and
/// [`CompositeKey::encode_into`] writes.
///
/// ```
/// use millpond_format::CompositeKey;
/// let mut out = Vec::new();
/// CompositeKey::new(7, 3, b"key").encode_into(&mut out);
/// assert_eq!(out, [0, 7, 0, 3, b'k', b'e', b'y']);
/// assert_eq!(CompositeKey::parse(&out).unwrap(), CompositeKey::new(7, 3, b"key"));
/// assert!(CompositeKey::parse(&out[..3]).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompositeKey<'a> {
    /// The key's key group.
    pub key_group: u16,
    /// The id of the key's state (local to a store or a snapshot's schemas).
    pub state_id: u16,
    /// The encoded key.
    pub key: &'a [u8],
}

impl<'a> CompositeKey<'a> {
    /// The composite key of `key` of state `state_id` in `key_group`.
    #[inline]
    pub fn new(key_group: u16, state_id: u16, key: &'a [u8]) -> Self {
        CompositeKey {
            key_group,
            state_id,
            key,
        }
    }

    /// Appends the encoded composite key to `out`.
    #[inline]
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.key_group.to_be_bytes());
        out.extend_from_slice(&self.state_id.to_be_bytes());
        out.extend_from_slice(self.key);
    }

    /// Bytes that [`encode_into`](Self::encode_into) appends.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        PREFIX_BYTES + self.key.len()
    }

    /// Reads a composite key. Fewer than [`PREFIX_BYTES`] bytes is
    /// [`FormatError::Corrupt`]: such a key was not written by millpond.
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        match bytes {
            [g0, g1, s0, s1, key @ ..] => Ok(CompositeKey {
                key_group: u16::from_be_bytes([*g0, *g1]),
                state_id: u16::from_be_bytes([*s0, *s1]),
                key,
            }),
            _ => Err(too_short("composite key (shorter than its prefix)", bytes)),
        }
    }
}

/// The key group of a composite key (only its first [`KEY_GROUP_BYTES`] are read). Fewer
/// bytes is [`FormatError::Corrupt`].
#[inline]
pub fn key_group_of(bytes: &[u8]) -> Result<u16> {
    match bytes {
        [g0, g1, ..] => Ok(u16::from_be_bytes([*g0, *g1])),
        _ => Err(too_short("composite key (shorter than a key group)", bytes)),
    }
}

/// The smallest key of `key_group`: where a scan of that key group starts in a sorted file.
#[inline]
pub fn range_start(key_group: u16) -> [u8; KEY_GROUP_BYTES] {
    key_group.to_be_bytes()
}

fn too_short(what: &'static str, bytes: &[u8]) -> FormatError {
    FormatError::corrupt(what, format!("a key of {} bytes", bytes.len()))
}

/// A reusable buffer for the composite key of the hot path.
///
/// A store knows a key's state before it encodes the key, but its key group only after (the
/// key group is a hash of the encoded key): [`start`](Self::start) writes the prefix with the
/// state id and hands the buffer to the key's encoder, and
/// [`set_key_group`](Self::set_key_group) fills the key group in once it is known. One buffer
/// serves any number of keys without allocating.
///
/// ```
/// use millpond_format::{CompositeKey, CompositeKeyBuf};
/// let mut ck = CompositeKeyBuf::new();
/// ck.start(3).extend_from_slice(b"key"); // what a key codec does
/// assert_eq!(ck.key(), b"key");
/// ck.set_key_group(7);
/// assert_eq!(ck.as_composite_key(), CompositeKey::new(7, 3, b"key"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompositeKeyBuf {
    buf: Vec<u8>,
}

impl CompositeKeyBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer with room for a composite key of `key_len` encoded bytes.
    pub fn with_key_capacity(key_len: usize) -> Self {
        CompositeKeyBuf {
            buf: Vec::with_capacity(PREFIX_BYTES + key_len),
        }
    }

    /// Starts a new composite key of state `state_id` (key group 0 until
    /// [`set_key_group`](Self::set_key_group)) and returns the buffer, for the key's encoder
    /// to append the encoded key to. An encoder must only append:
    /// [`is_complete`](Self::is_complete) tells whether the prefix survived it.
    #[inline]
    pub fn start(&mut self, state_id: u16) -> &mut Vec<u8> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&state_id.to_be_bytes());
        &mut self.buf
    }

    /// Whether the buffer holds at least a whole prefix.
    #[inline]
    pub fn is_complete(&self) -> bool {
        self.buf.len() >= PREFIX_BYTES
    }

    /// Fills in the key group (nothing if the prefix is not complete).
    #[inline]
    pub fn set_key_group(&mut self, key_group: u16) {
        if let Some(kg) = self.buf.get_mut(..KEY_GROUP_BYTES) {
            kg.copy_from_slice(&key_group.to_be_bytes());
        }
    }

    /// The encoded key (empty if the prefix is not complete).
    #[inline]
    pub fn key(&self) -> &[u8] {
        self.buf.get(PREFIX_BYTES..).unwrap_or_default()
    }

    /// The whole composite key, as stored.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The composite key, borrowed (all fields 0 or empty if the prefix is not complete).
    #[inline]
    pub fn as_composite_key(&self) -> CompositeKey<'_> {
        CompositeKey::parse(&self.buf).unwrap_or(CompositeKey::new(0, 0, &[]))
    }

    /// Bytes the buffer holds without allocating.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes written by the composite key builder before it moved here (state/src/offline.rs
    /// `composite_key(0x0102, 0x0304, b"key")` at commit 47b61ca).
    const GOLDEN: [u8; 7] = [0x01, 0x02, 0x03, 0x04, b'k', b'e', b'y'];

    #[test]
    fn golden_bytes_unchanged() {
        let mut out = vec![0xff];
        CompositeKey::new(0x0102, 0x0304, b"key").encode_into(&mut out);
        assert_eq!(out[1..], GOLDEN);
        let mut buf = CompositeKeyBuf::new();
        buf.start(0x0304).extend_from_slice(b"key");
        buf.set_key_group(0x0102);
        assert_eq!(buf.as_bytes(), GOLDEN);
    }

    #[test]
    fn parse_reads_back_and_rejects_short_keys() {
        let ck = CompositeKey::parse(&GOLDEN).unwrap();
        assert_eq!(ck, CompositeKey::new(0x0102, 0x0304, b"key"));
        assert_eq!(
            CompositeKey::parse(&GOLDEN[..4]).unwrap(),
            CompositeKey::new(0x0102, 0x0304, b"")
        );
        for len in 0..PREFIX_BYTES {
            assert!(matches!(
                CompositeKey::parse(&GOLDEN[..len]),
                Err(FormatError::Corrupt { .. })
            ));
        }
        assert_eq!(key_group_of(&GOLDEN[..2]).unwrap(), 0x0102);
        assert!(key_group_of(&GOLDEN[..1]).is_err());
        assert!(key_group_of(&[]).is_err());
    }

    #[test]
    fn range_start_sorts_before_every_key_of_its_group() {
        let mut ck = Vec::new();
        CompositeKey::new(5, 0, b"").encode_into(&mut ck);
        assert!(range_start(5)[..] <= ck[..]);
        assert!(range_start(6)[..] > ck[..]);
        assert_eq!(key_group_of(&range_start(5)).unwrap(), 5);
    }

    #[test]
    fn a_buffer_is_reused_and_survives_a_truncating_encoder() {
        let mut buf = CompositeKeyBuf::with_key_capacity(8);
        buf.start(1).extend_from_slice(b"a long key");
        buf.set_key_group(9);
        buf.start(2).extend_from_slice(b"k");
        assert_eq!(buf.as_composite_key(), CompositeKey::new(0, 2, b"k"));
        buf.start(2).clear();
        assert!(!buf.is_complete());
        buf.set_key_group(1);
        assert_eq!(buf.key(), b"");
        assert_eq!(buf.as_composite_key(), CompositeKey::new(0, 0, b""));
    }

    proptest::proptest! {
        #[test]
        fn encode_parse_round_trip(kg: u16, sid: u16, key in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut out = Vec::new();
            CompositeKey::new(kg, sid, &key).encode_into(&mut out);
            proptest::prop_assert_eq!(CompositeKey::parse(&out).unwrap(), CompositeKey::new(kg, sid, &key));
            proptest::prop_assert_eq!(key_group_of(&out).unwrap(), kg);
        }

        /// Composite keys sort by key group, then state id, then key bytes.
        #[test]
        fn byte_order_is_field_order(
            a in (proptest::num::u16::ANY, proptest::num::u16::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
            b in (proptest::num::u16::ANY, proptest::num::u16::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
        ) {
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            CompositeKey::new(a.0, a.1, &a.2).encode_into(&mut ea);
            CompositeKey::new(b.0, b.1, &b.2).encode_into(&mut eb);
            proptest::prop_assert_eq!(ea.cmp(&eb), a.cmp(&b));
        }
    }
}
