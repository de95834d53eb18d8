//! Link flags of the `mesh-proxy` binary.

fn main() {
    // Packed relative relocations (DT_RELR, glibc ≥ 2.36): the startup
    // relocation table shrinks from ~400 KB to a few KB, and with it the
    // pages every proxy has resident.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo::rustc-link-arg-bin=mesh-proxy=-Wl,-z,pack-relative-relocs");
    }
}
