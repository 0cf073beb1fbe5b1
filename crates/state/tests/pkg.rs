//! `pkg.installed` and `pkg.removed` for real: a small Debian package built
//! here with dpkg-deb, served from a local apt repository (no network),
//! installed and removed through apt-get and dpkg as the state does it.
//!
//! apt-get reads its sources from a config of this test's own
//! (`APT_CONFIG`): the machine's sources and package lists are not
//! touched; what is installed goes into the real dpkg database and is
//! purged at the end. This is its own test binary because it sets an
//! environment variable, which is only sound with no other test thread.
//!
//! It needs dpkg and root; elsewhere it is reported as ignored, with the
//! reason (build.rs looks at the machine), never passed without running.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tend_proto::v1::{Outcome, StateResult};
use tend_state::{ApplyOptions, Ledger, parse_state_file};

const PACKAGE: &str = "tend-test-probe";
const MARKER: &str = "/usr/share/tend-test-probe/marker";

fn apply(text: &str, test: bool) -> StateResult {
    let states = parse_state_file("t.toml", "t", text).unwrap_or_else(|e| panic!("{e}"));
    let ledger = Ledger::default();
    tend_state::apply(
        &states,
        &ApplyOptions {
            test,
            job: 1,
            ledger: Some(&ledger),
            backup_dir: None,
        },
    )
    .remove(0)
}

fn outcome(r: &StateResult) -> Outcome {
    Outcome::try_from(r.outcome).unwrap()
}

/// What dpkg says of the package: its status line, or None.
fn dpkg_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package, purged however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
    }
}

/// Builds the package and a flat repository holding it in `dir`, and an
/// apt config that uses only that repository; returns the config's path.
fn local_repository(dir: &Path) -> PathBuf {
    for sub in [
        "root/DEBIAN",
        "root/usr/share/tend-test-probe",
        "repo",
        "lists/partial",
        "cache/archives/partial",
        "parts",
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let root = dir.join("root");
    std::fs::write(root.join(MARKER.trim_start_matches('/')), "probe\n").unwrap();
    let control = format!(
        "Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: tend tests <tests@tend.invalid>\n\
         Description: a marker file for tend's package state tests\n"
    );
    std::fs::write(root.join("DEBIAN/control"), &control).unwrap();
    let file = format!("{PACKAGE}_1.0_all.deb");
    let deb = dir.join("repo").join(&file);
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&deb).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        dir.join("repo/Packages"),
        format!(
            "{control}Filename: ./{file}\nSize: {}\nSHA256: {sha}\n\n",
            bytes.len()
        ),
    )
    .unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("sources.list"),
        format!("deb [trusted=yes] file:{d}/repo ./\n"),
    )
    .unwrap();
    let conf = dir.join("apt.conf");
    std::fs::write(
        &conf,
        format!(
            "Dir::Etc::SourceList \"{d}/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/parts\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Acquire::AllowInsecureRepositories \"true\";\n"
        ),
    )
    .unwrap();
    conf
}

#[test]
#[cfg_attr(
    not(dpkg_as_root),
    ignore = "skipped: needs dpkg and root (build.rs found them missing here)"
)]
fn packages_install_and_remove_for_real() {
    let dir = tempfile::tempdir().unwrap();
    let conf = local_repository(dir.path());
    // SAFETY: the only test in this binary, set before anything else runs.
    unsafe { std::env::set_var("APT_CONFIG", &conf) };
    let _purge = Purge;
    let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
    assert_eq!(dpkg_status(), None, "{PACKAGE} installed before the test");

    let installed = format!("[p]\ntype = \"pkg.installed\"\nname = \"{PACKAGE}\"\n");
    let removed = format!("[p]\ntype = \"pkg.removed\"\nname = \"{PACKAGE}\"\n");

    let dry = apply(&installed, true);
    assert_eq!(outcome(&dry), Outcome::WouldChange, "{}", dry.comment);
    assert!(!Path::new(MARKER).exists(), "a dry run installed it");
    let first = apply(&installed, false);
    assert_eq!(outcome(&first), Outcome::Changed, "{}", first.comment);
    assert_eq!(first.comment, "installed (1.0)");
    assert_eq!(std::fs::read_to_string(MARKER).unwrap(), "probe\n");
    assert_eq!(dpkg_status().as_deref(), Some("install ok installed"));
    let again = apply(&installed, false);
    assert_eq!(outcome(&again), Outcome::Ok, "{}", again.comment);

    let dry = apply(&removed, true);
    assert_eq!(outcome(&dry), Outcome::WouldChange, "{}", dry.comment);
    assert!(Path::new(MARKER).exists(), "a dry run removed it");
    let first = apply(&removed, false);
    assert_eq!(outcome(&first), Outcome::Changed, "{}", first.comment);
    assert!(!Path::new(MARKER).exists());
    assert_ne!(dpkg_status().as_deref(), Some("install ok installed"));
    let again = apply(&removed, false);
    assert_eq!(outcome(&again), Outcome::Ok, "{}", again.comment);

    let missing = apply(
        "[x]\ntype = \"pkg.installed\"\nname = \"no-such-package-tend\"\n",
        false,
    );
    assert_eq!(outcome(&missing), Outcome::Failed, "{}", missing.comment);

    // The lists are fetched now: a dry run says what would be installed,
    // and refuses a name apt does not know, as the real run would (issue
    // 15, item 15: a made-up name "would be installed").
    let dry = apply(&installed, true);
    assert_eq!(outcome(&dry), Outcome::WouldChange, "{}", dry.comment);
    assert_eq!(dry.comment, "would be installed (1.0)");
    let missing = apply(
        "[x]\ntype = \"pkg.installed\"\nname = \"no-such-package-tend\"\n",
        true,
    );
    assert_eq!(outcome(&missing), Outcome::Failed, "{}", missing.comment);
    assert!(
        missing.comment.contains("no-such-package-tend")
            && missing.comment.contains("not known to apt"),
        "{}",
        missing.comment
    );
}
