//! Garbage on every master port: the master counts and logs it, and keeps
//! serving its minions and the CLI.

use std::io::Write;
use std::time::Duration;

use prost::Message;
use tend_e2e::{Master, Minion, wait_until};
use tend_proto::v1::{Hello, MinionMessage, minion_message};

fn counter(master: &Master, name: &str) -> u64 {
    master.counters()[name].as_u64().unwrap_or(0)
}

/// A frame header of tend-bus: version, kind, session, counter.
fn header(kind: u8, session: u64) -> Vec<u8> {
    let mut h = vec![1, kind];
    h.extend_from_slice(&session.to_be_bytes());
    h.extend_from_slice(&1u64.to_be_bytes());
    h
}

#[test]
fn garbage_on_every_port_is_counted_and_the_master_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("motd");
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file(
        "motd.toml",
        &format!(
            "[motd]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"hi\\n\"\n",
            file.display()
        ),
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("minion"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");
    let ctx = zmq::Context::new();

    // Raw bytes that are not even ZeroMQ, on both TCP ports.
    for ep in [&master.event_endpoint, &master.command_endpoint] {
        let addr = ep.trim_start_matches("tcp://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&[0xff; 4096]);
    }

    // Event port: a publisher sending garbage, a one-part message, a frame
    // with a bad header, and a sealed frame for a session that does not
    // exist. PUB only delivers once the subscription arrived, so keep
    // sending until the master has counted them.
    let publisher = ctx.socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.connect(&master.event_endpoint).unwrap();
    let mut unknown = header(2, 12345);
    unknown.extend_from_slice(b"whatever");
    wait_until(
        Duration::from_secs(10),
        "the master to count garbage on the event port",
        || {
            publisher
                .send_multipart([b"tend.ev.1".to_vec(), b"garbage".to_vec()], 0)
                .unwrap();
            publisher.send(b"just one part".to_vec(), 0).unwrap();
            publisher
                .send_multipart([b"tend.ev.1".to_vec(), unknown.clone()], 0)
                .unwrap();
            (counter(&master, "bus_frames_unknown_session") > 0
                && counter(&master, "bus_frames_bad") >= 2)
                .then_some(())
        },
    );

    // Command port: garbage, a truncated protobuf hello, a bad minion id.
    let bad_before = counter(&master, "bus_frames_bad");
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.connect(&master.command_endpoint).unwrap();
    let hello = MinionMessage {
        body: Some(minion_message::Body::Hello(Hello {
            minion: "intruder".into(),
            version: "x".repeat(200),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    let mut truncated = header(1, 0);
    truncated.extend_from_slice(&hello[..hello.len() - 50]);
    let mut bad_id = header(1, 0);
    bad_id.extend_from_slice(
        &MinionMessage {
            body: Some(minion_message::Body::Hello(Hello {
                minion: "../etc".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec(),
    );
    dealer.send(b"garbage".to_vec(), 0).unwrap();
    dealer.send(truncated, 0).unwrap();
    dealer.send(bad_id, 0).unwrap();
    dealer
        .send_multipart([b"two".to_vec(), b"parts".to_vec()], 0)
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the master to count garbage on the command port",
        || {
            (counter(&master, "bus_frames_undecodable") >= 1
                && counter(&master, "bus_frames_bad") >= bad_before + 2
                && counter(&master, "bus_handshakes_refused") >= 1)
                .then_some(())
        },
    );

    // Control socket: garbage gets an error answer, not silence.
    let control = ctx.socket(zmq::DEALER).unwrap();
    control.set_linger(0).unwrap();
    control.set_rcvtimeo(5000).unwrap();
    control.connect(&master.control).unwrap();
    control.send(vec![0xffu8; 64], 0).unwrap();
    let answer = control
        .recv_bytes(0)
        .expect("an answer to a garbage control request");
    let reply = tend_proto::v1::ControlReply::decode(answer.as_slice()).unwrap();
    assert!(matches!(
        reply.body,
        Some(tend_proto::v1::control_reply::Body::Failure(_))
    ));
    assert!(counter(&master, "bus_frames_undecodable") >= 2);

    // Still serving: the minion is connected, an apply works.
    assert!(
        master.daemon().is_running(),
        "the master died:\n{}",
        master.daemon().log_text()
    );
    master.wait_connected("web1");
    let job = &master.tend_json(&["apply", "web1", "motd"])[0];
    assert_eq!(job["status"], "changed", "{job}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hi\n");
    // Nobody got in as "intruder".
    let minions = master.tend_json(&["minions"]);
    assert!(minions.iter().all(|m| m["id"] == "web1"), "{minions:?}");
    // And the log says what was refused.
    assert!(
        master.daemon().log_text().contains("refused"),
        "no refusal in the log"
    );
}
