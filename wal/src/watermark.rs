//! The acknowledged-LSN watermark of a local segment directory: the file `ACKED`, which says up
//! to which LSN the log promised durability to its writer. A crash cannot tear a batch that was
//! synced before it was acknowledged, so damage at or below the watermark is corruption, never a
//! torn tail to cut (docs/wal.md, "Torn tail").
//!
//! ```text
//! the file: two 32-byte slots, written alternately (a torn write of one leaves the other)
//! slot:
//! 0   4  magic "MPWA"
//! 4   1  format version (1)
//! 5   3  reserved (0)
//! 8   8  acknowledged LSN, u64 LE: every LSN up to it was durable when it was written
//! 16 12  reserved (0)
//! 28  4  CRC-32C of bytes 0..28 of the slot, u32 LE
//! ```
//!
//! A reader takes the valid slot with the higher LSN. The value only grows, and it is written
//! only after the segments holding it were synced, so whatever of it reaches the disk never
//! leads the data it describes.
//!
//! ```
//! use millpond_wal::watermark;
//! let mut file = [0u8; watermark::FILE_BYTES];
//! watermark::encode_slot(41, &mut file[..watermark::SLOT_BYTES]);
//! watermark::encode_slot(42, &mut file[watermark::SLOT_BYTES..]);
//! assert_eq!(watermark::decode(&file).unwrap(), Some((42, 1)));
//! // One slot torn: the other still answers.
//! file[watermark::SLOT_BYTES + 9] ^= 0xff;
//! assert_eq!(watermark::decode(&file).unwrap(), Some((41, 0)));
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::segment::open_regular;

/// The watermark's file name in a segment directory.
pub const FILE_NAME: &str = "ACKED";
/// Bytes of one slot.
pub const SLOT_BYTES: usize = 32;
/// Bytes of the file: two slots.
pub const FILE_BYTES: usize = 2 * SLOT_BYTES;
const MAGIC: [u8; 4] = *b"MPWA";
const VERSION: u8 = 1;
const CHECKED_BYTES: usize = 28;
/// How stale the watermark on disk may get: it is synced at most this often while appending
/// (and at every segment roll and when the sink is dropped). A process crash loses nothing of it
/// (the page cache survives); a power loss can leave it this far behind the last acknowledgment.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Writes a slot holding `acked_lsn` into `out` (at least [`SLOT_BYTES`] long).
pub fn encode_slot(acked_lsn: u64, out: &mut [u8]) {
    let slot = &mut out[..SLOT_BYTES];
    slot.fill(0);
    slot[..4].copy_from_slice(&MAGIC);
    slot[4] = VERSION;
    slot[8..16].copy_from_slice(&acked_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&slot[..CHECKED_BYTES]);
    slot[CHECKED_BYTES..].copy_from_slice(&crc.to_le_bytes());
}

/// The LSN in a slot, or `None` if the slot fails a check.
fn decode_slot(slot: &[u8]) -> Option<u64> {
    let slot: &[u8; SLOT_BYTES] = slot.try_into().ok()?;
    let stored = u32::from_le_bytes(slot[CHECKED_BYTES..].try_into().ok()?);
    let valid = slot[..4] == MAGIC
        && slot[4] == VERSION
        && slot[5..8] == [0; 3]
        && slot[16..CHECKED_BYTES].iter().all(|b| *b == 0)
        && crc32c::crc32c(&slot[..CHECKED_BYTES]) == stored;
    valid.then(|| u64::from_le_bytes(slot[8..16].try_into().expect("8 bytes")))
}

/// The watermark in a whole file's bytes and the slot it came from: the valid slot with the
/// higher LSN. `None` if neither slot is valid; an error if the file has the wrong size.
pub fn decode(file: &[u8]) -> Result<Option<(u64, usize)>> {
    if file.len() != FILE_BYTES {
        return Err(Error::Corrupt {
            what: "WAL watermark (wrong size)",
            location: format!("{} bytes, expected {FILE_BYTES}", file.len()),
        });
    }
    Ok(file
        .chunks(SLOT_BYTES)
        .enumerate()
        .filter_map(|(i, slot)| decode_slot(slot).map(|lsn| (lsn, i)))
        .max())
}

/// Reads the watermark of the segment directory `dir`: `None` if it has no `ACKED` file (a log
/// written by an older version, or a new directory). Both slots damaged is
/// [`Error::Corrupt`]: the promise is unknown, so nothing may be cut.
pub fn read(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(FILE_NAME);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path)(e)),
        Ok(_) => {}
    }
    let file = open_regular(&path, OpenOptions::new().read(true))?;
    let len = file.metadata().map_err(Error::io(&path))?.len();
    if len != FILE_BYTES as u64 {
        return Err(Error::Corrupt {
            what: "WAL watermark (wrong size)",
            location: format!("{}: {len} bytes, expected {FILE_BYTES}", path.display()),
        });
    }
    let mut bytes = [0u8; FILE_BYTES];
    file.read_exact_at(&mut bytes, 0)
        .map_err(Error::io(&path))?;
    match decode(&bytes)? {
        Some((lsn, _)) => Ok(Some(lsn)),
        None => Err(Error::Corrupt {
            what: "WAL watermark (both slots damaged)",
            location: format!(
                "{}: the acknowledged LSN is unknown; if the log's segments are intact, \
                 delete the file to open the log without it",
                path.display()
            ),
        }),
    }
}

/// The writer's handle on `ACKED`: raises it in place after each synced group.
pub(crate) struct Watermark {
    path: PathBuf,
    file: File,
    lsn: u64,
    /// The slot the next write goes to: never the one holding the current value.
    next_slot: usize,
    /// Whether to sync it at all (the segments' `sync` setting).
    sync: bool,
    dirty: bool,
    last_sync: Instant,
}

impl Watermark {
    /// Opens (or creates) the watermark of `dir` and raises it to `lsn` if it is lower, synced
    /// before this returns. The caller must have synced every segment up to `lsn` first.
    pub(crate) fn open(dir: &Path, lsn: u64, sync: bool) -> Result<Watermark> {
        let path = dir.join(FILE_NAME);
        let current = read(dir)?;
        if current.is_none() {
            // Created whole under another name and renamed: a crash never leaves a short file
            // that a later open would have to call corrupt.
            let tmp = dir.join(format!("{FILE_NAME}.tmp"));
            let mut bytes = [0u8; FILE_BYTES];
            encode_slot(lsn, &mut bytes[..SLOT_BYTES]);
            encode_slot(lsn, &mut bytes[SLOT_BYTES..]);
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)
                .map_err(Error::io(&tmp))?;
            f.write_all(&bytes).map_err(Error::io(&tmp))?;
            if sync {
                f.sync_all().map_err(Error::io(&tmp))?;
            }
            std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
            if sync {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(Error::io(dir))?;
            }
        }
        let file = open_regular(&path, OpenOptions::new().read(true).write(true))?;
        let mut bytes = [0u8; FILE_BYTES];
        file.read_exact_at(&mut bytes, 0)
            .map_err(Error::io(&path))?;
        let (held, slot) = decode(&bytes)?.unwrap_or((0, 1));
        let mut w = Watermark {
            path,
            file,
            lsn: held,
            next_slot: 1 - slot,
            sync,
            dirty: false,
            last_sync: Instant::now(),
        };
        if lsn > held {
            w.raise(lsn)?;
            w.sync_now()?;
        }
        Ok(w)
    }

    /// The acknowledged LSN this handle last wrote or read.
    pub(crate) fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Raises the watermark to `lsn` (written in place, into the slot not holding the current
    /// value); synced if the last sync is [`SYNC_INTERVAL`] old. Call only once every LSN up to
    /// `lsn` is synced.
    pub(crate) fn raise(&mut self, lsn: u64) -> Result<()> {
        if lsn <= self.lsn {
            return Ok(());
        }
        let mut slot = [0u8; SLOT_BYTES];
        encode_slot(lsn, &mut slot);
        self.file
            .write_all_at(&slot, (self.next_slot * SLOT_BYTES) as u64)
            .map_err(Error::io(&self.path))?;
        self.next_slot = 1 - self.next_slot;
        self.lsn = lsn;
        self.dirty = true;
        if self.last_sync.elapsed() >= SYNC_INTERVAL {
            self.sync_now()?;
        }
        Ok(())
    }

    /// Makes the last written value durable.
    pub(crate) fn sync_now(&mut self) -> Result<()> {
        if self.dirty && self.sync {
            self.file.sync_data().map_err(Error::io(&self.path))?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        // Closing: the last value durable too (best effort: a failure only leaves it behind).
        let _ = self.sync_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_higher_valid_slot_wins_and_a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut w = Watermark::open(dir.path(), 0, true).unwrap();
        for lsn in 1..=5 {
            w.raise(lsn).unwrap();
        }
        drop(w);
        assert_eq!(read(dir.path()).unwrap(), Some(5));
        let path = dir.path().join(FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        // 5 went to the slot 4 did not: tearing 5's slot leaves 4, and the other way round.
        let (_, slot5) = decode(&bytes).unwrap().unwrap();
        for (slot, expect) in [(slot5, 4), (1 - slot5, 5)] {
            let mut torn = bytes.clone();
            for b in &mut torn[slot * SLOT_BYTES + 10..(slot + 1) * SLOT_BYTES] {
                *b = 0;
            }
            std::fs::write(&path, &torn).unwrap();
            assert_eq!(read(dir.path()).unwrap(), Some(expect));
        }
        // A writer continuing after a torn slot writes the torn one next, keeping the other.
        let mut torn = bytes.clone();
        torn[slot5 * SLOT_BYTES] ^= 1;
        std::fs::write(&path, &torn).unwrap();
        let mut w = Watermark::open(dir.path(), 0, true).unwrap();
        assert_eq!(w.lsn(), 4);
        w.raise(6).unwrap();
        drop(w);
        let after = std::fs::read(&path).unwrap();
        assert_eq!(decode(&after).unwrap(), Some((6, slot5)));
    }

    #[test]
    fn both_slots_damaged_or_a_wrong_size_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        drop(Watermark::open(dir.path(), 7, true).unwrap());
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, [0u8; FILE_BYTES]).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn open_never_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(Watermark::open(dir.path(), 9, true).unwrap());
        let w = Watermark::open(dir.path(), 3, true).unwrap();
        assert_eq!(w.lsn(), 9);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_finds_every_encoded_pair(a in proptest::num::u64::ANY, b in proptest::num::u64::ANY) {
            let mut file = [0u8; FILE_BYTES];
            encode_slot(a, &mut file[..SLOT_BYTES]);
            encode_slot(b, &mut file[SLOT_BYTES..]);
            let (lsn, _) = decode(&file).unwrap().unwrap();
            proptest::prop_assert_eq!(lsn, a.max(b));
        }
    }
}
