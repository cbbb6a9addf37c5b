//! Compaction: the runs of one partition merged into fewer, so that the runs a read consults
//! stay bounded and the bytes of replaced deltas can be collected (docs/snapshot.md,
//! "Compaction").
//!
//! - [`pick`] chooses the next job from a manifest: a **major** job (every run of a partition
//!   into one bottom run) once its delta runs hold at least `delta_ratio_percent` of its
//!   bottom run's bytes, a **minor** job (its delta runs into one delta run) once it has
//!   `max_runs` delta runs and no major is due.
//! - [`compact`] writes the job's output from the manifest it was picked from: the input
//!   files are downloaded to local disk and merged with the same fold a restore reads with
//!   (the crate's `runs` module), so compaction cannot change what a read sees.
//! - [`SnapshotWriter::commit_compaction`] commits it on top of whatever the writer
//!   committed since (snapshots only add runs in front, so the inputs are still there): a
//!   manifest of kind [`ManifestKind::Compaction`] with the state, LSN and offsets of its
//!   parent, through the same conditional create as a snapshot.
//!
//! A job drops what has expired at its parent's [`Manifest::captured_at_ms`] less
//! [`CompactionSettings::ttl_margin_ms`] (docs/snapshot.md, "Expired data"): no change after
//! the parent's LSN was made earlier, so neither a read nor a replay can see it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use millpond_format::key::{key_group_of, range_start};

use crate::archive::{now_ms, Archive};
use crate::data_file::DataFile;
use crate::error::{Error, Result};
use crate::fetch::{download_to, link_checked};
use crate::manifest::{FileRef, Manifest, ManifestKind, Partition, Run, RunKind};
use crate::names::new_id;
use crate::pending::PendingSnapshot;
use crate::read_at::LocalFile;
use crate::runs::{FoldedMerge, Output, RunEntries};
use crate::writer::{commit_retrying, FileSplitter, SnapshotSettings, SnapshotWriter};

/// When compaction merges a partition's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionSettings {
    /// A major job (all runs into one bottom run) is due once the partition's delta runs hold
    /// at least this percentage of its bottom run's bytes. Lower: fewer delta bytes per read
    /// and more bytes rewritten (write amplification about `1 + 100 / percent`). Default: 50.
    pub delta_ratio_percent: u32,
    /// A minor job (the delta runs into one) is due once a partition has this many delta
    /// runs; a read consults at most this many plus the bottom run while compaction keeps
    /// up. Default: 16.
    pub max_runs: usize,
    /// Expired data is dropped once it expired this long before its manifest's
    /// [`captured_at_ms`](Manifest::captured_at_ms): the longest a change may wait between
    /// reading the clock and being logged (a change waiting longer could otherwise refresh
    /// the TTL of data a compaction had dropped). `None`: compaction never drops expired
    /// data (reads still hide it). Default: 5 minutes.
    pub ttl_margin_ms: Option<u64>,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        CompactionSettings {
            delta_ratio_percent: 50,
            max_runs: 16,
            ttl_margin_ms: Some(300_000),
        }
    }
}

impl CompactionSettings {
    /// The time at which a job on `parent` may drop expired data (0: it may not): its
    /// [`captured_at_ms`](Manifest::captured_at_ms) less the margin, if it has a state with
    /// a TTL.
    pub fn ttl_horizon_ms(&self, parent: &Manifest) -> u64 {
        match self.ttl_margin_ms {
            Some(margin) if parent.states.iter().any(|s| s.ttl.is_some()) => {
                parent.captured_at_ms.saturating_sub(margin)
            }
            _ => 0,
        }
    }
}

/// Which runs of a partition a job merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionKind {
    /// Every run into one bottom run.
    Major,
    /// The delta runs into one delta run.
    Minor,
}

/// One job: a partition of a manifest and the runs it merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionJob {
    /// Major or minor.
    pub kind: CompactionKind,
    /// The partition's first key group (partitions never change, so this names it).
    pub first_key_group: u16,
    /// The runs merged, newest first, as the manifest named them.
    pub inputs: Vec<Run>,
}

impl CompactionJob {
    /// Bytes of the inputs.
    pub fn input_bytes(&self) -> u64 {
        self.inputs
            .iter()
            .flat_map(|r| &r.files)
            .map(|f| f.bytes)
            .sum()
    }
}

/// The next job due in `manifest`, if any: the partition with the most runs first, then
/// the largest share of delta bytes.
pub fn pick(manifest: &Manifest, settings: &CompactionSettings) -> Option<CompactionJob> {
    manifest
        .partitions
        .iter()
        .filter_map(|p| ranked_due(p, settings))
        // The first of equal ranks: the lowest partition.
        .fold(
            None,
            |best: Option<((usize, u128), CompactionJob)>, (rank, job)| match best {
                Some((r, _)) if r >= rank => best,
                _ => Some((rank, job)),
            },
        )
        .map(|(_, job)| job)
}

/// The compaction work a manifest owes (`millpond_compaction_debt_bytes` and
/// `millpond_snapshot_runs_max` in the facade).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionDebt {
    /// Partitions with a job due.
    pub jobs: usize,
    /// Bytes those jobs would read (a major writes about as much, a minor at most as much).
    pub bytes: u64,
    /// The most runs a partition has: what a read of a key consults at worst.
    pub max_runs: usize,
}

/// What `manifest` owes under `settings`: the jobs due now, their bytes, and the most runs of
/// a partition.
pub fn debt(manifest: &Manifest, settings: &CompactionSettings) -> CompactionDebt {
    let mut d = CompactionDebt::default();
    for p in &manifest.partitions {
        d.max_runs = d.max_runs.max(p.runs.len());
        if let Some(job) = due(p, settings) {
            d.jobs += 1;
            d.bytes += job.input_bytes();
        }
    }
    d
}

/// The job due in partition `p` under `settings`, if any.
pub fn due(p: &Partition, settings: &CompactionSettings) -> Option<CompactionJob> {
    ranked_due(p, settings).map(|(_, job)| job)
}

/// [`due`], with the job's rank (runs, then delta bytes per bottom byte in millionths).
fn ranked_due(
    p: &Partition,
    settings: &CompactionSettings,
) -> Option<((usize, u128), CompactionJob)> {
    let bytes = |r: &Run| r.files.iter().map(|f| f.bytes).sum::<u64>();
    let deltas: Vec<&Run> = p.runs.iter().filter(|r| r.kind == RunKind::Delta).collect();
    if deltas.is_empty() {
        return None;
    }
    let d: u64 = deltas.iter().map(|r| bytes(r)).sum();
    let b: u64 = p
        .runs
        .iter()
        .filter(|r| r.kind == RunKind::Bottom)
        .map(bytes)
        .sum();
    let major = u128::from(d) * 100 >= u128::from(b) * u128::from(settings.delta_ratio_percent);
    let minor = deltas.len() >= settings.max_runs.max(2);
    // Past `max_runs`, compaction has fallen behind, and snapshots may soon merge into the
    // newest delta run (`SnapshotSettings::max_delta_runs`, above `max_runs`): leave that run
    // out, so that such a merge never takes a job's input away and the job still commits.
    let skip = usize::from(deltas.len() > settings.max_runs.max(2));
    let job = if major {
        CompactionJob {
            kind: CompactionKind::Major,
            first_key_group: p.first_key_group,
            inputs: p.runs[skip..].to_vec(),
        }
    } else if minor {
        CompactionJob {
            kind: CompactionKind::Minor,
            first_key_group: p.first_key_group,
            inputs: deltas[skip..].iter().map(|r| (*r).clone()).collect(),
        }
    } else {
        return None;
    };
    let share = u128::from(d) * 1_000_000 / u128::from(b.max(1));
    Some(((p.runs.len(), share), job))
}

/// A job's output, uploaded, waiting for [`SnapshotWriter::commit_compaction`].
pub struct CompactionOutput<'a> {
    job: CompactionJob,
    run: Option<Run>,
    id: String,
    bytes_read: u64,
    expired: u64,
    started: Instant,
    pending: PendingSnapshot<'a>,
}

impl std::fmt::Debug for CompactionOutput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactionOutput")
            .field("job", &self.job)
            .field("run", &self.run)
            .field("id", &self.id)
            .finish()
    }
}

/// What a committed compaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionReport {
    /// The committed manifest.
    pub manifest: Manifest,
    /// Major or minor.
    pub kind: CompactionKind,
    /// Runs merged.
    pub runs_in: usize,
    /// Bytes of the runs merged.
    pub bytes_read: u64,
    /// Bytes of the run written (0: every key merged away).
    pub bytes_written: u64,
    /// Keys whose entry lost expired data (a value, list elements or map values), or lost
    /// it all.
    pub expired_keys: u64,
    /// Seconds from start to commit.
    pub seconds: f64,
}

/// Added to the parent's sequence in a compaction's id: its pending marker is then never
/// taken for stale by a snapshot committing meanwhile (GC keeps a marker's files while no
/// manifest reaches its sequence and no newer writer claimed the archive), so only its
/// commit or a newer claim releases its files.
const COMPACTION_ID_OFFSET: u64 = 1 << 40;

/// Writes the output of `job`, picked from `parent`, to `archive` (the files of the
/// parent's runs are downloaded to `settings.temp_dir` and read once), dropping what expired
/// at `ttl_horizon_ms` ([`CompactionSettings::ttl_horizon_ms`] of `parent`; 0: nothing).
/// Setting `cancel` stops it soon with [`Error::Cancelled`], its uploads left for GC.
pub fn compact<'a>(
    archive: &'a Archive,
    parent: &Manifest,
    job: CompactionJob,
    ttl_horizon_ms: u64,
    settings: &SnapshotSettings,
    cancel: &AtomicBool,
) -> Result<CompactionOutput<'a>> {
    let started = Instant::now();
    let id = new_id(parent.sequence + 1 + COMPACTION_ID_OFFSET);
    let pending = PendingSnapshot::begin(archive, &id, parent.writer_epoch)?;
    let temp_dir = settings.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let partition = parent
        .partition_of(job.first_key_group)
        .ok_or_else(|| Error::Invalid {
            reason: format!(
                "no partition starts at key group {} in snapshot {}",
                job.first_key_group, parent.id
            ),
        })?;
    let (first, last) = (partition.first_key_group, partition.last_key_group);
    let mut temps = Vec::new();
    let mut runs: Vec<RunEntries<'_>> = Vec::new();
    let mut bytes_read = 0;
    for run in &job.inputs {
        let mut files = Vec::with_capacity(run.files.len());
        for f in &run.files {
            files.push(local_copy(
                archive,
                f,
                &temp_dir,
                settings.local_files.as_deref(),
                &mut temps,
            )?);
            bytes_read += f.bytes;
        }
        runs.push(Box::new(
            files
                .into_iter()
                .flat_map(move |f| f.iter_from(&range_start(first)))
                .take_while(move |r| match r {
                    Ok((k, _)) => key_group_of(k).map_or(true, |kg| kg <= last),
                    Err(_) => true,
                }),
        ));
    }
    let bottom = job.kind == CompactionKind::Major;
    let output = if bottom { Output::Full } else { Output::Layers };
    // The horizon must not pass the parent's own: a caller's mistake would drop data that
    // later changes still see.
    let horizon = ttl_horizon_ms.min(parent.captured_at_ms);
    let mut merged = FoldedMerge::new(runs, output, format!("partition {first}..={last}"))?
        .drop_expired_at(horizon);
    // Sequence 0: set when committed, the sequence is known only then.
    let mut out = FileSplitter::new(archive, &id, 0, settings, 0, bottom);
    for (n, entry) in merged.by_ref().enumerate() {
        if n % 1024 == 0 && cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let (key, value) = entry?;
        out.add(&key, &value)?;
    }
    let expired = merged.expired();
    let files = out.finish()?;
    drop(temps);
    let run = (!files.is_empty()).then(|| Run {
        kind: if bottom {
            RunKind::Bottom
        } else {
            RunKind::Delta
        },
        upto_lsn: job.inputs.first().map_or(0, |r| r.upto_lsn),
        written_by: 0,
        files,
    });
    Ok(CompactionOutput {
        job,
        run,
        id,
        bytes_read,
        expired,
        started,
        pending,
    })
}

/// Links `f` from `local_files` (if a checked copy is there) or downloads it into `dir`, and
/// opens it, checked against the manifest.
pub(crate) fn local_copy(
    archive: &Archive,
    f: &FileRef,
    dir: &std::path::Path,
    local_files: Option<&std::path::Path>,
    temps: &mut Vec<tempfile::TempPath>,
) -> Result<DataFile> {
    let local = tempfile::Builder::new()
        .prefix("millpond-compaction-")
        .tempfile_in(dir)
        .map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?
        .into_temp_path();
    let linked =
        local_files.is_some_and(|from| link_checked(f, &from.join(f.local_name()), &local).is_ok());
    if !linked {
        download_to(archive, f, &local, true)?;
    }
    let file = DataFile::open_source(Arc::new(LocalFile::open(&local).map_err(|source| {
        Error::Io {
            path: local.display().to_string(),
            source,
        }
    })?))?;
    f.check_opened(&file)?;
    temps.push(local);
    Ok(file)
}

impl SnapshotWriter {
    /// Commits `output` on top of the last manifest this writer committed: the job's input
    /// runs, which snapshots since have left in place below their own, are replaced by its
    /// output run. `Error::Conflict` if they are not there any more (another compaction
    /// replaced them); `Error::Fenced` if another writer took over.
    pub fn commit_compaction(&mut self, output: CompactionOutput<'_>) -> Result<CompactionReport> {
        let CompactionOutput {
            job,
            run,
            id: _,
            bytes_read,
            expired,
            started,
            pending,
        } = output;
        let parent = self.parent().clone();
        let sequence = parent.sequence + 1;
        let mut manifest = parent.clone();
        let found = manifest
            .partitions
            .iter_mut()
            .find(|p| p.first_key_group == job.first_key_group)
            .and_then(|p| {
                let n = job.inputs.len();
                let at = (0..=p.runs.len().checked_sub(n)?)
                    .find(|&i| p.runs[i..i + n] == job.inputs[..])?;
                Some((p, at, n))
            });
        let Some((partition, at, n)) = found else {
            let e = Err(Error::Conflict { sequence });
            pending.settle(&e);
            return e.map(|()| unreachable!());
        };
        let mut bytes_written = 0;
        let runs_in = n;
        let replacement: Vec<Run> = run
            .map(|mut r| {
                r.written_by = sequence;
                for f in &mut r.files {
                    f.written_by = sequence;
                    bytes_written += f.bytes;
                }
                r
            })
            .into_iter()
            .collect();
        partition.runs.splice(at..at + n, replacement);
        manifest.sequence = sequence;
        manifest.id = new_id(sequence);
        manifest.parent_id = (!parent.id.is_empty()).then(|| parent.id.clone());
        manifest.created_at_ms = now_ms();
        manifest.kind = ManifestKind::Compaction;
        let committed = commit_retrying(self.archive(), &manifest);
        pending.settle(&committed);
        committed?;
        self.set_parent(manifest.clone());
        Ok(CompactionReport {
            manifest,
            kind: job.kind,
            runs_in,
            bytes_read,
            bytes_written,
            expired_keys: expired,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: RunKind, bytes: &[u64]) -> Run {
        Run {
            kind,
            upto_lsn: 1,
            written_by: 1,
            files: bytes
                .iter()
                .map(|&bytes| FileRef {
                    path: format!("data/f{bytes}.mpdf"),
                    first_key_group: 0,
                    last_key_group: 0,
                    bytes,
                    entries: 1,
                    crc32c: 0,
                    written_by: 1,
                    digest: None,
                    file_id: None,
                })
                .collect(),
        }
    }

    fn partition(first_key_group: u16, runs: Vec<Run>) -> Partition {
        Partition {
            first_key_group,
            last_key_group: first_key_group,
            runs,
        }
    }

    fn manifest(partitions: Vec<Partition>) -> Manifest {
        let mut m = Manifest::empty(16);
        m.partitions = partitions;
        m
    }

    #[test]
    fn majors_minors_and_the_debt_follow_the_policy() {
        let settings = CompactionSettings {
            delta_ratio_percent: 50,
            max_runs: 3,
            ..CompactionSettings::default()
        };
        let bottom = || run(RunKind::Bottom, &[1000]);
        let delta = |b| run(RunKind::Delta, &[b]);
        let m = manifest(vec![
            // Nothing due: 400 delta bytes on 1000, two deltas.
            partition(0, vec![delta(200), delta(200), bottom()]),
            // Minor: three small deltas.
            partition(1, vec![delta(10), delta(10), delta(10), bottom()]),
            // Major: 500 of 1000.
            partition(2, vec![delta(500), bottom()]),
            // No delta: nothing to do.
            partition(3, vec![bottom()]),
        ]);
        // The most runs first.
        let job = pick(&m, &settings).unwrap();
        assert_eq!((job.kind, job.first_key_group), (CompactionKind::Minor, 1));
        assert_eq!(job.inputs.len(), 3);
        assert_eq!(job.input_bytes(), 30);
        let d = debt(&m, &settings);
        assert_eq!(
            d,
            CompactionDebt {
                jobs: 2,
                bytes: 30 + 1500,
                max_runs: 4
            }
        );
        // With as many runs, the larger delta share first.
        let m = manifest(vec![
            partition(0, vec![delta(600), bottom()]),
            partition(1, vec![delta(900), bottom()]),
        ]);
        let job = pick(&m, &settings).unwrap();
        assert_eq!((job.kind, job.first_key_group), (CompactionKind::Major, 1));
        assert_eq!(job.inputs.len(), 2);
        // Behind (more deltas than `max_runs`): the newest delta run is left out, since a
        // snapshot at the cap may replace it.
        let m = manifest(vec![partition(
            0,
            vec![delta(1), delta(2), delta(3), delta(4), bottom()],
        )]);
        let job = pick(&m, &settings).unwrap();
        assert_eq!(job.kind, CompactionKind::Minor);
        assert_eq!(job.inputs, m.partitions[0].runs[1..4].to_vec());
        let m = manifest(vec![partition(
            0,
            vec![delta(600), delta(2), delta(3), delta(4), bottom()],
        )]);
        let job = pick(&m, &settings).unwrap();
        assert_eq!(job.kind, CompactionKind::Major);
        assert_eq!(job.inputs, m.partitions[0].runs[1..].to_vec());
        // Nothing due, no debt.
        let m = manifest(vec![partition(0, vec![delta(1), bottom()])]);
        assert_eq!(pick(&m, &settings), None);
        assert_eq!(debt(&m, &settings).bytes, 0);
    }
}
