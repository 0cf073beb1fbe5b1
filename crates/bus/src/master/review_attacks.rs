//! Adversarial review of issue 13 finding 1 (a reply is taken only from the
//! minion its request went to; request ids are random), against a real
//! MasterBus on loopback with hand-driven minions.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tend_proto::v1::{Ack, PeerKind, Ping, Reply, reply, request};

use super::testkit::{Fake, Fixture};
use super::{MasterBus, PeerSession};
use crate::BusError;
use crate::identity::Identity;

fn master() -> Fixture {
    super::testkit::master(Duration::from_secs(1), Duration::from_secs(30))
}

fn connect(endpoint: &str, identity: Arc<Identity>, name: &str) -> Fake {
    Fake::connect(endpoint, identity, name)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn refused(bus: &MasterBus) -> u64 {
    bus.shared.stats.replies_refused.load(Ordering::Relaxed)
}

fn ping(bus: &Arc<MasterBus>, minion: &str) -> tokio::task::JoinHandle<Result<Reply, BusError>> {
    let (bus, minion) = (bus.clone(), minion.to_string());
    tokio::spawn(async move {
        bus.request(
            &minion,
            request::Body::Ping(Ping {}),
            Duration::from_secs(8),
        )
        .await
    })
}

fn version(r: Result<Reply, BusError>) -> String {
    match r.expect("a reply").body {
        Some(reply::Body::Pong(p)) => p.version,
        other => panic!("not a pong: {other:?}"),
    }
}

/// mallory learns (or guesses) the exact id of a request sent to web1 and
/// answers it first, and again after web1 did: refused both times; web1's
/// own answer is the one taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_minion_answering_the_exact_id_is_refused() {
    let f = master();
    let web1 = connect(
        &f.commands,
        Arc::new(Identity::ephemeral().unwrap()),
        "web1",
    );
    let mallory = connect(
        &f.commands,
        Arc::new(Identity::ephemeral().unwrap()),
        "mallory",
    );
    let bus = Arc::new(f.bus);
    wait_for("web1 to be known", || bus.is_connected("web1"));
    let call = ping(&bus, "web1");
    let req = tokio::task::block_in_place(|| web1.next_request());
    mallory.reply(req.id, "FORGED");
    tokio::task::block_in_place(|| wait_for("mallory refused", || refused(&bus) == 1));
    assert!(!call.is_finished(), "the request ended on mallory's reply");
    web1.reply(req.id, "REAL");
    assert_eq!(version(call.await.unwrap()), "REAL");
    mallory.reply(req.id, "FORGED");
    tokio::task::block_in_place(|| wait_for("mallory refused again", || refused(&bus) == 2));
    assert!(bus.shared.pending.lock().unwrap().waiting.is_empty());
}

/// web1 gets a request, then opens a new session (a reconnect: same key,
/// new session and route) and answers on it: the honest reply is taken.
/// A reply sealed under the old session after that is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_reply_after_a_reconnect_is_taken() {
    let f = master();
    let id = Arc::new(Identity::ephemeral().unwrap());
    let old = connect(&f.commands, id.clone(), "web1");
    let bus = Arc::new(f.bus);
    wait_for("web1 to be known", || bus.is_connected("web1"));
    let call = ping(&bus, "web1");
    let req = tokio::task::block_in_place(|| old.next_request());
    let new = tokio::task::block_in_place(|| connect(&f.commands, id.clone(), "web1"));
    assert_ne!(old.session.id, new.session.id);
    // The old session answers first: it is gone, so the master asks it for
    // a new hello; nothing is delivered.
    old.reply(req.id, "OLD SESSION");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !call.is_finished(),
        "a reply under the replaced session was taken"
    );
    new.reply(req.id, "REAL");
    assert_eq!(version(call.await.unwrap()), "REAL");
}

/// The same name with another key (an impostor whose key the store would
/// have to accept first: with auto_accept off it never gets a session) is
/// covered by the key store; here, a *re-keyed* web1 (the operator accepted
/// a new key after the request went out) is refused: the waiter is bound to
/// the key it was sent under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_under_another_key_for_the_same_name_is_refused() {
    let f = master();
    let old = connect(
        &f.commands,
        Arc::new(Identity::ephemeral().unwrap()),
        "web1",
    );
    let bus = Arc::new(f.bus);
    wait_for("web1 to be known", || bus.is_connected("web1"));
    let call = ping(&bus, "web1");
    let req = tokio::task::block_in_place(|| old.next_request());
    // Simulate the re-key: put a session for "web1" with another key in
    // place, as the handshake would after `tend keys accept`.
    let other = Arc::new(Identity::ephemeral().unwrap());
    let before = refused(&bus);
    {
        let sessions = bus.shared.sessions.read().unwrap();
        let sid = sessions.minions["web1"];
        let ps = &sessions.by_id[&sid];
        let impostor = PeerSession {
            session: ps.session.clone(),
            name: "web1".into(),
            kind: PeerKind::Minion,
            key: other.public_key(),
            route: Mutex::new(Vec::new()),
            last_seen_us: AtomicI64::new(0),
            announced: AtomicBool::new(false),
        };
        bus.shared.on_reply(
            &impostor,
            Reply {
                id: req.id,
                body: None,
            },
        );
    }
    assert_eq!(refused(&bus), before + 1);
    assert!(!call.is_finished());
    old.reply(req.id, "REAL");
    assert_eq!(version(call.await.unwrap()), "REAL");
}

/// A reply to an acknowledgement (sent with `notify`, which waits for
/// nothing) is refused and counted, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_notify_is_refused() {
    let f = master();
    let web1 = connect(
        &f.commands,
        Arc::new(Identity::ephemeral().unwrap()),
        "web1",
    );
    let bus = Arc::new(f.bus);
    wait_for("web1 to be known", || bus.is_connected("web1"));
    bus.notify(
        "web1",
        request::Body::Ack(Ack {
            seq: 1,
            replay: false,
        }),
    )
    .unwrap();
    let req = tokio::task::block_in_place(|| web1.next_request());
    web1.reply(req.id, "to an ack");
    tokio::task::block_in_place(|| wait_for("the reply refused", || refused(&bus) == 1));
    let p = bus.shared.pending.lock().unwrap();
    assert!(p.waiting.is_empty() && p.abandoned.is_empty());
}

/// A request whose future is dropped before its answer (a JoinSet dropped
/// on an early return, as `ping` in the master's control does when sending
/// a part fails; an aborted task) to a minion that never answers: its
/// waiter stayed in the pending map for good (nothing removed it on drop;
/// fixed by a guard in `MasterBus::request`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_leaves_no_waiter_behind() {
    let f = master();
    let web1 = connect(
        &f.commands,
        Arc::new(Identity::ephemeral().unwrap()),
        "web1",
    );
    let bus = Arc::new(f.bus);
    wait_for("web1 to be known", || bus.is_connected("web1"));
    for _ in 0..100 {
        let call = ping(&bus, "web1");
        let _ = tokio::task::block_in_place(|| web1.next_request());
        call.abort();
        let _ = call.await;
    }
    // Well past nothing: the requests' own 8 s timeouts never run either.
    let left = bus.shared.pending.lock().unwrap().waiting.len();
    assert_eq!(left, 0, "{left} waiters left behind by dropped requests");
}
