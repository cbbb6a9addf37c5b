//! The hot tier's key: short composite keys live inside the LRU node itself, saving one
//! pointer chase (a cache miss on large state) on every lookup.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

const INLINE: usize = 22;

#[derive(Clone)]
pub(crate) enum HotKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl HotKey {
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            HotKey::Inline { len, bytes } => &bytes[..*len as usize],
            HotKey::Heap(b) => b,
        }
    }

    /// Heap bytes the key costs beyond the node.
    pub fn heap_len(key_len: usize) -> usize {
        if key_len <= INLINE {
            0
        } else {
            key_len
        }
    }

    pub fn into_boxed(self) -> Box<[u8]> {
        match self {
            HotKey::Heap(b) => b,
            inline => inline.as_slice().into(),
        }
    }
}

impl From<&[u8]> for HotKey {
    #[inline]
    fn from(key: &[u8]) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            HotKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            HotKey::Heap(key.into())
        }
    }
}

impl Borrow<[u8]> for HotKey {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

// Hash and Eq must agree with `[u8]`'s, since lookups borrow the key as a slice.
impl Hash for HotKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl PartialEq for HotKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for HotKey {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn lookups_by_slice_find_inline_and_heap_keys() {
        let mut m = HashMap::new();
        let short = b"abc".as_slice();
        let long = [7u8; 40];
        m.insert(HotKey::from(short), 1);
        m.insert(HotKey::from(&long[..]), 2);
        assert_eq!(m.get(short), Some(&1));
        assert_eq!(m.get(&long[..]), Some(&2));
        assert_eq!(HotKey::from(short).into_boxed().as_ref(), short);
        assert!(std::mem::size_of::<HotKey>() <= 24);
    }
}
