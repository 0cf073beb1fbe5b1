//! Sessions under concurrency: frames are sealed on one task and sent from
//! another (requests and acknowledgements on tokio tasks, heartbeat answers
//! on the socket thread, replies and heartbeats on different minion tasks),
//! so they can leave in another order than they were sealed. An honest
//! peer's frames must never be refused as replays for that, and every
//! request must be answered.

use std::process::Output;
use std::time::Duration;

use tend_e2e::{Master, Minion, free_port, wait_until};

/// `tend_minion_bus_frames_replayed_total` from the minion's metrics.
fn minion_replayed(addr: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tend\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.lines()
        .find_map(|l| l.strip_prefix("tend_minion_bus_frames_replayed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("the minion exports frames_replayed:\n{raw}")) as u64
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} was not answered: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn concurrent_requests_heartbeats_and_floods_drop_no_honest_frame_as_a_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    // Heartbeats as often as the master allows, so heartbeat answers
    // (sealed and sent at once on the socket thread) cross the requests
    // and acknowledgements sealed on tokio tasks as often as possible.
    let config = std::fs::read_to_string(master.config()).unwrap();
    std::fs::write(
        master.config(),
        config.replace("heartbeat_ms = 200", "heartbeat_ms = 10"),
    )
    .unwrap();
    let target = tmp.path().join("target");
    master.state_file(
        "touch.toml",
        &format!(
            "[touch]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"hi\\n\"\n",
            target.display()
        ),
    );
    master.start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut minion = Minion::new(
        &tmp.path().join("m1"),
        "m1",
        &master,
        &format!("metrics_listen = {metrics:?}"),
    );
    minion.start();
    master.wait_connected("m1");

    // Event floods: acknowledgements stream down while requests go.
    let floods: Vec<_> = (0..2)
        .map(|_| minion.send_in_background("flood", 50_000))
        .collect();
    // Many operators at once: applies, runs and pings.
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let control = master.control.clone();
            std::thread::spawn(move || {
                for i in 0..15 {
                    let (what, args): (&str, Vec<&str>) = match (w + i) % 3 {
                        0 => ("apply", vec!["apply", "m1", "touch", "--timeout", "30"]),
                        1 => ("run", vec!["run", "m1", "--timeout", "30", "--", "true"]),
                        _ => ("ping", vec!["ping", "m1", "--timeout", "30"]),
                    };
                    ok(what, &tend_e2e::tend_at(&control, &args));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("every request answered");
    }
    for f in floods {
        ok("the flood", &f.wait_with_output().unwrap());
    }
    wait_until(
        Duration::from_secs(120),
        "every flooded event acknowledged",
        || {
            master
                .tend_json(&["minions"])
                .iter()
                .any(|m| m["id"] == "m1" && m["acked_seq"].as_u64() >= Some(100_000))
                .then_some(())
        },
    );
    let master_replayed = master.counters()["bus_frames_replayed"]
        .as_u64()
        .expect("the master counts frames_replayed");
    assert_eq!(
        master_replayed, 0,
        "the master refused honest frames as replays"
    );
    assert_eq!(
        minion_replayed(&metrics),
        0,
        "the minion refused honest frames as replays"
    );
}
