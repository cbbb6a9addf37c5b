//! The facade over a damaged local WAL: a torn tail that recovery cut is in
//! `Recovery::wal_torn_tail`, never invisible to the job; damage to acknowledged data fails
//! `recover` with the WAL's `Corrupt` error and leaves every file as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use millpond::state::{StringCodec, U64Codec, ValueState, ValueStateDescriptor};
use millpond::wal::batch::{self, Decoded};
use millpond::wal::{SourceOffset, WalPosition};
use millpond::{Error, Millpond, Settings};

fn counts() -> ValueStateDescriptor<String, u64> {
    ValueStateDescriptor::new("counts", StringCodec, U64Codec)
}

fn at(next_offset: i64) -> SourceOffset {
    SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset,
    }
}

fn open(dir: &Path) -> Result<(Millpond, ValueState<String, u64>), Error> {
    let opening = Millpond::builder(dir)
        .settings(Settings {
            snapshot_after_changes: u64::MAX,
            snapshot_after_wal_bytes: u64::MAX,
            snapshot_interval_max: None,
            ..Settings::default()
        })
        .open()?;
    let state = opening.store().value_state(counts())?;
    Ok((opening.recover()?, state))
}

/// Five commits of one update each, then a clean close.
fn write(dir: &Path) {
    let (job, state) = open(dir).unwrap();
    for i in 0..5u64 {
        state.update(&format!("k{i}"), &i).unwrap();
        let _durable = job.commit(&[at(i as i64 + 1)]).unwrap();
    }
    job.close().unwrap();
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

/// Offset and last LSN of each valid batch of a segment.
fn batches_in(path: &Path) -> Vec<(usize, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let (mut off, mut out) = (0, Vec::new());
    while let Ok(Decoded::Batch(h, _)) = batch::decode(&bytes[off..], String::new) {
        out.push((off, h.last_lsn));
        off += h.framed_len();
    }
    out
}

fn wal_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn recovery_reports_the_torn_tail_it_cut() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path());
    let segment = newest_segment(dir.path());
    let (_, last) = *batches_in(&segment).last().unwrap();
    let mut framed = Vec::new();
    batch::encode(last + 1, 1, 0, &[0u8; 60], &mut framed);
    let mut bytes = std::fs::read(&segment).unwrap();
    let valid = bytes.len() as u64;
    bytes.extend_from_slice(&framed[..40]);
    std::fs::write(&segment, &bytes).unwrap();

    let (job, state) = open(dir.path()).unwrap();
    let cut = job
        .recovery()
        .wal_torn_tail
        .clone()
        .expect("the cut is reported");
    assert_eq!((cut.bytes, cut.last_lsn), (40, last));
    assert!(matches!(cut.position, WalPosition::Local { offset, .. } if offset == valid));
    assert_eq!(job.resume_offsets(), &[at(5)]);
    assert_eq!(state.get(&"k4".to_string()).unwrap(), Some(4));
    job.close().unwrap();

    let (job, _) = open(dir.path()).unwrap();
    assert_eq!(
        job.recovery().wal_torn_tail,
        None,
        "a clean log reports none"
    );
    job.close().unwrap();
}

#[test]
fn damage_to_an_acknowledged_batch_fails_recovery_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path());
    let segment = newest_segment(dir.path());
    let (off, _) = *batches_in(&segment).last().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[off + 46] ^= 0x08;
    std::fs::write(&segment, &bytes).unwrap();
    let before = wal_files(dir.path());

    let err = open(dir.path()).err().expect("recovery must refuse");
    assert!(
        matches!(err, Error::Wal(millpond::wal::Error::Corrupt { .. })),
        "{err}"
    );
    assert!(wal_files(dir.path()) == before, "the WAL was changed");
}
