//! WAL records: the protobuf schema in this crate's `proto/millpond/wal/v1/wal.proto`, and a
//! fast encoder for state changes that writes the same bytes prost would, without building
//! owned messages.

use millpond_state::{Change, ChangeOp, StateKind};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

/// Types generated from `proto/millpond/wal/v1/wal.proto` and the types it shares with the
/// snapshot manifest, from `proto/millpond/common/v1/common.proto`.
pub mod proto {
    // The generated files name each other by module path (`super::super::common::v1`), so
    // they sit in their packages' module tree; `proto` re-exports both packages' types.
    #[allow(missing_docs, clippy::all)]
    mod generated {
        pub mod common {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/millpond.common.v1.rs"));
            }
        }
        pub mod wal {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/millpond.wal.v1.rs"));
            }
        }
    }
    pub use generated::common::v1::*;
    pub use generated::wal::v1::*;

    use millpond_state::StateKind as Kind;

    /// The one conversion between the state kinds and their protobuf enum (the WAL's records
    /// and the snapshot manifest both use it).
    impl From<Kind> for StateKind {
        fn from(kind: Kind) -> Self {
            match kind {
                Kind::Value => StateKind::Value,
                Kind::List => StateKind::List,
                Kind::Map => StateKind::Map,
                Kind::Reducing => StateKind::Reducing,
                Kind::Aggregating => StateKind::Aggregating,
            }
        }
    }

    impl StateKind {
        /// The state kind this value names; `None` for `Unspecified` (a field never set).
        pub fn to_kind(self) -> Option<Kind> {
            Some(match self {
                StateKind::Value => Kind::Value,
                StateKind::List => Kind::List,
                StateKind::Map => Kind::Map,
                StateKind::Reducing => Kind::Reducing,
                StateKind::Aggregating => Kind::Aggregating,
                StateKind::Unspecified => return None,
            })
        }

        /// The state kind of an enum field's raw value; `None` if unset or unknown.
        pub fn kind_of(value: i32) -> Option<Kind> {
            StateKind::try_from(value).ok()?.to_kind()
        }
    }

    impl From<&super::SourceOffset> for SourceOffset {
        fn from(o: &super::SourceOffset) -> Self {
            SourceOffset {
                topic: o.topic.clone(),
                partition: o.partition,
                next_offset: o.next_offset,
            }
        }
    }

    impl From<SourceOffset> for super::SourceOffset {
        fn from(o: SourceOffset) -> Self {
            super::SourceOffset {
                topic: o.topic,
                partition: o.partition,
                next_offset: o.next_offset,
            }
        }
    }
}

/// A source position that a commit marker records: consume `topic`/`partition` from
/// `next_offset` on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceOffset {
    /// The Kafka topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the next record to consume.
    pub next_offset: i64,
}

// ---- encoding -------------------------------------------------------------------------------

#[inline]
fn bytes_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(b.len() as u64) + b.len()
    }
}

#[inline]
fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

#[inline]
fn put_bytes(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
    if !b.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(b.len() as u64, buf);
        buf.extend_from_slice(b);
    }
}

#[inline]
fn put_varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

#[inline]
fn message_len(tag: u32, body: usize) -> usize {
    key_len(tag) + encoded_len_varint(body as u64) + body
}

#[inline]
fn put_message_header(tag: u32, body: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body as u64, buf);
}

/// (field number in `StateChange`, body length) of the op's message.
fn op_len(op: &ChangeOp<'_>) -> (u32, usize) {
    match *op {
        ChangeOp::Put {
            value,
            expires_at_ms,
        } => (10, bytes_len(1, value) + varint_len(2, expires_at_ms)),
        ChangeOp::Clear => (11, 0),
        ChangeOp::ListAppend {
            values,
            expires_at_ms,
        } => (12, list_len(values) + varint_len(2, expires_at_ms)),
        ChangeOp::ListReplace {
            values,
            expires_at_ms,
        } => (13, list_len(values) + varint_len(2, expires_at_ms)),
        ChangeOp::MapPut {
            user_key,
            value,
            expires_at_ms,
        } => (
            14,
            bytes_len(1, user_key) + bytes_len(2, value) + varint_len(3, expires_at_ms),
        ),
        ChangeOp::MapRemove { user_key } => (15, bytes_len(1, user_key)),
        ChangeOp::Touch { expires_at_ms } => (16, varint_len(1, expires_at_ms)),
        ChangeOp::MapTouch {
            user_key,
            expires_at_ms,
        } => (17, bytes_len(1, user_key) + varint_len(2, expires_at_ms)),
        // A future op this encoder does not know: refuse loudly in tests, never write garbage.
        _ => (0, 0),
    }
}

fn list_len(values: &[Vec<u8>]) -> usize {
    // Repeated bytes: every element is written, empty ones too.
    values
        .iter()
        .map(|v| key_len(1) + encoded_len_varint(v.len() as u64) + v.len())
        .sum()
}

fn put_op(op: &ChangeOp<'_>, buf: &mut Vec<u8>) {
    match *op {
        ChangeOp::Put {
            value,
            expires_at_ms,
        } => {
            put_bytes(1, value, buf);
            put_varint(2, expires_at_ms, buf);
        }
        ChangeOp::Clear => {}
        ChangeOp::ListAppend {
            values,
            expires_at_ms,
        }
        | ChangeOp::ListReplace {
            values,
            expires_at_ms,
        } => {
            for v in values {
                encode_key(1, WireType::LengthDelimited, buf);
                encode_varint(v.len() as u64, buf);
                buf.extend_from_slice(v);
            }
            put_varint(2, expires_at_ms, buf);
        }
        ChangeOp::MapPut {
            user_key,
            value,
            expires_at_ms,
        } => {
            put_bytes(1, user_key, buf);
            put_bytes(2, value, buf);
            put_varint(3, expires_at_ms, buf);
        }
        ChangeOp::MapRemove { user_key } => put_bytes(1, user_key, buf),
        ChangeOp::Touch { expires_at_ms } => put_varint(1, expires_at_ms, buf),
        ChangeOp::MapTouch {
            user_key,
            expires_at_ms,
        } => {
            put_bytes(1, user_key, buf);
            put_varint(2, expires_at_ms, buf);
        }
        _ => {}
    }
}

/// Appends `change` as a length-delimited `Record` (varint length, then the record), the way
/// records sit in a batch. Returns false (writing nothing) for an op this version cannot encode.
pub(crate) fn encode_change(change: &Change<'_>, buf: &mut Vec<u8>) -> bool {
    let (op_tag, op_body) = op_len(&change.op);
    if op_tag == 0 {
        return false;
    }
    let kind = proto::StateKind::from(change.kind) as i32 as u64;
    let change_body = bytes_len(1, change.state.as_bytes())
        + varint_len(2, kind)
        + varint_len(3, change.key_group as u64)
        + bytes_len(4, change.key)
        + message_len(op_tag, op_body);
    let record_body = message_len(1, change_body);
    encode_varint(record_body as u64, buf);
    put_message_header(1, change_body, buf);
    put_bytes(1, change.state.as_bytes(), buf);
    put_varint(2, kind, buf);
    put_varint(3, change.key_group as u64, buf);
    put_bytes(4, change.key, buf);
    put_message_header(op_tag, op_body, buf);
    put_op(&change.op, buf);
    true
}

/// Appends a length-delimited `Record` holding `record`.
pub(crate) fn encode_record(record: &proto::Record, buf: &mut Vec<u8>) {
    use prost::Message;
    record.encode_length_delimited(buf).expect("a Vec grows");
}

/// A decoded state change, owned; [`OwnedChange::as_change`] borrows it as the state crate's
/// `Change`, to replay with `Store::apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedChange {
    /// The state's name.
    pub state: String,
    /// The state's kind.
    pub kind: StateKind,
    /// The key's key group.
    pub key_group: u16,
    /// The encoded key.
    pub key: Vec<u8>,
    op: proto::state_change::Op,
}

impl OwnedChange {
    pub(crate) fn from_proto(c: proto::StateChange) -> Option<Self> {
        Some(OwnedChange {
            kind: proto::StateKind::kind_of(c.kind)?,
            key_group: u16::try_from(c.key_group).ok()?,
            state: c.state,
            key: c.key,
            op: c.op?,
        })
    }

    /// The operation as the record holds it (what `millpond wal inspect` shows).
    pub fn op(&self) -> &proto::state_change::Op {
        &self.op
    }

    /// The change, borrowed, as `millpond_state` takes it.
    pub fn as_change(&self) -> Change<'_> {
        use proto::state_change::Op;
        let op = match &self.op {
            Op::Put(p) => ChangeOp::Put {
                value: &p.value,
                expires_at_ms: p.expires_at_ms,
            },
            Op::Clear(_) => ChangeOp::Clear,
            Op::ListAppend(l) => ChangeOp::ListAppend {
                values: &l.values,
                expires_at_ms: l.expires_at_ms,
            },
            Op::ListReplace(l) => ChangeOp::ListReplace {
                values: &l.values,
                expires_at_ms: l.expires_at_ms,
            },
            Op::MapPut(m) => ChangeOp::MapPut {
                user_key: &m.user_key,
                value: &m.value,
                expires_at_ms: m.expires_at_ms,
            },
            Op::MapRemove(m) => ChangeOp::MapRemove {
                user_key: &m.user_key,
            },
            Op::Touch(t) => ChangeOp::Touch {
                expires_at_ms: t.expires_at_ms,
            },
            Op::MapTouch(t) => ChangeOp::MapTouch {
                user_key: &t.user_key,
                expires_at_ms: t.expires_at_ms,
            },
        };
        Change {
            state: &self.state,
            kind: self.kind,
            key_group: self.key_group,
            key: &self.key,
            op,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn via_prost(change: &Change<'_>) -> Vec<u8> {
        use proto::state_change::Op;
        let op = match change.op {
            ChangeOp::Put {
                value,
                expires_at_ms,
            } => Op::Put(proto::Put {
                value: value.to_vec(),
                expires_at_ms,
            }),
            ChangeOp::Clear => Op::Clear(proto::Clear {}),
            ChangeOp::ListAppend {
                values,
                expires_at_ms,
            } => Op::ListAppend(proto::ListValues {
                values: values.to_vec(),
                expires_at_ms,
            }),
            ChangeOp::ListReplace {
                values,
                expires_at_ms,
            } => Op::ListReplace(proto::ListValues {
                values: values.to_vec(),
                expires_at_ms,
            }),
            ChangeOp::MapPut {
                user_key,
                value,
                expires_at_ms,
            } => Op::MapPut(proto::MapPut {
                user_key: user_key.to_vec(),
                value: value.to_vec(),
                expires_at_ms,
            }),
            ChangeOp::MapRemove { user_key } => Op::MapRemove(proto::MapRemove {
                user_key: user_key.to_vec(),
            }),
            ChangeOp::Touch { expires_at_ms } => Op::Touch(proto::Touch { expires_at_ms }),
            ChangeOp::MapTouch {
                user_key,
                expires_at_ms,
            } => Op::MapTouch(proto::MapTouch {
                user_key: user_key.to_vec(),
                expires_at_ms,
            }),
            _ => unreachable!(),
        };
        let record = proto::Record {
            body: Some(proto::record::Body::Change(proto::StateChange {
                state: change.state.to_owned(),
                kind: proto::StateKind::from(change.kind) as i32,
                key_group: change.key_group as u32,
                key: change.key.to_vec(),
                op: Some(op),
            })),
        };
        record.encode_length_delimited_to_vec()
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = (u8, Vec<u8>, Vec<u8>, Vec<Vec<u8>>, u64)>
    {
        use proptest::prelude::*;
        (
            0u8..8,
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..5),
            prop_oneof![Just(0u64), any::<u64>()],
        )
    }

    proptest::proptest! {
        /// The hand-written encoder writes exactly what prost writes for the schema, and the
        /// generated decoder reads it back to the same change.
        #[test]
        fn fast_encoder_matches_prost(
            (which, a, b, list, exp) in ops(),
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..50),
            kg in 0u16..32768,
            kind in 0usize..5,
        ) {
            let op = match which {
                0 => ChangeOp::Put { value: &b, expires_at_ms: exp },
                1 => ChangeOp::Clear,
                2 => ChangeOp::ListAppend { values: &list, expires_at_ms: exp },
                3 => ChangeOp::ListReplace { values: &list, expires_at_ms: exp },
                4 => ChangeOp::MapPut { user_key: &a, value: &b, expires_at_ms: exp },
                5 => ChangeOp::MapRemove { user_key: &a },
                6 => ChangeOp::Touch { expires_at_ms: exp },
                _ => ChangeOp::MapTouch { user_key: &a, expires_at_ms: exp },
            };
            let kinds = [StateKind::Value, StateKind::List, StateKind::Map, StateKind::Reducing, StateKind::Aggregating];
            let change = Change { state: "some-state", kind: kinds[kind], key_group: kg, key: &key, op };
            let mut fast = Vec::new();
            proptest::prop_assert!(encode_change(&change, &mut fast));
            proptest::prop_assert_eq!(&fast, &via_prost(&change));
            let decoded = proto::Record::decode_length_delimited(&fast[..]).unwrap();
            let Some(proto::record::Body::Change(c)) = decoded.body else { panic!("not a change") };
            let owned = OwnedChange::from_proto(c).unwrap();
            proptest::prop_assert_eq!(owned.as_change(), change);
        }
    }
}
