//! Local segment files, the embedded default sink: batches appended to files named by their
//! first LSN (`00000000000000000001.wal`), one `fdatasync` per batch (group commit: a batch
//! carries every record that arrived while the previous one was being written), a new file
//! every `segment_bytes`; beside them the acknowledged-LSN watermark ([`crate::watermark`]).
//!
//! One reader ([`SegmentFile`]) and one rule for where a log's valid data ends
//! ([`end_of_valid`]) serve the sink's open, [`LocalSegmentSource`] and `millpond wal inspect`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{self, BatchHeader, Decoded, HEADER_BYTES};
use crate::error::{Error, Result};
use crate::settings::SegmentSettings;
use crate::sink::{Batch, StoredBatch, TornTail, WalPosition, WalSink, WalSource};
use crate::watermark::{self, Watermark};

const SUFFIX: &str = ".wal";
/// Bytes a segment is read ahead by: replay reads many small batches.
const READ_AHEAD_BYTES: usize = 1 << 20;

fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SUFFIX}")
}

/// The segments in `dir`, sorted by first LSN. A file named like a segment that is not a
/// regular file (a FIFO, a directory, a device, a symlink to one) is refused with
/// [`Error::Invalid`] naming it: opening a FIFO would block forever. Other names are ignored.
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
        let Some(stem) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        let (20, Ok(lsn)) = (stem.len(), stem.parse::<u64>()) else {
            continue;
        };
        let path = entry.path();
        let mut kind = entry.file_type().map_err(Error::io(&path))?;
        if kind.is_symlink() {
            kind = std::fs::metadata(&path)
                .map_err(Error::io(&path))?
                .file_type();
        }
        if !kind.is_file() {
            return Err(not_regular(&path, kind));
        }
        out.push((lsn, path));
    }
    out.sort();
    Ok(out)
}

fn not_regular(path: &Path, kind: std::fs::FileType) -> Error {
    use std::os::unix::fs::FileTypeExt;
    let name = if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "device"
    } else {
        "special file"
    };
    Error::Invalid {
        reason: format!(
            "{} is a {name} where the WAL expects a regular file: remove or rename it",
            path.display()
        ),
    }
}

/// Opens `path` with `options`, non-blocking, and checks that it is a regular file: a name
/// swapped for a FIFO after [`list_segments`] looked at it cannot hang the open either.
fn open_checked(path: &Path, options: &OpenOptions) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = options.clone();
    options.custom_flags(libc::O_NONBLOCK);
    let file = options.open(path).map_err(Error::io(path))?;
    let kind = file.metadata().map_err(Error::io(path))?.file_type();
    if !kind.is_file() {
        return Err(not_regular(path, kind));
    }
    Ok(file)
}

/// Opens an existing regular file, refusing anything else before opening it (see
/// [`open_checked`]).
pub(crate) fn open_regular(path: &Path, options: &OpenOptions) -> Result<File> {
    let kind = std::fs::metadata(path)
        .map_err(Error::io(path))?
        .file_type();
    if !kind.is_file() {
        return Err(not_regular(path, kind));
    }
    open_checked(path, options)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// A segment file opened for reading, at its length when opened (a writer may still be
/// appending; what it adds later is not read), with a read-ahead window.
struct SegmentFile {
    first_lsn: u64,
    path: PathBuf,
    file: File,
    len: u64,
    window: Vec<u8>,
    window_at: u64,
}

/// What a [`SegmentFile`] holds at an offset.
enum At {
    /// A whole batch that passed every check.
    Batch(BatchHeader),
    /// No batch: reading stops here.
    Stop(Stop),
}

/// Why reading a segment stopped.
enum Stop {
    /// The end of the file.
    End,
    /// Not a valid batch: damage (`Some`, the failed check) or a batch that the file ends
    /// inside (`None`).
    Damaged(Option<Error>),
}

impl SegmentFile {
    fn open(first_lsn: u64, path: &Path) -> Result<SegmentFile> {
        let file = open_regular(path, OpenOptions::new().read(true))?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        Ok(SegmentFile {
            first_lsn,
            path: path.to_owned(),
            file,
            len,
            window: Vec::new(),
            window_at: 0,
        })
    }

    fn location(&self, offset: u64) -> String {
        format!("{} at byte {offset}", self.path.display())
    }

    /// `len` bytes (at most [`READ_AHEAD_BYTES`]) at `offset`, from the read-ahead window.
    fn window_at(&mut self, offset: u64, len: usize) -> Result<&[u8]> {
        let end = offset + len as u64;
        if len > READ_AHEAD_BYTES || end > self.len {
            let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end");
            return Err(Error::io(&self.path)(e));
        }
        let window_end = self.window_at + self.window.len() as u64;
        if offset < self.window_at || end > window_end {
            let n = (self.len - offset).min(READ_AHEAD_BYTES as u64) as usize;
            self.window.resize(n, 0);
            self.window_at = offset;
            if let Err(e) = self.file.read_exact_at(&mut self.window, offset) {
                self.window.clear();
                return Err(Error::io(&self.path)(e));
            }
        }
        let start = (offset - self.window_at) as usize;
        Ok(&self.window[start..start + len])
    }

    /// Fills `dst` from `offset` (inside the file's length).
    fn read_at(&mut self, dst: &mut [u8], offset: u64) -> Result<()> {
        if dst.len() > READ_AHEAD_BYTES {
            return self
                .file
                .read_exact_at(dst, offset)
                .map_err(Error::io(&self.path));
        }
        dst.copy_from_slice(self.window_at(offset, dst.len())?);
        Ok(())
    }

    /// What lies at `offset`. A whole batch is verified (framing, LSNs, checksum); with `out`
    /// its framed bytes are kept there, without it they are checked a window at a time.
    /// Lengths are checked against the file before anything is allocated from them.
    fn batch_at(&mut self, offset: u64, out: Option<&mut Vec<u8>>) -> Result<At> {
        let remaining = self.len.saturating_sub(offset);
        if remaining == 0 {
            return Ok(At::Stop(Stop::End));
        }
        let mut head = [0u8; HEADER_BYTES];
        let head_len = HEADER_BYTES.min(remaining as usize);
        self.read_at(&mut head[..head_len], offset)?;
        let header = match batch::header(&head[..head_len], || self.location(offset)) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(At::Stop(Stop::Damaged(None))),
            Err(e) => return Ok(At::Stop(Stop::Damaged(Some(e)))),
        };
        let framed = header.framed_len() as u64;
        if framed > remaining {
            return Ok(At::Stop(Stop::Damaged(None)));
        }
        if let Some(buf) = out {
            buf.clear();
            buf.resize(framed as usize, 0);
            self.read_at(buf, offset)?;
            return Ok(match batch::decode(buf, || self.location(offset)) {
                Ok(Decoded::Batch(..)) => At::Batch(header),
                Ok(Decoded::Incomplete) => At::Stop(Stop::Damaged(None)),
                Err(e) => At::Stop(Stop::Damaged(Some(e))),
            });
        }
        let mut crc = batch::checksum_start(&head);
        let (mut at, end) = (offset + HEADER_BYTES as u64, offset + framed);
        while at < end {
            let n = ((end - at) as usize).min(READ_AHEAD_BYTES);
            crc = crc32c::crc32c_append(crc, self.window_at(at, n)?);
            at += n as u64;
        }
        if crc == batch::stored_checksum(&head) {
            Ok(At::Batch(header))
        } else {
            Ok(At::Stop(Stop::Damaged(Some(Error::Corrupt {
                what: "WAL batch checksum",
                location: self.location(offset),
            }))))
        }
    }

    /// Reads the valid batches from the start: where they end, the last LSN in them (the one
    /// before the segment's first if none), and what stopped the reading.
    fn scan(&mut self) -> Result<(u64, u64, Stop)> {
        let mut offset = 0;
        let mut last_lsn = self.first_lsn.saturating_sub(1);
        loop {
            match self.batch_at(offset, None)? {
                At::Batch(h) => {
                    offset += h.framed_len() as u64;
                    last_lsn = h.last_lsn;
                }
                At::Stop(stop) => return Ok((offset, last_lsn, stop)),
            }
        }
    }

    /// The first offset after `from` where a whole valid batch starts, if any: a batch that
    /// a crash could not have left after a torn one.
    fn valid_batch_after(&mut self, from: u64) -> Result<Option<(u64, BatchHeader)>> {
        const MAGIC: &[u8] = b"MPWB";
        let mut chunk = vec![0u8; READ_AHEAD_BYTES];
        let mut at = from;
        while at + HEADER_BYTES as u64 <= self.len {
            let n = ((self.len - at) as usize).min(chunk.len());
            self.file
                .read_exact_at(&mut chunk[..n], at)
                .map_err(Error::io(&self.path))?;
            for i in 0..n.saturating_sub(MAGIC.len() - 1) {
                if &chunk[i..i + MAGIC.len()] != MAGIC {
                    continue;
                }
                // Most false magics fail the header check here, before any more is read.
                if i + HEADER_BYTES <= n
                    && batch::header(&chunk[i..i + HEADER_BYTES], String::new).is_err()
                {
                    continue;
                }
                if let At::Batch(h) = self.batch_at(at + i as u64, None)? {
                    return Ok(Some((at + i as u64, h)));
                }
            }
            // The next chunk overlaps this one by a magic's length less one byte.
            at += (n - (MAGIC.len() - 1)) as u64;
        }
        Ok(None)
    }
}

/// The one rule for where a log's valid data ends (docs/wal.md, "Torn tail"), applied where
/// reading `seg` stopped: at `offset`, after LSN `last_lsn`, because of `stop`. `newest`:
/// whether `seg` is the log's newest segment; `acked`: the acknowledged-LSN watermark, if the
/// log has one. (A directory without segments is [`no_segments`]'s case.)
///
/// - Damage is a torn tail only at the end of the newest segment, when no valid batch follows
///   it and everything it could have held lies above the acknowledged LSN: `Ok(Some(_))`.
/// - Anything else that is damaged is [`Error::Corrupt`], and so is a log that ends (cleanly)
///   before its acknowledged LSN: a newer segment was lost or replaced by an older copy.
fn end_of_valid(
    seg: &mut SegmentFile,
    offset: u64,
    last_lsn: u64,
    stop: Stop,
    newest: bool,
    acked: Option<u64>,
) -> Result<Option<TornTail>> {
    let acked_above = acked.filter(|a| *a > last_lsn);
    let damage = match stop {
        Stop::End => {
            if let (true, Some(acked)) = (newest, acked_above) {
                return Err(Error::Corrupt {
                    what: "WAL (ends before its acknowledged LSN)",
                    location: format!(
                        "{}: the log ends at LSN {last_lsn}, but LSNs up to {acked} were \
                         acknowledged as durable (a newer segment is missing, or this one was \
                         replaced by an older copy)",
                        seg.location(offset)
                    ),
                });
            }
            return Ok(None);
        }
        // The location is said once, by the error below.
        Stop::Damaged(Some(Error::Corrupt { what, .. })) => format!("bad {what}"),
        Stop::Damaged(Some(e)) => e.to_string(),
        Stop::Damaged(None) => "a batch cut short by the end of the file".to_owned(),
    };
    if !newest {
        return Err(Error::Corrupt {
            what: "WAL segment (damaged before a later segment)",
            location: format!("{}: {damage}", seg.location(offset)),
        });
    }
    if let Some((at, h)) = seg.valid_batch_after(offset + 1)? {
        return Err(Error::Corrupt {
            what: "WAL segment (damage with a valid batch after it)",
            location: format!(
                "{}: {damage}; a valid batch (LSN {}..={}) follows at byte {at}, so this is \
                 not a torn tail; the segment was left as it is",
                seg.location(offset),
                h.first_lsn,
                h.last_lsn
            ),
        });
    }
    if let Some(acked) = acked_above {
        return Err(Error::Corrupt {
            what: "WAL segment (damage in acknowledged data)",
            location: format!(
                "{}: {damage}, after LSN {last_lsn}, but LSNs up to {acked} were acknowledged \
                 as durable; the segment was left as it is",
                seg.location(offset)
            ),
        });
    }
    let mut head = [0u8; HEADER_BYTES];
    let head_len = HEADER_BYTES.min((seg.len - offset) as usize);
    seg.read_at(&mut head[..head_len], offset)?;
    Ok(Some(TornTail {
        position: WalPosition::Local {
            segment: seg.first_lsn,
            offset,
        },
        bytes: seg.len - offset,
        last_lsn,
        declared_first_lsn: batch::peek_first_lsn(&head[..head_len]),
        acknowledged_lsn: acked,
    }))
}

/// The same rule for a directory without segments: nothing may have been acknowledged.
fn no_segments(dir: &Path, acked: Option<u64>) -> Result<()> {
    match acked.filter(|a| *a > 0) {
        Some(acked) => Err(Error::Corrupt {
            what: "WAL (no segments, but an acknowledged LSN)",
            location: format!(
                "{}: LSNs up to {acked} were acknowledged as durable, and no segment file is \
                 left",
                dir.display()
            ),
        }),
        None => Ok(()),
    }
}

/// The local segment sink.
pub struct LocalSegmentSink {
    dir: PathBuf,
    settings: SegmentSettings,
    file: Option<(u64, File, u64)>,
    watermark: Watermark,
    torn_tail: Option<TornTail>,
}

impl LocalSegmentSink {
    /// Opens the segment directory for appending, creating it if needed. A torn tail left by a
    /// crash is cut off the newest segment first, so that new batches follow valid ones, and
    /// reported ([`WalSink::take_torn_tail`]); damage that is not a torn tail (a valid batch
    /// follows it, or it lies at or below the acknowledged LSN) is [`Error::Corrupt`], and
    /// nothing is changed.
    pub fn open(dir: impl AsRef<Path>, settings: SegmentSettings) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        // Read before the segments (as the source does), though no writer runs now.
        let acked = watermark::read(&dir)?;
        let mut file = None;
        let mut torn_tail = None;
        let mut last_lsn = 0;
        match list_segments(&dir)?.pop() {
            None => no_segments(&dir, acked)?,
            Some((first, path)) => {
                let mut seg = SegmentFile::open(first, &path)?;
                let (valid_len, last, stop) = seg.scan()?;
                torn_tail = end_of_valid(&mut seg, valid_len, last, stop, true, acked)?;
                let mut f = open_checked(&path, OpenOptions::new().write(true))?;
                if let Some(torn) = &torn_tail {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = valid_len,
                        bytes = torn.bytes,
                        last_lsn = last,
                        acknowledged_lsn = ?acked,
                        "cutting a torn tail off the WAL"
                    );
                    f.set_len(valid_len).map_err(Error::io(&path))?;
                    f.sync_all().map_err(Error::io(&path))?;
                } else if settings.sync {
                    // What a killed writer wrote may still be only in the page cache; the
                    // watermark is raised over it below, so it must be durable first.
                    f.sync_data().map_err(Error::io(&path))?;
                }
                f.seek(SeekFrom::Start(valid_len))
                    .map_err(Error::io(&path))?;
                file = Some((first, f, valid_len));
                last_lsn = last;
            }
        }
        // Everything recovered counts as acknowledged from now on: replay hands its commit to
        // the job, which may act on it.
        let watermark = Watermark::open(&dir, last_lsn, settings.sync)?;
        Ok(LocalSegmentSink {
            dir,
            settings,
            file,
            watermark,
            torn_tail,
        })
    }

    /// The acknowledged LSN: every LSN up to it was durable when an append returned.
    pub fn acknowledged_lsn(&self) -> u64 {
        self.watermark.lsn()
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
            // Everything in the old segment is durable before anything in the new one, and
            // so is the watermark over it.
            self.sync()?;
            self.watermark.sync_now()?;
            let path = self.dir.join(segment_name(batch.first_lsn));
            let f = open_checked(
                &path,
                OpenOptions::new().create(true).truncate(true).write(true),
            )?;
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
        // Only after the sync, and before the caller learns of it: the watermark never
        // claims more than is durable, and covers everything acknowledged.
        self.watermark.raise(batch.last_lsn)?;
        Ok(position)
    }

    /// Group commit: all the batches, then one `fdatasync`, then the watermark.
    fn append_all(&mut self, batches: &[Batch<'_>]) -> Result<Vec<WalPosition>> {
        let positions = batches
            .iter()
            .map(|b| self.write(*b))
            .collect::<Result<Vec<_>>>()?;
        self.sync()?;
        if let Some(last) = batches.last() {
            self.watermark.raise(last.last_lsn)?;
        }
        Ok(positions)
    }

    fn truncate_below(&mut self, lsn: u64) -> Result<()> {
        let segments = list_segments(&self.dir)?;
        // A segment is wholly below `lsn` if the next one starts at or below it. The newest
        // segment is never removed, and the watermark stays: it speaks of LSNs, not files.
        for pair in segments.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= lsn {
                std::fs::remove_file(path).map_err(Error::io(path))?;
            }
        }
        sync_dir(&self.dir)
    }

    fn take_torn_tail(&mut self) -> Option<TornTail> {
        self.torn_tail.take()
    }
}

/// Reads batches back from local segments, in order, a batch at a time: memory stays at one
/// batch (plus a read-ahead window) however large the segments are. Where the valid data ends
/// follows the same rule as [`LocalSegmentSink::open`], without changing anything: a torn tail
/// ends the log and is reported ([`WalSource::torn_tail`]), other damage is
/// [`Error::Corrupt`].
pub struct LocalSegmentSource {
    segments: Vec<(u64, PathBuf)>,
    index: usize,
    /// The segment being read, where its next batch starts, and the last LSN read from it.
    current: Option<(SegmentFile, u64, u64)>,
    acked: Option<u64>,
    torn_tail: Option<TornTail>,
}

impl LocalSegmentSource {
    /// Reads the segments of `dir`, starting with the one that holds `from_lsn` (earlier
    /// batches of that segment are returned too; replay skips them by LSN).
    pub fn open(dir: impl AsRef<Path>, from_lsn: u64) -> Result<Self> {
        let dir = dir.as_ref();
        // The watermark first: a writer appending meanwhile writes it only after the batches
        // it covers, so every one of them is in the files listed and read after it.
        let acked = watermark::read(dir)?;
        let segments = list_segments(dir)?;
        if segments.is_empty() {
            no_segments(dir, acked)?;
        }
        let start = segments
            .iter()
            .rposition(|(first, _)| *first <= from_lsn)
            .unwrap_or(0);
        Ok(LocalSegmentSource {
            segments,
            index: start,
            current: None,
            acked,
            torn_tail: None,
        })
    }

    /// The acknowledged-LSN watermark read when the source was opened (`None`: the directory
    /// has no watermark file, a log written by an older version or never opened for writing).
    pub fn acknowledged_lsn(&self) -> Option<u64> {
        self.acked
    }
}

impl WalSource for LocalSegmentSource {
    fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
        loop {
            let (mut seg, offset, last_lsn) = match self.current.take() {
                Some(current) => current,
                None => {
                    let Some((first, path)) = self.segments.get(self.index) else {
                        return Ok(None);
                    };
                    (SegmentFile::open(*first, path)?, 0, first.saturating_sub(1))
                }
            };
            let mut bytes = Vec::new();
            match seg.batch_at(offset, Some(&mut bytes))? {
                At::Batch(h) => {
                    let position = WalPosition::Local {
                        segment: seg.first_lsn,
                        offset,
                    };
                    self.current = Some((seg, offset + bytes.len() as u64, h.last_lsn));
                    return Ok(Some(StoredBatch { position, bytes }));
                }
                At::Stop(stop) => {
                    let newest = self.index + 1 == self.segments.len();
                    let torn = end_of_valid(&mut seg, offset, last_lsn, stop, newest, self.acked)?;
                    self.torn_tail = torn.or(self.torn_tail.take());
                    self.index += 1;
                }
            }
        }
    }

    fn torn_tail(&self) -> Option<TornTail> {
        self.torn_tail.clone()
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

    /// One framed batch of `payload_bytes` for `lsn` (one record, any bytes).
    fn big_batch(lsn: u64, payload_bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        batch::encode(lsn, 1, 0, &vec![lsn as u8; payload_bytes], &mut out);
        out
    }

    #[test]
    fn batches_larger_than_the_read_ahead_window_are_read_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let framed: Vec<_> = [(1, 100), (2, 3 * READ_AHEAD_BYTES + 17), (3, 100)]
            .into_iter()
            .map(|(lsn, n)| big_batch(lsn, n))
            .collect();
        std::fs::write(dir.path().join(segment_name(1)), framed.concat()).unwrap();
        assert_eq!(read_all(dir.path()).unwrap(), framed);
        let mut seg = SegmentFile::open(1, &dir.path().join(segment_name(1))).unwrap();
        let (end, last, stop) = seg.scan().unwrap();
        assert_eq!((end, last), (framed.concat().len() as u64, 3));
        assert!(matches!(stop, Stop::End));
        // A flip deep inside the large payload fails its checksum.
        let mut bytes = framed.concat();
        bytes[framed[0].len() + 2 * READ_AHEAD_BYTES] ^= 1;
        std::fs::write(dir.path().join(segment_name(1)), &bytes).unwrap();
        let mut seg = SegmentFile::open(1, &dir.path().join(segment_name(1))).unwrap();
        let (end, _, stop) = seg.scan().unwrap();
        assert_eq!(end, framed[0].len() as u64);
        assert!(matches!(stop, Stop::Damaged(Some(Error::Corrupt { .. }))));
    }

    #[test]
    fn a_valid_batch_is_found_after_damage_wherever_it_starts() {
        // Around the search's chunk boundary too: the magic split across two chunks.
        for at in [
            1,
            43,
            44,
            READ_AHEAD_BYTES - 2,
            READ_AHEAD_BYTES,
            READ_AHEAD_BYTES + 5,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(segment_name(1));
            let mut bytes = vec![0xee; at];
            bytes.extend_from_slice(&big_batch(9, 10));
            std::fs::write(&path, &bytes).unwrap();
            let mut seg = SegmentFile::open(1, &path).unwrap();
            let found = seg
                .valid_batch_after(1)
                .unwrap()
                .map(|(o, h)| (o, h.first_lsn));
            assert_eq!(found, Some((at as u64, 9)), "at {at}");
            // Not a torn tail, for the sink or the source.
            let err = LocalSegmentSink::open(dir.path(), SegmentSettings::default())
                .err()
                .unwrap();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            assert!(matches!(read_all(dir.path()), Err(Error::Corrupt { .. })));
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
    }
}
