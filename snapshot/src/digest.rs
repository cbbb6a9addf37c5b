//! What binds a data file's bytes to its manifest entry: the XXH3-128 digest of the whole
//! file, with its size and CRC-32C, computed as the bytes stream past (docs/snapshot.md,
//! "Data files": "What binds a file to its manifest").
//!
//! Why not the CRC-32C alone: every block and every entry value ends with its own CRC-32C,
//! and the CRC of bytes followed by their own CRC is a constant, so those bytes cancel out of
//! any CRC that covers them (the block's, the whole file's). Two versions of a file with the
//! same layout then have the same whole-file CRC-32C. XXH3 is not linear: no part of a file
//! cancels out. It guards against mix-ups and rot, not against someone who can write to the
//! archive (they can write a matching manifest too).

use crate::error::{Error, Result};
use crate::manifest::FileRef;

/// XXH3-128 of a whole data file, in XXH128's canonical byte order (big-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileDigest(pub [u8; 16]);

impl std::fmt::Display for FileDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", u128::from_be_bytes(self.0))
    }
}

impl std::fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileDigest({self})")
    }
}

/// Size, CRC-32C and XXH3-128 of bytes fed in order.
#[derive(Clone)]
pub(crate) struct FileHasher {
    xxh3: xxhash_rust::xxh3::Xxh3,
    crc32c: u32,
    len: u64,
}

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileHasher({} bytes)", self.len)
    }
}

impl FileHasher {
    pub(crate) fn new() -> Self {
        FileHasher {
            xxh3: xxhash_rust::xxh3::Xxh3::new(),
            crc32c: 0,
            len: 0,
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.xxh3.update(bytes);
        self.crc32c = crc32c::crc32c_append(self.crc32c, bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn crc32c(&self) -> u32 {
        self.crc32c
    }

    pub(crate) fn digest(&self) -> FileDigest {
        FileDigest(self.xxh3.digest128().to_be_bytes())
    }

    /// Checks what was fed against `file`'s entry: size, then the digest (if the manifest
    /// has one: version-1 manifests do not), then the CRC-32C.
    pub(crate) fn check(&self, file: &FileRef) -> Result<()> {
        let corrupt = |what| Error::Corrupt {
            what,
            location: file.path.clone(),
        };
        if self.len != file.bytes {
            return Err(corrupt("data file (size differs from the manifest)"));
        }
        if file.digest.is_some_and(|d| d != self.digest()) {
            return Err(corrupt(
                "data file (XXH3-128 digest differs from the manifest)",
            ));
        }
        if self.crc32c != file.crc32c {
            return Err(corrupt("data file (CRC-32C differs from the manifest)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_xxh3_128_in_canonical_order() {
        let mut h = FileHasher::new();
        h.update(b"mill");
        h.update(b"pond");
        let whole = xxhash_rust::xxh3::xxh3_128(b"millpond");
        assert_eq!(h.digest().0, whole.to_be_bytes());
        assert_eq!(h.digest().to_string(), format!("{whole:032x}"));
        assert_eq!((h.len(), h.crc32c()), (8, crc32c::crc32c(b"millpond")));
    }

    /// The flaw this digest mends: data followed by its own CRC-32C cancels out of a CRC-32C
    /// over it, so two different blocks of that form have the same CRC; not the same digest.
    #[test]
    fn entries_that_carry_their_own_crc_cancel_out_of_a_crc_but_not_the_digest() {
        let sealed = |body: &[u8]| {
            let mut v = body.to_vec();
            v.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
            v
        };
        let (a, b) = (sealed(b"value one"), sealed(b"value two"));
        assert_eq!(crc32c::crc32c(&a), crc32c::crc32c(&b));
        let digest = |bytes: &[u8]| {
            let mut h = FileHasher::new();
            h.update(bytes);
            h.digest()
        };
        assert_ne!(digest(&a), digest(&b));
    }
}
