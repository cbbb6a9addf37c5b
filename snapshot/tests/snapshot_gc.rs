//! Garbage collection that never destroys what is needed (docs/snapshot.md, "Retention and
//! garbage collection"): run with retain 1 and no grace while a snapshot (or a rescale) is
//! uploading, it keeps every file of it, and the snapshot commits and verifies; run while a
//! compaction uploads, it keeps the compaction's output and inputs; the files and
//! marker of a fenced writer, or of one that stopped before its commit, go once a newer claim
//! exists; objects whose names are not the archive's are never parsed or deleted; bad input
//! deletes nothing; an oversized manifest or marker is refused before it is read.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use millpond_snapshot::compaction::{compact, pick};
use millpond_snapshot::{
    rescale, Archive, CompactionSettings, Error, GcReport, Manifest, ManifestKind, RescaleSource,
    SnapshotReport, SnapshotSettings, SnapshotWriter, MAX_GC_GRACE,
};
use millpond_state::{KeyGroupRange, StateSchema, Store};
use millpond_wal::{LocalSegmentSource, SourceOffset, Wal};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parking_lot::Mutex;

use common::{register, restore_and_check, store_settings, LogTo, Model, States, KEY_GROUPS};

const BUDGET: usize = 64 << 20;

// ------------------------------------------------------------------------------------------
// A store decorator that pauses a writer between uploads, fails manifest creates, and counts
// the bytes read from object bodies.

/// Pause the writer at its n-th put under a folder (1-based), before forwarding it: the test
/// gets a message on `paused` and lets it go on with one on `resume`.
struct Pause {
    folder: &'static str,
    at: usize,
    paused: Sender<()>,
    resume: Receiver<()>,
}

#[derive(Default)]
struct Hooks {
    puts: usize,
    pause: Option<Pause>,
}

/// A test fake: forwards every call to the store it wraps; see the fields for what it adds.
#[derive(Clone)]
struct HookStore {
    inner: Arc<dyn ObjectStore>,
    hooks: Arc<Mutex<Hooks>>,
    /// Manifest creates fail before reaching the store (a writer that can never commit).
    fail_manifests: Arc<AtomicBool>,
    /// Bytes of object bodies read through `get`.
    body_bytes: Arc<AtomicU64>,
}

impl fmt::Debug for HookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HookStore({})", self.inner)
    }
}

impl fmt::Display for HookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HookStore({})", self.inner)
    }
}

impl HookStore {
    fn new(inner: Arc<dyn ObjectStore>) -> Self {
        HookStore {
            inner,
            hooks: Arc::default(),
            fail_manifests: Arc::default(),
            body_bytes: Arc::default(),
        }
    }

    /// Pauses the writer at its `at`-th put under `folder` (`data/`, `manifests/`) from now
    /// on; returns the channels.
    fn pause_at(&self, folder: &'static str, at: usize) -> (Receiver<()>, Sender<()>) {
        let (paused_tx, paused_rx) = channel();
        let (resume_tx, resume_rx) = channel();
        let mut h = self.hooks.lock();
        h.puts = 0;
        h.pause = Some(Pause {
            folder,
            at,
            paused: paused_tx,
            resume: resume_rx,
        });
        (paused_rx, resume_tx)
    }

    fn before_put(&self, location: &Path) {
        let pause = {
            let mut h = self.hooks.lock();
            let Some(folder) = h.pause.as_ref().map(|p| p.folder) else {
                return;
            };
            if !location.as_ref().starts_with(folder) {
                return;
            }
            h.puts += 1;
            match &h.pause {
                Some(p) if p.at == h.puts => h.pause.take(),
                _ => None,
            }
        };
        if let Some(p) = pause {
            p.paused.send(()).unwrap();
            // Blocks one of the writer archive's runtime threads: fine for a test.
            p.resume.recv().unwrap();
        }
    }
}

#[async_trait]
impl ObjectStore for HookStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if location.as_ref().starts_with("manifests/") && self.fail_manifests.load(Ordering::SeqCst)
        {
            return Err(object_store::Error::Generic {
                store: "HookStore",
                source: format!("injected failure of {location}").into(),
            });
        }
        self.before_put(location);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.before_put(location);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let got = self.inner.get_opts(location, options).await?;
        let (meta, range, attributes) =
            (got.meta.clone(), got.range.clone(), got.attributes.clone());
        let counter = self.body_bytes.clone();
        let stream = got
            .into_stream()
            .inspect(move |chunk| {
                if let Ok(c) = chunk {
                    counter.fetch_add(c.len() as u64, Ordering::SeqCst);
                }
            })
            .boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Every object under `prefix` of `store`, recursively, with its bytes.
fn objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let metas: Vec<ObjectMeta> = store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        let mut all = BTreeMap::new();
        for m in metas {
            let bytes = store
                .get_opts(&m.location, GetOptions::default())
                .await
                .unwrap();
            all.insert(
                m.location.to_string(),
                bytes.bytes().await.unwrap().to_vec(),
            );
        }
        all
    })
}

fn names(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeSet<String> {
    objects(store, prefix).into_keys().collect()
}

fn referenced(archive: &Archive) -> BTreeSet<String> {
    archive
        .manifests()
        .unwrap()
        .iter()
        .flat_map(|m| m.files().map(|f| f.path.clone()))
        .collect()
}

// ------------------------------------------------------------------------------------------
// A job: a store logging to a local WAL, and a model of what it holds.

struct Job {
    _dir: tempfile::TempDir,
    wal_dir: PathBuf,
    wal: Arc<Wal>,
    _store: Store,
    states: States,
    model: Model,
    schemas: Vec<StateSchema>,
}

impl Job {
    fn new() -> Job {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = common::open_wal(&wal_dir);
        let store = Store::builder(dir.path().join("live"))
            .settings(store_settings(BUDGET))
            .change_sink(LogTo(wal.clone()))
            .open()
            .unwrap();
        let states = register(&store);
        let schemas = store.schemas();
        Job {
            _dir: dir,
            wal_dir,
            wal,
            _store: store,
            states,
            model: Model::default(),
            schemas,
        }
    }

    /// Counts and 100-byte blobs for `keys`, then a commit marker at `next_offset`.
    fn work(&mut self, keys: Range<u64>, round: u64, next_offset: i64) {
        for i in keys {
            let k = format!("key-{i}");
            self.model.touched.insert(k.clone());
            let n = self.model.counts.entry(k.clone()).or_default();
            *n += round;
            self.states.counts.update(&k, n).unwrap();
            let blob = vec![(i + round) as u8; 100];
            self.states.blobs.update(&k, &blob).unwrap();
            self.model.blobs.insert(k, blob);
        }
        self.wal
            .commit(&[SourceOffset {
                topic: "in".into(),
                partition: 0,
                next_offset,
            }])
            .unwrap()
            .wait()
            .unwrap();
    }

    fn snapshot(&self, writer: &mut SnapshotWriter) -> millpond_snapshot::Result<SnapshotReport> {
        snapshot(writer, &self.wal_dir, &self.schemas).map(|r| r.expect("a commit to snapshot"))
    }

    fn check(&self, archive: &Archive, m: &Manifest, what: &str) {
        archive
            .verify(m, |_| {})
            .unwrap_or_else(|e| panic!("{what}: verify of {} failed: {e}", m.id));
        restore_and_check(archive, m, &self.wal_dir, &self.model, BUDGET, what);
    }
}

fn snapshot(
    writer: &mut SnapshotWriter,
    wal_dir: &FsPath,
    schemas: &[StateSchema],
) -> millpond_snapshot::Result<Option<SnapshotReport>> {
    let mut source = LocalSegmentSource::open(wal_dir, writer.parent().lsn + 1).unwrap();
    writer.snapshot_from_wal(&mut source, schemas)
}

/// Small files, so that a snapshot has many.
fn settings() -> SnapshotSettings {
    SnapshotSettings {
        target_file_bytes: 4 << 10,
        // One partition after another: the tests pause the writer at its n-th upload.
        threads: Some(1),
        ..SnapshotSettings::default()
    }
}

/// The data files of snapshot `id` in `store`.
fn files_of(store: &Arc<dyn ObjectStore>, id: &str) -> BTreeSet<String> {
    names(store, "data")
        .into_iter()
        .filter(|p| p.starts_with(&format!("data/{id}-")))
        .collect()
}

/// The snapshot id of the one pending marker in `store`.
#[track_caller]
fn marker_id(store: &Arc<dyn ObjectStore>) -> String {
    let markers = names(store, "pending");
    assert_eq!(markers.len(), 1, "{markers:?}");
    let m = markers.into_iter().next().unwrap();
    m["pending/".len()..m.len() - ".mpp".len()].to_owned()
}

/// GC's report must say that nothing of snapshot `id` was deleted.
#[track_caller]
fn assert_kept(report: &GcReport, id: &str) {
    assert!(
        !report.files_deleted.iter().any(|p| p.contains(id)),
        "GC deleted files of the snapshot in progress {id}: {report:?}"
    );
    assert_eq!(report.pending, [id.to_owned()], "{report:?}");
}

// ------------------------------------------------------------------------------------------
// Snapshots in progress.

#[test]
fn gc_with_retain_1_and_no_grace_keeps_every_file_of_a_snapshot_in_progress() {
    let mut job = Job::new();
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let hooks = HookStore::new(mem.clone());
    let writing = Archive::from_store(Arc::new(hooks.clone()), "", "memory:///writer").unwrap();
    let mut writer = SnapshotWriter::claim(writing, KEY_GROUPS, settings()).unwrap();
    job.work(0..400, 1, 100);
    let first = job.snapshot(&mut writer).unwrap().manifest;
    assert!(
        first.files().count() >= 4,
        "{} files",
        first.files().count()
    );
    // Every key changes: the next snapshot writes a delta run of every partition.
    job.work(0..400, 2, 200);

    let (paused, resume) = hooks.pause_at("data/", 3);
    let (wal_dir, schemas) = (job.wal_dir.clone(), job.schemas.clone());
    let writing = std::thread::spawn(move || {
        let r = snapshot(&mut writer, &wal_dir, &schemas);
        (writer, r)
    });
    paused.recv_timeout(Duration::from_secs(60)).unwrap();

    // The documented example, run while the writer has uploaded two of its files.
    let id = marker_id(&mem);
    let uploaded = files_of(&mem, &id);
    assert_eq!(uploaded.len(), 2, "{uploaded:?}");
    let gc = Archive::from_store(mem.clone(), "", "memory:///gc").unwrap();
    let report = gc.gc(1, Duration::ZERO).unwrap();
    assert_eq!(
        files_of(&mem, &id),
        uploaded,
        "GC deleted files in progress"
    );
    assert_kept(&report, &id);
    assert_eq!(report.files_pending, 2, "{report:?}");
    // The current snapshot's files stay; nothing else was unreferenced yet.
    assert!(report.files_deleted.is_empty(), "{report:?}");

    resume.send(()).unwrap();
    let (writer, r) = writing.join().unwrap();
    let second = r.unwrap().expect("committed").manifest;
    assert_eq!(second.id, id);
    assert_eq!(writer.parent().id, id);
    job.check(&gc, &second, "the snapshot written during GC");

    // Now the first snapshot's files are garbage, and the marker is gone with the commit.
    let report = gc.gc(1, Duration::ZERO).unwrap();
    assert!(report.pending.is_empty(), "{report:?}");
    assert!(names(&mem, "pending").is_empty());
    assert_eq!(names(&mem, "data"), referenced(&gc));
    assert_eq!(gc.sequences().unwrap(), [second.sequence]);
    job.check(&gc, &second, "after a second GC");
}

/// A compaction paused after two uploads while a snapshot commits on top and GC runs with
/// retain 1 and no grace: its output (held by its pending marker) and its inputs (still
/// named by the new snapshot, which left them in place) all stay; it then commits on top of
/// that snapshot, and the state is whole.
#[test]
fn gc_with_retain_1_and_no_grace_keeps_a_compactions_inputs_and_output() {
    let settings = SnapshotSettings {
        partitions: 1,
        ..settings()
    };
    let mut job = Job::new();
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let hooks = HookStore::new(mem.clone());
    let writing = Archive::from_store(Arc::new(hooks.clone()), "", "memory:///writer").unwrap();
    let mut writer = SnapshotWriter::claim(writing, KEY_GROUPS, settings.clone()).unwrap();
    job.work(0..400, 1, 100);
    job.snapshot(&mut writer).unwrap();
    job.work(0..400, 2, 200);
    let parent = job.snapshot(&mut writer).unwrap().manifest;
    let due = CompactionSettings {
        delta_ratio_percent: 1,
        ..CompactionSettings::default()
    };
    let picked = pick(&parent, &due).expect("a partition with a delta run");
    let inputs: BTreeSet<String> = picked
        .inputs
        .iter()
        .flat_map(|r| r.files.iter().map(|f| f.path.clone()))
        .collect();
    // Its own archive (and runtime): the pause blocks one of its threads.
    let compacting =
        Archive::from_store(Arc::new(hooks.clone()), "", "memory:///compactor").unwrap();
    let (paused, resume) = hooks.pause_at("data/", 3);
    let output = std::thread::scope(|s| {
        let running = s.spawn(|| {
            compact(
                &compacting,
                &parent,
                picked,
                0,
                &settings,
                &AtomicBool::new(false),
            )
        });
        paused.recv_timeout(Duration::from_secs(60)).unwrap();
        let id = marker_id(&mem);
        let uploaded = files_of(&mem, &id);
        assert_eq!(uploaded.len(), 2, "{uploaded:?}");

        job.work(0..50, 3, 300);
        let third = job.snapshot(&mut writer).unwrap().manifest;
        let gc = Archive::from_store(mem.clone(), "", "memory:///gc").unwrap();
        let report = gc.gc(1, Duration::ZERO).unwrap();
        assert_eq!(gc.sequences().unwrap(), [third.sequence]);
        assert_eq!(
            files_of(&mem, &id),
            uploaded,
            "GC deleted compaction output"
        );
        assert_kept(&report, &id);
        let present = names(&mem, "data");
        assert!(
            inputs.is_subset(&present),
            "GC deleted compaction inputs: {:?}",
            inputs.difference(&present).collect::<Vec<_>>()
        );
        resume.send(()).unwrap();
        running.join().unwrap().unwrap()
    });
    let report = writer.commit_compaction(output).unwrap();
    let m = report.manifest;
    assert_eq!(m.kind, ManifestKind::Compaction);
    assert_eq!(
        m.partitions[0].runs.len(),
        2,
        "the new delta over the compacted bottom"
    );
    let gc = Archive::from_store(mem.clone(), "", "memory:///gc").unwrap();
    job.check(&gc, &m, "compacted on top of a snapshot, after GC");
    let report = gc.gc(1, Duration::ZERO).unwrap();
    assert!(report.pending.is_empty(), "{report:?}");
    assert_eq!(names(&mem, "data"), referenced(&gc));
    job.check(&gc, &m, "after a second GC");
}

#[test]
fn gc_during_a_rescale_into_an_empty_archive_keeps_its_files() {
    let mut job = Job::new();
    let dir = tempfile::tempdir().unwrap();
    let source = Archive::open(&format!("file://{}", dir.path().display())).unwrap();
    let mut writer = SnapshotWriter::claim(source.clone(), KEY_GROUPS, settings()).unwrap();
    job.work(0..400, 1, 100);
    let latest = job.snapshot(&mut writer).unwrap().manifest;

    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let hooks = HookStore::new(mem.clone());
    let dest = Archive::from_store(Arc::new(hooks.clone()), "", "memory:///dest").unwrap();
    let (paused, resume) = hooks.pause_at("data/", 3);
    let rescaling = std::thread::spawn(move || {
        rescale(
            &[RescaleSource::new(&source, &latest)],
            &dest,
            KeyGroupRange::new(0, KEY_GROUPS),
            &settings(),
        )
    });
    paused.recv_timeout(Duration::from_secs(60)).unwrap();
    // An archive without a manifest: before markers, GC took every file in it for garbage.
    let id = marker_id(&mem);
    let uploaded = files_of(&mem, &id);
    assert_eq!(uploaded.len(), 2, "{uploaded:?}");
    let gc = Archive::from_store(mem.clone(), "", "memory:///gc").unwrap();
    let report = gc.gc(1, Duration::ZERO).unwrap();
    assert_eq!(
        files_of(&mem, &id),
        uploaded,
        "GC deleted files in progress"
    );
    assert_kept(&report, &id);

    resume.send(()).unwrap();
    let report = rescaling.join().unwrap().unwrap();
    assert_eq!(report.manifest.id, id);
    job.check(&gc, &report.manifest, "the rescale written during GC");
    gc.gc(1, Duration::ZERO).unwrap();
    assert!(names(&mem, "pending").is_empty());
    assert_eq!(names(&mem, "data"), referenced(&gc));
}

#[test]
fn a_fenced_writers_files_and_marker_are_collected() {
    let mut job = Job::new();
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let hooks = HookStore::new(mem.clone());
    let zombie_archive = Archive::from_store(Arc::new(hooks.clone()), "", "memory:///z").unwrap();
    let mut zombie = SnapshotWriter::claim(zombie_archive, KEY_GROUPS, settings()).unwrap();
    job.work(0..400, 1, 100);
    job.snapshot(&mut zombie).unwrap();
    job.work(0..400, 2, 200);

    let (paused, resume) = hooks.pause_at("data/", 2);
    let (wal_dir, schemas) = (job.wal_dir.clone(), job.schemas.clone());
    let writing = std::thread::spawn(move || snapshot(&mut zombie, &wal_dir, &schemas));
    paused.recv_timeout(Duration::from_secs(60)).unwrap();

    // A new instance claims the archive: the paused writer can never commit.
    let archive = Archive::from_store(mem.clone(), "", "memory:///new").unwrap();
    let mut successor = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings()).unwrap();
    let zombie_id = marker_id(&mem);
    assert_eq!(files_of(&mem, &zombie_id).len(), 1);
    let report = archive.gc(1, Duration::ZERO).unwrap();
    assert!(report.pending.is_empty(), "{report:?}");
    assert_eq!(
        report.markers_deleted,
        std::slice::from_ref(&zombie_id),
        "{report:?}"
    );
    assert_eq!(
        report
            .files_deleted
            .iter()
            .filter(|p| p.contains(&zombie_id))
            .count(),
        1,
        "{report:?}"
    );

    resume.send(()).unwrap();
    match writing.join().unwrap() {
        Err(Error::Fenced { epoch, newer_epoch }) => assert_eq!((epoch, newer_epoch), (1, 2)),
        other => panic!("the zombie's commit gave {other:?}"),
    }
    // What it uploaded after GC listed data/ goes the next time.
    archive.gc(1, Duration::ZERO).unwrap();
    assert!(files_of(&mem, &zombie_id).is_empty());
    assert!(names(&mem, "pending").is_empty());
    assert_eq!(names(&mem, "data"), referenced(&archive));

    let m = job.snapshot(&mut successor).unwrap().manifest;
    job.check(&archive, &m, "the successor's snapshot");
}

#[test]
fn a_writer_that_stops_before_its_commit_is_released_by_the_next_claim() {
    let mut job = Job::new();
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let hooks = HookStore::new(mem.clone());
    let archive = Archive::from_store(Arc::new(hooks.clone()), "", "memory:///w").unwrap();
    let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings()).unwrap();
    job.work(0..400, 1, 100);
    job.snapshot(&mut writer).unwrap();
    job.work(0..400, 2, 200);
    // Its files are uploaded, and then no create of its manifest gets through: the outcome
    // is unknown to it, as to a writer killed right there, and its marker stays.
    hooks.fail_manifests.store(true, Ordering::SeqCst);
    let err = job.snapshot(&mut writer).unwrap_err();
    assert!(matches!(err, Error::ObjectStore { .. }), "{err:?}");
    hooks.fail_manifests.store(false, Ordering::SeqCst);
    let id = marker_id(&mem);
    let orphans = files_of(&mem, &id);
    assert!(orphans.len() >= 4, "{orphans:?}");
    // No new claim yet: the writer might still commit (it will try again, as the facade's
    // does), so its files stay.
    let report = archive.gc(1, Duration::ZERO).unwrap();
    assert_eq!(files_of(&mem, &id), orphans);
    assert_kept(&report, &id);
    assert_eq!(report.files_pending, orphans.len(), "{report:?}");

    // A restarted instance claims the archive: the marker is stale, its files are garbage.
    let mut next = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings()).unwrap();
    let report = archive.gc(1, Duration::ZERO).unwrap();
    assert_eq!(
        report.markers_deleted,
        std::slice::from_ref(&id),
        "{report:?}"
    );
    assert!(files_of(&mem, &id).is_empty());
    assert!(names(&mem, "pending").is_empty());
    assert_eq!(names(&mem, "data"), referenced(&archive));
    let m = job.snapshot(&mut next).unwrap().manifest;
    job.check(&archive, &m, "after the next claim");
}

#[test]
fn a_zombie_commit_into_a_sequence_gc_freed_is_fenced() {
    let mut job = Job::new();
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let hooks = HookStore::new(mem.clone());
    let zombie_archive = Archive::from_store(Arc::new(hooks.clone()), "", "memory:///z").unwrap();
    let mut zombie = SnapshotWriter::claim(zombie_archive, KEY_GROUPS, settings()).unwrap();
    job.work(0..400, 1, 100);
    job.snapshot(&mut zombie).unwrap();
    job.work(0..400, 2, 200);
    // Its files uploaded, the zombie is about to create sequence 3, its parent's next.
    let (paused, resume) = hooks.pause_at("manifests/", 1);
    let (wal_dir, schemas) = (job.wal_dir.clone(), job.schemas.clone());
    let writing = std::thread::spawn(move || snapshot(&mut zombie, &wal_dir, &schemas));
    paused.recv_timeout(Duration::from_secs(60)).unwrap();

    // A successor claims (sequence 3) and commits twice; GC then frees sequences 1 to 4.
    let archive = Archive::from_store(mem.clone(), "", "memory:///new").unwrap();
    let mut successor = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings()).unwrap();
    job.snapshot(&mut successor).unwrap();
    job.work(0..10, 3, 300);
    let current = job.snapshot(&mut successor).unwrap().manifest;
    assert_eq!(current.sequence, 5);
    archive.gc(1, Duration::ZERO).unwrap();
    assert_eq!(archive.sequences().unwrap(), [5]);

    // The zombie's conditional create of sequence 3 now succeeds, below the current one: it
    // must learn that it is fenced, not that it committed.
    resume.send(()).unwrap();
    match writing.join().unwrap() {
        Err(Error::Fenced { epoch, newer_epoch }) => assert_eq!((epoch, newer_epoch), (1, 2)),
        other => panic!("the zombie's commit gave {other:?}"),
    }
    assert_eq!(archive.latest().unwrap().unwrap().id, current.id);
    archive.gc(1, Duration::ZERO).unwrap();
    assert_eq!(archive.sequences().unwrap(), [5]);
    assert_eq!(names(&mem, "data"), referenced(&archive));
    job.check(&archive, &current, "the successor's snapshot");
}

// ------------------------------------------------------------------------------------------
// Strict names.

/// A local archive with a claim and two snapshots; returns its directory and the latest.
fn local_archive(job: &mut Job) -> (tempfile::TempDir, Archive, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(&format!("file://{}", dir.path().display())).unwrap();
    let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings()).unwrap();
    job.work(0..400, 1, 100);
    job.snapshot(&mut writer).unwrap();
    job.work(0..100, 2, 200);
    let latest = job.snapshot(&mut writer).unwrap().manifest;
    (dir, archive, latest)
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &FsPath) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &FsPath, dir: &FsPath, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn strays_in_manifests_and_data_are_never_parsed_or_deleted() {
    let mut job = Job::new();
    let (dir, archive, latest) = local_archive(&mut job);
    let root = dir.path();
    let current = format!("{:020}.mpm", latest.sequence);
    let current_bytes = std::fs::read(root.join("manifests").join(&current)).unwrap();
    let clean = tree(root);
    // A backup copy of the whole folder, a 21-digit name and others, all of which the old
    // GC parsed as the current sequence or choked on.
    let backup = root.join("manifests/backup");
    std::fs::create_dir(&backup).unwrap();
    for e in std::fs::read_dir(root.join("manifests")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, backup.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(root.join(format!("manifests/0{current}")), &current_bytes).unwrap();
    std::fs::write(root.join("manifests/x.mpm"), b"not a manifest").unwrap();
    std::fs::write(
        root.join(format!("manifests/{current}.bak")),
        &current_bytes,
    )
    .unwrap();
    // In data/: a copy in a sub-folder, a note, a name with 1 digit for 5, another suffix.
    let some_file = &latest.files().next().unwrap().path;
    let name = some_file.strip_prefix("data/").unwrap();
    std::fs::create_dir(root.join("data/backup")).unwrap();
    std::fs::copy(root.join(some_file), root.join("data/backup").join(name)).unwrap();
    std::fs::write(root.join("data/notes.txt"), b"hands off").unwrap();
    let short = name.replace("-00000.mpdf", "-0.mpdf");
    assert_ne!(short, name);
    std::fs::copy(root.join(some_file), root.join("data").join(short)).unwrap();
    std::fs::copy(root.join(some_file), root.join(format!("{some_file}.tmp"))).unwrap();
    std::fs::create_dir_all(root.join("pending/backup")).unwrap();
    std::fs::write(root.join("pending/x.mpp"), b"not a marker").unwrap();
    let strays: BTreeMap<String, Vec<u8>> = tree(root)
        .into_iter()
        .filter(|(p, _)| !clean.contains_key(p))
        .collect();
    assert_eq!(strays.len(), 3 + 3 + 4 + 1, "{:?}", strays.keys());

    let report = archive.gc(1, Duration::ZERO).unwrap();
    let after = tree(root);
    for (p, bytes) in &strays {
        assert_eq!(after.get(p), Some(bytes), "stray {p} was touched");
    }
    assert_eq!(
        std::fs::read(root.join("manifests").join(&current)).unwrap(),
        current_bytes,
        "the current manifest"
    );
    assert_eq!(archive.sequences().unwrap(), [latest.sequence]);
    assert_eq!(archive.latest().unwrap().unwrap(), latest);
    // manifests: backup/, the 21 digits, x.mpm, .bak; data: backup/, notes, short, .tmp;
    // pending: backup/, x.mpp.
    assert_eq!(report.ignored, 10, "{report:?}");
    job.check(&archive, &latest, "after GC among strays");
}

// ------------------------------------------------------------------------------------------
// Inputs checked first; bounded reads.

#[test]
fn a_huge_grace_or_retain_0_is_invalid_and_deletes_nothing() {
    let mut job = Job::new();
    let (dir, archive, _) = local_archive(&mut job);
    let before = tree(dir.path());
    for (retain, grace) in [
        (1, Duration::from_secs(u64::MAX)),
        (1, Duration::MAX),
        (1, MAX_GC_GRACE + Duration::from_secs(1)),
        (0, Duration::ZERO),
        (0, Duration::from_secs(u64::MAX)),
    ] {
        match archive.gc(retain, grace) {
            Err(Error::Invalid { reason }) => {
                assert!(
                    reason.contains("grace") || reason.contains("retain"),
                    "{reason}"
                )
            }
            other => panic!("gc({retain}, {grace:?}) gave {other:?}"),
        }
        assert_eq!(
            tree(dir.path()),
            before,
            "gc({retain}, {grace:?}) changed the archive"
        );
    }
    // The longest grace allowed works: old manifests go, every file is in grace.
    let report = archive.gc(1, MAX_GC_GRACE).unwrap();
    assert_eq!(report.manifests_deleted.len(), 2, "{report:?}");
    assert!(report.files_deleted.is_empty(), "{report:?}");
}

#[test]
fn an_oversized_manifest_or_marker_is_refused_without_being_read() {
    let mut job = Job::new();
    let (dir, _, latest) = local_archive(&mut job);
    let root = dir.path();
    // 300 MiB, sparse: more than the 256 MiB a manifest may have.
    let name = format!("manifests/{:020}.mpm", latest.sequence + 1);
    let f = std::fs::File::create(root.join(&name)).unwrap();
    f.set_len(300 << 20).unwrap();
    drop(f);
    let local = object_store::local::LocalFileSystem::new_with_prefix(root).unwrap();
    let hooks = HookStore::new(Arc::new(local));
    let archive = Archive::from_store(Arc::new(hooks.clone()), "", "file:///archive").unwrap();
    let before = tree(root);

    let refused = |e: Error| match e {
        Error::Corrupt { what, location } => {
            assert!(what.contains("larger than the 256 MiB limit"), "{what}");
            assert!(
                location.contains(&name) && location.contains("314572800"),
                "{location}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    };
    refused(archive.latest().unwrap_err());
    refused(archive.manifests().unwrap_err());
    refused(archive.find("latest").unwrap_err());
    refused(archive.gc(1, Duration::ZERO).unwrap_err());
    assert_eq!(tree(root), before, "GC deleted something before it failed");
    // The other manifests are a few KiB each.
    let read = hooks.body_bytes.load(Ordering::SeqCst);
    assert!(
        read < 1 << 20,
        "{read} bytes read: the oversized manifest was read"
    );

    // A marker of 1 GiB: taken as unreadable (and live) from its listed size, never read.
    std::fs::remove_file(root.join(&name)).unwrap();
    let id = format!("{:020}-0123456789abcdef", latest.sequence + 1);
    std::fs::create_dir_all(root.join("pending")).unwrap();
    let f = std::fs::File::create(root.join(format!("pending/{id}.mpp"))).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    hooks.body_bytes.store(0, Ordering::SeqCst);
    let report = archive.gc(1, Duration::ZERO).unwrap();
    assert_eq!(
        report.markers_unreadable,
        [format!("pending/{id}.mpp")],
        "{report:?}"
    );
    assert!(root.join(format!("pending/{id}.mpp")).exists());
    let read = hooks.body_bytes.load(Ordering::SeqCst);
    assert!(read < 1 << 20, "{read} bytes read: the marker was read");
}
