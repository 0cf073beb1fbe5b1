//! A full disk at a minion's first contact with its master (issue 14,
//! item 10): the trust-on-first-use pin must not be left empty, so the
//! real master is accepted once space returns.
//!
//! Runs on a real, small tmpfs mounted over the minion's data dir (the
//! tests run as root); the mount is undone when the test ends, pass or fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tend_e2e::{Master, Minion, wait_until};

/// A tmpfs mounted at a path, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_path_buf())
    }

    /// Writes zeros into `filler` until the disk is full.
    fn fill(&self, filler: &Path) {
        use std::io::Write;
        let mut f = std::fs::File::create(filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("fill {}: {e}", filler.display()),
            }
        }
        // The last partial block, byte by byte.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn issue_14_item_10_a_full_disk_at_first_contact_does_not_poison_the_master_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    let dir = tmp.path().join("m");
    let disk = Tmpfs::mount(&dir.join("data"), "2m");
    // The minion starts with no master to talk to: it makes its key and
    // its outbox, but has pinned nothing yet.
    let mut minion = Minion::new(&dir, "web1", &master, "");
    minion.start();
    let filler = dir.join("data/filler");
    disk.fill(&filler);

    // First contact on a full disk: the pin cannot be written.
    master.start();
    wait_until(
        Duration::from_secs(30),
        "the minion to fail to record the master's key",
        || {
            minion
                .daemon()
                .log_text()
                .contains("cannot record the master's key")
                .then_some(())
        },
    );
    assert!(
        !master
            .tend_json(&["minions"])
            .iter()
            .any(|m| m["connected"] == true)
    );

    // Space returns: the real master is trusted and recorded, with no
    // restart and nothing to delete by hand.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !master
        .tend_json(&["minions"])
        .iter()
        .any(|m| m["id"] == "web1" && m["connected"] == true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "web1 did not connect once space returned:\n{}",
            minion.daemon().log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pin = std::fs::read_to_string(dir.join("data/master.fingerprint")).unwrap();
    let real = String::from_utf8(
        Command::new(tend_e2e::bin("tend-master"))
            .arg("--config")
            .arg(master.config())
            .arg("--fingerprint")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(pin.trim(), real.trim());

    // And after a restart too.
    let opened = |m: &mut Minion| {
        m.daemon()
            .log_text()
            .matches("session with the master open")
            .count()
    };
    let before = opened(&mut minion);
    minion.daemon().stop();
    minion.start();
    wait_until(Duration::from_secs(30), "web1 to reconnect", || {
        (opened(&mut minion) > before).then_some(())
    });
    master.wait_connected("web1");
    assert!(!minion.daemon().log_text().contains("first seen had"));
}
