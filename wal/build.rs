// Compiles proto/ with protox (pure Rust), so that no system protoc is needed. wal.proto
// imports common.proto; both are generated here, and millpond-snapshot refers to the common
// types through `millpond_wal::proto` instead of generating its own (it keeps a copy of
// common.proto only to resolve its import; its build checks that the copy equals this one).
fn main() {
    let proto = "proto/millpond/wal/v1/wal.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=proto/millpond/common/v1/common.proto");
    let fds = protox::compile([proto], ["proto"]).expect("proto/ must compile");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generating Rust from proto/");
}
