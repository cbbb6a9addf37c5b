//! Writing snapshots: the next snapshot is its parent plus the changes committed in the WAL
//! since, merged in key order, so that the live store is never paused or even read.
//!
//! A [`SnapshotBuilder`] gathers the changes per composite key ([`KeyChanges`]: value-like
//! state keeps only the newest version), spilling sorted runs to local disk when its buffer is
//! full. [`SnapshotBuilder::commit`] merges runs, buffer and the parent's files of the key
//! groups that changed into new data files, reuses the parent's other files as they are,
//! uploads, and commits the manifest (docs/snapshot.md, "Commit protocol").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use millpond_format::key::{key_group_of, range_start};
use millpond_format::{CompositeKey, KeyChanges};
use millpond_state::{Change, StateSchema};
use millpond_wal::{CommitPoint, Committed, WalSource};
use parking_lot::Mutex;

use crate::archive::{data_path, new_id, now_ms, Archive};
use crate::data_file::{DataFile, DataFileSettings, DataFileWriter, Version3};
use crate::error::{Error, Result};
use crate::manifest::{
    cut_partitions, FileRef, Manifest, ManifestKind, Run, RunKind, DEFAULT_PARTITIONS,
};
use crate::pending::PendingSnapshot;
use crate::read_at::LocalFile;

/// Settings of snapshot writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSettings {
    /// Memory for gathered changes before they are sorted and spilled to a run file in
    /// `temp_dir`. Default: 64 MiB.
    pub sort_buffer_bytes: usize,
    /// A data file is closed at the next key-group boundary once it holds this many bytes.
    /// Smaller files mean finer reuse between snapshots and more parallel fetches on
    /// restore. Default: 64 MiB.
    pub target_file_bytes: u64,
    /// Block size and compression of data files. Default: 4 KiB blocks, LZ4. A running
    /// instance reads its latest snapshot's runs below redb, so a read that misses memory
    /// reads, checks and decompresses one block per run holding the key: at 1 GB of state
    /// under a 1 GiB budget, 16 KiB blocks gave the job 70k read-modify-writes/s and 4 KiB
    /// blocks 102k/s (8 KiB: 94k), for 8 % more bytes and 4× the index memory (about 70
    /// bytes a block: 180 MB at 10 GB of state). Flink's RocksDB default is 4 KiB as well.
    pub data_file: DataFileSettings,
    /// Where sort runs go while a snapshot is written. Default: `None`, the system's
    /// temporary directory.
    pub temp_dir: Option<PathBuf>,
    /// A directory of local copies of the archive's data files under their own names (a
    /// running instance's `{data_dir}/base/`): a compaction hard-links its inputs from there,
    /// each checked against the manifest like a download, and downloads only the others; and
    /// unless the archive is local (`file://`, whose files the instance links), every file
    /// written to the archive is also written there (synced, renamed into place once its
    /// upload finished), so that the instance need not download its own runs. Default:
    /// `None`, every input is downloaded and no copy is kept.
    pub local_files: Option<PathBuf>,
    /// Partitions (ranges of consecutive key groups whose changes go to the same runs) of an
    /// archive whose first snapshot this writer writes; an archive keeps the partitions its
    /// first snapshot chose. Default: 16 (capped at the number of key groups).
    pub partitions: u16,
    /// Threads that write the partitions of one snapshot at once. Default: `None`, the
    /// machine's parallelism, at most 8.
    pub threads: Option<usize>,
    /// Bits per key of each data file's filter (a read skips a file whose filter says its
    /// key is not there); 0 writes none. Default: 10, about 1 % false positives.
    pub filter_bits_per_key: u32,
    /// The most delta runs a partition has: a snapshot that changes a partition already
    /// holding this many merges its changes into the partition's newest delta run (reading
    /// that run) instead of adding one, so that a read consults at most this many delta runs
    /// and the bottom run even while compaction falls behind (docs/snapshot.md,
    /// "Compaction"). 0: no cap. Default: 32.
    pub max_delta_runs: usize,
}

impl SnapshotSettings {
    pub(crate) fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
            .max(1)
    }
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            sort_buffer_bytes: 64 << 20,
            target_file_bytes: 64 << 20,
            data_file: DataFileSettings {
                block_bytes: 4 << 10,
                compress: true,
            },
            temp_dir: None,
            local_files: None,
            partitions: DEFAULT_PARTITIONS,
            threads: None,
            filter_bits_per_key: crate::filter::DEFAULT_BITS_PER_KEY,
            max_delta_runs: 32,
        }
    }
}

/// What writing one snapshot did.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotReport {
    /// The committed manifest.
    pub manifest: Manifest,
    /// Changes gathered from the WAL.
    pub changes: u64,
    /// Data files written (the rest are the parent's, reused).
    pub files_written: usize,
    /// Bytes of the files written.
    pub bytes_written: u64,
    /// Sort runs spilled to disk.
    pub runs: usize,
    /// Seconds from start to commit.
    pub seconds: f64,
}

/// The writer of one archive: holds its claim (epoch) and the last manifest it committed.
#[derive(Debug)]
pub struct SnapshotWriter {
    archive: Archive,
    last: Manifest,
    settings: SnapshotSettings,
}

impl SnapshotWriter {
    /// Claims `archive` (see [`Archive::claim`]) and returns its writer; the claim's state is
    /// the parent of the first snapshot.
    pub fn claim(
        archive: Archive,
        max_key_groups: u16,
        settings: SnapshotSettings,
    ) -> Result<Self> {
        let last = archive.claim(max_key_groups)?;
        Ok(SnapshotWriter {
            archive,
            last,
            settings,
        })
    }

    /// The writer's epoch.
    pub fn epoch(&self) -> u64 {
        self.last.writer_epoch
    }

    /// The last manifest this writer committed (or claimed): the next snapshot's parent.
    pub fn parent(&self) -> &Manifest {
        &self.last
    }

    /// The archive.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    pub(crate) fn set_parent(&mut self, manifest: Manifest) {
        self.last = manifest;
    }

    /// Starts the next snapshot. `schemas` are the live store's states ([`Store::schemas`]
    /// of `millpond-state`): a state the parent does not know is added with them.
    ///
    /// [`Store::schemas`]: millpond_state::Store::schemas
    pub fn begin(&self, schemas: &[StateSchema]) -> Result<SnapshotBuilder> {
        SnapshotBuilder::new(&self.last, schemas, &self.settings)
    }

    /// Writes the next snapshot from the parent and what `source` (the WAL, read from the
    /// parent's LSN) has committed since, up to its last commit marker. Returns `None` if
    /// nothing was committed after the parent.
    pub fn snapshot_from_wal(
        &mut self,
        source: &mut dyn WalSource,
        schemas: &[StateSchema],
    ) -> Result<Option<SnapshotReport>> {
        self.snapshot_from_wal_captured(source, schemas, 0)
    }

    /// [`snapshot_from_wal`](Self::snapshot_from_wal) whose manifest records
    /// `captured_at_ms`: the live store's clock, read before `source`'s end was fixed, so
    /// that compaction may drop what expired before it ([`Manifest::captured_at_ms`]).
    pub fn snapshot_from_wal_captured(
        &mut self,
        source: &mut dyn WalSource,
        schemas: &[StateSchema],
        captured_at_ms: u64,
    ) -> Result<Option<SnapshotReport>> {
        let mut builder = self.begin(schemas)?;
        builder.set_captured_at_ms(captured_at_ms);
        let mut units = Committed::new(source, self.last.lsn);
        while let Some(unit) = units.next()? {
            for (lsn, change) in unit.changes() {
                builder.add_logged(&change.as_change(), *lsn)?;
            }
        }
        match units.into_outcome().last_commit {
            Some(point) => self.commit(builder, point).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the data files and commits the snapshot of `builder` at `point`, the WAL commit
    /// marker its changes end at. `Error::Fenced` if another writer took over.
    pub fn commit(
        &mut self,
        builder: SnapshotBuilder,
        point: CommitPoint,
    ) -> Result<SnapshotReport> {
        let report = builder.write(&self.archive, &self.last, point, &self.settings)?;
        self.last = report.manifest.clone();
        Ok(report)
    }
}

/// The changes of one snapshot, gathered from the WAL.
pub struct SnapshotBuilder {
    started: Instant,
    states: HashMap<String, StateSchema>,
    /// hashbrown's default hasher: the std SipHash was the top of the profile.
    buffer: hashbrown::HashMap<Vec<u8>, KeyChanges>,
    buffer_bytes: usize,
    runs: Vec<tempfile::TempPath>,
    changed: Vec<bool>,
    changes: u64,
    temp_dir: PathBuf,
    sort_buffer_bytes: usize,
    key: Vec<u8>,
    captured_at_ms: u64,
}

impl SnapshotBuilder {
    fn new(parent: &Manifest, schemas: &[StateSchema], s: &SnapshotSettings) -> Result<Self> {
        let mut states: HashMap<String, StateSchema> = parent
            .states
            .iter()
            .map(|st| (st.name.clone(), st.clone()))
            .collect();
        for schema in schemas {
            match states.get_mut(&schema.name) {
                Some(known) if known.kind != schema.kind => {
                    return Err(Error::Invalid {
                        reason: format!(
                            "state '{}' is {} in the parent snapshot, {} now",
                            schema.name, known.kind, schema.kind
                        ),
                    })
                }
                // The live TTL applies from now on; the id stays the snapshot's.
                Some(known) => known.ttl = schema.ttl,
                None => {
                    let taken = |id: u16| states.values().any(|s| s.id == id);
                    let id = if taken(schema.id) {
                        (0..=u16::MAX)
                            .find(|&id| !taken(id))
                            .ok_or_else(|| Error::Invalid {
                                reason: "more than 65536 states".into(),
                            })?
                    } else {
                        schema.id
                    };
                    states.insert(
                        schema.name.clone(),
                        StateSchema {
                            id,
                            ..schema.clone()
                        },
                    );
                }
            }
        }
        Ok(SnapshotBuilder {
            started: Instant::now(),
            states,
            buffer: hashbrown::HashMap::new(),
            buffer_bytes: 0,
            runs: Vec::new(),
            changed: vec![false; parent.max_key_groups as usize],
            changes: 0,
            temp_dir: s.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
            sort_buffer_bytes: s.sort_buffer_bytes.max(4 << 10),
            key: Vec::new(),
            captured_at_ms: 0,
        })
    }

    /// Records in the manifest when the snapshot's end was fixed, by the live store's clock
    /// ([`Manifest::captured_at_ms`]; 0, the default: unknown).
    pub fn set_captured_at_ms(&mut self, captured_at_ms: u64) {
        self.captured_at_ms = captured_at_ms;
    }

    /// Adds the next committed change, in WAL order.
    pub fn add(&mut self, change: &Change<'_>) -> Result<()> {
        self.add_logged(change, 0)
    }

    /// [`add`](Self::add) of the change logged at `lsn`, which operands kept in a delta run
    /// carry.
    pub fn add_logged(&mut self, change: &Change<'_>, lsn: u64) -> Result<()> {
        let schema = self
            .states
            .get(change.state)
            .ok_or_else(|| Error::Invalid {
                reason: format!(
                    "the WAL changes state '{}', which neither the parent snapshot nor the given \
                 schemas know",
                    change.state
                ),
            })?;
        let Some(changed) = self.changed.get_mut(change.key_group as usize) else {
            return Err(Error::Invalid {
                reason: format!("key group {} out of range", change.key_group),
            });
        };
        *changed = true;
        self.key.clear();
        CompositeKey::new(change.key_group, schema.id, change.key).encode_into(&mut self.key);
        let entry = match self.buffer.get_mut(&self.key[..]) {
            Some(e) => e,
            None => {
                // The key's heap bytes; the map's slots are counted by its capacity below.
                self.buffer_bytes += 8 + self.key.len().max(16);
                self.buffer.entry(self.key.clone()).or_default()
            }
        };
        let before = entry.mem_size();
        if !schema.kind.accepts(&change.op) {
            return Err(Error::Invalid {
                reason: format!(
                    "change {:?} does not fit state '{}' of kind {}",
                    change.op, schema.name, schema.kind
                ),
            });
        }
        entry.push_logged(schema.kind, schema.ttl.map(|t| t.ttl_ms()), &change.op, lsn)?;
        self.buffer_bytes = self.buffer_bytes + entry.mem_size() - before;
        self.changes += 1;
        if self.buffer_bytes + self.slot_bytes() >= self.sort_buffer_bytes {
            self.spill()?;
        }
        Ok(())
    }

    /// Memory of the map's slots: its whole capacity, empty slots too (up to half of them
    /// after it grows), and as much again for the vector [`Self::take_sorted`] moves them to.
    fn slot_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Vec<u8>, KeyChanges)>();
        self.buffer.capacity() * 8 / 7 * (slot + 1) + self.buffer.len() * slot
    }

    /// The buffer, sorted by key.
    fn take_sorted(&mut self) -> Vec<(Vec<u8>, KeyChanges)> {
        let mut v: Vec<_> = std::mem::take(&mut self.buffer).into_iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.buffer_bytes = 0;
        v
    }

    fn spill(&mut self) -> Result<()> {
        let sorted = self.take_sorted();
        let file = tempfile::Builder::new()
            .prefix("millpond-run-")
            .tempfile_in(&self.temp_dir)
            .map_err(|source| Error::Io {
                path: self.temp_dir.display().to_string(),
                source,
            })?;
        let (file, path) = file.into_parts();
        let mut w = DataFileWriter::new(
            std::io::BufWriter::with_capacity(1 << 20, file),
            DataFileSettings {
                block_bytes: 256 << 10,
                compress: false,
            },
        );
        let mut buf = Vec::new();
        for (k, c) in &sorted {
            buf.clear();
            c.encode(&mut buf);
            w.add(k, &buf)?;
        }
        w.finish()?;
        self.runs.push(path);
        Ok(())
    }

    /// Changes gathered so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    fn write(
        mut self,
        archive: &Archive,
        parent: &Manifest,
        point: CommitPoint,
        settings: &SnapshotSettings,
    ) -> Result<SnapshotReport> {
        let sequence = parent.sequence + 1;
        let id = new_id(sequence);
        // Before the first upload: GC keeps the files of a live marker's snapshot.
        let pending = PendingSnapshot::begin(archive, &id, parent.writer_epoch)?;
        let mut partitions = if parent.partitions.is_empty() {
            cut_partitions(parent.max_key_groups, settings.partitions, &[], 0)
        } else {
            parent.partitions.clone()
        };
        if let Some(kg) = (0..self.changed.len())
            .find(|&kg| self.changed[kg] && !partitions.iter().any(|p| p.contains(kg as u16)))
        {
            return Err(Error::Invalid {
                reason: format!(
                    "key group {kg} changed, but the parent snapshot has no partition for it"
                ),
            });
        }
        let mut run_files = Vec::new();
        for run in &self.runs {
            let f = DataFile::open_source(Arc::new(LocalFile::open(run).map_err(|source| {
                Error::Io {
                    path: run.display().to_string(),
                    source,
                }
            })?))?;
            run_files.push(f);
        }
        let runs = self.runs.len();
        let mut in_memory = self.take_sorted();

        // One job per partition with changes: its slice of the buffer and of every sort run.
        let mut jobs: Vec<PartitionJob> = Vec::new();
        for (index, p) in partitions.iter().enumerate().rev() {
            let changed = (p.first_key_group..=p.last_key_group)
                .any(|kg| self.changed.get(kg as usize).copied().unwrap_or(false));
            let split = in_memory.partition_point(|(k, _)| {
                CompositeKey::parse(k).map_or(true, |ck| ck.key_group < p.first_key_group)
            });
            let mine = in_memory.split_off(split);
            if changed {
                let deltas = p.runs.iter().filter(|r| r.kind == RunKind::Delta).count();
                let capped = settings.max_delta_runs > 0 && deltas >= settings.max_delta_runs;
                jobs.push(PartitionJob {
                    index,
                    first: p.first_key_group,
                    last: p.last_key_group,
                    bottom: p.runs.is_empty(),
                    merge_into: capped.then(|| p.runs[0].clone()),
                    in_memory: mine,
                });
            }
        }
        let threads = settings.threads().min(jobs.len()).max(1);
        let queue = Mutex::new(jobs);
        let results: Mutex<Vec<JobResult>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let Some(job) = queue.lock().pop() else {
                        return;
                    };
                    let index = job.index;
                    let replaces = job.merge_into.is_some();
                    let r = job.write(archive, &id, sequence, point.lsn, &run_files, settings);
                    let failed = r.is_err();
                    results.lock().push((index, replaces, r));
                    if failed {
                        // The snapshot fails: the other jobs need not run.
                        queue.lock().clear();
                    }
                });
            }
        });
        let mut files_written = 0;
        let mut bytes_written = 0;
        for (index, replaces, r) in results.into_inner() {
            let run = r?;
            let runs = &mut partitions[index].runs;
            if replaces {
                // The newest delta run was merged into this one (or, nothing left, away).
                runs.remove(0);
            }
            if let Some(run) = run {
                files_written += run.files.len();
                bytes_written += run.files.iter().map(|f| f.bytes).sum::<u64>();
                runs.insert(0, run);
            }
        }
        let mut states: Vec<StateSchema> = self.states.into_values().collect();
        states.sort_by_key(|s| s.id);
        let manifest = Manifest {
            sequence,
            id,
            parent_id: (!parent.id.is_empty()).then(|| parent.id.clone()),
            writer_epoch: parent.writer_epoch,
            created_at_ms: now_ms(),
            kind: ManifestKind::Snapshot,
            max_key_groups: parent.max_key_groups,
            lsn: point.lsn,
            wal_position: Some(point.position),
            offsets: point.offsets,
            states,
            partitions,
            captured_at_ms: self.captured_at_ms,
        };
        let committed = commit_retrying(archive, &manifest);
        pending.settle(&committed);
        committed?;
        Ok(SnapshotReport {
            manifest,
            changes: self.changes,
            files_written,
            bytes_written,
            runs,
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// The changes of one partition, written as one run.
/// A partition job's outcome: its partition, whether its run replaces the partition's newest
/// delta run, and the run written (`None`: no entries).
type JobResult = (usize, bool, Result<Option<Run>>);

struct PartitionJob {
    index: usize,
    first: u16,
    last: u16,
    /// The partition has no runs yet: nothing is below, so the changes fold to full entries
    /// (a bottom run) and deletes leave no tombstone.
    bottom: bool,
    /// The partition is at the cap of delta runs: its newest delta run, which this job
    /// reads and replaces with one holding its entries and the new changes.
    merge_into: Option<Run>,
    in_memory: Vec<(Vec<u8>, KeyChanges)>,
}

impl PartitionJob {
    fn write(
        self,
        archive: &Archive,
        id: &str,
        sequence: u64,
        lsn: u64,
        sort_runs: &[DataFile],
        settings: &SnapshotSettings,
    ) -> Result<Option<Run>> {
        let start = range_start(self.first);
        let last = self.last;
        let mut sources: Vec<ChangeSource<'_>> = Vec::new();
        // The run merged into comes first: equal keys combine oldest source first.
        let mut temps = Vec::new();
        let mut merged_files = Vec::new();
        if let Some(run) = &self.merge_into {
            let dir = settings.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
            for f in &run.files {
                merged_files.push(crate::compaction::local_copy(
                    archive,
                    f,
                    &dir,
                    settings.local_files.as_deref(),
                    &mut temps,
                )?);
            }
        }
        for f in &merged_files {
            sources.push(partition_changes(f, &start, last, "data file entry"));
        }
        for f in sort_runs {
            sources.push(partition_changes(f, &start, last, "snapshot sort run"));
        }
        sources.push(Box::new(self.in_memory.into_iter().map(Ok)));
        let mut changes = MergedChanges::new(sources)?;
        let kind = if self.bottom {
            RunKind::Bottom
        } else {
            RunKind::Delta
        };
        let mut out = FileSplitter::new(
            archive,
            id,
            sequence,
            settings,
            self.index << 16,
            self.bottom,
        );
        let mut buf = Vec::new();
        while let Some((key, c)) = changes.next()? {
            buf.clear();
            if self.bottom {
                match c.fold_over(None) {
                    Some(entry) => entry.encode(&mut buf),
                    None => continue,
                }
            } else {
                c.encode(&mut buf);
            }
            out.add(&key, &buf)?;
        }
        let files = out.finish()?;
        drop(changes);
        drop(temps);
        Ok((!files.is_empty()).then_some(Run {
            kind,
            upto_lsn: lsn,
            written_by: sequence,
            files,
        }))
    }
}

/// Commits `manifest` (`Archive::commit`), creating it again after an object-store failure
/// (up to 3 times): the outcome of a failed create is unknown, and committing the same
/// manifest again resolves it (it finds itself there, or the sequence still free).
pub(crate) fn commit_retrying(archive: &Archive, manifest: &Manifest) -> Result<()> {
    let mut attempt = 0;
    loop {
        match archive.commit(manifest) {
            Err(Error::ObjectStore { .. } | Error::TimedOut { .. }) if attempt < 3 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
            }
            other => return other,
        }
    }
}

/// A sorted source of gathered changes: a run on disk, or the buffer.
type ChangeSource<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, KeyChanges)>> + 'a>;

/// The entries of `file` from key `start` through key group `last`, decoded; damage is
/// `Corrupt` as `what`.
fn partition_changes(
    file: &DataFile,
    start: &[u8],
    last: u16,
    what: &'static str,
) -> ChangeSource<'static> {
    Box::new(
        file.iter_from(start)
            .take_while(move |r| match r {
                Ok((k, _)) => key_group_of(k).is_ok_and(|kg| kg <= last),
                Err(_) => true,
            })
            .map(move |r| {
                r.and_then(|(k, v)| {
                    let c = KeyChanges::decode(&v).map_err(|e| Error::Corrupt {
                        what,
                        location: e.to_string(),
                    })?;
                    Ok((k, c))
                })
            }),
    )
}

/// K-way merge of sorted change sources; equal keys combine oldest source first.
struct MergedChanges<'a> {
    sources: Vec<ChangeSource<'a>>,
    heads: Vec<Option<KeyChanges>>,
    /// (key, source index) of every source's head, smallest first; ties by source index, so
    /// equal keys come oldest source first.
    order: std::collections::BinaryHeap<std::cmp::Reverse<(Vec<u8>, usize)>>,
}

impl<'a> MergedChanges<'a> {
    fn new(sources: Vec<ChangeSource<'a>>) -> Result<Self> {
        let mut m = MergedChanges {
            heads: (0..sources.len()).map(|_| None).collect(),
            sources,
            order: Default::default(),
        };
        for i in 0..m.sources.len() {
            m.advance(i)?;
        }
        Ok(m)
    }

    fn advance(&mut self, i: usize) -> Result<()> {
        if let Some((k, c)) = self.sources[i].next().transpose()? {
            self.heads[i] = Some(c);
            self.order.push(std::cmp::Reverse((k, i)));
        }
        Ok(())
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, KeyChanges)>> {
        let Some(std::cmp::Reverse((key, i))) = self.order.pop() else {
            return Ok(None);
        };
        let mut merged = self.heads[i]
            .take()
            .expect("a head for every queued source");
        self.advance(i)?;
        while let Some(std::cmp::Reverse((k, _))) = self.order.peek() {
            if *k != key {
                break;
            }
            let std::cmp::Reverse((_, j)) = self.order.pop().expect("peeked");
            merged.then(
                self.heads[j]
                    .take()
                    .expect("a head for every queued source"),
            );
            self.advance(j)?;
        }
        Ok(Some((key, merged)))
    }
}

/// Cuts the output into data files at key-group boundaries: once a file reaches the target
/// size, and always before a reused file's range (so that ranges never overlap).
pub(crate) struct FileSplitter<'a> {
    pub(crate) archive: &'a Archive,
    pub(crate) id: &'a str,
    pub(crate) sequence: u64,
    pub(crate) settings: &'a SnapshotSettings,
    pub(crate) reused_starts: Vec<u16>,
    pub(crate) current: Option<OpenFile<'a>>,
    pub(crate) written: Vec<FileRef>,
    /// Added to the number of each file's name, so that writers of one snapshot on several
    /// threads never pick the same name.
    pub(crate) name_base: usize,
    /// Write data file version 3 with these options (`None`: version 2).
    pub(crate) v3: Option<Version3>,
}

/// An upload that also writes a local copy of the file (best effort: a copy that fails to
/// write is dropped, and the instance downloads the file instead).
pub(crate) struct TeeUpload<'a> {
    upload: crate::archive::Upload<'a>,
    local: Option<LocalCopy>,
}

/// A local copy being written under a temporary name (`<stem>.upload`), renamed into place
/// only once the upload finished and the copy is synced, so that a file under its own name
/// in the directory is always whole. Removed if the upload is dropped unfinished.
struct LocalCopy {
    file: Option<std::io::BufWriter<std::fs::File>>,
    part: PathBuf,
    to: PathBuf,
}

impl LocalCopy {
    fn write(&mut self, data: &[u8]) -> bool {
        use std::io::Write;
        self.file
            .as_mut()
            .is_some_and(|f| f.write_all(data).is_ok())
    }

    /// Syncs the copy and renames it into place.
    fn finish(mut self) -> std::io::Result<()> {
        let file = self.file.take().expect("finished once");
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.part, &self.to)
    }
}

impl Drop for LocalCopy {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

impl TeeUpload<'_> {
    /// Finishes the upload, then puts the local copy in place (a failure there loses only the
    /// copy).
    fn finish(self) -> Result<()> {
        let TeeUpload { upload, local } = self;
        upload.finish()?;
        if let Some(local) = local {
            let part = local.part.clone();
            if local.finish().is_err() {
                let _ = std::fs::remove_file(&part);
            }
        }
        Ok(())
    }
}

impl std::io::Write for TeeUpload<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.upload.write_all(data)?;
        if self.local.as_mut().is_some_and(|l| !l.write(data)) {
            // Dropping it removes the partial copy.
            self.local = None;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.upload.flush()
    }
}

pub(crate) struct OpenFile<'a> {
    writer: DataFileWriter<TeeUpload<'a>>,
    path: String,
    last_kg: u16,
    segment: usize,
    bytes: u64,
}

impl<'a> FileSplitter<'a> {
    /// A splitter writing data file version 3 (a bottom run's files if `bottom`), numbering
    /// its files from `name_base`.
    pub(crate) fn new(
        archive: &'a Archive,
        id: &'a str,
        sequence: u64,
        settings: &'a SnapshotSettings,
        name_base: usize,
        bottom: bool,
    ) -> Self {
        FileSplitter {
            archive,
            id,
            sequence,
            settings,
            reused_starts: Vec::new(),
            current: None,
            written: Vec::new(),
            name_base,
            v3: Some(Version3 {
                filter_bits_per_key: settings.filter_bits_per_key,
                bottom,
            }),
        }
    }

    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let kg = CompositeKey::parse(key)
            .map_err(|_| Error::Invalid {
                reason: "internal: a key shorter than its prefix".into(),
            })?
            .key_group;
        let segment = self.reused_starts.partition_point(|&s| s <= kg);
        let cut = match &self.current {
            Some(f) => {
                f.segment != segment
                    || (f.last_kg != kg && f.bytes >= self.settings.target_file_bytes)
            }
            None => false,
        };
        if cut {
            self.close()?;
        }
        if self.current.is_none() {
            let path = data_path(self.id, self.name_base + self.written.len());
            let upload = TeeUpload {
                upload: self.archive.upload(&path),
                local: self.local_copy(&path),
            };
            let mut writer = DataFileWriter::new(upload, self.settings.data_file);
            if let Some(v3) = self.v3 {
                writer = writer.version_3(v3)?;
            }
            self.current = Some(OpenFile {
                writer,
                path,
                last_kg: kg,
                segment,
                bytes: 0,
            });
        }
        let f = self.current.as_mut().expect("just opened");
        f.writer.add(key, value)?;
        f.last_kg = kg;
        f.bytes += (key.len() + value.len() + 4) as u64;
        Ok(())
    }

    /// A local copy of the file at archive path `path` to write beside its upload, if
    /// [`SnapshotSettings::local_files`] asks for one and the archive is not itself local (a
    /// running instance then links the archive's file).
    fn local_copy(&self, path: &str) -> Option<LocalCopy> {
        let dir = self.settings.local_files.as_ref()?;
        if self.archive.local_root().is_some() {
            return None;
        }
        std::fs::create_dir_all(dir).ok()?;
        let to = dir.join(crate::manifest::local_name(path));
        let part = to.with_extension("upload");
        let _ = std::fs::remove_file(&part);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .ok()?;
        Some(LocalCopy {
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            part,
            to,
        })
    }

    pub(crate) fn close(&mut self) -> Result<()> {
        let Some(f) = self.current.take() else {
            return Ok(());
        };
        let (info, upload) = f.writer.finish_into()?;
        upload.finish()?;
        let (first, last) = info.key_groups.ok_or_else(|| Error::Invalid {
            reason: "internal: an empty data file".into(),
        })?;
        self.written.push(FileRef {
            path: f.path,
            first_key_group: first,
            last_key_group: last,
            bytes: info.bytes,
            entries: info.entries,
            crc32c: info.crc32c,
            written_by: self.sequence,
            digest: Some(info.digest),
            file_id: Some(info.file_id),
        });
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<Vec<FileRef>> {
        self.close()?;
        Ok(self.written)
    }
}
