//! The master's key store is files: reading them must never hold the
//! runtime that answers everything else (issue 14, item 4). A key file
//! that blocks (a FIFO here, as a hung network disk would) may stall the
//! key commands that read it, and nothing else.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tend_e2e::{Master, bin};

#[test]
fn issue_14_item_4_a_stalled_key_store_does_not_stall_the_master() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "auto_accept = false");
    master.start();
    // A "key" whose read never returns: a FIFO nobody writes.
    let fifo = master.dir.join("data/keys/minions/pending/web9");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());

    // More key listings than the runtime has threads, each stuck on it.
    let mut stuck: Vec<_> = (0..6)
        .map(|_| {
            Command::new(bin("tend"))
                .args(["--master", &master.control, "keys", "list"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every other request is still answered, promptly, for as long as
    // the listings are stuck.
    let until = Instant::now() + Duration::from_secs(3);
    let mut answered = 0;
    while Instant::now() < until || answered < 3 {
        let start = Instant::now();
        let out = master.tend(&["status"]);
        assert!(
            out.status.success(),
            "tend status while the key store is stalled: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tend status took {:?}",
            start.elapsed()
        );
        answered += 1;
    }
    assert!(
        stuck.iter_mut().all(|c| c.try_wait().unwrap().is_none()),
        "the listings reached the stalled key"
    );
    for child in &mut stuck {
        let _ = child.kill();
        let _ = child.wait();
    }
}
