//! The formats of `millpond-format` are fed whatever is on disk: an entry (tags 1–4), a
//! composite key and the snapshot writer's spilled key changes must each decode or fail with
//! an error, never panic; what decodes must encode back to what decodes the same, and the
//! merge rules must apply to any entry that decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millpond_format::key::key_group_of;
use millpond_format::{fold, ChangeOp, CompositeKey, Entry, EntryView, KeyChanges, StateKind};

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(data, String::new) {
        let mut again = Vec::new();
        entry.encode(&mut again);
        assert_eq!(Entry::decode(&again, String::new).as_ref(), Ok(&entry));
        assert!(EntryView::decode(data).is_ok());

        // Any entry is a base the rules can apply to.
        let mut slot = Some(entry);
        fold::apply(&mut slot, &ChangeOp::MapRemove { user_key: b"k" });
        fold::apply_at(&mut slot, &ChangeOp::Touch { expires_at_ms: 9 }, Some(8));
        let mut changes = KeyChanges::default();
        let values = [b"v".to_vec()];
        let append = ChangeOp::ListAppend {
            values: &values,
            expires_at_ms: 0,
        };
        changes.push(StateKind::List, Some(1), &append).unwrap();
        assert!(changes.resolve(Some(data)).is_ok());
    } else {
        assert!(EntryView::decode(data).is_err());
    }

    match CompositeKey::parse(data) {
        Ok(ck) => {
            let mut again = Vec::new();
            ck.encode_into(&mut again);
            assert_eq!(again, data);
            assert_eq!(key_group_of(data), Ok(ck.key_group));
        }
        Err(_) => assert!(data.len() < millpond_format::key::PREFIX_BYTES),
    }

    let _ = KeyChanges::decode(data);
});
