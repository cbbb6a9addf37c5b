//! The `millpond` command against a real archive: a store logs to a local WAL, two snapshots
//! are written from the WAL, and the binary lists, inspects, verifies, restores, dumps and
//! collects them, and inspects the WAL. Bad input must give exit code 1 and an `error:` line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use millpond_snapshot::{Archive, Manifest, SnapshotSettings, SnapshotWriter};
use millpond_state::{
    key_group, ListStateDescriptor, MapStateDescriptor, Store, StringCodec, U64Codec,
    ValueStateDescriptor,
};
use millpond_wal::{open_local, LocalSegmentSource, SegmentSettings, SourceOffset, WalSettings};
use serde_json::Value;

mod common {
    pub mod cli;
}
use common::cli::{assert_error, assert_ok, millpond, stderr, stdout};

const KEYS: u64 = 300;
const MAX_KEY_GROUPS: u16 = 128;

/// A temporary directory with `archive/` (a claim and two snapshots) and `wal/` (the log,
/// ending in a few uncommitted changes).
struct Fixture {
    dir: tempfile::TempDir,
    /// The second (latest) snapshot.
    latest: Manifest,
    /// The first snapshot.
    first: Manifest,
    /// counts after the second snapshot: key-i -> i + 1 for i < 10, else i.
    counts: BTreeMap<String, u64>,
}

impl Fixture {
    fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    fn store_url(&self) -> String {
        format!("file://{}", self.archive_dir().display())
    }

    fn wal_dir(&self) -> PathBuf {
        self.dir.path().join("wal")
    }

    /// Runs `millpond ARGS --store <the archive>` (the store appended for snapshot commands).
    fn snapshot(&self, args: &[&str]) -> Output {
        let mut all = vec!["snapshot"];
        all.extend_from_slice(args);
        let url = self.store_url();
        all.extend_from_slice(&["--store", &url]);
        millpond(&all)
    }
}

fn commit(wal: &millpond_wal::Wal, next_offset: i64) {
    wal.commit(&[SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset,
    }])
    .unwrap()
    .wait()
    .unwrap();
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (wal, _) = open_local(
        root.join("wal"),
        0,
        WalSettings::default(),
        SegmentSettings::default(),
        |_c| Ok::<(), std::io::Error>(()),
    )
    .unwrap();
    let wal = Arc::new(wal);
    let store = Store::builder(root.join("state"))
        .change_sink_arc(wal.clone())
        .open()
        .unwrap();
    let counts = store
        .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("lists", StringCodec, U64Codec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new(
            "maps",
            StringCodec,
            StringCodec,
            U64Codec,
        ))
        .unwrap();
    let mut model = BTreeMap::new();
    for i in 0..KEYS {
        let k = format!("key-{i}");
        counts.update(&k, &i).unwrap();
        model.insert(k.clone(), i);
        if i % 3 == 0 {
            lists.add(&k, &i).unwrap();
            lists.add(&k, &(i + 1)).unwrap();
        }
        if i % 5 == 0 {
            maps.put(&k, &"u1".to_string(), &(i * 10)).unwrap();
        }
    }
    commit(&wal, 100);

    let archive_dir = root.join("archive");
    let archive = Archive::open(&format!("file://{}", archive_dir.display())).unwrap();
    let mut writer = SnapshotWriter::claim(
        archive,
        MAX_KEY_GROUPS,
        SnapshotSettings {
            // Several files, so that key-group subsets and reuse show.
            target_file_bytes: 1 << 10,
            ..SnapshotSettings::default()
        },
    )
    .unwrap();
    let snapshot = |writer: &mut SnapshotWriter| {
        let mut source =
            LocalSegmentSource::open(root.join("wal"), writer.parent().lsn + 1).unwrap();
        writer
            .snapshot_from_wal(&mut source, &store.schemas())
            .unwrap()
            .expect("a commit after the parent")
            .manifest
    };
    let first = snapshot(&mut writer);

    for i in 0..10 {
        let k = format!("key-{i}");
        counts.update(&k, &(i + 1)).unwrap();
        model.insert(k, i + 1);
    }
    commit(&wal, 200);
    let latest = snapshot(&mut writer);

    // Logged, never committed: replay would not apply it.
    counts.update(&"key-0".to_string(), &999).unwrap();
    wal.close().unwrap();
    store.close().unwrap();
    Fixture {
        dir,
        latest,
        first,
        counts: model,
    }
}

fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mpdf"))
        .collect();
    files.sort();
    files
}

#[test]
fn list_shows_every_manifest() {
    let f = fixture();
    let o = f.snapshot(&["list"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("SEQ"), "{out}");
    assert!(
        out.contains(&f.latest.id) && out.contains(&f.first.id),
        "{out}"
    );
    assert!(out.contains("claim") && out.contains("in/0=200"), "{out}");
    assert_eq!(
        out.lines().count(),
        4,
        "header, claim, two snapshots:\n{out}"
    );

    let o = f.snapshot(&["list", "--json"]);
    assert_ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let all = v.as_array().unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2]["id"], f.latest.id.as_str());
    assert_eq!(all[2]["kind"], "snapshot");
    assert_eq!(all[0]["kind"], "claim");

    // The store from the environment works as well as --store.
    let o = Command::new(env!("CARGO_BIN_EXE_millpond"))
        .args(["snapshot", "list"])
        .env("MILLPOND_STORE", f.store_url())
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(stdout(&o).contains(&f.latest.id));
}

#[test]
fn inspect_shows_the_manifest() {
    let f = fixture();
    let o = f.snapshot(&["inspect", "latest", "--json"]);
    assert_ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["id"], f.latest.id.as_str());
    assert_eq!(v["parent_id"], f.first.id.as_str());
    assert_eq!(v["lsn"], f.latest.lsn);
    assert_eq!(v["wal_position"]["type"], "local");
    assert_eq!(
        v["offsets"],
        serde_json::json!([{"topic": "in", "partition": 0, "next_offset": 200}])
    );
    let states: Vec<&str> = v["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["counts", "lists", "maps"]);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), f.latest.files().count());
    assert!(files.len() > 1);
    for (j, m) in files.iter().zip(f.latest.files()) {
        assert_eq!(j["path"], m.path.as_str());
        assert_eq!(j["crc32c"], m.crc32c);
        assert_eq!(j["entries"], m.entries);
        assert_eq!(j["written_by"], m.written_by);
        let digest = m.digest.expect("a version-2 file has a digest").to_string();
        let id = m.file_id.expect("a version-2 file has an id").to_string();
        assert_eq!(digest.len(), 32);
        assert_eq!(j["digest"], digest.as_str());
        assert_eq!(j["file_id"], id.as_str());
    }
    // Some files are the first snapshot's, reused.
    assert!(files.iter().any(|j| j["written_by"] == f.first.sequence));
    // Partitions, their runs newest first, and what compaction owes under the default policy.
    let policy = millpond::snapshot::CompactionSettings::default();
    let partitions = v["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), f.latest.partitions.len());
    for (j, p) in partitions.iter().zip(&f.latest.partitions) {
        assert_eq!(j["first_key_group"], p.first_key_group);
        assert_eq!(j["runs"].as_array().unwrap().len(), p.runs.len());
        let due = millpond::snapshot::compaction::due(p, &policy).map(|job| job.kind);
        assert_eq!(
            j["compaction_due"].as_str(),
            due.map(|k| match k {
                millpond::snapshot::CompactionKind::Major => "major",
                millpond::snapshot::CompactionKind::Minor => "minor",
            })
        );
    }
    let owed = millpond::snapshot::compaction::debt(&f.latest, &policy);
    assert_eq!(v["compaction"]["jobs_due"], owed.jobs);
    assert_eq!(v["compaction"]["debt_bytes"], owed.bytes);
    assert_eq!(v["compaction"]["max_runs"], owed.max_runs);
    assert!(
        owed.max_runs >= 2,
        "the latest snapshot has delta runs: {owed:?}"
    );

    // By sequence number, as text.
    let seq = f.first.sequence.to_string();
    let o = f.snapshot(&["inspect", &seq]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("snapshot {}", f.first.id)),
        "{out}"
    );
    assert!(out.contains("counts") && out.contains("data/"), "{out}");
    assert!(out.contains("partitions (") && out.contains("DUE"), "{out}");
    assert!(out.contains("compaction (default policy): "), "{out}");
    // Each file's row: its path, digest and file id (hex).
    assert!(out.contains("XXH3_128") && out.contains("FILE_ID"), "{out}");
    for file in f.first.files() {
        let row = out
            .lines()
            .find(|l| l.contains(&file.path))
            .unwrap_or_else(|| panic!("no row for {}: {out}", file.path));
        assert!(row.contains(&file.digest.unwrap().to_string()), "{row}");
        assert!(row.contains(&file.file_id.unwrap().to_string()), "{row}");
        assert!(!row.contains("crc32c only"), "{row}");
    }
}

#[test]
fn verify_passes_then_finds_a_flipped_byte() {
    let f = fixture();
    let o = f.snapshot(&["verify", "latest"]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("ok: "), "{}", stdout(&o));

    let victim = f.archive_dir().join(&f.latest.files().next().unwrap().path);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let o = f.snapshot(&["verify", &f.latest.id]);
    assert_error(&o, "corrupt");
    assert!(
        stderr(&o).contains(&f.latest.files().next().unwrap().path),
        "{}",
        stderr(&o)
    );
}

#[test]
fn restore_downloads_and_refuses_a_non_empty_directory() {
    let f = fixture();
    let to = f.dir.path().join("restored");
    let to_s = to.to_str().unwrap();
    let o = f.snapshot(&["restore", "latest", "--to", to_s]);
    assert_ok(&o);
    let mut names: Vec<String> = data_files(&to)
        .iter()
        .map(|p| format!("data/{}", p.file_name().unwrap().to_str().unwrap()))
        .collect();
    let mut expected: Vec<String> = f.latest.files().map(|m| m.path.clone()).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
    let manifest = std::fs::read(to.join("manifest.mpm")).unwrap();
    assert_eq!(Manifest::decode(&manifest, "restored").unwrap(), f.latest);

    // Not again without --force; nothing touched.
    let o = f.snapshot(&["restore", "latest", "--to", to_s]);
    assert_error(&o, "not empty");
    assert!(stderr(&o).contains("--force"));
    let o = f.snapshot(&["restore", "latest", "--to", to_s, "--force"]);
    assert_ok(&o);

    // A subset of key groups: only the files that hold them.
    let half = f.dir.path().join("half");
    let o = f.snapshot(&[
        "restore",
        "latest",
        "--to",
        half.to_str().unwrap(),
        "--key-groups",
        "0..64",
    ]);
    assert_ok(&o);
    let expected = f.latest.files_for(0, 64).count();
    assert!(expected < f.latest.files().count());
    assert_eq!(data_files(&half).len(), expected);

    // A key-group range beyond the snapshot's; a malformed one is a usage error.
    let o = f.snapshot(&[
        "restore",
        "latest",
        "--to",
        "/nonexistent",
        "--key-groups",
        "0..999",
    ]);
    assert_error(&o, "key groups 0..128");
    let o = f.snapshot(&[
        "restore",
        "latest",
        "--to",
        "/nonexistent",
        "--key-groups",
        "5..5",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn dump_prints_every_key_of_a_state() {
    let f = fixture();
    let o = f.snapshot(&[
        "dump",
        "latest",
        "--state",
        "counts",
        "--format",
        "jsonl",
        "--value-as",
        "u64",
    ]);
    assert_ok(&o);
    let lines = json_lines(&o);
    let mut got = BTreeMap::new();
    for l in &lines {
        assert_eq!(l["key_encoding"], "utf8");
        assert_eq!(l["value_encoding"], "u64");
        assert_eq!(l["kind"], "value");
        let key = l["key"].as_str().unwrap().to_owned();
        assert_eq!(
            l["key_group"],
            key_group(key.as_bytes(), MAX_KEY_GROUPS),
            "{l}"
        );
        got.insert(key, l["value"].as_u64().unwrap());
    }
    assert_eq!(got, f.counts);

    // Without --value-as, 8 bytes with zeros are hex, and the line says so.
    let o = f.snapshot(&["dump", "latest", "--state", "counts"]);
    assert_ok(&o);
    let key7 = json_lines(&o)
        .into_iter()
        .find(|l| l["key"] == "key-7")
        .unwrap();
    assert_eq!(key7["value"], "0000000000000008");
    assert_eq!(key7["value_encoding"], "hex");

    // Lists and maps.
    let o = f.snapshot(&["dump", "latest", "--state", "lists", "--value-as", "u64"]);
    assert_ok(&o);
    let lists = json_lines(&o);
    assert_eq!(lists.len() as u64, KEYS.div_ceil(3));
    let k3 = lists.iter().find(|l| l["key"] == "key-3").unwrap();
    let values: Vec<u64> = k3["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_u64().unwrap())
        .collect();
    assert_eq!(values, [3, 4]);
    let o = f.snapshot(&["dump", "1", "--state", "maps", "--value-as", "u64"]);
    // Sequence 1 is the first claim, of an empty archive: no states at all.
    assert_error(&o, "its states: none");
}

#[test]
fn dump_maps_subsets_and_unknown_states() {
    let f = fixture();
    let o = f.snapshot(&["dump", "latest", "--state", "maps", "--value-as", "u64"]);
    assert_ok(&o);
    let maps = json_lines(&o);
    assert_eq!(maps.len() as u64, KEYS.div_ceil(5));
    let k5 = maps.iter().find(|l| l["key"] == "key-5").unwrap();
    assert_eq!(
        k5["map"],
        serde_json::json!([{"key": "u1", "key_encoding": "utf8", "value": 50,
            "value_encoding": "u64", "expires_at_ms": 0}])
    );

    let o = f.snapshot(&[
        "dump",
        "latest",
        "--state",
        "counts",
        "--key-groups",
        "10..20",
    ]);
    assert_ok(&o);
    let lines = json_lines(&o);
    let expected = f
        .counts
        .keys()
        .filter(|k| (10..20).contains(&key_group(k.as_bytes(), MAX_KEY_GROUPS)))
        .count();
    assert_eq!(lines.len(), expected);
    assert!(expected > 0);

    let o = f.snapshot(&["dump", "latest", "--state", "nope"]);
    assert_error(&o, "no state 'nope'");
    assert!(stderr(&o).contains("'counts'") && stderr(&o).contains("'maps'"));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let f = fixture();
    let o = f.snapshot(&["inspect", "00000000000000000042-0123456789abcdef"]);
    assert_error(&o, "not found");
    let o = f.snapshot(&["verify", "nonsense"]);
    assert_error(&o, "not found");

    let o = millpond(&["snapshot", "list", "--store", "ftp://x"]);
    assert_error(&o, "ftp://x");

    let missing = f.dir.path().join("no-such-archive");
    let url = format!("file://{}", missing.display());
    let o = millpond(&["snapshot", "list", "--store", &url]);
    assert_error(&o, "no archive");
    assert!(!missing.exists(), "a read must not create the archive");

    let o = Command::new(env!("CARGO_BIN_EXE_millpond"))
        .args(["snapshot", "list", "--store", "s3://bucket/prefix"])
        .env_remove("MILLPOND_STORE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .output()
        .unwrap();
    assert_error(&o, "credentials");

    // A damaged manifest.
    let manifest = f
        .archive_dir()
        .join(format!("manifests/{:020}.mpm", f.latest.sequence));
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&manifest, bytes).unwrap();
    let o = f.snapshot(&["inspect", "latest"]);
    assert_error(&o, "corrupt manifest");

    // Usage errors are clap's: exit 2.
    let o = millpond(&["snapshot", "list"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = millpond(&["snapshot", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A manifest's id is whatever its writer put there: rewrites manifest `m` in the fixture's
/// archive with `id`; returns the manifest as rewritten.
fn rename_snapshot(f: &Fixture, m: &Manifest, id: &str) -> Manifest {
    let mut m = m.clone();
    m.id = id.to_owned();
    let path = f
        .archive_dir()
        .join(format!("manifests/{:020}.mpm", m.sequence));
    std::fs::write(path, m.encode()).unwrap();
    m
}

#[test]
fn verify_escapes_a_snapshot_id_with_control_characters() {
    let f = fixture();
    rename_snapshot(
        &f,
        &f.latest,
        "00000000000000000003-evil\n\x1b[2Jforged line",
    );
    let o = f.snapshot(&["verify", "latest"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.starts_with(r"ok: snapshot 00000000000000000003-evil\n\x1b[2Jforged line: "),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn gc_escapes_a_deleted_snapshot_id_with_control_characters() {
    let f = fixture();
    rename_snapshot(
        &f,
        &f.first,
        "00000000000000000002-evil\n\x1b[2Jforged line",
    );
    let o = f.snapshot(&["gc", "--retain", "1", "--grace-seconds", "0"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("deleted manifest 00000000000000000002-evil\\n\\x1b[2Jforged line\n"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("forged")), "{out}");
}

#[test]
fn gc_keeps_the_latest() {
    let f = fixture();
    let o = f.snapshot(&["gc", "--retain", "1", "--grace-seconds", "0"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("deleted manifest {}", f.first.id)),
        "{out}"
    );
    assert!(out.contains("kept 1 manifests"), "{out}");

    let o = f.snapshot(&["list", "--json"]);
    assert_ok(&o);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [f.latest.id.as_str()]);
    let o = f.snapshot(&["verify", "latest"]);
    assert_ok(&o);
    assert_eq!(
        data_files(&f.archive_dir().join("data")).len(),
        f.latest.files().count()
    );

    let o = f.snapshot(&["gc", "--retain", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// The keys of `m`'s state (each once, its runs folded).
fn keys_in(archive: &Archive, m: &Manifest) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let settings = millpond_snapshot::RestoreSettings {
        download: false,
        ..Default::default()
    };
    let base = millpond_snapshot::SnapshotBase::open(archive, m, dir.path(), &settings).unwrap();
    let all = millpond_state::KeyGroupRange::all(m.max_key_groups);
    base.entries(all).inspect(|e| assert!(e.is_ok())).count() as u64
}

#[test]
fn rescale_splits_and_merges_back() {
    let f = fixture();
    let url = |name: &str| format!("file://{}", f.dir.path().join(name).display());
    let latest = Archive::open(&f.store_url()).unwrap();
    // Split: the latest snapshot by default, or one named by id.
    let from_id = format!("{}@{}", f.store_url(), f.latest.id);
    let mut entries = 0;
    for (from, to, range) in [
        (f.store_url(), url("half-0"), "0..64"),
        (from_id, url("half-1"), "64..128"),
    ] {
        let o = millpond(&[
            "snapshot",
            "rescale",
            "--from",
            &from,
            "--to",
            &to,
            "--key-groups",
            range,
        ]);
        assert_ok(&o);
        let out = stdout(&o);
        let m = Archive::open(&to).unwrap().latest().unwrap().unwrap();
        assert!(out.contains(&format!("from {} snapshot {}", f.store_url(), f.latest.id)));
        assert!(
            out.contains(&format!(
                "wrote snapshot {} to {to}: key groups {range}",
                m.id
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("{} entries", m.total_entries())),
            "{out}"
        );
        assert_eq!((m.lsn, m.offsets.clone()), (0, f.latest.offsets.clone()));
        entries += m.total_entries();
    }
    // Delta runs repeat keys: the halves hold the state's keys once each.
    assert_eq!(
        entries,
        keys_in(&latest, &latest.latest().unwrap().unwrap())
    );

    // Merge, each source with its instance's range; a plain path for the new archive.
    let merged = f.dir.path().join("merged");
    let merged_s = merged.to_str().unwrap();
    let (a, b) = (
        format!("{}#0..64", url("half-0")),
        format!("{}@latest#64..128", url("half-1")),
    );
    let rescale = |to: &str| {
        millpond(&[
            "snapshot",
            "rescale",
            "--from",
            &a,
            "--from",
            &b,
            "--to",
            to,
            "--key-groups",
            "0..128",
        ])
    };
    let o = rescale(merged_s);
    assert_ok(&o);
    assert!(stdout(&o).contains("key groups 64..128"), "{}", stdout(&o));
    let o = millpond(&[
        "snapshot",
        "dump",
        "latest",
        "--state",
        "counts",
        "--value-as",
        "u64",
        "--store",
        merged_s,
    ]);
    assert_ok(&o);
    let got: BTreeMap<String, u64> = json_lines(&o)
        .iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap().to_owned(),
                l["value"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, f.counts);

    // Not into an archive that holds snapshots; not from overlapping sources.
    assert_error(&rescale(merged_s), "not empty");
    let o = millpond(&[
        "snapshot",
        "rescale",
        "--from",
        &url("half-0"),
        "--from",
        &url("half-0"),
        "--to",
        &url("again"),
        "--key-groups",
        "0..128",
    ]);
    assert_error(&o, "both hold key groups");
    let o = millpond(&[
        "snapshot",
        "rescale",
        "--from",
        &url("half-0"),
        "--to",
        &url("again"),
        "--key-groups",
        "0..999",
    ]);
    assert_error(&o, "0..128");
    let o = millpond(&[
        "snapshot",
        "rescale",
        "--to",
        &url("again"),
        "--key-groups",
        "0..1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn wal_inspect_shows_batches_and_the_last_commit() {
    let f = fixture();
    let wal = f.wal_dir();
    let o = millpond(&["wal", "inspect", wal.to_str().unwrap()]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("1 commits"), "{out}");
    assert!(
        out.contains(&format!("last commit      LSN {}", f.latest.lsn)),
        "{out}"
    );
    assert!(out.contains("in/0=200"), "{out}");
    assert!(
        out.contains("uncommitted      1 changes"),
        "the last update was never committed:\n{out}"
    );

    let o = millpond(&["wal", "inspect", "--verbose", wal.to_str().unwrap()]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("commit  offsets in/0=100"), "{out}");
    assert!(
        out.contains("state=counts (value)") && out.contains("key=\"key-7\""),
        "{out}"
    );

    let o = millpond(&[
        "wal",
        "inspect",
        f.dir.path().join("nope").to_str().unwrap(),
    ]);
    assert_error(&o, "not a directory");
    let o = millpond(&["wal", "inspect"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `wal inspect --pulsar-url --topic` against a real broker (CI starts one:
/// `eval "$(scripts/services up pulsar)"` exports PULSAR_URL; without it this test fails, as
/// the WAL's Pulsar tests do).
#[cfg(feature = "pulsar")]
#[test]
fn wal_inspect_reads_a_pulsar_topic() {
    use millpond_state::{Change, ChangeOp, StateKind};
    use millpond_wal::pulsar::{wal_topic, PulsarSettings, PulsarSink};
    use millpond_wal::Wal;

    let url = std::env::var("PULSAR_URL").unwrap_or_else(|_| {
        panic!("PULSAR_URL is not set: start Pulsar with eval \"$(scripts/services up pulsar)\"")
    });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = wal_topic(
        "public",
        "default",
        "test-cli",
        &format!("{}-{nanos:x}", std::process::id()),
    );
    let sink = PulsarSink::connect(PulsarSettings {
        retention_subscription: None,
        ..PulsarSettings::for_topic(url.clone(), topic.clone())
    })
    .unwrap();
    let wal = Wal::start(sink, 1, WalSettings::default());
    for i in 0..5u64 {
        let key = format!("key-{i}");
        let value = i.to_be_bytes();
        wal.append_change(&Change {
            state: "counts",
            kind: StateKind::Value,
            key_group: key_group(key.as_bytes(), MAX_KEY_GROUPS),
            key: key.as_bytes(),
            op: ChangeOp::Put {
                value: &value,
                expires_at_ms: 0,
            },
        })
        .unwrap();
    }
    commit(&wal, 42);
    wal.close().unwrap();

    let o = millpond(&[
        "wal",
        "inspect",
        "--verbose",
        "--value-as",
        "u64",
        "--pulsar-url",
        &url,
        "--topic",
        &topic,
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("last commit      LSN 6 at pulsar "), "{out}");
    assert!(out.contains("in/0=42"), "{out}");
    assert!(out.contains("committed        5 changes"), "{out}");
    assert!(out.contains("key=\"key-4\"  put 4"), "{out}");

    let o = millpond(&[
        "wal",
        "inspect",
        "--pulsar-url",
        "http://x",
        "--topic",
        &topic,
    ]);
    assert_error(&o, "pulsar://");
}
