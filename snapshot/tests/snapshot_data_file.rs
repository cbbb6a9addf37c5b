//! Data files against a `BTreeMap` model, and against damage: every flipped bit and every
//! truncation of a small file is caught, never read as wrong data, never a panic.

use std::collections::BTreeMap;

use millpond_snapshot::{DataFile, DataFileInfo, DataFileSettings, DataFileWriter, Error};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn write(model: &Model, settings: DataFileSettings) -> (Vec<u8>, DataFileInfo) {
    let mut bytes = Vec::new();
    let mut writer = DataFileWriter::new(&mut bytes, settings);
    for (k, v) in model {
        writer.add(k, v).unwrap();
    }
    let info = writer.finish().unwrap();
    (bytes, info)
}

fn key_group(key: &[u8]) -> u16 {
    u16::from_be_bytes([key[0], key[1]])
}

/// Keys over a few key groups with short suffixes (so neighbours and absent keys are close).
fn key() -> impl Strategy<Value = Vec<u8>> {
    (0u16..6, proptest::collection::vec(0u8..4, 0..5)).prop_map(|(group, suffix)| {
        let mut k = group.to_be_bytes().to_vec();
        k.extend(suffix);
        k
    })
}

/// Empty, small random, long repetitive (compressible, bigger than a block) and long random
/// (incompressible) values.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..24),
        (any::<u8>(), 0usize..3000).prop_map(|(b, n)| vec![b; n]),
        proptest::collection::vec(any::<u8>(), 0..1500),
    ]
}

fn settings() -> impl Strategy<Value = DataFileSettings> {
    (
        prop_oneof![0usize..64, 64usize..1024, Just(64 << 10)],
        any::<bool>(),
    )
        .prop_map(|(block_bytes, compress)| DataFileSettings {
            block_bytes,
            compress,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn matches_a_btreemap(
        model in proptest::collection::btree_map(key(), value(), 0..80),
        probes in proptest::collection::vec(key(), 0..40),
        settings in settings(),
    ) {
        let (bytes, info) = write(&model, settings);
        prop_assert_eq!(info.bytes, bytes.len() as u64);
        prop_assert_eq!(info.entries, model.len() as u64);
        prop_assert_eq!(info.crc32c, crc32c::crc32c(&bytes));
        let first = model.keys().next().cloned();
        let last = model.keys().next_back().cloned();
        prop_assert_eq!(&info.first_key, &first);
        prop_assert_eq!(&info.last_key, &last);
        let groups = first.as_ref().zip(last.as_ref()).map(|(f, l)| (key_group(f), key_group(l)));
        prop_assert_eq!(info.key_groups, groups);

        let file = DataFile::open(bytes).unwrap();
        prop_assert_eq!(file.entries(), model.len() as u64);
        prop_assert_eq!(file.key_groups(), groups);
        prop_assert_eq!(file.first_key(), first.as_deref());
        prop_assert_eq!(file.last_key(), last.as_deref());
        file.verify().unwrap();
        for (k, v) in &model {
            prop_assert_eq!(file.get(k).unwrap(), Some(v.clone()));
        }
        for k in &probes {
            prop_assert_eq!(file.get(k).unwrap(), model.get(k).cloned());
        }
        // Keys shorter than a key group, before and after everything.
        prop_assert_eq!(file.get(b"").unwrap(), None);
        prop_assert_eq!(file.get(b"\x00").unwrap(), None);
        prop_assert_eq!(file.get(b"\xff\xff\xff").unwrap(), None);
        let read: Model = file.iter().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(read, model);
    }
}

#[test]
fn many_small_entries_in_many_blocks() {
    let model: Model = (0..5000u32)
        .map(|i| {
            let mut k = ((i / 100) as u16).to_be_bytes().to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            (k, i.to_le_bytes().to_vec())
        })
        .collect();
    for compress in [false, true] {
        let (bytes, info) = write(
            &model,
            DataFileSettings {
                block_bytes: 512,
                compress,
            },
        );
        assert_eq!(info.key_groups, Some((0, 49)));
        let file = DataFile::open(bytes).unwrap();
        file.verify().unwrap();
        for (k, v) in model.iter().step_by(7) {
            assert_eq!(file.get(k).unwrap().as_ref(), Some(v));
        }
        assert!(file.iter().map(Result::unwrap).eq(model.clone()));
    }
}

#[test]
fn keys_out_of_order_or_too_short_are_invalid() {
    let mut bytes = Vec::new();
    let mut writer = DataFileWriter::new(&mut bytes, DataFileSettings::default());
    writer.add(b"\x00\x01b", b"1").unwrap();
    for bad in [&b"\x00\x01a"[..], b"\x00\x01b", b"\x00\x00zz"] {
        assert!(
            matches!(writer.add(bad, b"2"), Err(Error::Invalid { .. })),
            "{bad:?}"
        );
    }
    for short in [&b""[..], b"\x07"] {
        assert!(matches!(
            writer.add(short, b"2"),
            Err(Error::Invalid { .. })
        ));
    }
    // A rejected call leaves the writer as it was.
    writer.add(b"\x00\x01c", b"3").unwrap();
    let info = writer.finish().unwrap();
    assert_eq!(info.entries, 2);
    let file = DataFile::open(bytes).unwrap();
    let read: Vec<_> = file.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(
        read,
        vec![
            (b"\x00\x01b".to_vec(), b"1".to_vec()),
            (b"\x00\x01c".to_vec(), b"3".to_vec())
        ]
    );
}

fn small_model() -> Model {
    (0..24u8)
        .map(|i| {
            let key = vec![0, i / 6, b'k', i];
            // Some values compress (repeats), some are empty.
            let value = if i % 3 == 0 {
                Vec::new()
            } else {
                vec![b'a' + i % 5; usize::from(i) * 2]
            };
            (key, value)
        })
        .collect()
}

fn is_corrupt<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Corrupt { .. }))
}

/// Every bit flip is either rejected by `open`, or `verify` reports it and reads return
/// either the right answer or `Corrupt` (with at least one read hitting the damage).
fn check_flips(settings: DataFileSettings) {
    let model = small_model();
    let (bytes, _) = write(&model, settings);
    let absent: Vec<Vec<u8>> = vec![vec![0, 0], vec![0, 1, b'k', 0], vec![9, 9, 9]];
    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let file = match DataFile::open(bad) {
            Err(Error::Corrupt { .. }) => continue,
            Err(e) => panic!("bit {bit}: open gave {e}"),
            Ok(file) => file,
        };
        // Footer and index passed: the damage is in a data block.
        assert!(is_corrupt(&file.verify()), "bit {bit}: verify passed");
        assert_eq!(file.entries(), model.len() as u64, "bit {bit}");
        let mut damaged_reads = 0;
        for (k, v) in &model {
            match file.get(k) {
                Ok(got) => assert_eq!(got.as_ref(), Some(v), "bit {bit}: wrong value"),
                Err(Error::Corrupt { .. }) => damaged_reads += 1,
                Err(e) => panic!("bit {bit}: get gave {e}"),
            }
        }
        assert!(damaged_reads > 0, "bit {bit}: no read saw the damage");
        for k in &absent {
            let got = file.get(k);
            assert!(matches!(got, Ok(None)) || is_corrupt(&got), "bit {bit}");
        }
        let mut expected = model.iter();
        let mut saw_error = false;
        for item in file.iter() {
            match item {
                Ok((k, v)) => {
                    assert!(!saw_error, "bit {bit}: iter went on after an error");
                    let (ek, ev) = expected.next().expect("more entries than written");
                    assert_eq!((&k, &v), (ek, ev), "bit {bit}: iter gave wrong data");
                }
                Err(Error::Corrupt { .. }) => saw_error = true,
                Err(e) => panic!("bit {bit}: iter gave {e}"),
            }
        }
        assert!(saw_error, "bit {bit}: iter passed");
    }
}

#[test]
fn every_bit_flip_is_caught_raw() {
    check_flips(DataFileSettings {
        block_bytes: 48,
        compress: false,
    });
}

#[test]
fn every_bit_flip_is_caught_compressed() {
    check_flips(DataFileSettings {
        block_bytes: 48,
        compress: true,
    });
}

#[test]
fn every_truncation_is_rejected() {
    for compress in [false, true] {
        let (bytes, _) = write(
            &small_model(),
            DataFileSettings {
                block_bytes: 48,
                compress,
            },
        );
        for len in 0..bytes.len() {
            let r = DataFile::open(bytes[..len].to_vec());
            assert!(is_corrupt(&r), "length {len}");
        }
        // Cutting bytes off the front (a wrong range read) is caught too.
        for start in 1..bytes.len() {
            let r = DataFile::open(bytes[start..].to_vec());
            assert!(is_corrupt(&r), "start {start}");
        }
    }
}

#[test]
fn corrupt_errors_say_where() {
    let (mut bytes, _) = write(
        &small_model(),
        DataFileSettings {
            block_bytes: 48,
            compress: false,
        },
    );
    // The first block starts at byte 0; damage its last byte.
    bytes[10] ^= 0x40;
    let file = DataFile::open(bytes).unwrap();
    let err = file.verify().unwrap_err();
    let Error::Corrupt { what, location } = &err else {
        panic!("{err}")
    };
    assert_eq!(*what, "data block checksum");
    assert_eq!(location, "block 0 at byte 0");
}

#[test]
fn written_to_a_file_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0001.mpd");
    let model = small_model();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer =
        DataFileWriter::new(std::io::BufWriter::new(file), DataFileSettings::default());
    for (k, v) in &model {
        writer.add(k, v).unwrap();
    }
    let info = writer.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(info.bytes, bytes.len() as u64);
    assert_eq!(info.crc32c, crc32c::crc32c(&bytes));
    let file = DataFile::open(bytes).unwrap();
    assert!(file.iter().map(Result::unwrap).eq(model));
}
