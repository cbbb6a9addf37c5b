//! Entries outside a store, for the snapshot writer and tools: the names this crate has
//! always exported, now thin adapters over `millpond_format` (which holds the composite key,
//! the entry encoding and the merge rules) that keep their signatures and this crate's
//! [`Error`].

use millpond_format::CompositeKey;

use crate::change::ChangeOp;
use crate::descriptor::StateSchema;
use crate::error::{Error, Result};

pub use millpond_format::key::PREFIX_BYTES as COMPOSITE_PREFIX;
pub use millpond_format::EntryView;

/// Appends the composite key of (`key_group`, `state_id`, `key`) to `out`: the key of an
/// entry in the cold tier and in snapshot data files. The same as
/// [`CompositeKey::encode_into`](millpond_format::CompositeKey::encode_into).
pub fn composite_key(key_group: u16, state_id: u16, key: &[u8], out: &mut Vec<u8>) {
    CompositeKey::new(key_group, state_id, key).encode_into(out);
}

/// Splits a composite key into key group, state id and encoded key; `None` if it is too short.
/// [`CompositeKey::parse`](millpond_format::CompositeKey::parse) says why.
pub fn split_composite_key(ck: &[u8]) -> Option<(u16, u16, &[u8])> {
    let ck = CompositeKey::parse(ck).ok()?;
    Some((ck.key_group, ck.state_id, ck.key))
}

/// Decodes an entry of the cold tier or of a snapshot data file, checking its checksum.
pub fn decode_entry(bytes: &[u8]) -> Result<EntryView> {
    Ok(EntryView::decode(bytes)?)
}

/// The changes of one key of one state since a parent snapshot, gathered in log order.
/// [`KeyChanges::resolve`] applies them to the key's entry in the parent and gives the entry
/// that a store replaying the same changes would hold.
///
/// The rules are `millpond_format::KeyChanges`'; this takes a [`StateSchema`] for the state's
/// kind and TTL, and reports this crate's [`Error`].
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChanges(millpond_format::KeyChanges);

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
        Ok(self
            .0
            .push(schema.kind, schema.ttl.map(|t| t.ttl_ms()), op)?)
    }

    /// Appends `newer`, gathered after these changes.
    pub fn then(&mut self, newer: KeyChanges) {
        self.0.then(newer.0)
    }

    /// Whether the result needs the parent's entry.
    pub fn needs_base(&self) -> bool {
        self.0.needs_base()
    }

    /// Approximate heap bytes held, for bounding a buffer of these.
    pub fn mem_size(&self) -> usize {
        self.0.mem_size()
    }

    /// Applies the changes to `base`, the key's encoded entry in the parent snapshot (`None`
    /// if it had none), and returns the new encoded entry, or `None` if the key has no data.
    /// A damaged `base` is `Error::Corrupt`.
    pub fn resolve(&self, base: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.0.resolve(base)?)
    }

    /// Appends an encoding of these changes (for sorted runs spilled to disk while a
    /// snapshot is written; not a stable format).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out)
    }

    /// Decodes what [`KeyChanges::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<KeyChanges> {
        Ok(KeyChanges(millpond_format::KeyChanges::decode(bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::StateKind;
    use millpond_format::Entry;

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
        assert_eq!(COMPOSITE_PREFIX, 4);
    }

    #[test]
    fn the_adapter_names_the_state_and_keeps_the_rules() {
        let mut c = KeyChanges::default();
        let err = c
            .push(
                &schema(StateKind::Value),
                &ChangeOp::MapRemove { user_key: b"k" },
            )
            .unwrap_err();
        assert!(matches!(&err, Error::Invalid { reason } if reason.contains("'s'")));
        c.push(
            &schema(StateKind::Value),
            &ChangeOp::Put {
                value: b"v",
                expires_at_ms: 0,
            },
        )
        .unwrap();
        assert!(matches!(c.0.fold_over(None), Some(Entry::Value { .. })));
        let mut buf = Vec::new();
        c.encode(&mut buf);
        assert_eq!(KeyChanges::decode(&buf).unwrap(), c);
        assert!(matches!(
            KeyChanges::decode(&buf[..1]),
            Err(Error::Corrupt { .. })
        ));
        // A run entry: a full change is the entry itself (tag 1), which any reader decodes.
        assert!(matches!(
            decode_entry(&buf),
            Ok(EntryView::Value { ref value, .. }) if value == b"v"
        ));
    }
}
