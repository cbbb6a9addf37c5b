//! Exactly-once on the embedded default (local WAL segments, `file://` snapshots, no
//! services): the job runs as a child process and is killed with SIGKILL at random moments,
//! at least 20 times (during WAL flushes, snapshot writes and recovery itself), and restarted
//! each time. At the end every key holds exactly the records of the input, each applied once.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{GeneratedInput, CHILD_ENV};
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
    GeneratedInput::new(PARTITIONS, RECORDS, KEYS)
}

/// The job, when this binary runs as a child (see `common::child_command`); a no-op test
/// otherwise.
#[test]
fn child() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let mut input = input();
    let builder = millpond::Millpond::builder(&dir).settings(common::job_settings());
    common::run_job(builder, &dir, &mut input, None);
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
    let report = common::kill_loop("child", &dir, &[], 20, 150..1200, || {
        common::unfinished_snapshot(&dir, &listing, "", &archive)
    });
    eprintln!("{report:?}");
    assert!(report.kills >= 20);
    assert!(
        report.during_snapshot > 0,
        "no kill landed during a snapshot: {report:?}"
    );
    let input = input();
    common::check_exactly_once(
        millpond::Millpond::builder(&dir).settings(common::job_settings()),
        &input.expected(),
        &input.ends(),
        "generated",
    );
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
