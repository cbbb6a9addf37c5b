//! Crash injection into every step of the snapshot commit protocol (docs/snapshot.md, "Commit
//! protocol"): the claim's manifest read and create, the parent files a snapshot downloads, its
//! data-file puts, its multipart uploads (create, parts, complete) and the manifest create;
//! and every step of a compaction (its downloads, pending marker, uploads and manifest).
//!
//! For each step N the snapshot runs against a [`FailingStore`] that fails step N either
//! *before* forwarding it (nothing reaches the store) or *after* (the store applied it, the
//! caller sees an error: a timeout after the server acted). Then a fresh `Archive` on the same
//! objects (a restarted process) must find the old snapshot or the new one, never a broken
//! one; `verify` passes; restore plus WAL replay equals the model as of the last commit; the
//! writer that saw the failure, retrying, succeeds (or is told `Conflict` when its commit did
//! land, as documented); a new claim's snapshot succeeds; and `gc(_, Duration::ZERO)` removes
//! the orphans while every file of the retained manifests stays.

mod common;

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use millpond_snapshot::compaction::{compact, pick};
use millpond_snapshot::{
    Archive, CompactionKind, CompactionReport, CompactionSettings, DataFileSettings, Manifest,
    ManifestKind, RunKind, SnapshotReport, SnapshotSettings, SnapshotWriter,
};
use millpond_state::{StateSchema, Store};
use millpond_wal::{
    open_local, LocalSegmentSource, SegmentSettings, SourceOffset, Wal, WalSettings,
};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use parking_lot::Mutex;
use rand::{RngCore, SeedableRng};

use common::{register, restore_and_check, store_settings, LogTo, Model, States, KEY_GROUPS};

/// Memory budget of the live and the restored stores.
const BUDGET: usize = 64 << 20;

// ------------------------------------------------------------------------------------------
// The fault-injecting store.

/// A counted object-store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `put_opts`: a whole-object put (data files below the part size, manifests).
    Put,
    /// `put_multipart_opts`: starting a multipart upload.
    CreateMultipart,
    /// `MultipartUpload::put_part`.
    PutPart,
    /// `MultipartUpload::complete`: the object becomes visible.
    Complete,
    /// `get_opts`: whole gets and range gets.
    Get,
}

/// When the armed step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// The call fails without reaching the inner store: nothing is applied.
    Before,
    /// The call is forwarded and applied, then the caller gets an error (for a get: the body
    /// breaks off halfway).
    After,
}

#[derive(Debug, Default)]
struct Plan {
    /// Every counted operation since the last `reset`, in call order, with its path.
    log: Vec<(Op, String)>,
    /// Fail the n-th (1-based) counted operation after the last `reset`.
    fail_at: Option<(usize, When)>,
    /// The operation that was failed.
    fired: Option<(Op, String, When)>,
}

/// A test fake: an [`ObjectStore`] decorator (like object_store's `ThrottledStore`) that
/// forwards every call to the store it wraps, counts puts, multipart creates, parts and
/// completes, and gets, and can be armed to fail the N-th of them either before forwarding it
/// or after (applied, but the caller gets an error). Only for tests; it never retries.
#[derive(Debug, Clone)]
struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<Mutex<Plan>>,
}

impl fmt::Display for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingStore({})", self.inner)
    }
}

impl FailingStore {
    fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FailingStore {
            inner,
            plan: Arc::default(),
        }
    }

    /// Clears the log and arms step `n` (1 = the next counted operation).
    fn arm(&self, n: usize, when: When) {
        let mut p = self.plan.lock();
        p.log.clear();
        p.fired = None;
        p.fail_at = Some((n, when));
    }

    fn disarm(&self) {
        self.plan.lock().fail_at = None;
    }

    fn log(&self) -> Vec<(Op, String)> {
        self.plan.lock().log.clone()
    }

    fn fired(&self) -> Option<(Op, String, When)> {
        self.plan.lock().fired.clone()
    }

    /// Counts one operation; `Some` if it is the armed one.
    fn step(&self, op: Op, path: &Path) -> Option<When> {
        let mut p = self.plan.lock();
        p.log.push((op, path.to_string()));
        let n = p.log.len();
        match p.fail_at {
            Some((at, when)) if at == n => {
                p.fired = Some((op, path.to_string(), when));
                Some(when)
            }
            _ => None,
        }
    }
}

fn injected(op: Op, path: &str, when: When) -> object_store::Error {
    object_store::Error::Generic {
        store: "FailingStore",
        source: format!("injected failure {when:?} {op:?} of {path}").into(),
    }
}

#[async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        match self.step(Op::Put, location) {
            Some(When::Before) => Err(injected(Op::Put, location.as_ref(), When::Before)),
            Some(When::After) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected(Op::Put, location.as_ref(), When::After))
            }
            None => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let when = self.step(Op::CreateMultipart, location);
        if when == Some(When::Before) {
            return Err(injected(
                Op::CreateMultipart,
                location.as_ref(),
                When::Before,
            ));
        }
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        if when == Some(When::After) {
            // The upload exists on the server, but the caller never learns its id.
            return Err(injected(
                Op::CreateMultipart,
                location.as_ref(),
                When::After,
            ));
        }
        Ok(Box::new(FailingUpload {
            inner,
            store: self.clone(),
            path: location.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        match self.step(Op::Get, location) {
            Some(When::Before) => Err(injected(Op::Get, location.as_ref(), When::Before)),
            Some(When::After) => {
                // The response started; the connection broke halfway through the body.
                let got = self.inner.get_opts(location, options).await?;
                let (meta, range, attributes) =
                    (got.meta.clone(), got.range.clone(), got.attributes.clone());
                let body = got.bytes().await?;
                let half = body.slice(..body.len() / 2);
                let err = injected(Op::Get, location.as_ref(), When::After);
                let stream = futures::stream::iter(vec![Ok(half), Err(err)]).boxed();
                Ok(GetResult {
                    payload: GetResultPayload::Stream(stream),
                    meta,
                    range,
                    attributes,
                    extensions: Default::default(),
                })
            }
            None => self.inner.get_opts(location, options).await,
        }
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

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
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

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A multipart upload of a [`FailingStore`]: parts and the completion are counted steps.
#[derive(Debug)]
struct FailingUpload {
    inner: Box<dyn MultipartUpload>,
    store: FailingStore,
    path: Path,
}

#[async_trait]
impl MultipartUpload for FailingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let path = self.path.to_string();
        match self.store.step(Op::PutPart, &self.path) {
            Some(When::Before) => {
                Box::pin(async move { Err(injected(Op::PutPart, &path, When::Before)) })
            }
            Some(When::After) => {
                let part = self.inner.put_part(data);
                Box::pin(async move {
                    part.await?;
                    Err(injected(Op::PutPart, &path, When::After))
                })
            }
            None => self.inner.put_part(data),
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        match self.store.step(Op::Complete, &self.path) {
            Some(When::Before) => Err(injected(Op::Complete, self.path.as_ref(), When::Before)),
            Some(When::After) => {
                self.inner.complete().await?;
                Err(injected(Op::Complete, self.path.as_ref(), When::After))
            }
            None => self.inner.complete().await,
        }
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

// ------------------------------------------------------------------------------------------
// A job: a store logging to a local WAL, and a model of what it holds.

struct Live {
    store: Store,
    states: States,
    wal: Arc<Wal>,
    model: Model,
}

impl Live {
    fn open(wal_dir: &FsPath, state_dir: &FsPath) -> Live {
        let (wal, outcome) = open_local(
            wal_dir,
            0,
            WalSettings::default(),
            SegmentSettings::default(),
            |_| Ok::<(), std::io::Error>(()),
        )
        .unwrap();
        assert!(outcome.last_commit.is_none(), "a fresh WAL");
        let wal = Arc::new(wal);
        let store = Store::builder(state_dir)
            .settings(store_settings(BUDGET))
            .change_sink(LogTo(wal.clone()))
            .open()
            .unwrap();
        let states = register(&store);
        Live {
            store,
            states,
            wal,
            model: Model::default(),
        }
    }

    /// Counts, list appends, map puts and clears over `keys`, as in a real job.
    fn work(&mut self, keys: impl Iterator<Item = u64>, round: u64) {
        for i in keys {
            let k = format!("key-{i}");
            self.model.touched.insert(k.clone());
            let n = self.model.counts.entry(k.clone()).or_default();
            *n += 1;
            self.states.counts.update(&k, n).unwrap();
            if i % 3 == 0 {
                self.states.lists.add(&k, &round).unwrap();
                self.model.lists.entry(k.clone()).or_default().push(round);
            }
            if i % 5 == 0 {
                let uk = format!("u{}", round % 4);
                self.states.maps.put(&k, &uk, &(i * round)).unwrap();
                self.model
                    .maps
                    .entry(k.clone())
                    .or_default()
                    .insert(uk, i * round);
            }
            if i % 7 == 0 && round.is_multiple_of(2) {
                self.states.maps.clear(&k).unwrap();
                self.model.maps.remove(&k);
            }
            if i % 11 == 0 && round >= 2 {
                self.states.counts.clear(&k).unwrap();
                self.model.counts.remove(&k);
            }
        }
    }

    fn blob(&mut self, i: u64, bytes: usize, seed: u64) {
        let k = format!("blob-{i}");
        let mut v = vec![0u8; bytes];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        self.states.blobs.update(&k, &v).unwrap();
        self.model.touched.insert(k.clone());
        self.model.blobs.insert(k, v);
    }

    /// A commit marker; returns its LSN.
    fn commit(&self, next_offset: i64) -> u64 {
        let ticket = self
            .wal
            .commit(&[SourceOffset {
                topic: "in".into(),
                partition: 0,
                next_offset,
            }])
            .unwrap();
        let lsn = ticket.lsn();
        ticket.wait().unwrap();
        lsn
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

// ------------------------------------------------------------------------------------------
// Scenarios.

/// A WAL with two commits, an archive holding a snapshot of the first (the parent), and the
/// model as of the second (the last commit; an uncommitted tail follows it in the WAL).
struct Scenario {
    name: &'static str,
    _dir: tempfile::TempDir,
    wal_dir: PathBuf,
    /// The archive's objects after the parent snapshot; every run forks it.
    base: InMemory,
    parent: Manifest,
    committed: Model,
    last_lsn: u64,
    schemas: Vec<StateSchema>,
    settings: SnapshotSettings,
}

impl Scenario {
    fn build(
        name: &'static str,
        settings: SnapshotSettings,
        round1: impl FnOnce(&mut Live),
        round2: impl FnOnce(&mut Live),
    ) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut live = Live::open(&wal_dir, &dir.path().join("live"));
        let schemas = live.store.schemas();
        round1(&mut live);
        live.commit(100);
        let base = InMemory::new();
        let archive = Archive::from_store(Arc::new(base.clone()), "", "memory:///setup").unwrap();
        let mut writer = SnapshotWriter::claim(archive, KEY_GROUPS, settings.clone()).unwrap();
        let parent = snapshot(&mut writer, &wal_dir, &schemas)
            .unwrap()
            .expect("the first commit makes a snapshot")
            .manifest;
        round2(&mut live);
        let last_lsn = live.commit(200);
        let committed = live.model.clone();
        // An uncommitted tail: in the WAL, never in a snapshot or a restore.
        live.work(0..50, 9);
        live.wal.close().unwrap();
        live.store.close().unwrap();
        Scenario {
            name,
            _dir: dir,
            wal_dir,
            base,
            parent,
            committed,
            last_lsn,
            schemas,
            settings,
        }
    }

    fn claim_and_snapshot(
        &self,
        archive: Archive,
    ) -> (
        Option<SnapshotWriter>,
        millpond_snapshot::Result<Option<SnapshotReport>>,
    ) {
        match SnapshotWriter::claim(archive, KEY_GROUPS, self.settings.clone()) {
            Ok(mut w) => {
                let r = snapshot(&mut w, &self.wal_dir, &self.schemas);
                (Some(w), r)
            }
            Err(e) => (None, Err(e)),
        }
    }

    /// The counted operations of a claim and a snapshot without failures.
    fn dry_run(&self) -> Vec<(Op, String)> {
        let failing = FailingStore::new(Arc::new(self.base.fork()));
        let archive = Archive::from_store(Arc::new(failing.clone()), "", "memory:///dry").unwrap();
        let (_, r) = self.claim_and_snapshot(archive);
        let report = r.unwrap().expect("a commit after the parent");
        assert_eq!(report.manifest.lsn, self.last_lsn);
        failing.log()
    }

    /// Fails step `n` of claim + snapshot `when`, then checks the archive as a restarted
    /// process sees it.
    fn crash_at(&self, n: usize, when: When, dry: &[(Op, String)]) {
        let what = format!(
            "{}: step {n} ({:?} {}) failing {when:?}",
            self.name,
            dry[n - 1].0,
            dry[n - 1].1
        );
        let mem = Arc::new(self.base.fork());
        let failing = FailingStore::new(mem.clone());
        failing.arm(n, when);
        let archive =
            Archive::from_store(Arc::new(failing.clone()), "", "memory:///crash").unwrap();
        let (writer, result) = self.claim_and_snapshot(archive);
        let crashed_log = fired_as_in_the_dry_run(&failing, dry, n, &what);
        // The snapshot's own manifest create is the last step of a complete run.
        let commit_step = dry.len();
        assert!(
            dry[commit_step - 1].0 == Op::Put && dry[commit_step - 1].1.starts_with("manifests/")
        );
        // A failed manifest create is retried by the writer with the same manifest, which
        // resolves the unknown outcome either way: the snapshot commits.
        let retried_commit = n == commit_step;
        match result {
            Ok(Some(r)) if retried_commit => {
                assert_eq!(r.manifest.lsn, self.last_lsn, "{what}: committed on retry")
            }
            Ok(r) => panic!(
                "{what}: the injected failure was swallowed: {:?}",
                r.map(|r| r.manifest.id)
            ),
            Err(err) => {
                assert!(
                    !retried_commit,
                    "{what}: the commit was not retried: {err:?}"
                );
                assert!(
                    err.is_transient(),
                    "{what}: a store failure must be reported as transient (ObjectStore or Io), got {err:?}"
                );
            }
        }
        let committed = retried_commit;

        // The uploads the crashed run applied are in the store, named by nothing (unless it
        // committed): orphans.
        let applied_uploads = applied_uploads(&crashed_log, n, when);
        let present = data_files(&mem);
        for p in &applied_uploads {
            assert!(
                present.contains(p),
                "{what}: {p} was applied but is missing"
            );
        }

        // A restarted process: a fresh archive on (a copy of) the objects.
        let restarted = Arc::new(mem.fork());
        let fresh = Archive::from_store(restarted.clone(), "", "memory:///restart").unwrap();
        let latest = fresh.latest().unwrap().expect("the parent at least");
        if committed {
            assert_eq!(
                latest.lsn, self.last_lsn,
                "{what}: the committed snapshot is current"
            );
            assert_eq!(latest.kind, ManifestKind::Snapshot, "{what}");
        } else {
            assert_eq!(
                latest.lsn, self.parent.lsn,
                "{what}: the parent's state is current"
            );
            assert_eq!(
                latest.partitions, self.parent.partitions,
                "{what}: the parent's files"
            );
        }
        verify_and_restore(&fresh, &latest, &self.wal_dir, &self.committed, &what);
        // It claims and snapshots: a new snapshot unless the crashed one committed.
        let (_, r) = self.claim_and_snapshot(fresh.clone());
        match r {
            Ok(Some(r)) if !committed => assert_eq!(r.manifest.lsn, self.last_lsn, "{what}"),
            Ok(None) if committed => {}
            other => panic!(
                "{what}: the snapshot after a restart (crashed commit landed: {committed}) \
                 gave {:?}",
                other.map(|r| r.map(|r| r.manifest.id))
            ),
        }
        self.gc_and_check(&restarted, &applied_uploads, &format!("{what}, restarted"));

        // Or the writer that saw the failure retries at once: a transient failure is retried
        // with success; after a commit that landed there is nothing new to snapshot.
        if let Some(mut w) = writer {
            match snapshot(&mut w, &self.wal_dir, &self.schemas) {
                Ok(Some(r)) if !committed => {
                    assert_eq!(r.manifest.lsn, self.last_lsn, "{what}");
                }
                // It committed: nothing new to snapshot.
                Ok(None) if committed => {}
                other => panic!(
                    "{what}: the same writer's retry (commit landed: {committed}) gave {:?}",
                    other.map(|r| r.map(|r| r.manifest.id))
                ),
            }
            self.gc_and_check(&mem, &applied_uploads, &format!("{what}, retried"));
        }
    }

    fn gc_and_check(&self, mem: &Arc<InMemory>, orphans: &[String], what: &str) {
        gc_and_check(
            mem,
            orphans,
            &self.wal_dir,
            &self.committed,
            self.last_lsn,
            what,
        );
    }

    fn crash_at_every_step(&self, expect: &[Op]) {
        let dry = self.dry_run();
        for op in expect {
            assert!(
                dry.iter().any(|(o, _)| o == op),
                "{}: the snapshot never does {op:?}: {dry:?}",
                self.name
            );
        }
        for n in 1..=dry.len() {
            for when in [When::Before, When::After] {
                self.crash_at(n, when, &dry);
            }
        }
        eprintln!(
            "{}: {} steps, each failed before and after: {:?}",
            self.name,
            dry.len(),
            dry.iter().map(|(o, _)| *o).collect::<Vec<_>>()
        );
    }
}

/// The archive in `mem` is at the last commit; GC removes the orphans (`orphans` among
/// them) and keeps every file of the retained manifests, which verify and restore.
fn gc_and_check(
    mem: &Arc<InMemory>,
    orphans: &[String],
    wal_dir: &FsPath,
    committed: &Model,
    last_lsn: u64,
    what: &str,
) {
    let archive = Archive::from_store(mem.clone(), "", "memory:///gc").unwrap();
    let latest = archive.latest().unwrap().unwrap();
    assert_eq!(latest.lsn, last_lsn, "{what}: at the last commit");
    let report = archive.gc(2, Duration::ZERO).unwrap();
    let kept = archive.manifests().unwrap();
    assert_eq!(kept.len(), report.manifests_kept, "{what}");
    let referenced: BTreeSet<String> = kept
        .iter()
        .flat_map(|m| m.files().map(|f| f.path.clone()))
        .collect();
    assert_eq!(
        data_files(mem),
        referenced,
        "{what}: after gc, the data files are exactly the retained manifests' files"
    );
    for p in orphans {
        if !referenced.contains(p) {
            assert!(
                report.files_deleted.contains(p),
                "{what}: orphan {p} not deleted: {report:?}"
            );
        }
    }
    assert_eq!(report.files_in_grace, 0, "{what}");
    for m in &kept {
        archive
            .verify(m, |_| {})
            .unwrap_or_else(|e| panic!("{what}: after gc, verify of {} failed: {e}", m.id));
    }
    restore_and_check(
        &archive,
        &latest,
        wal_dir,
        committed,
        BUDGET,
        &format!("{what}, after gc"),
    );
}

/// `latest` verifies, and restored plus the WAL equals `committed`.
fn verify_and_restore(
    archive: &Archive,
    latest: &Manifest,
    wal_dir: &FsPath,
    committed: &Model,
    what: &str,
) {
    archive
        .verify(latest, |_| {})
        .unwrap_or_else(|e| panic!("{what}: verify of {} failed: {e}", latest.id));
    restore_and_check(
        archive,
        latest,
        wal_dir,
        committed,
        BUDGET,
        &format!("{what}, restored"),
    );
}

/// Disarms `failing` and checks that the step that failed is step `n` of the dry run (by
/// directory); returns the operations of the crashed run.
fn fired_as_in_the_dry_run(
    failing: &FailingStore,
    dry: &[(Op, String)],
    n: usize,
    what: &str,
) -> Vec<(Op, String)> {
    let crashed_log = failing.log();
    let fired = failing.fired();
    failing.disarm();
    let (op, path, _) =
        fired.unwrap_or_else(|| panic!("{what}: the failure never fired; ran {crashed_log:?}"));
    assert_eq!(
        (op, dir_of(&path)),
        (dry[n - 1].0, dir_of(&dry[n - 1].1)),
        "{what}: the run differs from the dry run"
    );
    crashed_log
}

/// The data files a run failed at step `n` (`when`) uploaded: the store has them.
fn applied_uploads(log: &[(Op, String)], n: usize, when: When) -> Vec<String> {
    log.iter()
        .enumerate()
        .filter(|(i, (op, p))| {
            p.starts_with("data/")
                && matches!(op, Op::Put | Op::Complete)
                && (*i + 1 < n || when == When::After)
        })
        .map(|(_, (_, p))| p.clone())
        .collect()
}

/// Data file names carry a random snapshot id: runs are compared by directory only.
fn dir_of(path: &str) -> &str {
    path.split('/').next().unwrap_or("")
}

fn data_files(mem: &Arc<InMemory>) -> BTreeSet<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(mem.list(Some(&Path::from("data"))).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect()
}

#[test]
fn a_crash_at_any_step_of_an_incremental_snapshot_leaves_the_old_or_the_new_snapshot() {
    let sc = Scenario::build(
        "small files",
        SnapshotSettings {
            target_file_bytes: 8 << 10,
            sort_buffer_bytes: 1 << 20,
            ..SnapshotSettings::default()
        },
        |live| live.work(0..1500, 1),
        // A few keys change: a delta run of them per partition they fall in.
        |live| live.work([7u64, 8, 9, 700, 1400].into_iter(), 2),
    );
    assert!(
        sc.parent.files().count() > 10,
        "{:?}",
        sc.parent.files().count()
    );
    sc.crash_at_every_step(&[Op::Get, Op::Put]);
}

#[test]
fn a_crash_at_any_step_of_a_multipart_upload_leaves_the_old_or_the_new_snapshot() {
    // ~21 MiB of incompressible values in one partition's data file (the target is 64 MiB),
    // so the file goes up in 16 MiB parts; the change rewrites ~18 MiB of them, so its delta
    // run goes up in parts too.
    let sc = Scenario::build(
        "multipart",
        SnapshotSettings {
            data_file: DataFileSettings {
                block_bytes: 64 << 10,
                compress: false,
            },
            partitions: 1,
            ..SnapshotSettings::default()
        },
        |live| {
            for i in 0..24 {
                live.blob(i, 900 << 10, i);
            }
            live.work(0..100, 1);
        },
        |live| {
            for i in 0..20 {
                live.blob(i, 900 << 10, 1003 + i);
            }
            live.work(0..10, 2);
        },
    );
    assert!(
        sc.parent.files().any(|f| f.bytes > 16 << 20),
        "{:?}",
        sc.parent.partitions
    );
    sc.crash_at_every_step(&[Op::Get, Op::CreateMultipart, Op::PutPart, Op::Complete]);
}

// ------------------------------------------------------------------------------------------
// Compaction.

/// An archive whose latest snapshot has delta runs over its bottom runs (three snapshots of
/// changing keys), the model as of its commit, and a major compaction of one partition to
/// crash at every step: its downloads, the pending marker, its uploads and its manifest.
struct CompactionScenario {
    _dir: tempfile::TempDir,
    wal_dir: PathBuf,
    base: InMemory,
    latest: Manifest,
    committed: Model,
    settings: SnapshotSettings,
}

/// Every partition with a delta run is due, as a major job.
fn major() -> CompactionSettings {
    CompactionSettings {
        delta_ratio_percent: 1,
        ..CompactionSettings::default()
    }
}

impl CompactionScenario {
    fn build() -> CompactionScenario {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let mut live = Live::open(&wal_dir, &dir.path().join("live"));
        let schemas = live.store.schemas();
        let settings = SnapshotSettings {
            target_file_bytes: 4 << 10,
            sort_buffer_bytes: 1 << 20,
            partitions: 4,
            ..SnapshotSettings::default()
        };
        let base = InMemory::new();
        let archive = Archive::from_store(Arc::new(base.clone()), "", "memory:///setup").unwrap();
        let mut writer = SnapshotWriter::claim(archive, KEY_GROUPS, settings.clone()).unwrap();
        let mut latest = None;
        for round in 1..=3u64 {
            // All keys first, then a third of them and a few others: clears and tombstones
            // in the deltas too.
            match round {
                1 => live.work(0..1200, round),
                _ => live.work((0..1200).step_by(3).chain(5000..5010), round),
            }
            live.commit(round as i64 * 100);
            latest = snapshot(&mut writer, &wal_dir, &schemas).unwrap();
        }
        let latest = latest.expect("a snapshot of the last round").manifest;
        assert!(
            latest.runs().any(|(_, r)| r.kind == RunKind::Delta),
            "{:?}",
            latest.partitions
        );
        let committed = live.model.clone();
        live.work(0..50, 9);
        live.wal.close().unwrap();
        live.store.close().unwrap();
        CompactionScenario {
            _dir: dir,
            wal_dir,
            base,
            latest,
            committed,
            settings,
        }
    }

    /// Claims `archive` (uncounted), then runs one major job, counted.
    fn claim_and_compact(
        &self,
        failing: &FailingStore,
        archive: Archive,
    ) -> (SnapshotWriter, millpond_snapshot::Result<CompactionReport>) {
        let armed = failing.plan.lock().fail_at.take();
        let mut writer = SnapshotWriter::claim(archive, KEY_GROUPS, self.settings.clone()).unwrap();
        match armed {
            Some((n, when)) => failing.arm(n, when),
            None => failing.arm(usize::MAX, When::Before),
        }
        let r = compact_once(&mut writer, &self.settings);
        (writer, r)
    }

    fn crash_at(&self, n: usize, when: When, dry: &[(Op, String)]) {
        let what = format!(
            "compaction: step {n} ({:?} {}) failing {when:?}",
            dry[n - 1].0,
            dry[n - 1].1
        );
        let mem = Arc::new(self.base.fork());
        let failing = FailingStore::new(mem.clone());
        failing.arm(n, when);
        let archive =
            Archive::from_store(Arc::new(failing.clone()), "", "memory:///crash").unwrap();
        let (mut writer, result) = self.claim_and_compact(&failing, archive);
        let crashed_log = fired_as_in_the_dry_run(&failing, dry, n, &what);
        // The manifest create is the last step; a failed one is retried with the same
        // manifest, which resolves the unknown outcome: the compaction commits.
        let commit_step = dry.len();
        assert!(dry[commit_step - 1].1.starts_with("manifests/"), "{dry:?}");
        let committed = n == commit_step;
        match &result {
            Ok(r) if committed => assert_eq!(r.manifest.kind, ManifestKind::Compaction),
            Ok(r) => panic!(
                "{what}: the injected failure was swallowed: {}",
                r.manifest.id
            ),
            Err(e) => {
                assert!(!committed, "{what}: the commit was not retried: {e:?}");
                assert!(e.is_transient(), "{what}: {e:?}");
            }
        }
        let applied_uploads = applied_uploads(&crashed_log, n, when);

        // A restarted process sees the snapshot before the compaction or the compacted one,
        // the same state either way.
        let restarted = Arc::new(mem.fork());
        let fresh = Archive::from_store(restarted.clone(), "", "memory:///restart").unwrap();
        let latest = fresh.latest().unwrap().unwrap();
        assert_eq!(latest.lsn, self.latest.lsn, "{what}");
        if committed {
            assert_eq!(latest.kind, ManifestKind::Compaction, "{what}");
        } else {
            assert_eq!(latest.partitions, self.latest.partitions, "{what}");
        }
        verify_and_restore(&fresh, &latest, &self.wal_dir, &self.committed, &what);
        // It claims and compacts again: the archive's marker and orphans are stale then.
        let mut again = SnapshotWriter::claim(fresh, KEY_GROUPS, self.settings.clone()).unwrap();
        compact_once(&mut again, &self.settings)
            .unwrap_or_else(|e| panic!("{what}: compaction after a restart: {e}"));
        gc_and_check(
            &restarted,
            &applied_uploads,
            &self.wal_dir,
            &self.committed,
            self.latest.lsn,
            &format!("{what}, restarted"),
        );

        // Or the writer that saw the failure compacts again at once.
        compact_once(&mut writer, &self.settings)
            .unwrap_or_else(|e| panic!("{what}: the same writer's retry: {e}"));
        gc_and_check(
            &mem,
            &applied_uploads,
            &self.wal_dir,
            &self.committed,
            self.latest.lsn,
            &format!("{what}, retried"),
        );
    }
}

/// Picks a due major job from the writer's last manifest, runs it and commits it.
fn compact_once(
    writer: &mut SnapshotWriter,
    settings: &SnapshotSettings,
) -> millpond_snapshot::Result<CompactionReport> {
    let parent = writer.parent().clone();
    let job = pick(&parent, &major()).expect("a partition with a delta run");
    let archive = writer.archive().clone();
    let output = compact(&archive, &parent, job, 0, settings, &AtomicBool::new(false))?;
    writer.commit_compaction(output)
}

#[test]
fn a_crash_at_any_step_of_a_compaction_leaves_the_snapshot_or_the_compacted_one() {
    let sc = CompactionScenario::build();
    let dry = {
        let failing = FailingStore::new(Arc::new(sc.base.fork()));
        let archive = Archive::from_store(Arc::new(failing.clone()), "", "memory:///dry").unwrap();
        let (_, r) = sc.claim_and_compact(&failing, archive);
        let r = r.unwrap();
        assert_eq!(r.kind, CompactionKind::Major);
        assert!(r.runs_in >= 2, "{r:?}");
        failing.log()
    };
    for op in [Op::Get, Op::Put] {
        assert!(dry.iter().any(|(o, _)| *o == op), "never {op:?}: {dry:?}");
    }
    for n in 1..=dry.len() {
        for when in [When::Before, When::After] {
            sc.crash_at(n, when, &dry);
        }
    }
    eprintln!(
        "compaction: {} steps, each failed before and after: {:?}",
        dry.len(),
        dry.iter()
            .map(|(o, p)| format!("{o:?} {}", dir_of(p)))
            .collect::<Vec<_>>()
    );
}
