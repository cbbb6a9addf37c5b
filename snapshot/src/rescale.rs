//! Rescaling: the first snapshot of a new archive, holding exactly the entries of a key-group
//! range taken from the snapshots of one or more instances of a job (docs/snapshot.md,
//! "Rescaling").
//!
//! A split (1 → 2) is two calls, each with the one source and half the range; a merge (2 → 1)
//! is one call with both sources. Each source contributes the key groups of the range that
//! it owns. Source files that lie wholly inside a contribution are copied as they are (checked
//! against their manifest's size and CRC-32C on the way); files that straddle its edges are
//! read and only the entries of the contributed key groups are written again, in new files cut
//! at key-group boundaries near `target_file_bytes`. The manifest is committed last, with the
//! archive's commit protocol (a claim, then a conditional create of the next sequence).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use millpond_format::key::{key_group_of, range_start};
use millpond_format::CompositeKey;
use millpond_state::{KeyGroupRange, StateSchema};
use millpond_wal::SourceOffset;

use crate::archive::{data_path, new_id, now_ms, Archive};
use crate::data_file::DataFile;
use crate::error::{Error, Result};
use crate::fetch::download_to;
use crate::manifest::{cut_partitions, FileRef, Manifest, ManifestKind, DEFAULT_PARTITIONS};
use crate::pending::PendingSnapshot;
use crate::read_at::LocalFile;
use crate::runs::{FoldedMerge, Output, RunEntries};
use crate::writer::{commit_retrying, FileSplitter, SnapshotSettings};

/// One snapshot that a [`rescale`] takes entries from: an instance's archive and one of its
/// manifests.
#[derive(Debug, Clone, Copy)]
pub struct RescaleSource<'a> {
    /// The instance's archive.
    pub archive: &'a Archive,
    /// The snapshot (usually the archive's latest, [`Archive::latest`]).
    pub manifest: &'a Manifest,
    /// The key groups the instance owned. Entries of other key groups in its files (left
    /// over from before an earlier rescale) are ignored. `None`: whatever its files hold;
    /// then no other source may hold data in the same key groups, and nothing can check that
    /// the sources together cover the range (a key group that no source holds may be empty,
    /// or belong to an instance left out). Default: `None`.
    pub key_groups: Option<KeyGroupRange>,
}

impl<'a> RescaleSource<'a> {
    /// The snapshot `manifest` of `archive`, taking whatever key groups its files hold.
    pub fn new(archive: &'a Archive, manifest: &'a Manifest) -> Self {
        RescaleSource {
            archive,
            manifest,
            key_groups: None,
        }
    }

    /// The same source, owning only `key_groups` (the range of its instance:
    /// `KeyGroupRange::for_instance`).
    pub fn with_key_groups(self, key_groups: KeyGroupRange) -> Self {
        RescaleSource {
            key_groups: Some(key_groups),
            ..self
        }
    }

    /// "source N (URL, snapshot ID)", for messages.
    fn describe(&self, i: usize) -> String {
        format!(
            "source {} ({}, snapshot {})",
            i + 1,
            self.archive.url(),
            self.manifest.id
        )
    }
}

/// What [`rescale`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RescaleReport {
    /// The committed manifest (sequence 2 of the destination, above the claim at 1).
    pub manifest: Manifest,
    /// Data files written from filtered entries of source files that straddle the range.
    pub files_written: usize,
    /// Data files copied byte for byte from the sources (wholly inside the range).
    pub files_copied: usize,
    /// Entries in the new snapshot.
    pub entries: u64,
    /// Bytes of the new snapshot's files.
    pub bytes: u64,
    /// Seconds from start to commit.
    pub seconds: f64,
}

/// Builds, in the empty archive `dest`, a first snapshot holding exactly the entries of key
/// groups `key_groups` of `sources`: one instance's state for a job rescaled to a new
/// parallelism. Restore it with [`RestoreSettings::key_groups`] set to the same range.
///
/// The new manifest has:
/// - the union of the sources' states; a state in two sources must have the same kind, id
///   and TTL, and two states may not share an id (`Error::Invalid` otherwise);
/// - the union of the sources' offsets. A (topic, partition) in two sources must have the
///   same next offset, else `Error::Invalid`: the sources must be snapshots of the same
///   checkpoint. Taking the smaller offset would re-read records whose effects the state of
///   the other source already holds: exactly-once needs the state to reflect exactly the
///   offsets;
/// - LSN 0 and no WAL position: the job instance starts a new WAL (its next snapshot
///   replays that WAL from its start);
/// - the sources' `max_key_groups`, which must all be the same.
///
/// Checks, before anything is written (all `Error::Invalid`): at least one source, a
/// non-empty range within `max_key_groups`; no key group contributed by two sources (by their
/// `key_groups`, and by the key-group ranges of their files); when every source gives its
/// `key_groups`, that together they cover the range; and that `dest` holds no manifest.
///
/// Data files are uploaded first, then `dest` is claimed and the manifest created at the
/// next sequence (docs/snapshot.md, "Commit protocol"). A failure before the claim leaves
/// only unnamed files in `dest` (GC deletes them), so the call can simply be repeated; if
/// another writer claims `dest` meanwhile, the call fails (`Error::Invalid` or
/// `Error::Fenced`) and `dest` is no longer empty: use a new destination.
///
/// ```
/// use std::sync::Arc;
/// use millpond_snapshot::{rescale, Archive, RescaleSource, SnapshotSettings, SnapshotWriter};
/// use millpond_state::{KeyGroupRange, Store, StoreSettings, StringCodec, U64Codec, ValueStateDescriptor};
/// use millpond_wal::{open_local, LocalSegmentSource, SegmentSettings, SourceOffset, WalSettings};
///
/// let dir = tempfile::tempdir().unwrap();
/// let url = |name: &str| format!("file://{}", dir.path().join(name).display());
/// // One instance's state, committed to its WAL and snapshotted.
/// let (wal, _) = open_local(dir.path().join("wal"), 0, WalSettings::default(),
///     SegmentSettings::default(), |_c| Ok::<(), std::io::Error>(())).unwrap();
/// let wal = Arc::new(wal);
/// let store = Store::builder(dir.path().join("state")).change_sink_arc(wal.clone()).open().unwrap();
/// let counts = store.value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec)).unwrap();
/// for i in 0..100u64 {
///     counts.update(&format!("key-{i}"), &i).unwrap();
/// }
/// wal.commit(&[SourceOffset { topic: "in".into(), partition: 0, next_offset: 100 }]).unwrap().wait().unwrap();
/// let archive = Archive::open(&url("one")).unwrap();
/// let mut writer = SnapshotWriter::claim(archive.clone(), 128, SnapshotSettings::default()).unwrap();
/// let mut log = LocalSegmentSource::open(dir.path().join("wal"), 1).unwrap();
/// writer.snapshot_from_wal(&mut log, &store.schemas()).unwrap().unwrap();
///
/// // Split it for two instances: each destination gets the key groups of one.
/// let latest = archive.latest().unwrap().unwrap();
/// let mut entries = 0;
/// for (i, name) in ["two-0", "two-1"].into_iter().enumerate() {
///     let range = KeyGroupRange::for_instance(128, 2, i as u16);
///     let dest = Archive::open(&url(name)).unwrap();
///     let report = rescale(&[RescaleSource::new(&archive, &latest)], &dest, range,
///         &SnapshotSettings::default()).unwrap();
///     assert_eq!(report.manifest.offsets[0].next_offset, 100);
///     assert_eq!(report.manifest.lsn, 0);
///     entries += report.entries;
/// }
/// assert_eq!(entries, 100);
/// ```
///
/// [`RestoreSettings::key_groups`]: crate::RestoreSettings::key_groups
pub fn rescale(
    sources: &[RescaleSource<'_>],
    dest: &Archive,
    key_groups: KeyGroupRange,
    settings: &SnapshotSettings,
) -> Result<RescaleReport> {
    let started = Instant::now();
    let Some(first) = sources.first() else {
        return Err(invalid("no source snapshot: give at least one".into()));
    };
    let max_key_groups = first.manifest.max_key_groups;
    for (i, s) in sources.iter().enumerate().skip(1) {
        if s.manifest.max_key_groups != max_key_groups {
            return Err(invalid(format!(
                "{} has {} key groups, {} has {max_key_groups}: the sources must be \
                 instances of one job",
                s.describe(i),
                s.manifest.max_key_groups,
                first.describe(0)
            )));
        }
    }
    check_range(&key_groups, max_key_groups, "the range to rescale")?;
    for (i, s) in sources.iter().enumerate() {
        if let Some(r) = &s.key_groups {
            check_range(
                r,
                max_key_groups,
                &format!("the key groups of {}", s.describe(i)),
            )?;
        }
    }
    let states = merge_states(sources)?;
    let offsets = merge_offsets(sources)?;
    let plan = plan_pieces(sources, key_groups)?;

    if let Some(&seq) = dest.sequences()?.last() {
        return Err(invalid(format!(
            "the destination {} is not empty (it holds manifests up to sequence {seq}): \
             rescale writes the first snapshot of an archive; give a new, empty location \
             (or, if it is only what a failed rescale left, delete its manifests/ and data/)",
            dest.url()
        )));
    }
    // The claim of an empty archive is sequence 1 with epoch 1; this snapshot is the next.
    let sequence = 2;
    let id = new_id(sequence);
    // Before the first upload, with the epoch of the claim to come: GC keeps these files
    // while the marker is live, although nothing names them until the commit.
    let pending = PendingSnapshot::begin(dest, &id, 1)?;
    let temp_dir = settings.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    // Copied files are placed by closing the current file first.
    let mut out = FileSplitter::new(dest, &id, sequence, settings, 0, true);
    let mut files_copied = 0;
    for piece in &plan {
        let source = &sources[piece.source];
        if let Some(runs) = &piece.runs {
            // A partition with delta runs: its entries folded over them, written again.
            let mut temps = Vec::new();
            let mut entries: Vec<RunEntries<'_>> = Vec::new();
            let (first, last) = (piece.first, piece.last);
            for run in runs {
                let mut files = Vec::new();
                for f in run {
                    let local = temp_file(&temp_dir)?;
                    download_to(source.archive, f, &local, true)?;
                    let file = DataFile::open_source(Arc::new(LocalFile::open(&local).map_err(
                        |source| Error::Io {
                            path: local.display().to_string(),
                            source,
                        },
                    )?))?;
                    f.check_opened(&file)?;
                    temps.push(local);
                    files.push(file);
                }
                entries.push(Box::new(
                    files
                        .into_iter()
                        .flat_map(move |f| f.iter_from(&range_start(first)))
                        .filter(move |r| match r {
                            Ok((k, _)) => key_group_of(k).is_ok_and(|kg| kg <= last),
                            Err(_) => true,
                        }),
                ));
            }
            let merged = FoldedMerge::new(entries, Output::Full, source.manifest.id.clone())?;
            for entry in merged {
                let (key, value) = entry?;
                out.add(&key, &value)?;
            }
            drop(temps);
            continue;
        }
        let local = temp_file(&temp_dir)?;
        let digest = download_to(source.archive, &piece.file, &local, true)?;
        if piece.whole {
            out.close()?;
            let path = data_path(&id, out.written.len());
            upload_copy(dest, &local, &path)?;
            // The same bytes: the same id and digest. A file of a version-1 manifest gets the
            // digest of what was downloaded (and checked by CRC-32C) from here on.
            out.written.push(FileRef {
                path,
                written_by: sequence,
                digest: Some(digest),
                ..piece.file.clone()
            });
            files_copied += 1;
            continue;
        }
        let file = DataFile::open_source(Arc::new(LocalFile::open(&local).map_err(|source| {
            Error::Io {
                path: local.display().to_string(),
                source,
            }
        })?))?;
        piece.file.check_opened(&file)?;
        for entry in file.iter_from(&range_start(piece.first)) {
            let (key, value) = entry?;
            let kg = CompositeKey::parse(&key)
                .map_err(|_| Error::Corrupt {
                    what: "data file (a key shorter than its prefix)",
                    location: piece.file.path.clone(),
                })?
                .key_group;
            if kg > piece.last {
                break;
            }
            out.add(&key, &value)?;
        }
    }
    let files = out.finish()?;
    if files
        .windows(2)
        .any(|w| w[0].last_key_group >= w[1].first_key_group)
    {
        return Err(invalid(
            "internal: data files of the rescaled snapshot overlap".into(),
        ));
    }

    let claim = dest.claim(max_key_groups)?;
    if claim.sequence + 1 != sequence || claim.files().next().is_some() || !claim.states.is_empty()
    {
        return Err(invalid(format!(
            "another writer wrote to the destination {} during the rescale (its manifest {} \
             is there): the destination is not empty any more; rescale into a new location",
            dest.url(),
            claim.parent_id.as_deref().unwrap_or("?")
        )));
    }
    let manifest = Manifest {
        sequence,
        id,
        parent_id: Some(claim.id.clone()),
        writer_epoch: claim.writer_epoch,
        created_at_ms: now_ms(),
        kind: ManifestKind::Snapshot,
        max_key_groups,
        lsn: 0,
        wal_position: None,
        offsets,
        states,
        partitions: cut_partitions(max_key_groups, DEFAULT_PARTITIONS, &files, 0),
        // A new archive with its own WAL from LSN 0: no horizon carried over.
        captured_at_ms: 0,
    };
    let committed = commit_retrying(dest, &manifest);
    pending.settle(&committed);
    committed?;
    Ok(RescaleReport {
        files_written: manifest.files().count() - files_copied,
        files_copied,
        entries: manifest.total_entries(),
        bytes: manifest.total_bytes(),
        manifest,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn invalid(reason: String) -> Error {
    Error::Invalid { reason }
}

fn check_range(r: &KeyGroupRange, max_key_groups: u16, what: &str) -> Result<()> {
    if r.start >= r.end || r.end > max_key_groups {
        return Err(invalid(format!(
            "{what}, {}..{}, is not a non-empty range within the job's key groups \
             0..{max_key_groups}",
            r.start, r.end
        )));
    }
    Ok(())
}

/// The union of the sources' states, by id.
fn merge_states(sources: &[RescaleSource<'_>]) -> Result<Vec<StateSchema>> {
    // Name -> (schema, index of the first source that has it).
    let mut by_name: BTreeMap<&str, (&StateSchema, usize)> = BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        for st in &s.manifest.states {
            match by_name.get(st.name.as_str()) {
                Some(&(known, j)) if known != st => {
                    return Err(invalid(format!(
                        "state '{}' differs between the sources: {} has it as {} with id {} \
                         and TTL {:?}, {} as {} with id {} and TTL {:?}; the sources must be \
                         instances of one job",
                        st.name,
                        sources[j].describe(j),
                        known.kind,
                        known.id,
                        known.ttl,
                        s.describe(i),
                        st.kind,
                        st.id,
                        st.ttl
                    )))
                }
                Some(_) => {}
                None => {
                    by_name.insert(&st.name, (st, i));
                }
            }
        }
    }
    let mut states: Vec<StateSchema> = by_name.into_values().map(|(st, _)| st.clone()).collect();
    states.sort_by_key(|st| st.id);
    if let Some(w) = states.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(invalid(format!(
            "states '{}' and '{}' of different sources have the same id {}: their keys would \
             mix; the sources must be instances of one job",
            w[0].name, w[1].name, w[0].id
        )));
    }
    Ok(states)
}

/// The union of the sources' offsets; a (topic, partition) in two sources must agree.
fn merge_offsets(sources: &[RescaleSource<'_>]) -> Result<Vec<SourceOffset>> {
    let mut by_partition: BTreeMap<(&str, i32), (i64, usize)> = BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        for o in &s.manifest.offsets {
            let key = (o.topic.as_str(), o.partition);
            match by_partition.get(&key) {
                Some(&(next, j)) if next != o.next_offset => {
                    return Err(invalid(format!(
                        "{}/{}: {} resumes at offset {next}, {} at {}: the sources must be \
                         snapshots of the same checkpoint (the state has to reflect exactly \
                         the offsets it resumes from)",
                        o.topic,
                        o.partition,
                        sources[j].describe(j),
                        s.describe(i),
                        o.next_offset
                    )))
                }
                Some(_) => {}
                None => {
                    by_partition.insert(key, (o.next_offset, i));
                }
            }
        }
    }
    Ok(by_partition
        .into_iter()
        .map(|((topic, partition), (next_offset, _))| SourceOffset {
            topic: topic.to_owned(),
            partition,
            next_offset,
        })
        .collect())
}

/// What one source file contributes: key groups `first..=last` of it.
struct Piece {
    source: usize,
    file: FileRef,
    first: u16,
    last: u16,
    /// The file lies wholly inside the contribution: copied as it is.
    whole: bool,
    /// Instead of `file`: the files of a partition's runs, newest first, whose entries are
    /// folded (a partition of delta runs).
    runs: Option<Vec<Vec<FileRef>>>,
}

/// The source files to read, in key-group order, after checking that no key group comes
/// from two sources and, when every source gives its range, that the range is covered.
fn plan_pieces(sources: &[RescaleSource<'_>], range: KeyGroupRange) -> Result<Vec<Piece>> {
    // Each source's contribution: its own range (or all) within the requested one.
    let contributions: Vec<KeyGroupRange> = sources
        .iter()
        .map(|s| {
            let own = s.key_groups.unwrap_or(range);
            KeyGroupRange::new(own.start.max(range.start), own.end.min(range.end))
        })
        .collect();
    for (i, a) in contributions.iter().enumerate() {
        for (j, b) in contributions.iter().enumerate().skip(i + 1) {
            let (start, end) = (a.start.max(b.start), a.end.min(b.end));
            if sources[i].key_groups.is_some() && sources[j].key_groups.is_some() && start < end {
                return Err(invalid(format!(
                    "{} and {} both own key groups {start}..{end}: the sources' ranges must \
                     be disjoint",
                    sources[i].describe(i),
                    sources[j].describe(j)
                )));
            }
        }
    }
    if sources.iter().all(|s| s.key_groups.is_some()) {
        let mut owned: Vec<KeyGroupRange> = contributions
            .iter()
            .copied()
            .filter(|c| c.start < c.end)
            .collect();
        owned.sort_by_key(|c| c.start);
        let mut next = range.start;
        for c in &owned {
            if c.start > next {
                break;
            }
            next = next.max(c.end);
        }
        if next < range.end {
            let gap_end = owned
                .iter()
                .map(|c| c.start)
                .find(|&s| s > next)
                .unwrap_or(range.end);
            return Err(invalid(format!(
                "no source owns key groups {next}..{gap_end} of {}..{}: give the snapshots of \
                 every instance whose key groups the range holds",
                range.start, range.end
            )));
        }
    }

    let mut pieces = Vec::new();
    for (i, (s, c)) in sources.iter().zip(&contributions).enumerate() {
        if c.start >= c.end {
            continue;
        }
        for part in &s.manifest.partitions {
            if !part.is_flat() {
                let files = || part.runs.iter().flat_map(|r| &r.files);
                let (Some(lo), Some(hi)) = (
                    files()
                        .filter(|f| f.overlaps(c.start, c.end))
                        .map(|f| f.first_key_group)
                        .min(),
                    files()
                        .filter(|f| f.overlaps(c.start, c.end))
                        .map(|f| f.last_key_group)
                        .max(),
                ) else {
                    continue;
                };
                let runs = part
                    .runs
                    .iter()
                    .map(|r| {
                        r.files
                            .iter()
                            .filter(|f| f.overlaps(c.start, c.end))
                            .cloned()
                            .collect::<Vec<_>>()
                    })
                    .collect();
                pieces.push(Piece {
                    source: i,
                    file: files().next().expect("a file").clone(),
                    first: lo.max(c.start),
                    last: hi.min(c.end - 1),
                    whole: false,
                    runs: Some(runs),
                });
                continue;
            }
            for f in part
                .runs
                .iter()
                .flat_map(|r| &r.files)
                .filter(|f| f.overlaps(c.start, c.end))
            {
                let (first, last) = (
                    f.first_key_group.max(c.start),
                    f.last_key_group.min(c.end - 1),
                );
                pieces.push(Piece {
                    source: i,
                    file: f.clone(),
                    first,
                    last,
                    whole: first == f.first_key_group && last == f.last_key_group,
                    runs: None,
                });
            }
        }
    }
    pieces.sort_by_key(|p| (p.first, p.source));
    if let Some(w) = pieces.windows(2).find(|w| w[0].last >= w[1].first) {
        let (a, b) = (&w[0], &w[1]);
        return Err(invalid(format!(
            "{} and {} both hold key groups {}..={}: give each source the key-group range its \
             instance owned (RescaleSource::with_key_groups; URL#A..B on the command line)",
            sources[a.source].describe(a.source),
            sources[b.source].describe(b.source),
            b.first,
            a.last.min(b.last)
        )));
    }
    Ok(pieces)
}

/// A new temporary file's path (deleted when dropped).
fn temp_file(dir: &Path) -> Result<tempfile::TempPath> {
    Ok(tempfile::Builder::new()
        .prefix("millpond-rescale-")
        .tempfile_in(dir)
        .map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?
        .into_temp_path())
}

/// Uploads the local file `from` to `to` in `dest`.
fn upload_copy(dest: &Archive, from: &Path, to: &str) -> Result<()> {
    let io = |source| Error::Io {
        path: from.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(from).map_err(io)?;
    let mut upload = dest.upload(to);
    std::io::copy(&mut file, &mut upload).map_err(|source| Error::Io {
        path: to.to_owned(),
        source,
    })?;
    upload.finish()
}
