//! A manifest is bytes in object storage: moving `StateKind` and `SourceOffset` into the
//! shared `common.proto` must not change them. The frame below was written by
//! `Manifest::encode` before the move (commit 47b61ca), hard-coded.

use std::time::Duration;

use millpond_snapshot::manifest::{Manifest, ManifestKind};
use millpond_state::{StateKind, StateSchema, TtlConfig};
use millpond_wal::SourceOffset;

const GOLDEN: &str = "4d504d46020000002e000000080312026964200228053001388001400952070a01741001182a5a090a01611002180120075a070a016210051802096c7430";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_manifest_with_states_and_offsets_is_byte_for_byte_what_it_was() {
    let m = Manifest {
        sequence: 3,
        id: "id".into(),
        parent_id: None,
        writer_epoch: 2,
        created_at_ms: 5,
        kind: ManifestKind::Snapshot,
        max_key_groups: 128,
        lsn: 9,
        wal_position: None,
        offsets: vec![SourceOffset {
            topic: "t".into(),
            partition: 1,
            next_offset: 42,
        }],
        states: vec![
            StateSchema {
                name: "a".into(),
                kind: StateKind::List,
                ttl: Some(TtlConfig::new(Duration::from_millis(7))),
                id: 1,
            },
            StateSchema {
                name: "b".into(),
                kind: StateKind::Aggregating,
                ttl: None,
                id: 2,
            },
        ],
        files: vec![],
    };
    assert_eq!(m.encode(), hex(GOLDEN));
    assert_eq!(Manifest::decode(&hex(GOLDEN), "golden").unwrap(), m);
}
