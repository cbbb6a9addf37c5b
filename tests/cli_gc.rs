//! `millpond snapshot gc` run the way docs/cli.md shows (`--retain 1 --grace-seconds 0`) while
//! a job writes a snapshot (in S3: `eval "$(scripts/services up s3)"` first), among stray
//! objects, and with flags out of range; and `--timeout-seconds` against an S3 endpoint that
//! never answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use millpond_snapshot::{Archive, Manifest, SnapshotSettings, SnapshotWriter};
use millpond_state::{Store, StringCodec, U64Codec, ValueState, ValueStateDescriptor};
use millpond_wal::{
    open_local, LocalSegmentSource, SegmentSettings, SourceOffset, Wal, WalSettings,
};
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::{ObjectStore, ObjectStoreExt};

mod common {
    pub mod cli;
    pub mod silent_endpoint;
}
use common::cli::{assert_ok, millpond};
use common::silent_endpoint::silent_endpoint;

const KEY_GROUPS: u16 = 128;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A job's state logging to a local WAL, and a writer of its snapshots into `url`.
struct Job {
    dir: tempfile::TempDir,
    url: String,
    wal: Arc<Wal>,
    _store: Store,
    counts: ValueState<String, u64>,
    writer: Option<SnapshotWriter>,
}

impl Job {
    /// Snapshots go to `dir/archive`.
    fn local() -> Job {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("archive").display());
        let archive = Archive::open(&url).unwrap();
        Job::new(dir, archive, url)
    }

    fn new(dir: tempfile::TempDir, archive: Archive, url: String) -> Job {
        let (wal, _) = open_local(
            dir.path().join("wal"),
            0,
            WalSettings::default(),
            SegmentSettings::default(),
            |_c| Ok::<(), std::io::Error>(()),
        )
        .unwrap();
        let wal = Arc::new(wal);
        let store = Store::builder(dir.path().join("state"))
            .change_sink_arc(wal.clone())
            .open()
            .unwrap();
        let counts = store
            .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
            .unwrap();
        let settings = SnapshotSettings {
            target_file_bytes: 2 << 10,
            ..SnapshotSettings::default()
        };
        let writer = SnapshotWriter::claim(archive, KEY_GROUPS, settings).unwrap();
        Job {
            dir,
            url,
            wal,
            _store: store,
            counts,
            writer: Some(writer),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    fn work(&self, round: u64) {
        for i in 0..300u64 {
            self.counts
                .update(&format!("key-{i}"), &(i * round))
                .unwrap();
        }
        self.wal
            .commit(&[SourceOffset {
                topic: "in".into(),
                partition: 0,
                next_offset: round as i64 * 100,
            }])
            .unwrap()
            .wait()
            .unwrap();
    }

    /// Writes the next snapshot on another thread.
    fn snapshot(&mut self) -> std::thread::JoinHandle<(SnapshotWriter, Manifest)> {
        let mut writer = self.writer.take().expect("one snapshot at a time");
        let wal_dir = self.dir.path().join("wal");
        let schemas = self._store.schemas();
        std::thread::spawn(move || {
            let mut source = LocalSegmentSource::open(wal_dir, writer.parent().lsn + 1).unwrap();
            let m = writer
                .snapshot_from_wal(&mut source, &schemas)
                .unwrap()
                .expect("a commit to snapshot")
                .manifest;
            (writer, m)
        })
    }

    fn snapshot_now(&mut self) -> Manifest {
        let (writer, m) = self.snapshot().join().unwrap();
        self.writer = Some(writer);
        m
    }

    fn gc(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut all = vec!["snapshot", "gc"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--store", &url]);
        millpond(&all)
    }
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
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

/// `s3://$S3_BUCKET/<random prefix>` of the S3-compatible server (`scripts/services up s3`),
/// deleted when dropped.
struct S3Prefix {
    bucket: String,
    prefix: String,
}

impl S3Prefix {
    fn new() -> S3Prefix {
        let endpoint = std::env::var("S3_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "S3_ENDPOINT is not set: this test needs the S3-compatible server. Run \
                 `out=$(scripts/services up s3) && eval \"$out\"` first"
            )
        });
        assert!(
            std::env::var_os("S3_BUCKET").is_some(),
            "{endpoint}: S3_BUCKET is not set"
        );
        S3Prefix {
            bucket: std::env::var("S3_BUCKET").unwrap(),
            prefix: format!("millpond-test/cli-gc-{:016x}", rand::random::<u64>()),
        }
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .build()
            .unwrap()
    }

    /// The names of the objects directly in `folder` of the prefix.
    fn names(&self, folder: &str) -> Vec<String> {
        let store = self.store();
        let prefix = object_store::path::Path::from(format!("{}/{folder}", self.prefix));
        block_on(store.list_with_delimiter(Some(&prefix)))
            .unwrap()
            .objects
            .into_iter()
            .map(|m| m.location.filename().unwrap().to_owned())
            .collect()
    }
}

impl Drop for S3Prefix {
    fn drop(&mut self) {
        let store = self.store();
        let prefix = object_store::path::Path::from(self.prefix.as_str());
        let _ = block_on(async {
            let all: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
            for m in all {
                store.delete(&m.location).await?;
            }
            Ok::<(), object_store::Error>(())
        });
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The documented example, `gc --retain 1 --grace-seconds 0`, run from another process
/// while a job's snapshot is half uploaded (every put of the writer takes 300 ms).
#[test]
fn gc_retain_1_grace_0_during_a_snapshot_keeps_its_files_and_it_commits() {
    let s3 = S3Prefix::new();
    let slow = ThrottledStore::new(
        s3.store(),
        ThrottleConfig {
            wait_put_per_call: Duration::from_millis(300),
            ..ThrottleConfig::default()
        },
    );
    let archive = Archive::from_store(Arc::new(slow), &s3.prefix, &s3.url()).unwrap();
    let mut job = Job::new(tempfile::tempdir().unwrap(), archive, s3.url());
    job.work(1);
    let first = job.snapshot_now();
    assert!(
        first.files().count() >= 4,
        "{} files",
        first.files().count()
    );
    // Strays S3 lists as a common prefix (backup/) and as a name that is not the archive's.
    let store = s3.store();
    let current = format!("{:020}.mpm", first.sequence);
    let manifest = object_store::path::Path::from(format!("{}/manifests/{current}", s3.prefix));
    let bytes = block_on(async { store.get(&manifest).await?.bytes().await }).unwrap();
    for stray in [
        format!("manifests/backup/{current}"),
        format!("manifests/0{current}"),
    ] {
        let path = object_store::path::Path::from(format!("{}/{stray}", s3.prefix));
        block_on(store.put(&path, bytes.clone().into())).unwrap();
    }
    job.work(2);
    let writing = job.snapshot();

    // Wait until the snapshot in progress has uploaded a file.
    let started = Instant::now();
    let (id, uploaded) = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no upload seen"
        );
        let marker = s3.names("pending").into_iter().next();
        if let Some(id) = marker.and_then(|m| m.strip_suffix(".mpp").map(str::to_owned)) {
            let files: Vec<String> = s3
                .names("data")
                .into_iter()
                .filter(|n| n.starts_with(&id))
                .collect();
            if !files.is_empty() {
                break (id, files);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = job.gc(&["--retain", "1", "--grace-seconds", "0"]);
    assert_ok(&o);
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("snapshot {id} is being written")),
        "{out}"
    );
    let present = s3.names("data");
    for f in &uploaded {
        assert!(present.contains(f), "GC deleted {f}: {out}");
    }
    assert!(out.contains("2 objects ignored"), "{out}");

    let (_, second) = writing.join().expect("the snapshot commits");
    assert_eq!(second.id, id);
    let url = job.url();
    assert_ok(&millpond(&[
        "snapshot", "verify", "latest", "--store", &url,
    ]));
    // Once it is committed, the first snapshot's files go.
    let o = job.gc(&["--retain", "1", "--grace-seconds", "0"]);
    assert_ok(&o);
    assert!(
        text(&o.stdout).contains(&format!("deleted manifest {}", first.id)),
        "{}",
        text(&o.stdout)
    );
    assert!(s3.names("pending").is_empty());
    assert_ok(&millpond(&[
        "snapshot", "verify", "latest", "--store", &url,
    ]));
    assert!(s3.names("manifests").contains(&format!("0{current}")));
    assert_eq!(s3.names("manifests/backup"), [current]);
}

#[test]
fn gc_flags_out_of_range_are_usage_errors_and_delete_nothing() {
    let mut job = Job::local();
    job.work(1);
    job.snapshot_now();
    job.work(2);
    job.snapshot_now();
    let before = tree(&job.root());
    for args in [
        ["--retain", "1", "--grace-seconds", "18446744073709551615"],
        ["--retain", "1", "--grace-seconds", "3153600001"],
        ["--retain", "0", "--grace-seconds", "0"],
        ["--retain", "1", "--grace-seconds", "-1"],
    ] {
        let o = job.gc(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
        assert_eq!(tree(&job.root()), before, "{args:?} changed the archive");
    }
    // The largest grace allowed is taken: manifests go, every file is within it.
    let o = job.gc(&["--retain", "1", "--grace-seconds", "3153600000"]);
    assert_ok(&o);
    assert!(
        text(&o.stdout).contains("deleted 2 manifests and 0 data files"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn gc_never_touches_a_backup_copy_of_the_manifests() {
    let mut job = Job::local();
    job.work(1);
    job.snapshot_now();
    job.work(2);
    let latest = job.snapshot_now();
    let root = job.root();
    let current = root.join(format!("manifests/{:020}.mpm", latest.sequence));
    let bytes = std::fs::read(&current).unwrap();
    std::fs::create_dir(root.join("manifests/backup")).unwrap();
    for e in std::fs::read_dir(root.join("manifests")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(
                &p,
                root.join("manifests/backup").join(p.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    let wide = root.join(format!("manifests/0{:020}.mpm", latest.sequence));
    std::fs::write(&wide, &bytes).unwrap();

    let o = job.gc(&["--retain", "1", "--grace-seconds", "0"]);
    assert_ok(&o);
    assert!(
        text(&o.stdout).contains("2 objects ignored"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(
        std::fs::read(&current).unwrap(),
        bytes,
        "the current manifest"
    );
    assert_eq!(std::fs::read(&wide).unwrap(), bytes);
    assert_eq!(
        std::fs::read_dir(root.join("manifests/backup"))
            .unwrap()
            .count(),
        3
    );
    let url = job.url();
    assert_ok(&millpond(&[
        "snapshot", "verify", "latest", "--store", &url,
    ]));
}

#[test]
fn timeout_seconds_bounds_a_silent_s3_endpoint() {
    let endpoint = silent_endpoint();
    let run = |args: &[&str], env_timeout: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_millpond"));
        c.args(args)
            .env_remove("MILLPOND_STORE")
            .env_remove("MILLPOND_TIMEOUT_SECONDS")
            .env("AWS_ENDPOINT", &endpoint)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1");
        if let Some(t) = env_timeout {
            c.env("MILLPOND_TIMEOUT_SECONDS", t);
        }
        let started = Instant::now();
        let o = c.output().unwrap();
        (o, started.elapsed())
    };
    for (args, env) in [
        (
            &[
                "snapshot",
                "list",
                "--store",
                "s3://silent/p",
                "--timeout-seconds",
                "1",
            ][..],
            None,
        ),
        (
            &[
                "snapshot",
                "gc",
                "--retain",
                "1",
                "--store",
                "s3://silent/p",
            ][..],
            Some("1"),
        ),
        (
            &[
                "--timeout-seconds",
                "1",
                "snapshot",
                "verify",
                "latest",
                "--store",
                "s3://silent/p",
            ][..],
            None,
        ),
    ] {
        let (o, took) = run(args, env);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(took < Duration::from_secs(4), "{args:?}: took {took:?}");
        assert!(
            err.starts_with("error: ")
                && err.contains("timed out")
                && err.contains("--timeout-seconds"),
            "{args:?}: {err}"
        );
    }
    let (o, _) = run(
        &[
            "snapshot",
            "list",
            "--store",
            "s3://silent/p",
            "--timeout-seconds",
            "0",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}
