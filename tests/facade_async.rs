//! The async API inside tokio runtimes of both flavours, and the blocking API called where a
//! runtime runs (it must block, not panic): open, recover, commit, snapshot and close.

use millpond::state::{StringCodec, U64Codec, ValueStateDescriptor};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};

fn counts() -> ValueStateDescriptor<String, u64> {
    ValueStateDescriptor::new("counts", StringCodec, U64Codec)
}

fn at(next_offset: i64) -> SourceOffset {
    SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset,
    }
}

fn quiet() -> Settings {
    Settings {
        snapshot_after_changes: u64::MAX,
        snapshot_after_wal_bytes: u64::MAX,
        snapshot_interval_max: None,
        ..Settings::default()
    }
}

/// The whole life of an instance, twice (the second recovers the first's state), with only
/// async calls.
async fn life(dir: std::path::PathBuf) {
    for round in 0..2u64 {
        let opening = Millpond::builder(&dir)
            .settings(quiet())
            .open_async()
            .await
            .unwrap();
        let state = opening.store().value_state(counts()).unwrap();
        let job = std::sync::Arc::new(opening.recover_async().await.unwrap());
        assert_eq!(
            state.get(&"k".into()).unwrap(),
            round.checked_sub(1).map(|_| 10)
        );
        // Commits from several tasks at once; each resolves once durable.
        let tasks: Vec<_> = (1..=10i64)
            .map(|i| {
                let (job, state) = (job.clone(), state.clone());
                tokio::spawn(async move {
                    state.update(&format!("task-{i}"), &(i as u64)).unwrap();
                    let ticket = job.commit_async(&[at(i)]).await.unwrap();
                    assert!(ticket.is_durable());
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        state.update(&"k".into(), &10).unwrap();
        let _durable = job.commit_async(&[at(100)]).await.unwrap();
        let report = job.snapshot_now_async().await.unwrap();
        assert!(report.is_some());
        // Nothing committed since: no snapshot to write.
        assert!(job.snapshot_now_async().await.unwrap().is_none());
        std::sync::Arc::into_inner(job)
            .unwrap()
            .close_async()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_life_on_a_multi_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    life(dir.path().to_owned()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn async_life_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    life(dir.path().to_owned()).await;
}

/// What a user writes first in `#[tokio::main]`: the blocking calls. They block the thread
/// (the guide says to use the async ones there) but never panic, and dropping the instance
/// there is fine too.
#[tokio::test(flavor = "current_thread")]
async fn blocking_calls_inside_a_runtime_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let opening = Millpond::builder(dir.path())
        .settings(quiet())
        .open()
        .unwrap();
    let state = opening.store().value_state(counts()).unwrap();
    let job = opening.recover().unwrap();
    state.update(&"k".into(), &1).unwrap();
    let _durable = job.commit(&[at(1)]).unwrap();
    assert!(job.snapshot_now().unwrap().is_some());
    drop(job); // closes: joins the snapshot thread, drops the archive's runtime
    let job = Millpond::builder(dir.path())
        .settings(quiet())
        .open()
        .unwrap()
        .recover()
        .unwrap();
    assert_eq!(job.resume_offset("in", 0), Some(1));
    job.close().unwrap();
}

/// A commit future dropped before it resolves loses nothing: the marker was appended, and a
/// later commit covers it anyway.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_commit_future_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let opening = Millpond::builder(dir.path())
        .settings(quiet())
        .open_async()
        .await
        .unwrap();
    let state = opening.store().value_state(counts()).unwrap();
    let job = opening.recover_async().await.unwrap();
    state.update(&"k".into(), &5).unwrap();
    {
        let offsets = [at(5)];
        let fut = job.commit_async(&offsets);
        drop(fut); // never polled: nothing appended
    }
    state.update(&"k".into(), &6).unwrap();
    let _durable = job.commit_async(&[at(6)]).await.unwrap();
    job.close_async().await.unwrap();
    let opening = Millpond::builder(dir.path())
        .settings(quiet())
        .open_async()
        .await
        .unwrap();
    let state = opening.store().value_state(counts()).unwrap();
    let job = opening.recover_async().await.unwrap();
    assert_eq!(state.get(&"k".into()).unwrap(), Some(6));
    assert_eq!(job.resume_offset("in", 0), Some(6));
    job.close_async().await.unwrap();
}
