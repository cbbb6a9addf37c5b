//! Key groups: the unit in which state is sharded, snapshotted and rescaled.
//!
//! The mapping is part of the on-disk contract (snapshots are cut by key group), so it is fixed:
//! `key_group = (xxh3_64(key) * max_key_groups) >> 64`, over the key's encoded bytes, with
//! XXH3-64 at seed 0. Like Flink's "max parallelism", `max_key_groups` cannot change without
//! rewriting the state. Instances own contiguous ranges, computed as Flink does.

use std::fmt;
use std::ops::Range;

/// Default number of key groups: Flink's lower bound for max parallelism.
pub const DEFAULT_MAX_KEY_GROUPS: u16 = 128;

/// Upper limit on the number of key groups (Flink's is the same).
pub const MAX_KEY_GROUPS_LIMIT: u16 = 32768;

/// The 64-bit hash of an encoded key that key groups are computed from.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The key group of an encoded key, in `[0, max_key_groups)`.
///
/// ```
/// use millpond_state::key_group;
/// assert!(key_group(b"user-42", 128) < 128);
/// ```
#[inline]
pub fn key_group(key: &[u8], max_key_groups: u16) -> u16 {
    key_group_of_hash(key_hash(key), max_key_groups)
}

/// The key group of a hash computed with [`key_hash`].
#[inline]
pub fn key_group_of_hash(hash: u64, max_key_groups: u16) -> u16 {
    // Multiply-shift keeps all 64 hash bits in play and avoids a division on the hot path.
    ((hash as u128 * max_key_groups as u128) >> 64) as u16
}

/// A half-open range of key groups `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyGroupRange {
    /// First key group in the range.
    pub start: u16,
    /// One past the last key group in the range.
    pub end: u16,
}

impl KeyGroupRange {
    /// `[start, end)`.
    pub fn new(start: u16, end: u16) -> Self {
        KeyGroupRange { start, end }
    }

    /// Every key group: `[0, max_key_groups)`.
    pub fn all(max_key_groups: u16) -> Self {
        KeyGroupRange::new(0, max_key_groups)
    }

    /// The range that instance `index` of `parallelism` owns, as Flink computes it
    /// (`KeyGroupRangeAssignment.computeKeyGroupRangeForOperatorIndex`).
    ///
    /// ```
    /// use millpond_state::KeyGroupRange;
    /// assert_eq!(KeyGroupRange::for_instance(128, 2, 0), KeyGroupRange::new(0, 64));
    /// assert_eq!(KeyGroupRange::for_instance(128, 2, 1), KeyGroupRange::new(64, 128));
    /// ```
    pub fn for_instance(max_key_groups: u16, parallelism: u16, index: u16) -> Self {
        let (m, p, i) = (
            max_key_groups as u32,
            parallelism.max(1) as u32,
            index as u32,
        );
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m - 1) / p + 1;
        KeyGroupRange::new(start as u16, end as u16)
    }

    /// Whether `key_group` is in the range.
    #[inline]
    pub fn contains(&self, key_group: u16) -> bool {
        self.start <= key_group && key_group < self.end
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The range as a `Range<u16>`.
    pub fn as_range(&self) -> Range<u16> {
        self.start..self.end
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known vectors (XXH3-64 from the reference implementation, through Python's `xxhash`):
    /// if these change, every snapshot ever written is cut differently.
    #[test]
    fn key_groups_are_stable() {
        let vectors: &[(&[u8], u64, u16, u16)] = &[
            (b"", 0x2d06800538d394c2, 22, 5763),
            (b"a", 0xe6c632b61e964e1f, 115, 29539),
            (b"user-42", 0x50fe4b21cf7b09cd, 40, 10367),
            (b"millpond", 0xe61541805a48addb, 115, 29450),
        ];
        for (key, hash, kg128, kg32768) in vectors {
            assert_eq!(key_hash(key), *hash, "hash of {key:?}");
            assert_eq!(key_group(key, 128), *kg128);
            assert_eq!(key_group(key, 32768), *kg32768);
        }
    }

    #[test]
    fn instance_ranges_partition_all_key_groups() {
        for max in [1u16, 7, 128, 1000, 32768] {
            for p in 1..=9u16.min(max) {
                let mut next = 0;
                for i in 0..p {
                    let r = KeyGroupRange::for_instance(max, p, i);
                    assert_eq!(r.start, next);
                    assert!(!r.is_empty());
                    next = r.end;
                }
                assert_eq!(next, max);
            }
        }
    }
}
