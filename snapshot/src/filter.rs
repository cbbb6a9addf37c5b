//! The filter block of a version-3 data file (docs/design/incremental-snapshots.md §5.2): a
//! blocked Bloom filter over the file's composite keys, so that a read skips a run without
//! its key after one cache line, then the file's heavy keys (keys whose entry in the file is
//! larger than `HEAVY_ENTRY_BYTES`, 64 KiB: a store reads such a key before a list append or
//! map put instead of keeping the write as an operand; docs/state.md, "Blind appends and
//! puts").
//!
//! ```text
//! kind:u8 (1) probes:u8 (1..=16) reserved:u16 blocks:u32le (>= 1) keys:u64le
//! blocks × 64 bytes (each 512 bits as 8 u64le words)
//! heavy:u32le { varint length, composite key }*   strictly ascending
//! ```
//!
//! The block's CRC is in the footer; this module checks the structure.

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

/// Filter kind 1: blocked Bloom, 512-bit blocks.
const KIND_BLOCKED_BLOOM: u8 = 1;
const BLOCK_BYTES: usize = 64;
const BLOCK_BITS: u32 = 512;
const HEADER_BYTES: usize = 16;
/// Probes per key the writer uses: 0.96 % false positives at 10 bits a key.
pub const DEFAULT_PROBES: u8 = 6;
/// Bits per key the writer spends by default (1.25 bytes a key).
pub const DEFAULT_BITS_PER_KEY: u32 = 10;
/// The shortest composite key (key group and state id).
const MIN_KEY_BYTES: usize = millpond_format::key::PREFIX_BYTES;
/// What a probe multiplies by: the golden ratio's 32-bit constant, odd, so that successive
/// probes visit distinct bits.
const PROBE_STEP: u32 = 0x9E37_79B9;

fn corrupt(location: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "data file filter",
        location: location.into(),
    }
}

/// Block and first probe value of a key: the high 32 bits of its hash pick the block, the low
/// 32 seed the probes.
#[inline]
fn locate(key: &[u8], blocks: u32) -> (usize, u32) {
    let x = xxh3_64(key);
    let block = (((x >> 32) * blocks as u64) >> 32) as usize;
    (block, x as u32)
}

/// Builds a filter block from the keys of one file, in any order.
#[derive(Debug)]
pub struct FilterBuilder {
    bits_per_key: u32,
    probes: u8,
    hashes: Vec<u64>,
    heavy: Vec<Vec<u8>>,
}

impl FilterBuilder {
    /// A builder spending `bits_per_key` bits a key (at least 1) with `probes` probes
    /// (1..=16).
    pub fn new(bits_per_key: u32, probes: u8) -> Result<Self> {
        if bits_per_key == 0 || !(1..=16).contains(&probes) {
            return Err(Error::Invalid {
                reason: format!(
                    "filter bits per key {bits_per_key} (at least 1) or probes {probes} (1..=16)"
                ),
            });
        }
        Ok(FilterBuilder {
            bits_per_key,
            probes,
            hashes: Vec::new(),
            heavy: Vec::new(),
        })
    }

    /// Adds a composite key. The hash is kept, not the key: the block count is known only
    /// once every key is in.
    pub fn add(&mut self, key: &[u8]) {
        self.hashes.push(xxh3_64(key));
    }

    /// Marks a key as heavy (§10.2). Keys may come in any order; duplicates are kept once.
    pub fn add_heavy(&mut self, key: &[u8]) {
        self.heavy.push(key.to_vec());
    }

    /// The encoded block.
    pub fn finish(mut self) -> Vec<u8> {
        let keys = self.hashes.len() as u64;
        let bits = keys.saturating_mul(self.bits_per_key as u64);
        let blocks = bits.div_ceil(BLOCK_BITS as u64).clamp(1, u32::MAX as u64) as u32;
        let mut words = vec![0u64; blocks as usize * 8];
        for &x in &self.hashes {
            let block = (((x >> 32) * blocks as u64) >> 32) as usize;
            let mut y = x as u32;
            for _ in 0..self.probes {
                y = y.wrapping_mul(PROBE_STEP);
                let bit = (y >> 23) as usize;
                words[block * 8 + bit / 64] |= 1 << (bit % 64);
            }
        }
        self.heavy.sort_unstable();
        self.heavy.dedup();
        let mut out = Vec::with_capacity(HEADER_BYTES + words.len() * 8 + 4);
        out.push(KIND_BLOCKED_BLOOM);
        out.push(self.probes);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&blocks.to_le_bytes());
        out.extend_from_slice(&keys.to_le_bytes());
        for w in &words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&(self.heavy.len() as u32).to_le_bytes());
        for k in &self.heavy {
            prost::encoding::encode_varint(k.len() as u64, &mut out);
            out.extend_from_slice(k);
        }
        out
    }
}

/// A decoded filter block.
#[derive(Debug, Clone)]
pub struct Filter {
    probes: u8,
    blocks: u32,
    keys: u64,
    words: Vec<u64>,
    heavy: Vec<Vec<u8>>,
}

impl Filter {
    /// Decodes and checks a filter block (its CRC is the caller's: it lives in the footer).
    pub fn decode(bytes: &[u8]) -> Result<Filter> {
        if bytes.len() < HEADER_BYTES + BLOCK_BYTES + 4 {
            return Err(corrupt(format!(
                "{} bytes, shorter than any filter",
                bytes.len()
            )));
        }
        if bytes[0] != KIND_BLOCKED_BLOOM {
            return Err(corrupt(format!("unknown filter kind {}", bytes[0])));
        }
        let probes = bytes[1];
        if !(1..=16).contains(&probes) {
            return Err(corrupt(format!("{probes} probes (1..=16)")));
        }
        if bytes[2..4] != [0, 0] {
            return Err(corrupt("reserved bytes not zero"));
        }
        let blocks = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        let keys = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let block_bytes = (blocks as u64) * BLOCK_BYTES as u64;
        if blocks == 0 || HEADER_BYTES as u64 + block_bytes + 4 > bytes.len() as u64 {
            return Err(corrupt(format!(
                "{blocks} blocks do not fit in {} bytes",
                bytes.len()
            )));
        }
        let end = HEADER_BYTES + block_bytes as usize;
        let words = bytes[HEADER_BYTES..end]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let mut rest = &bytes[end..];
        let count = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        rest = &rest[4..];
        // Each heavy key takes at least 5 bytes: no count can claim more than that allows.
        if count as usize > rest.len() / (MIN_KEY_BYTES + 1) {
            return Err(corrupt(format!(
                "{count} heavy keys in {} bytes",
                rest.len()
            )));
        }
        let mut heavy: Vec<Vec<u8>> = Vec::with_capacity(count as usize);
        for i in 0..count {
            let len = prost::encoding::decode_varint(&mut rest)
                .map_err(|_| corrupt(format!("heavy key {i}: bad length")))?;
            if len < MIN_KEY_BYTES as u64 || len > rest.len() as u64 {
                return Err(corrupt(format!("heavy key {i}: length {len}")));
            }
            let (key, tail) = rest.split_at(len as usize);
            if heavy.last().is_some_and(|last| last.as_slice() >= key) {
                return Err(corrupt(format!("heavy key {i}: not ascending")));
            }
            heavy.push(key.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(corrupt(format!("{} trailing bytes", rest.len())));
        }
        Ok(Filter {
            probes,
            blocks,
            keys,
            words,
            heavy,
        })
    }

    /// False if `key` is surely not in the file; true if it may be.
    #[inline]
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let (block, mut y) = locate(key, self.blocks);
        let words = &self.words[block * 8..block * 8 + 8];
        (0..self.probes).all(|_| {
            y = y.wrapping_mul(PROBE_STEP);
            let bit = (y >> 23) as usize;
            words[bit / 64] & (1 << (bit % 64)) != 0
        })
    }

    /// Whether `key` is one of the file's heavy keys.
    pub fn is_heavy(&self, key: &[u8]) -> bool {
        self.heavy
            .binary_search_by(|k| k.as_slice().cmp(key))
            .is_ok()
    }

    /// Keys added when the filter was built (the file's entry count).
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Bytes the filter holds in memory: what a store charges to its budget.
    pub fn memory_bytes(&self) -> usize {
        self.words.len() * 8 + self.heavy.iter().map(|k| k.len() + 24).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u64) -> Vec<u8> {
        let mut k = vec![0, (i % 128) as u8, 0, 1];
        k.extend_from_slice(&i.to_be_bytes());
        k
    }

    fn build(keys: impl Iterator<Item = u64>, heavy: &[u64]) -> Vec<u8> {
        let mut b = FilterBuilder::new(DEFAULT_BITS_PER_KEY, DEFAULT_PROBES).unwrap();
        for i in keys {
            b.add(&key(i));
        }
        for &h in heavy {
            b.add_heavy(&key(h));
        }
        b.finish()
    }

    #[test]
    fn false_positive_rate_is_near_one_percent() {
        let f = Filter::decode(&build(0..100_000, &[])).unwrap();
        assert_eq!(f.keys(), 100_000);
        let fp = (1_000_000..1_200_000u64)
            .filter(|&i| f.may_contain(&key(i)))
            .count();
        let rate = fp as f64 / 200_000.0;
        // 0.96 % expected (design §5.2); the bound leaves room for chance.
        assert!((0.005..0.015).contains(&rate), "false positives {rate}");
    }

    #[test]
    fn golden_bytes_of_a_one_key_filter() {
        // Pins the hash, block choice and probe sequence: a change here is a format change.
        let bytes = build(std::iter::once(7), &[3]);
        assert_eq!(
            &bytes[..16],
            &[1, 6, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        let set: u32 = bytes[16..80].iter().map(|b| b.count_ones()).sum();
        assert!((1..=6).contains(&set), "{set} bits set");
        assert_eq!(&bytes[80..84], &1u32.to_le_bytes());
        assert_eq!(bytes[84] as usize, key(3).len());
        assert_eq!(&bytes[85..], key(3).as_slice());
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2, "XXH3-64 with seed 0");
    }

    #[test]
    fn heavy_keys_are_found_and_sorted() {
        let f = Filter::decode(&build(0..10, &[9, 2, 5, 2])).unwrap();
        assert!(f.is_heavy(&key(2)) && f.is_heavy(&key(5)) && f.is_heavy(&key(9)));
        assert!(!f.is_heavy(&key(3)));
    }

    #[test]
    fn an_empty_file_gets_one_block_that_matches_nothing() {
        let f = Filter::decode(&build(std::iter::empty(), &[])).unwrap();
        assert!(!f.may_contain(&key(1)));
    }

    #[test]
    fn damage_is_corrupt() {
        let good = build(0..100, &[1, 2]);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut b = good.clone();
        b[0] = 2;
        cases.push(("kind", b));
        let mut b = good.clone();
        b[1] = 0;
        cases.push(("no probes", b));
        let mut b = good.clone();
        b[1] = 17;
        cases.push(("17 probes", b));
        let mut b = good.clone();
        b[2] = 1;
        cases.push(("reserved", b));
        let mut b = good.clone();
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        cases.push(("no blocks", b));
        let mut b = good.clone();
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("too many blocks", b));
        let mut b = good.clone();
        b.push(0);
        cases.push(("trailing", b));
        let mut b = good.clone();
        b.truncate(b.len() - 1);
        cases.push(("cut", b));
        let heavy_at = good.len() - 2 * (key(1).len() + 1) - 4;
        let mut b = good.clone();
        b[heavy_at..heavy_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("heavy count", b));
        let mut b = good.clone();
        let second = heavy_at + 4 + key(1).len() + 1;
        b[second..].copy_from_slice(
            &[key(1).len() as u8]
                .into_iter()
                .chain(key(1))
                .collect::<Vec<_>>(),
        );
        cases.push(("heavy keys not ascending", b));
        let mut b = good.clone();
        b[heavy_at + 4] = 2;
        cases.push(("short heavy key", b));
        for (what, bytes) in cases {
            assert!(
                matches!(Filter::decode(&bytes), Err(Error::Corrupt { .. })),
                "{what}"
            );
        }
        assert!(Filter::decode(&good).is_ok());
    }

    #[test]
    fn bad_settings_are_invalid() {
        assert!(FilterBuilder::new(0, 6).is_err());
        assert!(FilterBuilder::new(10, 0).is_err());
        assert!(FilterBuilder::new(10, 17).is_err());
    }

    proptest! {
        #[test]
        fn no_false_negatives(keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 4..40), 0..300),
                              bits in 1u32..20, probes in 1u8..=16) {
            let mut b = FilterBuilder::new(bits, probes).unwrap();
            for k in &keys {
                b.add(k);
            }
            let f = Filter::decode(&b.finish()).unwrap();
            for k in &keys {
                prop_assert!(f.may_contain(k));
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Filter::decode(&bytes);
        }
    }
}
