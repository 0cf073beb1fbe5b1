//! What the master's bus tests share: a [`MasterBus`] on free loopback
//! ports with a throwaway key store that accepts any key, and a minion
//! driven by hand over a real DEALER (its own session, frames sealed and
//! opened by the test).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tend_proto::v1::{
    ControlRequest, MasterMessage, MinionMessage, PeerKind, Pong, Reply, Request, master_message,
    minion_message, reply,
};
use tokio::sync::mpsc;

use super::{MasterBus, MasterBusConfig, MasterInbound};
use crate::control::Responder;
use crate::frame::{self, Kind, handshake_frame};
use crate::handshake::Initiator;
use crate::identity::Identity;
use crate::keys::KeyStore;
use crate::session::{Channel, Session};
use crate::stats::BusStats;

/// A `tcp://127.0.0.1:<port>` nobody listens on (yet).
pub(super) fn free_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("tcp://127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// A master's bus and its endpoints. Nobody reads its inbound queue or
/// its control requests: a test that needs the daemon busy gets that.
pub(super) struct Fixture {
    // Fields drop in this order: the queues first, so that a socket
    // thread blocked on a full one is let go before the bus joins it.
    _inbound: mpsc::Receiver<MasterInbound>,
    _control: mpsc::Receiver<(Responder, ControlRequest)>,
    pub bus: MasterBus,
    /// Where minions publish events.
    pub events: String,
    /// Where minions and operators connect.
    pub commands: String,
    _dir: tempfile::TempDir,
}

/// Binds a master's bus (inside a tokio runtime) whose key store accepts
/// every key on sight.
pub(super) fn master(heartbeat: Duration, presence_timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open(dir.path(), true, Vec::new()).unwrap());
    let (events, commands) = (free_endpoint(), free_endpoint());
    let cfg = MasterBusConfig {
        event_endpoint: events.clone(),
        command_endpoint: commands.clone(),
        max_message_size: 1 << 20,
        heartbeat,
        presence_timeout,
    };
    let (control, control_rx) = mpsc::channel(16);
    let (bus, inbound) = MasterBus::bind(
        cfg,
        Arc::new(Identity::ephemeral().unwrap()),
        keys,
        Arc::new(BusStats::default()),
        control,
    )
    .unwrap();
    Fixture {
        bus,
        events,
        commands,
        _dir: dir,
        _control: control_rx,
        _inbound: inbound,
    }
}

/// A hand-driven minion connection: its own DEALER and session.
pub(super) struct Fake {
    pub socket: zmq::Socket,
    pub session: Session,
}

impl Fake {
    /// Opens a session as minion `name` with `identity`, up to the
    /// master's welcome.
    pub fn connect(endpoint: &str, identity: Arc<Identity>, name: &str) -> Self {
        let socket = crate::context().socket(zmq::DEALER).unwrap();
        socket.set_linger(0).unwrap();
        socket.set_rcvtimeo(5000).unwrap();
        socket.connect(endpoint).unwrap();
        let (init, hello) = Initiator::start(identity, name, PeerKind::Minion, "t").unwrap();
        let clear = |body| handshake_frame(&MinionMessage { body: Some(body) }.encode_to_vec());
        socket
            .send(clear(minion_message::Body::Hello(hello)), 0)
            .unwrap();
        let bytes = socket.recv_bytes(0).expect("a challenge");
        let (_, body) = frame::decode(&bytes, 1 << 20).unwrap();
        let Some(master_message::Body::Challenge(ch)) = MasterMessage::decode(body).unwrap().body
        else {
            panic!("no challenge for {name}");
        };
        let opened = init.finish(&ch).unwrap();
        socket
            .send(clear(minion_message::Body::Auth(opened.auth)), 0)
            .unwrap();
        let fake = Self {
            socket,
            session: opened.session,
        };
        match fake.recv() {
            Some(master_message::Body::Welcome(_)) => {}
            other => panic!("no welcome for {name}: {other:?}"),
        }
        fake
    }

    /// Sends `body` sealed under the session.
    pub fn send(&self, body: minion_message::Body) {
        let msg = MinionMessage { body: Some(body) }.encode_to_vec();
        self.socket
            .send(self.session.seal(Channel::Up, &msg), 0)
            .unwrap();
    }

    /// The next message from the master, or None after 5 s.
    pub fn recv(&self) -> Option<master_message::Body> {
        let bytes = self.socket.recv_bytes(0).ok()?;
        let (h, b) = frame::decode(&bytes, 1 << 20).ok()?;
        let body = match h.kind {
            Kind::Sealed => self.session.open(Channel::Down, &h, b).ok()?,
            Kind::Handshake => b.to_vec(),
        };
        MasterMessage::decode(body.as_slice()).ok()?.body
    }

    /// The next request from the master, skipping anything else.
    pub fn next_request(&self) -> Request {
        loop {
            match self.recv() {
                Some(master_message::Body::Request(r)) => return r,
                Some(_) => continue,
                None => panic!("no request"),
            }
        }
    }

    /// Answers request `id` with a pong saying `version`.
    pub fn reply(&self, id: u64, version: &str) {
        self.send(minion_message::Body::Reply(Reply {
            id,
            body: Some(reply::Body::Pong(Pong {
                version: version.into(),
            })),
        }));
    }
}
