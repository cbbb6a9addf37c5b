//! The merge rules: how a change applies to an entry ([`apply`], [`apply_at`]), and
//! [`KeyChanges`], which gathers the changes of one key and applies them to an older entry
//! exactly as replay into a store would. The snapshot writer builds a snapshot from its
//! parent and the WAL with these, without a store.

use std::collections::BTreeMap;

use crate::entry::{Elem, Entry, ValueBytes};
use crate::error::{FormatError, Result};
use crate::op::{ChangeOp, StateKind};
use crate::ttl::{drop_expired, replay_time};

/// Applies `op` to an entry (`None`: absent), with no TTL filtering (see [`apply_at`]).
///
/// The caller has checked that the op fits the state's kind ([`StateKind::accepts`]); an op
/// of another kind replaces what is there or does nothing, so that applying is total and
/// never fails. Every mutation, live or replayed, goes through here, so that the state a WAL
/// replay rebuilds is the state that was live.
pub fn apply(slot: &mut Option<Entry>, op: &ChangeOp<'_>) {
    match *op {
        ChangeOp::Put {
            value,
            expires_at_ms,
        } => match slot {
            // Reuse the allocation: read-modify-write of a value is the hottest path.
            Some(Entry::Value {
                value: v,
                expires_at_ms: e,
            }) => {
                v.set(value);
                *e = expires_at_ms;
            }
            _ => {
                *slot = Some(Entry::Value {
                    value: ValueBytes::from(value),
                    expires_at_ms,
                })
            }
        },
        ChangeOp::Clear => *slot = None,
        ChangeOp::ListAppend {
            values,
            expires_at_ms,
        } => {
            if !matches!(slot, Some(Entry::List(_))) {
                *slot = Some(Entry::List(Vec::with_capacity(values.len())));
            }
            if let Some(Entry::List(elems)) = slot {
                elems.extend(values.iter().map(|v| Elem {
                    value: v.clone(),
                    expires_at_ms,
                }));
                if elems.is_empty() {
                    *slot = None;
                }
            }
        }
        ChangeOp::ListReplace {
            values,
            expires_at_ms,
        } => {
            *slot = if values.is_empty() {
                None
            } else {
                Some(Entry::List(
                    values
                        .iter()
                        .map(|v| Elem {
                            value: v.clone(),
                            expires_at_ms,
                        })
                        .collect(),
                ))
            };
        }
        ChangeOp::MapPut {
            user_key,
            value,
            expires_at_ms,
        } => {
            if !matches!(slot, Some(Entry::Map(_))) {
                *slot = Some(Entry::Map(BTreeMap::new()));
            }
            if let Some(Entry::Map(map)) = slot {
                match map.get_mut(user_key) {
                    Some(e) => {
                        e.value.clear();
                        e.value.extend_from_slice(value);
                        e.expires_at_ms = expires_at_ms;
                    }
                    None => {
                        map.insert(
                            user_key.to_vec(),
                            Elem {
                                value: value.to_vec(),
                                expires_at_ms,
                            },
                        );
                    }
                }
            }
        }
        ChangeOp::MapRemove { user_key } => {
            if let Some(Entry::Map(map)) = slot {
                map.remove(user_key);
                if map.is_empty() {
                    *slot = None;
                }
            }
        }
        ChangeOp::Touch { expires_at_ms } => match slot {
            Some(Entry::Value {
                expires_at_ms: e, ..
            }) => *e = expires_at_ms,
            Some(Entry::List(elems)) => elems
                .iter_mut()
                .for_each(|e| e.expires_at_ms = expires_at_ms),
            Some(Entry::Map(map)) => map
                .values_mut()
                .for_each(|e| e.expires_at_ms = expires_at_ms),
            _ => {}
        },
        ChangeOp::MapTouch {
            user_key,
            expires_at_ms,
        } => {
            if let Some(Entry::Map(map)) = slot {
                if let Some(e) = map.get_mut(user_key) {
                    e.expires_at_ms = expires_at_ms;
                }
            }
        }
    }
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
    Known(Option<Entry>),
    /// Ops to apply, in order, to the older entry, each with its replay time and the LSN of
    /// the change it came from (0: not known).
    OnBase(Vec<(Op, Option<u64>, u64)>),
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
/// use millpond_format::{ChangeOp, EntryView, KeyChanges, StateKind};
/// let mut changes = KeyChanges::default();
/// changes.push(StateKind::Value, None, &ChangeOp::Put { value: b"1", expires_at_ms: 0 }).unwrap();
/// changes.push(StateKind::Value, None, &ChangeOp::Put { value: b"2", expires_at_ms: 0 }).unwrap();
/// let entry = changes.resolve(None).unwrap().unwrap();
/// assert!(matches!(EntryView::decode(&entry).unwrap(),
///     EntryView::Value { value, .. } if value == b"2"));
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
    /// Adds the next logged change of this key, of a state of `kind` whose TTL is `ttl_ms`
    /// (`None`: no TTL). A change that does not fit `kind` is [`FormatError::Invalid`].
    pub fn push(&mut self, kind: StateKind, ttl_ms: Option<u64>, op: &ChangeOp<'_>) -> Result<()> {
        self.push_logged(kind, ttl_ms, op, 0)
    }

    /// [`push`](Self::push) of the change logged at `lsn`: an operand kept for the layer
    /// below carries it ([`encode`](Self::encode)), so that a reader can tell which layers
    /// already hold it. LSNs must not decrease.
    pub fn push_logged(
        &mut self,
        kind: StateKind,
        ttl_ms: Option<u64>,
        op: &ChangeOp<'_>,
        lsn: u64,
    ) -> Result<()> {
        if !kind.accepts(op) {
            return Err(FormatError::Invalid {
                reason: format!("change {op:?} does not fit a state of kind {kind}"),
            });
        }
        let at = replay_time(op, ttl_ms);
        let op = Op::from_change(op);
        match &mut self.changes {
            Changes::Known(entry) => apply_at(entry, &op.as_change(), at),
            Changes::OnBase(_) if op.replaces() => {
                let mut entry = None;
                apply_at(&mut entry, &op.as_change(), at);
                self.changes = Changes::Known(entry);
            }
            Changes::OnBase(ops) => ops.push((op, at, lsn)),
        }
        Ok(())
    }

    /// Appends `newer`, gathered after these changes.
    pub fn then(&mut self, newer: KeyChanges) {
        match newer.changes {
            Changes::Known(entry) => self.changes = Changes::Known(entry),
            Changes::OnBase(ops) => match &mut self.changes {
                Changes::Known(entry) => {
                    for (op, at, _) in &ops {
                        apply_at(entry, &op.as_change(), *at);
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
            Changes::Known(Some(e)) => 64 + e.mem_size(),
            Changes::Known(None) => 64,
            Changes::OnBase(ops) => 64 + ops.iter().map(|(op, ..)| op.mem_size()).sum::<usize>(),
        }
    }

    /// Applies the changes to `base`, the key's encoded entry in the parent snapshot (`None`
    /// if it had none), and returns the new encoded entry, or `None` if the key has no data.
    /// A damaged `base` is [`FormatError::Corrupt`].
    pub fn resolve(&self, base: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        let below = match base {
            Some(bytes) if matches!(self.changes, Changes::OnBase(_)) => {
                Some(Entry::decode(bytes, || "parent snapshot entry".to_owned())?)
            }
            _ => None,
        };
        Ok(self.fold_over(below).map(|e| {
            let mut out = Vec::with_capacity(e.encoded_size_hint() + 8);
            e.encode(&mut out);
            out
        }))
    }

    /// Applies the changes to `below`, the key's decoded entry in the layer below (`None` or
    /// a tombstone: none), and returns the entry that results, `None` if the key has no data.
    pub fn fold_over(&self, below: Option<Entry>) -> Option<Entry> {
        let entry = match &self.changes {
            Changes::Known(entry) => entry.clone(),
            Changes::OnBase(ops) => {
                let mut entry = below.filter(|e| !matches!(e, Entry::Tombstone));
                for (op, at, _) in ops {
                    apply_at(&mut entry, &op.as_change(), *at);
                }
                entry
            }
        };
        entry.filter(|e| !e.is_empty())
    }

    /// The LSN of the newest operand held (0: none, a full result, or not numbered).
    pub fn last_lsn(&self) -> u64 {
        match &self.changes {
            Changes::OnBase(ops) => ops.last().map_or(0, |(_, _, lsn)| *lsn),
            Changes::Known(_) => 0,
        }
    }

    /// Drops the operands with an LSN at or below `lsn` (a layer below holds them). A full
    /// result is left as it is.
    pub fn drop_through(&mut self, lsn: u64) {
        if let Changes::OnBase(ops) = &mut self.changes {
            ops.retain(|(_, _, l)| *l > lsn);
        }
    }

    /// [`fold_over`](Self::fold_over) a layer that already holds every change up to LSN
    /// `below_upto`: operands with an LSN at or below it are skipped, not applied twice. This
    /// is how a store folds an operand chain it keeps (docs/state.md, "Blind appends and
    /// puts") over a cold-tier entry or a snapshot that may already hold part of it.
    ///
    /// ```
    /// use millpond_format::{ChangeOp, Entry, KeyChanges, StateKind};
    /// let mut chain = KeyChanges::default();
    /// for (lsn, v) in [(5, b"a"), (9, b"b")] {
    ///     let values = [v.to_vec()];
    ///     let op = ChangeOp::ListAppend { values: &values, expires_at_ms: 0 };
    ///     chain.push_logged(StateKind::List, None, &op, lsn).unwrap();
    /// }
    /// // The layer below already holds the append at LSN 5: only the one at 9 applies.
    /// let mut below = None;
    /// millpond_format::fold::apply(&mut below, &ChangeOp::ListAppend {
    ///     values: &[b"a".to_vec()],
    ///     expires_at_ms: 0,
    /// });
    /// let Some(Entry::List(list)) = chain.fold_over_from(below, 5) else { panic!() };
    /// assert_eq!(list.len(), 2);
    /// ```
    pub fn fold_over_from(&self, below: Option<Entry>, below_upto: u64) -> Option<Entry> {
        match &self.changes {
            Changes::OnBase(ops) if below_upto > 0 => {
                let mut entry = below.filter(|e| !matches!(e, Entry::Tombstone));
                for (op, at, lsn) in ops {
                    if *lsn > below_upto {
                        apply_at(&mut entry, &op.as_change(), *at);
                    }
                }
                entry.filter(|e| !e.is_empty())
            }
            _ => self.fold_over(below),
        }
    }

    /// Drops from a full result what has expired at `horizon_ms`: an expired value, or
    /// expired list elements and map values; a result left with nothing becomes "no data",
    /// which still hides the layers below (a tombstone). Operands waiting for the layer below
    /// are left as they are. Returns whether anything was dropped. Compaction calls it with a
    /// horizon no later change can see past (docs/snapshot.md, "Expired data").
    ///
    /// ```
    /// use millpond_format::{ChangeOp, KeyChanges, StateKind};
    /// let mut c = KeyChanges::default();
    /// c.push(StateKind::Value, None, &ChangeOp::Put { value: b"v", expires_at_ms: 100 }).unwrap();
    /// assert!(!c.drop_expired_at(99));
    /// assert!(c.drop_expired_at(100));
    /// assert!(c.is_known() && c.fold_over(None).is_none());
    /// ```
    pub fn drop_expired_at(&mut self, horizon_ms: u64) -> bool {
        match &mut self.changes {
            Changes::Known(entry) => crate::ttl::drop_expired(entry, horizon_ms),
            Changes::OnBase(_) => false,
        }
    }

    /// Whether the changes are a full result (an entry or, `None`, no data), not operands
    /// waiting for the layer below.
    pub fn is_known(&self) -> bool {
        matches!(self.changes, Changes::Known(_))
    }

    /// Appends these changes as one entry of a run (docs/snapshot.md, "Entries"): a full
    /// result as tags 1–3, no data as a tombstone (tag 4), operands waiting for the layer
    /// below as an operand chain (tag 5). What the writer's sort runs and a snapshot's delta
    /// runs hold.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.changes {
            Changes::Known(None) => Entry::Tombstone.encode(out),
            Changes::Known(Some(e)) => e.encode(out),
            Changes::OnBase(ops) => {
                let start = out.len();
                out.push(TAG_OPERANDS);
                put_u32(ops.len(), out);
                for (op, at, lsn) in ops {
                    encode_operand(op, at.unwrap_or(0), *lsn, out);
                }
                let crc = crc32c::crc32c(&out[start..]);
                out.extend_from_slice(&crc.to_le_bytes());
            }
        }
    }

    /// Decodes what [`KeyChanges::encode`] wrote: any entry (tags 1–5), checked as
    /// [`Entry::decode`] checks it; an operand chain must hold at least one operand, each of
    /// a kind that waits for the layer below, with LSNs that do not decrease.
    pub fn decode(bytes: &[u8]) -> Result<KeyChanges> {
        if bytes.first() != Some(&TAG_OPERANDS) {
            let changes = match Entry::decode(bytes, || "run entry".to_owned())? {
                Entry::Tombstone => Changes::Known(None),
                e => Changes::Known(Some(e)),
            };
            return Ok(KeyChanges { changes });
        }
        let bad = || FormatError::corrupt("operand chain", "run entry");
        if bytes.len() < 9 {
            return Err(bad());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(bad());
        }
        let mut r = Cursor(&body[1..]);
        let n = r.u32().ok_or_else(bad)? as usize;
        // Each operand takes at least 21 bytes: never trust a count for an allocation.
        if n == 0 || n > r.0.len() / MIN_OPERAND_BYTES {
            return Err(bad());
        }
        let mut ops = Vec::with_capacity(n);
        let mut last_lsn = 0;
        for _ in 0..n {
            let (op, made_at, lsn) = decode_operand(&mut r).ok_or_else(bad)?;
            if lsn < last_lsn {
                return Err(bad());
            }
            last_lsn = lsn;
            ops.push((op, (made_at != 0).then_some(made_at), lsn));
        }
        if !r.0.is_empty() {
            return Err(bad());
        }
        Ok(KeyChanges {
            changes: Changes::OnBase(ops),
        })
    }
}

/// Tag of an operand chain (docs/snapshot.md, "Entries"); tags 1–4 are [`Entry`]'s.
pub const TAG_OPERANDS: u8 = 5;
/// op:u8 lsn:u64 made_at_ms:u64 and the smallest body (a touch: u64; a map remove: u32).
const MIN_OPERAND_BYTES: usize = 21;

/// Applies `op` as replay does: to the entry as it was at `at` (what had expired then
/// dropped first; `None`: no TTL filtering, see [`replay_time`]), leaving `None` rather than
/// an empty list or map.
pub fn apply_at(entry: &mut Option<Entry>, op: &ChangeOp<'_>, at: Option<u64>) {
    if let Some(t) = at {
        drop_expired(entry, t);
    }
    apply(entry, op);
    if entry.as_ref().is_some_and(Entry::is_empty) {
        *entry = None;
    }
}

fn put_u32(n: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    put_u32(b.len(), out);
    out.extend_from_slice(b);
}

/// One operand of a chain: `op:u8 lsn:u64 made_at_ms:u64 body` (`made_at_ms` 0: no TTL
/// filtering). Only operands reach here: a barrier makes the changes a full result.
fn encode_operand(op: &Op, made_at: u64, lsn: u64, out: &mut Vec<u8>) {
    let code = match op {
        Op::ListAppend(..) => 1,
        Op::MapPut(..) => 2,
        Op::MapRemove(_) => 3,
        Op::Touch(_) => 4,
        Op::MapTouch(..) => 5,
        Op::Put(..) | Op::Clear | Op::ListReplace(..) => {
            unreachable!("a barrier is folded into a full result, never kept as an operand")
        }
    };
    out.push(code);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&made_at.to_le_bytes());
    match op {
        Op::ListAppend(vs, e) => {
            out.extend_from_slice(&e.to_le_bytes());
            put_u32(vs.len(), out);
            for v in vs {
                put_bytes(v, out);
            }
        }
        Op::MapPut(k, v, e) => {
            out.extend_from_slice(&e.to_le_bytes());
            put_bytes(k, out);
            put_bytes(v, out);
        }
        Op::MapRemove(k) => put_bytes(k, out),
        Op::Touch(e) => out.extend_from_slice(&e.to_le_bytes()),
        Op::MapTouch(k, e) => {
            out.extend_from_slice(&e.to_le_bytes());
            put_bytes(k, out);
        }
        Op::Put(..) | Op::Clear | Op::ListReplace(..) => {}
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

fn decode_operand(r: &mut Cursor<'_>) -> Option<(Op, u64, u64)> {
    let code = r.u8()?;
    let lsn = r.u64()?;
    let made_at = r.u64()?;
    let op = match code {
        1 => {
            let e = r.u64()?;
            let n = r.u32()? as usize;
            // Each value takes at least 4 bytes: never trust a count for an allocation.
            if n > r.0.len() / 4 {
                return None;
            }
            let mut vs = Vec::with_capacity(n);
            for _ in 0..n {
                vs.push(r.bytes()?);
            }
            Op::ListAppend(vs, e)
        }
        2 => {
            let e = r.u64()?;
            let k = r.bytes()?;
            Op::MapPut(k, r.bytes()?, e)
        }
        3 => Op::MapRemove(r.bytes()?),
        4 => Op::Touch(r.u64()?),
        5 => {
            let e = r.u64()?;
            Op::MapTouch(r.bytes()?, e)
        }
        _ => return None,
    };
    Some((op, made_at, lsn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryView;

    #[test]
    fn list_appends_wait_for_the_base_and_encode_round_trip() {
        let s = StateKind::List;
        let mut c = KeyChanges::default();
        let one = vec![b"c".to_vec()];
        c.push(
            s,
            None,
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
        Entry::List(vec![Elem {
            value: b"a".to_vec(),
            expires_at_ms: 0,
        }])
        .encode(&mut base);
        let out = c.resolve(Some(&base)).unwrap().unwrap();
        assert_eq!(
            EntryView::decode(&out).unwrap(),
            EntryView::List(vec![(b"a".to_vec(), 0), (b"c".to_vec(), 0)])
        );
        for cut in 0..buf.len() {
            assert!(KeyChanges::decode(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn a_clear_needs_no_base_and_then_merges() {
        let s = StateKind::Map;
        let mut older = KeyChanges::default();
        older
            .push(
                s,
                None,
                &ChangeOp::MapPut {
                    user_key: b"k",
                    value: b"v",
                    expires_at_ms: 0,
                },
            )
            .unwrap();
        let mut newer = KeyChanges::default();
        newer.push(s, None, &ChangeOp::Clear).unwrap();
        older.then(newer);
        assert!(!older.needs_base());
        assert_eq!(older.resolve(None).unwrap(), None);
        assert!(c_rejects_wrong_kind());
    }

    #[test]
    fn known_results_encode_round_trip() {
        let mut c = KeyChanges::default();
        c.push(
            StateKind::Value,
            None,
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
                StateKind::Value,
                None,
                &ChangeOp::MapRemove { user_key: b"k" },
            )
            .is_err()
    }
}
