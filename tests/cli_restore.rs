//! `millpond snapshot restore --to DIR` never destroys what it should not, and the text the
//! command prints is safe for a terminal.
//!
//! - A target inside the archive, equal to it or holding it is refused, the archive untouched.
//! - A symlink at the target is refused; symlinks inside an earlier restore are never followed.
//! - `--force` replaces only an earlier restore, and only once the new one is complete and
//!   checked: a damaged download leaves the earlier restore as it was, and no staging
//!   directory behind.
//! - Names with control characters (a topic, a state, the target) are printed escaped.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use millpond_snapshot::{Archive, Manifest, SnapshotSettings, SnapshotWriter};
use millpond_state::{Store, StringCodec, U64Codec, ValueStateDescriptor};
use millpond_wal::{open_local, LocalSegmentSource, SegmentSettings, SourceOffset, WalSettings};
use serde_json::Value;

mod common {
    pub mod cli;
}
use common::cli::{assert_error, assert_ok, millpond, stderr, stdout};

const KEYS: u64 = 200;
const MAX_KEY_GROUPS: u16 = 128;
/// A topic that would turn a terminal red and fake a line break, printed raw.
const HOSTILE_TOPIC: &str = "in\x1b[31mred\nfake";
/// A state name that would set the terminal's title (OSC 0 … BEL), printed raw.
const HOSTILE_STATE: &str = "st\x1b]0;pwned\x07ate";

/// `archive/` with a claim and two snapshots (the second changes some keys, so some files
/// differ), under a temporary directory that tests restore next to.
struct Fixture {
    dir: tempfile::TempDir,
    first: Manifest,
    latest: Manifest,
}

impl Fixture {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn archive_dir(&self) -> PathBuf {
        self.root().join("archive")
    }

    fn restore(&self, id: &str, to: &Path, force: bool) -> Output {
        let mut args = vec![
            "snapshot".to_owned(),
            "restore".to_owned(),
            id.to_owned(),
            "--to".to_owned(),
            to.to_str().unwrap().to_owned(),
            "--store".to_owned(),
            format!("file://{}", self.archive_dir().display()),
        ];
        if force {
            args.push("--force".to_owned());
        }
        millpond(&args)
    }

    fn snapshot(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = ["snapshot"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        all.push("--store".to_owned());
        all.push(format!("file://{}", self.archive_dir().display()));
        millpond(&all)
    }
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
    let hostile = store
        .value_state(ValueStateDescriptor::new(
            HOSTILE_STATE,
            StringCodec,
            U64Codec,
        ))
        .unwrap();
    let commit = |next_offset| {
        wal.commit(&[
            SourceOffset {
                topic: "in".into(),
                partition: 0,
                next_offset,
            },
            SourceOffset {
                topic: HOSTILE_TOPIC.into(),
                partition: 1,
                next_offset,
            },
        ])
        .unwrap()
        .wait()
        .unwrap();
    };
    for i in 0..KEYS {
        counts.update(&format!("key-{i}"), &i).unwrap();
    }
    hostile.update(&"k".to_string(), &1).unwrap();
    commit(100);

    let archive = Archive::open(&format!("file://{}", root.join("archive").display())).unwrap();
    let mut writer = SnapshotWriter::claim(
        archive,
        MAX_KEY_GROUPS,
        SnapshotSettings {
            // Several files, so that a restore has several to download.
            target_file_bytes: 1 << 10,
            ..SnapshotSettings::default()
        },
    )
    .unwrap();
    let mut snapshot = || {
        let mut source =
            LocalSegmentSource::open(root.join("wal"), writer.parent().lsn + 1).unwrap();
        writer
            .snapshot_from_wal(&mut source, &store.schemas())
            .unwrap()
            .expect("a commit after the parent")
            .manifest
    };
    let first = snapshot();
    for i in 0..10 {
        counts.update(&format!("key-{i}"), &(i + 1000)).unwrap();
    }
    commit(200);
    let latest = snapshot();
    wal.close().unwrap();
    store.close().unwrap();
    assert!(latest.files().count() > 2);
    Fixture { dir, first, latest }
}

/// Everything under `dir`: path -> what it is (a file's size and a hash of its bytes, a
/// symlink's target, or a directory), symlinks not followed.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("symlink to {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                stack.push(p.clone());
                "dir".to_owned()
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&bytes, &mut h);
                format!(
                    "file of {} bytes, hash {:x}",
                    bytes.len(),
                    std::hash::Hasher::finish(&h)
                )
            };
            all.insert(p.strip_prefix(dir).unwrap().to_owned(), what);
        }
    }
    all
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The names a restore of `m` writes: its files' last path parts and the manifest.
fn restore_names(m: &Manifest) -> Vec<String> {
    let mut names: Vec<String> = m
        .files()
        .map(|f| f.path.rsplit('/').next().unwrap().to_owned())
        .chain(["manifest.mpm".to_owned()])
        .collect();
    names.sort();
    names
}

#[track_caller]
fn assert_restore_of(dir: &Path, m: &Manifest) {
    assert_eq!(names(dir), restore_names(m));
    let manifest = std::fs::read(dir.join("manifest.mpm")).unwrap();
    assert_eq!(&Manifest::decode(&manifest, "restored").unwrap(), m);
    for f in m.files() {
        let p = dir.join(f.path.rsplit('/').next().unwrap());
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.is_file(), "{} is not a regular file", p.display());
        assert_eq!(meta.len(), f.bytes);
    }
}

#[test]
fn a_target_inside_equal_to_or_holding_the_archive_is_refused() {
    let f = fixture();
    let archive = f.archive_dir();
    let before = tree(&archive);
    let link = f.root().join("link-to-archive");
    symlink(&archive, &link).unwrap();
    let cases = [
        (archive.join("data"), true),
        (archive.join("data/new"), false),
        (archive.join("manifests"), true),
        (archive.clone(), true),
        (archive.join("."), true),
        (archive.join("data/.."), true),
        // Through a symlink in a parent: resolved, so still the archive.
        (link.join("data"), true),
        (link.join("new"), false),
        // Holding it: replacing the target would delete the archive.
        (f.root().to_owned(), true),
        (f.root().to_owned(), false),
    ];
    for (to, force) in cases {
        let o = f.restore("latest", &to, force);
        assert_eq!(o.status.code(), Some(1), "{} was not refused", to.display());
        assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
        assert_eq!(
            tree(&archive),
            before,
            "{} changed the archive",
            to.display()
        );
    }
    let o = f.restore("latest", &archive.join("data"), true);
    assert_error(&o, "inside the archive");
    let o = f.restore("latest", f.root(), true);
    assert_error(&o, "holds the archive");
    assert_ok(&f.snapshot(&["verify", "latest"]));
    // Nothing was created beside the targets either.
    assert_eq!(
        names(f.root()),
        ["archive", "link-to-archive", "state", "wal"]
    );
}

#[test]
fn a_target_where_the_archives_data_lives_is_refused() {
    let f = fixture();
    // The archive's data/ on another disk, by a symlink.
    let disk = f.root().join("disk");
    std::fs::create_dir(&disk).unwrap();
    std::fs::rename(f.archive_dir().join("data"), disk.join("data")).unwrap();
    symlink(disk.join("data"), f.archive_dir().join("data")).unwrap();
    let before = tree(&disk);
    for (to, force) in [
        (disk.join("data"), true),
        (disk.join("data/new"), false),
        (disk.clone(), true),
    ] {
        let o = f.restore("latest", &to, force);
        assert_error(&o, "archive");
        assert_eq!(tree(&disk), before, "{} changed the archive", to.display());
    }
    assert_ok(&f.snapshot(&["verify", "latest"]));
}

#[test]
fn force_never_writes_through_a_symlink_in_the_target() {
    let f = fixture();
    let to = f.root().join("restored");
    assert_ok(&f.restore("latest", &to, false));
    let outside = f.root().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let victims: Vec<PathBuf> = (0..3)
        .map(|i| outside.join(format!("victim-{i}")))
        .collect();
    for v in &victims {
        std::fs::write(v, b"keep me").unwrap();
    }
    // The name a download writes first (`<stem>.part`), the manifest's temporary name, and a
    // data file replaced by a link: each pointing outside.
    let data = to.join(
        f.latest
            .files()
            .next()
            .unwrap()
            .path
            .rsplit('/')
            .next()
            .unwrap(),
    );
    let part = data.with_extension("part");
    symlink(&victims[0], &part).unwrap();
    symlink(&victims[1], to.join("manifest.mpm.part")).unwrap();
    let other = to.join(
        f.latest
            .files()
            .nth(1)
            .unwrap()
            .path
            .rsplit('/')
            .next()
            .unwrap(),
    );
    std::fs::remove_file(&other).unwrap();
    symlink(&victims[2], &other).unwrap();

    let o = f.restore("latest", &to, true);
    assert_ok(&o);
    for v in &victims {
        assert_eq!(std::fs::read(v).unwrap(), b"keep me", "{}", v.display());
    }
    assert_restore_of(&to, &f.latest);
    assert_eq!(
        names(f.root()),
        ["archive", "outside", "restored", "state", "wal"]
    );
}

#[test]
fn a_symlinked_target_is_refused() {
    let f = fixture();
    let real = f.root().join("real");
    assert_ok(&f.restore("latest", &real, false));
    let before = tree(&real);
    let link = f.root().join("link");
    symlink(&real, &link).unwrap();
    for force in [false, true] {
        let o = f.restore(&f.first.id, &link, force);
        assert_error(&o, "symbolic link");
        assert_eq!(tree(&real), before);
    }
    // A trailing slash does not make the link a directory.
    let slash = PathBuf::from(format!("{}/", link.display()));
    assert_error(&f.restore(&f.first.id, &slash, true), "symbolic link");
    // A link to an empty directory, or a dangling one: refused too.
    let empty = f.root().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let to_empty = f.root().join("to-empty");
    symlink(&empty, &to_empty).unwrap();
    assert_error(&f.restore("latest", &to_empty, false), "symbolic link");
    assert!(names(&empty).is_empty());
    let dangling = f.root().join("dangling");
    symlink(f.root().join("nowhere"), &dangling).unwrap();
    assert_error(&f.restore("latest", &dangling, false), "symbolic link");
    assert!(!f.root().join("nowhere").exists());
    // A file is not a directory.
    let file = f.root().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert_error(&f.restore("latest", &file, true), "not a directory");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn a_damaged_download_keeps_the_earlier_restore() {
    let f = fixture();
    let to = f.root().join("restored");
    assert_ok(&f.restore("latest", &to, false));
    let before = tree(&to);

    // Same size, one byte flipped in the middle: only the download's checksum sees it.
    let victim = f.archive_dir().join(&f.latest.files().nth(1).unwrap().path);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();

    let o = f.restore("latest", &to, true);
    assert_error(&o, "corrupt");
    assert!(stderr(&o).contains("as it was"), "{}", stderr(&o));
    assert_eq!(tree(&to), before, "the earlier restore changed");
    assert_eq!(
        names(f.root()),
        ["archive", "restored", "state", "wal"],
        "a staging directory was left behind"
    );

    // Into a new directory: nothing is left at all.
    let new = f.root().join("new");
    assert_error(&f.restore("latest", &new, false), "corrupt");
    assert!(!new.exists());
    assert_eq!(names(f.root()), ["archive", "restored", "state", "wal"]);
}

#[test]
fn force_replaces_an_earlier_restore() {
    let f = fixture();
    let to = f.root().join("restored");
    let first = f.first.sequence.to_string();
    assert_ok(&f.restore(&first, &to, false));
    assert_restore_of(&to, &f.first);

    // Not without --force.
    let o = f.restore("latest", &to, false);
    assert_error(&o, "not empty");
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_restore_of(&to, &f.first);

    // With it: exactly the new snapshot's files, none of the old ones left over, and the
    // directory's permissions kept.
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o750)).unwrap();
    let o = f.restore("latest", &to, true);
    assert_ok(&o);
    let mode = std::fs::metadata(&to).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o750);
    assert!(stdout(&o).contains(&f.latest.id), "{}", stdout(&o));
    assert_restore_of(&to, &f.latest);
    assert_eq!(names(f.root()), ["archive", "restored", "state", "wal"]);

    // An empty directory is filled, with or without --force; a missing parent is created.
    let empty = f.root().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_ok(&f.restore("latest", &empty, false));
    assert_restore_of(&empty, &f.latest);
    let deep = f.root().join("a/b/c");
    assert_ok(&f.restore("latest", &deep, true));
    assert_restore_of(&deep, &f.latest);
}

#[test]
fn force_refuses_a_directory_that_is_not_a_restore() {
    let f = fixture();
    // A home directory: other files, no manifest.
    let home = f.root().join("home");
    std::fs::create_dir_all(home.join(".config")).unwrap();
    std::fs::write(home.join("notes.txt"), b"mine").unwrap();
    let before = tree(&home);
    assert_error(&f.restore("latest", &home, true), "not an earlier restore");
    assert_eq!(tree(&home), before);

    // A restore with something else put into it.
    let to = f.root().join("restored");
    assert_ok(&f.restore("latest", &to, false));
    std::fs::write(to.join("notes.txt"), b"mine").unwrap();
    let before = tree(&to);
    let o = f.restore("latest", &to, true);
    assert_error(&o, "not an earlier restore");
    assert!(stderr(&o).contains("notes.txt"), "{}", stderr(&o));
    assert_eq!(tree(&to), before);

    // A directory under a data file's name (removing it would remove all it holds).
    std::fs::remove_file(to.join("notes.txt")).unwrap();
    let data = to.join(
        f.latest
            .files()
            .next()
            .unwrap()
            .path
            .rsplit('/')
            .next()
            .unwrap(),
    );
    std::fs::remove_file(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("inner"), b"mine").unwrap();
    let before = tree(&to);
    assert_error(&f.restore("latest", &to, true), "not an earlier restore");
    assert_eq!(tree(&to), before);

    // A damaged manifest, or a manifest that is a link: no proof.
    let to = f.root().join("again");
    assert_ok(&f.restore("latest", &to, false));
    let manifest = to.join("manifest.mpm");
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&manifest, &bytes).unwrap();
    let before = tree(&to);
    assert_error(&f.restore("latest", &to, true), "not an earlier restore");
    assert_eq!(tree(&to), before);
    std::fs::remove_file(&manifest).unwrap();
    let elsewhere = f.root().join("manifest-elsewhere.mpm");
    std::fs::write(&elsewhere, f.latest.encode()).unwrap();
    symlink(&elsewhere, &manifest).unwrap();
    let before = tree(&to);
    assert_error(&f.restore("latest", &to, true), "not an earlier restore");
    assert_eq!(tree(&to), before);
}

#[test]
fn names_with_control_characters_are_printed_escaped() {
    let f = fixture();
    let escaped_topic = r"in\x1b[31mred\nfake";
    let escaped_state = r"st\x1b]0;pwned\x07ate";
    let raw = |o: &Output| o.stdout.contains(&0x1b) || o.stderr.contains(&0x1b);

    let o = f.snapshot(&["list"]);
    assert_ok(&o);
    assert!(!raw(&o), "{}", stdout(&o));
    assert!(stdout(&o).contains(escaped_topic), "{}", stdout(&o));
    // Header and one line per manifest: the topic's newline did not make another.
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));

    let o = f.snapshot(&["inspect", "latest"]);
    assert_ok(&o);
    assert!(!raw(&o), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains(escaped_topic) && out.contains(escaped_state),
        "{out}"
    );
    assert!(!out.contains("\nfake"), "{out}");

    // JSON keeps the names exact (escaped the JSON way).
    let o = f.snapshot(&["inspect", "latest", "--json"]);
    assert_ok(&o);
    assert!(!raw(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["offsets"][1]["topic"], HOSTILE_TOPIC);
    assert_eq!(v["states"][1]["name"], HOSTILE_STATE);
    let o = f.snapshot(&["list", "--json"]);
    assert_ok(&o);
    assert!(!raw(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[2]["offsets"][1]["topic"], HOSTILE_TOPIC);

    // A target whose name holds control characters: the summary and errors escape it.
    let to = f.root().join("re\x1b[2Jstore\nd");
    let o = f.restore("latest", &to, false);
    assert_ok(&o);
    assert!(!raw(&o), "{}", stdout(&o));
    assert!(stdout(&o).contains(r"re\x1b[2Jstore\nd"), "{}", stdout(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    let o = f.restore("latest", &to, false);
    assert_error(&o, r"re\x1b[2Jstore\nd");
    assert!(!raw(&o), "{}", stderr(&o));

    // A state asked for by a hostile name, and an unknown snapshot id.
    let o = f.snapshot(&["dump", "latest", "--state", "no\x1b[31m"]);
    assert_error(&o, r"no\x1b[31m");
    assert!(!raw(&o), "{}", stderr(&o));
    assert!(stderr(&o).contains(escaped_state), "{}", stderr(&o));
    let o = f.snapshot(&["inspect", "9\x1b[31m"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!raw(&o), "{}", stderr(&o));
}
