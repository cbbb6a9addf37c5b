//! Exactly-once on the embedded default (local WAL segments, `file://` snapshots, no
//! services): the job runs as a child process and is killed with SIGKILL at random moments,
//! at least 20 times (during WAL flushes, snapshot writes and recovery itself), and restarted
//! each time. Every restart checks the restored state against the input below its resume
//! offsets; at the end every key holds exactly the records of the input, each applied once.
//!
//! `scripts/soak` runs the same test with 1000 kills (`MILLPOND_SOAK_*`, see `common::Soak`),
//! and the full-disk test, which needs a small file system it mounts.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{GeneratedInput, Soak, CHILD_ENV, EXIT_FAILED};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

const PARTITIONS: usize = 4;
// Debug builds (the test command) process several times slower: less input lasts as long.
const RECORDS: usize = if cfg!(debug_assertions) {
    200_000
} else {
    400_000
};
const KEYS: usize = 5_000;

fn input() -> GeneratedInput {
    GeneratedInput::new(
        PARTITIONS,
        Soak::from_env().records.unwrap_or(RECORDS),
        KEYS,
    )
}

/// The job, when this binary runs as a child (see `common::child_command`); a no-op test
/// otherwise.
#[test]
fn child() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let mut input = input();
    let model = input.clone();
    let builder = millpond::Millpond::builder(&dir).settings(common::job_settings());
    common::run_job(builder, &dir, &mut input, &model, Soak::from_env().rate);
}

#[test]
fn killed_at_random_moments_the_state_is_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("job");
    let archive_dir = dir.join("snapshots");
    std::fs::create_dir_all(&archive_dir).unwrap();
    let archive =
        millpond::snapshot::Archive::open(&format!("file://{}", archive_dir.display())).unwrap();
    let listing: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(&archive_dir).unwrap());
    let soak = Soak::from_env();
    let kills = soak.kills.unwrap_or(20);
    let alive_ms = soak.alive_ms.unwrap_or(150..1200);
    let report = common::kill_loop("child", &dir, &[], kills, alive_ms, || {
        common::unfinished_snapshot(&dir, &listing, "", &archive)
    });
    eprintln!("{}", report.summary("embedded"));
    assert!(report.kills >= kills);
    assert!(
        report.checked_restarts > 0,
        "no restart got through its check"
    );
    assert!(
        report.during_snapshot > 0,
        "no kill landed during a snapshot: {report:?}"
    );
    assert!(
        common::compactions_committed(&dir) > 0,
        "no compaction committed while the job ran"
    );
    let builder = millpond::Millpond::builder(&dir).settings(common::job_settings());
    if soak.kills.is_some() {
        let records = common::check_at_resume(builder, &input(), "generated");
        eprintln!("SOAK embedded: after the last kill, {records} records checked at resume");
    } else {
        common::check_exactly_once(builder, &input(), "generated");
    }
    // The archive the kills left behind is sound.
    let latest = archive.latest().unwrap().expect("snapshots were written");
    archive
        .verify(&latest, |_| {})
        .expect("the latest snapshot verifies");
}

#[test]
fn a_second_process_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let first = millpond::Millpond::builder(tmp.path()).open().unwrap();
    let err = millpond::Millpond::builder(tmp.path()).open().unwrap_err();
    assert!(matches!(err, millpond::Error::Locked { .. }), "{err}");
    drop(first);
    millpond::Millpond::builder(tmp.path()).open().unwrap();
}

/// `scripts/soak`'s full-disk run: the data directory on a small file system (a tmpfs the
/// script mounts, nearly filled with a ballast file) fills up. The job must stop with a clear
/// error naming the full disk (not a panic, not `Closed`); once the ballast is deleted, the
/// instance reopens at its last acknowledged commit (or a later one whose acknowledgement the
/// failure cut off), its state is the input's below the resume offsets, and the job finishes
/// the input exactly once.
#[test]
#[ignore = "needs a small file system: run by scripts/soak"]
fn on_a_full_disk_the_job_stops_with_a_clear_error_and_resumes_at_its_last_acknowledged_commit() {
    let full = Soak::from_env()
        .full_dir
        .expect("MILLPOND_SOAK_FULL_DIR: a directory on a small file system");
    let ballast = full.join("ballast");
    assert!(
        ballast.exists(),
        "{} fills the file system",
        ballast.display()
    );
    let dir = full.join("job");
    let outside = tempfile::tempdir().unwrap();
    let acks = outside.path().join("acks");
    let envs = [("MILLPOND_E2E_ACKS", acks.display().to_string())];

    let started = std::time::Instant::now();
    let mut child = common::child_command("child", &dir, &envs).spawn().unwrap();
    let deadline = started + std::time::Duration::from_secs(600);
    let Some(status) = common::wait_until(&mut child, deadline) else {
        child.kill().unwrap();
        panic!("the job neither failed nor finished in 10 minutes on a full disk");
    };
    let stderr = common::read_stderr(&mut child);
    assert_eq!(
        status.code(),
        Some(EXIT_FAILED),
        "expected the job to stop on the full disk ({status}); a success means the input \
         ended first: shrink the file system\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "a panic on a full disk:\n{stderr}"
    );
    let error = stderr
        .lines()
        .find_map(|l| l.strip_prefix("the instance failed: "))
        .unwrap_or_else(|| panic!("no error reported:\n{stderr}"))
        .to_owned();
    assert!(
        error.contains("No space left on device"),
        "the error does not say the disk is full: {error}"
    );
    assert!(!error.contains("closed"), "reported as closed: {error}");
    let acked = common::read_acks(&acks);
    assert!(
        !acked.is_empty(),
        "no commit was acknowledged before the disk filled"
    );

    // Space comes back (something that is not millpond's goes), and the instance reopens.
    std::fs::remove_file(&ballast).unwrap();
    let opening = millpond::Millpond::builder(&dir)
        .settings(common::job_settings())
        .open()
        .expect("reopen after space was freed");
    let states = common::States::register(opening.store());
    let job = opening.recover().expect("recover after space was freed");
    let mut ahead = 0;
    for (partition, at) in &acked {
        let resumed = job.resume_offset("generated", *partition).unwrap_or(0);
        assert!(
            resumed >= *at,
            "partition {partition}: resumes at {resumed}, below its acknowledged {at}"
        );
        ahead += u32::from(resumed > *at);
    }
    let model = input();
    let records = common::check_restored(&states, &model, job.resume_offsets(), "generated")
        .unwrap()
        .unwrap_or_else(|v| panic!("restored state after the full disk: {v}"));
    job.close().unwrap();

    // And finishes the input.
    let report = common::kill_loop(
        "child",
        &dir,
        &envs,
        0,
        0..1,
        std::collections::BTreeSet::new,
    );
    common::check_exactly_once(
        millpond::Millpond::builder(&dir).settings(common::job_settings()),
        &model,
        "generated",
    );
    eprintln!(
        "SOAK full-disk: stopped_with=\"{error}\" acked_partitions={} resumed_ahead_of_ack={ahead} \
         records_checked={records} finished_runs={} elapsed_s={:.0}",
        acked.len(),
        report.runs,
        started.elapsed().as_secs_f64()
    );
}
