//! Pending-snapshot markers: `pending/<snapshot id>.mpp`, created by a snapshot writer before
//! it uploads the snapshot's first data file and deleted once its manifest is committed or the
//! writer gives up. Garbage collection never deletes a file of a snapshot whose marker is
//! live, whatever its grace period (docs/snapshot.md, "Retention and garbage collection").
//!
//! ```text
//! magic "MPPM" | version u16 LE (1) | reserved u16 (0) | writer epoch u64 LE
//! | created at (ms since 1970) u64 LE | id length u16 LE | id (ASCII)
//! | CRC-32C u32 LE of everything before it
//! ```

use crate::archive::{now_ms, Archive};
use crate::error::{Error, Result};
use crate::names::{marker_path, parse_id};

const MAGIC: [u8; 4] = *b"MPPM";
const VERSION: u16 = 1;
/// Bytes before the id.
const HEADER_BYTES: usize = 26;
/// The longest id a marker may hold: ids are 37 bytes; a little room for a later format.
const MAX_ID_BYTES: usize = 64;
/// A marker object larger than this is refused unread (markers are 67 bytes).
pub(crate) const MAX_MARKER_BYTES: u64 = 4096;

/// What a marker says: which snapshot is being written, and by which writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The snapshot id whose data files (`data/<id>-<n>.mpdf`) are being uploaded.
    pub(crate) id: String,
    /// The epoch the writer commits with: its claim's, or for a rescale into an empty
    /// archive the claim it is about to make.
    pub(crate) writer_epoch: u64,
    /// When the marker was made, in ms since 1970 (for people reading it; GC goes by the
    /// object's last-modified time).
    pub(crate) created_at_ms: u64,
}

impl Marker {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let id = self.id.as_bytes();
        let mut out = Vec::with_capacity(HEADER_BYTES + id.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.writer_epoch.to_le_bytes());
        out.extend_from_slice(&self.created_at_ms.to_le_bytes());
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the marker at `location`; any damage, an unknown version or an id that is not
    /// a snapshot id is `Error::Corrupt`.
    pub(crate) fn decode(bytes: &[u8], location: &str) -> Result<Marker> {
        let corrupt = |what: &'static str| Error::Corrupt {
            what,
            location: location.to_owned(),
        };
        if bytes.len() < HEADER_BYTES + 4 || bytes.len() > HEADER_BYTES + MAX_ID_BYTES + 4 {
            return Err(corrupt("pending marker (wrong length)"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(corrupt("pending marker (checksum)"));
        }
        let u16_at = |at: usize| u16::from_le_bytes([body[at], body[at + 1]]);
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8"));
        if body[..4] != MAGIC {
            return Err(corrupt("pending marker (magic)"));
        }
        if u16_at(4) != VERSION || u16_at(6) != 0 {
            return Err(corrupt("pending marker (unknown version)"));
        }
        let id_len = usize::from(u16_at(24));
        if HEADER_BYTES + id_len != body.len() {
            return Err(corrupt("pending marker (id length)"));
        }
        let id = std::str::from_utf8(&body[HEADER_BYTES..])
            .ok()
            .filter(|id| parse_id(id).is_some())
            .ok_or_else(|| corrupt("pending marker (not a snapshot id)"))?;
        Ok(Marker {
            id: id.to_owned(),
            writer_epoch: u64_at(8),
            created_at_ms: u64_at(16),
        })
    }
}

/// A snapshot being written: its marker is in the archive until [`PendingSnapshot::settle`]
/// or drop. Dropped unsettled (the writer gave up before its commit), it deletes the marker.
#[must_use = "the marker protects the snapshot's files only until this is dropped"]
pub(crate) struct PendingSnapshot<'a> {
    archive: &'a Archive,
    path: String,
    /// Whether the marker is still to be deleted on drop.
    armed: bool,
}

impl<'a> PendingSnapshot<'a> {
    /// Creates the marker of snapshot `id`, to be committed with `writer_epoch`. Call before
    /// the first data file of the snapshot is uploaded.
    pub(crate) fn begin(archive: &'a Archive, id: &str, writer_epoch: u64) -> Result<Self> {
        let marker = Marker {
            id: id.to_owned(),
            writer_epoch,
            created_at_ms: now_ms(),
        };
        let path = marker_path(id);
        // Armed before the put: a put that failed may still have landed.
        let pending = PendingSnapshot {
            archive,
            path,
            armed: true,
        };
        archive.put_small(&pending.path, marker.encode())?;
        Ok(pending)
    }

    /// Ends the marker after the commit gave `outcome`. The marker is deleted when the
    /// outcome is known (committed, or refused: fenced, conflict); after an object-store
    /// failure or timeout the manifest may have landed without the writer knowing, so the
    /// marker stays: garbage collection drops it once it is stale (its sequence taken, or
    /// its epoch below a newer claim).
    pub(crate) fn settle<T>(mut self, outcome: &Result<T>) {
        if let Err(Error::ObjectStore { .. } | Error::TimedOut { .. }) = outcome {
            self.armed = false;
        }
    }
}

impl Drop for PendingSnapshot<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a marker left behind is stale once its sequence is taken or a new
            // claim raises the epoch, and GC deletes it then.
            let _ = self.archive.delete(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker {
            id: crate::names::new_id(12),
            writer_epoch: 7,
            created_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_marker_round_trips_in_67_bytes() {
        let m = marker();
        let bytes = m.encode();
        assert_eq!(bytes.len(), 67);
        assert_eq!(Marker::decode(&bytes, "x").unwrap(), m);
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_caught() {
        let bytes = marker().encode();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(Marker::decode(&b, "x"), Err(Error::Corrupt { .. })),
                "bit {bit}"
            );
        }
        for len in 0..bytes.len() {
            assert!(Marker::decode(&bytes[..len], "x").is_err(), "length {len}");
        }
    }

    #[test]
    fn an_id_that_is_not_a_snapshot_id_is_refused() {
        let mut m = marker();
        m.id = "../manifests/00000000000000000001".into();
        assert!(matches!(
            Marker::decode(&m.encode(), "x"),
            Err(Error::Corrupt { .. })
        ));
    }
}
