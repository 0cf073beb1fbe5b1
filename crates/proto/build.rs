//! Compiles `proto/tend/v1/*.proto` with protox (pure Rust), so building
//! tend needs no `protoc` on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files =
        ["event.proto", "minion.proto", "control.proto"].map(|f| root.join("tend/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    prost_build::Config::new()
        // A job keeps its trigger event for another master to finish it;
        // boxed, so every reply holding a job is not an event bigger.
        .boxed(".tend.v1.Job.trigger")
        .compile_fds(fds)?;
    Ok(())
}
