//! Tells the tests what this machine can do, so a test that needs systemd
//! or dpkg as root is reported as ignored (with the reason) where it
//! cannot run, instead of passing without running. Looked at when the
//! crate is built.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(systemd)");
    println!("cargo::rustc-check-cfg=cfg(dpkg_as_root)");
    if Path::new("/run/systemd/system").is_dir() {
        println!("cargo::rustc-cfg=systemd");
    }
    // This process's owner: root or not.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root && Path::new("/usr/bin/dpkg-query").exists() {
        println!("cargo::rustc-cfg=dpkg_as_root");
    }
}
