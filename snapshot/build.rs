// Compiles proto/ with protox (pure Rust), so that no system protoc is needed.
fn main() {
    let proto = "../proto/millpond/snapshot/v1/manifest.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto"]).expect("proto/ must compile");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generating Rust from proto/");
}
