//! Independent adversarial review (review4) of the clear Rehello probe:
//! each test failed on the code it was written against, and says the
//! finding.

use super::*;

/// A forged clear Rehello starts the minion's probe: the session stands
/// if a sealed word from the master comes within a few round trips. But
/// the word is passed from the socket thread to the session task through
/// a 64-slot queue with `try_send`, and clear handshake messages (which
/// anyone on the path can write) go through the same queue: a burst of
/// clear Rehellos around the master's honest heartbeat answer fills it,
/// the answer ("Heard") is dropped, and the probe ends a live session.
/// The attacker only adds frames (drops nothing, delays nothing). Now
/// clear messages have a queue of their own, and sealed ones are read
/// first.
#[test]
fn review4_a_clear_flood_around_the_probe_answer_never_ends_a_live_session() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = zmq::Context::new();
    // A stand-in master (the real handshake and sealed heartbeats) that
    // is also the path: it adds the attacker's clear frames.
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.set_rcvtimeo(100).unwrap();
    // Nothing the stand-in sends is dropped on its side.
    router.set_sndhwm(0).unwrap();
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
    let mut attack_from: Option<std::time::Instant> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in master never got to attack"
        );
        if attack_from.is_some_and(|at| at.elapsed() > Duration::from_secs(4)) || hellos > 1 {
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
        let forged = |session: u64, n: usize| {
            for _ in 0..n {
                reply(
                    master_message::Body::Rehello(tend_proto::v1::Rehello {
                        reason: "forged".into(),
                        session,
                    }),
                    None,
                );
            }
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
                    beats_answered += 1;
                    let attacking = beats_answered >= 3;
                    if attacking {
                        // On the path: clear Rehellos naming the session
                        // just before and after the honest answer.
                        forged(s.id, 2000);
                        attack_from.get_or_insert_with(std::time::Instant::now);
                    }
                    // The honest master answers every heartbeat at once.
                    reply(
                        master_message::Body::Heartbeat(tend_proto::v1::Heartbeat { time_us: 1 }),
                        Some(s),
                    );
                    if attacking {
                        forged(s.id, 2000);
                    }
                }
            }
        }
    }
    assert_eq!(
        hellos, 1,
        "the minion dropped its live session (the master answered every heartbeat under it) on forged clear Rehellos and said hello again"
    );
    assert!(minion.daemon().is_running());
}
