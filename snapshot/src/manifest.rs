//! The manifest: what a snapshot is. Its data files with their key-group ranges, sizes and
//! checksums; the WAL commit marker (LSN, position) and the source offsets the state reflects;
//! the states; the writer's epoch. Encoded as `proto/millpond/snapshot/v1/manifest.proto`
//! inside a checksummed frame; byte by byte in docs/snapshot.md ("Manifest").
//!
//! ```text
//! magic "MPMF" | version u16 LE (2; 1 still read) | reserved u16 (0)
//! | payload length u32 LE | payload (protobuf) | CRC-32C u32 LE of everything before it
//! ```

use std::time::Duration;

use millpond_state::{StateSchema, TtlConfig, TtlUpdateType, TtlVisibility};
use millpond_wal::{SourceOffset, WalPosition};
use prost::Message;

use crate::data_file::{DataFile, FileId};
use crate::digest::FileDigest;
use crate::error::{Error, Result};

/// Generated from `proto/millpond/snapshot/v1/manifest.proto`; the types it shares with the
/// WAL (`StateKind`, `SourceOffset`) are re-exported from `millpond_wal::proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/millpond.snapshot.v1.rs"));
    pub use millpond_wal::proto::{SourceOffset, StateKind};
}

const MAGIC: [u8; 4] = *b"MPMF";
/// Version 2 added each file's digest and id. An older reader refuses it rather than skip
/// the checks it cannot make; version 1 is still read (its files have neither).
const VERSION: u16 = 2;
const VERSION_1: u16 = 1;
const HEADER_BYTES: usize = 12;
/// A manifest larger than this is refused as damaged (it would name millions of files).
pub const MAX_MANIFEST_BYTES: usize = 256 << 20;

/// Why a manifest exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A snapshot committed by a writer.
    Snapshot,
    /// A writer took over the archive: the previous manifest's state, with a higher epoch.
    Claim,
}

/// One data file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Object path relative to the archive root (`data/<name>.mpdf`).
    pub path: String,
    /// Key group of the first key (inclusive).
    pub first_key_group: u16,
    /// Key group of the last key (inclusive).
    pub last_key_group: u16,
    /// Bytes of the file.
    pub bytes: u64,
    /// Entries in it.
    pub entries: u64,
    /// CRC-32C of the whole file. Cannot tell two versions of a file apart on its own (see
    /// [`digest`](Self::digest)).
    pub crc32c: u32,
    /// Sequence of the manifest that wrote it (older than the manifest: reused).
    pub written_by: u64,
    /// XXH3-128 of the whole file: any change of content changes it. `None` for a file
    /// written before manifest version 2, which only the CRC-32C checks.
    pub digest: Option<FileDigest>,
    /// The id in the file's footer. `None` for a version-1 file, which has none.
    pub file_id: Option<FileId>,
}

impl FileRef {
    /// Whether the file holds keys of any key group in `start..end`.
    pub fn overlaps(&self, start: u16, end: u16) -> bool {
        self.first_key_group < end && self.last_key_group >= start
    }

    /// Checks that `file`, just opened from this entry's object, is the file this entry
    /// names: its id (when the manifest has one), size, key groups and entry count. What
    /// every reader for a manifest calls before it serves anything from the file; the
    /// whole-file digest is checked where the whole file is read (downloads, verify).
    pub fn check_opened(&self, file: &DataFile) -> Result<()> {
        let corrupt = |what| Error::Corrupt {
            what,
            location: self.path.clone(),
        };
        if let Some(id) = self.file_id {
            if file.file_id() != Some(id) {
                return Err(corrupt(
                    "data file (file id differs from the manifest: another version of the file)",
                ));
            }
        }
        if file.len_bytes() != self.bytes {
            return Err(corrupt("data file (size differs from the manifest)"));
        }
        if file.key_groups() != Some((self.first_key_group, self.last_key_group))
            || file.entries() != self.entries
        {
            return Err(corrupt(
                "data file (key groups or entries differ from the manifest)",
            ));
        }
        Ok(())
    }
}

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Position in the archive's sequence of manifests, from 1.
    pub sequence: u64,
    /// Unique id: `<sequence, 20 digits>-<16 hex digits>`.
    pub id: String,
    /// The snapshot this one was built from, if any.
    pub parent_id: Option<String>,
    /// Epoch of the writer that committed it.
    pub writer_epoch: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Snapshot or claim.
    pub kind: ManifestKind,
    /// Number of key groups of the state.
    pub max_key_groups: u16,
    /// LSN of the WAL commit marker the state reflects; 0: none (empty state).
    pub lsn: u64,
    /// Where that marker is in the WAL.
    pub wal_position: Option<WalPosition>,
    /// The source offsets to resume from.
    pub offsets: Vec<SourceOffset>,
    /// The states, with the ids their keys carry.
    pub states: Vec<StateSchema>,
    /// Data files in key order, with disjoint key-group ranges.
    pub files: Vec<FileRef>,
}

impl Manifest {
    /// The manifest of an empty archive's first claim.
    pub(crate) fn empty(max_key_groups: u16) -> Manifest {
        Manifest {
            sequence: 0,
            id: String::new(),
            parent_id: None,
            writer_epoch: 0,
            created_at_ms: 0,
            kind: ManifestKind::Claim,
            max_key_groups,
            lsn: 0,
            wal_position: None,
            offsets: Vec::new(),
            states: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Entries over all files.
    pub fn total_entries(&self) -> u64 {
        self.files.iter().map(|f| f.entries).sum()
    }

    /// Bytes over all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// The files holding keys of key groups `start..end`.
    pub fn files_for(&self, start: u16, end: u16) -> impl Iterator<Item = &FileRef> {
        self.files.iter().filter(move |f| f.overlaps(start, end))
    }

    /// Encodes the manifest in its frame.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.to_proto().encode_to_vec();
        let mut out = Vec::with_capacity(HEADER_BYTES + payload.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a framed manifest; `location` names it in errors.
    pub fn decode(bytes: &[u8], location: &str) -> Result<Manifest> {
        let corrupt = |what: &'static str| Error::Corrupt {
            what,
            location: location.to_owned(),
        };
        if bytes.len() < HEADER_BYTES + 4 || bytes.len() > MAX_MANIFEST_BYTES {
            return Err(corrupt("manifest (length)"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(corrupt("manifest checksum"));
        }
        if body[..4] != MAGIC {
            return Err(corrupt("manifest magic"));
        }
        let version = u16::from_le_bytes([body[4], body[5]]);
        if (version != VERSION && version != VERSION_1) || body[6..8] != [0, 0] {
            return Err(corrupt("manifest version"));
        }
        let len = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
        if len != body.len() - HEADER_BYTES {
            return Err(corrupt("manifest (payload length)"));
        }
        let p = proto::Manifest::decode(&body[HEADER_BYTES..])
            .map_err(|_| corrupt("manifest payload"))?;
        Manifest::from_proto(p).ok_or_else(|| corrupt("manifest fields"))
    }

    fn to_proto(&self) -> proto::Manifest {
        proto::Manifest {
            sequence: self.sequence,
            id: self.id.clone(),
            parent_id: self.parent_id.clone().unwrap_or_default(),
            writer_epoch: self.writer_epoch,
            created_at_ms: self.created_at_ms,
            kind: match self.kind {
                ManifestKind::Snapshot => proto::ManifestKind::Snapshot,
                ManifestKind::Claim => proto::ManifestKind::Claim,
            } as i32,
            max_key_groups: u32::from(self.max_key_groups),
            lsn: self.lsn,
            wal_position: self.wal_position.as_ref().map(|p| proto::WalPosition {
                position: Some(match p {
                    WalPosition::Local { segment, offset } => {
                        proto::wal_position::Position::Local(proto::LocalPosition {
                            segment: *segment,
                            offset: *offset,
                        })
                    }
                    WalPosition::Pulsar {
                        ledger_id,
                        entry_id,
                        partition,
                        batch_index,
                    } => proto::wal_position::Position::Pulsar(proto::PulsarPosition {
                        ledger_id: *ledger_id,
                        entry_id: *entry_id,
                        partition: *partition,
                        batch_index: *batch_index,
                    }),
                }),
            }),
            offsets: self.offsets.iter().map(proto::SourceOffset::from).collect(),
            states: self
                .states
                .iter()
                .map(|s| proto::StateSchema {
                    name: s.name.clone(),
                    kind: proto::StateKind::from(s.kind) as i32,
                    id: u32::from(s.id),
                    ttl_ms: s.ttl.map_or(0, |t| t.ttl_ms()),
                    ttl_on_read: s
                        .ttl
                        .is_some_and(|t| t.update_type == TtlUpdateType::OnReadAndWrite),
                    ttl_return_expired: s.ttl.is_some_and(|t| {
                        t.visibility == TtlVisibility::ReturnExpiredIfNotCleanedUp
                    }),
                })
                .collect(),
            files: self
                .files
                .iter()
                .map(|f| proto::DataFileRef {
                    path: f.path.clone(),
                    first_key_group: u32::from(f.first_key_group),
                    last_key_group: u32::from(f.last_key_group),
                    bytes: f.bytes,
                    entries: f.entries,
                    crc32c: f.crc32c,
                    written_by: f.written_by,
                    xxh3_128: f.digest.map(|d| d.0.to_vec()).unwrap_or_default(),
                    file_id: f.file_id.map(|id| id.0.to_vec()).unwrap_or_default(),
                })
                .collect(),
            total_entries: self.total_entries(),
            total_bytes: self.total_bytes(),
        }
    }

    /// `None` if a field is out of range or the files break the manifest's invariants.
    fn from_proto(p: proto::Manifest) -> Option<Manifest> {
        let kind = match proto::ManifestKind::try_from(p.kind).ok()? {
            proto::ManifestKind::Snapshot => ManifestKind::Snapshot,
            proto::ManifestKind::Claim => ManifestKind::Claim,
            proto::ManifestKind::Unspecified => return None,
        };
        let max_key_groups = u16::try_from(p.max_key_groups).ok()?;
        let wal_position = match p.wal_position {
            None => None,
            Some(w) => Some(match w.position? {
                proto::wal_position::Position::Local(l) => WalPosition::Local {
                    segment: l.segment,
                    offset: l.offset,
                },
                proto::wal_position::Position::Pulsar(x) => WalPosition::Pulsar {
                    ledger_id: x.ledger_id,
                    entry_id: x.entry_id,
                    partition: x.partition,
                    batch_index: x.batch_index,
                },
            }),
        };
        let mut states = Vec::with_capacity(p.states.len());
        for s in p.states {
            let kind = proto::StateKind::kind_of(s.kind)?;
            let ttl = (s.ttl_ms > 0).then(|| {
                TtlConfig::new(Duration::from_millis(s.ttl_ms))
                    .with_update_type(if s.ttl_on_read {
                        TtlUpdateType::OnReadAndWrite
                    } else {
                        TtlUpdateType::OnCreateAndWrite
                    })
                    .with_visibility(if s.ttl_return_expired {
                        TtlVisibility::ReturnExpiredIfNotCleanedUp
                    } else {
                        TtlVisibility::NeverReturnExpired
                    })
            });
            states.push(StateSchema {
                name: s.name,
                kind,
                ttl,
                id: u16::try_from(s.id).ok()?,
            });
        }
        let mut files = Vec::with_capacity(p.files.len());
        for f in p.files {
            let file = FileRef {
                path: f.path,
                first_key_group: u16::try_from(f.first_key_group).ok()?,
                last_key_group: u16::try_from(f.last_key_group).ok()?,
                bytes: f.bytes,
                entries: f.entries,
                crc32c: f.crc32c,
                written_by: f.written_by,
                digest: optional_16(&f.xxh3_128)?.map(FileDigest),
                file_id: optional_16(&f.file_id)?.map(FileId),
            };
            let ordered = files
                .last()
                .is_none_or(|prev: &FileRef| prev.last_key_group < file.first_key_group);
            if file.first_key_group > file.last_key_group
                || file.last_key_group >= max_key_groups
                || !ordered
                || !file.path.starts_with("data/")
            {
                return None;
            }
            files.push(file);
        }
        let m = Manifest {
            sequence: p.sequence,
            id: p.id,
            parent_id: (!p.parent_id.is_empty()).then_some(p.parent_id),
            writer_epoch: p.writer_epoch,
            created_at_ms: p.created_at_ms,
            kind,
            max_key_groups,
            lsn: p.lsn,
            wal_position,
            offsets: p.offsets.into_iter().map(SourceOffset::from).collect(),
            states,
            files,
        };
        (m.total_entries() == p.total_entries && m.total_bytes() == p.total_bytes).then_some(m)
    }
}

/// An optional 16-byte field: empty is `None`; any other length is damage (`None` outside).
fn optional_16(bytes: &[u8]) -> Option<Option<[u8; 16]>> {
    match bytes.len() {
        0 => Some(None),
        16 => {
            let mut b = [0; 16];
            b.copy_from_slice(bytes);
            Some(Some(b))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::empty(16);
        m.sequence = 2;
        m.id = "00000000000000000002-0000000000000001".into();
        m.kind = ManifestKind::Snapshot;
        m.files.push(FileRef {
            path: "data/a.mpdf".into(),
            first_key_group: 1,
            last_key_group: 3,
            bytes: 100,
            entries: 7,
            crc32c: 42,
            written_by: 2,
            digest: Some(FileDigest([7; 16])),
            file_id: Some(FileId([9; 16])),
        });
        m
    }

    /// `encode` with the frame's version set to `version` and the CRC fixed up.
    fn reframed(m: &Manifest, version: u16, edit: impl FnOnce(&mut proto::Manifest)) -> Vec<u8> {
        let mut p = m.to_proto();
        edit(&mut p);
        let payload = p.encode_to_vec();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn digests_and_ids_round_trip_in_version_2() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), m);
    }

    #[test]
    fn version_1_frames_are_read_without_digests_or_ids() {
        let mut m = sample();
        m.files[0].digest = None;
        m.files[0].file_id = None;
        let bytes = reframed(&m, 1, |_| {});
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), m);
        let bytes = reframed(&m, 3, |_| {});
        assert!(matches!(
            Manifest::decode(&bytes, "t"),
            Err(Error::Corrupt {
                what: "manifest version",
                ..
            })
        ));
    }

    #[test]
    fn a_digest_or_id_of_another_length_is_refused() {
        for field in 0..2 {
            let bytes = reframed(&sample(), 2, |p| {
                let f = &mut p.files[0];
                let v = if field == 0 {
                    &mut f.xxh3_128
                } else {
                    &mut f.file_id
                };
                v.pop();
            });
            assert!(matches!(
                Manifest::decode(&bytes, "t"),
                Err(Error::Corrupt {
                    what: "manifest fields",
                    ..
                })
            ));
        }
    }
}
