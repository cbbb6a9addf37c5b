//! Logs built record by record, for tests of the log's rules: framed batches of any writer
//! epoch and LSNs (what a zombie, a takeover or a resend leaves), held in memory or appended to
//! local segment files by the crate's own sink. Also used by the CLI's `wal inspect` tests.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::Path;

use millpond_wal::batch;
use millpond_wal::proto::{self, record::Body};
use millpond_wal::{
    Batch, Error, LocalSegmentSink, SegmentSettings, StoredBatch, WalPosition, WalSink, WalSource,
};
use prost::Message;

/// One record of a hand-built batch.
#[derive(Debug, Clone, Copy)]
pub enum R {
    /// A put of this value to key "k" of value state "s", in key group `value % 4`.
    Put(u8),
    /// A commit marker resuming topic "t", partition 0, at this offset.
    Commit(i64),
    /// A rollback marker.
    Rollback,
}

/// A framed batch of `records`, the first numbered `first_lsn`, written by a writer of `epoch`.
pub fn framed(first_lsn: u64, epoch: u64, records: &[R]) -> Vec<u8> {
    let mut payload = Vec::new();
    for r in records {
        let body = match *r {
            R::Put(v) => Body::Change(proto::StateChange {
                state: "s".into(),
                kind: proto::StateKind::Value as i32,
                key_group: u32::from(v % 4),
                key: b"k".to_vec(),
                op: Some(proto::state_change::Op::Put(proto::Put {
                    value: vec![v],
                    expires_at_ms: 0,
                })),
            }),
            R::Commit(o) => Body::Commit(proto::CommitMarker {
                offsets: vec![proto::SourceOffset {
                    topic: "t".into(),
                    partition: 0,
                    next_offset: o,
                }],
                committed_at_ms: 1_000 + o as u64,
            }),
            R::Rollback => Body::Rollback(proto::Rollback {
                last_committed_lsn: 0,
            }),
        };
        proto::Record { body: Some(body) }
            .encode_length_delimited(&mut payload)
            .unwrap();
    }
    let mut out = Vec::new();
    batch::encode(first_lsn, records.len() as u32, epoch, &payload, &mut out);
    out
}

/// Appends `batches` (framed) to the local WAL in `dir` with the crate's own segment sink, as
/// writers of their epochs would have; returns where each landed.
pub fn append_local(dir: &Path, batches: &[Vec<u8>]) -> Vec<WalPosition> {
    let mut sink = LocalSegmentSink::open(dir, SegmentSettings::default()).unwrap();
    batches
        .iter()
        .map(|bytes| {
            let first_lsn = batch::peek_first_lsn(bytes).unwrap();
            let Ok(batch::Decoded::Batch(h, _)) = batch::decode(bytes, String::new) else {
                panic!("not a framed batch")
            };
            sink.append(Batch {
                first_lsn,
                last_lsn: h.last_lsn,
                bytes,
            })
            .unwrap()
        })
        .collect()
}

/// A log held in memory: each entry a framed batch.
pub struct FakeLog(std::vec::IntoIter<Vec<u8>>, u64);

impl FakeLog {
    pub fn new(batches: Vec<Vec<u8>>) -> Self {
        FakeLog(batches.into_iter(), 0)
    }
}

impl WalSource for FakeLog {
    fn next_batch(&mut self) -> Result<Option<StoredBatch>, Error> {
        self.1 += 1;
        Ok(self.0.next().map(|bytes| StoredBatch {
            position: WalPosition::Local {
                segment: 0,
                offset: self.1,
            },
            bytes,
        }))
    }
}
