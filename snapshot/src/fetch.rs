//! Getting data files out of the archive: whole, to local disk (checked against the
//! manifest's size and CRC-32C before they are used), or by ranges, for reads that cannot
//! wait for the whole file.

use std::io::Write;
use std::path::Path;

use futures::StreamExt;
use object_store::ObjectStoreExt;

use crate::archive::{os_error, Archive};
use crate::error::{Error, Result};
use crate::manifest::FileRef;
use crate::read_at::ReadAt;

/// Downloads `file` to `to` (written to a temporary name, synced, then renamed, so a file at
/// `to` is always whole). Its size and CRC-32C must match the manifest.
pub(crate) fn download_to(archive: &Archive, file: &FileRef, to: &Path) -> Result<()> {
    let io = |source| Error::Io {
        path: to.display().to_string(),
        source,
    };
    let part = to.with_extension("part");
    let mut out =
        std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(&part).map_err(io)?);
    let mut crc = 0u32;
    let mut len = 0u64;
    if let Some(root) = archive.local_root() {
        // A local archive: read the file directly, in large chunks.
        let src = root.join(&file.path);
        let mut f = std::fs::File::open(&src).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => archive.not_found(&file.path),
            _ => Error::Io {
                path: src.display().to_string(),
                source,
            },
        })?;
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            len += n as u64;
            out.write_all(&buf[..n]).map_err(io)?;
        }
    } else {
        let path = archive.path(&file.path);
        let r: std::result::Result<(), Error> = archive.block_on(async {
            let got = archive.store().get(&path).await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => archive.not_found(&file.path),
                e => os_error("downloading", &file.path, e),
            })?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| os_error("downloading", &file.path, e))?;
                crc = crc32c::crc32c_append(crc, &chunk);
                len += chunk.len() as u64;
                out.write_all(&chunk).map_err(io)?;
            }
            Ok(())
        });
        r?;
    }
    let f = out.into_inner().map_err(|e| io(e.into_error()))?;
    if len != file.bytes || crc != file.crc32c {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Corrupt {
            what: "data file (size or CRC-32C differs from the manifest)",
            location: file.path.clone(),
        });
    }
    f.sync_all().map_err(io)?;
    std::fs::rename(&part, to).map_err(io)?;
    Ok(())
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
