//! The network-namespace harness itself (`tend_e2e::netns`): two instances
//! side by side in one test, each a minion connected to a master bound on
//! that instance's address; cutting one takes its minion down at its
//! master and leaves the other's alone, and healing it brings the minion
//! back. Where namespaces cannot be made (not root, no `ip`), the test
//! prints "skipped: <reason>".

use std::time::Duration;

use tend_e2e::netns::Netns;
use tend_e2e::{Daemon, Master, Minion, wait_until};

/// A master bound on `net`'s address (fast heartbeats and presence, the
/// library's defaults), and its minion `id` started inside `net`.
fn master_and_minion(
    net: &Netns,
    dir: &std::path::Path,
    id: &str,
) -> Result<(Master, Daemon), String> {
    let mut master = Master::new(&dir.join(format!("master-{id}")), "");
    let config = std::fs::read_to_string(master.config())
        .map_err(|e| format!("read master.toml: {e}"))?
        .replace("tcp://127.0.0.1:", &format!("tcp://{}:", net.master_ip()));
    std::fs::write(master.config(), config).map_err(|e| format!("write master.toml: {e}"))?;
    master.event_endpoint = master.event_endpoint.replace("127.0.0.1", net.master_ip());
    master.command_endpoint = master
        .command_endpoint
        .replace("127.0.0.1", net.master_ip());
    master.start();
    let minion = Minion::new(&dir.join(id), id, &master, "");
    let daemon = net.start_minion(&minion.dir);
    master.wait_connected(id);
    Ok((master, daemon))
}

fn connected(master: &Master, id: &str) -> bool {
    master
        .tend_json(&["minions"])
        .iter()
        .any(|m| m["id"] == id && m["connected"] == true)
}

#[test]
fn two_namespaces_at_once_and_a_cut_of_one_takes_down_only_its_minion() {
    let Some(a) = Netns::create_or_skip() else {
        return;
    };
    let b = Netns::create().expect("a second namespace beside the first");
    assert_ne!(a.name(), b.name());
    assert_ne!(a.master_ip(), b.master_ip());
    assert_ne!(a.minion_ip(), b.minion_ip());
    println!("the cut: {:?}", a.cut_by());
    let tmp = tempfile::tempdir().unwrap();
    let (master_a, _m1) = master_and_minion(&a, tmp.path(), "m1").unwrap();
    let (master_b, _m2) = master_and_minion(&b, tmp.path(), "m2").unwrap();

    // Each minion's namespace has its own address, not the other's.
    for (net, other) in [(&a, &b), (&b, &a)] {
        let out = net.run_in(&["ip", "-o", "-4", "addr", "show"]);
        let addrs = String::from_utf8_lossy(&out.stdout);
        assert!(
            addrs.contains(&format!(" {}/", net.minion_ip()))
                && !addrs.contains(&format!(" {}/", other.minion_ip())),
            "namespace {} has its own address only:\n{addrs}",
            net.name()
        );
    }

    // Cut twice: the second changes nothing.
    a.cut().unwrap();
    a.cut().unwrap();
    wait_until(
        Duration::from_secs(20),
        "master a to see m1 down after the cut",
        || {
            assert!(
                connected(&master_b, "m2"),
                "m2 went down while only a was cut"
            );
            (!connected(&master_a, "m1")).then_some(())
        },
    );
    // m2 stays up for longer than a presence timeout after that too.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        assert!(
            connected(&master_b, "m2"),
            "m2 went down while only a was cut"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        master_b.events(&["--tag", "minion/m2/down"]).is_empty(),
        "master b saw m2 down while only a was cut"
    );

    // Heal twice: the second changes nothing; m1 comes back.
    a.heal().unwrap();
    a.heal().unwrap();
    master_a.wait_connected("m1");
    assert!(connected(&master_b, "m2"));
}
