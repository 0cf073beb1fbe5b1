//! Independent adversarial review (review4) of the descriptor-relative
//! file states (`crates/state/src/at/`): attacks a local user can make on
//! the walk that opens a state's parent directory. Each test here failed
//! on the code it was written against and is marked `#[ignore]` with the
//! finding until it is fixed.
//!
//! Needs root (the attacker runs as uid 65534 through `setpriv`); skips
//! itself otherwise.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tend_proto::v1::{Outcome, StateResult};
use tend_state::{ApplyOptions, Ledger, State, parse_state_file};

fn states(text: &str) -> Vec<State> {
    parse_state_file("t.toml", "t", text).unwrap_or_else(|e| panic!("{e}"))
}

fn apply(s: &[State]) -> Vec<StateResult> {
    let ledger = Ledger::default();
    tend_state::apply(
        s,
        &ApplyOptions {
            test: false,
            job: 1,
            ledger: Some(&ledger),
            backup_dir: None,
        },
    )
}

fn outcome(r: &StateResult) -> Outcome {
    Outcome::try_from(r.outcome).unwrap()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Runs `sh -c script` as uid/gid 65534 (nobody), to completion.
fn as_nobody(script: &str) {
    let st = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .expect("setpriv and sh");
    assert!(st.success(), "the attacker's script failed: {script}");
}

/// The walk trusts a symlink in the parent path when root owns it, on the
/// grounds that "only its owner or a writer of its directory can change
/// it". But a writer of its directory can *move* it: `rename(2)` needs
/// write access to the directories, not ownership of the link, and the
/// moved link is still root's. Root-owned directory links in a user's
/// directory are what `file.symlink` itself makes (it runs as root).
///
/// Here the operator manages `~nobody/.config/app -> <dir outside the
/// home>` (a `file.symlink`) and `~nobody/.ssh/authorized_keys` (a
/// `file.managed`). nobody renames its `.ssh` away and the root-owned
/// `.config/app` link to `.ssh`; the next apply writes authorized_keys
/// (as root, through the link) into the directory outside its home.
#[test]
fn review4_a_root_owned_link_moved_by_a_user_does_not_redirect_a_state() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A root-only directory outside the user's home.
    let outside = dir.path().join("etc-app");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    // nobody's home, with its own .config and .ssh.
    let home = dir.path().join("home");
    for d in ["", ".config", ".ssh"] {
        let p = home.join(d);
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let link = home.join(".config/app");
    let keys = home.join(".ssh/authorized_keys");
    let text = format!(
        "[app-config]\ntype = \"file.symlink\"\npath = {:?}\ntarget = {:?}\n\n\
         [keys]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"ssh-ed25519 OPERATOR\\n\"\nuser = \"nobody\"\nmode = \"0600\"\n",
        link.display(),
        outside.display(),
        keys.display()
    );
    let s = states(&text);
    let r = apply(&s);
    assert!(
        r.iter().all(|r| outcome(r) == Outcome::Changed),
        "first apply: {:?}",
        r.iter().map(|r| &r.comment).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::symlink_metadata(&link).unwrap().uid(),
        0,
        "file.symlink made a root-owned link in the user's directory"
    );
    assert!(!outside.join("authorized_keys").exists());

    // The attack: two renames in directories nobody owns.
    as_nobody(&format!(
        "cd {:?} && mv .ssh .ssh.old && mv .config/app .ssh",
        home.display()
    ));
    let moved = std::fs::symlink_metadata(home.join(".ssh")).unwrap();
    assert!(moved.file_type().is_symlink() && moved.uid() == 0);

    // The next apply of the same states (the link state alone now
    // recreates .config/app; the key state runs through ~/.ssh).
    let _ = apply(&s);
    assert!(
        !outside.join("authorized_keys").exists(),
        "the state for {} wrote {} as root, outside the user's home, through a root-owned link the user moved into the path",
        keys.display(),
        outside.join("authorized_keys").display()
    );
}

/// The same move turns `file.absent` into a removal outside the home: a
/// root-only file in the directory the moved link points at is deleted.
#[test]
fn review4_a_moved_root_owned_link_does_not_let_file_absent_delete_outside() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let outside = dir.path().join("etc-app");
    std::fs::create_dir(&outside).unwrap();
    let precious = outside.join("id_rsa");
    std::fs::write(&precious, "root's\n").unwrap();
    std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = dir.path().join("home");
    for d in ["", ".config", ".ssh"] {
        let p = home.join(d);
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    let link = home.join(".config/app");
    std::os::unix::fs::symlink(&outside, &link).unwrap(); // root's, as file.symlink makes it
    as_nobody(&format!(
        "cd {:?} && mv .ssh .ssh.old && mv .config/app .ssh",
        home.display()
    ));
    let text = format!(
        "[old-key]\ntype = \"file.absent\"\npath = {:?}\n",
        Path::new(&home).join(".ssh/id_rsa").display()
    );
    let _ = apply(&states(&text));
    assert!(
        precious.exists(),
        "file.absent on ~/.ssh/id_rsa removed {} through a root-owned link the user moved",
        precious.display()
    );
}
