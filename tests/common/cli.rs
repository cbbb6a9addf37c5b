//! Running the `millpond` binary from the CLI tests, and reading what it printed.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::ffi::OsStr;
use std::process::{Command, Output};

/// Runs `millpond` with `args`, without the environment variables that would point it at
/// another store or change its timeouts.
pub fn millpond<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_millpond"))
        .args(args)
        .env_remove("MILLPOND_STORE")
        .env_remove("MILLPOND_TIMEOUT_SECONDS")
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// Exit code 1 and one `error: …` line containing `needle`, no panic.
#[track_caller]
pub fn assert_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(o)
    );
    assert!(err.starts_with("error: "), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}
