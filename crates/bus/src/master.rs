//! The master's side of the bus: a SUB socket every minion publishes events
//! to, and a ROUTER socket for handshakes, sessions, heartbeats,
//! request/reply, and operators' control requests over TCP.
//!
//! Nothing is accepted from a peer before it has completed the signed
//! handshake with a key the key store accepts; from then on every frame is
//! sealed under its session. The ROUTER assigns each connection its own
//! routing id, and the bus maps a routing id to a peer only after a frame
//! from it opened under that peer's session. (DESIGN.md has the minion set
//! its id as the DEALER's routing id; but a routing id is chosen by
//! whoever connects, so anyone could claim a minion's and take over its
//! command traffic. Binding routes to sessions closes that door.)
//!
//! Handshakes (a signature and a key agreement each) run on their own
//! threads, so a flood of hellos cannot hold up the sessions already open.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{
    ControlRequest, Event, EventBatch, Heartbeat, Info, MasterMessage, MinionMessage, PeerKind,
    Refused, Rehello, Reply, Request, Welcome, master_message, minion_message, request,
};
use tokio::sync::{mpsc, oneshot};

use crate::actor::SocketThread;
use crate::control::Responder;
use crate::frame::{self, Header, Kind};
use crate::handshake;
use crate::hellos::{Admit, Hellos};
use crate::identity::Identity;
use crate::keys::{KeyState, KeyStore, kind_name};
use crate::session::{Channel, Session};
use crate::stats::BusStats;
use crate::{BusError, EVENT_TOPIC};

#[derive(Debug, Clone)]
pub struct MasterBusConfig {
    /// Where minions publish events, e.g. `tcp://0.0.0.0:4510`.
    pub event_endpoint: String,
    /// Where minions and operators connect, e.g. `tcp://0.0.0.0:4511`.
    pub command_endpoint: String,
    pub max_message_size: usize,
    /// How often peers send heartbeats (sent to them in Welcome).
    pub heartbeat: Duration,
    /// A minion silent for this long is down.
    pub presence_timeout: Duration,
}

/// What the bus hands the master daemon.
#[derive(Debug)]
pub enum MasterInbound {
    /// A minion opened a session and said what it is.
    Up { minion: String, info: Info },
    /// A minion's session ended: no heartbeat within the presence timeout.
    Down { minion: String },
    /// Events from an authenticated minion, in the order sent. `refused`
    /// are seqs of events in the batch that failed validation: they count
    /// as delivered (so they do not look like a gap) but are not stored.
    Events {
        minion: String,
        events: Vec<Event>,
        refused: Vec<u64>,
        /// The oldest seq the minion still holds.
        oldest: u64,
    },
}

pub(crate) struct PeerSession {
    pub session: Arc<Session>,
    pub name: String,
    pub kind: PeerKind,
    key: [u8; 32],
    pub route: Mutex<Vec<u8>>,
    last_seen_us: AtomicI64,
    /// The minion said what it is (Info) and was announced up.
    announced: AtomicBool,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<u64, Arc<PeerSession>>,
    /// Minions only: an operator may have several sessions at once.
    minions: HashMap<String, u64>,
}

/// A request waiting for its reply, and who may give it: the minion it
/// was sent to, under the key it was accepted with. (A reply is sealed
/// under the sender's session, so its name and key are proven; an id is
/// only a label, never a capability.)
struct Waiter {
    minion: String,
    key: [u8; 32],
    reply: oneshot::Sender<Reply>,
}

/// Requests that timed out recently, remembered so that a reply arriving
/// after its deadline is told apart from a forged one.
const ABANDONED_KEPT: usize = 4096;

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, Waiter>,
    /// (request id, minion) of requests given up on, oldest first.
    abandoned: std::collections::VecDeque<(u64, String)>,
}

impl Pending {
    fn abandon(&mut self, id: u64) {
        if let Some(w) = self.waiting.remove(&id) {
            if self.abandoned.len() >= ABANDONED_KEPT {
                self.abandoned.pop_front();
            }
            self.abandoned.push_back((id, w.minion));
        }
    }
}

/// Gives a request up when dropped, unless its reply came: a caller that
/// stops waiting (its task aborted, a timeout around it) must not leave
/// its waiter behind for good.
struct Abandon<'a> {
    pending: &'a Mutex<Pending>,
    id: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.abandon(self.id);
        }
    }
}

struct Shared {
    cfg: MasterBusConfig,
    sessions: RwLock<Sessions>,
    pending: Mutex<Pending>,
    stats: Arc<BusStats>,
    inbound: mpsc::Sender<MasterInbound>,
    /// Up and Down, in order, on their way to `inbound`. The socket threads
    /// never wait on the daemon's queue for them (a full queue would stop
    /// every heartbeat); a task forwards them instead. Unbounded, but one
    /// Up and one Down per session opened at most.
    presence: mpsc::UnboundedSender<MasterInbound>,
    control: mpsc::Sender<(Responder, ControlRequest)>,
    keys: Arc<KeyStore>,
    handshakes: Arc<Hellos>,
    /// Keys accepted at start or that have opened a session since: their
    /// hellos are served first.
    known_keys: RwLock<HashSet<[u8; 32]>>,
    responder: handshake::Responder,
    commands: OnceLock<Weak<SocketThread>>,
}

pub struct MasterBus {
    shared: Arc<Shared>,
    commands: Arc<SocketThread>,
    _events: SocketThread,
    reaper: tokio::task::JoinHandle<()>,
    forwarder: tokio::task::JoinHandle<()>,
}

const PORT_EVENTS: &str = "events";
const PORT_COMMANDS: &str = "commands";

/// Inbound messages waiting for the master daemon, at most.
const INBOUND_QUEUE: usize = 512;

impl MasterBus {
    /// Binds both sockets and starts the handshake workers. Must be called
    /// inside a tokio runtime (it starts the task that expires silent
    /// sessions). Operators' control requests go to `control`.
    pub fn bind(
        cfg: MasterBusConfig,
        identity: Arc<Identity>,
        keys: Arc<KeyStore>,
        stats: Arc<BusStats>,
        control: mpsc::Sender<(Responder, ControlRequest)>,
    ) -> Result<(Self, mpsc::Receiver<MasterInbound>), BusError> {
        let ctx = crate::context();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let handshakes = Arc::new(Hellos::default());
        let (presence, mut presence_rx) = mpsc::unbounded_channel();
        let inbound = tx.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(msg) = presence_rx.recv().await {
                if inbound.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            sessions: RwLock::default(),
            pending: Mutex::default(),
            stats,
            inbound: tx,
            presence,
            control,
            // Accepted keys are known from the start: after a master
            // restart, its minions' hellos are served ahead of a flood.
            known_keys: RwLock::new(keys.accepted_keys().into_iter().collect()),
            keys,
            handshakes: handshakes.clone(),
            responder: handshake::Responder::new(identity),
            commands: OnceLock::new(),
        });

        // Limits on connections (and descriptors) for both TCP ports.
        let guard = crate::guard::Guard::new(shared.stats.clone());
        let sub = ctx.socket(zmq::SUB)?;
        sub.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        // Events are numbered and replayed on a gap, so a full queue costs
        // a replay, not an event; keep it large enough that bursts fit.
        sub.set_rcvhwm(2_000)?;
        sub.set_linger(0)?;
        sub.set_subscribe(b"")?;
        guard.watch(&ctx, &sub, PORT_EVENTS)?;
        crate::bind(&sub, &cfg.event_endpoint)?;
        let s = shared.clone();
        let events = SocketThread::spawn(
            &ctx,
            "master-events",
            sub,
            Box::new(move |parts, _peer| {
                s.on_event_message(parts);
                None
            }),
        )?;

        let router = ctx.socket(zmq::ROUTER)?;
        router.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        router.set_sndhwm(100_000)?;
        router.set_rcvhwm(100_000)?;
        router.set_linger(0)?;
        guard.watch(&ctx, &router, PORT_COMMANDS)?;
        crate::bind(&router, &cfg.command_endpoint)?;
        let s = shared.clone();
        let commands = Arc::new(SocketThread::spawn(
            &ctx,
            "master-commands",
            router,
            Box::new(move |parts, peer| s.on_command_message(parts, peer)),
        )?);
        let _ = shared.commands.set(Arc::downgrade(&commands));

        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        for i in 0..workers {
            let (s, rx) = (Arc::downgrade(&shared), handshakes.clone());
            std::thread::Builder::new()
                .name(format!("handshake-{i}"))
                .spawn(move || handshake_worker(s, rx))
                .map_err(|e| BusError::Thread(e.to_string()))?;
        }

        let s = shared.clone();
        let reaper = tokio::spawn(async move { s.expire_sessions().await });
        Ok((
            Self {
                shared,
                commands,
                _events: events,
                reaper,
                forwarder,
            },
            rx,
        ))
    }

    pub fn stats(&self) -> &BusStats {
        &self.shared.stats
    }

    /// Minions with an open session.
    pub fn connected(&self) -> Vec<String> {
        let sessions = self.shared.sessions.read().expect("sessions lock");
        sessions.minions.keys().cloned().collect()
    }

    pub fn is_connected(&self, minion: &str) -> bool {
        let sessions = self.shared.sessions.read().expect("sessions lock");
        sessions.minions.contains_key(minion)
    }

    /// Ends the sessions of peers whose key is no longer accepted (after
    /// `tend keys reject` or `delete`).
    pub fn revoke(&self, kind: PeerKind, names: &[String]) {
        let mut sessions = self.shared.sessions.write().expect("sessions lock");
        let ids: Vec<u64> = sessions
            .by_id
            .iter()
            .filter(|(_, p)| p.kind == kind && names.contains(&p.name))
            .filter(|(_, p)| !self.shared.keys.is_accepted(kind, &p.name, &p.key))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(p) = sessions.by_id.remove(&id) {
                self.shared
                    .known_keys
                    .write()
                    .expect("keys lock")
                    .remove(&p.key);
                if kind == PeerKind::Minion && sessions.minions.get(&p.name) == Some(&id) {
                    sessions.minions.remove(&p.name);
                }
                tracing::warn!(kind = kind_name(kind), name = %p.name, "session closed: its key is no longer accepted");
            }
        }
    }

    /// Sends a request to a minion and waits for its reply, at most
    /// `timeout`. Only that minion's reply is taken; the id is random, so
    /// another peer cannot aim at it either.
    pub async fn request(
        &self,
        minion: &str,
        body: request::Body,
        timeout: Duration,
    ) -> Result<Reply, BusError> {
        let ps = self
            .shared
            .minion(minion)
            .ok_or_else(|| BusError::NotConnected(minion.to_string()))?;
        let id = crate::random_id();
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .waiting
            .insert(
                id,
                Waiter {
                    minion: minion.to_string(),
                    key: ps.key,
                    reply: tx,
                },
            );
        // Whichever way this ends (a reply, an error, a timeout, or the
        // caller dropping this future), the waiter goes with it.
        let _waiting = Abandon {
            pending: &self.shared.pending,
            id,
        };
        self.send_request(&ps, id, body, timeout)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout {
                minion: minion.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Sends a request that needs no reply (an acknowledgement).
    pub fn notify(&self, minion: &str, body: request::Body) -> Result<(), BusError> {
        let ps = self
            .shared
            .minion(minion)
            .ok_or_else(|| BusError::NotConnected(minion.to_string()))?;
        self.send_request(&ps, crate::random_id(), body, Duration::from_secs(60))
    }

    fn send_request(
        &self,
        ps: &PeerSession,
        id: u64,
        body: request::Body,
        timeout: Duration,
    ) -> Result<(), BusError> {
        let msg = MasterMessage {
            body: Some(master_message::Body::Request(Request {
                id,
                deadline_us: now_us() + timeout.as_micros() as i64,
                body: Some(body),
            })),
        };
        let frame = ps.session.seal(Channel::Down, &msg.encode_to_vec());
        let route = ps.route.lock().expect("route lock").clone();
        self.commands.send(vec![route, frame]).inspect_err(|_| {
            BusStats::inc(&self.shared.stats.queue_full);
        })?;
        BusStats::inc(&self.shared.stats.frames_out);
        Ok(())
    }
}

impl Drop for MasterBus {
    fn drop(&mut self) {
        self.reaper.abort();
        self.forwarder.abort();
    }
}

fn handshake_worker(shared: Weak<Shared>, queue: Arc<Hellos>) {
    loop {
        let Some((route, msg)) = queue.pop() else {
            return;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Some(answer) = shared.on_handshake(&route, msg) {
            shared.send(vec![route, answer]);
        }
    }
}

fn clear(body: master_message::Body) -> Vec<u8> {
    crate::frame::handshake_frame(&MasterMessage { body: Some(body) }.encode_to_vec())
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.handshakes.close();
    }
}

impl Shared {
    fn minion(&self, minion: &str) -> Option<Arc<PeerSession>> {
        let sessions = self.sessions.read().expect("sessions lock");
        let id = sessions.minions.get(minion)?;
        sessions.by_id.get(id).cloned()
    }

    fn session(&self, id: u64) -> Option<Arc<PeerSession>> {
        self.sessions
            .read()
            .expect("sessions lock")
            .by_id
            .get(&id)
            .cloned()
    }

    fn send(&self, parts: Vec<Vec<u8>>) {
        if let Some(socket) = self.commands.get().and_then(Weak::upgrade) {
            if socket.send(parts).is_ok() {
                BusStats::inc(&self.stats.frames_out);
            } else {
                BusStats::inc(&self.stats.queue_full);
            }
        }
    }

    /// Runs on the SUB thread: `[topic, frame]` from a minion.
    fn on_event_message(&self, parts: Vec<Vec<u8>>) {
        BusStats::inc(&self.stats.frames_in);
        let stats = &self.stats;
        let [topic, frame] = parts.as_slice() else {
            let reason = format!("event message of {} parts, not 2", parts.len());
            BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &reason);
            return;
        };
        if topic != EVENT_TOPIC {
            BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &"unknown topic");
            return;
        }
        let (header, body) = match frame::decode(frame, self.cfg.max_message_size) {
            Ok((h, b)) if h.kind == Kind::Sealed => (h, b),
            Ok(_) => {
                BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &"an unsealed frame");
                return;
            }
            Err(e) => {
                BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &e);
                return;
            }
        };
        let Some(ps) = self
            .session(header.session)
            .filter(|p| p.kind == PeerKind::Minion)
        else {
            let reason = format!("frame for unknown session {}", header.session);
            BusStats::refuse(&stats.frames_unknown_session, PORT_EVENTS, &reason);
            return;
        };
        let body = match ps.session.open(Channel::Events, &header, body) {
            Ok(b) => b,
            Err(e) => {
                self.count_open_error(PORT_EVENTS, &ps.name, &e);
                return;
            }
        };
        let batch = match EventBatch::decode(body.as_slice()) {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("undecodable event batch from {}: {e}", ps.name);
                BusStats::refuse(&stats.frames_undecodable, PORT_EVENTS, &reason);
                return;
            }
        };
        ps.last_seen_us.store(now_us(), Ordering::Relaxed);
        let mut events = Vec::with_capacity(batch.events.len());
        let mut refused = Vec::new();
        for event in batch.events {
            match check_event(&ps.name, &event, self.cfg.max_message_size) {
                Ok(()) => events.push(event),
                Err(reason) => {
                    let reason = format!("event {} from {}: {reason}", event.seq, ps.name);
                    BusStats::refuse(&stats.events_refused, PORT_EVENTS, &reason);
                    refused.push(event.seq);
                }
            }
        }
        BusStats::add(&self.stats.events_in, events.len() as u64);
        let msg = MasterInbound::Events {
            minion: ps.name.clone(),
            events,
            refused,
            oldest: batch.oldest_seq,
        };
        // Blocking here pushes back on the SUB socket: its queue fills and
        // the minion's outbox keeps what did not get through.
        let _ = self.inbound.blocking_send(msg);
    }

    fn count_open_error(&self, port: &'static str, peer: &str, e: &BusError) {
        let reason = format!("frame from {peer}'s session: {e}");
        match e {
            BusError::Replay { .. } => BusStats::refuse(&self.stats.frames_replayed, port, &reason),
            _ => BusStats::refuse(&self.stats.frames_forged, port, &reason),
        }
    }

    /// Runs on the ROUTER thread: `[routing id, frame]`.
    fn on_command_message(
        &self,
        parts: Vec<Vec<u8>>,
        peer: Option<std::net::IpAddr>,
    ) -> Option<Vec<Vec<u8>>> {
        BusStats::inc(&self.stats.frames_in);
        let [route, frame] = parts.as_slice() else {
            let reason = format!(
                "command message of {} parts, not 1",
                parts.len().saturating_sub(1)
            );
            BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &reason);
            return None;
        };
        let (header, body) = match frame::decode(frame, self.cfg.max_message_size) {
            Ok(x) => x,
            Err(e) => {
                BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &e);
                return None;
            }
        };
        match header.kind {
            Kind::Handshake => {
                let msg = match MinionMessage::decode(body) {
                    Ok(m) => m,
                    Err(e) => {
                        let reason = format!("undecodable handshake: {e}");
                        BusStats::refuse(&self.stats.frames_undecodable, PORT_COMMANDS, &reason);
                        return None;
                    }
                };
                // Served first: hellos from keys that opened a session
                // before, and Auths for handshakes under way (their
                // hellos got through already).
                let known = match &msg.body {
                    Some(minion_message::Body::Hello(h)) => {
                        <[u8; 32]>::try_from(h.identity_key.as_slice())
                            .is_ok_and(|k| self.known_keys.read().expect("keys lock").contains(&k))
                    }
                    Some(minion_message::Body::Auth(a)) => self.responder.is_pending(a.session),
                    _ => false,
                };
                match self.handshakes.push((route.clone(), msg), known, peer) {
                    Admit::Queued => {}
                    Admit::Full => BusStats::refuse(
                        &self.stats.queue_full,
                        PORT_COMMANDS,
                        &"too many handshakes at once; one dropped (the peer retries)",
                    ),
                    Admit::Throttled => {
                        let reason = format!(
                            "hellos from {} over {} a second; one dropped (the peer retries)",
                            peer.map_or_else(|| "?".to_string(), |p| p.to_string()),
                            crate::hellos::RATE
                        );
                        BusStats::refuse(&self.stats.hellos_throttled, PORT_COMMANDS, &reason);
                    }
                }
                None
            }
            Kind::Sealed => self.on_sealed(route, &header, body),
        }
    }

    /// Runs on a handshake worker.
    fn on_handshake(&self, route: &[u8], msg: MinionMessage) -> Option<Vec<u8>> {
        match msg.body {
            Some(minion_message::Body::Hello(hello)) => {
                if let Err(e) = tend_proto::validate_minion_id(&hello.minion) {
                    BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &e);
                    return Some(clear(master_message::Body::Refused(Refused {
                        status: "invalid".into(),
                        reason: e.to_string(),
                        hello_ephemeral: hello.ephemeral_key,
                    })));
                }
                match self.responder.on_hello(&hello, route) {
                    Ok(challenge) => Some(clear(master_message::Body::Challenge(challenge))),
                    Err(e) => {
                        BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &e);
                        None
                    }
                }
            }
            Some(minion_message::Body::Auth(auth)) => {
                let authed = match self.responder.on_auth(&auth, route) {
                    Ok(a) => a,
                    Err(e) => {
                        BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &e);
                        return Some(clear(master_message::Body::Refused(Refused {
                            status: "invalid".into(),
                            reason: e.to_string(),
                            hello_ephemeral: Vec::new(),
                        })));
                    }
                };
                let kind = kind_name(authed.kind);
                let fp = crate::identity::fingerprint(&authed.key);
                let state = self.keys.check(authed.kind, &authed.name, &authed.key);
                if state != KeyState::Accepted {
                    let reason = match state {
                        KeyState::Pending => format!(
                            "{kind} key {fp} for {:?} is pending: an operator must accept it (tend keys accept {}{})",
                            authed.name,
                            if authed.kind == PeerKind::Operator {
                                "--operator "
                            } else {
                                ""
                            },
                            authed.name
                        ),
                        KeyState::Rejected => format!("{kind} {:?} is rejected", authed.name),
                        _ => format!(
                            "{kind} {:?} presented key {fp}, but another key is accepted for that name: denied",
                            authed.name
                        ),
                    };
                    BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &reason);
                    // Sealed under the would-be session: the peer knows
                    // it comes from the master, and nobody on the path
                    // can refuse in the master's name.
                    let refused = MasterMessage {
                        body: Some(master_message::Body::Refused(Refused {
                            status: state.as_str().into(),
                            reason,
                            hello_ephemeral: authed.hello_ephemeral,
                        })),
                    };
                    return Some(authed.session.seal(Channel::Down, &refused.encode_to_vec()));
                }
                let id = authed.session.id;
                let ps = Arc::new(PeerSession {
                    session: Arc::new(authed.session),
                    name: authed.name.clone(),
                    kind: authed.kind,
                    key: authed.key,
                    route: Mutex::new(route.to_vec()),
                    last_seen_us: AtomicI64::new(now_us()),
                    announced: AtomicBool::new(false),
                });
                let welcome = MasterMessage {
                    body: Some(master_message::Body::Welcome(Welcome {
                        heartbeat_ms: self.cfg.heartbeat.as_millis() as u32,
                    })),
                };
                let frame = ps.session.seal(Channel::Down, &welcome.encode_to_vec());
                {
                    let mut sessions = self.sessions.write().expect("sessions lock");
                    if authed.kind == PeerKind::Minion
                        && let Some(old) = sessions.minions.insert(authed.name.clone(), id)
                    {
                        sessions.by_id.remove(&old);
                    }
                    sessions.by_id.insert(id, ps);
                }
                BusStats::inc(&self.stats.sessions_opened);
                self.known_keys
                    .write()
                    .expect("keys lock")
                    .insert(authed.key);
                tracing::info!(kind, name = %authed.name, session = id, fingerprint = %fp, "session opened");
                Some(frame)
            }
            _ => {
                BusStats::refuse(
                    &self.stats.frames_bad,
                    PORT_COMMANDS,
                    &"a clear message that is not a hello or auth",
                );
                None
            }
        }
    }

    fn on_sealed(&self, route: &[u8], header: &Header, body: &[u8]) -> Option<Vec<Vec<u8>>> {
        let Some(ps) = self.session(header.session) else {
            let reason = format!(
                "frame for unknown session {}; asking for a new hello",
                header.session
            );
            BusStats::refuse(&self.stats.frames_unknown_session, PORT_COMMANDS, &reason);
            return Some(vec![
                route.to_vec(),
                clear(master_message::Body::Rehello(Rehello {
                    reason: "unknown session".into(),
                    session: header.session,
                })),
            ]);
        };
        let body = match ps.session.open(Channel::Up, header, body) {
            Ok(b) => b,
            Err(e) => {
                self.count_open_error(PORT_COMMANDS, &ps.name, &e);
                return None;
            }
        };
        let msg = match MinionMessage::decode(body.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("undecodable message from {}: {e}", ps.name);
                BusStats::refuse(&self.stats.frames_undecodable, PORT_COMMANDS, &reason);
                return None;
            }
        };
        // The frame opened under this session: this connection is the
        // peer's route from now on (a reconnect gets a new routing id).
        *ps.route.lock().expect("route lock") = route.to_vec();
        ps.last_seen_us.store(now_us(), Ordering::Relaxed);
        let minion = ps.kind == PeerKind::Minion;
        match msg.body {
            Some(minion_message::Body::Reply(reply)) if minion => {
                self.on_reply(&ps, reply);
                None
            }
            Some(minion_message::Body::Heartbeat(_)) => {
                let beat = MasterMessage {
                    body: Some(master_message::Body::Heartbeat(Heartbeat {
                        time_us: now_us(),
                    })),
                };
                BusStats::inc(&self.stats.frames_out);
                Some(vec![
                    route.to_vec(),
                    ps.session.seal(Channel::Down, &beat.encode_to_vec()),
                ])
            }
            Some(minion_message::Body::Info(info)) if minion => {
                if ps.announced.swap(true, Ordering::Relaxed) {
                    let reason = format!("a second Info on one session, from {}", ps.name);
                    BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &reason);
                    return None;
                }
                // Never waits: this thread answers every heartbeat.
                let _ = self.presence.send(MasterInbound::Up {
                    minion: ps.name.clone(),
                    info,
                });
                None
            }
            Some(minion_message::Body::Control(frame)) if !minion => {
                let req = match ControlRequest::decode(frame.request.as_slice()) {
                    Ok(r) => r,
                    Err(e) => {
                        let reason =
                            format!("undecodable control request from operator {}: {e}", ps.name);
                        BusStats::refuse(&self.stats.frames_undecodable, PORT_COMMANDS, &reason);
                        return None;
                    }
                };
                let socket = self.commands.get().and_then(Weak::upgrade)?;
                let responder =
                    Responder::sealed(req.id, route.to_vec(), ps.session.clone(), socket);
                if self.control.try_send((responder, req)).is_err() {
                    BusStats::inc(&self.stats.queue_full);
                }
                None
            }
            _ => {
                let reason = format!(
                    "a message {} may not send, from {}",
                    kind_name(ps.kind),
                    ps.name
                );
                BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &reason);
                None
            }
        }
    }

    /// A reply goes to its request only if it came from the minion the
    /// request was sent to, under the same key; anything else is refused
    /// and counted, and the request keeps waiting for the real answer.
    fn on_reply(&self, ps: &PeerSession, reply: Reply) {
        let mut pending = self.pending.lock().expect("pending lock");
        let from_asked = pending
            .waiting
            .get(&reply.id)
            .is_some_and(|w| w.minion == ps.name && w.key == ps.key);
        if from_asked {
            if let Some(w) = pending.waiting.remove(&reply.id) {
                let _ = w.reply.send(reply);
            }
            return;
        }
        let late = pending
            .abandoned
            .iter()
            .any(|(id, m)| *id == reply.id && *m == ps.name);
        drop(pending);
        if late {
            BusStats::inc(&self.stats.replies_late);
        } else {
            let reason = format!(
                "a reply from {} to request {} that was not sent to it",
                ps.name, reply.id
            );
            BusStats::refuse(&self.stats.replies_refused, PORT_COMMANDS, &reason);
        }
    }

    async fn expire_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat.max(Duration::from_millis(50)) / 2);
        loop {
            tick.tick().await;
            let cutoff = now_us() - self.cfg.presence_timeout.as_micros() as i64;
            let expired: Vec<(String, bool)> = {
                let mut sessions = self.sessions.write().expect("sessions lock");
                let dead: Vec<u64> = sessions
                    .by_id
                    .iter()
                    .filter(|(_, ps)| ps.last_seen_us.load(Ordering::Relaxed) < cutoff)
                    .map(|(id, _)| *id)
                    .collect();
                dead.into_iter()
                    .filter_map(|id| {
                        let ps = sessions.by_id.remove(&id)?;
                        if ps.kind != PeerKind::Minion {
                            return None;
                        }
                        if sessions.minions.get(&ps.name) == Some(&id) {
                            sessions.minions.remove(&ps.name);
                        }
                        Some((ps.name.clone(), ps.announced.load(Ordering::Relaxed)))
                    })
                    .collect()
            };
            for (minion, announced) in expired {
                BusStats::inc(&self.stats.sessions_expired);
                tracing::info!(%minion, "minion silent past the presence timeout: down");
                if announced && self.presence.send(MasterInbound::Down { minion }).is_err() {
                    return;
                }
            }
        }
    }
}

/// Checks one event from minion `minion` before it goes anywhere (public
/// for the fuzz targets).
pub fn check_event(minion: &str, event: &Event, max: usize) -> Result<(), String> {
    if event.minion != minion {
        return Err(format!(
            "event claims minion {:?} but arrived on {minion:?}'s session",
            event.minion
        ));
    }
    if event.seq == 0 {
        return Err("event has seq 0".into());
    }
    tend_proto::validate_tag(&event.tag, Some(minion)).map_err(|e| e.to_string())?;
    if event.data.len() > max {
        return Err("event data too large".into());
    }
    if !event.data.is_empty() && serde_json::from_slice::<JsonObject>(&event.data).is_err() {
        return Err("event data is not a JSON object".into());
    }
    Ok(())
}

/// Deserializes any JSON object and keeps nothing: validation without
/// building a value.
struct JsonObject;

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonObject, A::Error> {
                use serde::de::IgnoredAny;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonObject)
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::handshake_frame;
    use crate::handshake::Initiator;

    fn free_endpoint() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://127.0.0.1:{}", l.local_addr().unwrap().port())
    }

    struct TestPeer {
        socket: zmq::Socket,
        session: Session,
    }

    impl TestPeer {
        /// Opens a session as minion `name` over a real DEALER.
        fn connect(endpoint: &str, name: &str) -> Self {
            let socket = crate::context().socket(zmq::DEALER).unwrap();
            socket.set_linger(0).unwrap();
            socket.set_rcvtimeo(5000).unwrap();
            socket.connect(endpoint).unwrap();
            let identity = Arc::new(Identity::ephemeral().unwrap());
            let (init, hello) = Initiator::start(identity, name, PeerKind::Minion, "t").unwrap();
            let clear = |body| handshake_frame(&MinionMessage { body: Some(body) }.encode_to_vec());
            socket
                .send(clear(minion_message::Body::Hello(hello)), 0)
                .unwrap();
            let bytes = socket.recv_bytes(0).unwrap();
            let (_, body) = frame::decode(&bytes, 1 << 20).unwrap();
            let Some(master_message::Body::Challenge(ch)) =
                MasterMessage::decode(body).unwrap().body
            else {
                panic!("no challenge for {name}");
            };
            let opened = init.finish(&ch).unwrap();
            socket
                .send(clear(minion_message::Body::Auth(opened.auth)), 0)
                .unwrap();
            let peer = Self {
                socket,
                session: opened.session,
            };
            assert!(
                matches!(peer.recv(), Some(master_message::Body::Welcome(_))),
                "no welcome for {name}"
            );
            peer
        }

        fn send(&self, body: minion_message::Body) {
            let msg = MinionMessage { body: Some(body) }.encode_to_vec();
            self.socket
                .send(self.session.seal(Channel::Up, &msg), 0)
                .unwrap();
        }

        /// The next message from the master, or None after 5 s.
        fn recv(&self) -> Option<master_message::Body> {
            let bytes = self.socket.recv_bytes(0).ok()?;
            let (h, b) = frame::decode(&bytes, 1 << 20).ok()?;
            let plain = self.session.open(Channel::Down, &h, b).ok()?;
            MasterMessage::decode(plain.as_slice()).ok()?.body
        }
    }

    /// Issue 14, item 4: while the daemon's ingest queue is full, a minion
    /// saying what it is (Info) must not stop the ROUTER thread, or every
    /// minion's heartbeats go unanswered.
    #[test]
    fn finding_14_4_a_full_ingest_queue_never_stalls_heartbeats() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _guard = rt.enter();
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(KeyStore::open(dir.path(), true, Vec::new()).unwrap());
        let (events, commands) = (free_endpoint(), free_endpoint());
        let cfg = MasterBusConfig {
            event_endpoint: events.clone(),
            command_endpoint: commands.clone(),
            max_message_size: 1 << 20,
            heartbeat: Duration::from_millis(200),
            presence_timeout: Duration::from_secs(60),
        };
        let (control, _control_rx) = mpsc::channel(16);
        let identity = Arc::new(Identity::ephemeral().unwrap());
        let stats = Arc::new(BusStats::default());
        // Nobody reads `_inbound`: the daemon is busy (a slow store, say).
        let (bus, _inbound) = MasterBus::bind(cfg, identity, keys, stats, control).unwrap();

        // web1's events fill the queue; the event socket then waits.
        let web1 = TestPeer::connect(&commands, "web1");
        let publisher = crate::context().socket(zmq::PUB).unwrap();
        publisher.set_linger(0).unwrap();
        publisher.connect(&events).unwrap();
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
        let web2 = TestPeer::connect(&commands, "web2");
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
}

#[cfg(test)]
#[path = "master_review_attacks.rs"]
mod review_attacks;
