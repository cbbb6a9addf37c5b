//! Entries outside a store: composite keys, the encoded entries that snapshots hold, and
//! [`KeyChanges`], which applies logged changes to them exactly as replay into a store would.
//! The snapshot writer builds a snapshot from its parent and the WAL with these, without a
//! store and without touching the live one.

use crate::change::ChangeOp;
use crate::descriptor::StateSchema;
use crate::entry::{apply_op, decode, encode, is_empty_data, Data};
use crate::error::{Error, Result};
use crate::store::{drop_expired, replay_time, PREFIX};

/// Bytes before the encoded key in a composite key: key group (u16 BE), then state id (u16 BE).
pub const COMPOSITE_PREFIX: usize = PREFIX;

/// Appends the composite key of (`key_group`, `state_id`, `key`) to `out`: the key of an
/// entry in the cold tier and in snapshot data files. Big-endian, so that keys sort by key
/// group, then state, then key bytes.
pub fn composite_key(key_group: u16, state_id: u16, key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&key_group.to_be_bytes());
    out.extend_from_slice(&state_id.to_be_bytes());
    out.extend_from_slice(key);
}

/// Splits a composite key into key group, state id and encoded key; `None` if it is too short.
pub fn split_composite_key(ck: &[u8]) -> Option<(u16, u16, &[u8])> {
    if ck.len() < PREFIX {
        return None;
    }
    Some((
        u16::from_be_bytes([ck[0], ck[1]]),
        u16::from_be_bytes([ck[2], ck[3]]),
        &ck[PREFIX..],
    ))
}

/// A decoded entry, for tools that show state (`millpond snapshot dump`). Expiries are
/// milliseconds since the epoch, 0 for none.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryView {
    /// Value, reducing or aggregating state.
    Value {
        /// The encoded value.
        value: Vec<u8>,
        /// Its expiry.
        expires_at_ms: u64,
    },
    /// List state: elements with their expiries, in order.
    List(Vec<(Vec<u8>, u64)>),
    /// Map state: (user key, value, expiry), by user key.
    Map(Vec<(Vec<u8>, Vec<u8>, u64)>),
    /// A delete that hides an older version.
    Tombstone,
}

/// Decodes an entry of the cold tier or of a snapshot data file, checking its checksum.
pub fn decode_entry(bytes: &[u8]) -> Result<EntryView> {
    Ok(match decode(bytes, || "entry".to_owned())? {
        Data::Value {
            value,
            expires_at_ms,
        } => EntryView::Value {
            value: value.as_slice().to_vec(),
            expires_at_ms,
        },
        Data::List(elems) => EntryView::List(
            elems
                .into_iter()
                .map(|e| (e.value, e.expires_at_ms))
                .collect(),
        ),
        Data::Map(map) => EntryView::Map(
            map.into_iter()
                .map(|(k, e)| (k, e.value, e.expires_at_ms))
                .collect(),
        ),
        Data::Tombstone => EntryView::Tombstone,
    })
}

/// One change, owned, with the time replay applies it at (see `replay_time`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put(Vec<u8>, u64),
    Clear,
    ListAppend(Vec<Vec<u8>>, u64),
    ListReplace(Vec<Vec<u8>>, u64),
    MapPut(Vec<u8>, Vec<u8>, u64),
    MapRemove(Vec<u8>),
    Touch(u64),
    MapTouch(Vec<u8>, u64),
}

impl Op {
    fn from_change(op: &ChangeOp<'_>) -> Op {
        match *op {
            ChangeOp::Put {
                value,
                expires_at_ms,
            } => Op::Put(value.to_vec(), expires_at_ms),
            ChangeOp::Clear => Op::Clear,
            ChangeOp::ListAppend {
                values,
                expires_at_ms,
            } => Op::ListAppend(values.to_vec(), expires_at_ms),
            ChangeOp::ListReplace {
                values,
                expires_at_ms,
            } => Op::ListReplace(values.to_vec(), expires_at_ms),
            ChangeOp::MapPut {
                user_key,
                value,
                expires_at_ms,
            } => Op::MapPut(user_key.to_vec(), value.to_vec(), expires_at_ms),
            ChangeOp::MapRemove { user_key } => Op::MapRemove(user_key.to_vec()),
            ChangeOp::Touch { expires_at_ms } => Op::Touch(expires_at_ms),
            ChangeOp::MapTouch {
                user_key,
                expires_at_ms,
            } => Op::MapTouch(user_key.to_vec(), expires_at_ms),
        }
    }

    fn as_change(&self) -> ChangeOp<'_> {
        match self {
            Op::Put(value, e) => ChangeOp::Put {
                value,
                expires_at_ms: *e,
            },
            Op::Clear => ChangeOp::Clear,
            Op::ListAppend(values, e) => ChangeOp::ListAppend {
                values,
                expires_at_ms: *e,
            },
            Op::ListReplace(values, e) => ChangeOp::ListReplace {
                values,
                expires_at_ms: *e,
            },
            Op::MapPut(k, v, e) => ChangeOp::MapPut {
                user_key: k,
                value: v,
                expires_at_ms: *e,
            },
            Op::MapRemove(k) => ChangeOp::MapRemove { user_key: k },
            Op::Touch(e) => ChangeOp::Touch { expires_at_ms: *e },
            Op::MapTouch(k, e) => ChangeOp::MapTouch {
                user_key: k,
                expires_at_ms: *e,
            },
        }
    }

    /// Whether the result does not depend on the data before.
    fn replaces(&self) -> bool {
        matches!(self, Op::Put(..) | Op::Clear | Op::ListReplace(..))
    }

    fn mem_size(&self) -> usize {
        48 + match self {
            Op::Put(v, _) => v.len(),
            Op::ListAppend(vs, _) | Op::ListReplace(vs, _) => vs.iter().map(|v| v.len() + 24).sum(),
            Op::MapPut(k, v, _) => k.len() + v.len(),
            Op::MapRemove(k) | Op::MapTouch(k, _) => k.len(),
            Op::Clear | Op::Touch(_) => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Changes {
    /// The result is known without the older entry (a put, clear or list replace came first).
    Known(Option<Data>),
    /// Ops to apply, in order, to the older entry, each with its replay time.
    OnBase(Vec<(Op, Option<u64>)>),
}

/// The changes of one key of one state since a parent snapshot, gathered in log order.
/// [`KeyChanges::resolve`] applies them to the key's entry in the parent and gives the entry
/// that a store replaying the same changes would hold.
///
/// A change that does not depend on what was there (put, clear, list replace) is applied at
/// once, so that value-like state costs one entry whatever the number of updates; others wait
/// for the parent's entry, read in key order when the snapshot is written.
///
/// ```
/// use millpond_state::{ChangeOp, KeyChanges, StateKind, StateSchema};
/// let schema = StateSchema { name: "counts".into(), kind: StateKind::Value, ttl: None, id: 0 };
/// let mut changes = KeyChanges::default();
/// changes.push(&schema, &ChangeOp::Put { value: b"1", expires_at_ms: 0 }).unwrap();
/// changes.push(&schema, &ChangeOp::Put { value: b"2", expires_at_ms: 0 }).unwrap();
/// let entry = changes.resolve(None).unwrap().unwrap();
/// assert!(matches!(millpond_state::decode_entry(&entry).unwrap(),
///     millpond_state::EntryView::Value { value, .. } if value == b"2"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChanges {
    changes: Changes,
}

impl Default for KeyChanges {
    fn default() -> Self {
        KeyChanges {
            changes: Changes::OnBase(Vec::new()),
        }
    }
}

impl KeyChanges {
    /// Adds the next logged change of this key; `schema` is its state's. A change that does
    /// not fit the state's kind is `Error::Invalid`.
    pub fn push(&mut self, schema: &StateSchema, op: &ChangeOp<'_>) -> Result<()> {
        if !schema.kind.accepts(op) {
            return Err(Error::invalid(format!(
                "change {op:?} does not fit state '{}' of kind {}",
                schema.name, schema.kind
            )));
        }
        let at = replay_time(op, schema.ttl);
        let op = Op::from_change(op);
        match &mut self.changes {
            Changes::Known(data) => apply_at(data, &op, at),
            Changes::OnBase(_) if op.replaces() => {
                let mut data = None;
                apply_at(&mut data, &op, at);
                self.changes = Changes::Known(data);
            }
            Changes::OnBase(ops) => ops.push((op, at)),
        }
        Ok(())
    }

    /// Appends `newer`, gathered after these changes.
    pub fn then(&mut self, newer: KeyChanges) {
        match newer.changes {
            Changes::Known(data) => self.changes = Changes::Known(data),
            Changes::OnBase(ops) => match &mut self.changes {
                Changes::Known(data) => {
                    for (op, at) in &ops {
                        apply_at(data, op, *at);
                    }
                }
                Changes::OnBase(mine) => mine.extend(ops),
            },
        }
    }

    /// Whether the result needs the parent's entry.
    pub fn needs_base(&self) -> bool {
        matches!(&self.changes, Changes::OnBase(ops) if !ops.is_empty())
    }

    /// Approximate heap bytes held, for bounding a buffer of these.
    pub fn mem_size(&self) -> usize {
        match &self.changes {
            Changes::Known(Some(d)) => 64 + d.mem_size(),
            Changes::Known(None) => 64,
            Changes::OnBase(ops) => 64 + ops.iter().map(|(op, _)| op.mem_size()).sum::<usize>(),
        }
    }

    /// Applies the changes to `base`, the key's encoded entry in the parent snapshot (`None`
    /// if it had none), and returns the new encoded entry, or `None` if the key has no data.
    /// A damaged `base` is `Error::Corrupt`.
    pub fn resolve(&self, base: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        let data = match &self.changes {
            Changes::Known(data) => data.clone(),
            Changes::OnBase(ops) => {
                let mut data = match base {
                    Some(bytes) => match decode(bytes, || "parent snapshot entry".to_owned())? {
                        Data::Tombstone => None,
                        d => Some(d),
                    },
                    None => None,
                };
                for (op, at) in ops {
                    apply_at(&mut data, op, *at);
                }
                data
            }
        };
        Ok(data.filter(|d| !is_empty_data(d)).map(|d| {
            let mut out = Vec::with_capacity(d.encoded_size_hint() + 8);
            encode(&d, &mut out);
            out
        }))
    }

    /// Appends an encoding of these changes (for sorted runs spilled to disk while a
    /// snapshot is written; not a stable format).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.changes {
            Changes::Known(None) => out.push(0),
            Changes::Known(Some(d)) => {
                out.push(1);
                encode(d, out);
            }
            Changes::OnBase(ops) => {
                out.push(2);
                put_u32(ops.len(), out);
                for (op, at) in ops {
                    out.extend_from_slice(&at.map_or(u64::MAX, |t| t).to_le_bytes());
                    encode_op(op, out);
                }
            }
        }
    }

    /// Decodes what [`KeyChanges::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<KeyChanges> {
        let bad = || Error::Corrupt {
            what: "spilled key changes",
            location: "sort run".to_owned(),
        };
        let (&tag, rest) = bytes.split_first().ok_or_else(bad)?;
        let changes = match tag {
            0 if rest.is_empty() => Changes::Known(None),
            1 => Changes::Known(Some(decode(rest, || "sort run".to_owned())?)),
            2 => {
                let mut r = Cursor(rest);
                let n = r.u32().ok_or_else(bad)? as usize;
                let mut ops = Vec::with_capacity(n.min(rest.len() / 9));
                for _ in 0..n {
                    let at = r.u64().ok_or_else(bad)?;
                    let op = decode_op(&mut r).ok_or_else(bad)?;
                    ops.push((op, (at != u64::MAX).then_some(at)));
                }
                if !r.0.is_empty() {
                    return Err(bad());
                }
                Changes::OnBase(ops)
            }
            _ => return Err(bad()),
        };
        Ok(KeyChanges { changes })
    }
}

fn apply_at(data: &mut Option<Data>, op: &Op, at: Option<u64>) {
    if let Some(t) = at {
        drop_expired(data, t);
    }
    apply_op(data, &op.as_change());
    if data.as_ref().is_some_and(is_empty_data) {
        *data = None;
    }
}

fn put_u32(n: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    put_u32(b.len(), out);
    out.extend_from_slice(b);
}

fn encode_op(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::Put(v, e) => {
            out.push(0);
            put_bytes(v, out);
            out.extend_from_slice(&e.to_le_bytes());
        }
        Op::Clear => out.push(1),
        Op::ListAppend(vs, e) | Op::ListReplace(vs, e) => {
            out.push(if matches!(op, Op::ListAppend(..)) {
                2
            } else {
                3
            });
            put_u32(vs.len(), out);
            for v in vs {
                put_bytes(v, out);
            }
            out.extend_from_slice(&e.to_le_bytes());
        }
        Op::MapPut(k, v, e) => {
            out.push(4);
            put_bytes(k, out);
            put_bytes(v, out);
            out.extend_from_slice(&e.to_le_bytes());
        }
        Op::MapRemove(k) => {
            out.push(5);
            put_bytes(k, out);
        }
        Op::Touch(e) => {
            out.push(6);
            out.extend_from_slice(&e.to_le_bytes());
        }
        Op::MapTouch(k, e) => {
            out.push(7);
            put_bytes(k, out);
            out.extend_from_slice(&e.to_le_bytes());
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
}

fn decode_op(r: &mut Cursor<'_>) -> Option<Op> {
    Some(match r.u8()? {
        0 => {
            let v = r.bytes()?;
            Op::Put(v, r.u64()?)
        }
        1 => Op::Clear,
        tag @ (2 | 3) => {
            let n = r.u32()? as usize;
            let mut vs = Vec::with_capacity(n.min(r.0.len() / 4));
            for _ in 0..n {
                vs.push(r.bytes()?);
            }
            let e = r.u64()?;
            if tag == 2 {
                Op::ListAppend(vs, e)
            } else {
                Op::ListReplace(vs, e)
            }
        }
        4 => {
            let k = r.bytes()?;
            let v = r.bytes()?;
            Op::MapPut(k, v, r.u64()?)
        }
        5 => Op::MapRemove(r.bytes()?),
        6 => Op::Touch(r.u64()?),
        7 => {
            let k = r.bytes()?;
            Op::MapTouch(k, r.u64()?)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::StateKind;
    use crate::entry::Elem;

    fn schema(kind: StateKind) -> StateSchema {
        StateSchema {
            name: "s".into(),
            kind,
            ttl: None,
            id: 3,
        }
    }

    #[test]
    fn composite_keys_split_back() {
        let mut ck = Vec::new();
        composite_key(7, 3, b"key", &mut ck);
        assert_eq!(split_composite_key(&ck), Some((7, 3, &b"key"[..])));
        assert_eq!(split_composite_key(&ck[..3]), None);
    }

    #[test]
    fn list_appends_wait_for_the_base_and_encode_round_trip() {
        let s = schema(StateKind::List);
        let mut c = KeyChanges::default();
        let one = vec![b"c".to_vec()];
        c.push(
            &s,
            &ChangeOp::ListAppend {
                values: &one,
                expires_at_ms: 0,
            },
        )
        .unwrap();
        assert!(c.needs_base());
        let mut buf = Vec::new();
        c.encode(&mut buf);
        let back = KeyChanges::decode(&buf).unwrap();
        assert_eq!(back, c);
        let mut base = Vec::new();
        encode(
            &Data::List(vec![Elem {
                value: b"a".to_vec(),
                expires_at_ms: 0,
            }]),
            &mut base,
        );
        let out = c.resolve(Some(&base)).unwrap().unwrap();
        assert_eq!(
            decode_entry(&out).unwrap(),
            EntryView::List(vec![(b"a".to_vec(), 0), (b"c".to_vec(), 0)])
        );
        for cut in 0..buf.len() {
            assert!(KeyChanges::decode(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn a_clear_needs_no_base_and_then_merges() {
        let s = schema(StateKind::Map);
        let mut older = KeyChanges::default();
        older
            .push(
                &s,
                &ChangeOp::MapPut {
                    user_key: b"k",
                    value: b"v",
                    expires_at_ms: 0,
                },
            )
            .unwrap();
        let mut newer = KeyChanges::default();
        newer.push(&s, &ChangeOp::Clear).unwrap();
        older.then(newer);
        assert!(!older.needs_base());
        assert_eq!(older.resolve(None).unwrap(), None);
        assert!(c_rejects_wrong_kind());
    }

    #[test]
    fn known_results_encode_round_trip() {
        let mut c = KeyChanges::default();
        c.push(
            &schema(StateKind::Value),
            &ChangeOp::Put {
                value: b"v",
                expires_at_ms: 9,
            },
        )
        .unwrap();
        // Appended after other bytes, as runs do.
        let mut buf = vec![1, 2, 3];
        c.encode(&mut buf);
        assert_eq!(KeyChanges::decode(&buf[3..]).unwrap(), c);
    }

    fn c_rejects_wrong_kind() -> bool {
        KeyChanges::default()
            .push(
                &schema(StateKind::Value),
                &ChangeOp::MapRemove { user_key: b"k" },
            )
            .is_err()
    }
}
