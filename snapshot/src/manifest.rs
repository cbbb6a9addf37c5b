//! The manifest: what a snapshot is. Its data files with their key-group ranges, sizes and
//! checksums; the WAL commit marker (LSN, position) and the source offsets the state reflects;
//! the states; the writer's epoch. Encoded as this crate's
//! `proto/millpond/snapshot/v1/manifest.proto` inside a checksummed frame; byte by byte in
//! docs/snapshot.md ("Manifest").
//!
//! ```text
//! magic "MPMF" | version u16 LE (3; 1 and 2 still read) | reserved u16 (0)
//! | payload length u32 LE | payload (protobuf) | CRC-32C u32 LE of everything before it
//! ```

use std::time::Duration;

use millpond_state::{StateSchema, TtlConfig, TtlUpdateType, TtlVisibility};
use millpond_wal::{SourceOffset, WalPosition};
use prost::Message;

use crate::data_file::{DataFile, FileId};
use crate::digest::FileDigest;
use crate::error::{Error, Result};

/// Generated from this crate's `proto/millpond/snapshot/v1/manifest.proto`; the types it
/// shares with the WAL (`StateKind`, `SourceOffset`) are re-exported from `millpond_wal::proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/millpond.snapshot.v1.rs"));
    pub use millpond_wal::proto::{SourceOffset, StateKind};
}

const MAGIC: [u8; 4] = *b"MPMF";
/// Version 3 puts the files in partitions and runs (delta snapshots); version 2 added each
/// file's digest and id. An older reader refuses a newer version rather than misread it;
/// versions 1 and 2 are still read, as one bottom run per partition.
const VERSION: u16 = 3;
const VERSION_1: u16 = 1;
/// Partitions an archive is cut into when its first snapshot chooses them.
pub const DEFAULT_PARTITIONS: u16 = 16;
/// Bounds beyond which a manifest is damage, not a big state (docs/snapshot.md).
const MAX_PARTITIONS: usize = 32768;
const MAX_RUNS: usize = 1024;
const MAX_RUN_FILES: usize = 65536;
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
    /// Runs of a partition merged into fewer: the previous manifest's state, LSN and
    /// offsets.
    Compaction,
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

/// The last part of archive path `path`: the name of a data file's local copies.
pub(crate) fn local_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl FileRef {
    /// The name of the file's local copies (a restore's, a running instance's `base/`): the
    /// last part of its archive path.
    pub fn local_name(&self) -> &str {
        local_name(&self.path)
    }

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

/// What a run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// The changes of one snapshot (or the merge of several): full entries, tombstones and
    /// operand chains, folded over the runs below it.
    Delta,
    /// Full entries only: the state below every delta run of its partition.
    Bottom,
}

/// Data files with ascending, disjoint key-group ranges inside one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Delta or bottom.
    pub kind: RunKind,
    /// The newest change the run holds (the LSN of the snapshot that wrote it).
    pub upto_lsn: u64,
    /// Sequence of the manifest that wrote it.
    pub written_by: u64,
    /// Its files, in key order.
    pub files: Vec<FileRef>,
}

/// Consecutive key groups whose changes go to the same runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// First key group (inclusive).
    pub first_key_group: u16,
    /// Last key group (inclusive).
    pub last_key_group: u16,
    /// The runs a read consults, newest first; a bottom run, if any, is last.
    pub runs: Vec<Run>,
}

impl Partition {
    /// Whether key group `kg` is in the partition.
    pub fn contains(&self, kg: u16) -> bool {
        self.first_key_group <= kg && kg <= self.last_key_group
    }

    /// Whether the partition's state is one run of full entries (or nothing): what a reader
    /// can serve without folding.
    pub fn is_flat(&self) -> bool {
        match self.runs.as_slice() {
            [] => true,
            [only] => only.kind == RunKind::Bottom,
            _ => false,
        }
    }
}

/// Cuts key groups `0..max_key_groups` into at most `partitions` ranges of near-equal size,
/// moving each cut that would fall inside one of `files` (ascending, disjoint) to the file's
/// start, so that every file lies inside one range. The files of each range become its
/// bottom run, at `lsn`.
pub(crate) fn cut_partitions(
    max_key_groups: u16,
    partitions: u16,
    files: &[FileRef],
    lsn: u64,
) -> Vec<Partition> {
    let n = u32::from(max_key_groups);
    let p = u32::from(partitions.clamp(1, max_key_groups.max(1)));
    let mut starts: Vec<u16> = Vec::new();
    for i in 0..p {
        let mut start = (i * n / p) as u16;
        if let Some(f) = files
            .iter()
            .find(|f| f.first_key_group < start && start <= f.last_key_group)
        {
            start = f.first_key_group;
        }
        if starts.last().is_none_or(|&s| s < start) || starts.is_empty() {
            starts.push(start);
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (i, &first) in starts.iter().enumerate() {
        let last = starts
            .get(i + 1)
            .map_or(max_key_groups.saturating_sub(1), |&next| next - 1);
        let inside: Vec<FileRef> = files
            .iter()
            .filter(|f| first <= f.first_key_group && f.last_key_group <= last)
            .cloned()
            .collect();
        let runs = if inside.is_empty() {
            Vec::new()
        } else {
            vec![Run {
                kind: RunKind::Bottom,
                upto_lsn: lsn,
                written_by: inside.iter().map(|f| f.written_by).max().unwrap_or(0),
                files: inside,
            }]
        };
        out.push(Partition {
            first_key_group: first,
            last_key_group: last,
            runs,
        });
    }
    out
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
    /// The partitions, ascending, with their runs; empty until the first snapshot chooses
    /// them. Every data file of the snapshot is in one run of one partition.
    pub partitions: Vec<Partition>,
    /// The instance's clock (the one TTL reads), read before the snapshot fixed `lsn`: no
    /// change after `lsn` was made earlier than this, less the time it waited to be logged.
    /// Compaction drops what has expired by this time less
    /// [`CompactionSettings::ttl_margin_ms`](crate::compaction::CompactionSettings). 0:
    /// unknown, so compaction drops nothing expired.
    pub captured_at_ms: u64,
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
            partitions: Vec::new(),
            captured_at_ms: 0,
        }
    }

    /// Every data file of the snapshot: partition by partition, runs newest first.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.partitions
            .iter()
            .flat_map(|p| p.runs.iter().flat_map(|r| r.files.iter()))
    }

    /// Every run of the snapshot, with its partition.
    pub fn runs(&self) -> impl Iterator<Item = (&Partition, &Run)> {
        self.partitions
            .iter()
            .flat_map(|p| p.runs.iter().map(move |r| (p, r)))
    }

    /// Entries over all files of all runs. A key changed since the bottom run counts once per
    /// run holding it, so with delta runs this bounds the keys from above.
    pub fn total_entries(&self) -> u64 {
        self.files().map(|f| f.entries).sum()
    }

    /// Bytes over all files.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|f| f.bytes).sum()
    }

    /// The files holding keys of key groups `start..end`, of every run.
    pub fn files_for(&self, start: u16, end: u16) -> impl Iterator<Item = &FileRef> {
        self.files().filter(move |f| f.overlaps(start, end))
    }

    /// Whether every partition is one bottom run (or empty): the state is its files' entries
    /// as they are, no run folds over another.
    pub fn is_flat(&self) -> bool {
        self.partitions.iter().all(Partition::is_flat)
    }

    /// The partition holding key group `kg`, if any.
    pub fn partition_of(&self, kg: u16) -> Option<&Partition> {
        let i = self.partitions.partition_point(|p| p.last_key_group < kg);
        self.partitions.get(i).filter(|p| p.contains(kg))
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
        if !(VERSION_1..=VERSION).contains(&version) || body[6..8] != [0, 0] {
            return Err(corrupt("manifest version"));
        }
        let len = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
        if len != body.len() - HEADER_BYTES {
            return Err(corrupt("manifest (payload length)"));
        }
        let p = proto::Manifest::decode(&body[HEADER_BYTES..])
            .map_err(|_| corrupt("manifest payload"))?;
        Manifest::from_proto(p, version).ok_or_else(|| corrupt("manifest fields"))
    }

    fn to_proto(&self) -> proto::Manifest {
        proto::Manifest {
            sequence: self.sequence,
            id: self.id.clone(),
            parent_id: self.parent_id.clone().unwrap_or_default(),
            writer_epoch: self.writer_epoch,
            created_at_ms: self.created_at_ms,
            captured_at_ms: self.captured_at_ms,
            kind: match self.kind {
                ManifestKind::Snapshot => proto::ManifestKind::Snapshot,
                ManifestKind::Claim => proto::ManifestKind::Claim,
                ManifestKind::Compaction => proto::ManifestKind::Compaction,
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
            files: Vec::new(),
            total_entries: self.total_entries(),
            total_bytes: self.total_bytes(),
            partitions: self
                .partitions
                .iter()
                .map(|p| proto::Partition {
                    first_key_group: u32::from(p.first_key_group),
                    last_key_group: u32::from(p.last_key_group),
                    runs: p
                        .runs
                        .iter()
                        .map(|r| proto::Run {
                            kind: match r.kind {
                                RunKind::Delta => proto::RunKind::Delta,
                                RunKind::Bottom => proto::RunKind::Bottom,
                            } as i32,
                            upto_lsn: r.upto_lsn,
                            written_by: r.written_by,
                            files: r.files.iter().map(file_to_proto).collect(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// `None` if a field is out of range or the files break the manifest's invariants.
    /// `version` is the frame's: versions 1 and 2 hold a flat list of files, read as one
    /// bottom run per partition; version 3 holds partitions.
    fn from_proto(p: proto::Manifest, version: u16) -> Option<Manifest> {
        let kind = match proto::ManifestKind::try_from(p.kind).ok()? {
            proto::ManifestKind::Snapshot => ManifestKind::Snapshot,
            proto::ManifestKind::Claim => ManifestKind::Claim,
            proto::ManifestKind::Compaction if version >= VERSION => ManifestKind::Compaction,
            proto::ManifestKind::Compaction | proto::ManifestKind::Unspecified => return None,
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
        let partitions = if version < VERSION {
            if !p.partitions.is_empty() {
                return None;
            }
            let mut files: Vec<FileRef> = Vec::with_capacity(p.files.len());
            for f in p.files {
                let file = file_from_proto(f, max_key_groups)?;
                if files
                    .last()
                    .is_some_and(|prev| prev.last_key_group >= file.first_key_group)
                {
                    return None;
                }
                files.push(file);
            }
            cut_partitions(max_key_groups, DEFAULT_PARTITIONS, &files, p.lsn)
        } else {
            if !p.files.is_empty() || p.partitions.len() > MAX_PARTITIONS {
                return None;
            }
            let mut paths = std::collections::HashSet::new();
            let mut partitions: Vec<Partition> = Vec::with_capacity(p.partitions.len());
            for part in p.partitions {
                let first = u16::try_from(part.first_key_group).ok()?;
                let last = u16::try_from(part.last_key_group).ok()?;
                let ordered = partitions
                    .last()
                    .is_none_or(|prev| prev.last_key_group < first);
                if first > last || last >= max_key_groups || !ordered {
                    return None;
                }
                if part.runs.len() > MAX_RUNS {
                    return None;
                }
                let mut runs: Vec<Run> = Vec::with_capacity(part.runs.len());
                for r in part.runs {
                    let kind = match proto::RunKind::try_from(r.kind).ok()? {
                        proto::RunKind::Delta => RunKind::Delta,
                        proto::RunKind::Bottom => RunKind::Bottom,
                        proto::RunKind::Unspecified => return None,
                    };
                    // A bottom run is last; LSNs do not increase going down.
                    if runs.last().is_some_and(|prev| {
                        prev.kind == RunKind::Bottom || prev.upto_lsn < r.upto_lsn
                    }) || r.upto_lsn > p.lsn
                        || r.files.is_empty()
                        || r.files.len() > MAX_RUN_FILES
                    {
                        return None;
                    }
                    let mut files: Vec<FileRef> = Vec::with_capacity(r.files.len());
                    for f in r.files {
                        let file = file_from_proto(f, max_key_groups)?;
                        if file.first_key_group < first
                            || file.last_key_group > last
                            || files
                                .last()
                                .is_some_and(|prev| prev.last_key_group >= file.first_key_group)
                            || !paths.insert(file.path.clone())
                        {
                            return None;
                        }
                        files.push(file);
                    }
                    runs.push(Run {
                        kind,
                        upto_lsn: r.upto_lsn,
                        written_by: r.written_by,
                        files,
                    });
                }
                partitions.push(Partition {
                    first_key_group: first,
                    last_key_group: last,
                    runs,
                });
            }
            partitions
        };
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
            partitions,
            captured_at_ms: p.captured_at_ms,
        };
        (m.total_entries() == p.total_entries && m.total_bytes() == p.total_bytes).then_some(m)
    }
}

fn file_to_proto(f: &FileRef) -> proto::DataFileRef {
    proto::DataFileRef {
        path: f.path.clone(),
        first_key_group: u32::from(f.first_key_group),
        last_key_group: u32::from(f.last_key_group),
        bytes: f.bytes,
        entries: f.entries,
        crc32c: f.crc32c,
        written_by: f.written_by,
        xxh3_128: f.digest.map(|d| d.0.to_vec()).unwrap_or_default(),
        file_id: f.file_id.map(|id| id.0.to_vec()).unwrap_or_default(),
    }
}

/// A file's entry, checked on its own: key groups in order and in range, a path in `data/`.
fn file_from_proto(f: proto::DataFileRef, max_key_groups: u16) -> Option<FileRef> {
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
    (file.first_key_group <= file.last_key_group
        && file.last_key_group < max_key_groups
        && file.path.starts_with("data/"))
    .then_some(file)
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

    fn file() -> FileRef {
        FileRef {
            path: "data/a.mpdf".into(),
            first_key_group: 1,
            last_key_group: 3,
            bytes: 100,
            entries: 7,
            crc32c: 42,
            written_by: 2,
            digest: Some(FileDigest([7; 16])),
            file_id: Some(FileId([9; 16])),
        }
    }

    fn sample() -> Manifest {
        let mut m = Manifest::empty(16);
        m.sequence = 2;
        m.lsn = 5;
        m.id = "00000000000000000002-0000000000000001".into();
        m.kind = ManifestKind::Snapshot;
        m.partitions = cut_partitions(16, DEFAULT_PARTITIONS, &[file()], 5);
        m
    }

    /// `encode` with the frame's version set to `version` (versions 1 and 2: the files as a
    /// flat list) and the CRC fixed up.
    fn reframed(m: &Manifest, version: u16, edit: impl FnOnce(&mut proto::Manifest)) -> Vec<u8> {
        let mut p = m.to_proto();
        if version < VERSION {
            p.partitions.clear();
            p.files = m.files().map(file_to_proto).collect();
        }
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

    fn fields_error(bytes: &[u8]) -> bool {
        matches!(
            Manifest::decode(bytes, "t"),
            Err(Error::Corrupt {
                what: "manifest fields",
                ..
            })
        )
    }

    #[test]
    fn partitions_cut_around_files_and_cover_every_key_group() {
        let m = sample();
        let ranges: Vec<(u16, u16)> = m
            .partitions
            .iter()
            .map(|p| (p.first_key_group, p.last_key_group))
            .collect();
        assert_eq!(ranges[..3], [(0, 0), (1, 3), (4, 4)]);
        assert_eq!(ranges.len(), 14);
        assert_eq!(ranges.last(), Some(&(15, 15)));
        assert_eq!(m.partitions[1].runs[0].kind, RunKind::Bottom);
        assert_eq!(m.partition_of(2).map(|p| p.first_key_group), Some(1));
        // No files: even cuts.
        let even = cut_partitions(128, 16, &[], 0);
        assert_eq!(even.len(), 16);
        assert!(even
            .iter()
            .all(|p| p.last_key_group - p.first_key_group == 7));
        // Fewer key groups than partitions: one each.
        assert_eq!(cut_partitions(3, 16, &[], 0).len(), 3);
    }

    #[test]
    fn version_3_round_trips_and_older_versions_read_as_bottom_runs() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 3);
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), m);
        assert_eq!(Manifest::decode(&reframed(&m, 2, |_| {}), "t").unwrap(), m);
        let mut old = sample();
        old.partitions[1].runs[0].files[0].digest = None;
        old.partitions[1].runs[0].files[0].file_id = None;
        assert_eq!(
            Manifest::decode(&reframed(&old, 1, |_| {}), "t").unwrap(),
            old
        );
        assert!(matches!(
            Manifest::decode(&reframed(&m, 4, |_| {}), "t"),
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
            assert!(fields_error(&bytes));
        }
    }

    #[test]
    fn partitions_and_runs_that_break_the_rules_are_refused() {
        let m = sample();
        type Edit = Box<dyn Fn(&mut proto::Manifest)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "files beside partitions",
                Box::new(|p| p.files.push(p.partitions[1].runs[0].files[0].clone())),
            ),
            (
                "partitions out of order",
                Box::new(|p| p.partitions.swap(0, 1)),
            ),
            (
                "a partition past the key groups",
                Box::new(|p| p.partitions.last_mut().unwrap().last_key_group = 16),
            ),
            (
                "a file outside its partition",
                Box::new(|p| p.partitions[1].runs[0].files[0].last_key_group = 4),
            ),
            (
                "a run above the manifest's lsn",
                Box::new(|p| p.partitions[1].runs[0].upto_lsn = 6),
            ),
            (
                "a run without files",
                Box::new(|p| p.partitions[1].runs[0].files.clear()),
            ),
            (
                "a run of unknown kind",
                Box::new(|p| p.partitions[1].runs[0].kind = 9),
            ),
            (
                "a delta below the bottom",
                Box::new(|p| {
                    let mut delta = p.partitions[1].runs[0].clone();
                    delta.kind = proto::RunKind::Delta as i32;
                    delta.files[0].path = "data/b.mpdf".into();
                    p.partitions[1].runs.push(delta);
                    p.total_entries += 7;
                    p.total_bytes += 100;
                }),
            ),
            (
                "a file named twice",
                Box::new(|p| {
                    let mut delta = p.partitions[1].runs[0].clone();
                    delta.kind = proto::RunKind::Delta as i32;
                    p.partitions[1].runs.insert(0, delta);
                    p.total_entries += 7;
                    p.total_bytes += 100;
                }),
            ),
            (
                "a newer run below an older one",
                Box::new(|p| {
                    let mut delta = p.partitions[1].runs[0].clone();
                    delta.kind = proto::RunKind::Delta as i32;
                    delta.files[0].path = "data/b.mpdf".into();
                    p.partitions[1].runs[0].upto_lsn = 4;
                    p.partitions[1].runs.insert(0, delta);
                    p.partitions[1].runs.swap(0, 1);
                    p.partitions[1].runs[0].kind = proto::RunKind::Delta as i32;
                    p.total_entries += 7;
                    p.total_bytes += 100;
                }),
            ),
        ];
        for (what, edit) in edits {
            assert!(fields_error(&reframed(&m, 3, |p| edit(p))), "{what}");
        }
    }
}
