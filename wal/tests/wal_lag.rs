//! What the writer tells about the log after an LSN (the snapshot trigger's inputs): the bytes
//! its sink accepted after it ([`Wal::bytes_after`]) and the newest durable commit and the
//! change it covers ([`WalStats`]). The Pulsar sink's case is in `wal_pulsar.rs`: the writer
//! does the counting, whatever the sink.

use std::path::Path;

use millpond_state::{Change, ChangeOp, StateKind};
use millpond_wal::{
    open_local, LocalSegmentSink, OwnedChange, SegmentSettings, SourceOffset, Wal, WalSettings,
};

fn put(wal: &Wal, key: &[u8]) -> u64 {
    wal.append_change(&Change {
        state: "s",
        kind: StateKind::Value,
        key_group: 0,
        key,
        op: ChangeOp::Put {
            value: b"value",
            expires_at_ms: 0,
        },
    })
    .unwrap()
}

fn commit(wal: &Wal, next_offset: i64) -> u64 {
    wal.commit(&[SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset,
    }])
    .unwrap()
    .lsn()
}

fn unsynced() -> SegmentSettings {
    SegmentSettings {
        sync: false,
        ..SegmentSettings::default()
    }
}

fn start(dir: &Path) -> Wal {
    let sink = LocalSegmentSink::open(dir, unsynced()).unwrap();
    Wal::start(sink, 1, WalSettings::default())
}

#[test]
fn commits_are_told_apart_from_markers_that_only_move_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let wal = start(dir.path());
    let stats = wal.stats();
    assert_eq!(
        (stats.last_commit_lsn, stats.last_committed_change_lsn),
        (0, 0)
    );

    let change = put(&wal, b"a");
    let first = commit(&wal, 1);
    let stats = wal.stats();
    assert_eq!(
        (stats.last_commit_lsn, stats.last_committed_change_lsn),
        (first, change)
    );

    // Offsets moved, no state changed: the commit moves, the covered change does not.
    let markers_only = commit(&wal, 2);
    let stats = wal.stats();
    assert_eq!(
        (stats.last_commit_lsn, stats.last_committed_change_lsn),
        (markers_only, change)
    );

    // An uncommitted change counts only once a commit covers it.
    let later = put(&wal, b"b");
    assert_eq!(wal.stats().last_committed_change_lsn, change);
    let covering = commit(&wal, 3);
    let stats = wal.stats();
    assert_eq!(
        (stats.last_commit_lsn, stats.last_committed_change_lsn),
        (covering, later)
    );
    wal.close().unwrap();
}

#[test]
fn a_rollback_drops_the_changes_before_it_from_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let open = |dir: &Path| {
        open_local(
            dir,
            0,
            WalSettings::default(),
            unsynced(),
            |_c: &OwnedChange| Ok::<(), std::io::Error>(()),
        )
        .unwrap()
    };
    let (wal, _) = open(dir.path());
    put(&wal, b"a");
    commit(&wal, 1);
    put(&wal, b"uncommitted");
    wal.close().unwrap();

    // Reopening writes a rollback of the uncommitted change; a commit after it covers no
    // change of this writer.
    let (wal, outcome) = open(dir.path());
    assert_eq!(outcome.uncommitted, 1);
    let only_offsets = commit(&wal, 2);
    let stats = wal.stats();
    assert_eq!(
        (stats.last_commit_lsn, stats.last_committed_change_lsn),
        (only_offsets, 0)
    );
    wal.close().unwrap();
}

/// Each commit is one or two sink writes; the bytes after a commit's LSN are exactly those
/// written after it returned, also once the writer keeps fewer marks than writes (past 4096
/// it thins them and may then count more, never less), and truncation keeps the answers at
/// and above its LSN.
#[test]
fn bytes_after_an_lsn_are_the_batches_written_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let wal = start(dir.path());
    assert_eq!(wal.bytes_after(0), 0);
    let mut marks = Vec::new();
    for i in 0..5000u32 {
        put(&wal, &i.to_be_bytes());
        let lsn = commit(&wal, i64::from(i) + 1);
        marks.push((lsn, wal.stats().bytes_written));
    }
    let total = wal.stats().bytes_written;
    assert_eq!(wal.bytes_after(0), total);
    let (last_lsn, _) = *marks.last().unwrap();
    assert_eq!(wal.bytes_after(last_lsn), 0);
    let check = |from: usize| {
        let mut over = 0;
        for &(lsn, written) in &marks[from..] {
            let exact = total - written;
            let told = wal.bytes_after(lsn);
            assert!(told >= exact, "after LSN {lsn}: told {told}, exact {exact}");
            over = over.max(told - exact);
        }
        over
    };
    let over = check(0);
    // Thinned once or twice: a mark every 2 to 4 writes, each write one small batch.
    assert!(over > 0 && over < 4 * 200, "{over}");
    // The newest marks are exact.
    for &(lsn, written) in &marks[marks.len() - 3..] {
        assert_eq!(wal.bytes_after(lsn), total - written);
    }

    let (cut, _) = marks[4000];
    wal.truncate_below(cut);
    check(4000);
    wal.close().unwrap();
}
