//! The WAL's records are bytes on disk (and in Pulsar): moving `StateKind` and
//! `SourceOffset` into the shared `common.proto` must not change them. The bytes below were
//! written by the records' encoder before the move (commit 47b61ca), hard-coded.

use millpond_state::StateKind;
use millpond_wal::proto;
use prost::Message;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_commit_marker_is_byte_for_byte_what_it_was() {
    let record = proto::Record {
        body: Some(proto::record::Body::Commit(proto::CommitMarker {
            offsets: vec![proto::SourceOffset::from(&millpond_wal::SourceOffset {
                topic: "t".into(),
                partition: 1,
                next_offset: 42,
            })],
            committed_at_ms: 7,
        })),
    };
    let golden = hex("120b0a070a01741001182a1007");
    assert_eq!(record.encode_to_vec(), golden);
    let back = proto::Record::decode(&golden[..]).unwrap();
    let Some(proto::record::Body::Commit(c)) = back.body else {
        panic!("a commit marker")
    };
    assert_eq!(
        millpond_wal::SourceOffset::from(c.offsets[0].clone()),
        millpond_wal::SourceOffset {
            topic: "t".into(),
            partition: 1,
            next_offset: 42
        }
    );
}

#[test]
fn a_state_change_is_byte_for_byte_what_it_was() {
    let record = proto::Record {
        body: Some(proto::record::Body::Change(proto::StateChange {
            state: "s".into(),
            kind: proto::StateKind::from(StateKind::Map) as i32,
            key_group: 3,
            key: b"k".to_vec(),
            op: Some(proto::state_change::Op::Clear(proto::Clear {})),
        })),
    };
    let golden = hex("0a0c0a01731003180322016b5a00");
    assert_eq!(record.encode_to_vec(), golden);
    let Some(proto::record::Body::Change(c)) = proto::Record::decode(&golden[..]).unwrap().body
    else {
        panic!("a change")
    };
    assert_eq!(proto::StateKind::kind_of(c.kind), Some(StateKind::Map));
}

#[test]
fn every_state_kind_keeps_its_enum_value() {
    for (kind, value) in [
        (StateKind::Value, 1),
        (StateKind::List, 2),
        (StateKind::Map, 3),
        (StateKind::Reducing, 4),
        (StateKind::Aggregating, 5),
    ] {
        assert_eq!(proto::StateKind::from(kind) as i32, value);
        assert_eq!(proto::StateKind::kind_of(value), Some(kind));
    }
    assert_eq!(proto::StateKind::kind_of(0), None);
    assert_eq!(proto::StateKind::kind_of(6), None);
}
