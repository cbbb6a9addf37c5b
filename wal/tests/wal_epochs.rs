//! Writer epochs in replay: a zombie's batches after a takeover never count, and a takeover
//! that overlaps the old writer's uncommitted tail drops that tail. Uses an in-memory fake
//! source (a Vec of framed batches), since the rule is the replay's own logic.

use millpond_wal::{replay, Error, OwnedChange};

mod common {
    pub mod log;
}
use common::log::{framed, FakeLog, R};

/// Replays `log`; returns the values applied and the outcome.
fn run(log: Vec<Vec<u8>>) -> Result<(Vec<u8>, millpond_wal::ReplayOutcome), Error> {
    let mut applied = Vec::new();
    let outcome = replay(&mut FakeLog::new(log), 0, |c: &OwnedChange| {
        let millpond_state::ChangeOp::Put { value, .. } = c.as_change().op else {
            panic!("only puts here")
        };
        applied.push(value[0]);
        Ok::<(), std::io::Error>(())
    })?;
    Ok((applied, outcome))
}

#[test]
fn a_zombie_batch_after_a_takeover_is_ignored() {
    let (applied, out) = run(vec![
        framed(1, 1, &[R::Put(1), R::Commit(1)]),
        // The new owner (epoch 2) continues at LSN 3.
        framed(3, 2, &[R::Rollback, R::Put(2), R::Commit(2)]),
        // The zombie, still at epoch 1, appends with LSNs that would fit.
        framed(6, 1, &[R::Put(99), R::Commit(99)]),
        framed(6, 2, &[R::Put(3), R::Commit(3)]),
    ])
    .unwrap();
    assert_eq!(applied, vec![1, 2, 3]);
    assert_eq!(out.fenced, 1);
    assert_eq!(out.epoch, 2);
    assert_eq!(out.last_commit.unwrap().offsets[0].next_offset, 3);
    assert_eq!(out.next_lsn, 8);
}

#[test]
fn a_takeover_drops_the_uncommitted_tail_it_did_not_read() {
    let (applied, out) = run(vec![
        framed(1, 1, &[R::Put(1), R::Commit(1)]),
        // Written by the old owner after the new one read the log (uncommitted).
        framed(3, 1, &[R::Put(98), R::Put(99)]),
        // The new owner read up to LSN 2 and starts at 3.
        framed(3, 2, &[R::Rollback, R::Put(2), R::Commit(2)]),
    ])
    .unwrap();
    assert_eq!(applied, vec![1, 2]);
    assert_eq!(out.uncommitted, 0);
    assert_eq!(out.next_lsn, 6);
}

#[test]
fn a_takeover_over_a_commit_it_did_not_read_is_reported() {
    let err = run(vec![
        framed(1, 1, &[R::Put(1), R::Commit(1)]),
        framed(3, 1, &[R::Put(98), R::Commit(98)]),
        framed(3, 2, &[R::Rollback, R::Put(2), R::Commit(2)]),
    ])
    .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { what, .. } if what.contains("conflicting writers")),
        "{err}"
    );
}

#[test]
fn recovery_refuses_a_writer_older_than_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let settings = millpond_wal::WalSettings::default();
    let open = |epoch| {
        let sink = millpond_wal::LocalSegmentSink::open(dir.path(), Default::default()).unwrap();
        let mut source = millpond_wal::LocalSegmentSource::open(dir.path(), 1).unwrap();
        millpond_wal::recover(sink, &mut source, 0, epoch, settings.clone(), |_c| {
            Ok::<(), std::io::Error>(())
        })
    };
    let (wal, _) = open(Some(5)).unwrap();
    let _durable = wal.commit(&[]).unwrap();
    wal.close().unwrap();
    drop(wal);
    let Err(err) = open(Some(4)) else {
        panic!("a writer of epoch 4 recovered a log of epoch 5")
    };
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    let (wal, out) = open(None).unwrap();
    assert_eq!(out.epoch, 5);
    wal.close().unwrap();
}
