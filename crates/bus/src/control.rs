//! The control channel between the `tend` CLI and the master. One request
//! gets one or more replies carrying its id; the last has `more = false`.
//!
//! Two ways in, each authenticated:
//! - the control socket, an `ipc://` socket under the master's run dir
//!   with mode 0600: whoever can open it is the master's own user;
//! - the command port over TCP, as an *operator*: the CLI runs the same
//!   signed handshake as a minion, with an operator key the master
//!   accepted (`tend keys accept --operator NAME`), and every request and
//!   reply is sealed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tend_proto::v1::{
    ControlReply, ControlReplyFrame, ControlRequest, ControlRequestFrame, MasterMessage,
    MinionMessage, PeerKind, control_reply, master_message, minion_message,
};
use tokio::sync::mpsc;

use crate::BusError;
use crate::actor::SocketThread;
use crate::frame::{self, Kind, handshake_frame};
use crate::handshake::Initiator;
use crate::identity::{Identity, MasterPin};
use crate::session::{Channel, Session};
use crate::stats::BusStats;

enum Path {
    /// The ipc control socket.
    Plain,
    /// An operator's session on the command port.
    Sealed(Arc<Session>),
}

/// Who sent a control request, as the channel it came on proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An operator over TCP, by the name its key was accepted under.
    Operator(String),
    /// A process on the local control socket, by its user id as the
    /// kernel gives it (`SO_PEERCRED`); none when it could not be had.
    Local(Option<u32>),
}

/// Answers one control request, possibly in several parts.
pub struct Responder {
    route: Vec<u8>,
    id: u64,
    socket: Arc<SocketThread>,
    path: Path,
    caller: Caller,
}

impl Responder {
    pub(crate) fn sealed(
        id: u64,
        route: Vec<u8>,
        session: Arc<Session>,
        socket: Arc<SocketThread>,
        operator: &str,
    ) -> Self {
        Self {
            route,
            id,
            socket,
            path: Path::Sealed(session),
            caller: Caller::Operator(operator.to_string()),
        }
    }

    /// Who sent the request.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Sends one part of the answer; `more` says whether others follow.
    pub fn send(&self, body: control_reply::Body, more: bool) -> Result<(), BusError> {
        let reply = ControlReply {
            id: self.id,
            more,
            body: Some(body),
        }
        .encode_to_vec();
        let frame = match &self.path {
            Path::Plain => reply,
            Path::Sealed(session) => {
                let msg = MasterMessage {
                    body: Some(master_message::Body::Control(ControlReplyFrame { reply })),
                };
                session.seal(Channel::Down, &msg.encode_to_vec())
            }
        };
        self.socket.send(vec![self.route.clone(), frame])
    }

    /// Sends the final part of the answer.
    pub fn finish(&self, body: control_reply::Body) -> Result<(), BusError> {
        self.send(body, false)
    }

    /// Whether the request came from an operator over TCP (rather than the
    /// master's own user on the local socket).
    pub fn is_remote(&self) -> bool {
        matches!(self.path, Path::Sealed(_))
    }
}

/// A daemon's local control socket (`ipc://`), answered by its owner.
pub struct ControlServer {
    _socket: Arc<SocketThread>,
}

impl ControlServer {
    /// Binds the local control socket; requests go to `tx`.
    pub fn bind(
        endpoint: &str,
        max_message_size: usize,
        stats: Arc<BusStats>,
        tx: mpsc::Sender<(Responder, ControlRequest)>,
    ) -> Result<Self, BusError> {
        let ctx = crate::context();
        let router = ctx.socket(zmq::ROUTER)?;
        router.set_maxmsgsize(max_message_size as i64)?;
        router.set_linger(0)?;
        router.set_sndhwm(100_000)?;
        crate::bind(&router, endpoint)?;
        // The responder needs the socket thread, which needs the callback:
        // the callback gets it through a slot filled once it exists.
        let slot: Arc<std::sync::OnceLock<std::sync::Weak<SocketThread>>> = Arc::default();
        let cb_slot = slot.clone();
        let socket = Arc::new(SocketThread::spawn(
            &ctx,
            "control",
            router,
            Box::new(move |parts, peer| {
                BusStats::inc(&stats.frames_in);
                let [route, body] = parts.as_slice() else {
                    let reason = format!(
                        "control message of {} parts, not 1",
                        parts.len().saturating_sub(1)
                    );
                    BusStats::refuse(&stats.frames_bad, "control", &reason);
                    return None;
                };
                let failure = |id, message: String| {
                    let reply = ControlReply {
                        id,
                        more: false,
                        body: Some(control_reply::Body::Failure(tend_proto::v1::Failure {
                            message,
                        })),
                    };
                    Some(vec![route.clone(), reply.encode_to_vec()])
                };
                let req = match ControlRequest::decode(body.as_slice()) {
                    Ok(r) => r,
                    Err(e) => {
                        let reason = format!("undecodable control request: {e}");
                        BusStats::refuse(&stats.frames_undecodable, "control", &reason);
                        return failure(0, format!("cannot decode the control request: {e}"));
                    }
                };
                let socket = cb_slot.get().and_then(std::sync::Weak::upgrade)?;
                let (id, responder) = (
                    req.id,
                    Responder {
                        route: route.clone(),
                        id: req.id,
                        socket,
                        path: Path::Plain,
                        // Now, while the peer's connection is surely open.
                        caller: Caller::Local(peer.uid()),
                    },
                );
                if tx.try_send((responder, req)).is_err() {
                    BusStats::inc(&stats.queue_full);
                    return failure(id, "the daemon is busy; try again".into());
                }
                None
            }),
        )?);
        let _ = slot.set(Arc::downgrade(&socket));
        Ok(Self { _socket: socket })
    }
}

/// The CLI's end: a blocking client, one request at a time.
pub struct ControlClient {
    socket: zmq::Socket,
    /// Hears when the connection drops, so a peer that dies mid-request
    /// ends the wait at once instead of at its timeout.
    monitor: zmq::Socket,
    endpoint: String,
    /// What listens at `endpoint`, for messages ("the master").
    peer: String,
    next_id: u64,
    session: Option<Session>,
    max: usize,
}

impl Drop for ControlClient {
    /// Stops the monitor before either socket closes. libzmq's I/O thread
    /// sends monitor events with a blocking send, and a closed DEALER lives
    /// on until the reaper ends it: a DISCONNECTED event in that window (the
    /// master died just then) was sent to a monitor whose reading end was
    /// already closed, and blocked that I/O thread for good, and with it
    /// every socket it serves in this process. A client process that
    /// reconnects (`tend events --follow`, the benchmarks) then heard
    /// nothing from a restarted master.
    fn drop(&mut self) {
        // SAFETY: the socket is open (it is closed only after this, when
        // the field drops); a null endpoint is libzmq's documented way to
        // stop monitoring (zmq_socket_monitor(3)).
        unsafe {
            zmq_sys::zmq_socket_monitor(self.socket.as_mut_ptr(), std::ptr::null(), 0);
        }
    }
}

impl ControlClient {
    /// Connects to a local (ipc) control socket of the master.
    pub fn connect(endpoint: &str) -> Result<Self, BusError> {
        let socket = crate::context().socket(zmq::DEALER)?;
        socket.set_linger(0)?;
        static MONITORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let watch = format!(
            "inproc://control-client-monitor-{}",
            MONITORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        socket.monitor(&watch, zmq::SocketEvent::DISCONNECTED as i32)?;
        let monitor = crate::context().socket(zmq::PAIR)?;
        monitor.set_linger(0)?;
        monitor.connect(&watch)?;
        crate::connect(&socket, endpoint)?;
        Ok(Self {
            socket,
            monitor,
            endpoint: endpoint.to_string(),
            peer: "the master".into(),
            next_id: 1,
            session: None,
            max: 64 << 20,
        })
    }

    /// Names what listens at the endpoint, for messages: `"the minion"`
    /// for a minion's local socket.
    pub fn serving(mut self, peer: &str) -> Self {
        self.peer = peer.to_string();
        self
    }

    /// Connects to the master's command port as operator `name`: runs the
    /// signed handshake, checks the master against `pin`, and waits at most
    /// `timeout` for the session.
    pub fn connect_operator(
        endpoint: &str,
        identity: Arc<Identity>,
        name: &str,
        pin: &MasterPin,
        timeout: Duration,
    ) -> Result<Self, BusError> {
        let mut client = Self::connect(endpoint)?;
        let deadline = Instant::now() + timeout;
        let (init, hello) = Initiator::start(
            identity,
            name,
            PeerKind::Operator,
            env!("CARGO_PKG_VERSION"),
        )?;
        client.send_clear(minion_message::Body::Hello(hello))?;
        let challenge = match client.recv_master(deadline)? {
            Some(master_message::Body::Challenge(c)) => c,
            Some(master_message::Body::Refused(r)) => {
                return Err(BusError::Refused {
                    status: r.status,
                    reason: r.reason,
                });
            }
            _ => {
                return Err(BusError::Handshake(
                    "the master did not answer the hello".into(),
                ));
            }
        };
        let opened = init.finish(&challenge)?;
        pin.check(&opened.master_key)
            .map_err(|e| BusError::Handshake(e.to_string()))?;
        client.session = Some(opened.session);
        client.send_clear(minion_message::Body::Auth(opened.auth))?;
        match client.recv_master(deadline)? {
            Some(master_message::Body::Welcome(_)) => Ok(client),
            Some(master_message::Body::Refused(r)) => Err(BusError::Refused {
                status: r.status,
                reason: r.reason,
            }),
            _ => Err(BusError::Handshake(
                "the master did not welcome the session".into(),
            )),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn send_clear(&self, body: minion_message::Body) -> Result<(), BusError> {
        let msg = MinionMessage { body: Some(body) };
        self.socket.send(handshake_frame(&msg.encode_to_vec()), 0)?;
        Ok(())
    }

    fn wait(
        &self,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, BusError> {
        loop {
            let wait_ms = deadline.map_or(-1, |d| {
                d.saturating_duration_since(Instant::now()).as_millis() as i64
            });
            let mut items = [
                self.socket.as_poll_item(zmq::POLLIN),
                self.monitor.as_poll_item(zmq::POLLIN),
            ];
            if zmq::poll(&mut items, wait_ms)? == 0 {
                return Err(BusError::Timeout {
                    minion: format!("{} at {}", self.peer, self.endpoint),
                    timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
                });
            }
            if items[0].is_readable() {
                return Ok(self.socket.recv_bytes(0)?);
            }
            // A monitor event: [event u16, value u32] and the address.
            let event = self.monitor.recv_multipart(0)?;
            let code = event
                .first()
                .and_then(|e| e.get(..2))
                .map(|b| u16::from_le_bytes([b[0], b[1]]));
            if code == Some(zmq::SocketEvent::DISCONNECTED.to_raw()) {
                // Whatever it had not answered is gone with it.
                return Err(BusError::PeerGone(format!(
                    "{} at {}",
                    self.peer, self.endpoint
                )));
            }
        }
    }

    /// One message from the master on an operator connection, opened.
    fn recv_master(&self, deadline: Instant) -> Result<Option<master_message::Body>, BusError> {
        let bytes = self.wait(Some(deadline), None)?;
        let (header, body) = frame::decode(&bytes, self.max)?;
        let body = match (header.kind, &self.session) {
            (Kind::Handshake, _) => body.to_vec(),
            (Kind::Sealed, Some(s)) => s.open(Channel::Down, &header, body)?,
            (Kind::Sealed, None) => {
                return Err(BusError::BadFrame(
                    "a sealed frame before the session".into(),
                ));
            }
        };
        Ok(MasterMessage::decode(body.as_slice())?.body)
    }

    /// Sends `body` and hands every reply to `on_reply` until the last one,
    /// or until `on_reply` returns false. `timeout` bounds the wait for each
    /// reply (None waits forever).
    pub fn call(
        &mut self,
        body: tend_proto::v1::control_request::Body,
        timeout: Option<Duration>,
        mut on_reply: impl FnMut(ControlReply) -> bool,
    ) -> Result<(), BusError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = ControlRequest {
            id,
            body: Some(body),
        }
        .encode_to_vec();
        match &self.session {
            None => self.socket.send(req, 0)?,
            Some(s) => {
                let msg = MinionMessage {
                    body: Some(minion_message::Body::Control(ControlRequestFrame {
                        request: req,
                    })),
                };
                self.socket
                    .send(s.seal(Channel::Up, &msg.encode_to_vec()), 0)?;
            }
        }
        loop {
            let deadline = timeout.map(|t| Instant::now() + t);
            let bytes = self.wait(deadline, timeout)?;
            let reply = match &self.session {
                None => ControlReply::decode(bytes.as_slice())?,
                Some(_) => match self.recv_sealed(&bytes)? {
                    Some(r) => r,
                    None => continue,
                },
            };
            if reply.id != id && reply.id != 0 {
                continue; // an answer to an earlier, abandoned request
            }
            let more = reply.more;
            if !on_reply(reply) || !more {
                return Ok(());
            }
        }
    }

    fn recv_sealed(&self, bytes: &[u8]) -> Result<Option<ControlReply>, BusError> {
        let (header, body) = frame::decode(bytes, self.max)?;
        let Some(session) = &self.session else {
            return Ok(None);
        };
        if header.kind != Kind::Sealed {
            return Ok(None);
        }
        let plain = session.open(Channel::Down, &header, body)?;
        match MasterMessage::decode(plain.as_slice())?.body {
            Some(master_message::Body::Control(frame)) => {
                Ok(Some(ControlReply::decode(frame.reply.as_slice())?))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message;
    use tend_proto::v1::{ControlReply, ControlRequest, ListMinions, control_request};

    use super::ControlClient;

    /// The master's end, by hand: answers one request, then goes away.
    fn answer_once(router: &zmq::Socket) {
        let parts = router.recv_multipart(0).unwrap();
        let req = ControlRequest::decode(parts[1].as_slice()).unwrap();
        let reply = ControlReply {
            id: req.id,
            more: false,
            body: None,
        };
        router
            .send_multipart([parts[0].clone(), reply.encode_to_vec()], 0)
            .unwrap();
    }

    fn ask(client: &mut ControlClient) -> Result<(), crate::BusError> {
        client.call(
            control_request::Body::ListMinions(ListMinions {}),
            Some(Duration::from_secs(5)),
            |_| false,
        )
    }

    /// A client dropped just as its server dies (a master killed while
    /// `tend events --follow` or a benchmark reconnects) must not leave a
    /// monitor event stuck in libzmq's I/O thread: on the old code one such
    /// race in a few hundred blocked that thread, and every later client in
    /// the process waited for answers that never came.
    #[test]
    fn a_client_dropped_as_its_server_dies_leaves_later_clients_working() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::context();
        for i in 0..400 {
            let endpoint = format!("ipc://{}/c{i}.sock", dir.path().display());
            let router = ctx.socket(zmq::ROUTER).unwrap();
            router.set_linger(0).unwrap();
            router.bind(&endpoint).unwrap();
            let mut client = ControlClient::connect(&endpoint).unwrap();
            let server = std::thread::spawn(move || {
                answer_once(&router);
                drop(router); // the server dies...
            });
            ask(&mut client).unwrap_or_else(|e| panic!("round {i}: {e}"));
            drop(client); // ...as its client goes
            server.join().unwrap();
        }
        let endpoint = format!("ipc://{}/last.sock", dir.path().display());
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.bind(&endpoint).unwrap();
        let server = std::thread::spawn(move || answer_once(&router));
        let mut client = ControlClient::connect(&endpoint).unwrap();
        ask(&mut client).expect("a fresh client after the races");
        server.join().unwrap();
    }
}
