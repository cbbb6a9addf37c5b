// Compiles proto/ with protox (pure Rust), so that no system protoc is needed. The types of
// common.proto (state kinds, source offsets) are millpond-wal's, shared with its records.
fn main() {
    let proto = "../proto/millpond/snapshot/v1/manifest.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=../proto/millpond/common/v1/common.proto");
    let fds = protox::compile([proto], ["../proto"]).expect("proto/ must compile");
    prost_build::Config::new()
        .extern_path(".millpond.common.v1", "::millpond_wal::proto")
        .compile_fds(fds)
        .expect("generating Rust from proto/");
}
