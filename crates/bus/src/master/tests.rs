//! The master's bus under load, against real sockets on loopback.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use tend_proto::v1::{Event, EventBatch, Heartbeat, Info, master_message, minion_message};

use super::INBOUND_QUEUE;
use super::testkit::{Fake, master};
use crate::EVENT_TOPIC;
use crate::identity::Identity;
use crate::session::Channel;

/// Issue 14, item 4: while the daemon's ingest queue is full, a minion
/// saying what it is (Info) must not stop the ROUTER thread, or every
/// minion's heartbeats go unanswered.
#[test]
fn finding_14_4_a_full_ingest_queue_never_stalls_heartbeats() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    // Nobody reads the fixture's inbound queue: the daemon is busy (a
    // slow store, say).
    let f = master(Duration::from_millis(200), Duration::from_secs(60));
    let (bus, events, commands) = (&f.bus, &f.events, &f.commands);
    let minion = |name| Fake::connect(commands, Arc::new(Identity::ephemeral().unwrap()), name);

    // web1's events fill the queue; the event socket then waits.
    let web1 = minion("web1");
    let publisher = crate::context().socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.connect(events).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seq = 0;
    while bus.stats().events_in.load(Ordering::Relaxed) <= INBOUND_QUEUE as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ingest queue never filled"
        );
        seq += 1;
        let batch = EventBatch {
            events: vec![Event {
                minion: "web1".into(),
                seq,
                tag: "minion/web1/beacon/x".into(),
                time_us: 1,
                data: b"{}".to_vec(),
                cause: 0,
                local_orders: Default::default(),
            }],
            oldest_seq: 1,
        };
        let frame = web1.session.seal(Channel::Events, &batch.encode_to_vec());
        publisher
            .send_multipart([EVENT_TOPIC.to_vec(), frame], 0)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }

    // web2 says what it is; the daemon has to hear of it somehow.
    let web2 = minion("web2");
    let seen = bus.stats().frames_in.load(Ordering::Relaxed);
    web2.send(minion_message::Body::Info(Info::default()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bus.stats().frames_in.load(Ordering::Relaxed) == seen {
        assert!(
            std::time::Instant::now() < deadline,
            "web2's info never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // And web1's heartbeat is still answered.
    web1.send(minion_message::Body::Heartbeat(Heartbeat { time_us: 1 }));
    assert!(
        matches!(web1.recv(), Some(master_message::Body::Heartbeat(_))),
        "web1's heartbeat went unanswered while the ingest queue was full"
    );
}
