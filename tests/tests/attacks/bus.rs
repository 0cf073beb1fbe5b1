//! The wire: replies only from the session asked, and nothing an
//! unauthenticated peer sends (parts, connections, hellos) grows the
//! master without bound or shuts accepted peers out.

use super::*;
use tend_proto::v1::{Reply, RunResult, reply};

/// Finding 1: an accepted minion "mallory" answers request ids it was
/// never sent (ids were sequential, and a reply was matched by id alone),
/// claiming web1's run printed its text and failed.
#[test]
fn finding_1_a_reply_from_another_session_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut web1 = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    web1.start();
    master.wait_connected("web1");
    let mallory = handshake(
        &master.command_endpoint,
        Arc::new(Identity::ephemeral().unwrap()),
        "mallory",
        PeerKind::Minion,
    )
    .unwrap();

    let control = master.control.clone();
    let run = std::thread::spawn(move || {
        tend_e2e::tend_at(
            &control,
            &["run", "web1", "--json", "--", "sleep 2; echo REAL"],
        )
    });
    // While web1 works, mallory answers every small id, over and over:
    // the ids the old master handed out in sequence.
    let mut forged = 0u64;
    while !run.is_finished() {
        for id in 1..=300u64 {
            let frame = mallory.seal(minion_message::Body::Reply(Reply {
                id,
                body: Some(reply::Body::Run(RunResult {
                    job: 0,
                    status: 1,
                    stdout: "FORGED by mallory\n".into(),
                    stderr: String::new(),
                })),
            }));
            mallory.socket.send(frame, 0).unwrap();
            forged += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let job: serde_json::Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from tend run: {text}"));
    let result = &job["minions"][0];
    assert_eq!(result["minion"], "web1", "{job}");
    assert!(
        !text.contains("FORGED"),
        "mallory's output was shown as web1's: {text}"
    );
    assert!(
        text.contains("REAL"),
        "web1's own output is missing: {text}"
    );
    assert_eq!(result["status"], "ok", "a forged failed result: {job}");
    assert_eq!(job["status"], "ok", "{job}");
    // Every forged reply was refused and counted.
    wait_until(
        Duration::from_secs(20),
        "every forged reply to be counted as refused",
        || (counter(&master, "bus_replies_refused") >= forged).then_some(()),
    );
}

/// Finding 13: the version a peer states in its Hello is signed with the
/// rest of the transcript, so a man in the middle cannot change it.
#[test]
fn finding_13_the_hello_version_is_signed() {
    let master = tend_bus::wire::Responder::new(Arc::new(Identity::ephemeral().unwrap()));
    let peer = Arc::new(Identity::ephemeral().unwrap());
    let (init, mut hello) = Initiator::start(peer, "web1", PeerKind::Minion, "1.0.0").unwrap();
    // On the path: the Hello's version is rewritten before the master sees it.
    hello.version = "0.0.1-downgraded".into();
    let challenge = master.on_hello(&hello, b"conn-1").unwrap();
    assert!(
        init.finish(&challenge).is_err(),
        "a handshake whose Hello was altered on the way must fail"
    );
}

/// The master's answer to one handshake message on connection `socket`.
fn answer(socket: &zmq::Socket, session: Option<&Session>) -> Option<master_message::Body> {
    let bytes = socket.recv_bytes(0).ok()?;
    let (h, b) = wire::decode(&bytes, 1 << 20).ok()?;
    let body = match (h.kind, session) {
        (wire::Kind::Sealed, Some(s)) => s.open(Channel::Down, &h, b).ok()?,
        (wire::Kind::Sealed, None) => return None,
        _ => b.to_vec(),
    };
    MasterMessage::decode(body.as_slice()).ok()?.body
}

fn dealer(ctx: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(3000).unwrap();
    s.connect(endpoint).unwrap();
    s
}

fn send_clear(socket: &zmq::Socket, body: minion_message::Body) {
    let msg = MinionMessage { body: Some(body) }.encode_to_vec();
    socket.send(handshake_frame(&msg), 0).unwrap();
}

/// Finding 13: an Auth sniffed off one connection and replayed from
/// another neither takes the Welcome nor spoils the real handshake.
#[test]
fn finding_13_an_auth_replayed_from_another_connection_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let ctx = zmq::Context::new();
    let honest = dealer(&ctx, &master.command_endpoint);
    let thief = dealer(&ctx, &master.command_endpoint);
    let (init, hello) = Initiator::start(
        Arc::new(Identity::ephemeral().unwrap()),
        "web1",
        PeerKind::Minion,
        "t",
    )
    .unwrap();
    send_clear(&honest, minion_message::Body::Hello(hello));
    let Some(master_message::Body::Challenge(challenge)) = answer(&honest, None) else {
        panic!("no challenge");
    };
    let opened = init.finish(&challenge).unwrap();

    // The thief sends the honest peer's Auth first, from its own connection.
    send_clear(&thief, minion_message::Body::Auth(opened.auth.clone()));
    let stolen = answer(&thief, Some(&opened.session));
    assert!(
        !matches!(stolen, Some(master_message::Body::Welcome(_))),
        "the replayed Auth took the Welcome: {stolen:?}"
    );
    // The honest peer, on the connection its Hello came on, still gets in.
    send_clear(&honest, minion_message::Body::Auth(opened.auth));
    let got = answer(&honest, Some(&opened.session));
    assert!(
        matches!(got, Some(master_message::Body::Welcome(_))),
        "the honest peer was shut out: {got:?}"
    );
}

/// Finding 13: a clear Rehello (which anyone on the path can write) never
/// ends a session by itself: the minion checks with the master first, and
/// keeps the session while the master answers under it.
#[test]
fn finding_13_a_clear_rehello_never_ends_an_established_session() {
    clear_rehellos_never_end_a_live_session(false);
}

/// A minion in session with a stand-in master that answers its heartbeats;
/// from the third heartbeat on, clear Rehellos naming the session come from
/// the path: one, or with `flood` eleven for every heartbeat. The minion
/// must keep its session (one hello in all) and keep running.
fn clear_rehellos_never_end_a_live_session(flood: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = zmq::Context::new();
    // A stand-in master: the real handshake and sealed heartbeats.
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.set_rcvtimeo(100).unwrap();
    let port = tend_e2e::free_port();
    router.bind(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let responder = tend_bus::wire::Responder::new(Arc::new(Identity::ephemeral().unwrap()));
    let mut minion = Minion::with_endpoints(
        &tmp.path().join("m"),
        "web1",
        &format!("tcp://127.0.0.1:{}", tend_e2e::free_port()),
        &format!("tcp://127.0.0.1:{port}"),
        "",
    );
    minion.start();

    let mut session: Option<(Vec<u8>, Session)> = None;
    let mut hellos = 0;
    let mut beats_answered = 0;
    let mut rehello_sent_at: Option<std::time::Instant> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in master never got to send its Rehello"
        );
        if let Some(at) = rehello_sent_at
            && at.elapsed() > Duration::from_secs(if flood { 4 } else { 3 })
        {
            break;
        }
        let Ok(parts) = router.recv_multipart(0) else {
            continue;
        };
        let [route, bytes] = parts.as_slice() else {
            continue;
        };
        let Ok((h, b)) = wire::decode(bytes, 1 << 20) else {
            continue;
        };
        let reply = |body: master_message::Body, seal: Option<&Session>| {
            let msg = MasterMessage { body: Some(body) }.encode_to_vec();
            let frame = match seal {
                Some(s) => s.seal(Channel::Down, &msg),
                None => handshake_frame(&msg),
            };
            router.send_multipart([route.clone(), frame], 0).unwrap();
        };
        match h.kind {
            wire::Kind::Handshake => match MinionMessage::decode(b).ok().and_then(|m| m.body) {
                Some(minion_message::Body::Hello(hello)) => {
                    hellos += 1;
                    let ch = responder.on_hello(&hello, route).unwrap();
                    reply(master_message::Body::Challenge(ch), None);
                }
                Some(minion_message::Body::Auth(auth)) => {
                    let authed = responder.on_auth(&auth, route).unwrap();
                    reply(
                        master_message::Body::Welcome(tend_proto::v1::Welcome {
                            heartbeat_ms: 200,
                        }),
                        Some(&authed.session),
                    );
                    session = Some((route.clone(), authed.session));
                }
                _ => {}
            },
            wire::Kind::Sealed => {
                let Some((_, s)) = session.as_ref().filter(|(_, s)| s.id == h.session) else {
                    continue;
                };
                let Ok(plain) = s.open(Channel::Up, &h, b) else {
                    continue;
                };
                if let Ok(MinionMessage {
                    body: Some(minion_message::Body::Heartbeat(_)),
                }) = MinionMessage::decode(plain.as_slice())
                {
                    reply(
                        master_message::Body::Heartbeat(tend_proto::v1::Heartbeat { time_us: 1 }),
                        Some(s),
                    );
                    beats_answered += 1;
                    if beats_answered == 3 || (flood && beats_answered > 3) {
                        // On the path: a clear Rehello naming the session
                        // (a flood: eleven for every heartbeat).
                        for _ in 0..if flood { 11 } else { 1 } {
                            reply(
                                master_message::Body::Rehello(tend_proto::v1::Rehello {
                                    reason: "forged".into(),
                                    session: s.id,
                                }),
                                None,
                            );
                        }
                        rehello_sent_at.get_or_insert_with(std::time::Instant::now);
                    }
                }
            }
        }
    }
    assert_eq!(
        hellos, 1,
        "the minion dropped its session on a clear Rehello and said hello again"
    );
    assert!(minion.daemon().is_running());
}

/// Review (review2): a flood of clear Rehellos (ten per heartbeat, for
/// 4 s) from the path never makes the minion drop its session: each one
/// costs one extra heartbeat at most while the master answers.
#[test]
fn review_a_clear_rehello_flood_never_ends_an_established_session() {
    clear_rehellos_never_end_a_live_session(true);
}

/// Finding 13: idle connections held open on the metrics port do not keep
/// a scrape from being answered.
#[test]
fn finding_13_idle_metrics_connections_do_not_block_a_scrape() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let port = tend_e2e::free_port();
    let mut master = Master::new(
        &tmp.path().join("master"),
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    master.start();
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let mut scrape = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    scrape
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    let _ = scrape.read_to_string(&mut page);
    assert!(
        page.starts_with("HTTP/1.1 200"),
        "no answer to a scrape within {:?} while 100 idle connections were held: {page:?}",
        started.elapsed()
    );
    drop(idle);
}

/// A process's peak resident memory (VmHWM), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// Finding 6: one unauthenticated message of 400 parts of 1 MiB each
/// (every part under the 1 MiB limit), on the command and the event port.
#[test]
fn finding_6_a_message_of_endless_parts_is_cut_off_before_it_is_buffered() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut web1 = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    web1.start();
    master.wait_connected("web1");
    let pid = master.daemon().child.id();
    let ctx = zmq::Context::new();
    let part = vec![7u8; 1 << 20];
    for (kind, endpoint) in [
        (zmq::DEALER, master.command_endpoint.clone()),
        (zmq::XPUB, master.event_endpoint.clone()),
    ] {
        let socket = ctx.socket(kind).unwrap();
        socket.set_linger(0).unwrap();
        socket.set_sndhwm(0).unwrap();
        let watch = format!("inproc://finding-6-{kind:?}");
        socket
            .monitor(&watch, zmq::SocketEvent::DISCONNECTED as i32)
            .unwrap();
        let events = ctx.socket(zmq::PAIR).unwrap();
        events.connect(&watch).unwrap();
        socket.connect(&endpoint).unwrap();
        if kind == zmq::XPUB {
            // The master's subscription: from now on what is sent arrives.
            socket.set_rcvtimeo(10_000).unwrap();
            socket.recv_bytes(0).expect("the master's subscription");
        }
        let before = counter(&master, "bus_frames_bad");
        for _ in 0..399 {
            socket.send(&part, zmq::SNDMORE).unwrap();
        }
        socket.send(&part, 0).unwrap();
        // Either the master cuts the connection, or it takes the whole
        // message in (and then refuses it for its shape).
        wait_until(
            Duration::from_secs(120),
            "the master to cut the connection or take the whole message in",
            || {
                let cut = events.recv_multipart(zmq::DONTWAIT).is_ok();
                (cut || counter(&master, "bus_frames_bad") > before).then_some(())
            },
        );
    }
    let peak = peak_memory(pid);
    assert!(
        peak < 300 << 20,
        "the master's memory peaked at {} MiB: the parts were buffered",
        peak >> 20
    );
    assert!(master.daemon().is_running());
    let pong = &master.tend_json(&["ping", "web1"])[0];
    assert_eq!(pong["minion"], "web1", "{pong}");
}

/// CPU time (user + system) a process used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields count from after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Finding 7: a master with 256 descriptors (`ulimit -n 256`) faces more
/// half-open TCP connections than it has descriptors.
#[test]
fn finding_7_running_out_of_descriptors_neither_spins_nor_aborts_the_master() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    let log = master.dir.join("master.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg("--")
        .arg(tend_e2e::bin("tend-master"))
        .arg("--config")
        .arg(master.config())
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let pid = child.id();
    master.daemon = Some(tend_e2e::Daemon { child, log });
    wait_until(Duration::from_secs(20), "the master to answer", || {
        master.tend(&["status"]).status.success().then_some(())
    });
    let mut web1 = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    web1.start();
    master.wait_connected("web1");

    // Connections that never say a word: past the point where the master
    // holds every descriptor it may (or 1,000 of them).
    let addr: std::net::SocketAddr = master
        .command_endpoint
        .trim_start_matches("tcp://")
        .parse()
        .unwrap();
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let (mut held, mut past_the_limit) = (Vec::new(), 0);
    for _ in 0..1000 {
        if descriptors() >= 256 {
            past_the_limit += 1;
        }
        if past_the_limit > 50 {
            break;
        }
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            held.push(s);
        }
    }

    // Still serving: the control socket, and the accepted minion.
    let out = master.tend(&["run", "web1", "--", "echo served"]);
    assert!(
        master.daemon().is_running(),
        "the master died: {}",
        master.daemon().log_text()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("served"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not spinning: under a tenth of a core over three seconds (spinning,
    // it took a whole core, or what a busy machine let it have).
    assert!(master.daemon().is_running(), "the master died");
    let (before, started) = (cpu_ticks(pid), std::time::Instant::now());
    wait_until(Duration::from_secs(10), "three seconds to pass", || {
        (started.elapsed() >= Duration::from_secs(3)).then_some(())
    });
    let used = (cpu_ticks(pid) - before) as f64 / 100.0 / started.elapsed().as_secs_f64();
    assert!(
        used < 0.10,
        "the master used {:.0} % of a core while {} connections were held",
        used * 100.0,
        held.len()
    );
    assert!(
        counter(&master, "bus_connections_refused") > 0,
        "the refused connections were not counted"
    );
    drop(held);
}

/// Finding 11: a flood of hellos (as fast as two clients can send them)
/// while a minion the master knows restarts.
#[test]
fn finding_11_a_hello_flood_does_not_shut_a_known_minion_out() {
    known_minion_back_during_a_hello_flood(Restart::Minion);
}

/// Finding 11, the other way round: the master restarts (kill -9) during
/// the flood, and must serve its known minion's hello ahead of the flood
/// from its first moment (its accepted keys are known to the handshake
/// queue at start, before any of them has opened a session).
#[test]
fn finding_11_a_master_restarted_during_a_hello_flood_gets_its_minion_back() {
    known_minion_back_during_a_hello_flood(Restart::Master);
}

/// What goes down while the flood is on.
enum Restart {
    Minion,
    Master,
}

fn known_minion_back_during_a_hello_flood(restart: Restart) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut web1 = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    web1.start();
    master.wait_connected("web1");
    if let Restart::Minion = restart {
        web1.daemon().stop();
        wait_until(Duration::from_secs(20), "web1 to be down", || {
            master
                .tend_json(&["minions"])
                .iter()
                .any(|m| m["id"] == "web1" && m["connected"] == false)
                .then_some(())
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|i| {
            let (stop, endpoint) = (stop.clone(), master.command_endpoint.clone());
            std::thread::spawn(move || {
                let ctx = zmq::Context::new();
                let socket = ctx.socket(zmq::DEALER).unwrap();
                socket.set_linger(0).unwrap();
                socket.connect(&endpoint).unwrap();
                let (_, hello) = Initiator::start(
                    Arc::new(Identity::ephemeral().unwrap()),
                    &format!("flood{i}"),
                    PeerKind::Minion,
                    "attack",
                )
                .unwrap();
                let frame = handshake_frame(
                    &MinionMessage {
                        body: Some(minion_message::Body::Hello(hello)),
                    }
                    .encode_to_vec(),
                );
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if socket.send(&frame, zmq::DONTWAIT).is_ok() {
                        sent += 1;
                    } else {
                        std::thread::yield_now();
                    }
                }
                sent
            })
        })
        .collect();
    let before = counter(&master, "bus_frames_in");
    wait_until(Duration::from_secs(20), "the flood to be on", || {
        (counter(&master, "bus_frames_in") > before + 20_000).then_some(())
    });

    let started = std::time::Instant::now();
    match restart {
        Restart::Minion => web1.start(),
        Restart::Master => {
            master.daemon().kill9();
            master.start();
        }
    }
    let back = std::panic::catch_unwind(|| master.wait_connected("web1"));
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        back.is_ok(),
        "web1 got no session within {took:?} while {sent} hellos flooded the master"
    );
    assert!(
        took < Duration::from_secs(10),
        "web1 took {took:?} to get a session back during the flood"
    );
    assert!(counter(&master, "bus_hellos_throttled") > 0);
}

/// Review (review2), the reason Rehello exists: a master that restarts
/// (its sessions gone) must get its minions back promptly. Since a clear
/// Rehello no longer ends a session, the minion waits for a grace of two
/// heartbeats, checked only on heartbeat ticks: it comes back about three
/// heartbeats after the master (15 s with the default 5 s), where it used
/// to come back on the first heartbeat. Measured here with a 1 s heartbeat.
#[test]
fn review_a_restarted_master_gets_its_minion_back_within_a_heartbeat_and_a_half() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    let cfg = std::fs::read_to_string(master.config()).unwrap();
    std::fs::write(
        master.config(),
        cfg.replace("heartbeat_ms = 200", "heartbeat_ms = 1000")
            .replace("presence_timeout_ms = 1000", "presence_timeout_ms = 3000"),
    )
    .unwrap();
    master.start();
    let mut web1 = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    web1.start();
    master.wait_connected("web1");
    let mut took = Vec::new();
    for _ in 0..2 {
        master.daemon().kill9();
        master.start();
        let t0 = std::time::Instant::now();
        wait_until(Duration::from_secs(30), "web1 back", || {
            master
                .tend_json(&["minions"])
                .iter()
                .any(|m| m["id"] == "web1" && m["connected"] == true)
                .then_some(())
        });
        took.push(t0.elapsed());
    }
    eprintln!("reconnect after a master restart took {took:?}");
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(1500)),
        "the minion came back {took:?} after the master (heartbeat 1 s)"
    );
}

/// Review W7: a clear Refused before the Challenge, forged on the path for
/// a valid minion id, costs the minion no more than a dropped hello: it
/// says hello again within seconds, not after the 30 s REFUSED_RETRY.
#[test]
fn review_a_forged_clear_refused_before_the_challenge_costs_only_a_short_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.set_rcvtimeo(100).unwrap();
    let port = tend_e2e::free_port();
    router.bind(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let mut minion = Minion::with_endpoints(
        &tmp.path().join("m"),
        "web1",
        &format!("tcp://127.0.0.1:{}", tend_e2e::free_port()),
        &format!("tcp://127.0.0.1:{port}"),
        "",
    );
    minion.start();
    let mut refused_at: Option<std::time::Instant> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let again = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no second hello within 40 s"
        );
        let Ok(parts) = router.recv_multipart(0) else {
            continue;
        };
        let [route, bytes] = parts.as_slice() else {
            continue;
        };
        let Ok((h, b)) = wire::decode(bytes, 1 << 20) else {
            continue;
        };
        if h.kind != wire::Kind::Handshake {
            continue;
        }
        let Some(minion_message::Body::Hello(hello)) =
            MinionMessage::decode(b).ok().and_then(|m| m.body)
        else {
            continue;
        };
        match refused_at {
            None => {
                // On the path: a clear refusal of the first hello.
                let msg = MasterMessage {
                    body: Some(master_message::Body::Refused(tend_proto::v1::Refused {
                        status: "rejected".into(),
                        reason: "forged".into(),
                        hello_ephemeral: hello.ephemeral_key,
                    })),
                }
                .encode_to_vec();
                router
                    .send_multipart([route.clone(), handshake_frame(&msg)], 0)
                    .unwrap();
                refused_at = Some(std::time::Instant::now());
            }
            Some(at) => break at.elapsed(),
        }
    };
    eprintln!("hello again {again:?} after a forged clear Refused");
    assert!(
        again < Duration::from_secs(10),
        "the minion waited {again:?} after a forged clear Refused (REFUSED_RETRY is 30 s)"
    );
}
