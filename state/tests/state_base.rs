//! A store over a base tier (a restored snapshot): reads fall through to the base, changes and
//! deletes hide it (also after they are evicted to the cold tier), ids come from the
//! snapshot's schemas, and replay registers the snapshot's states by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use millpond_state::*;

/// A fake base tier: entries in a map, counting reads.
#[derive(Default)]
struct FakeBase {
    entries: HashMap<Vec<u8>, Vec<u8>>,
    reads: AtomicU64,
}

impl BaseTier for FakeBase {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BoxError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.entries.get(key).cloned())
    }

    fn covered_lsn(&self) -> u64 {
        0
    }
}

const KEYS: u64 = 20_000;

fn enc(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    U64Codec.encode(&v, &mut out).unwrap();
    out
}

fn schema() -> StateSchema {
    StateSchema {
        name: "counts".into(),
        kind: StateKind::Value,
        ttl: None,
        id: 7,
    }
}

/// A base where key `i` of state "counts" (id 7) holds `i`.
fn base() -> Arc<FakeBase> {
    let mut base = FakeBase::default();
    for i in 0..KEYS {
        let key = enc(i);
        let mut ck = Vec::new();
        composite_key(key_group(&key, 128), 7, &key, &mut ck);
        let mut changes = KeyChanges::default();
        let value = enc(i);
        changes
            .push(
                &schema(),
                &ChangeOp::Put {
                    value: &value,
                    expires_at_ms: 0,
                },
            )
            .unwrap();
        base.entries
            .insert(ck, changes.resolve(None).unwrap().unwrap());
    }
    Arc::new(base)
}

fn open(dir: &std::path::Path, base: Arc<FakeBase>) -> Store {
    Store::builder(dir)
        .settings(StoreSettings {
            // Small: most changes are evicted to the cold tier.
            memory_budget_bytes: 2 << 20,
            ..StoreSettings::default()
        })
        .base(base, vec![schema()])
        .open()
        .unwrap()
}

#[test]
fn reads_find_the_base_and_changes_and_deletes_hide_it_after_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let store = open(dir.path(), base.clone());
    let counts = store
        .value_state(ValueStateDescriptor::new("counts", U64Codec, U64Codec))
        .unwrap();
    assert_eq!(store.schemas()[0].id, 7, "the snapshot's id is kept");
    assert_eq!(counts.get(&5).unwrap(), Some(5));
    assert!(base.reads.load(Ordering::Relaxed) > 0);
    for i in 0..KEYS {
        match i % 3 {
            0 => counts.clear(&i).unwrap(),
            1 => counts.update(&i, &(i * 10)).unwrap(),
            _ => {}
        }
    }
    // Every change has left memory by now; the cold tier must hide the base.
    store.flush().unwrap();
    assert!(store.stats().spills > 0);
    for i in 0..KEYS {
        let expected = match i % 3 {
            0 => None,
            1 => Some(i * 10),
            _ => Some(i),
        };
        assert_eq!(counts.get(&i).unwrap(), expected, "key {i}");
    }
    store.close().unwrap();
}

#[test]
fn schemas_of_the_base_fix_ids_and_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), base());
    // Another kind under the snapshot's name is refused.
    assert!(matches!(
        store.list_state(ListStateDescriptor::new("counts", U64Codec, U64Codec)),
        Err(Error::StateMismatch { .. })
    ));
    // A new state gets an id the snapshot does not use.
    store
        .value_state(ValueStateDescriptor::new("other", U64Codec, U64Codec))
        .unwrap();
    let other = store
        .schemas()
        .into_iter()
        .find(|s| s.name == "other")
        .unwrap();
    assert_ne!(other.id, 7);
    let counts = store
        .value_state(ValueStateDescriptor::new("counts", U64Codec, U64Codec))
        .unwrap();
    assert_eq!(counts.get(&9).unwrap(), Some(9));
    store.close().unwrap();
}

#[test]
fn replay_registers_the_base_states_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), base());
    let key = enc(3);
    let value = enc(33);
    store
        .apply(&Change {
            state: "counts",
            kind: StateKind::Value,
            key_group: key_group(&key, 128),
            key: &key,
            op: ChangeOp::Put {
                value: &value,
                expires_at_ms: 0,
            },
        })
        .unwrap();
    store.replay_done();
    let counts = store
        .value_state(ValueStateDescriptor::new("counts", U64Codec, U64Codec))
        .unwrap();
    assert_eq!(counts.get(&3).unwrap(), Some(33));
    assert_eq!(counts.get(&4).unwrap(), Some(4));
    // A state neither registered nor in the base is still unknown.
    let unknown = store.apply(&Change {
        state: "nope",
        kind: StateKind::Value,
        key_group: key_group(&key, 128),
        key: &key,
        op: ChangeOp::Clear,
    });
    assert!(matches!(unknown, Err(Error::UnknownState { .. })));
    store.close().unwrap();
}
