//! A cold tier whose writer can no longer write (a full disk in production; here a file size
//! limit, which needs no root): every call from then on reports that I/O failure, with the
//! file's path, and changes nothing. `Closed` is only for a store that was closed.
//!
//! The limit (`RLIMIT_FSIZE`) is the whole process's, so this binary holds this one test.

#![cfg(target_os = "linux")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use millpond_state::{
    BoxError, BytesCodec, Change, ChangeSink, Error, ListStateDescriptor, MapStateDescriptor,
    Store, StoreSettings, U64Codec, ValueStateDescriptor,
};

/// Counts the changes the store hands to its WAL.
#[derive(Default, Clone)]
struct CountingSink(Arc<AtomicU64>);

impl ChangeSink for CountingSink {
    fn append(&self, _change: &Change<'_>) -> Result<u64, BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}

/// Writes over `bytes` fail with EFBIG ("File too large") instead of killing the process.
fn limit_file_size(bytes: u64) {
    // SAFETY: plain system calls on this process's signal disposition and limits.
    unsafe {
        assert_ne!(libc::signal(libc::SIGXFSZ, libc::SIG_IGN), libc::SIG_ERR);
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

fn assert_spill_failed(what: &str, r: Result<(), Error>) {
    match r {
        Err(Error::SpillFailed { path, step, source }) => {
            assert!(path.ends_with("cold-1.redb"), "{what}: path {path}");
            assert_eq!(source.raw_os_error(), Some(libc::EFBIG), "{what}: {source}");
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::FileTooLarge,
                "{what}: {step}"
            );
        }
        other => panic!("{what}: expected the writer's I/O failure, got {other:?}"),
    }
}

#[test]
fn a_spill_writer_that_cannot_write_reports_its_io_error_to_every_later_call_not_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CountingSink::default();
    let store = Store::builder(dir.path())
        .settings(StoreSettings {
            memory_budget_bytes: 2 << 20,
            ..Default::default()
        })
        .change_sink(sink.clone())
        .open()
        .unwrap();
    let values = store
        .value_state(ValueStateDescriptor::new("v", BytesCodec, BytesCodec))
        .unwrap();
    let lists = store
        .list_state(ListStateDescriptor::new("l", BytesCodec, U64Codec))
        .unwrap();
    let maps = store
        .map_state(MapStateDescriptor::new("m", BytesCodec, U64Codec, U64Codec))
        .unwrap();
    values.update(&b"first".to_vec(), &b"1".to_vec()).unwrap();
    limit_file_size(4 << 20);

    // Several writers, so that some wait on the full spill queue when the writer dies: they
    // used to get `Closed`. And flushes all along: one queued when the writer died used to
    // wait for ever.
    let first_errors: Vec<Result<(), Error>> = std::thread::scope(|s| {
        let mut threads: Vec<_> = (0..4u32)
            .map(|t| {
                let values = values.clone();
                s.spawn(move || {
                    for i in 0..1_000_000u32 {
                        let key = [t.to_be_bytes(), i.to_be_bytes()].concat();
                        values.update(&key, &vec![7u8; 200])?;
                    }
                    Ok(())
                })
            })
            .collect();
        threads.push(s.spawn(|| loop {
            store.flush()?;
        }));
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (t, r) in first_errors.into_iter().enumerate() {
        assert_spill_failed(&format!("thread {t}"), r);
    }

    // Every later call reports the same failure, and hands nothing to the WAL.
    let changes = sink.0.load(Ordering::SeqCst);
    assert_spill_failed("value get", values.get(&b"first".to_vec()).map(drop));
    assert_spill_failed("value update", values.update(&b"first".to_vec(), &vec![2]));
    assert_spill_failed("list add", lists.add(&b"k".to_vec(), &1));
    assert_spill_failed("map put", maps.put(&b"k".to_vec(), &1, &1));
    assert_spill_failed("flush", store.flush());
    assert_spill_failed("cleanup_expired", store.cleanup_expired(10).map(drop));
    assert_spill_failed(
        "register",
        store
            .value_state(ValueStateDescriptor::new("new", U64Codec, U64Codec))
            .map(drop),
    );
    assert_eq!(
        sink.0.load(Ordering::SeqCst),
        changes,
        "a failed call logged a change"
    );
    let message = store.flush().unwrap_err().to_string();
    assert!(
        message.contains("cold-1.redb") && message.contains("File too large"),
        "{message}"
    );

    // Closing reports it once more; only then is the store closed.
    assert_spill_failed("close", store.close());
    assert!(matches!(store.flush(), Err(Error::Closed)));
}
