//! Tells the tests whether this machine runs systemd, so a test that needs
//! it (or needs it absent) is reported as ignored, with the reason, where
//! it cannot run, instead of passing without running. Looked at when the
//! crate is built.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(systemd)");
    if std::path::Path::new("/run/systemd/system").is_dir() {
        println!("cargo::rustc-cfg=systemd");
    }
}
