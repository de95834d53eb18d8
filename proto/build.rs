//! Generates the tonic clients and servers. protoc comes from the
//! `protoc-bin-vendored` crate so a fresh machine needs only Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "proto/mesh/destination.proto",
        "proto/mesh/policy.proto",
        "proto/mesh/identity.proto",
        "proto/mesh/tap.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .codec_path("crate::codec::Prost")
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
