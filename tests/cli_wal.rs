//! `millpond wal inspect` on damaged local WALs: it reads them with the same source as recovery,
//! so it never exits 0 past a damaged segment. Corruption (a flipped length with batches after
//! it, a flipped byte in an acknowledged batch, a garbage segment) is exit 1 with an `error:`
//! line naming the segment; a real torn tail is reported with its bytes and position; a FIFO
//! named like a segment is refused at once instead of hanging the command. Writer epochs count
//! as in recovery: a zombie's batches are skipped and a takeover is shown.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use millpond_state::{Change, ChangeOp, StateKind};
use millpond_wal::batch::{self, Decoded};
use millpond_wal::{open_local, SegmentSettings, SourceOffset, Wal, WalSettings};

mod common {
    pub mod cli;
    #[path = "../../wal/tests/common/log.rs"]
    pub mod log;
}
use common::cli::{millpond, stderr, stdout};
use common::log::{append_local, framed, R};

fn inspect(dir: &Path) -> Output {
    millpond(&["wal", "inspect", dir.to_str().unwrap()])
}

fn assert_refused(o: &Output, segment: &Path) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(o)
    );
    assert!(err.starts_with("error: "), "{err}");
    let name = segment.file_name().unwrap().to_string_lossy();
    assert!(err.contains(&*name), "the error names {name}: {err}");
}

/// A WAL in `dir` of `commits` acknowledged commits, one batch each, in 4 KiB segments.
fn write_log(dir: &Path, commits: usize) {
    let (wal, _) = open_local(
        dir,
        0,
        WalSettings::default(),
        SegmentSettings {
            segment_bytes: 4096,
            sync: true,
        },
        |_c| Ok::<(), std::io::Error>(()),
    )
    .unwrap();
    for i in 0..commits {
        put(&wal, format!("k{i}").as_bytes());
        wal.commit(&[SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: i as i64 + 1,
        }])
        .unwrap()
        .wait()
        .unwrap();
    }
    wal.close().unwrap();
}

fn put(wal: &Wal, key: &[u8]) {
    wal.append_change(&Change {
        state: "s",
        kind: StateKind::Value,
        key_group: 0,
        key,
        op: ChangeOp::Put {
            value: b"v",
            expires_at_ms: 0,
        },
    })
    .unwrap();
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

/// Offsets and last LSNs of the valid batches of a segment.
fn batches_in(path: &Path) -> Vec<(usize, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let (mut off, mut out) = (0, Vec::new());
    while let Ok(Decoded::Batch(h, _)) = batch::decode(&bytes[off..], String::new) {
        out.push((off, h.last_lsn));
        off += h.framed_len();
    }
    out
}

/// A batch for `lsn` as a writer could have been writing it when it crashed.
fn unacknowledged_batch(lsn: u64) -> Vec<u8> {
    let mut framed = Vec::new();
    batch::encode(lsn, 1, 0, &[0u8; 80], &mut framed);
    framed
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn wal_inspect_refuses_a_flipped_length_with_batches_after_it() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 60);
    let segment = newest_segment(dir.path());
    assert!(batches_in(&segment).len() >= 2);
    for bit in 0..32 {
        let bytes = edit(&segment, |b| b[8 + bit / 8] ^= 1 << (bit % 8));
        let o = inspect(dir.path());
        assert_refused(&o, &segment);
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            bytes,
            "inspect changes nothing"
        );
        edit(&segment, |b| b[8 + bit / 8] ^= 1 << (bit % 8));
    }
    let o = inspect(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn wal_inspect_refuses_a_flipped_byte_in_the_last_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10);
    let segment = newest_segment(dir.path());
    let (last_off, _) = *batches_in(&segment).last().unwrap();
    edit(&segment, |b| b[last_off + 50] ^= 0x01);
    assert_refused(&inspect(dir.path()), &segment);
}

#[test]
fn wal_inspect_refuses_a_garbage_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 60);
    let segment = newest_segment(dir.path());
    edit(&segment, |b| {
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
    });
    assert_refused(&inspect(dir.path()), &segment);
}

#[test]
fn wal_inspect_reports_a_torn_tail_with_its_bytes_and_lsn() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5);
    let segment = newest_segment(dir.path());
    let (_, last) = *batches_in(&segment).last().unwrap();
    let before = edit(&segment, |b| {
        let len = b.len();
        b.extend_from_slice(&unacknowledged_batch(last + 1)[..70]);
        assert!(len > 0);
    });
    let valid = before.len() - 70;
    let o = inspect(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let expect = format!(
        "torn tail        70 bytes at byte {valid} of {}, after LSN {last}",
        segment.display()
    );
    assert!(out.contains(&expect), "{expect}\n{out}");
    assert!(
        out.contains(&format!("acknowledged     LSN {last}")),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        before,
        "inspect cuts nothing"
    );
}

#[test]
fn wal_inspect_reports_a_log_that_is_only_a_partial_batch() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join(format!("{:020}.wal", 1));
    std::fs::write(&segment, &unacknowledged_batch(1)[..20]).unwrap();
    let o = inspect(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let expect = format!(
        "torn tail        20 bytes at byte 0 of {}, after LSN 0",
        segment.display()
    );
    assert!(out.contains(&expect), "{expect}\n{out}");
    assert!(out.contains("acknowledged     unknown"), "{out}");
}

#[test]
fn wal_inspect_reports_a_tear_inside_a_segments_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 60);
    let (_, last) = *batches_in(&newest_segment(dir.path())).last().unwrap();
    let segment = dir.path().join(format!("{:020}.wal", last + 1));
    std::fs::write(&segment, &unacknowledged_batch(last + 1)[..50]).unwrap();
    let o = inspect(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let expect = format!(
        "torn tail        50 bytes at byte 0 of {}, after LSN {last}",
        segment.display()
    );
    assert!(out.contains(&expect), "{expect}\n{out}");
}

#[test]
fn wal_inspect_refuses_a_fifo_named_like_a_segment_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3);
    let fifo = dir.path().join(format!("{:020}.wal", 1_000_000));
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_millpond"))
        .args(["wal", "inspect", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(5) {
            child.kill().unwrap();
            panic!("wal inspect hangs on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    assert_refused(&o, &fifo);
    assert!(stderr(&o).contains("FIFO"), "{}", stderr(&o));
}

#[test]
fn wal_inspect_escapes_control_characters_in_names() {
    let root = tempfile::tempdir().unwrap();
    // A directory, a state and a topic named by whoever wrote them: each could fake a line.
    let dir = root.path().join("wal\nforged dir");
    let (wal, _) = open_local(
        &dir,
        0,
        WalSettings::default(),
        SegmentSettings::default(),
        |_c| Ok::<(), std::io::Error>(()),
    )
    .unwrap();
    wal.append_change(&Change {
        state: "s\nforged state",
        kind: StateKind::Value,
        key_group: 0,
        key: b"k",
        op: ChangeOp::Put {
            value: b"v",
            expires_at_ms: 0,
        },
    })
    .unwrap();
    wal.commit(&[SourceOffset {
        topic: "in\nforged topic\x1b[2J".into(),
        partition: 0,
        next_offset: 1,
    }])
    .unwrap()
    .wait()
    .unwrap();
    wal.close().unwrap();
    let segment = newest_segment(&dir);
    let (_, last) = *batches_in(&segment).last().unwrap();
    edit(&segment, |b| {
        b.extend_from_slice(&unacknowledged_batch(last + 1)[..70]);
    });

    let o = millpond(&["wal", "inspect", "--verbose", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        !out.lines().any(|l| l.starts_with("forged")),
        "a name made a line of its own:\n{out}"
    );
    let shown_dir = format!("{}", root.path().join(r"wal\nforged dir").display());
    assert!(out.starts_with(&format!("WAL {shown_dir}\n")), "{out}");
    assert!(out.contains(r"state=s\nforged state (value)"), "{out}");
    assert!(out.contains(r"in\nforged topic\x1b[2J/0=1"), "{out}");
    let name = segment.file_name().unwrap().to_string_lossy();
    assert!(
        out.contains(&format!("of {shown_dir}/{name}, after")),
        "{out}"
    );
}

#[test]
fn wal_inspect_skips_a_zombies_batches_and_shows_a_takeover_as_recovery_does() {
    let dir = tempfile::tempdir().unwrap();
    append_local(
        dir.path(),
        &[
            // The old owner (epoch 1) commits, then writes two changes after the new owner
            // read the log up to LSN 2.
            framed(1, 1, &[R::Put(1), R::Commit(1)]),
            framed(3, 1, &[R::Put(98), R::Put(99)]),
            // The new owner (epoch 2) starts at LSN 3, an LSN already read.
            framed(3, 2, &[R::Rollback, R::Put(2), R::Commit(2)]),
            // The old one, a zombie now, appends a commit with LSNs that would fit.
            framed(6, 1, &[R::Put(97), R::Commit(97)]),
            framed(6, 2, &[R::Put(3), R::Commit(3)]),
        ],
    );
    let mut source = millpond_wal::LocalSegmentSource::open(dir.path(), 1).unwrap();
    let recovery = millpond_wal::replay(&mut source, 0, |_c| Ok::<(), std::io::Error>(())).unwrap();
    assert_eq!(
        (recovery.applied, recovery.fenced, recovery.duplicates),
        (3, 1, 0)
    );
    assert_eq!(
        recovery.last_commit.as_ref().unwrap().offsets[0].next_offset,
        3
    );

    let o = inspect(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let line = |start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in:\n{out}"))
    };
    assert!(
        line("takeover: writer epoch 2 starts at LSN 3").contains("the 2 uncommitted changes"),
        "{out}"
    );
    let zombie = line("LSN 6..=7");
    assert!(
        zombie.contains("epoch 1") && zombie.contains("zombie"),
        "{out}"
    );
    // The summary is recovery's outcome.
    for row in [
        format!("committed        {} changes", recovery.applied),
        "uncommitted      0 changes".to_owned(),
        format!(
            "last commit      LSN {} at",
            recovery.last_commit.unwrap().lsn
        ),
        "offsets          t/0=3".to_owned(),
        format!(
            "{} duplicates, {} zombie batches",
            recovery.duplicates, recovery.fenced
        ),
        format!("next LSN         {}", recovery.next_lsn),
        "highest 2, 1 takeovers (2 uncommitted changes superseded)".to_owned(),
    ] {
        assert!(out.contains(&row), "{row:?} in:\n{out}");
    }
}
