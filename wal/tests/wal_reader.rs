//! `WalReader` and `Committed`, the one implementation of the log's rules, on local segment
//! files: written by the crate's own writer (`open_local`, `Wal`), or, for what only a zombie,
//! a takeover or a resend leaves, batches framed by hand and appended by the crate's own
//! segment sink. Each rule of docs/wal.md ("Replay", "Writer epochs") has its test, and every
//! event is checked in log order.

use std::path::Path;

use millpond_state::{Change, ChangeOp, StateKind};
use millpond_wal::{
    open_local, replay, Committed, Error, Event, LocalSegmentSource, OwnedChange, ReplayOutcome,
    SegmentSettings, Skip, SourceOffset, Wal, WalReader, WalSettings,
};

mod common {
    pub mod log;
}
use common::log::{append_local, framed, FakeLog, R};

/// An event, owned and without positions, to compare sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
enum E {
    /// first LSN, last LSN, epoch
    Batch(u64, u64, u64),
    Skipped(u64, u64, u64, Skip),
    Superseded {
        from_lsn: u64,
        epoch: u64,
        discarded: u64,
    },
    /// LSN, the put's value
    Change(u64, u8),
    /// LSN, the offset it resumes at, the time it was written
    Commit(u64, i64, u64),
    Rollback {
        lsn: u64,
        discarded: u64,
    },
}

fn value_of(change: &OwnedChange) -> u8 {
    match change.as_change().op {
        ChangeOp::Put { value, .. } => value.first().copied().unwrap_or(0),
        _ => panic!("only puts here"),
    }
}

/// Every event of `dir`'s log read from after `after_lsn`, then the outcome.
fn events(dir: &Path, after_lsn: u64) -> Result<(Vec<E>, ReplayOutcome), Error> {
    let source = LocalSegmentSource::open(dir, after_lsn + 1)?;
    let mut reader = WalReader::new(source, after_lsn);
    let mut out = Vec::new();
    while let Some(event) = reader.next()? {
        out.push(match event {
            Event::Batch {
                header,
                position,
                bytes,
            } => {
                assert!(matches!(position, millpond_wal::WalPosition::Local { .. }));
                assert_eq!(bytes, header.framed_len());
                E::Batch(header.first_lsn, header.last_lsn, header.epoch)
            }
            Event::Skipped { header, why, .. } => {
                E::Skipped(header.first_lsn, header.last_lsn, header.epoch, why)
            }
            Event::Superseded {
                from_lsn,
                epoch,
                discarded,
            } => E::Superseded {
                from_lsn,
                epoch,
                discarded,
            },
            Event::Change { lsn, change } => E::Change(lsn, value_of(&change)),
            Event::Commit {
                lsn,
                point,
                committed_at_ms,
            } => {
                assert_eq!(point.lsn, lsn);
                E::Commit(lsn, point.offsets[0].next_offset, committed_at_ms)
            }
            Event::Rollback { lsn, discarded } => E::Rollback { lsn, discarded },
            other => panic!("an event this test does not know: {other:?}"),
        });
    }
    Ok((out, reader.into_outcome()))
}

/// The committed units of `dir`'s log: (LSNs and values of the changes, commit LSN, offset).
type Unit = (Vec<(u64, u8)>, u64, i64);

fn units(dir: &Path, after_lsn: u64) -> Result<(Vec<Unit>, ReplayOutcome), Error> {
    let source = LocalSegmentSource::open(dir, after_lsn + 1)?;
    let mut committed = Committed::new(source, after_lsn);
    let mut out = Vec::new();
    while let Some(unit) = committed.next()? {
        let changes = unit
            .changes()
            .iter()
            .map(|(lsn, c)| (*lsn, value_of(c)))
            .collect();
        out.push((
            changes,
            unit.point().lsn,
            unit.point().offsets[0].next_offset,
        ));
    }
    Ok((out, committed.into_outcome()))
}

fn settings() -> WalSettings {
    WalSettings {
        linger_ms: 1,
        ..WalSettings::default()
    }
}

fn open(dir: &Path) -> Wal {
    let (wal, _) = open_local(dir, 0, settings(), SegmentSettings::default(), |_c| {
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    wal
}

fn put(wal: &Wal, value: u8) -> u64 {
    wal.append_change(&Change {
        state: "s",
        kind: StateKind::Value,
        key_group: 0,
        key: b"k",
        op: ChangeOp::Put {
            value: &[value],
            expires_at_ms: 0,
        },
    })
    .unwrap()
}

fn commit(wal: &Wal, offset: i64) {
    wal.commit(&[SourceOffset {
        topic: "t".into(),
        partition: 0,
        next_offset: offset,
    }])
    .unwrap()
    .wait()
    .unwrap();
}

/// Records only (batch boundaries depend on the flusher's timing), after checking that the
/// accepted batches follow each other.
fn records(events: &[E]) -> Vec<E> {
    let mut next = None;
    for e in events {
        if let E::Batch(first, last, _) = e {
            if let Some(n) = next {
                assert_eq!(*first, n, "batches follow each other: {events:?}");
            }
            next = Some(last + 1);
        }
    }
    events
        .iter()
        .filter(|e| !matches!(e, E::Batch(..)))
        .cloned()
        .collect()
}

#[test]
fn a_log_written_by_the_wal_reads_back_as_its_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    assert_eq!((put(&wal, 1), put(&wal, 2)), (1, 2));
    commit(&wal, 10);
    put(&wal, 3); // never committed
    wal.close().unwrap();
    drop(wal);
    // Reopening rolls the uncommitted change back, then the log goes on.
    let wal = open(dir.path());
    put(&wal, 4);
    commit(&wal, 20);
    wal.close().unwrap();

    let (events, outcome) = events(dir.path(), 0).unwrap();
    let ms = |e: &E| match e {
        E::Commit(_, _, ms) => *ms,
        _ => 0,
    };
    let records = records(&events);
    let commits: Vec<u64> = records.iter().map(ms).filter(|ms| *ms > 0).collect();
    assert_eq!(commits.len(), 2, "{records:?}");
    assert_eq!(
        records,
        vec![
            E::Change(1, 1),
            E::Change(2, 2),
            E::Commit(3, 10, commits[0]),
            E::Change(4, 3),
            E::Rollback {
                lsn: 5,
                discarded: 1
            },
            E::Change(6, 4),
            E::Commit(7, 20, commits[1]),
        ]
    );
    assert_eq!(outcome.applied, 3);
    assert_eq!(outcome.uncommitted, 0);
    assert_eq!(outcome.next_lsn, 8);
    assert_eq!(outcome.last_commit.as_ref().unwrap().lsn, 7);
    assert_eq!(outcome.torn_tail, None);

    let (units, same) = units(dir.path(), 0).unwrap();
    assert_eq!(
        units,
        vec![(vec![(1, 1), (2, 2)], 3, 10), (vec![(6, 4)], 7, 20)]
    );
    assert_eq!(same, outcome);
}

#[test]
fn a_resent_batch_is_skipped_as_a_duplicate_and_an_overlap_yields_only_its_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let first = framed(1, 1, &[R::Put(1), R::Commit(1)]);
    append_local(
        dir.path(),
        &[
            first.clone(),
            first, // resent after an ambiguous failure
            framed(2, 1, &[R::Commit(1), R::Put(2)]),
            framed(4, 1, &[R::Commit(2)]),
        ],
    );
    let (events, outcome) = events(dir.path(), 0).unwrap();
    assert_eq!(
        events,
        vec![
            E::Batch(1, 2, 1),
            E::Change(1, 1),
            E::Commit(2, 1, 1001),
            E::Skipped(1, 2, 1, Skip::Duplicate),
            E::Batch(2, 3, 1),
            E::Change(3, 2),
            E::Batch(4, 4, 1),
            E::Commit(4, 2, 1002),
        ]
    );
    assert_eq!(outcome.duplicates, 1);
    assert_eq!(outcome.applied, 2);
    assert_eq!(outcome.next_lsn, 5);
}

#[test]
fn batches_a_snapshot_covers_are_skipped_as_covered_not_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    append_local(
        dir.path(),
        &[
            framed(1, 1, &[R::Put(1), R::Commit(1)]),
            framed(3, 1, &[R::Put(2), R::Commit(2)]),
        ],
    );
    let (events, outcome) = events(dir.path(), 2).unwrap();
    assert_eq!(
        events,
        vec![
            E::Skipped(1, 2, 1, Skip::Covered),
            E::Batch(3, 4, 1),
            E::Change(3, 2),
            E::Commit(4, 2, 1002),
        ]
    );
    assert_eq!((outcome.duplicates, outcome.applied), (0, 1));
}

#[test]
fn a_gap_in_lsns_is_corrupt_and_ends_the_reading() {
    let dir = tempfile::tempdir().unwrap();
    append_local(
        dir.path(),
        &[
            framed(1, 1, &[R::Put(1), R::Commit(1)]),
            framed(4, 1, &[R::Put(2), R::Commit(2)]),
        ],
    );
    let source = LocalSegmentSource::open(dir.path(), 1).unwrap();
    let mut reader = WalReader::new(source, 0);
    let mut seen = 0;
    let err = loop {
        match reader.next() {
            Ok(Some(_)) => seen += 1,
            Ok(None) => panic!("a gap read as a whole log"),
            Err(e) => break e,
        }
    };
    assert_eq!(seen, 3, "the batch before the gap is read");
    let Error::Corrupt { what, location } = &err else {
        panic!("{err}")
    };
    assert!(what.contains("LSN gap"), "{err}");
    assert!(
        location.contains("00000000000000000001.wal@") && location.contains("expected LSN 3"),
        "names the segment and the LSN: {err}"
    );
    assert!(matches!(reader.next(), Err(Error::Invalid { .. })));
    // A snapshot the log was truncated past is the same gap.
    let dir = tempfile::tempdir().unwrap();
    append_local(dir.path(), &[framed(5, 1, &[R::Put(1), R::Commit(1)])]);
    assert!(matches!(events(dir.path(), 2), Err(Error::Corrupt { .. })));
}

/// The old owner (epoch 1) commits LSN 1..=2, then writes two changes after the new owner
/// (epoch 2) read the log up to LSN 2; the new owner starts at LSN 3; the old one, a zombie
/// now, appends a commit that would fit at LSN 6..=7; the new owner writes its own 6..=7.
fn takeover_and_zombie() -> Vec<Vec<u8>> {
    vec![
        framed(1, 1, &[R::Put(1), R::Commit(1)]),
        framed(3, 1, &[R::Put(98), R::Put(99)]),
        framed(3, 2, &[R::Rollback, R::Put(2), R::Commit(2)]),
        framed(6, 1, &[R::Put(97), R::Commit(97)]),
        framed(6, 2, &[R::Put(3), R::Commit(3)]),
    ]
}

#[test]
fn a_takeover_supersedes_the_uncommitted_records_it_did_not_read_and_a_zombie_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    append_local(dir.path(), &takeover_and_zombie());
    let (events, outcome) = events(dir.path(), 0).unwrap();
    assert_eq!(
        events,
        vec![
            E::Batch(1, 2, 1),
            E::Change(1, 1),
            E::Commit(2, 1, 1001),
            E::Batch(3, 4, 1),
            E::Change(3, 98),
            E::Change(4, 99),
            E::Superseded {
                from_lsn: 3,
                epoch: 2,
                discarded: 2
            },
            E::Batch(3, 5, 2),
            E::Rollback {
                lsn: 3,
                discarded: 0
            },
            E::Change(4, 2),
            E::Commit(5, 2, 1002),
            E::Skipped(6, 7, 1, Skip::Zombie { log_epoch: 2 }),
            E::Batch(6, 7, 2),
            E::Change(6, 3),
            E::Commit(7, 3, 1003),
        ]
    );
    assert_eq!(outcome.fenced, 1);
    assert_eq!(outcome.duplicates, 0);
    assert_eq!(outcome.epoch, 2);
    assert_eq!(outcome.applied, 3);
    assert_eq!(outcome.uncommitted, 0);
    assert_eq!(outcome.next_lsn, 8);

    // Committed drops the superseded changes and never sees the zombie's.
    let (units, same) = units(dir.path(), 0).unwrap();
    assert_eq!(
        units,
        vec![
            (vec![(1, 1)], 2, 1),
            (vec![(4, 2)], 5, 2),
            (vec![(6, 3)], 7, 3)
        ]
    );
    assert_eq!(same, outcome);
}

#[test]
fn a_zombie_batch_before_any_commit_of_the_new_owner_is_skipped_too() {
    let dir = tempfile::tempdir().unwrap();
    append_local(
        dir.path(),
        &[
            framed(1, 2, &[R::Put(1)]),
            // Lower epoch, next LSN: it would fit, and still does not count.
            framed(2, 1, &[R::Commit(9)]),
            framed(2, 2, &[R::Commit(1)]),
        ],
    );
    let (units, outcome) = units(dir.path(), 0).unwrap();
    assert_eq!(units, vec![(vec![(1, 1)], 2, 1)]);
    assert_eq!((outcome.fenced, outcome.epoch), (1, 2));
}

#[test]
fn a_takeover_over_a_committed_record_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    append_local(
        dir.path(),
        &[
            framed(1, 1, &[R::Put(1), R::Commit(1)]),
            framed(3, 1, &[R::Put(98), R::Commit(98)]),
            framed(3, 2, &[R::Rollback, R::Put(2), R::Commit(2)]),
        ],
    );
    let err = events(dir.path(), 0).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { what, .. } if what.contains("conflicting writers")),
        "{err}"
    );
}

#[test]
fn a_rollback_discards_the_changes_since_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    append_local(
        dir.path(),
        &[
            framed(1, 1, &[R::Put(1), R::Commit(1), R::Put(2), R::Put(3)]),
            framed(5, 1, &[R::Rollback, R::Put(4), R::Commit(2)]),
            framed(8, 1, &[R::Put(5)]),
        ],
    );
    let (events, outcome) = events(dir.path(), 0).unwrap();
    assert!(events.contains(&E::Rollback {
        lsn: 5,
        discarded: 2
    }));
    assert_eq!(outcome.applied, 2);
    assert_eq!(outcome.uncommitted, 1);
    let (units, _) = units(dir.path(), 0).unwrap();
    assert_eq!(units, vec![(vec![(1, 1)], 2, 1), (vec![(6, 4)], 7, 2)]);
}

#[test]
fn a_torn_tail_ends_the_log_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    put(&wal, 1);
    commit(&wal, 1);
    wal.close().unwrap();
    // A crash while the next batch was being written, before it was acknowledged.
    let segment = dir.path().join(format!("{:020}.wal", 1));
    let mut bytes = std::fs::read(&segment).unwrap();
    let valid = bytes.len() as u64;
    bytes.extend_from_slice(&framed(3, 0, &[R::Put(2), R::Commit(2)])[..50]);
    std::fs::write(&segment, &bytes).unwrap();

    let (events, outcome) = events(dir.path(), 0).unwrap();
    assert_eq!(
        records(&events),
        vec![E::Change(1, 1), E::Commit(2, 1, ms_of(&events))]
    );
    let torn = outcome.torn_tail.expect("the torn tail is reported");
    assert_eq!(torn.bytes, 50);
    assert_eq!(torn.last_lsn, 2);
    assert_eq!(torn.declared_first_lsn, Some(3));
    assert_eq!(
        torn.position,
        millpond_wal::WalPosition::Local {
            segment: 1,
            offset: valid
        }
    );
    assert_eq!(outcome.next_lsn, 3);
}

fn ms_of(events: &[E]) -> u64 {
    events
        .iter()
        .find_map(|e| match e {
            E::Commit(_, _, ms) => Some(*ms),
            _ => None,
        })
        .unwrap()
}

#[test]
fn take_changes_moves_a_units_changes_out() {
    let mut committed = Committed::new(
        FakeLog::new(vec![framed(1, 1, &[R::Put(1), R::Put(2), R::Commit(1)])]),
        0,
    );
    let mut unit = committed.next().unwrap().unwrap();
    let moved: Vec<(u64, u8)> = unit
        .take_changes()
        .map(|(lsn, c)| (lsn, value_of(&c)))
        .collect();
    assert_eq!(moved, vec![(1, 1), (2, 2)]);
    assert!(unit.changes().is_empty());
    assert_eq!(unit.point().lsn, 3);
    assert_eq!(unit.committed_at_ms(), 1001);
    assert!(committed.next().unwrap().is_none());
    assert!(committed.next().unwrap().is_none(), "the end stays the end");
    assert_eq!(committed.outcome().applied, 2);
}

#[test]
fn replay_applies_exactly_the_committed_units() {
    let mut applied = Vec::new();
    let outcome = replay(&mut FakeLog::new(takeover_and_zombie()), 0, |c| {
        applied.push(value_of(c));
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    assert_eq!(applied, vec![1, 2, 3]);
    assert_eq!(outcome.applied, 3);
    // A failure to apply names the commit of its unit.
    let err = replay(&mut FakeLog::new(takeover_and_zombie()), 0, |c| {
        if value_of(c) == 2 {
            Err(std::io::Error::other("no such state"))
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(matches!(err, Error::Apply { lsn: 5, .. }), "{err}");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = R> {
        prop_oneof![
            any::<u8>().prop_map(R::Put),
            (0i64..100).prop_map(R::Commit),
            Just(R::Rollback),
        ]
    }

    fn batch() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![0u64..12, Just(u64::MAX - 1), Just(u64::MAX)],
            0u64..4,
            proptest::collection::vec(record(), 1..4),
        )
            .prop_map(|(first, epoch, records)| {
                let first = first.min(u64::MAX - records.len() as u64 + 1);
                framed(first, epoch, &records)
            })
    }

    proptest! {
        /// Any sequence of well-framed batches (any LSNs, epochs, records) gives events or an
        /// error, never a panic; and the committed units hold ascending LSNs, each below its
        /// commit, never a change twice.
        #[test]
        fn any_sequence_of_batches_reads_without_panicking(
            log in proptest::collection::vec(batch(), 0..12),
            after in prop_oneof![0u64..4, Just(u64::MAX)],
        ) {
            let mut committed = Committed::new(FakeLog::new(log), after);
            let mut last = after;
            // An error ends the reading; so does the end.
            while let Ok(Some(unit)) = committed.next() {
                for (lsn, _) in unit.changes() {
                    prop_assert!(*lsn > last && *lsn < unit.point().lsn);
                    last = *lsn;
                }
                last = unit.point().lsn;
            }
        }
    }
}
