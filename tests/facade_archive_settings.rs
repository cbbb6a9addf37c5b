//! `Builder::snapshots_url_with` gives the instance's S3 archive its `ArchiveSettings`: against
//! an endpoint that accepts connections and never answers, `open` fails within the configured
//! timeout, not object_store's or the defaults' (30 s a request).
//!
//! The endpoint is a TCP listener in this process. This file is its own test binary because it
//! sets `AWS_*` variables for the whole process.

use std::time::{Duration, Instant};

use millpond::snapshot::ArchiveSettings;

mod common {
    pub mod silent_endpoint;
}
use common::silent_endpoint::silent_endpoint;

#[test]
fn open_against_a_silent_s3_endpoint_fails_within_the_archive_settings_timeout() {
    let endpoint = silent_endpoint();
    // The only test of this binary: nothing else reads the environment meanwhile.
    for (name, value) in [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ] {
        std::env::set_var(name, value);
    }
    let timeout = Duration::from_secs(1);
    let settings = ArchiveSettings {
        connect_timeout: timeout,
        request_timeout: timeout,
        retry_timeout: timeout,
        ..ArchiveSettings::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = millpond::Millpond::builder(dir.path())
        .snapshots_url_with("s3://silent/job", settings)
        .open()
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took < 4 * timeout,
        "failed after {took:?}, more than 4 × the {timeout:?} timeout: {err}"
    );
    match &err {
        millpond::Error::Snapshot(millpond::snapshot::Error::TimedOut { .. }) => {}
        other => panic!("expected a snapshot TimedOut, got {other:?}"),
    }
}
