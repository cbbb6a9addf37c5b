//! Snapshots in a real S3-compatible server (moto, started by `scripts/services up s3`):
//! a round trip with many small files and one multipart file, writers racing for the archive
//! (fencing, concurrent claims), and GC.
//!
//! ```sh
//! cd /work/main && out=$(scripts/services up s3) && eval "$out" \
//!   && cargo test -p millpond-snapshot --test snapshot_s3
//! ```
//!
//! Without `S3_ENDPOINT` every test panics: they never pass silently. Each test works under a
//! random prefix of `s3://$S3_BUCKET/` and deletes it at the end.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use futures::TryStreamExt;
use millpond_snapshot::{
    Archive, Error, Manifest, ManifestKind, RestoreSettings, SnapshotBase, SnapshotReport,
    SnapshotSettings, SnapshotWriter,
};
use millpond_state::{key_group, StateSchema, Store};
use millpond_wal::{LocalSegmentSource, SourceOffset, Wal};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use rand::{RngCore, SeedableRng};

use common::{register, restore_and_check, store_settings, LogTo, Model, States, KEY_GROUPS};

/// Memory budget of the live and the restored stores.
const BUDGET: usize = 128 << 20;

// ------------------------------------------------------------------------------------------
// The server.

/// A fresh archive location `s3://$S3_BUCKET/<random prefix>`; panics if the server's
/// variables are not set.
struct S3Prefix {
    bucket: String,
    prefix: String,
}

impl S3Prefix {
    fn new(test: &str) -> S3Prefix {
        let endpoint = std::env::var("S3_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "S3_ENDPOINT is not set: this test needs the S3-compatible server. Run \
                 `out=$(scripts/services up s3) && eval \"$out\"` first (see scripts/README.md)"
            )
        });
        for var in [
            "S3_BUCKET",
            "AWS_ENDPOINT",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(
                std::env::var_os(var).is_some(),
                "S3_ENDPOINT is {endpoint} but {var} is not set: eval the output of \
                 `scripts/services up s3`"
            );
        }
        S3Prefix {
            bucket: std::env::var("S3_BUCKET").unwrap(),
            prefix: format!("millpond-test/{test}-{:016x}", rand::random::<u64>()),
        }
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// An archive over the prefix, as a process would open it.
    fn open(&self) -> Archive {
        Archive::open(&self.url()).unwrap_or_else(|e| panic!("opening {}: {e}", self.url()))
    }

    fn store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .build()
            .unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Object paths under `dir` of the prefix, relative to the prefix.
    fn list(&self, dir: &str) -> BTreeSet<String> {
        let store = self.store();
        let prefix = Path::from(format!("{}/{dir}", self.prefix));
        let strip = format!("{}/", self.prefix);
        Self::block_on(store.list(Some(&prefix)).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|m| {
                m.location
                    .to_string()
                    .strip_prefix(&strip)
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }
}

impl Drop for S3Prefix {
    fn drop(&mut self) {
        let store = self.store();
        let prefix = Path::from(self.prefix.as_str());
        let _ = Self::block_on(async {
            let all: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
            for m in all {
                store.delete(&m.location).await?;
            }
            Ok::<(), object_store::Error>(())
        });
    }
}

// ------------------------------------------------------------------------------------------
// A job: a store logging to a local WAL, and a model of what it holds.

struct Live {
    _dir: tempfile::TempDir,
    wal_dir: std::path::PathBuf,
    store: Store,
    states: States,
    wal: Arc<Wal>,
    model: Model,
    next_offset: i64,
}

impl Live {
    fn open() -> Live {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = common::open_wal(&wal_dir);
        let store = Store::builder(dir.path().join("live"))
            .settings(store_settings(BUDGET))
            .change_sink(LogTo(wal.clone()))
            .open()
            .unwrap();
        let states = register(&store);
        Live {
            _dir: dir,
            wal_dir,
            store,
            states,
            wal,
            model: Model::default(),
            next_offset: 0,
        }
    }

    fn schemas(&self) -> Vec<StateSchema> {
        self.store.schemas()
    }

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
        }
    }

    fn blob(&mut self, k: &str, bytes: usize, seed: u64) {
        let mut v = vec![0u8; bytes];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        self.states.blobs.update(&k.to_string(), &v).unwrap();
        self.model.touched.insert(k.to_string());
        self.model.blobs.insert(k.to_string(), v);
    }

    /// A commit marker; returns the model as of it.
    fn commit(&mut self) -> Model {
        self.next_offset += 100;
        self.wal
            .commit(&[SourceOffset {
                topic: "in".into(),
                partition: 0,
                next_offset: self.next_offset,
            }])
            .unwrap()
            .wait()
            .unwrap();
        self.model.clone()
    }

    fn snapshot(&self, writer: &mut SnapshotWriter) -> millpond_snapshot::Result<SnapshotReport> {
        let mut source = LocalSegmentSource::open(&self.wal_dir, writer.parent().lsn + 1).unwrap();
        writer
            .snapshot_from_wal(&mut source, &self.schemas())
            .map(|r| r.expect("a commit after the parent"))
    }
}

fn small_files() -> SnapshotSettings {
    SnapshotSettings {
        target_file_bytes: 32 << 10,
        ..SnapshotSettings::default()
    }
}

/// `n` blob keys that all fall in one key group, so that their file exceeds the part size.
fn keys_in_one_key_group(n: usize) -> Vec<String> {
    let kg = key_group(b"blob-0", KEY_GROUPS);
    (0..)
        .map(|i| format!("blob-{i}"))
        .filter(|k| key_group(k.as_bytes(), KEY_GROUPS) == kg)
        .take(n)
        .collect()
}

// ------------------------------------------------------------------------------------------
// Tests.

#[test]
fn s3_round_trip_with_small_files_and_a_multipart_file() {
    let s3 = S3Prefix::new("round-trip");
    let archive = s3.open();
    let mut live = Live::open();
    // ~20k keys in small files, and ~21 MiB of incompressible values in one key group: one
    // file above the 16 MiB part size, uploaded (and later downloaded) in parts.
    live.work(0..20_000, 1);
    let big = keys_in_one_key_group(3);
    for (i, k) in big.iter().enumerate() {
        live.blob(k, 7 << 20, i as u64);
    }
    live.commit();
    let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, small_files()).unwrap();
    let first = live.snapshot(&mut writer).unwrap();
    let m = &first.manifest;
    assert!(m.files().count() > 10, "{} files", m.files().count());
    let largest = m.files().map(|f| f.bytes).max().unwrap();
    assert!(
        largest > 16 << 20,
        "largest file {largest} bytes: no multipart upload"
    );
    let report = archive.verify(m, |_| {}).unwrap();
    assert_eq!(report.files, m.files().count());
    assert_eq!(s3.list("data").len(), m.files().count());

    // A few keys and every big value change: the delta of the big values' partition goes
    // up in parts; every file of the first snapshot is named again, none read.
    live.work([1u64, 2, 3, 19_999].into_iter(), 2);
    for (i, k) in big.iter().enumerate() {
        live.blob(k, 6 << 20, 99 + i as u64);
    }
    live.commit();
    let second = live.snapshot(&mut writer).unwrap();
    let m2 = &second.manifest;
    // At most one delta file for each of the partitions of the four keys and the big ones.
    assert!(
        second.files_written <= 5 && m2.files().count() == m.files().count() + second.files_written,
        "{} of {} files written",
        second.files_written,
        m2.files().count()
    );
    assert!(m2
        .files()
        .any(|f| f.bytes > 16 << 20 && f.written_by == m2.sequence));
    archive.verify(m2, |_| {}).unwrap();

    // Changes after the snapshot: the committed ones are replayed, the rest are not.
    live.work(0..2000, 3);
    let committed = live.commit();
    live.work(0..100, 4);
    live.wal.close().unwrap();
    live.store.close().unwrap();

    let reopened = s3.open();
    let latest = reopened.latest().unwrap().unwrap();
    assert_eq!(&latest, m2);
    assert_eq!(latest.offsets[0].next_offset, 200);
    reopened.verify(&latest, |_| {}).unwrap();
    restore_and_check(
        &reopened,
        &latest,
        &live.wal_dir,
        &committed,
        BUDGET,
        "latest + WAL",
    );
    restore_and_check(
        &reopened,
        m,
        &live.wal_dir,
        &committed,
        BUDGET,
        "first + WAL",
    );
}

#[test]
fn s3_a_stale_writer_is_fenced_and_concurrent_claims_are_unique() {
    let s3 = S3Prefix::new("fencing");
    let mut live = Live::open();
    live.work(0..2000, 1);
    let committed = live.commit();

    let mut stale = SnapshotWriter::claim(s3.open(), KEY_GROUPS, small_files()).unwrap();
    let mut newer = SnapshotWriter::claim(s3.open(), KEY_GROUPS, small_files()).unwrap();
    assert!(newer.epoch() > stale.epoch());
    assert_eq!(newer.parent().sequence, stale.parent().sequence + 1);
    match live.snapshot(&mut stale) {
        Err(Error::Fenced { epoch, newer_epoch }) => {
            assert_eq!((epoch, newer_epoch), (stale.epoch(), newer.epoch()))
        }
        other => panic!(
            "the stale writer's commit gave {:?}",
            other.map(|r| r.manifest.id)
        ),
    }
    let orphans = s3.list("data");
    assert!(
        !orphans.is_empty(),
        "the stale writer uploaded its files before it was fenced"
    );
    let won = live.snapshot(&mut newer).unwrap().manifest;
    // The stale writer stays fenced.
    assert!(matches!(
        live.snapshot(&mut stale),
        Err(Error::Fenced { .. })
    ));

    let archive = s3.open();
    let latest = archive.latest().unwrap().unwrap();
    assert_eq!(latest, won);
    assert_eq!(latest.writer_epoch, newer.epoch());
    archive.verify(&latest, |_| {}).unwrap();
    live.wal.close().unwrap();
    live.store.close().unwrap();
    restore_and_check(
        &archive,
        &latest,
        &live.wal_dir,
        &committed,
        BUDGET,
        "after fencing",
    );

    // The stale writer's files are named by no manifest: GC removes them.
    let gc = archive.gc(1, Duration::ZERO).unwrap();
    let referenced: BTreeSet<String> = latest.files().map(|f| f.path.clone()).collect();
    assert_eq!(s3.list("data"), referenced);
    for o in orphans.difference(&referenced) {
        assert!(gc.files_deleted.contains(o), "{o} not deleted: {gc:?}");
    }

    // Eight processes claim at once: each gets its own sequence and epoch, and each stored
    // manifest is the one its claimer created (no create overwrote another).
    const CLAIMERS: usize = 8;
    let before = archive.latest().unwrap().unwrap();
    let barrier = Arc::new(Barrier::new(CLAIMERS));
    let threads: Vec<_> = (0..CLAIMERS)
        .map(|_| {
            let barrier = barrier.clone();
            let archive = s3.open();
            std::thread::spawn(move || {
                barrier.wait();
                archive.claim(KEY_GROUPS)
            })
        })
        .collect();
    let claims: Vec<Manifest> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    let sequences: BTreeSet<u64> = claims.iter().map(|c| c.sequence).collect();
    let epochs: BTreeSet<u64> = claims.iter().map(|c| c.writer_epoch).collect();
    assert_eq!(sequences.len(), CLAIMERS, "sequences {claims:#?}");
    assert_eq!(epochs.len(), CLAIMERS, "epochs {claims:#?}");
    let expected: BTreeSet<u64> =
        (before.sequence + 1..=before.sequence + CLAIMERS as u64).collect();
    assert_eq!(sequences, expected);
    let listed: BTreeSet<u64> = archive.sequences().unwrap().into_iter().collect();
    assert!(expected.is_subset(&listed), "{listed:?}");
    for c in &claims {
        let stored = archive.manifest_at(c.sequence).unwrap();
        assert_eq!(stored.id, c.id, "manifest {} was overwritten", c.sequence);
        assert_eq!(stored.kind, ManifestKind::Claim);
        assert_eq!(
            stored.partitions, before.partitions,
            "a claim copies the current state"
        );
    }
    // Epochs rise with sequences: the newest claim fences all others.
    let mut by_seq = claims.clone();
    by_seq.sort_by_key(|c| c.sequence);
    assert!(by_seq
        .windows(2)
        .all(|w| w[0].writer_epoch < w[1].writer_epoch));
}

#[test]
fn s3_a_commit_racing_a_new_claim() {
    // A writer commits while a new instance claims the archive. Either the commit lands first
    // and the claim builds on it, or the claim does and the commit is fenced: never both, and
    // the new instance's state is always the newest committed one.
    let s3 = S3Prefix::new("race");
    let mut live = Live::open();
    let archive = s3.open();
    let mut current = SnapshotWriter::claim(s3.open(), KEY_GROUPS, small_files()).unwrap();
    let (mut landed, mut fenced) = (0, 0);
    for round in 0..6u64 {
        live.work(round * 300..round * 300 + 300, round + 1);
        let committed = live.commit();
        let barrier = Arc::new(Barrier::new(2));
        let wal_dir = live.wal_dir.clone();
        let schemas = live.schemas();
        let old_parent = current.parent().clone();
        // Rounds 0 and 3 race freely; in the others one side waits for the other's
        // manifest, so that both outcomes are always seen.
        let order = ["race", "commit first", "claim first"][round as usize % 3];
        let sequences = archive.sequences().unwrap().len();
        let committer = {
            let barrier = barrier.clone();
            let archive = s3.open();
            std::thread::spawn(move || {
                let mut source =
                    LocalSegmentSource::open(&wal_dir, current.parent().lsn + 1).unwrap();
                barrier.wait();
                if order == "claim first" {
                    wait_for_manifest(&archive, sequences);
                }
                let r = current.snapshot_from_wal(&mut source, &schemas);
                (current, r)
            })
        };
        let claimer = {
            let archive = s3.open();
            std::thread::spawn(move || {
                barrier.wait();
                if order == "commit first" {
                    wait_for_manifest(&archive, sequences);
                }
                SnapshotWriter::claim(archive, KEY_GROUPS, small_files()).unwrap()
            })
        };
        let (old, result) = committer.join().unwrap();
        let new = claimer.join().unwrap();
        assert!(new.epoch() > old.epoch());
        match result {
            Ok(Some(r)) => {
                assert_ne!(order, "claim first", "round {round}");
                landed += 1;
                assert_eq!(
                    new.parent().sequence,
                    r.manifest.sequence + 1,
                    "round {round}"
                );
                assert_eq!(
                    new.parent().lsn,
                    r.manifest.lsn,
                    "the claim copies the commit"
                );
                assert_eq!(new.parent().partitions, r.manifest.partitions);
            }
            Err(Error::Fenced { epoch, newer_epoch }) => {
                assert_ne!(order, "commit first", "round {round}");
                fenced += 1;
                assert_eq!(
                    (epoch, newer_epoch),
                    (old.epoch(), new.epoch()),
                    "round {round}"
                );
                assert_eq!(
                    new.parent().sequence,
                    old_parent.sequence + 1,
                    "round {round}"
                );
                assert_eq!(new.parent().lsn, old_parent.lsn);
            }
            other => panic!(
                "round {round}: the commit gave {:?}",
                other.map(|r| r.map(|r| r.manifest.id))
            ),
        }
        current = new;
        let latest = archive.latest().unwrap().unwrap();
        assert_eq!(&latest, current.parent(), "round {round}");
        // The new instance's snapshot holds everything committed.
        let parent_lsn = current.parent().lsn;
        let mut source = LocalSegmentSource::open(&live.wal_dir, parent_lsn + 1).unwrap();
        let r = current
            .snapshot_from_wal(&mut source, &live.schemas())
            .unwrap();
        // Nothing to write only when the claim copied the commit that landed.
        assert_eq!(r.is_none(), parent_lsn == live_lsn(&live), "round {round}");
        let latest = archive.latest().unwrap().unwrap();
        assert_eq!(latest.lsn, live_lsn(&live), "round {round}");
        restore_and_check(
            &archive,
            &latest,
            &live.wal_dir,
            &committed,
            BUDGET,
            &format!("round {round}"),
        );
    }
    eprintln!("commits landed first: {landed}, fenced: {fenced}");
    assert!(
        landed >= 2 && fenced >= 2,
        "landed {landed}, fenced {fenced}"
    );
    // Every sequence holds one manifest, in epoch order.
    let all = archive.manifests().unwrap();
    assert!(all
        .windows(2)
        .all(|w| w[0].sequence + 1 == w[1].sequence && w[0].writer_epoch <= w[1].writer_epoch));
}

/// Waits until the archive holds more than `n` manifests.
fn wait_for_manifest(archive: &Archive, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while archive.sequences().unwrap().len() <= n {
        assert!(
            std::time::Instant::now() < deadline,
            "no new manifest after 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The LSN of the WAL's last commit marker.
fn live_lsn(live: &Live) -> u64 {
    let mut source = LocalSegmentSource::open(&live.wal_dir, 1).unwrap();
    millpond_wal::replay(&mut source, 0, |_| Ok::<(), std::io::Error>(()))
        .unwrap()
        .last_commit
        .map_or(0, |c| c.lsn)
}

#[test]
fn s3_gc_keeps_the_retained_snapshots_whole() {
    let s3 = S3Prefix::new("gc");
    let archive = s3.open();
    let mut live = Live::open();
    let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, small_files()).unwrap();
    let mut snapshots = Vec::new();
    for round in 1..=4u64 {
        // Round 1 writes everything; later rounds change a slice, so files are reused.
        let keys = if round == 1 {
            0..6000
        } else {
            (round * 1000)..(round * 1000 + 300)
        };
        live.work(keys, round);
        live.commit();
        snapshots.push(live.snapshot(&mut writer).unwrap().manifest);
    }
    // A stale writer's attempt leaves orphans.
    let mut stale = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, small_files()).unwrap();
    let mut current = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, small_files()).unwrap();
    live.work(0..500, 5);
    let committed = live.commit();
    assert!(matches!(
        live.snapshot(&mut stale),
        Err(Error::Fenced { .. })
    ));
    snapshots.push(live.snapshot(&mut current).unwrap().manifest);
    live.wal.close().unwrap();
    live.store.close().unwrap();

    let all_files = s3.list("data");
    let named: BTreeSet<String> = snapshots
        .iter()
        .flat_map(|m| m.files().map(|f| f.path.clone()))
        .collect();
    assert!(all_files.len() > named.len(), "orphans exist");

    // Within the grace period nothing unreferenced is deleted, only old manifests.
    let early = archive.gc(2, Duration::from_secs(3600)).unwrap();
    assert!(early.files_deleted.is_empty(), "{early:?}");
    assert!(early.files_in_grace > 0);
    assert!(!early.manifests_deleted.is_empty());
    assert_eq!(s3.list("data"), all_files);

    let gc = archive.gc(2, Duration::ZERO).unwrap();
    let kept = archive.manifests().unwrap();
    assert_eq!(kept.len(), gc.manifests_kept);
    let kept_snapshots: Vec<&Manifest> = kept
        .iter()
        .filter(|m| m.kind == ManifestKind::Snapshot)
        .collect();
    assert_eq!(kept_snapshots.len(), 2, "{kept:#?}");
    assert_eq!(kept.last().unwrap(), snapshots.last().unwrap());
    let referenced: BTreeSet<String> = kept
        .iter()
        .flat_map(|m| m.files().map(|f| f.path.clone()))
        .collect();
    assert_eq!(
        s3.list("data"),
        referenced,
        "exactly the retained manifests' files"
    );
    assert_eq!(
        gc.files_deleted.len(),
        all_files.len() - referenced.len(),
        "{gc:?}"
    );
    for m in &kept {
        archive.verify(m, |_| {}).unwrap();
    }
    for m in kept_snapshots {
        restore_and_check(
            &archive,
            m,
            &live.wal_dir,
            &committed,
            BUDGET,
            &format!("{} after gc", m.id),
        );
    }
}

/// A writer with `SnapshotSettings::local_files` (a running instance's `base/`) keeps a local
/// copy of every file it uploads to S3, byte for byte the object, so that the instance need
/// not download its own runs; a restore from that directory finds them all local.
#[test]
fn s3_a_writer_keeps_local_copies_of_its_uploads() {
    let s3 = S3Prefix::new("local-copies");
    let archive = s3.open();
    let mut live = Live::open();
    let local = tempfile::tempdir().unwrap();
    let settings = SnapshotSettings {
        local_files: Some(local.path().join("base")),
        ..small_files()
    };
    let mut writer = SnapshotWriter::claim(archive.clone(), KEY_GROUPS, settings).unwrap();
    live.work(0..3_000, 1);
    live.commit();
    live.snapshot(&mut writer).unwrap();
    live.work(0..500, 2);
    let model = live.commit();
    let m = live.snapshot(&mut writer).unwrap().manifest;
    let mut names = BTreeSet::new();
    for f in m.files() {
        let name = f.path.rsplit('/').next().unwrap().to_owned();
        let copy = std::fs::read(local.path().join("base").join(&name)).unwrap();
        let object = S3Prefix::block_on(async {
            s3.store()
                .get(&Path::from(format!("{}/{}", s3.prefix, f.path)))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        });
        assert_eq!(copy, object.to_vec(), "{name}");
        names.insert(name);
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(local.path().join("base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_subset(&on_disk));
    assert!(
        on_disk.iter().all(|n| !n.ends_with(".upload")),
        "temporary copies left: {on_disk:?}"
    );
    let base = SnapshotBase::open(
        &archive,
        &m,
        local.path().join("base"),
        &RestoreSettings::default(),
    )
    .unwrap();
    assert!(
        base.is_local(),
        "every file found local, nothing to download"
    );
    drop(base);
    restore_and_check(&archive, &m, &live.wal_dir, &model, BUDGET, "from S3");
}
