//! Restore: a store reads a snapshot's data files in place, as its base tier, instead of
//! loading them. Opening reads only each file's footer and index; the files are downloaded
//! to local disk in the background, and until a file is local its blocks are read from the
//! archive by range requests. So the job serves its first record after a few small reads,
//! whatever the size of the state, and the full restore costs one copy of the files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use millpond_format::key::{key_group_of, range_start};
use millpond_state::{BaseTier, BoxError, KeyGroupRange};
use object_store::ObjectStoreExt;
use parking_lot::{Mutex, RwLock};

use crate::archive::Archive;
use crate::block_cache::BlockCache;
use crate::data_file::DataFile;
use crate::error::{Error, Result};
use crate::fetch::{download_to, ArchiveObject};
use crate::manifest::{FileRef, Manifest};
use crate::read_at::LocalFile;
use crate::runs::{fold_layers, FoldedMerge, Output, RunEntries};

/// Settings of a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSettings {
    /// Only these key groups (an instance of a rescaled job); files of other key groups are
    /// not fetched. Default: `None`, all.
    pub key_groups: Option<KeyGroupRange>,
    /// Memory for decompressed blocks of the base files. Default: 32 MiB.
    pub block_cache_bytes: usize,
    /// Files downloaded at once. Default: 4.
    pub parallel_downloads: usize,
    /// Download the files in the background (`true`, the default) or serve every read from
    /// the archive by range requests (`false`: nothing local at all, for a short-lived
    /// reader like `millpond snapshot dump`).
    pub download: bool,
    /// For a local (`file://`) archive, hard-link its files into the directory instead of
    /// copying them, where the file system allows (checked like a download). The copies then
    /// share the archive's disk blocks: right for a running instance's own reads (the facade
    /// sets it), wrong for a copy meant to outlive damage to the archive. Default: `false`.
    pub hard_links: bool,
}

impl Default for RestoreSettings {
    fn default() -> Self {
        RestoreSettings {
            key_groups: None,
            block_cache_bytes: 32 << 20,
            parallel_downloads: 4,
            download: true,
            hard_links: false,
        }
    }
}

struct BaseFile {
    meta: FileRef,
    /// Read through the archive until the download completes, then from local disk.
    file: RwLock<DataFile>,
    /// Set when the download found the object damaged: reads of this file fail from then on.
    damaged: std::sync::OnceLock<String>,
    /// Whether the file is on local disk.
    local: AtomicBool,
    /// Set by the one download thread that fetches it (a base and the next one share files).
    claimed: AtomicBool,
}

/// One partition as the base reads it: its runs, newest first, each the indexes of its files
/// in `SnapshotBase::files`, in key order.
struct BasePartition {
    first: u16,
    last: u16,
    runs: Vec<Vec<usize>>,
}

/// A snapshot's state as a store's base tier ([`BaseTier`]).
pub struct SnapshotBase {
    manifest: Manifest,
    files: Vec<Arc<BaseFile>>,
    partitions: Vec<BasePartition>,
    cache: Arc<BlockCache>,
    dir: PathBuf,
    settings: RestoreSettings,
    failure: Arc<Mutex<Option<Error>>>,
    downloads: Mutex<Vec<JoinHandle<()>>>,
    /// Set once a newer base took over: its downloads stop after the file in hand.
    superseded: AtomicBool,
}

impl std::fmt::Debug for SnapshotBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBase")
            .field("snapshot", &self.manifest.id)
            .field("files", &self.files.len())
            .finish()
    }
}

/// Block-cache ids of files, unique across the bases that share one cache.
static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(0);

impl SnapshotBase {
    /// Opens the snapshot `manifest` of `archive` as a base tier, keeping local copies of its
    /// files in `dir`. Files already in `dir` (from an earlier restore of the same snapshot)
    /// are used if they prove to be the manifest's (footer id, size, key groups, entries);
    /// the others start downloading in the background (see [`RestoreSettings::download`]).
    /// Every file, local or read in place, must pass that check before the base serves
    /// anything: a file that is not the manifest's is `Error::Corrupt`.
    pub fn open(
        archive: &Archive,
        manifest: &Manifest,
        dir: impl AsRef<Path>,
        settings: &RestoreSettings,
    ) -> Result<Arc<SnapshotBase>> {
        let cache = Arc::new(BlockCache::new(settings.block_cache_bytes));
        let failure = Arc::new(Mutex::new(None));
        Self::open_over(
            None,
            archive,
            manifest,
            dir.as_ref(),
            settings,
            cache,
            failure,
        )
    }

    /// Opens a newer snapshot `manifest` of the same archive and key groups as this base (a
    /// running instance's next snapshot, or a compaction of it), in the same directory, with
    /// the same settings and block cache. The files both name are shared, opened and local
    /// as they are (a download in progress goes on); only the others are opened, and
    /// downloaded in the background. This base's downloads of files the new one does not
    /// name stop.
    pub fn next(&self, archive: &Archive, manifest: &Manifest) -> Result<Arc<SnapshotBase>> {
        let next = Self::open_over(
            Some(self),
            archive,
            manifest,
            &self.dir,
            &self.settings,
            self.cache.clone(),
            self.failure.clone(),
        )?;
        self.superseded.store(true, Ordering::Relaxed);
        Ok(next)
    }

    fn open_over(
        prev: Option<&SnapshotBase>,
        archive: &Archive,
        manifest: &Manifest,
        dir: &Path,
        settings: &RestoreSettings,
        cache: Arc<BlockCache>,
        failure: Arc<Mutex<Option<Error>>>,
    ) -> Result<Arc<SnapshotBase>> {
        let dir = dir.to_owned();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let range = settings
            .key_groups
            .unwrap_or_else(|| KeyGroupRange::all(manifest.max_key_groups));
        let r = range.as_range();
        let mut metas: Vec<&FileRef> = Vec::new();
        let mut partitions = Vec::new();
        for p in &manifest.partitions {
            if p.last_key_group < r.start || p.first_key_group >= r.end {
                continue;
            }
            let mut runs = Vec::with_capacity(p.runs.len());
            for run in &p.runs {
                let mut indexes = Vec::new();
                for f in run.files.iter().filter(|f| f.overlaps(r.start, r.end)) {
                    indexes.push(metas.len());
                    metas.push(f);
                }
                if !indexes.is_empty() {
                    runs.push(indexes);
                }
            }
            partitions.push(BasePartition {
                first: p.first_key_group,
                last: p.last_key_group,
                runs,
            });
        }
        let shared: std::collections::HashMap<&str, &Arc<BaseFile>> = prev
            .map(|p| {
                p.files
                    .iter()
                    .filter(|f| f.damaged.get().is_none())
                    .map(|f| (f.meta.path.as_str(), f))
                    .collect()
            })
            .unwrap_or_default();
        let reused = |meta: &FileRef| shared.get(meta.path.as_str()).filter(|f| f.meta == *meta);
        // Footers and indexes are read in parallel: over S3 each file costs two round trips.
        let next = AtomicUsize::new(0);
        let opened: Vec<OpenSlot> = metas.iter().map(|_| Mutex::new(None)).collect();
        let to_open: Vec<usize> = (0..metas.len())
            .filter(|&i| reused(metas[i]).is_none())
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..OPEN_THREADS.min(to_open.len()) {
                scope.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = to_open.get(n) else { return };
                    *opened[i].lock() = Some(open_file(archive, &dir, metas[i]));
                });
            }
        });
        let mut files = Vec::with_capacity(metas.len());
        let mut to_fetch = Vec::new();
        for (i, (meta, slot)) in metas.iter().zip(opened).enumerate() {
            if let Some(f) = reused(meta) {
                if !f.local.load(Ordering::Acquire) {
                    to_fetch.push(i);
                }
                files.push(Arc::clone(f));
                continue;
            }
            let (file, remote) = slot.into_inner().expect("every file was opened")?;
            if remote {
                to_fetch.push(i);
            }
            let id = NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed);
            files.push(Arc::new(BaseFile {
                meta: (*meta).clone(),
                file: RwLock::new(file.with_cache(cache.clone(), id)),
                damaged: std::sync::OnceLock::new(),
                local: AtomicBool::new(!remote),
                claimed: AtomicBool::new(false),
            }));
        }
        let base = Arc::new(SnapshotBase {
            manifest: manifest.clone(),
            files,
            partitions,
            cache,
            dir,
            settings: settings.clone(),
            failure,
            downloads: Mutex::new(Vec::new()),
            superseded: AtomicBool::new(false),
        });
        if settings.download && !to_fetch.is_empty() {
            let queue = Arc::new(Mutex::new(to_fetch));
            let mut handles = Vec::new();
            for n in 0..settings.parallel_downloads.max(1) {
                let base = base.clone();
                let queue = queue.clone();
                let archive = archive.clone();
                let h = std::thread::Builder::new()
                    .name(format!("millpond-fetch-{n}"))
                    .spawn(move || loop {
                        if base.superseded.load(Ordering::Relaxed) {
                            return;
                        }
                        let Some(i) = queue.lock().pop() else { return };
                        let f = &base.files[i];
                        if f.claimed.swap(true, Ordering::AcqRel) {
                            // Another base's thread fetches it.
                            continue;
                        }
                        if let Err(e) = base.fetch(&archive, f) {
                            if matches!(e, Error::Corrupt { .. } | Error::NotFound { .. }) {
                                let _ = f.damaged.set(e.to_string());
                            }
                            // A transient failure: a later base may try it again.
                            f.claimed.store(false, Ordering::Release);
                            base.failure.lock().get_or_insert(e);
                            return;
                        }
                    })
                    .map_err(|source| Error::Io {
                        path: "download thread".into(),
                        source,
                    })?;
                handles.push(h);
            }
            *base.downloads.lock() = handles;
        }
        Ok(base)
    }

    fn fetch(&self, archive: &Archive, f: &BaseFile) -> Result<()> {
        let local = local_path(&self.dir, &f.meta);
        download_to(archive, &f.meta, &local, self.settings.hard_links)?;
        let (file, remote) = open_file(archive, &self.dir, &f.meta)?;
        if remote {
            return Err(Error::Invalid {
                reason: format!("{} was downloaded but is not local", local.display()),
            });
        }
        let id = NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed);
        *f.file.write() = file.with_cache(self.cache.clone(), id);
        f.local.store(true, Ordering::Release);
        Ok(())
    }

    /// The snapshot's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes of the files local so far, and of all files.
    pub fn progress(&self) -> (u64, u64) {
        self.files.iter().fold((0, 0), |(local, all), f| {
            let b = f.meta.bytes;
            let is_local = f.local.load(Ordering::Relaxed);
            (local + if is_local { b } else { 0 }, all + b)
        })
    }

    /// Whether every file is on local disk.
    pub fn is_local(&self) -> bool {
        self.files.iter().all(|f| f.local.load(Ordering::Relaxed))
    }

    /// The names of the files in the base's directory that it reads or downloads: every
    /// other data file there is left over from an older snapshot.
    pub fn local_names(&self) -> std::collections::HashSet<String> {
        self.files
            .iter()
            .map(|f| {
                local_path(&self.dir, &f.meta)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Waits until the background downloads end; returns their first failure, once. After
    /// a transient failure reads go on through the archive; a file found damaged or missing
    /// fails every read of it from then on.
    pub fn wait_local(&self) -> Result<()> {
        let handles = std::mem::take(&mut *self.downloads.lock());
        for h in handles {
            let _ = h.join();
        }
        // Files shared with an older base may still be in its threads' hands.
        while self.settings.download
            && self.failure.lock().is_none()
            && !self
                .files
                .iter()
                .all(|f| f.local.load(Ordering::Acquire) || f.damaged.get().is_some())
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        match self.failure.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every entry of key groups `range` of the snapshot, in key order, each key's runs
    /// folded (for dumps and checks). A file that its download found damaged yields that
    /// error instead of its entries.
    pub fn entries(
        &self,
        range: KeyGroupRange,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        let r = range.as_range();
        self.partitions
            .iter()
            .filter(move |p| p.first < r.end && p.last >= r.start)
            .flat_map(move |p| -> Box<dyn Iterator<Item = _>> {
                let runs: Vec<RunEntries<'_>> = p
                    .runs
                    .iter()
                    .map(|run| self.run_entries(run, r.start, r.end))
                    .collect();
                if runs.len() == 1 {
                    return runs.into_iter().next().expect("one run");
                }
                match FoldedMerge::new(runs, Output::Full, self.manifest.id.clone()) {
                    Ok(merged) => Box::new(merged),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            })
    }

    /// The entries of one run's files in key groups `start..end`, in key order.
    fn run_entries<'a>(&'a self, run: &'a [usize], start: u16, end: u16) -> RunEntries<'a> {
        let first = range_start(start);
        Box::new(
            run.iter()
                .map(move |&i| &self.files[i])
                .filter(move |f| f.meta.overlaps(start, end))
                .flat_map(move |f| -> Box<dyn Iterator<Item = _> + Send> {
                    match f.damaged.get() {
                        Some(reason) => Box::new(std::iter::once(Err(Error::Corrupt {
                            what: "data file (its download found it damaged)",
                            location: reason.clone(),
                        }))),
                        None => Box::new(f.file.read().clone().iter_from(&first)),
                    }
                })
                .take_while(move |e| match e {
                    // A key too short for a key group is passed on: its reader reports it.
                    Ok((k, _)) => key_group_of(k).map_or(true, |kg| kg < end),
                    Err(_) => true,
                }),
        )
    }

    fn partition_of(&self, kg: u16) -> Option<&BasePartition> {
        let i = self.partitions.partition_point(|p| p.last < kg);
        self.partitions.get(i).filter(|p| p.first <= kg)
    }

    /// The file of `run` holding key group `kg`, if any.
    fn file_of(&self, run: &[usize], kg: u16) -> Option<&BaseFile> {
        let i = run.partition_point(|&i| self.files[i].meta.last_key_group < kg);
        run.get(i)
            .map(|&i| &*self.files[i])
            .filter(|f| f.meta.first_key_group <= kg)
    }
}

/// Where an opening thread leaves a file (and whether it is remote).
type OpenSlot = Mutex<Option<Result<(DataFile, bool)>>>;

/// Threads that open files (footer and index reads) at once.
const OPEN_THREADS: usize = 16;

/// Opens one file of the snapshot: the local copy if a whole one is there and is the file
/// the manifest names, else through the archive. Returns whether it is remote.
///
/// Range reads cannot check a file's digest: the file must prove at open that it is the
/// manifest's (its footer's id, size, key groups and entries: [`FileRef::check_opened`]),
/// or the object under that name is another file, perhaps an older version of it, whose
/// entries would be served as this snapshot's. Its digest is checked when it is downloaded.
fn open_file(archive: &Archive, dir: &Path, meta: &FileRef) -> Result<(DataFile, bool)> {
    let local = local_path(dir, meta);
    if let Ok(f) = LocalFile::open(&local) {
        // A local copy that is not the manifest's file (left by a restore of another
        // snapshot, or damaged) is passed over: the archive's is read and downloaded again.
        if let Ok(file) = DataFile::open_source(Arc::new(f)) {
            if meta.check_opened(&file).is_ok() {
                return Ok((file, false));
            }
        }
    }
    let object = ArchiveObject {
        archive: archive.clone(),
        path: meta.path.clone(),
        size: meta.bytes,
    };
    let file = DataFile::open_source(Arc::new(object))
        .map_err(|e| classify_open_failure(archive, meta, e))?;
    meta.check_opened(&file)?;
    Ok((file, true))
}

/// A file read through the archive failed to open with an I/O error, which callers retry: if
/// the object is missing or its size is not the manifest's, say so (`NotFound`, `Corrupt`),
/// since no retry will help.
fn classify_open_failure(archive: &Archive, meta: &FileRef, e: Error) -> Error {
    if !matches!(e, Error::Io { .. }) {
        return e;
    }
    match archive.block_on(archive.store().head(&archive.path(&meta.path))) {
        Err(object_store::Error::NotFound { .. }) => archive.not_found(&meta.path),
        Ok(object) if object.size != meta.bytes => Error::Corrupt {
            what: "data file (size differs from the manifest)",
            location: meta.path.clone(),
        },
        _ => e,
    }
}

fn local_path(dir: &Path, f: &FileRef) -> PathBuf {
    dir.join(f.local_name())
}

impl BaseTier for SnapshotBase {
    fn get(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, BoxError> {
        let Ok(kg) = key_group_of(key) else {
            return Ok(None);
        };
        let Some(p) = self.partition_of(kg) else {
            return Ok(None);
        };
        // Newest run first, down to the first full entry or tombstone.
        let mut layers = Vec::new();
        for run in &p.runs {
            let Some(f) = self.file_of(run, kg) else {
                continue;
            };
            if let Some(reason) = f.damaged.get() {
                return Err(reason.clone().into());
            }
            let found = f.file.read().get(key)?;
            if let Some(layer) = found {
                let last = matches!(layer.first(), Some(1..=4));
                layers.push(layer);
                if last {
                    break;
                }
            }
        }
        Ok(fold_layers(&layers, &self.manifest.id)?)
    }

    fn covered_lsn(&self) -> u64 {
        self.manifest.lsn
    }

    /// No run of the key's partition lists it as heavy, and each has a filter to say so (a
    /// file of version 1 or 2 has none: its keys are never blind).
    fn blind_ok(&self, key: &[u8]) -> bool {
        let Ok(kg) = key_group_of(key) else {
            return false;
        };
        let Some(p) = self.partition_of(kg) else {
            return true;
        };
        p.runs.iter().all(|run| {
            self.file_of(run, kg)
                .is_none_or(|f| f.file.read().filter().is_some_and(|fl| !fl.is_heavy(key)))
        })
    }
}
