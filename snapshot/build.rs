// Compiles proto/ with protox (pure Rust), so that no system protoc is needed. The types of
// common.proto (state kinds, source offsets) are millpond-wal's, shared with its records:
// nothing is generated for them here (`extern_path`), and proto/millpond/common/ is a copy of
// millpond-wal's, kept only so that manifest.proto's import resolves in the published crate.
use std::path::Path;

const COMMON: &str = "proto/millpond/common/v1/common.proto";
/// millpond-wal's copy, the one the Rust types come from; present in the workspace only.
const WAL_COMMON: &str = "../wal/proto/millpond/common/v1/common.proto";

fn main() {
    let proto = "proto/millpond/snapshot/v1/manifest.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed={COMMON}");
    check_common_copy();
    let fds = protox::compile([proto], ["proto"]).expect("proto/ must compile");
    prost_build::Config::new()
        .extern_path(".millpond.common.v1", "::millpond_wal::proto")
        .compile_fds(fds)
        .expect("generating Rust from proto/");
}

/// In the workspace, fails the build if the copy of common.proto drifted from millpond-wal's:
/// the manifest would otherwise be generated against types the WAL crate does not have. A
/// published crate has no `../wal`, and nothing to compare with.
fn check_common_copy() {
    if !Path::new(WAL_COMMON).exists() {
        return;
    }
    println!("cargo:rerun-if-changed={WAL_COMMON}");
    let ours = std::fs::read(COMMON).expect("reading the copy of common.proto");
    let wal = std::fs::read(WAL_COMMON).expect("reading millpond-wal's common.proto");
    assert!(
        ours == wal,
        "snapshot/{COMMON} differs from wal/proto/millpond/common/v1/common.proto: copy \
         millpond-wal's over it (`cp wal/{COMMON} snapshot/{COMMON}`); it is the one the \
         Rust types come from"
    );
}
