//! Getting data files out of the archive: whole, streamed in bounded chunks (to local disk, or
//! through a check of every block), each checked against the manifest's size before a byte of
//! it is read and against its digest and CRC-32C at the end; or by ranges, for reads that
//! cannot wait for the whole file.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use parking_lot::Mutex;

use crate::archive::{os_error, Archive};
use crate::data_file::DataFile;
use crate::digest::{FileDigest, FileHasher};
use crate::error::{Error, Result};
use crate::manifest::FileRef;
use crate::read_at::{LocalFile, ReadAt};

/// Bytes read from a local file at a time.
const LOCAL_CHUNK_BYTES: usize = 4 << 20;

fn size_differs(file: &FileRef) -> Error {
    Error::Corrupt {
        what: "data file (size differs from the manifest)",
        location: file.path.clone(),
    }
}

/// A data file's bytes in order, a chunk at a time: a local archive's file read directly, or
/// an object store's GET body. Opening checks the object's size against the manifest first,
/// so an object of the wrong size (a 2 GiB stranger under the name) is refused unread.
enum ObjectBody {
    Local(std::fs::File),
    Store {
        archive: Archive,
        stream: BoxStream<'static, object_store::Result<Bytes>>,
        path: String,
    },
}

impl ObjectBody {
    fn open(archive: &Archive, file: &FileRef) -> Result<ObjectBody> {
        if let Some(root) = archive.local_root() {
            let src = root.join(&file.path);
            let io = |source: std::io::Error| match source.kind() {
                std::io::ErrorKind::NotFound => archive.not_found(&file.path),
                _ => Error::Io {
                    path: src.display().to_string(),
                    source,
                },
            };
            let f = std::fs::File::open(&src).map_err(io)?;
            if f.metadata().map_err(io)?.len() != file.bytes {
                return Err(size_differs(file));
            }
            return Ok(ObjectBody::Local(f));
        }
        let path = archive.path(&file.path);
        let got = archive
            .block_on(archive.store().get(&path))
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => archive.not_found(&file.path),
                e => os_error("downloading", &file.path, e),
            })?;
        // The GET's headers give the size before its body is read.
        if got.meta.size != file.bytes {
            return Err(size_differs(file));
        }
        Ok(ObjectBody::Store {
            archive: archive.clone(),
            stream: got.into_stream(),
            path: file.path.clone(),
        })
    }

    /// The next chunk (at most 4 MiB from a local file; what the network gives from a store),
    /// `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match self {
            ObjectBody::Local(f) => {
                let mut buf = vec![0u8; LOCAL_CHUNK_BYTES];
                let n = std::io::Read::read(f, &mut buf).map_err(|source| Error::Io {
                    path: "data file being read".into(),
                    source,
                })?;
                buf.truncate(n);
                Ok((n > 0).then(|| Bytes::from(buf)))
            }
            ObjectBody::Store {
                archive,
                stream,
                path,
            } => match archive.block_on(stream.next()) {
                None => Ok(None),
                Some(Ok(chunk)) => Ok(Some(chunk)),
                Some(Err(e)) => Err(os_error("downloading", path, e)),
            },
        }
    }
}

/// Downloads `file` to `to` (written to a temporary name, synced, then renamed, so a file at
/// `to` is always whole). Its size, digest (if the manifest has one) and CRC-32C must match
/// the manifest. Returns its digest (computed, so also for a file the manifest has none for).
/// With `link`, a local (`file://`) archive's object is hard-linked instead of copied where the
/// file system allows (checked the same way): for copies that only this process reads, and
/// that may share the archive's blocks.
pub(crate) fn download_to(
    archive: &Archive,
    file: &FileRef,
    to: &Path,
    link: bool,
) -> Result<FileDigest> {
    let io = |source| Error::Io {
        path: to.display().to_string(),
        source,
    };
    let part = to.with_extension("part");
    // A `.part` left by a crash goes first. `remove_file` unlinks a symlink itself, and
    // `create_new` (or `hard_link`) refuses whatever appears there meanwhile: a restore into a
    // directory someone else can write to never writes through their link to a file outside it.
    match std::fs::remove_file(&part) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    if let Some(root) = archive.local_root().filter(|_| link) {
        // A local archive's objects are immutable (a put renames a new file into place), so
        // a hard link is a copy that costs no disk; it is checked like a download.
        if std::fs::hard_link(root.join(&file.path), &part).is_ok() {
            return check_linked(file, &part, to);
        }
    }
    let mut body = ObjectBody::open(archive, file)?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
        .map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(4 << 20, out);
    let mut hasher = FileHasher::new();
    let copied = (|| {
        while let Some(chunk) = body.next_chunk()? {
            hasher.update(&chunk);
            // The object grew after its size was checked: stop rather than fill the disk.
            if hasher.len() > file.bytes {
                return Err(size_differs(file));
            }
            out.write_all(&chunk).map_err(io)?;
        }
        let f = out.into_inner().map_err(|e| io(e.into_error()))?;
        hasher.check(file)?;
        f.sync_all().map_err(io)
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, to).map_err(io)?;
    Ok(hasher.digest())
}

/// Hard-links `from` (a local copy of `file`, perhaps deleted meanwhile) to `to` and checks it
/// against the manifest as a download would be; on any failure nothing is left at `to`'s
/// temporary name and the caller downloads instead.
pub(crate) fn link_checked(file: &FileRef, from: &Path, to: &Path) -> Result<FileDigest> {
    let part = to.with_extension("part");
    let _ = std::fs::remove_file(&part);
    std::fs::hard_link(from, &part).map_err(|source| Error::Io {
        path: from.display().to_string(),
        source,
    })?;
    check_linked(file, &part, to)
}

/// Checks a hard link `part` to a local archive's object against the manifest (size, digest,
/// CRC-32C, reading it once), then renames it to `to`.
fn check_linked(file: &FileRef, part: &Path, to: &Path) -> Result<FileDigest> {
    let io = |source| Error::Io {
        path: to.display().to_string(),
        source,
    };
    let checked = (|| {
        let mut f = std::fs::File::open(part).map_err(io)?;
        let mut hasher = FileHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if hasher.len() > file.bytes {
                return Err(size_differs(file));
            }
        }
        hasher.check(file)?;
        Ok(hasher.digest())
    })();
    match checked {
        Ok(digest) => {
            std::fs::rename(part, to).map_err(io)?;
            Ok(digest)
        }
        Err(e) => {
            let _ = std::fs::remove_file(part);
            Err(e)
        }
    }
}

/// Checks the data file `file` end to end in one pass over its bytes, in bounded memory:
/// the object's size before anything is read, then its footer and index, its id, key groups
/// and entry count against the manifest, every block (checksum, framing, order), and the
/// digest and CRC-32C of the whole file. Damage is `Error::Corrupt` naming the file.
pub(crate) fn verify_file(archive: &Archive, file: &FileRef) -> Result<()> {
    let body = ObjectBody::open(archive, file)?;
    let ranges: Arc<dyn ReadAt> = match archive.local_root() {
        Some(root) => {
            let src = root.join(&file.path);
            Arc::new(LocalFile::open(&src).map_err(|source| Error::Io {
                path: src.display().to_string(),
                source,
            })?)
        }
        None => Arc::new(ArchiveObject {
            archive: archive.clone(),
            path: file.path.clone(),
            size: file.bytes,
        }),
    };
    let source = Arc::new(StreamedSource {
        ranges,
        size: file.bytes,
        path: file.path.clone(),
        state: Mutex::new(Streamed {
            body,
            chunk: Bytes::new(),
            hasher: FileHasher::new(),
            error: None,
        }),
    });
    let checked = DataFile::open_source(source.clone()).and_then(|data| {
        file.check_opened(&data)?;
        data.verify()
    });
    if let Err(e) = checked {
        // A failed read of the body: its own error (an object-store failure is retried).
        let mut state = source.state.lock();
        return Err(state.error.take().unwrap_or_else(|| in_file(e, &file.path)));
    }
    let hasher = source.drain()?;
    hasher.check(file)
}

/// `e` with the data file's path in its location, for errors of a file read alone.
fn in_file(e: Error, path: &str) -> Error {
    match e {
        Error::Corrupt { what, location } => Error::Corrupt {
            what,
            location: format!("{path}, {location}"),
        },
        e => e,
    }
}

/// A data file read for [`verify_file`]: a read at the position the body has reached (the
/// blocks, read in order) comes from the body and is hashed; any other (the footer and the
/// index, read first) is a positional read. Every byte of the body is hashed once, in order.
#[derive(Debug)]
struct StreamedSource {
    ranges: Arc<dyn ReadAt>,
    size: u64,
    path: String,
    state: Mutex<Streamed>,
}

struct Streamed {
    body: ObjectBody,
    /// What is left of the last chunk.
    chunk: Bytes,
    hasher: FileHasher,
    /// The error a failed body read hid behind an `io::Error`.
    error: Option<Error>,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}", self.hasher.len())
    }
}

impl StreamedSource {
    /// Hashes the rest of the body and returns the hasher.
    fn drain(&self) -> Result<FileHasher> {
        let mut s = self.state.lock();
        let rest = std::mem::take(&mut s.chunk);
        s.hasher.update(&rest);
        while let Some(chunk) = s.body.next_chunk()? {
            s.hasher.update(&chunk);
            if s.hasher.len() > self.size {
                return Err(Error::Corrupt {
                    what: "data file (size differs from the manifest)",
                    location: self.path.clone(),
                });
            }
        }
        Ok(s.hasher.clone())
    }
}

impl ReadAt for StreamedSource {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut s = self.state.lock();
        if offset != s.hasher.len() {
            drop(s);
            return self.ranges.read_at(offset, len);
        }
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // Bounded by the size checked above, and a block by the reader's own limits.
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            if s.chunk.is_empty() {
                match s.body.next_chunk() {
                    Ok(Some(chunk)) => s.chunk = chunk,
                    Ok(None) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Err(e) => {
                        let message = e.to_string();
                        s.error = Some(e);
                        return Err(std::io::Error::other(message));
                    }
                }
            }
            let n = (len - out.len()).min(s.chunk.len());
            out.extend_from_slice(&s.chunk[..n]);
            s.chunk.advance(n);
        }
        s.hasher.update(&out);
        Ok(out)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

/// A data file in the archive, read by range requests: what a restored store reads before
/// the file's download completes.
#[derive(Debug)]
pub(crate) struct ArchiveObject {
    pub archive: Archive,
    pub path: String,
    pub size: u64,
}

impl ReadAt for ArchiveObject {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        let bytes = self
            .archive
            .get_range(&self.path, offset..end)
            .map_err(std::io::Error::other)?;
        if bytes.len() != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(bytes)
    }

    fn size(&self) -> u64 {
        self.size
    }
}
