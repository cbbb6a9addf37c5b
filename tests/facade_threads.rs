//! The threading model (docs/guide.md "Threads"): state handles are used from many threads at
//! once while another thread commits. A commit covers every change that returned before it
//! was called, from any thread; a change running at the same time is wholly in or wholly out;
//! each thread's changes are recovered as a prefix of what it did, in its order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use millpond::state::{ListStateDescriptor, StringCodec, U64Codec, ValueStateDescriptor};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};

const WRITERS: usize = 4;

fn settings() -> Settings {
    Settings {
        // Snapshots in the background too: a commit races them as well.
        snapshot_after_changes: 5_000,
        ..Settings::default()
    }
}

#[test]
fn commits_cover_what_every_thread_finished_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let appended = || ListStateDescriptor::new("appended", StringCodec, U64Codec);
    let last = || ValueStateDescriptor::new("last", StringCodec, U64Codec);

    let opening = Millpond::builder(dir.path())
        .settings(settings())
        .open()
        .unwrap();
    let list = opening.store().list_state(appended()).unwrap();
    let value = opening.store().value_state(last()).unwrap();
    let job = Arc::new(opening.recover().unwrap());

    let done: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (list, value, done, stop) =
                (list.clone(), value.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let key = format!("writer-{t}");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Two changes for one step: recovery must never show one without the
                    // other unless the commit came between them (checked below).
                    list.add(&key, &n).unwrap();
                    value.update(&key, &n).unwrap();
                    done[t].store(n, Ordering::Release);
                }
            })
        })
        .collect();

    // The committer: before each commit it notes what every writer had finished; the commit
    // must cover at least that.
    let mut covered = vec![0u64; WRITERS];
    let mut commits = 0i64;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(3) || commits < 50 {
        let seen: Vec<u64> = done.iter().map(|d| d.load(Ordering::Acquire)).collect();
        commits += 1;
        let _durable = job
            .commit(&[SourceOffset {
                topic: "in".into(),
                partition: 0,
                next_offset: commits,
            }])
            .unwrap();
        covered = seen;
    }
    stop.store(true, Ordering::Relaxed);
    let finished: Vec<u64> = writers
        .into_iter()
        .enumerate()
        .map(|(t, w)| {
            w.join().unwrap();
            done[t].load(Ordering::Acquire)
        })
        .collect();
    // Changes after the last commit are discarded by recovery, as after a crash.
    Arc::try_unwrap(job).unwrap().close().unwrap();

    let opening = Millpond::builder(dir.path())
        .settings(settings())
        .open()
        .unwrap();
    let list = opening.store().list_state(appended()).unwrap();
    let value = opening.store().value_state(last()).unwrap();
    let job = opening.recover().unwrap();
    assert_eq!(job.resume_offset("in", 0), Some(commits));
    for t in 0..WRITERS {
        let key = format!("writer-{t}");
        let got = list.get(&key).unwrap();
        let n = got.len() as u64;
        // A prefix of the thread's appends, in its order.
        assert_eq!(got, (1..=n).collect::<Vec<_>>(), "writer {t}");
        assert!(
            n >= covered[t],
            "writer {t}: the last commit covered {} finished steps, recovery has {n}",
            covered[t]
        );
        assert!(n <= finished[t]);
        // The value write follows the append of the same step: it is there, or the commit
        // fell between the two (then the value is one step behind).
        let v = value.get(&key).unwrap().unwrap_or(0);
        assert!(
            v == n || v + 1 == n,
            "writer {t}: list at {n}, value at {v}"
        );
        assert!(covered[t] > 0, "writer {t} never got a commit in");
    }
    job.close().unwrap();
}
