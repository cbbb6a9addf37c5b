//! Data files against a `BTreeMap` model, and against damage: every flipped bit and every
//! truncation of a small file is caught, never read as wrong data, never a panic. Read from
//! memory, from local files and from a fault-injecting source, with and without a block cache.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use millpond_snapshot::{
    BlockCache, DataFile, DataFileInfo, DataFileSettings, DataFileWriter, Error, InMemory,
    LocalFile, ReadAt,
};
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

fn is_io<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Io { .. }))
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

// Reading through `ReadAt` sources and a shared block cache.

/// A source that counts its reads and can be told to fail or to return short reads from a
/// given read on.
#[derive(Debug)]
struct Faulty {
    inner: InMemory,
    reads: AtomicUsize,
    /// Reads from this one on (counting from 0) fail.
    fail_from: usize,
    /// Failed reads return a byte too few instead of an error.
    short: bool,
}

impl Faulty {
    fn new(bytes: Vec<u8>) -> Arc<Self> {
        Faulty::failing(bytes, usize::MAX, false)
    }

    fn failing(bytes: Vec<u8>, fail_from: usize, short: bool) -> Arc<Self> {
        Arc::new(Faulty {
            inner: InMemory::new(bytes),
            reads: AtomicUsize::new(0),
            fail_from,
            short,
        })
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }
}

impl ReadAt for Faulty {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        let mut bytes = self.inner.read_at(offset, len)?;
        if n >= self.fail_from {
            if !self.short {
                return Err(std::io::Error::other("connection reset"));
            }
            bytes.pop();
        }
        Ok(bytes)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// 5000 entries in 50 key groups, about 60 blocks.
fn big_model() -> Model {
    (0..5000u32)
        .map(|i| {
            let mut k = ((i / 100) as u16).to_be_bytes().to_vec();
            k.extend_from_slice(&i.to_be_bytes());
            (k, i.to_le_bytes().repeat(i as usize % 7))
        })
        .collect()
}

const SMALL_BLOCKS: DataFileSettings = DataFileSettings {
    block_bytes: 512,
    compress: true,
};

/// Keys around every model key and past both ends, short ones included.
fn probes(model: &Model) -> Vec<Vec<u8>> {
    let mut probes: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![0xff; 9]];
    for k in model.keys().step_by(13) {
        probes.push(k.clone());
        let mut after = k.clone();
        after.push(0);
        probes.push(after);
        probes.push(k[..k.len() - 1].to_vec());
    }
    probes
}

fn assert_same(a: &DataFile, b: &DataFile, model: &Model) {
    assert_eq!(a.entries(), b.entries());
    assert_eq!(a.key_groups(), b.key_groups());
    assert_eq!(a.first_key(), b.first_key());
    assert_eq!(a.last_key(), b.last_key());
    assert_eq!(a.len_bytes(), b.len_bytes());
    assert_eq!(a.block_count(), b.block_count());
    assert_eq!(a.index_bytes(), b.index_bytes());
    a.verify().unwrap();
    b.verify().unwrap();
    for k in model.keys().chain(&probes(model)) {
        assert_eq!(a.get(k).unwrap(), b.get(k).unwrap(), "{k:?}");
    }
    assert!(a
        .iter()
        .map(Result::unwrap)
        .eq(b.iter().map(Result::unwrap)));
}

#[test]
fn open_source_over_a_local_file_or_memory_reads_like_open() {
    let dir = tempfile::tempdir().unwrap();
    let model = big_model();
    let (bytes, info) = write(&model, SMALL_BLOCKS);
    let path = dir.path().join("0001.mpd");
    std::fs::write(&path, &bytes).unwrap();

    let opened = DataFile::open(bytes.clone()).unwrap();
    assert!(opened.iter().map(Result::unwrap).eq(model.clone()));
    assert!(opened.block_count() > 50, "{}", opened.block_count());
    assert_eq!(opened.len_bytes(), info.bytes);
    // The index is a small part of the file: about 48 bytes a block and two keys.
    assert!(opened.index_bytes() < opened.block_count() * 100 + 200);

    let local = DataFile::open_source(Arc::new(LocalFile::open(&path).unwrap())).unwrap();
    assert_same(&opened, &local, &model);
    let memory = DataFile::open_source(Arc::new(InMemory::new(bytes))).unwrap();
    assert_same(&opened, &memory, &model);
}

#[test]
fn opening_reads_the_footer_then_the_index() {
    let (bytes, _) = write(&big_model(), SMALL_BLOCKS);
    let source = Faulty::new(bytes);
    let file = DataFile::open_source(source.clone()).unwrap();
    assert_eq!(source.reads(), 2);
    // A lookup reads one block; one the index rules out reads none.
    file.get(&[0, 3, 0, 0, 1, 44]).unwrap().unwrap();
    file.get(&[0, 3, 0, 0, 1, 44, 0]).unwrap();
    file.get(&[0, 3, 0, 0, 1, 44, 0]).unwrap();
    assert_eq!(source.reads(), 5);
    file.get(&[0xff, 0xff]).unwrap();
    file.get(&[0]).unwrap();
    assert_eq!(source.reads(), 5);
}

#[test]
fn get_through_a_cache_reads_each_block_once() {
    let model = big_model();
    let (bytes, _) = write(&model, SMALL_BLOCKS);
    let source = Faulty::new(bytes);
    let cache = Arc::new(BlockCache::new(4 << 20));
    let file = DataFile::open_source(source.clone())
        .unwrap()
        .with_cache(Arc::clone(&cache), 1);
    let key = |i: u32| {
        let mut k = ((i / 100) as u16).to_be_bytes().to_vec();
        k.extend_from_slice(&i.to_be_bytes());
        k
    };
    assert_eq!(file.get(&key(250)).unwrap().as_ref(), model.get(&key(250)));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.blocks), (0, 1, 1));
    assert_eq!(source.reads(), 3);
    // The same key, and an absent key in the same block: hits, no reads.
    assert_eq!(file.get(&key(250)).unwrap().as_ref(), model.get(&key(250)));
    let mut absent = key(250);
    absent.push(0);
    assert_eq!(file.get(&absent).unwrap(), None);
    assert_eq!((cache.stats().hits, cache.stats().misses), (2, 1));
    assert_eq!(source.reads(), 3);
    // A key the index rules out does not touch the cache.
    file.get(&[0xff, 0xff]).unwrap();
    assert_eq!((cache.stats().hits, cache.stats().misses), (2, 1));
    // Every key: each block read once, every block cached.
    for (k, v) in &model {
        assert_eq!(file.get(k).unwrap().as_ref(), Some(v));
    }
    let stats = cache.stats();
    assert_eq!(stats.misses as usize, file.block_count());
    assert_eq!(stats.hits + stats.misses, 5000 + 3);
    assert_eq!((stats.blocks, stats.evictions), (file.block_count(), 0));
    assert_eq!(source.reads(), 2 + file.block_count());
    assert!(stats.bytes > 0 && stats.bytes <= cache.capacity_bytes());
    // Scans leave the cache alone.
    assert_eq!(file.iter().count(), 5000);
    file.verify().unwrap();
    assert_eq!(cache.stats(), stats);

    // Another file in the same cache, same block numbers, other values: its own entries.
    let other: Model = model
        .keys()
        .map(|k| (k.clone(), b"other".to_vec()))
        .collect();
    let (other_bytes, _) = write(&other, SMALL_BLOCKS);
    let other_file = DataFile::open(other_bytes)
        .unwrap()
        .with_cache(Arc::clone(&cache), 2);
    assert_eq!(other_file.get(&key(250)).unwrap(), Some(b"other".to_vec()));
    assert_eq!(file.get(&key(250)).unwrap().as_ref(), model.get(&key(250)));
}

#[test]
fn a_small_cache_stays_within_its_bound() {
    let model = big_model();
    let (bytes, _) = write(&model, SMALL_BLOCKS);
    let cache = Arc::new(BlockCache::new(8 << 10));
    let file = DataFile::open(bytes)
        .unwrap()
        .with_cache(Arc::clone(&cache), 1);
    for (k, v) in &model {
        assert_eq!(file.get(k).unwrap().as_ref(), Some(v));
    }
    let stats = cache.stats();
    assert!(stats.evictions > 0);
    assert!(stats.blocks > 1 && stats.bytes <= 8 << 10, "{stats:?}");

    let none = Arc::new(BlockCache::new(0));
    let file = file.with_cache(Arc::clone(&none), 1);
    for (k, v) in model.iter().step_by(50) {
        assert_eq!(file.get(k).unwrap().as_ref(), Some(v));
    }
    assert_eq!((none.stats().hits, none.stats().blocks), (0, 0));
}

#[test]
fn threads_share_one_file_and_cache() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<DataFile>();
    let model = big_model();
    let (bytes, _) = write(&model, SMALL_BLOCKS);
    let cache = Arc::new(BlockCache::new(32 << 10));
    let file = DataFile::open(bytes).unwrap().with_cache(cache, 1);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (file, model) = (&file, &model);
            s.spawn(move || {
                for (k, v) in model.iter().skip(t).step_by(3) {
                    assert_eq!(file.get(k).unwrap().as_ref(), Some(v));
                }
            });
        }
    });
}

#[test]
fn iter_from_gives_the_keys_from_start_on() {
    let model = big_model();
    for compress in [false, true] {
        let (bytes, _) = write(
            &model,
            DataFileSettings {
                block_bytes: 512,
                compress,
            },
        );
        let source = Faulty::new(bytes);
        let file = DataFile::open_source(source.clone()).unwrap();
        for start in probes(&model) {
            let got: Vec<_> = file.iter_from(&start).map(Result::unwrap).collect();
            let want: Vec<_> = model
                .range(start.clone()..)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(got, want, "{start:?}");
        }
        // One key group: blocks before it are not read, and the iterator stops being read at
        // the group's end.
        let before = source.reads();
        let group: Vec<_> = file
            .iter_from(&7u16.to_be_bytes())
            .map(Result::unwrap)
            .take_while(|(k, _)| k[..2] == 7u16.to_be_bytes())
            .collect();
        assert_eq!(group.len(), 100);
        assert!(source.reads() - before < file.block_count() / 5);
        // The iterator owns its handle to the file.
        let iter = file.iter_from(&[0, 49]);
        drop(file);
        assert_eq!(iter.count(), 100);
    }
}

#[test]
fn a_bit_flip_in_a_block_is_found_by_get_through_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = big_model();
    let (mut bytes, _) = write(&model, SMALL_BLOCKS);
    // A byte in the middle of the data: some block, not the index.
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    let path = dir.path().join("0001.mpd");
    std::fs::write(&path, &bytes).unwrap();
    let cache = Arc::new(BlockCache::new(4 << 20));
    let file = DataFile::open_source(Arc::new(LocalFile::open(&path).unwrap()))
        .unwrap()
        .with_cache(Arc::clone(&cache), 1);
    assert!(is_corrupt(&file.verify()));
    let mut damaged = 0;
    let mut first_damaged = None;
    for (n, (k, v)) in model.iter().enumerate() {
        match file.get(k) {
            Ok(got) => assert_eq!(got.as_ref(), Some(v)),
            Err(Error::Corrupt { what, .. }) => {
                assert_eq!(what, "data block checksum");
                damaged += 1;
                first_damaged.get_or_insert(n);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(damaged > 0);
    // The damaged block was never cached: every block but it was.
    assert_eq!(cache.stats().blocks, file.block_count() - 1);
    // A scan gives the entries before the damaged block, then the error.
    let items: Vec<_> = file.iter().collect();
    assert!(is_corrupt(items.last().unwrap()));
    assert_eq!(Some(items.len() - 1), first_damaged);
}

#[test]
fn a_truncated_source_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = write(
        &small_model(),
        DataFileSettings {
            block_bytes: 48,
            compress: true,
        },
    );
    let path = dir.path().join("0001.mpd");
    for len in 0..bytes.len() {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let r = DataFile::open_source(Arc::new(LocalFile::open(&path).unwrap()));
        assert!(is_corrupt(&r), "length {len}");
        let r = DataFile::open_source(Arc::new(InMemory::new(bytes[..len].to_vec())));
        assert!(is_corrupt(&r), "length {len}");
    }
}

#[test]
fn a_failing_source_is_an_io_error() {
    let model = small_model();
    let (bytes, _) = write(
        &model,
        DataFileSettings {
            block_bytes: 48,
            compress: true,
        },
    );
    for short in [false, true] {
        // The footer read, then the index read.
        for fail_from in 0..2 {
            let r = DataFile::open_source(Faulty::failing(bytes.clone(), fail_from, short));
            assert!(is_io(&r), "read {fail_from}, short {short}");
        }
        // Block reads.
        let file = DataFile::open_source(Faulty::failing(bytes.clone(), 2, short)).unwrap();
        for k in model.keys() {
            assert!(is_io(&file.get(k)), "{k:?}");
        }
        assert!(is_io(&file.verify()));
        let items: Vec<_> = file.iter_from(&[0, 2]).collect();
        assert_eq!(items.len(), 1);
        assert!(is_io(&items[0]));
    }
    // A source that shrank after its size was taken.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0001.mpd");
    std::fs::write(&path, &bytes).unwrap();
    let file = DataFile::open_source(Arc::new(LocalFile::open(&path).unwrap())).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(40)
        .unwrap();
    let err = file.verify().unwrap_err();
    let Error::Io { path: what, source } = &err else {
        panic!("{err}")
    };
    assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(what.contains("0001.mpd"), "{what}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn open_source_get_and_iter_from_match_a_btreemap(
        model in proptest::collection::btree_map(key(), value(), 0..80),
        probes in proptest::collection::vec(key(), 0..20),
        settings in settings(),
        cache_bytes in prop_oneof![Just(0usize), Just(4usize << 10), Just(64usize << 20)],
    ) {
        let (bytes, _) = write(&model, settings);
        let cache = Arc::new(BlockCache::new(cache_bytes));
        let file = DataFile::open_source(Arc::new(InMemory::new(bytes)))
            .unwrap()
            .with_cache(cache, 9);
        prop_assert_eq!(file.entries(), model.len() as u64);
        // Twice: the second time through whatever the cache kept.
        for _ in 0..2 {
            for (k, v) in &model {
                prop_assert_eq!(file.get(k).unwrap(), Some(v.clone()));
            }
            for k in &probes {
                prop_assert_eq!(file.get(k).unwrap(), model.get(k).cloned());
            }
        }
        for start in model.keys().chain(&probes).chain([&Vec::new(), &vec![0xff; 3]]) {
            let got: Vec<_> = file.iter_from(start).collect::<Result<_, _>>().unwrap();
            let want: Vec<_> =
                model.range(start.clone()..).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
