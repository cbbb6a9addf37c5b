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
                if is_torn_tail(&bytes[off..]) {
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

/// Whether a damaged batch at the start of `rest`, the rest of a segment, is a torn tail:
/// nothing valid could follow it, because only zeros do or it claims to reach the end.
fn is_torn_tail(rest: &[u8]) -> bool {
    rest.iter().all(|b| *b == 0) || declared_end_reaches_eof(rest)
}

/// Whether a (damaged) batch at the start of `rest` claims to extend to the end of the file.
fn declared_end_reaches_eof(rest: &[u8]) -> bool {
    match batch::peek_payload_len(rest) {
        Some(payload) => batch::HEADER_BYTES + payload >= rest.len(),
        None => true,
    }
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

/// Reads batches back from local segments, in order, a batch at a time: memory stays at one
/// batch (plus a read buffer) however large the segments are.
pub struct LocalSegmentSource {
    segments: Vec<(u64, PathBuf)>,
    index: usize,
    current: Option<OpenSegment>,
}

/// The segment being read: its length when it was opened (a writer may still be appending;
/// what it adds later is not read), and where the next batch starts.
struct OpenSegment {
    first_lsn: u64,
    path: PathBuf,
    reader: std::io::BufReader<File>,
    len: u64,
    offset: u64,
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

    /// The damaged or incomplete batch at `seg.offset` ends the segment if it is a torn tail
    /// (see [`scan`]); anything else is corruption. A torn tail is an error too unless this
    /// is the newest segment: only that one can have been cut short by a crash.
    fn end_of_segment(&self, seg: &mut OpenSegment, damage: Option<Error>) -> Result<()> {
        let mut rest = Vec::new();
        seg.reader
            .seek(SeekFrom::Start(seg.offset))
            .and_then(|_| {
                (&mut seg.reader)
                    .take(seg.len - seg.offset)
                    .read_to_end(&mut rest)
            })
            .map_err(Error::io(&seg.path))?;
        let torn = is_torn_tail(&rest);
        match damage {
            Some(e) if !torn => Err(e),
            _ if self.index + 1 < self.segments.len() => Err(Error::Corrupt {
                what: "WAL segment (cut short before a later segment)",
                location: format!("{} at byte {}", seg.path.display(), seg.offset),
            }),
            _ => Ok(()),
        }
    }
}

impl WalSource for LocalSegmentSource {
    fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
        loop {
            let mut seg = match self.current.take() {
                Some(seg) => seg,
                None => {
                    let Some((first, path)) = self.segments.get(self.index) else {
                        return Ok(None);
                    };
                    let file = File::open(path).map_err(Error::io(path))?;
                    let len = file.metadata().map_err(Error::io(path))?.len();
                    OpenSegment {
                        first_lsn: *first,
                        path: path.clone(),
                        reader: std::io::BufReader::with_capacity(1 << 20, file),
                        len,
                        offset: 0,
                    }
                }
            };
            if seg.offset >= seg.len {
                self.index += 1;
                continue;
            }
            match self.read_batch(&mut seg) {
                Ok(Some(bytes)) => {
                    let position = WalPosition::Local {
                        segment: seg.first_lsn,
                        offset: seg.offset,
                    };
                    seg.offset += bytes.len() as u64;
                    self.current = Some(seg);
                    return Ok(Some(StoredBatch { position, bytes }));
                }
                Ok(None) => self.end_of_segment(&mut seg, None)?,
                Err(e) => self.end_of_segment(&mut seg, Some(e))?,
            }
            // A torn tail of the newest segment: the log ends here.
            self.index += 1;
        }
    }
}

impl LocalSegmentSource {
    /// The whole, verified batch at `seg.offset`, or `None` if the segment ends inside it.
    fn read_batch(&self, seg: &mut OpenSegment) -> Result<Option<Vec<u8>>> {
        let remaining = seg.len - seg.offset;
        let location = || format!("{} at byte {}", seg.path.display(), seg.offset);
        let mut buf = vec![0u8; batch::HEADER_BYTES.min(remaining as usize)];
        seg.reader
            .read_exact(&mut buf)
            .map_err(Error::io(&seg.path))?;
        let Some(header) = batch::header(&buf, location)? else {
            return Ok(None);
        };
        let framed = header.framed_len();
        if framed as u64 > remaining {
            return Ok(None);
        }
        buf.resize(framed, 0);
        seg.reader
            .read_exact(&mut buf[batch::HEADER_BYTES..])
            .map_err(Error::io(&seg.path))?;
        match batch::decode(&buf, location)? {
            Decoded::Batch(..) => Ok(Some(buf)),
            Decoded::Incomplete => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `batches` batches of one 100-byte record each as raw segment files of
    /// `per_segment` batches, returning the framed bytes of each.
    fn write_segments(dir: &Path, batches: u64, per_segment: u64) -> Vec<Vec<u8>> {
        let mut framed = Vec::new();
        for lsn in 1..=batches {
            let mut record = Vec::new();
            // A record is length-prefixed in the payload; any bytes do for the framing.
            record.extend_from_slice(&100u32.to_le_bytes());
            record.extend_from_slice(&[lsn as u8; 100]);
            let mut out = Vec::new();
            batch::encode(lsn, 1, 0, &record, &mut out);
            framed.push(out);
        }
        for (i, chunk) in framed.chunks(per_segment as usize).enumerate() {
            let first = 1 + i as u64 * per_segment;
            std::fs::write(dir.join(segment_name(first)), chunk.concat()).unwrap();
        }
        framed
    }

    fn read_all(dir: &Path) -> Result<Vec<Vec<u8>>> {
        let mut source = LocalSegmentSource::open(dir, 1)?;
        let mut out = Vec::new();
        while let Some(b) = source.next_batch()? {
            out.push(b.bytes);
        }
        Ok(out)
    }

    /// Shortens the file at `path` by `bytes`, as a crash mid-write would.
    fn cut_end(path: &Path, bytes: u64) {
        let len = std::fs::metadata(path).unwrap().len();
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(len - bytes).unwrap();
    }

    #[test]
    fn batches_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let framed = write_segments(dir.path(), 10, 4);
        assert_eq!(read_all(dir.path()).unwrap(), framed);
    }

    #[test]
    fn a_torn_tail_ends_the_newest_segment_only() {
        let dir = tempfile::tempdir().unwrap();
        let framed = write_segments(dir.path(), 10, 4);
        // Cut inside the last batch: its header survives, its payload does not.
        cut_end(&dir.path().join(segment_name(9)), 30);
        assert_eq!(read_all(dir.path()).unwrap(), framed[..9]);

        // The same cut in an older segment is corruption: a later segment exists.
        cut_end(&dir.path().join(segment_name(5)), 30);
        let err = read_all(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn zeros_after_the_last_batch_are_a_torn_tail_and_a_flip_before_the_end_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let framed = write_segments(dir.path(), 4, 4);
        let path = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_all(dir.path()).unwrap(), framed);

        // A flipped payload byte in the second batch, with valid batches after it.
        bytes[framed[0].len() + batch::HEADER_BYTES + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_all(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
