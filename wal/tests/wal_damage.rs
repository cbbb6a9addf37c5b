//! Damage to a local WAL: committed data is never cut as if it were a torn tail. Damage with a
//! valid batch after it, damage at or below the acknowledged LSN, and a log that ends before it
//! are `Corrupt`, with every file left as it was; a real torn tail (a batch that was never
//! acknowledged, cut short) is still cut, and reported with its bytes and LSNs. Files named like
//! segments that are not regular files are refused at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use millpond_state::{Change, ChangeOp, StateKind};
use millpond_wal::batch::{self, Decoded};
use millpond_wal::{
    open_local, watermark, Error, LocalSegmentSink, LocalSegmentSource, OwnedChange, ReplayOutcome,
    SegmentSettings, SourceOffset, TornTail, Wal, WalPosition, WalSettings, WalSink, WalSource,
};

fn segments(segment_bytes: u64) -> SegmentSettings {
    SegmentSettings {
        segment_bytes,
        sync: true,
    }
}

fn settings() -> WalSettings {
    WalSettings {
        ring_bytes: 64 << 10,
        batch_bytes: 2048,
        linger_ms: 1,
        ..WalSettings::default()
    }
}

/// One value state: key → last value.
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Opens the log in `dir`, replaying it into a model of one value state (key → last value).
fn open(dir: &Path, segment_bytes: u64) -> millpond_wal::Result<(Wal, ReplayOutcome, Model)> {
    let mut model = BTreeMap::new();
    let (wal, outcome) = open_local(
        dir,
        0,
        settings(),
        segments(segment_bytes),
        |c: &OwnedChange| {
            if let ChangeOp::Put { value, .. } = c.as_change().op {
                model.insert(c.key.clone(), value.to_vec());
            }
            Ok::<(), std::io::Error>(())
        },
    )?;
    Ok((wal, outcome, model))
}

fn put(wal: &Wal, key: &[u8], value: &[u8]) {
    wal.append_change(&Change {
        state: "s",
        kind: StateKind::Value,
        key_group: 0,
        key,
        op: ChangeOp::Put {
            value,
            expires_at_ms: 0,
        },
    })
    .unwrap();
}

fn offsets(n: i64) -> Vec<SourceOffset> {
    vec![SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset: n,
    }]
}

/// `commits` units of one put and one commit each, every commit waited for (acknowledged):
/// key `k{i}` → `v{i}`. Returns the writer, still open.
fn write_commits(dir: &Path, segment_bytes: u64, from: usize, commits: usize) -> Wal {
    let (wal, _, _) = open(dir, segment_bytes).unwrap();
    for i in from..from + commits {
        put(&wal, format!("k{i}").as_bytes(), format!("v{i}").as_bytes());
        wal.commit(&offsets(i as i64 + 1)).unwrap().wait().unwrap();
    }
    wal
}

fn expected(commits: usize) -> Model {
    (0..commits)
        .map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect()
}

/// Every file of `dir` and its bytes: "left as it was" means this is unchanged.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A copy of `from` as a crash at this moment would leave it: the watermark first, then the
/// segments (a writer appending meanwhile only ever makes the segments newer than it).
fn crash_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let acked = from.join(watermark::FILE_NAME);
    if acked.exists() {
        std::fs::copy(&acked, to.join(watermark::FILE_NAME)).unwrap();
    }
    for (name, bytes) in files(from) {
        if name != watermark::FILE_NAME {
            std::fs::write(to.join(name), bytes).unwrap();
        }
    }
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn newest_segment(dir: &Path) -> PathBuf {
    segment_paths(dir).pop().expect("a segment")
}

/// The valid batches of a segment file: offset, framed length, first and last LSN.
fn batches_in(path: &Path) -> Vec<(usize, usize, u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while let Ok(Decoded::Batch(h, _)) = batch::decode(&bytes[off..], String::new) {
        out.push((off, h.framed_len(), h.first_lsn, h.last_lsn));
        off += h.framed_len();
    }
    out
}

/// Reads the whole log with the streaming source: the batches' first LSNs and the torn tail.
fn read_source(dir: &Path) -> millpond_wal::Result<(Vec<u64>, Option<TornTail>)> {
    let mut source = LocalSegmentSource::open(dir, 1)?;
    let mut firsts = Vec::new();
    while let Some(b) = source.next_batch()? {
        firsts.push(batch::peek_first_lsn(&b.bytes).unwrap());
    }
    Ok((firsts, source.torn_tail()))
}

/// Opening (the sink, and `open_local`) and reading (the source) `dir` all fail with
/// `Corrupt`, and no file changed on the way.
fn assert_refused(dir: &Path, segment_bytes: u64, case: &str) {
    let before = files(dir);
    let err = open(dir, segment_bytes)
        .err()
        .unwrap_or_else(|| panic!("{case}: open must refuse"));
    assert!(matches!(err, Error::Corrupt { .. }), "{case}: {err}");
    let err = read_source(dir)
        .err()
        .unwrap_or_else(|| panic!("{case}: the source must refuse"));
    assert!(matches!(err, Error::Corrupt { .. }), "{case}: {err}");
    let err = LocalSegmentSink::open(dir, segments(segment_bytes))
        .err()
        .unwrap_or_else(|| panic!("{case}: the sink must refuse"));
    assert!(matches!(err, Error::Corrupt { .. }), "{case}: {err}");
    assert!(files(dir) == before, "{case}: files changed");
}

/// A log in `dir` whose newest segment holds at least three batches, segments of 4 KiB.
fn log_with_a_full_newest_segment(dir: &Path) -> usize {
    let mut commits = 20;
    let wal = write_commits(dir, 4096, 0, commits);
    while batches_in(&newest_segment(dir)).len() < 3 {
        put(&wal, b"more", b"x");
        wal.commit(&offsets(commits as i64 + 1))
            .unwrap()
            .wait()
            .unwrap();
        commits += 1;
    }
    wal.close().unwrap();
    commits
}

#[test]
fn flipping_any_bit_of_the_first_batch_length_with_batches_after_is_corrupt() {
    let base = tempfile::tempdir().unwrap();
    log_with_a_full_newest_segment(base.path());
    let newest = newest_segment(base.path());
    let name = newest.file_name().unwrap().to_owned();
    for watermark in [true, false] {
        for bit in 0..32 {
            let dir = tempfile::tempdir().unwrap();
            crash_copy(base.path(), dir.path());
            if !watermark {
                // A log of an older version: "a valid batch follows" alone must refuse it.
                std::fs::remove_file(dir.path().join(watermark::FILE_NAME)).unwrap();
            }
            let path = dir.path().join(&name);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[8 + bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &bytes).unwrap();
            assert_refused(
                dir.path(),
                4096,
                &format!("bit {bit}, watermark {watermark}"),
            );
        }
    }
}

/// A small xorshift generator: reproducible garbage without a dependency.
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn a_random_garbage_newest_segment_after_acknowledged_commits_is_corrupt() {
    let base = tempfile::tempdir().unwrap();
    log_with_a_full_newest_segment(base.path());
    let name = newest_segment(base.path()).file_name().unwrap().to_owned();
    let len = std::fs::metadata(base.path().join(&name)).unwrap().len() as usize;
    for (i, garbage_len) in [len, 1, 43, 44, 100, 10_000].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        crash_copy(base.path(), dir.path());
        std::fs::write(
            dir.path().join(&name),
            garbage(garbage_len, 0x9e37_79b9 + i as u64),
        )
        .unwrap();
        assert_refused(dir.path(), 4096, &format!("{garbage_len} bytes of garbage"));
    }
}

#[test]
fn one_flipped_byte_in_any_of_the_last_acknowledged_batches_is_corrupt() {
    // Each commit is its own batch, synced and acknowledged before the next one starts.
    const LAST: usize = 6;
    for crash in [false, true] {
        let base = tempfile::tempdir().unwrap();
        let live = base.path().join("live");
        let wal = write_commits(&live, 64 << 20, 0, 12);
        let image = base.path().join("image");
        if crash {
            // What a SIGKILL right after the last acknowledgment leaves.
            crash_copy(&live, &image);
            drop(wal);
        } else {
            wal.close().unwrap();
            crash_copy(&live, &image);
        }
        let name = newest_segment(&image).file_name().unwrap().to_owned();
        let batches = batches_in(&image.join(&name));
        assert!(batches.len() >= LAST);
        for (n, (off, len, first, _)) in batches.iter().rev().take(LAST).enumerate() {
            // Every byte of the very last batch (nothing follows it: only the watermark can
            // tell), the header and a few payload bytes of the others.
            let positions: Vec<usize> = if n == 0 {
                (0..*len).collect()
            } else {
                (0..44).chain([44, len / 2, len - 1]).collect()
            };
            for p in positions {
                let dir = tempfile::tempdir().unwrap();
                crash_copy(&image, dir.path());
                let path = dir.path().join(&name);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[off + p] ^= 0x40;
                std::fs::write(&path, &bytes).unwrap();
                assert_refused(
                    dir.path(),
                    64 << 20,
                    &format!("crash {crash}, batch at LSN {first}, byte {p}"),
                );
            }
        }
    }
}

/// A batch for LSN `lsn` that the writer could have been writing when it crashed.
fn next_batch_bytes(lsn: u64) -> Vec<u8> {
    let record = millpond_wal::proto::Record {
        body: Some(millpond_wal::proto::record::Body::Rollback(
            millpond_wal::proto::Rollback {
                last_committed_lsn: 0,
            },
        )),
    };
    let mut payload = Vec::new();
    prost::Message::encode_length_delimited(&record, &mut payload).unwrap();
    payload.extend_from_slice(&[0u8; 40]); // longer than a header: room to tear inside
    let mut framed = Vec::new();
    batch::encode(lsn, 1, 0, &payload, &mut framed);
    framed
}

fn local_offset(t: &TornTail) -> (u64, u64) {
    match t.position {
        WalPosition::Local { segment, offset } => (segment, offset),
        ref other => panic!("not local: {other:?}"),
    }
}

#[test]
fn a_torn_unacknowledged_batch_is_cut_at_every_offset_and_reported() {
    let base = tempfile::tempdir().unwrap();
    write_commits(base.path(), 64 << 20, 0, 5).close().unwrap();
    let name = newest_segment(base.path()).file_name().unwrap().to_owned();
    let valid = std::fs::read(base.path().join(&name)).unwrap();
    let last = batches_in(&base.path().join(&name)).last().unwrap().3;
    let torn = next_batch_bytes(last + 1);
    let mut tails: Vec<Vec<u8>> = (1..torn.len()).map(|n| torn[..n].to_vec()).collect();
    tails.push(vec![0; 4096]); // a file extended with zeros
    for tail in tails {
        let dir = tempfile::tempdir().unwrap();
        crash_copy(base.path(), dir.path());
        let path = dir.path().join(&name);
        let mut bytes = valid.clone();
        bytes.extend_from_slice(&tail);
        std::fs::write(&path, &bytes).unwrap();
        let case = format!("{} torn bytes", tail.len());

        // The source reports it and changes nothing.
        let (_, seen) = read_source(dir.path()).unwrap();
        let seen = seen.unwrap_or_else(|| panic!("{case}: the source reports it"));
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{case}");

        let (wal, outcome, model) = open(dir.path(), 64 << 20).unwrap();
        let cut = outcome.torn_tail.clone().expect("recovery reports the cut");
        assert_eq!(cut, seen, "{case}");
        assert_eq!(cut.bytes, tail.len() as u64, "{case}");
        assert_eq!(cut.last_lsn, last, "{case}");
        assert_eq!(local_offset(&cut).1, valid.len() as u64, "{case}");
        assert_eq!(cut.acknowledged_lsn, Some(last), "{case}");
        if tail.len() >= 24 && tail[0] != 0 {
            assert_eq!(cut.declared_first_lsn, Some(last + 1), "{case}");
        }
        assert_eq!(model, expected(5), "{case}");
        assert_eq!(outcome.last_commit.unwrap().offsets, offsets(5), "{case}");
        // The writer continues right after the valid data.
        put(&wal, b"after", b"cut");
        wal.commit(&offsets(99)).unwrap().wait().unwrap();
        wal.close().unwrap();
        let (_wal, outcome, model) = open(dir.path(), 64 << 20).unwrap();
        assert_eq!(outcome.torn_tail, None, "{case}");
        assert_eq!(model.get(&b"after"[..]).unwrap(), b"cut", "{case}");
        assert_eq!(model.len(), 6, "{case}");
    }
}

#[test]
fn a_log_that_is_only_a_partial_batch_is_a_torn_tail() {
    for with_watermark in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        if with_watermark {
            // Opened once (the watermark at 0), then the first batch torn by a crash.
            open(dir.path(), 4096).unwrap().0.close().unwrap();
        }
        let torn = next_batch_bytes(1);
        let path = dir.path().join(format!("{:020}.wal", 1));
        std::fs::write(&path, &torn[..30]).unwrap();

        let (_, seen) = read_source(dir.path()).unwrap();
        let seen = seen.expect("the source reports it");
        assert_eq!((seen.bytes, seen.last_lsn), (30, 0));
        assert_eq!(local_offset(&seen), (1, 0));

        let (wal, outcome, model) = open(dir.path(), 4096).unwrap();
        assert!(model.is_empty());
        let cut = outcome.torn_tail.expect("recovery reports the cut");
        assert_eq!(
            (cut.bytes, cut.last_lsn, local_offset(&cut)),
            (30, 0, (1, 0))
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        put(&wal, b"a", b"1");
        wal.commit(&offsets(1)).unwrap().wait().unwrap();
        wal.close().unwrap();
        let (_wal, _, model) = open(dir.path(), 4096).unwrap();
        assert_eq!(model.get(&b"a"[..]).unwrap(), b"1");
    }
}

#[test]
fn a_tear_inside_a_segments_first_batch_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_commits(dir.path(), 4096, 0, 100).close().unwrap();
    let before = segment_paths(dir.path());
    assert!(before.len() > 1);
    let last = batches_in(before.last().unwrap()).last().unwrap().3;
    // The writer rolled to a new segment and crashed inside its first batch.
    let path = dir.path().join(format!("{:020}.wal", last + 1));
    std::fs::write(&path, &next_batch_bytes(last + 1)[..50]).unwrap();

    let (_, seen) = read_source(dir.path()).unwrap();
    let seen = seen.expect("the source reports it");
    assert_eq!(local_offset(&seen), (last + 1, 0));
    assert_eq!((seen.bytes, seen.last_lsn), (50, last));

    let (_wal, outcome, model) = open(dir.path(), 4096).unwrap();
    let cut = outcome.torn_tail.expect("recovery reports the cut");
    assert_eq!(cut, seen);
    assert_eq!(model, expected(100));
}

#[test]
fn a_deleted_or_older_newest_segment_below_the_watermark_is_corrupt() {
    let base = tempfile::tempdir().unwrap();
    let wal = write_commits(base.path(), 4096, 0, 100);
    assert!(segment_paths(base.path()).len() > 1);
    // A copy of the newest segment, and then more acknowledged commits in that same segment.
    let (newest, older_copy) = (100..)
        .find_map(|i| {
            let newest = newest_segment(base.path());
            let copy = std::fs::read(&newest).unwrap();
            put(&wal, format!("k{i}").as_bytes(), b"later");
            wal.commit(&offsets(i + 1)).unwrap().wait().unwrap();
            (newest_segment(base.path()) == newest).then_some((newest, copy))
        })
        .unwrap();
    wal.close().unwrap();

    let dir = tempfile::tempdir().unwrap();
    crash_copy(base.path(), dir.path());
    std::fs::remove_file(dir.path().join(newest.file_name().unwrap())).unwrap();
    assert_refused(dir.path(), 4096, "newest segment deleted");

    let dir = tempfile::tempdir().unwrap();
    crash_copy(base.path(), dir.path());
    std::fs::write(dir.path().join(newest.file_name().unwrap()), &older_copy).unwrap();
    assert_refused(dir.path(), 4096, "newest segment replaced by an older copy");

    let dir = tempfile::tempdir().unwrap();
    crash_copy(base.path(), dir.path());
    for p in segment_paths(dir.path()) {
        std::fs::remove_file(p).unwrap();
    }
    assert_refused(dir.path(), 4096, "every segment deleted");
}

#[test]
fn a_torn_watermark_slot_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    write_commits(dir.path(), 4096, 0, 10).close().unwrap();
    let path = dir.path().join(watermark::FILE_NAME);
    let bytes = std::fs::read(&path).unwrap();
    let (_, newer) = watermark::decode(&bytes).unwrap().unwrap();
    let mut torn = bytes.clone();
    torn[newer * watermark::SLOT_BYTES + 12] ^= 0xff;
    std::fs::write(&path, &torn).unwrap();
    let (wal, outcome, model) = open(dir.path(), 4096).unwrap();
    assert_eq!(model, expected(10));
    assert_eq!(outcome.torn_tail, None);
    put(&wal, b"k10", b"v10");
    wal.commit(&offsets(11)).unwrap().wait().unwrap();
    wal.close().unwrap();
    let (_wal, _, model) = open(dir.path(), 4096).unwrap();
    assert_eq!(model, expected(11));

    // Both slots damaged: the promise is unknown, so the log is refused, not cut.
    std::fs::write(&path, [0u8; watermark::FILE_BYTES]).unwrap();
    assert_refused(dir.path(), 4096, "both watermark slots damaged");
}

#[test]
fn the_watermark_follows_every_acknowledgment_and_survives_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let wal = write_commits(dir.path(), 4096, 0, 100);
    let durable = wal.stats().durable_below - 1;
    assert_eq!(watermark::read(dir.path()).unwrap(), Some(durable));
    let before = segment_paths(dir.path()).len();
    wal.truncate_below(durable);
    wal.close().unwrap();
    assert!(segment_paths(dir.path()).len() < before);
    assert_eq!(watermark::read(dir.path()).unwrap(), Some(durable));
    let mut source = LocalSegmentSource::open(dir.path(), durable).unwrap();
    assert_eq!(source.acknowledged_lsn(), Some(durable));
    while source.next_batch().unwrap().is_some() {}
}

#[test]
fn crash_images_taken_while_writing_reopen_without_false_corruption() {
    let base = tempfile::tempdir().unwrap();
    let live = base.path().join("live");
    let (wal, _, _) = open(&live, 4096).unwrap();
    let wal = std::sync::Arc::new(wal);
    let writer = {
        let wal = wal.clone();
        std::thread::spawn(move || {
            for i in 0..3000i64 {
                put(&wal, format!("k{}", i % 50).as_bytes(), &[7u8; 60]);
                if i % 10 == 9 {
                    let _ = wal.commit(&offsets(i + 1));
                }
            }
        })
    };
    let mut images = 0;
    while !writer.is_finished() {
        let image = base.path().join(format!("image{images}"));
        crash_copy(&live, &image);
        let acked = watermark::read(&image).unwrap().unwrap_or(0);
        let (wal, outcome, _) = open(&image, 4096)
            .unwrap_or_else(|e| panic!("image {images}: a crash image must reopen: {e}"));
        let commit = outcome.last_commit.map_or(0, |c| c.lsn);
        assert!(outcome.next_lsn > acked, "image {images}: {acked} lost");
        let _ = commit;
        wal.close().unwrap();
        images += 1;
    }
    writer.join().unwrap();
    assert!(images > 2, "images: {images}");
}

/// Runs `f` on a thread and fails if it does not answer within a second, so that a hang is a
/// failure instead of a test that never ends.
fn within_a_second<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(1))
        .expect("answered within a second")
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn assert_invalid_naming(err: Error, path: &Path) {
    match &err {
        Error::Invalid { reason } => assert!(
            reason.contains(&path.display().to_string()),
            "the error names {}: {err}",
            path.display()
        ),
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn special_files_named_like_segments_are_refused_at_once() {
    type Make = fn(&Path, &Path);
    let cases: [(&str, Make); 4] = [
        ("a FIFO", |_, p| mkfifo(p)),
        ("a directory", |_, p| std::fs::create_dir(p).unwrap()),
        ("a symlink to a FIFO", |dir, p| {
            let fifo = dir.join("elsewhere");
            mkfifo(&fifo);
            std::os::unix::fs::symlink(&fifo, p).unwrap();
        }),
        ("a device", |_, p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
    ];
    for (what, make) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_commits(dir.path(), 4096, 0, 3).close().unwrap();
        let special = dir.path().join(format!("{:020}.wal", 999_999));
        make(dir.path(), &special);
        let d = dir.path().to_owned();
        let err = within_a_second(move || LocalSegmentSink::open(&d, segments(4096)).err())
            .unwrap_or_else(|| panic!("{what}: the sink must refuse"));
        assert_invalid_naming(err, &special);
        let d = dir.path().to_owned();
        let err = within_a_second(move || read_source(&d).err())
            .unwrap_or_else(|| panic!("{what}: the source must refuse"));
        assert_invalid_naming(err, &special);
    }
    // The watermark file too.
    let dir = tempfile::tempdir().unwrap();
    let acked = dir.path().join(watermark::FILE_NAME);
    mkfifo(&acked);
    let d = dir.path().to_owned();
    let err = within_a_second(move || read_source(&d).err()).expect("refused");
    assert_invalid_naming(err, &acked);
    // A stray file with another name is still ignored.
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("notes.fifo"));
    let d = dir.path().to_owned();
    within_a_second(move || read_source(&d).unwrap());
}

#[test]
fn the_sink_reports_its_cut_once() {
    let dir = tempfile::tempdir().unwrap();
    write_commits(dir.path(), 4096, 0, 2).close().unwrap();
    let path = newest_segment(dir.path());
    let last = batches_in(&path).last().unwrap().3;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&next_batch_bytes(last + 1)[..10]);
    std::fs::write(&path, &bytes).unwrap();
    let mut sink = LocalSegmentSink::open(dir.path(), segments(4096)).unwrap();
    let cut = sink.take_torn_tail().expect("a cut");
    assert_eq!((cut.bytes, cut.last_lsn), (10, last));
    assert_eq!(sink.take_torn_tail(), None);
    assert_eq!(sink.acknowledged_lsn(), last);
    assert!(cut.to_string().contains("10 bytes"), "{cut}");
}
