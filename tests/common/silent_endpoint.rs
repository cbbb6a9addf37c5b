//! A server that never answers, for the tests of timeouts.

use std::io::Read;
use std::net::TcpListener;

/// An S3 endpoint that accepts connections and reads whatever comes, never answering;
/// returns `http://host:port`.
pub fn silent_endpoint() -> String {
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
