//! An S3 endpoint that accepts connections and never answers must fail a call within the
//! configured time (`ArchiveSettings`), with `Error::TimedOut` naming the setting to change;
//! with object_store's own defaults it took 181 s.
//!
//! The endpoint is a TCP listener on 127.0.0.1 in this process: no S3 server is needed. This
//! file is its own test binary because it sets `AWS_*` variables for the whole process.

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use millpond_snapshot::{Archive, ArchiveSettings, Error};

/// Accepts connections and reads whatever comes, never answering; returns `http://host:port`.
fn silent_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_silent_endpoint_times_out_within_the_configured_time() {
    let endpoint = silent_endpoint();
    // The only test of this binary: nothing else reads the environment meanwhile.
    // Both names: the S3 services' environment sets AWS_ENDPOINT_URL too.
    std::env::set_var("AWS_ENDPOINT", &endpoint);
    std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
    let timeout = Duration::from_secs(1);
    let settings = ArchiveSettings {
        connect_timeout: timeout,
        request_timeout: timeout,
        retry_timeout: timeout,
        ..ArchiveSettings::default()
    };
    let archive = Archive::open_with("s3://silent/prefix", &settings).unwrap();

    for (what, call) in [
        (
            "list",
            Box::new(|| archive.latest().map(|_| ())) as Box<dyn Fn() -> _>,
        ),
        ("read", Box::new(|| archive.manifest_at(1).map(|_| ()))),
        ("gc", Box::new(|| archive.gc(1, Duration::ZERO).map(|_| ()))),
    ] {
        let started = Instant::now();
        let err = call().unwrap_err();
        let took = started.elapsed();
        assert!(
            took < 4 * timeout,
            "{what}: failed after {took:?}, more than 4 × the {timeout:?} timeout"
        );
        assert!(took >= timeout, "{what}: failed after {took:?}: {err}");
        match &err {
            Error::TimedOut { .. } => {}
            other => panic!("{what}: expected TimedOut, got {other:?}"),
        }
        assert!(err.is_transient(), "{what}");
        let message = err.to_string();
        for needle in ["timed out", "request_timeout", "--timeout-seconds"] {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} not in: {message}"
            );
        }
    }

    // The defaults (30 s per request, no retry after 10 s): well under a minute.
    let archive = Archive::open("s3://silent/prefix").unwrap();
    let started = Instant::now();
    let err = archive.latest().unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::TimedOut { .. }), "{err:?}");
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(45),
        "with the defaults: failed after {took:?}"
    );

    let zero = ArchiveSettings {
        request_timeout: Duration::ZERO,
        ..ArchiveSettings::default()
    };
    match Archive::open_with("s3://silent/prefix", &zero) {
        Err(Error::Invalid { reason }) => assert!(reason.contains("request_timeout"), "{reason}"),
        other => panic!("a zero timeout gave {other:?}"),
    }
}
