//! Positional reads: what a [`DataFile`](crate::DataFile) reads its footer, index and blocks
//! through, so that a multi-GB file is never loaded whole. A local file answers with `pread`,
//! an object store with range GETs, a buffer with a copy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes readable at any offset, from any thread, without a cursor.
///
/// `&self` and no seek position, because one open data file serves concurrent lookups; `Send +
/// Sync` so that it can sit behind an `Arc` shared by them; `Debug` because errors name the
/// source they came from. A data file needs three kinds of read: the footer (the last 48 bytes),
/// the index (one read), and one whole block per lookup.
pub trait ReadAt: Send + Sync + std::fmt::Debug {
    /// Exactly `len` bytes starting at `offset`. A range that does not lie inside
    /// [`size`](Self::size) is an [`io::ErrorKind::UnexpectedEof`] error, never a short read
    /// or a panic.
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;

    /// Bytes in the source. Fixed for the source's life: a reader trusts it to place the
    /// footer, so for object storage it comes from the manifest or a HEAD, not a guess.
    fn size(&self) -> u64;
}

/// The range `offset..offset + len` if it lies inside `size`, else the error every `ReadAt`
/// gives for it.
fn check_range(offset: u64, len: usize, size: u64) -> io::Result<std::ops::Range<u64>> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(offset..end),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read of {len} bytes at {offset} past the end ({size} bytes)"),
        )),
    }
}

/// A local file read with `pread` (`FileExt::read_exact_at`): no shared cursor, so concurrent
/// reads need no lock.
pub struct LocalFile {
    file: File,
    /// Taken once at open: the file is immutable, and `size` must not cost a syscall.
    size: u64,
    path: PathBuf,
}

impl LocalFile {
    /// Opens `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(LocalFile {
            file,
            size,
            path: path.to_path_buf(),
        })
    }
}

impl std::fmt::Debug for LocalFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl ReadAt for LocalFile {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        check_range(offset, len, self.size)?;
        // Bounded by the size checked above, so a damaged length cannot over-allocate. If the
        // file shrank since open, `read_exact_at` fails with UnexpectedEof.
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

/// A data file already in memory (tests, small files, a whole-object download).
pub struct InMemory(Vec<u8>);

impl InMemory {
    /// Wraps `bytes`, taking ownership (no copy).
    pub fn new(bytes: Vec<u8>) -> Self {
        InMemory(bytes)
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for InMemory {
    fn from(bytes: Vec<u8>) -> Self {
        InMemory(bytes)
    }
}

impl std::fmt::Debug for InMemory {
    // Not the bytes: errors print this.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes in memory", self.0.len())
    }
}

impl ReadAt for InMemory {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let range = check_range(offset, len, self.size())?;
        // In range of a slice, so these fit in usize.
        Ok(self.0[range.start as usize..range.end as usize].to_vec())
    }

    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_reads_are_unexpected_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let local = LocalFile::open(&path).unwrap();
        let memory = InMemory::new(b"0123456789".to_vec());
        for source in [&local as &dyn ReadAt, &memory] {
            assert_eq!(source.size(), 10);
            assert_eq!(source.read_at(2, 3).unwrap(), b"234");
            assert_eq!(source.read_at(10, 0).unwrap(), b"");
            for (offset, len) in [(8, 3), (11, 0), (u64::MAX, 1), (0, usize::MAX)] {
                let err = source.read_at(offset, len).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{offset} {len}");
            }
        }
        assert!(format!("{local:?}").ends_with("/f"));
        assert_eq!(format!("{memory:?}"), "10 bytes in memory");
    }
}
