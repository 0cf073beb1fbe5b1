//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through
//! the same function its fuzzer calls, so an input that once crashed a
//! decoder, kept in the corpus, fails `cargo test` if the crash comes back.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use tend_fuzz_targets::TARGETS;

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

/// Runs `target` on every file in `dir`; returns the files it panicked on,
/// with the panic's message, and how many files it ran.
fn replay(dir: &Path, target: fn(&[u8])) -> (Vec<String>, usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    let mut crashes = Vec::new();
    for file in &files {
        let data = std::fs::read(file)
            .unwrap_or_else(|e| panic!("cannot read corpus file {}: {e}", file.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            crashes.push(format!("{}: {message}", file.display()));
        }
    }
    (crashes, files.len())
}

#[test]
fn every_target_has_a_corpus_and_a_fuzzer() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, _) in TARGETS {
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
        assert!(
            corpora().join(name).is_dir(),
            "fuzz/corpus/{name} is missing"
        );
    }
}

#[test]
fn the_replay_reports_an_input_that_panics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fine"), b"fine").unwrap();
    std::fs::write(dir.path().join("crash-1"), b"boom").unwrap();
    fn target(data: &[u8]) {
        assert!(data != b"boom", "the known crashing input");
    }
    let (crashes, count) = replay(dir.path(), target);
    assert_eq!(count, 2);
    assert_eq!(crashes.len(), 1, "{crashes:?}");
    assert!(crashes[0].contains("crash-1"), "{crashes:?}");
    assert!(
        crashes[0].contains("the known crashing input"),
        "{crashes:?}"
    );
}

#[test]
fn every_corpus_replays_without_a_panic() {
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let (crashes, count) = replay(&corpora().join(name), *target);
        assert!(count > 0, "the {name} corpus is empty");
        if !crashes.is_empty() {
            failures.push(format!(
                "fuzz target {name} panicked on {} of {count} corpus files:\n{}",
                crashes.len(),
                crashes.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
