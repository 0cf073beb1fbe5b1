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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
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

type Handshake = (Vec<u8>, MinionMessage);

struct Shared {
    cfg: MasterBusConfig,
    sessions: RwLock<Sessions>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_request: AtomicU64,
    stats: Arc<BusStats>,
    inbound: mpsc::Sender<MasterInbound>,
    control: mpsc::Sender<(Responder, ControlRequest)>,
    keys: Arc<KeyStore>,
    handshakes: SyncSender<Handshake>,
    responder: handshake::Responder,
    commands: OnceLock<Weak<SocketThread>>,
}

pub struct MasterBus {
    shared: Arc<Shared>,
    commands: Arc<SocketThread>,
    _events: SocketThread,
    reaper: tokio::task::JoinHandle<()>,
}

const PORT_EVENTS: &str = "events";
const PORT_COMMANDS: &str = "commands";

/// Inbound messages waiting for the master daemon, at most.
const INBOUND_QUEUE: usize = 512;
/// Handshake messages waiting for a worker, at most; past that they are
/// refused and counted (the peer retries).
const HANDSHAKE_QUEUE: usize = 8192;

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
        let (hs_tx, hs_rx) = sync_channel(HANDSHAKE_QUEUE);
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            sessions: RwLock::default(),
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            stats,
            inbound: tx,
            control,
            keys,
            handshakes: hs_tx,
            responder: handshake::Responder::new(identity),
            commands: OnceLock::new(),
        });

        let sub = ctx.socket(zmq::SUB)?;
        sub.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        // Events are numbered and replayed on a gap, so a full queue costs
        // a replay, not an event; keep it large enough that bursts fit.
        sub.set_rcvhwm(2_000)?;
        sub.set_linger(0)?;
        sub.set_subscribe(b"")?;
        crate::bind(&sub, &cfg.event_endpoint)?;
        let s = shared.clone();
        let events = SocketThread::spawn(
            &ctx,
            "master-events",
            sub,
            Box::new(move |parts| {
                s.on_event_message(parts);
                None
            }),
        )?;

        let router = ctx.socket(zmq::ROUTER)?;
        router.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        router.set_sndhwm(100_000)?;
        router.set_rcvhwm(100_000)?;
        router.set_linger(0)?;
        crate::bind(&router, &cfg.command_endpoint)?;
        let s = shared.clone();
        let commands = Arc::new(SocketThread::spawn(
            &ctx,
            "master-commands",
            router,
            Box::new(move |parts| s.on_command_message(parts)),
        )?);
        let _ = shared.commands.set(Arc::downgrade(&commands));

        let hs_rx = Arc::new(Mutex::new(hs_rx));
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        for i in 0..workers {
            let (s, rx) = (Arc::downgrade(&shared), hs_rx.clone());
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
                if kind == PeerKind::Minion && sessions.minions.get(&p.name) == Some(&id) {
                    sessions.minions.remove(&p.name);
                }
                tracing::warn!(kind = kind_name(kind), name = %p.name, "session closed: its key is no longer accepted");
            }
        }
    }

    /// Sends a request to a minion and waits for its reply, at most
    /// `timeout`.
    pub async fn request(
        &self,
        minion: &str,
        body: request::Body,
        timeout: Duration,
    ) -> Result<Reply, BusError> {
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .insert(id, tx);
        let sent = self.send_request(minion, id, body, timeout);
        let outcome = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx).await,
            Err(e) => {
                self.shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&id);
                return Err(e);
            }
        };
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => {
                self.shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&id);
                Err(BusError::Timeout {
                    minion: minion.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Sends a request that needs no reply (an acknowledgement).
    pub fn notify(&self, minion: &str, body: request::Body) -> Result<(), BusError> {
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        self.send_request(minion, id, body, Duration::from_secs(60))
    }

    fn send_request(
        &self,
        minion: &str,
        id: u64,
        body: request::Body,
        timeout: Duration,
    ) -> Result<(), BusError> {
        let ps = self
            .shared
            .minion(minion)
            .ok_or_else(|| BusError::NotConnected(minion.to_string()))?;
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
    }
}

fn handshake_worker(shared: Weak<Shared>, rx: Arc<Mutex<Receiver<Handshake>>>) {
    loop {
        let next = rx
            .lock()
            .map_err(|_| ())
            .and_then(|r| r.recv().map_err(|_| ()));
        let Ok((route, msg)) = next else { return };
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
    fn on_command_message(&self, parts: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
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
                match self.handshakes.try_send((route.clone(), msg)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        BusStats::refuse(
                            &self.stats.queue_full,
                            PORT_COMMANDS,
                            &"too many handshakes at once; one dropped (the peer retries)",
                        );
                    }
                    Err(TrySendError::Disconnected(_)) => {}
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
                match self.responder.on_hello(&hello) {
                    Ok(challenge) => Some(clear(master_message::Body::Challenge(challenge))),
                    Err(e) => {
                        BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &e);
                        None
                    }
                }
            }
            Some(minion_message::Body::Auth(auth)) => {
                let authed = match self.responder.on_auth(&auth) {
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
                    return Some(clear(master_message::Body::Refused(Refused {
                        status: state.as_str().into(),
                        reason,
                        hello_ephemeral: authed.hello_ephemeral,
                    })));
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
                let waiter = self.pending.lock().expect("pending lock").remove(&reply.id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(reply);
                    }
                    None => BusStats::inc(&self.stats.replies_late),
                }
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
                ps.announced.store(true, Ordering::Relaxed);
                let _ = self.inbound.blocking_send(MasterInbound::Up {
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
                if announced
                    && self
                        .inbound
                        .send(MasterInbound::Down { minion })
                        .await
                        .is_err()
                {
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
