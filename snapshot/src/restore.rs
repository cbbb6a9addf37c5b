//! Restore: a store reads a snapshot's data files in place, as its base tier, instead of
//! loading them. Opening reads only each file's footer and index; the files are downloaded
//! to local disk in the background, and until a file is local its blocks are read from the
//! archive by range requests. So the job serves its first record after a few small reads,
//! whatever the size of the state, and the full restore costs one copy of the files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
}

impl Default for RestoreSettings {
    fn default() -> Self {
        RestoreSettings {
            key_groups: None,
            block_cache_bytes: 32 << 20,
            parallel_downloads: 4,
            download: true,
        }
    }
}

struct BaseFile {
    meta: FileRef,
    /// Read through the archive until the download completes, then from local disk.
    file: RwLock<DataFile>,
    id: u64,
    /// Set when the download found the object damaged: reads of this file fail from then on.
    damaged: std::sync::OnceLock<String>,
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
    files: Vec<BaseFile>,
    partitions: Vec<BasePartition>,
    cache: Arc<BlockCache>,
    dir: PathBuf,
    bytes_total: u64,
    bytes_local: AtomicU64,
    files_local: AtomicUsize,
    failure: Mutex<Option<Error>>,
    downloads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for SnapshotBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBase")
            .field("snapshot", &self.manifest.id)
            .field("files", &self.files.len())
            .finish()
    }
}

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
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let range = settings
            .key_groups
            .unwrap_or_else(|| KeyGroupRange::all(manifest.max_key_groups));
        let r = range.as_range();
        let cache = Arc::new(BlockCache::new(settings.block_cache_bytes));
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
        // Footers and indexes are read in parallel: over S3 each file costs two round trips.
        let next = AtomicUsize::new(0);
        let opened: Vec<OpenSlot> = metas.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..OPEN_THREADS.min(metas.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(meta) = metas.get(i) else { return };
                    *opened[i].lock() = Some(open_file(archive, &dir, meta));
                });
            }
        });
        let mut files = Vec::with_capacity(metas.len());
        let mut to_fetch = Vec::new();
        let mut already = 0;
        for (i, (meta, slot)) in metas.iter().zip(opened).enumerate() {
            let (file, remote) = slot.into_inner().expect("every file was opened")?;
            if remote {
                to_fetch.push(i);
            } else {
                already += meta.bytes;
            }
            files.push(BaseFile {
                meta: (*meta).clone(),
                file: RwLock::new(file.with_cache(cache.clone(), i as u64)),
                id: i as u64,
                damaged: std::sync::OnceLock::new(),
            });
        }
        let bytes_total = files.iter().map(|f| f.meta.bytes).sum();
        let base = Arc::new(SnapshotBase {
            manifest: manifest.clone(),
            files_local: AtomicUsize::new(files.len() - to_fetch.len()),
            files,
            partitions,
            cache,
            dir,
            bytes_total,
            bytes_local: AtomicU64::new(already),
            failure: Mutex::new(None),
            downloads: Mutex::new(Vec::new()),
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
                        let Some(i) = queue.lock().pop() else { return };
                        if let Err(e) = base.fetch(&archive, i) {
                            if matches!(e, Error::Corrupt { .. } | Error::NotFound { .. }) {
                                let _ = base.files[i].damaged.set(e.to_string());
                            }
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

    fn fetch(&self, archive: &Archive, i: usize) -> Result<()> {
        let f = &self.files[i];
        let local = local_path(&self.dir, &f.meta);
        download_to(archive, &f.meta, &local)?;
        let (file, remote) = open_file(archive, &self.dir, &f.meta)?;
        if remote {
            return Err(Error::Invalid {
                reason: format!("{} was downloaded but is not local", local.display()),
            });
        }
        *f.file.write() = file.with_cache(self.cache.clone(), f.id);
        self.bytes_local.fetch_add(f.meta.bytes, Ordering::Relaxed);
        self.files_local.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The snapshot's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes of the files local so far, and of all files.
    pub fn progress(&self) -> (u64, u64) {
        (self.bytes_local.load(Ordering::Relaxed), self.bytes_total)
    }

    /// Whether every file is on local disk.
    pub fn is_local(&self) -> bool {
        self.files_local.load(Ordering::Relaxed) == self.files.len()
    }

    /// Waits until the background downloads end; returns their first failure, once. After
    /// a transient failure reads go on through the archive; a file found damaged or missing
    /// fails every read of it from then on.
    pub fn wait_local(&self) -> Result<()> {
        let handles = std::mem::take(&mut *self.downloads.lock());
        for h in handles {
            let _ = h.join();
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
            .map(|&i| &self.files[i])
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
    dir.join(f.path.rsplit('/').next().unwrap_or(&f.path))
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
}
