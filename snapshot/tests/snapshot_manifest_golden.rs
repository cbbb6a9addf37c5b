//! A manifest is bytes in object storage. `GOLDEN` is a version-2 frame written by
//! `Manifest::encode` before `StateKind` and `SourceOffset` moved into the shared
//! `common.proto` (commit 47b61ca): it must still read the same. `GOLDEN_V3` is the first
//! version-3 frame (partitions and runs), hard-coded so that no change goes unnoticed.

use std::time::Duration;

use millpond_snapshot::manifest::{FileRef, Manifest, ManifestKind, Partition, Run, RunKind};
use millpond_snapshot::{FileDigest, FileId};
use millpond_state::{StateKind, StateSchema, TtlConfig};
use millpond_wal::SourceOffset;

const GOLDEN: &str = "4d504d46020000002e000000080312026964200228053001388001400952070a01741001182a5a090a01611002180120075a070a016210051802096c7430";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn sample() -> Manifest {
    Manifest {
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
        partitions: vec![],
        captured_at_ms: 0,
    }
}

#[test]
fn a_version_2_manifest_with_states_and_offsets_reads_as_it_did() {
    let m = Manifest::decode(&hex(GOLDEN), "golden").unwrap();
    // Without files, version 2 reads as 16 even partitions with no runs.
    assert_eq!(m.partitions.len(), 16);
    assert!(m.partitions.iter().all(|p| p.runs.is_empty()));
    assert_eq!(
        (
            m.partitions[1].first_key_group,
            m.partitions[1].last_key_group
        ),
        (8, 15)
    );
    assert_eq!(
        Manifest {
            partitions: vec![],
            ..m
        },
        sample()
    );
}

const GOLDEN_V3: &str = "4d504d46030000007f000000080312026964200228053001388001400952070a01741001182a5a090a01611002180120075a070a016210051802680770647a4b080a100f1a45080110091803223d0a0b646174612f612e6d706466100a180c20642807300838034210070707070707070707070707070707074a1009090909090909090909090909090909a7d3c5b5";

#[test]
fn a_version_3_manifest_is_byte_for_byte_what_it_was() {
    let mut m = sample();
    m.partitions = vec![Partition {
        first_key_group: 10,
        last_key_group: 15,
        runs: vec![Run {
            kind: RunKind::Delta,
            upto_lsn: 9,
            written_by: 3,
            files: vec![FileRef {
                path: "data/a.mpdf".into(),
                first_key_group: 10,
                last_key_group: 12,
                bytes: 100,
                entries: 7,
                crc32c: 8,
                written_by: 3,
                digest: Some(FileDigest([7; 16])),
                file_id: Some(FileId([9; 16])),
            }],
        }],
    }];
    let bytes = m.encode();
    let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, GOLDEN_V3);
    assert_eq!(Manifest::decode(&hex(GOLDEN_V3), "golden").unwrap(), m);
}

/// Field 16, `captured_at_ms` (the TTL horizon's clock), is written and read back; a manifest
/// without it (every one written before) reads as 0, and compaction then drops nothing.
#[test]
fn captured_at_round_trips_and_older_manifests_read_as_unknown() {
    let mut m = sample();
    m.captured_at_ms = 1_700_000_000_123;
    let bytes = m.encode();
    assert_eq!(Manifest::decode(&bytes, "t").unwrap(), m);
    assert_eq!(
        Manifest::decode(&hex(GOLDEN_V3), "golden")
            .unwrap()
            .captured_at_ms,
        0
    );
}
