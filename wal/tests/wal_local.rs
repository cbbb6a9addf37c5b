//! The local segment WAL: replay equals what was committed, across segment rolls, restarts,
//! torn tails and corruption.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use millpond_state::{
    Change, ChangeOp, StateKind, Store, StringCodec, U64Codec, ValueStateDescriptor,
};
use millpond_wal::batch::{self, Decoded};
use millpond_wal::{
    open_local, watermark, Error, OwnedChange, ReplayOutcome, SegmentSettings, SourceOffset, Wal,
    WalPosition, WalSettings,
};

fn small_segments() -> SegmentSettings {
    SegmentSettings {
        segment_bytes: 4096,
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

/// Replays `dir` into a map of key → last put value (a model of one value state).
fn recover(dir: &Path, after: u64) -> (Wal, ReplayOutcome, BTreeMap<Vec<u8>, Vec<u8>>) {
    let mut model = BTreeMap::new();
    let (wal, outcome) = open_local(
        dir,
        after,
        settings(),
        small_segments(),
        |c: &OwnedChange| {
            match c.as_change().op {
                ChangeOp::Put { value, .. } => {
                    model.insert(c.key.clone(), value.to_vec());
                }
                ChangeOp::Clear => {
                    model.remove(&c.key);
                }
                _ => {}
            }
            Ok::<(), std::io::Error>(())
        },
    )
    .unwrap();
    (wal, outcome, model)
}

/// Opens the log without applying anything (for tests that only look at the outcome).
fn open_ignoring(dir: &Path, wal: WalSettings) -> millpond_wal::Result<(Wal, ReplayOutcome)> {
    open_local(dir, 0, wal, small_segments(), |_c: &OwnedChange| {
        Ok::<(), std::io::Error>(())
    })
}

fn put(wal: &Wal, key: &[u8], value: &[u8]) -> u64 {
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
    .unwrap()
}

fn offsets(n: i64) -> Vec<SourceOffset> {
    vec![SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset: n,
    }]
}

#[test]
fn replay_equals_committed_changes_across_rolls_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    let mut commits = 0i64;
    for round in 0..5 {
        let (wal, outcome, model) = recover(dir.path(), 0);
        assert_eq!(model, expected, "round {round}");
        if round > 0 {
            assert_eq!(
                outcome.last_commit.as_ref().unwrap().offsets,
                offsets(commits)
            );
        }
        for i in 0..300u32 {
            let key = format!("k{}", (i * 7 + round) % 97).into_bytes();
            let value = format!("v{round}-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
            put(&wal, &key, &value);
            expected.insert(key, value);
            if i % 50 == 49 {
                commits += 1;
                let _durable = wal.commit(&offsets(commits)).unwrap();
            }
        }
        wal.close().unwrap();
    }
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(segments > 3, "segments rolled: {segments}");
}

#[test]
fn uncommitted_changes_are_never_applied_even_after_later_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = recover(dir.path(), 0);
    put(&wal, b"a", b"committed");
    let _durable = wal.commit(&offsets(1)).unwrap();
    put(&wal, b"a", b"uncommitted");
    put(&wal, b"b", b"uncommitted");
    wal.close().unwrap();

    let (wal, outcome, model) = recover(dir.path(), 0);
    assert_eq!(outcome.uncommitted, 2);
    assert_eq!(model.get(&b"a"[..]).unwrap(), b"committed");
    assert!(!model.contains_key(&b"b"[..]));
    // The job reprocesses from offset 1 and commits again: the old tail must stay dropped.
    put(&wal, b"c", b"new");
    let _durable = wal.commit(&offsets(2)).unwrap();
    wal.close().unwrap();

    let (_wal, outcome, model) = recover(dir.path(), 0);
    assert_eq!(outcome.uncommitted, 0);
    assert_eq!(model.get(&b"a"[..]).unwrap(), b"committed");
    assert!(!model.contains_key(&b"b"[..]));
    assert_eq!(model.get(&b"c"[..]).unwrap(), b"new");
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files.pop().unwrap()
}

/// The last LSN in the valid batches of the segment at `path`.
fn last_lsn_in(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let (mut off, mut last) = (0, 0);
    while let Ok(Decoded::Batch(h, _)) = batch::decode(&bytes[off..], String::new) {
        off += h.framed_len();
        last = h.last_lsn;
    }
    last
}

#[test]
fn a_torn_tail_is_dropped_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = recover(dir.path(), 0);
    put(&wal, b"a", b"1");
    let _durable = wal.commit(&offsets(1)).unwrap();
    put(&wal, b"a", b"2");
    let _durable = wal.commit(&offsets(2)).unwrap();
    wal.close().unwrap();

    // Half of a next batch, never acknowledged, as a crash during its write would leave it.
    let path = last_segment(dir.path());
    let next = last_lsn_in(&path) + 1;
    let mut framed = Vec::new();
    batch::encode(next, 1, 0, &[0u8; 64], &mut framed);
    let mut bytes = std::fs::read(&path).unwrap();
    let valid_len = bytes.len() as u64;
    bytes.extend_from_slice(&framed[..framed.len() / 2]);
    std::fs::write(&path, &bytes).unwrap();

    let (wal, outcome, model) = recover(dir.path(), 0);
    assert_eq!(model.get(&b"a"[..]).unwrap(), b"2");
    assert_eq!(outcome.last_commit.unwrap().offsets, offsets(2));
    let torn = outcome.torn_tail.expect("the cut is reported");
    assert_eq!(
        (torn.bytes, torn.last_lsn, torn.declared_first_lsn),
        ((framed.len() / 2) as u64, next - 1, Some(next))
    );
    assert!(
        matches!(torn.position, WalPosition::Local { offset, .. } if offset == valid_len),
        "{torn}"
    );
    put(&wal, b"a", b"3");
    let _durable = wal.commit(&offsets(3)).unwrap();
    wal.close().unwrap();
    let (_wal, _, model) = recover(dir.path(), 0);
    assert_eq!(model.get(&b"a"[..]).unwrap(), b"3");
}

#[test]
fn without_a_watermark_a_cut_last_batch_is_a_torn_tail() {
    // A log written before the watermark existed: only "nothing valid follows" decides.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = recover(dir.path(), 0);
    put(&wal, b"a", b"1");
    let _durable = wal.commit(&offsets(1)).unwrap();
    put(&wal, b"a", b"2");
    let _durable = wal.commit(&offsets(2)).unwrap();
    wal.close().unwrap();
    std::fs::remove_file(dir.path().join(watermark::FILE_NAME)).unwrap();
    let path = last_segment(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);

    let (wal, outcome, model) = recover(dir.path(), 0);
    assert_eq!(model.get(&b"a"[..]).unwrap(), b"1");
    assert_eq!(outcome.last_commit.unwrap().offsets, offsets(1));
    let torn = outcome.torn_tail.expect("the cut is reported");
    assert_eq!(torn.acknowledged_lsn, None);
    wal.close().unwrap();
    // The reopened log has a watermark again.
    assert!(watermark::read(dir.path()).unwrap().is_some());
}

#[test]
fn zeros_after_the_last_batch_are_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = recover(dir.path(), 0);
    put(&wal, b"a", b"1");
    let _durable = wal.commit(&offsets(1)).unwrap();
    wal.close().unwrap();
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 4096]);
    std::fs::write(&path, &bytes).unwrap();
    let (_wal, outcome, model) = recover(dir.path(), 0);
    assert_eq!(model.get(&b"a"[..]).unwrap(), b"1");
    assert_eq!(outcome.last_commit.unwrap().offsets, offsets(1));
}

#[test]
fn a_bit_flip_before_the_end_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = recover(dir.path(), 0);
    for i in 0..20u8 {
        put(&wal, &[i], b"value");
        let _durable = wal.commit(&offsets(i as i64 + 1)).unwrap();
    }
    wal.close().unwrap();
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x10; // inside the first batch's payload; later batches follow
    std::fs::write(&path, &bytes).unwrap();
    let err = open_ignoring(dir.path(), settings())
        .err()
        .expect("corruption must be reported");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // Nothing was cut off the file on the way.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn truncation_below_a_snapshot_keeps_what_replay_after_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = recover(dir.path(), 0);
    let mut snapshot_lsn = 0;
    for i in 0..400u32 {
        let lsn = put(&wal, format!("k{i}").as_bytes(), b"v");
        if i == 300 {
            snapshot_lsn = wal.commit(&offsets(i as i64)).unwrap().lsn();
        }
        let _ = lsn;
    }
    let _durable = wal.commit(&offsets(400)).unwrap();
    let before = std::fs::read_dir(dir.path()).unwrap().count();
    wal.truncate_below(snapshot_lsn + 1);
    wal.close().unwrap();
    let after = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(after < before, "segments {before} -> {after}");
    // Replay after the snapshot's LSN finds exactly the later changes.
    let (_wal, outcome, model) = recover(dir.path(), snapshot_lsn);
    assert_eq!(outcome.last_commit.unwrap().offsets, offsets(400));
    assert_eq!(model.len(), 99);
    // Replaying from before the truncation point is a gap: refused, not silently partial.
    let err = open_ignoring(dir.path(), settings())
        .err()
        .expect("a gap must be reported");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn a_full_ring_applies_backpressure_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = WalSettings {
        ring_bytes: 4096,
        batch_bytes: 1024,
        linger_ms: 5,
        ..WalSettings::default()
    };
    let (wal, _) = open_ignoring(dir.path(), tiny).unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    put(&wal, &[t], &i.to_le_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let _durable = wal.commit(&offsets(1)).unwrap();
    drop(wal);
    let (_wal, outcome, model) = recover(dir.path(), 0);
    assert_eq!(outcome.applied, 8000);
    for t in 0..4u8 {
        assert_eq!(model.get(&[t][..]).unwrap(), &1999u32.to_le_bytes());
    }
}

#[test]
fn a_store_logs_through_the_wal_and_replays_into_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open_ignoring(&dir.path().join("wal"), settings()).unwrap();
    let wal = Arc::new(wal);
    let store = Store::builder(dir.path().join("a"))
        .change_sink_arc(wal.clone())
        .open()
        .unwrap();
    let counts = store
        .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
        .unwrap();
    for i in 0..1000u64 {
        counts
            .update_with(&format!("w{}", i % 37), |n| Some(n.unwrap_or(0) + 1))
            .unwrap();
    }
    let _durable = wal.commit(&offsets(1000)).unwrap();
    store.close().unwrap();
    drop(counts);
    drop(store);
    Arc::try_unwrap(wal).ok().unwrap().close().unwrap();

    let fresh = Store::builder(dir.path().join("b")).open().unwrap();
    let replayed = fresh
        .value_state(ValueStateDescriptor::new("counts", StringCodec, U64Codec))
        .unwrap();
    let (_wal, outcome) = open_local(
        dir.path().join("wal"),
        0,
        settings(),
        small_segments(),
        |c: &OwnedChange| fresh.apply(&c.as_change()),
    )
    .unwrap();
    assert_eq!(outcome.applied, 1000);
    for w in 0..37u64 {
        let expected = (0..1000u64).filter(|i| i % 37 == w).count() as u64;
        assert_eq!(replayed.get(&format!("w{w}")).unwrap(), Some(expected));
    }
}
