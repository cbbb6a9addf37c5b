//! Local segment files, the embedded default sink: batches appended to files named by their
//! first LSN (`00000000000000000001.wal`), one `fdatasync` per batch (group commit: a batch
//! carries every record that arrived while the previous one was being written), a new file
//! every `segment_bytes`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::batch::{self, Decoded};
use crate::error::{Error, Result};
use crate::settings::SegmentSettings;
use crate::sink::{Batch, StoredBatch, WalPosition, WalSink, WalSource};

const SUFFIX: &str = ".wal";

fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SUFFIX}")
}

/// The segments in `dir`, sorted by first LSN.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(SUFFIX) {
            if let (20, Ok(lsn)) = (stem.len(), stem.parse::<u64>()) {
                out.push((lsn, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// Where the valid data of a segment ends, and the last LSN in it.
struct Scan {
    valid_len: u64,
    torn: bool,
}

/// Reads a whole segment to find where its valid batches end. A damaged batch counts as a torn
/// tail only if nothing valid could follow it: it reaches the end of the file, or only zeros
/// follow (a crash can leave a file extended with zeros). Anything else is corruption.
fn scan(path: &Path, bytes: &[u8]) -> Result<Scan> {
    let mut off = 0usize;
    while off < bytes.len() {
        let location = || format!("{} at byte {off}", path.display());
        match batch::decode(&bytes[off..], location) {
            Ok(Decoded::Batch(h, _)) => off += h.framed_len(),
            Ok(Decoded::Incomplete) => {
                return Ok(Scan {
                    valid_len: off as u64,
                    torn: true,
                })
            }
            Err(e) => {
                if bytes[off..].iter().all(|b| *b == 0) || declared_end_reaches_eof(&bytes[off..]) {
                    return Ok(Scan {
                        valid_len: off as u64,
                        torn: true,
                    });
                }
                return Err(e);
            }
        }
    }
    Ok(Scan {
        valid_len: off as u64,
        torn: false,
    })
}

/// Whether a (damaged) batch at the start of `rest` claims to extend to the end of the file.
fn declared_end_reaches_eof(rest: &[u8]) -> bool {
    if rest.len() < batch::HEADER_BYTES {
        return true;
    }
    let payload = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
    batch::HEADER_BYTES + payload >= rest.len()
}

/// The local segment sink.
pub struct LocalSegmentSink {
    dir: PathBuf,
    settings: SegmentSettings,
    file: Option<(u64, File, u64)>,
}

impl LocalSegmentSink {
    /// Opens the segment directory for appending, creating it if needed. A torn tail left by a
    /// crash is cut off the last segment first, so that new batches follow valid ones.
    pub fn open(dir: impl AsRef<Path>, settings: SegmentSettings) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let mut file = None;
        if let Some((first, path)) = list_segments(&dir)?.pop() {
            let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
            let s = scan(&path, &bytes)?;
            let mut f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(Error::io(&path))?;
            if s.torn {
                f.set_len(s.valid_len).map_err(Error::io(&path))?;
                f.sync_all().map_err(Error::io(&path))?;
            }
            f.seek(SeekFrom::Start(s.valid_len))
                .map_err(Error::io(&path))?;
            file = Some((first, f, s.valid_len));
        }
        Ok(LocalSegmentSink {
            dir,
            settings,
            file,
        })
    }
}

impl LocalSegmentSink {
    /// Writes one batch (rolling to a new segment first if the current one is full); the
    /// caller syncs.
    fn write(&mut self, batch: Batch<'_>) -> Result<WalPosition> {
        let roll = match &self.file {
            None => true,
            Some((_, _, len)) => *len >= self.settings.segment_bytes,
        };
        if roll {
            // Everything in the old segment is durable before anything in the new one.
            self.sync()?;
            let path = self.dir.join(segment_name(batch.first_lsn));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(Error::io(&path))?;
            // The new name must survive a crash before anything in it counts as durable.
            sync_dir(&self.dir)?;
            self.file = Some((batch.first_lsn, f, 0));
        }
        let (segment, f, len) = self.file.as_mut().expect("a segment is open");
        let offset = *len;
        // The file offset is always at the valid end (set at open, moved only by writes).
        f.write_all(batch.bytes)
            .map_err(|e| Error::io(&self.dir.join(segment_name(*segment)))(e))?;
        *len += batch.bytes.len() as u64;
        Ok(WalPosition::Local {
            segment: *segment,
            offset,
        })
    }

    fn sync(&mut self) -> Result<()> {
        if let (true, Some((segment, f, _))) = (self.settings.sync, &self.file) {
            f.sync_data()
                .map_err(|e| Error::io(&self.dir.join(segment_name(*segment)))(e))?;
        }
        Ok(())
    }
}

impl WalSink for LocalSegmentSink {
    fn append(&mut self, batch: Batch<'_>) -> Result<WalPosition> {
        let position = self.write(batch)?;
        self.sync()?;
        Ok(position)
    }

    /// Group commit: all the batches, then one `fdatasync`.
    fn append_all(&mut self, batches: &[Batch<'_>]) -> Result<Vec<WalPosition>> {
        let positions = batches
            .iter()
            .map(|b| self.write(*b))
            .collect::<Result<Vec<_>>>()?;
        self.sync()?;
        Ok(positions)
    }

    fn truncate_below(&mut self, lsn: u64) -> Result<()> {
        let segments = list_segments(&self.dir)?;
        // A segment is wholly below `lsn` if the next one starts at or below it.
        for pair in segments.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= lsn {
                std::fs::remove_file(path).map_err(Error::io(path))?;
            }
        }
        sync_dir(&self.dir)
    }
}

/// Reads batches back from local segments, in order.
pub struct LocalSegmentSource {
    segments: Vec<(u64, PathBuf)>,
    index: usize,
    current: Option<(u64, Vec<u8>, usize, usize)>,
}

impl LocalSegmentSource {
    /// Reads the segments of `dir`, starting with the one that holds `from_lsn` (earlier
    /// batches of that segment are returned too; replay skips them by LSN).
    pub fn open(dir: impl AsRef<Path>, from_lsn: u64) -> Result<Self> {
        let segments = list_segments(dir.as_ref())?;
        let start = segments
            .iter()
            .rposition(|(first, _)| *first <= from_lsn)
            .unwrap_or(0);
        Ok(LocalSegmentSource {
            segments,
            index: start,
            current: None,
        })
    }
}

impl WalSource for LocalSegmentSource {
    fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
        loop {
            if self.current.is_none() {
                let Some((first, path)) = self.segments.get(self.index) else {
                    return Ok(None);
                };
                let mut bytes = Vec::new();
                File::open(path)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .map_err(Error::io(path))?;
                let last = self.index + 1 == self.segments.len();
                let s = scan(path, &bytes)?;
                if s.torn && !last {
                    // Only the newest segment can have been cut short by a crash.
                    return Err(Error::Corrupt {
                        what: "WAL segment (cut short before a later segment)",
                        location: format!("{} at byte {}", path.display(), s.valid_len),
                    });
                }
                let valid = s.valid_len as usize;
                self.current = Some((*first, bytes, 0, valid));
            }
            let (segment, bytes, off, valid) = self.current.as_mut().expect("set above");
            if *off >= *valid {
                self.current = None;
                self.index += 1;
                continue;
            }
            let start = *off;
            let Decoded::Batch(h, _) = batch::decode(&bytes[start..*valid], String::new)? else {
                // scan() verified every batch below `valid`; this cannot happen.
                return Err(Error::Corrupt {
                    what: "WAL segment",
                    location: format!("segment {segment} at byte {start}"),
                });
            };
            *off += h.framed_len();
            return Ok(Some(StoredBatch {
                position: WalPosition::Local {
                    segment: *segment,
                    offset: start as u64,
                },
                bytes: bytes[start..*off].to_vec(),
            }));
        }
    }
}
